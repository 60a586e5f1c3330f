//! The resolved cluster: every clone with its values after the cascade, its index, address
//! and template-set stack. This is what templates, cluster files and builds consume.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, Scope};
use crate::error::ConfigError;
use crate::limits::Limits;
use crate::provenance::{Explanation, Level, Origin, Resolved, Sourced};
use crate::range;

/// Template sets used when no level sets `layers:`.
pub const DEFAULT_LAYERS: [&str; 1] = ["base"];

/// One clone after the cascade.
#[derive(Clone, Debug, Serialize)]
pub struct CloneSpec {
    /// Hostname, also the name of its layer directory under the output directory.
    pub name: String,
    /// 0-based position in the cluster (document order).
    pub index: usize,
    /// Group path (`outer/inner`), `None` for hosts declared outside groups.
    pub group: Option<String>,
    /// Address from `address` or allocated from `address_pool`.
    pub address: Option<IpAddr>,
    /// Template sets, stacked left to right (later wins).
    pub layers: Vec<String>,
    /// Every resolved value with its provenance (includes the computed ones).
    pub values: BTreeMap<String, Resolved>,
}

/// All clones of a configuration, in document order.
#[derive(Clone, Debug, Serialize)]
pub struct Cluster {
    /// Source file (or label) of the configuration.
    pub source: Arc<str>,
    /// The global `server` value, when set.
    pub server: Option<String>,
    /// Every clone in document order (the order of `index`).
    pub clones: Vec<CloneSpec>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
}

impl CloneSpec {
    /// Values as a JSON object (what templates and hooks see, before cluster facts).
    pub fn values_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.values
            .iter()
            .map(|(k, r)| (k.clone(), r.value.clone()))
            .collect()
    }

    /// One line per value with its origin and what it overrode (`clone show --explain`).
    pub fn explain(&self) -> Vec<Explanation> {
        self.values
            .iter()
            .map(|(k, r)| Explanation {
                key: k.clone(),
                value: r.value.to_string(),
                origin: r.origin.clone(),
                overridden: r.overridden.iter().map(|s| s.origin.clone()).collect(),
            })
            .collect()
    }
}

impl Cluster {
    /// The clone called `name`.
    pub fn get(&self, name: &str) -> Option<&CloneSpec> {
        self.by_name.get(name).map(|&i| &self.clones[i])
    }

    /// Number of clones.
    pub fn len(&self) -> usize {
        self.clones.len()
    }

    /// Whether the cluster has no clones.
    pub fn is_empty(&self) -> bool {
        self.clones.is_empty()
    }
}

struct Pending {
    name: String,
    group: Option<String>,
    origin: Origin,
    values: BTreeMap<String, Resolved>,
}

impl Config {
    /// Resolve the cascade into a [`Cluster`] with default [`Limits`].
    pub fn resolve(&self) -> Result<Cluster, ConfigError> {
        self.resolve_with(&Limits::default())
    }

    /// Resolve the cascade: expand ranges, check names, apply global → group → nested group
    /// → host overrides, assign indexes and addresses, validate `layers`.
    pub fn resolve_with(&self, limits: &Limits) -> Result<Cluster, ConfigError> {
        let mut pending = Vec::new();
        walk(&self.root, &BTreeMap::new(), None, limits, &mut pending)?;
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut first_origin: Vec<Origin> = Vec::new();
        for p in &pending {
            let lower = p.name.to_ascii_lowercase();
            if let Some(&i) = by_name.get(&lower) {
                return Err(dup(
                    &p.origin,
                    &format!("host `{}`", p.name),
                    &first_origin[i],
                ));
            }
            by_name.insert(lower, first_origin.len());
            first_origin.push(p.origin.clone());
        }
        let mut pools: HashMap<(Arc<str>, usize, usize), u128> = HashMap::new();
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        let mut clones = Vec::with_capacity(pending.len());
        for (index, mut p) in pending.into_iter().enumerate() {
            let address = address_of(&mut p, &mut pools)?;
            if let Some(a) = address {
                if let Some(&other) = addresses.get(&a) {
                    return Err(dup(
                        &p.origin,
                        &format!(
                            "address {a} (clones `{}` and `{}`)",
                            clones_name(&clones, other),
                            p.name
                        ),
                        &first_origin[other],
                    ));
                }
                addresses.insert(a, index);
            }
            let layers = layers_of(&p)?;
            let computed = |value: serde_json::Value| Resolved {
                value,
                origin: Origin {
                    level: Level::Computed,
                    ..p.origin.clone()
                },
                overridden: Vec::new(),
            };
            let name_v = computed(p.name.clone().into());
            let index_v = computed(index.into());
            let group_v = computed(p.group.clone().map_or(serde_json::Value::Null, Into::into));
            p.values.insert("name".into(), name_v);
            p.values.insert("index".into(), index_v);
            p.values.insert("group".into(), group_v);
            clones.push(CloneSpec {
                name: p.name,
                index,
                group: p.group,
                address,
                layers,
                values: p.values,
            });
        }
        let server = self.root.values.get("server").map(|s| match &s.value {
            serde_json::Value::String(v) => v.clone(),
            other => other.to_string(),
        });
        let by_name = clones
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        tracing::debug!(clones = clones.len(), "cluster resolved");
        Ok(Cluster {
            source: self.file.clone(),
            server,
            clones,
            by_name,
        })
    }
}

