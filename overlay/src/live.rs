//! Cluster files of a *live* deployment: what the registry says runs now, rendered by one
//! set of rules for everyone who asks — the coordinator's HTTP endpoint from which running
//! clones fetch them when they change (so their `/etc/hosts`, MPI hostfile and ssh
//! known_hosts follow a scale without a reboot; the thesis's clone-update-hosts-file and
//! clone-update-known-hosts) and
//! `napalmctl clones --deployment NAME --format …`.
//!
//! [`crate::cluster_files`] renders the same files for what a clones.conf *declares*; this
//! module renders them for records that callers copy out of the registry ([`LiveClone`]), so
//! it needs neither the proto crate nor the coordinator.
//!
//! Each text format starts with the line `# clones of deployment NAME (napalm registry)`
//! (watchers check it to tell a whole body from a truncated one).
//!
//! Rules, per format (clones in index order):
//! - `hosts`: `ADDRESS<TAB>NAME` for every clone with an address (the prefix length is
//!   dropped); a clone without one is a `#` comment saying its phase.
//! - `mpi`: `NAME` for registered clones only (only they can run a rank); the others are
//!   `# NAME (phase)` comments.
//! - `known-hosts`: `NAME,ADDRESS ssh-ed25519 KEY` (just `NAME KEY` without an address) for
//!   every clone whose host key is known; otherwise a comment.
//! - `json`: an array of `{name, index, address, agent, phase}` (and `host_key` when known).

use std::fmt::Write as _;
use std::str::FromStr;

use serde_json::json;

/// One clone as the registry holds it, reduced to what cluster files need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveClone {
    /// Clone name (its host name).
    pub name: String,
    /// Index within the deployment, from 1 (the sort key).
    pub index: u32,
    /// Its first address, with or without a `/prefix` (dropped when rendered).
    pub address: Option<String>,
    /// Phase in lower case (`registered`, `pending`, …), for comments and JSON.
    pub phase: String,
    /// Whether it registered (booted and reported in): only those enter the MPI hostfile.
    pub registered: bool,
    /// The agent it is placed on.
    pub agent: String,
    /// `ssh-ed25519 AAAA…` (no comment), when the caller can derive it.
    pub host_key: Option<String>,
}

impl LiveClone {
    /// The address without its prefix length, `None` when empty.
    fn bare_address(&self) -> Option<&str> {
        self.address
            .as_deref()
            .map(|a| a.split('/').next().unwrap_or(a))
            .filter(|a| !a.is_empty())
    }
}

/// A cluster file of a live deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LiveFormat {
    /// `/etc/hosts` lines.
    Hosts,
    /// OpenMPI hostfile.
    Mpi,
    /// ssh known_hosts.
    KnownHosts,
    /// JSON array for programs.
    Json,
}

impl LiveFormat {
    /// Every format with the name the CLI and the HTTP endpoint use.
    pub const ALL: [(&'static str, LiveFormat); 4] = [
        ("hosts", LiveFormat::Hosts),
        ("mpi", LiveFormat::Mpi),
        ("known-hosts", LiveFormat::KnownHosts),
        ("json", LiveFormat::Json),
    ];

    /// The name of this format (`known-hosts`, …).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether rendering needs the clones' host keys.
    pub fn needs_host_keys(self) -> bool {
        matches!(self, LiveFormat::KnownHosts | LiveFormat::Json)
    }
}

/// A format name that is not one of [`LiveFormat::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown format {0:?} for a deployment's cluster files: use hosts, mpi, known-hosts or json"
)]
pub struct UnknownFormat(pub String);

