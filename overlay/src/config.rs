//! `clones.conf`: the cascading clone configuration (thesis 3.1, figure 3.1, annex IV).
//!
//! ```yaml
//! server: 10.0.0.1            # global values: any key not reserved
//! layers: [base]              # template sets, stacked left to right
//! groups:
//!   attack of the clones:     # group names may hold spaces
//!     layers: [base, mpi]     # a lower level overrides a value wholesale
//!     address_pool: 10.0.1.1  # clones without `address` get the next free address
//!     groups: { inner: { hosts: { lone: } } }   # groups nest
//!     hosts:
//!       clone[01-24]:         # ranges expand; a host's values override its groups'
//!         slots: 2
//! hosts: { head: { address: 10.0.0.2 } }        # hosts outside any group
//! ```
//!
//! Reserved keys: `groups`, `hosts` (structure) and `layers` (a list of set names). `name`,
//! `index` and `group` are computed and cannot be set. A key one typo away from a reserved
//! key (`host`, `Groups`, `layer`) is refused as unknown, since it would silently do nothing.
//! A configuration can also be built from code ([`Config::new`], [`Scope::set`],
//! [`Scope::group`], [`Scope::add_hosts`]) for deployments generated without a file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::limits::Limits;
use crate::provenance::{Level, Origin, Sourced};
use crate::yaml::{self, Key, Kind, Node, YamlLimits};

/// Keys with a structural meaning.
pub const RESERVED: [&str; 3] = ["groups", "hosts", "layers"];
/// Keys the engine computes for each clone.
pub const COMPUTED: [&str; 3] = ["name", "index", "group"];

/// A parsed clone configuration: the global scope and everything below it.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) file: Arc<str>,
    pub(crate) root: Scope,
}

/// One level of the cascade: the global level or a group.
#[derive(Clone, Debug)]
pub struct Scope {
    pub(crate) level: Level,
    pub(crate) values: BTreeMap<String, Sourced>,
    pub(crate) groups: Vec<Group>,
    pub(crate) hosts: Vec<HostEntry>,
    /// Whether `hosts:` came before `groups:` (document order decides clone order).
    pub(crate) hosts_first: bool,
    pub(crate) file: Arc<str>,
}

/// A named group (nested groups are groups inside a group's scope).
#[derive(Clone, Debug)]
pub struct Group {
    pub(crate) name: String,
    pub(crate) origin: Origin,
    pub(crate) scope: Scope,
}

/// A host entry: one name or a range, with its own values.
#[derive(Clone, Debug)]
pub struct HostEntry {
    pub(crate) pattern: String,
    pub(crate) origin: Origin,
    pub(crate) values: BTreeMap<String, Sourced>,
}

