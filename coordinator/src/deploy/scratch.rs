//! A deployment's scratch paths (issue 15, thesis 4.2): tmpfs, or disks the agent makes,
//! mounted beside the union root by napalm-init's `napalm.scratch=`, checked when the spec
//! is normalized (the grammar's path rules, collisions, disk sizes, and the tmpfs sizes
//! against the clone's memory) and written on each clone's command line as a value.

use napalm_initramfs::scratch::{ScratchError, ScratchMount, ScratchSpec, DEFAULT_MODE};
use napalm_proto::v1::{DeploymentSpec, ScratchKind};
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
            let made = match ScratchKind::try_from(m.kind) {
                Ok(ScratchKind::Disk) => ScratchMount::disk(&m.path, m.size_bytes),
                Ok(ScratchKind::Tmpfs) => ScratchMount::tmpfs(&m.path, m.size_bytes),
                Err(_) => Err(ScratchError {
                    entry: m.path.clone(),
                    what: format!("unknown scratch kind {} (known: tmpfs, disk)", m.kind),
                }),
            };
            made.and_then(|s| s.with_mode(mode))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ScratchSpec::new(mounts)
}

/// The largest scratch disk an agent makes (its `scratch_disk::MAX_BYTES`).
const MAX_DISK: u64 = 1 << 40;

const USAGE: &str =
    "give absolute paths such as --scratch /scratch=256M,/var/tmp=64M (tmpfs) or /scratch=disk:4G";

/// [`scratch_spec`], and the tmpfs sizes added up within the clone's `memory_bytes`
/// (tmpfs takes its pages from the clone's RAM, beside the union's own tmpfs upper; disks
/// take none, and at most 1 TiB each, the agent's limit).
pub fn check(spec: &DeploymentSpec, memory_bytes: u64) -> Result<ScratchSpec, ApiError> {
    let s = scratch_spec(spec).map_err(|e| invalid("spec.scratch", format!("{e}; {USAGE}")))?;
    if let Some((_, big)) = s.disks().find(|(_, m)| m.size() > MAX_DISK) {
        return Err(invalid(
            "spec.scratch",
            format!(
                "scratch disk \"{big}\" is larger than 1 TiB, the most an agent makes; {USAGE}"
            ),
        ));
    }
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
                    kind: 0,
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
    fn disks_take_no_memory_and_are_written_as_disks() {
        let mut sp = spec(&[("/scratch", 4 << 30), ("/tmp", 256 << 20)]);
        sp.scratch[0].kind = ScratchKind::Disk as i32;
        let s = check(&sp, 512 << 20).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.to_string(), "/scratch:disk:4G,/tmp:tmpfs:256M");
        sp.scratch[0].size_bytes = 2 << 40;
        let d = match check(&sp, 512 << 20) {
            Err(ApiError::InvalidArgument { description, .. }) => description,
            other => panic!("{other:?}"),
        };
        assert!(
            d.contains("\"/scratch:disk:2048G\"") && d.contains("1 TiB"),
            "{d}"
        );
        sp.scratch[0].size_bytes = 1 << 20;
        let d = format!("{:?}", check(&sp, 512 << 20));
        assert!(d.contains("at least 16M"), "{d}");
        sp.scratch[0].kind = 7;
        let d = format!("{:?}", check(&sp, 512 << 20));
        assert!(d.contains("unknown scratch kind 7"), "{d}");
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