impl FromStr for LiveFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// Renders `format` for the clones of `deployment` (any order in, index order out).
pub fn render(deployment: &str, format: LiveFormat, clones: &[LiveClone]) -> String {
    let mut clones: Vec<&LiveClone> = clones.iter().collect();
    clones.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.name.cmp(&b.name)));
    let mut out = String::new();
    match format {
        LiveFormat::Hosts => {
            let _ = writeln!(out, "# clones of deployment {deployment} (napalm registry)");
            for c in clones {
                match c.bare_address() {
                    Some(a) => {
                        let _ = writeln!(out, "{a}\t{}", c.name);
                    }
                    None => {
                        let _ = writeln!(out, "# {}: no address yet ({})", c.name, c.phase);
                    }
                }
            }
        }
        LiveFormat::Mpi => {
            let _ = writeln!(out, "# clones of deployment {deployment} (napalm registry)");
            for c in clones {
                if c.registered {
                    let _ = writeln!(out, "{}", c.name);
                } else {
                    let _ = writeln!(out, "# {} ({})", c.name, c.phase);
                }
            }
        }
        LiveFormat::KnownHosts => {
            let _ = writeln!(out, "# clones of deployment {deployment} (napalm registry)");
            for c in clones {
                let names = match c.bare_address() {
                    Some(a) => format!("{},{a}", c.name),
                    None => c.name.clone(),
                };
                match &c.host_key {
                    Some(k) => {
                        let _ = writeln!(out, "{names} {k}");
                    }
                    None => {
                        let _ = writeln!(out, "# {names}: host key unknown");
                    }
                }
            }
        }
        LiveFormat::Json => {
            let rows: Vec<_> = clones
                .iter()
                .map(|c| {
                    let mut row = json!({
                        "name": c.name,
                        "index": c.index,
                        "address": c.bare_address(),
                        "agent": c.agent,
                        "phase": c.phase,
                    });
                    if let (Some(k), Some(o)) = (&c.host_key, row.as_object_mut()) {
                        o.insert("host_key".into(), json!(k));
                    }
                    row
                })
                .collect();
            out = serde_json::to_string_pretty(&rows).unwrap_or_default();
            out.push('\n');
        }
    }
    out
}

/// A strong HTTP entity tag for `body` (quoted, from its SHA-256), so a poller's
/// `If-None-Match` costs one comparison when nothing changed.
pub fn etag(body: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&d[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clone(name: &str, index: u32, address: &str, registered: bool) -> LiveClone {
        LiveClone {
            name: name.into(),
            index,
            address: (!address.is_empty()).then(|| address.into()),
            phase: if registered { "registered" } else { "pending" }.into(),
            registered,
            agent: "a1".into(),
            host_key: None,
        }
    }

    #[test]
    fn hosts_mpi_and_known_hosts_follow_the_records() {
        let mut clones = vec![
            clone("web-02", 2, "10.1.2.102/24", false),
            clone("web-01", 1, "10.1.2.101/24", true),
            clone("web-03", 3, "", false),
        ];
        assert_eq!(
            render("web", LiveFormat::Hosts, &clones),
            "# clones of deployment web (napalm registry)\n10.1.2.101\tweb-01\n\
             10.1.2.102\tweb-02\n# web-03: no address yet (pending)\n"
        );
        assert_eq!(
            render("web", LiveFormat::Mpi, &clones),
            "# clones of deployment web (napalm registry)\n\
             web-01\n# web-02 (pending)\n# web-03 (pending)\n"
        );
        clones[1].host_key = Some("ssh-ed25519 AAAAone".into());
        clones[2].host_key = Some("ssh-ed25519 AAAAthree".into());
        assert_eq!(
            render("web", LiveFormat::KnownHosts, &clones),
            "# clones of deployment web (napalm registry)\n\
             web-01,10.1.2.101 ssh-ed25519 AAAAone\n\
             # web-02,10.1.2.102: host key unknown\n\
             web-03 ssh-ed25519 AAAAthree\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render("web", LiveFormat::Json, &clones)).expect("json");
        assert_eq!(json[0]["name"], "web-01");
        assert_eq!(json[0]["address"], "10.1.2.101");
        assert_eq!(json[0]["host_key"], "ssh-ed25519 AAAAone");
        assert!(json[1].get("host_key").is_none());
        assert!(json[2]["address"].is_null());
    }

    #[test]
    fn formats_parse_by_name_and_etags_follow_content() {
        for (n, f) in LiveFormat::ALL {
            assert_eq!(n.parse::<LiveFormat>(), Ok(f));
            assert_eq!(f.name(), n);
        }
        let e = "yaml".parse::<LiveFormat>().err().map(|e| e.to_string());
        assert!(e.is_some_and(|m| m.contains("\"yaml\"") && m.contains("known-hosts")));
        assert_eq!(etag("a\n"), etag("a\n"));
        assert_ne!(etag("a\n"), etag("b\n"));
        assert!(etag("").starts_with('"') && etag("").ends_with('"'));
    }
}
