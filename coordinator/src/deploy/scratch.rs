//! A deployment's scratch paths (issue 15, thesis 4.2): tmpfs mounted beside the union root
//! by napalm-init's `napalm.scratch=`, checked when the spec is normalized (the grammar's
//! path rules, collisions, and the sizes against the clone's memory) and written on each
//! clone's command line as a value.

use napalm_initramfs::scratch::{ScratchError, ScratchMount, ScratchSpec, DEFAULT_MODE};
use napalm_proto::v1::DeploymentSpec;
use napalm_proto::ApiError;

use super::invalid;

/// The spec's scratch paths as napalm-init reads them (`mode` 0 is [`DEFAULT_MODE`]);
/// refuses what the grammar refuses, quoting the entry.
pub fn scratch_spec(spec: &DeploymentSpec) -> Result<ScratchSpec, ScratchError> {
    let mounts = spec
        .scratch
        .iter()
        .map(|m| {
            let mode = if m.mode == 0 { DEFAULT_MODE } else { m.mode };
            ScratchMount::tmpfs(&m.path, m.size_bytes).and_then(|s| s.with_mode(mode))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ScratchSpec::new(mounts)
}

const USAGE: &str = "give absolute paths such as --scratch /scratch=256M,/var/tmp=64M";

/// [`scratch_spec`], and the tmpfs sizes added up within the clone's `memory_bytes`
/// (tmpfs takes its pages from the clone's RAM, beside the union's own tmpfs upper).
pub fn check(spec: &DeploymentSpec, memory_bytes: u64) -> Result<ScratchSpec, ApiError> {
    let s = scratch_spec(spec).map_err(|e| invalid("spec.scratch", format!("{e}; {USAGE}")))?;
    let total = s.tmpfs_bytes();
    if total > memory_bytes {
        return Err(invalid(
            "spec.scratch",
            format!(
                "scratch \"{s}\" adds up to {} MiB, more than the clone's {} MiB of memory; \
                 give smaller sizes or more --memory",
                total >> 20,
                memory_bytes >> 20
            ),
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use napalm_proto::v1::{Resources, ScratchMount as Proto};

    fn spec(entries: &[(&str, u64)]) -> DeploymentSpec {
        DeploymentSpec {
            resources: Some(Resources {
                vcpus: 1,
                memory_bytes: 512 << 20,
            }),
            scratch: entries
                .iter()
                .map(|&(p, n)| Proto {
                    path: p.into(),
                    size_bytes: n,
                    mode: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn refused(entries: &[(&str, u64)], memory: u64) -> String {
        match check(&spec(entries), memory) {
            Err(ApiError::InvalidArgument { field, description }) => {
                assert_eq!(field, "spec.scratch");
                description
            }
            other => panic!("{entries:?}: {other:?}"),
        }
    }

    #[test]
    fn accepted_and_written_as_napalm_init_reads_it() {
        let s = check(
            &spec(&[("/scratch", 256 << 20), ("/var/tmp", 64 << 20)]),
            512 << 20,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.to_string(), "/scratch:tmpfs:256M,/var/tmp:tmpfs:64M");
        assert!(check(&spec(&[]), 64 << 20).is_ok_and(|s| s.is_empty()));
    }

    #[test]
    fn refusals_quote_the_input() {
        for (entries, what) in [
            (&[("scratch", 1 << 20)][..], "\"scratch:tmpfs:1M\""),
            (&[("/", 1 << 20)][..], "root itself"),
            (&[("/a/../etc", 1 << 20)][..], "\"..\" component"),
            (&[("/s", 0)][..], "size 0"),
            (&[("/s", 1 << 20), ("/s", 2 << 20)][..], "/s is given twice"),
            (
                &[("/s", 1 << 20), ("/s/x", 2 << 20)][..],
                "/s/x is inside /s",
            ),
            (&[("/run/s", 1 << 20)][..], "under /run"),
        ] {
            let d = refused(entries, 512 << 20);
            assert!(d.contains(what), "{entries:?}: {d}");
        }
        let d = refused(&[("/scratch", 400 << 20), ("/tmp", 200 << 20)], 512 << 20);
        assert!(
            d.contains("\"/scratch:tmpfs:400M,/tmp:tmpfs:200M\"")
                && d.contains("600 MiB")
                && d.contains("512 MiB"),
            "{d}"
        );
    }
}
