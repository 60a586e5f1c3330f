//! Cluster files of a live deployment, from the registry (the thesis's clone-list tools
//! on what actually runs): `napalmctl clones --deployment NAME --format hosts|mpi|known-hosts|json`,
//! rendered by [`napalm_overlay::live`], the rules of the coordinator's cluster-file
//! endpoint, so what napalmctl prints is what running clones install.
//! A clones.conf gives the same files for what it declares (`napalmctl clones --format`
//! without `--deployment`, see [`crate::clone`]).

use napalm_overlay::live::{self, LiveClone, LiveFormat};
use napalm_proto::v1::{Clone, ClonePhase};

use crate::tables::state_name;
use crate::Failure;

/// A registry record as the shared rendering rules ([`napalm_overlay::live`]) take it,
/// with the host key the coordinator derived for it.
fn live_clone(c: &Clone) -> LiveClone {
    let p = ClonePhase::try_from(c.phase).unwrap_or_default();
    LiveClone {
        name: c.name.clone(),
        index: c.index,
        address: c.addresses.first().cloned(),
        phase: state_name(p.as_str_name(), "CLONE_PHASE_"),
        registered: c.phase == ClonePhase::Registered as i32,
        agent: c.agent_id.clone(),
        host_key: (!c.ssh_host_key.is_empty()).then(|| c.ssh_host_key.clone()),
    }
}

/// Renders `format` for `deployment`'s `clones` by the rules the coordinator serves to
/// running clones (`GET /v1/clones/NAME/cluster/FILE`), in index order.
pub fn render(deployment: &str, format: &str, clones: &[Clone]) -> Result<String, Failure> {
    let format: LiveFormat = format.parse().map_err(|e: live::UnknownFormat| Failure {
        code: 2,
        message: e.to_string(),
    })?;
    let live: Vec<LiveClone> = clones.iter().map(live_clone).collect();
    Ok(live::render(deployment, format, &live))
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
            Some(
                "# clones of deployment web (napalm registry)\n\
                 web-01\n# web-02 (running)\n# web-03 (pending)\n"
            )
        );
        let e = render("web", "yaml", &clones).err().map(|f| f.message);
        assert!(e.is_some_and(|m| m.contains("\"yaml\"")));
    }
}