impl Config {
    /// Read and parse a clones.conf file with default [`Limits`].
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, &Limits::default())
    }

    /// Read and parse a clones.conf file with the given limits.
    pub fn load_with(path: impl AsRef<Path>, limits: &Limits) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        let label = path.display().to_string();
        if size > limits.max_config_bytes {
            return Err(ConfigError::TooLarge {
                file: label,
                line: 1,
                col: 1,
                what: format!(
                    "the file is {size} bytes, more than {} bytes",
                    limits.max_config_bytes
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Config::parse(&label, &text, limits)
    }

    /// Parse YAML text; `file` names the source in messages and provenance.
    pub fn parse(file: &str, text: &str, limits: &Limits) -> Result<Config, ConfigError> {
        if text.len() as u64 > limits.max_config_bytes {
            return Err(ConfigError::TooLarge {
                file: file.into(),
                line: 1,
                col: 1,
                what: format!("the text is more than {} bytes", limits.max_config_bytes),
            });
        }
        let ylim = YamlLimits {
            max_nodes: limits.max_yaml_nodes,
            max_depth: limits.max_yaml_depth,
        };
        let node = yaml::parse(file, text, ylim)?;
        let file: Arc<str> = Arc::from(file);
        let root = parse_scope(&file, &node, Level::Global, "")?;
        tracing::debug!(file = %file, "clone configuration parsed");
        Ok(Config { file, root })
    }

    /// An empty configuration to fill from code; `label` stands for the file in provenance.
    pub fn new(label: &str) -> Config {
        let file: Arc<str> = Arc::from(label);
        Config {
            root: Scope::empty(Level::Global, file.clone()),
            file,
        }
    }

    /// The global scope (top of the cascade).
    pub fn global(&mut self) -> &mut Scope {
        &mut self.root
    }

    /// The name of the source file (or label).
    pub fn file(&self) -> &str {
        &self.file
    }
}

impl Scope {
    fn empty(level: Level, file: Arc<str>) -> Scope {
        Scope {
            level,
            values: BTreeMap::new(),
            groups: Vec::new(),
            hosts: Vec::new(),
            hosts_first: true,
            file,
        }
    }

    /// Set a value at this level (replaces one set before at the same level).
    pub fn set(&mut self, key: &str, value: serde_json::Value) -> &mut Scope {
        let origin = Origin::api(&self.file, self.level.clone());
        self.values
            .insert(key.to_string(), Sourced { value, origin });
        self
    }

    /// The group `name` directly below this level, created if absent.
    pub fn group(&mut self, name: &str) -> &mut Scope {
        let idx = match self.groups.iter().position(|g| g.name == name) {
            Some(i) => i,
            None => {
                let path = match &self.level {
                    Level::Group(p) => format!("{p}/{name}"),
                    _ => name.to_string(),
                };
                let level = Level::Group(path);
                self.groups.push(Group {
                    name: name.to_string(),
                    origin: Origin::api(&self.file, level.clone()),
                    scope: Scope::empty(level, self.file.clone()),
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[idx].scope
    }

    /// Add a host entry (a name or a range such as `clone[01-24]`) with its own values.
    /// Names are checked when the configuration is resolved.
    pub fn add_hosts(
        &mut self,
        pattern: &str,
        values: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> &mut Scope {
        let level = Level::Host(pattern.to_string());
        let values = values
            .into_iter()
            .map(|(k, value)| {
                let origin = Origin::api(&self.file, level.clone());
                (k, Sourced { value, origin })
            })
            .collect();
        self.hosts.push(HostEntry {
            pattern: pattern.to_string(),
            origin: Origin::api(&self.file, level),
            values,
        });
        self
    }
}

fn invalid(file: &str, line: usize, col: usize, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_string(),
        line,
        col,
        message,
    }
}

/// Refuse keys that look like a misspelt reserved key, and computed names.
fn check_key(file: &str, key: &Key, host_level: bool) -> Result<(), ConfigError> {
    let unknown = |hint: String| ConfigError::UnknownKey {
        file: file.to_string(),
        line: key.line,
        col: key.col,
        key: key.name.clone(),
        hint,
    };
    if key.name.is_empty() || key.name.chars().any(char::is_control) {
        return Err(unknown(
            "value names must be non-empty and printable".into(),
        ));
    }
    if COMPUTED.contains(&key.name.as_str()) {
        return Err(unknown(format!(
            "`{}` is computed for each clone and cannot be set; pick another name",
            key.name
        )));
    }
    if host_level && (key.name == "groups" || key.name == "hosts") {
        return Err(unknown(format!(
            "a host cannot hold `{}`; declare groups and hosts under `groups:`",
            key.name
        )));
    }
    let lower = key.name.to_ascii_lowercase();
    for r in RESERVED {
        if key.name != r && (lower == r || format!("{lower}s") == r || lower == format!("{r}s")) {
            return Err(unknown(format!("did you mean `{r}`?")));
        }
    }
    Ok(())
}

fn sourced(file: &Arc<str>, key: &Key, node: &Node, level: &Level) -> Sourced {
    Sourced {
        value: node.to_json(),
        origin: Origin {
            file: file.clone(),
            line: key.line,
            col: key.col,
            level: level.clone(),
        },
    }
}

fn entries<'a>(file: &str, node: &'a Node, what: &str) -> Result<&'a [(Key, Node)], ConfigError> {
    match &node.kind {
        Kind::Map(e) => Ok(e),
        Kind::Null => Ok(&[]),
        _ => Err(invalid(
            file,
            node.line,
            node.col,
            format!("{what} must be a mapping of names to values"),
        )),
    }
}

fn parse_scope(
    file: &Arc<str>,
    node: &Node,
    level: Level,
    path: &str,
) -> Result<Scope, ConfigError> {
    let mut scope = Scope::empty(level.clone(), file.clone());
    let mut seen_groups = false;
    for (key, value) in entries(file, node, "a group (or the top of clones.conf)")? {
        check_key(file, key, false)?;
        match key.name.as_str() {
            "groups" => {
                seen_groups = true;
                for (gkey, gnode) in entries(file, value, "`groups:`")? {
                    if gkey.name.trim().is_empty() || gkey.name.contains('/') {
                        return Err(invalid(
                            file,
                            gkey.line,
                            gkey.col,
                            format!(
                                "group name `{}` must be non-empty and hold no `/`",
                                gkey.name
                            ),
                        ));
                    }
                    let gpath = if path.is_empty() {
                        gkey.name.clone()
                    } else {
                        format!("{path}/{}", gkey.name)
                    };
                    let glevel = Level::Group(gpath.clone());
                    scope.groups.push(Group {
                        name: gkey.name.clone(),
                        origin: Origin {
                            file: file.clone(),
                            line: gkey.line,
                            col: gkey.col,
                            level: glevel.clone(),
                        },
                        scope: parse_scope(file, gnode, glevel, &gpath)?,
                    });
                }
            }
            "hosts" => {
                scope.hosts_first = !seen_groups;
                parse_hosts(file, value, &mut scope)?;
            }
            _ => {
                scope
                    .values
                    .insert(key.name.clone(), sourced(file, key, value, &level));
            }
        }
    }
    Ok(scope)
}

fn parse_hosts(file: &Arc<str>, node: &Node, scope: &mut Scope) -> Result<(), ConfigError> {
    // `hosts: [a, b]` is accepted as well as the annex IV mapping form.
    let list: Vec<(Key, Option<&Node>)> = match &node.kind {
        Kind::Seq(items) => items
            .iter()
            .map(|n| match &n.kind {
                Kind::Str(s) => Ok((
                    Key {
                        name: s.clone(),
                        line: n.line,
                        col: n.col,
                    },
                    None,
                )),
                _ => Err(invalid(
                    file,
                    n.line,
                    n.col,
                    "a `hosts:` list holds host names only".into(),
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => entries(file, node, "`hosts:`")?
            .iter()
            .map(|(k, v)| (k.clone(), Some(v)))
            .collect(),
    };
    for (hkey, hnode) in list {
        let level = Level::Host(hkey.name.clone());
        let mut values = BTreeMap::new();
        if let Some(hnode) = hnode {
            for (vkey, vnode) in entries(file, hnode, &format!("host `{}`", hkey.name))? {
                check_key(file, vkey, true)?;
                values.insert(vkey.name.clone(), sourced(file, vkey, vnode, &level));
            }
        }
        scope.hosts.push(HostEntry {
            pattern: hkey.name.clone(),
            origin: Origin {
                file: file.clone(),
                line: hkey.line,
                col: hkey.col,
                level,
            },
            values,
        });
    }
    Ok(())
}

impl Group {
    /// Group name as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the group was declared.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The group's own level (values, nested groups, hosts).
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl Scope {
    /// Groups directly below this level.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Values set at this level.
    pub fn values(&self) -> &BTreeMap<String, Sourced> {
        &self.values
    }
}
