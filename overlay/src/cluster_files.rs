//! Cluster-wide files, rendered once per cluster (not once per clone): `/etc/hosts` lines,
//! the OpenMPI hostfile, ssh known_hosts, and machine-readable listings (thesis clone-list;
//! `napalmctl clones --format hosts|mpi|known-hosts|json|yaml|table`).
//!
//! ```text
//! mpirun --hostfile <(napalmctl clones --format mpi) -np 8 ...
//! ```

use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;
use serde_json::json;

use crate::cluster::Cluster;
use crate::identity::Identity;

/// An output format of [`ClusterFiles::render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `ADDRESS NAME` lines for clones with an address (`/etc/hosts`).
    Hosts,
    /// OpenMPI hostfile: `NAME` or `NAME slots=N` (from the `slots` value).
    Mpi,
    /// ssh known_hosts: `NAME[,ADDRESS] ssh-ed25519 …` from the clones' derived host keys.
    KnownHosts,
    /// JSON array of clones with their values.
    Json,
    /// The same as YAML.
    Yaml,
    /// An aligned text table for people.
    Table,
}

impl Format {
    /// Every format, with the name the CLI accepts.
    pub const ALL: [(&'static str, Format); 6] = [
        ("hosts", Format::Hosts),
        ("mpi", Format::Mpi),
        ("known-hosts", Format::KnownHosts),
        ("json", Format::Json),
        ("yaml", Format::Yaml),
        ("table", Format::Table),
    ];
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        Format::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown format `{s}`; use one of {}", names.join(", "))
            })
    }
}

/// Renders the cluster-wide files of one cluster.
#[derive(Debug)]
pub struct ClusterFiles<'a> {
    cluster: &'a Cluster,
    identity: &'a Identity,
}

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    index: usize,
    group: Option<&'a str>,
    address: Option<String>,
    layers: &'a [String],
    values: serde_json::Map<String, serde_json::Value>,
}

impl<'a> ClusterFiles<'a> {
    /// Files of `cluster`; `identity` gives the host keys for known_hosts.
    pub fn new(cluster: &'a Cluster, identity: &'a Identity) -> Self {
        ClusterFiles { cluster, identity }
    }

    fn rows(&self) -> Vec<Row<'a>> {
        self.cluster
            .clones
            .iter()
            .map(|c| Row {
                name: &c.name,
                index: c.index,
                group: c.group.as_deref(),
                address: c.address.map(|a| a.to_string()),
                layers: &c.layers,
                values: c.values_json(),
            })
            .collect()
    }

    /// Render one format.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        let clones = &self.cluster.clones;
        match format {
            Format::Hosts => {
                let _ = writeln!(out, "# clones of {} (napalm)", self.cluster.source);
                for c in clones {
                    match c.address {
                        Some(a) => {
                            let _ = writeln!(out, "{a}\t{}", c.name);
                        }
                        None => {
                            let _ = writeln!(
                                out,
                                "# {}: no address (set `address` or `address_pool`)",
                                c.name
                            );
                        }
                    }
                }
            }
            Format::Mpi => {
                for c in clones {
                    match c.values.get("slots").map(|r| &r.value) {
                        Some(serde_json::Value::Number(n)) => {
                            let _ = writeln!(out, "{} slots={n}", c.name);
                        }
                        _ => {
                            let _ = writeln!(out, "{}", c.name);
                        }
                    }
                }
            }
            Format::KnownHosts => {
                for c in clones {
                    let names = match c.address {
                        Some(a) => format!("{},{a}", c.name),
                        None => c.name.clone(),
                    };
                    let _ = writeln!(out, "{names} {}", self.identity.ssh_public(&c.name));
                }
            }
            Format::Json => {
                out = serde_json::to_string_pretty(&self.rows()).unwrap_or_default();
                out.push('\n');
            }
            Format::Yaml => out = serde_yaml::to_string(&self.rows()).unwrap_or_default(),
            Format::Table => {
                let head = ["NAME", "INDEX", "ADDRESS", "GROUP", "LAYERS"];
                let rows: Vec<[String; 5]> = clones
                    .iter()
                    .map(|c| {
                        [
                            c.name.clone(),
                            c.index.to_string(),
                            c.address.map_or("-".into(), |a| a.to_string()),
                            c.group.clone().unwrap_or_else(|| "-".into()),
                            c.layers.join(","),
                        ]
                    })
                    .collect();
                let mut w = head.map(str::len);
                for r in &rows {
                    for (i, cell) in r.iter().enumerate() {
                        w[i] = w[i].max(cell.chars().count());
                    }
                }
                let mut line = |cells: [&str; 5]| {
                    let s: Vec<String> = cells
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                        .collect();
                    let _ = writeln!(out, "{}", s.join("  ").trim_end());
                };
                line(head);
                for r in &rows {
                    line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
                }
            }
        }
        out
    }

    /// The `cluster_files` object cluster templates (`*.ctmpl`) see.
    pub fn template_value(&self) -> serde_json::Value {
        json!({
            "hosts": self.render(Format::Hosts),
            "mpi": self.render(Format::Mpi),
            "known_hosts": self.render(Format::KnownHosts),
        })
    }
}
