//! Cluster files of a live deployment, from the registry (the thesis's clone-list tools
//! on what actually runs): `napalmctl clones --deployment NAME --format hosts|mpi|json`.
//! A clones.conf gives the same files for what it declares (`napalmctl clones --format`
//! without `--deployment`, see [`crate::clone`]).

use std::fmt::Write as _;

use napalm_proto::v1::{Clone, ClonePhase};
use serde_json::json;

use crate::tables::state_name;
use crate::Failure;

/// A clone's address without its prefix length.
fn address(c: &Clone) -> Option<&str> {
    c.addresses
        .first()
        .map(|a| a.split('/').next().unwrap_or(a))
        .filter(|a| !a.is_empty())
}

fn phase(c: &Clone) -> String {
    let p = ClonePhase::try_from(c.phase).unwrap_or_default();
    state_name(p.as_str_name(), "CLONE_PHASE_")
}

/// Renders `format` for `deployment`'s `clones`, in index order.
pub fn render(deployment: &str, format: &str, clones: &[Clone]) -> Result<String, Failure> {
    let mut clones: Vec<&Clone> = clones.iter().collect();
    clones.sort_by_key(|c| (c.index, c.name.clone()));
    let mut out = String::new();
    match format {
        "hosts" => {
            let _ = writeln!(out, "# clones of deployment {deployment} (napalm registry)");
            for c in clones {
                match address(c) {
                    Some(a) => {
                        let _ = writeln!(out, "{a}\t{}", c.name);
                    }
                    None => {
                        let _ = writeln!(out, "# {}: no address yet ({})", c.name, phase(c));
                    }
                }
            }
        }
        "mpi" => {
            // Only registered clones run a job; the others are listed as comments.
            for c in clones {
                if c.phase == ClonePhase::Registered as i32 {
                    let _ = writeln!(out, "{}", c.name);
                } else {
                    let _ = writeln!(out, "# {} ({})", c.name, phase(c));
                }
            }
        }
        "json" => {
            let rows: Vec<_> = clones
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "index": c.index,
                        "address": address(c),
                        "agent": c.agent_id,
                        "phase": phase(c),
                    })
                })
                .collect();
            out = serde_json::to_string_pretty(&rows).unwrap_or_default();
            out.push('\n');
        }
        "known-hosts" => {
            return Err(Failure {
                code: 2,
                message: format!(
                    "--format known-hosts from the registry needs the clones' host keys, which \
                     the registry does not hold; for deployment {deployment:?} give its \
                     clones.conf instead (napalmctl clones --config FILE --format known-hosts)"
                ),
            })
        }
        other => {
            return Err(Failure {
                code: 2,
                message: format!(
                    "unknown format {other:?} for a deployment's cluster files: use hosts, \
                     mpi or json"
                ),
            })
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone(name: &str, index: u32, address: &str, phase: ClonePhase) -> Clone {
        Clone {
            name: name.into(),
            index,
            addresses: if address.is_empty() {
                vec![]
            } else {
                vec![address.into()]
            },
            phase: phase as i32,
            ..Default::default()
        }
    }

    #[test]
    fn hosts_and_mpi_follow_the_registry() {
        let clones = [
            clone("web-02", 2, "10.1.2.102/24", ClonePhase::Running),
            clone("web-01", 1, "10.1.2.101/24", ClonePhase::Registered),
            clone("web-03", 3, "", ClonePhase::Pending),
        ];
        assert_eq!(
            render("web", "hosts", &clones).ok().as_deref(),
            Some(
                "# clones of deployment web (napalm registry)\n10.1.2.101\tweb-01\n\
                 10.1.2.102\tweb-02\n# web-03: no address yet (pending)\n"
            )
        );
        assert_eq!(
            render("web", "mpi", &clones).ok().as_deref(),
            Some("web-01\n# web-02 (running)\n# web-03 (pending)\n")
        );
        let e = render("web", "yaml", &clones).err().map(|f| f.message);
        assert!(e.is_some_and(|m| m.contains("\"yaml\"")));
    }
}