fn clones_name(clones: &[CloneSpec], i: usize) -> &str {
    clones.get(i).map_or("?", |c| c.name.as_str())
}

fn dup(at: &Origin, what: &str, first: &Origin) -> ConfigError {
    ConfigError::Duplicate {
        file: at.file.to_string(),
        line: at.line,
        col: at.col,
        what: what.to_string(),
        first: first.line,
    }
}

fn invalid(o: &Origin, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: o.file.to_string(),
        line: o.line,
        col: o.col,
        message,
    }
}

fn overlay(
    base: &BTreeMap<String, Resolved>,
    level: &BTreeMap<String, Sourced>,
) -> BTreeMap<String, Resolved> {
    let mut out = base.clone();
    for (k, s) in level {
        let overridden = match out.remove(k) {
            Some(mut prev) => {
                prev.overridden.push(Sourced {
                    value: prev.value,
                    origin: prev.origin,
                });
                prev.overridden
            }
            None => Vec::new(),
        };
        out.insert(
            k.clone(),
            Resolved {
                value: s.value.clone(),
                origin: s.origin.clone(),
                overridden,
            },
        );
    }
    out
}

fn walk(
    scope: &Scope,
    inherited: &BTreeMap<String, Resolved>,
    group: Option<&str>,
    limits: &Limits,
    out: &mut Vec<Pending>,
) -> Result<(), ConfigError> {
    let here = overlay(inherited, &scope.values);
    let hosts = |out: &mut Vec<Pending>| -> Result<(), ConfigError> {
        for h in &scope.hosts {
            let left = limits.max_clones.saturating_sub(out.len());
            let names = range::expand(&h.pattern, left).map_err(|e| {
                if range::expand(&h.pattern, limits.max_clones).is_ok() {
                    ConfigError::TooLarge {
                        file: h.origin.file.to_string(),
                        line: h.origin.line,
                        col: h.origin.col,
                        what: format!(
                            "`{}` brings the cluster to more than {} clones",
                            h.pattern, limits.max_clones
                        ),
                    }
                } else {
                    invalid(&h.origin, e.0)
                }
            })?;
            let values = overlay(&here, &h.values);
            for name in names {
                out.push(Pending {
                    name,
                    group: group.map(str::to_string),
                    origin: h.origin.clone(),
                    values: values.clone(),
                });
            }
        }
        Ok(())
    };
    if scope.hosts_first {
        hosts(out)?;
    }
    for g in &scope.groups {
        let path = match group {
            Some(p) => format!("{p}/{}", g.name),
            None => g.name.clone(),
        };
        walk(&g.scope, &here, Some(&path), limits, out)?;
    }
    if !scope.hosts_first {
        hosts(out)?;
    }
    Ok(())
}

fn parse_ip(r: &Resolved, key: &str) -> Result<IpAddr, ConfigError> {
    let text = r.value.as_str().unwrap_or_default();
    text.parse::<IpAddr>().map_err(|_| {
        invalid(
            &r.origin,
            format!(
                "`{key}: {}` is not an IP address (write e.g. `{key}: 10.0.1.7`)",
                r.value
            ),
        )
    })
}

fn address_of(
    p: &mut Pending,
    pools: &mut HashMap<(Arc<str>, usize, usize), u128>,
) -> Result<Option<IpAddr>, ConfigError> {
    if let Some(r) = p.values.get("address") {
        return parse_ip(r, "address").map(Some);
    }
    let Some(r) = p.values.get("address_pool") else {
        return Ok(None);
    };
    let start = parse_ip(r, "address_pool")?;
    let key = (r.origin.file.clone(), r.origin.line, r.origin.col);
    let n = pools.entry(key).or_insert(0);
    let offset = *n;
    *n += 1;
    let addr = match start {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_add(offset as u32)
            .filter(|_| offset <= u32::MAX as u128)
            .map(|a| IpAddr::V4(a.into())),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(offset)
            .map(|a| IpAddr::V6(a.into())),
    };
    let addr = addr.ok_or_else(|| {
        invalid(
            &r.origin,
            format!(
                "address_pool {start} runs out of addresses at clone `{}`",
                p.name
            ),
        )
    })?;
    let origin = Origin {
        level: Level::Computed,
        ..r.origin.clone()
    };
    p.values.insert(
        "address".into(),
        Resolved {
            value: addr.to_string().into(),
            origin,
            overridden: Vec::new(),
        },
    );
    Ok(Some(addr))
}

fn layers_of(p: &Pending) -> Result<Vec<String>, ConfigError> {
    let Some(r) = p.values.get("layers") else {
        return Ok(DEFAULT_LAYERS.iter().map(|s| s.to_string()).collect());
    };
    let items = r.value.as_array().ok_or_else(|| {
        invalid(
            &r.origin,
            format!(
                "`layers: {}` must be a list of template set names, e.g. `layers: [base, mpi]`",
                r.value
            ),
        )
    })?;
    items
        .iter()
        .map(|v| {
            let name = v.as_str().unwrap_or_default();
            let ok = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if ok {
                Ok(name.to_string())
            } else {
                Err(invalid(
                    &r.origin,
                    format!(
                        "template set name {v} must be letters, digits, `-`, `_` or `.` (no paths)"
                    ),
                ))
            }
        })
        .collect()
}
