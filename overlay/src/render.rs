//! Rendering templates with handlebars in strict mode (an undefined value is an error naming
//! the template file, line and clone) and without HTML escaping (these are config files).
//!
//! A per-clone template (`*.tmpl`) sees the clone's resolved values (`name`, `index`, `group`,
//! `address`, `layers`, every clones.conf value), `identity` (`machine_id`,
//! `ssh_host_ed25519_key`, `ssh_host_ed25519_key_pub`), `cluster` (`size`, `server`) and, only
//! when its source mentions `clones`, `clones`: the list of every clone's `name`, `index`,
//! `group`, `address`. A cluster template (`*.ctmpl`) sees `cluster`, `clones` and
//! `cluster_files` (`hosts`, `mpi`, `known_hosts`), and is rendered once per cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use handlebars::{Context, Handlebars};
use serde_json::{json, Value};

use crate::cluster::{CloneSpec, Cluster};
use crate::error::TemplateError;
use crate::identity::CloneIdentity;
use crate::layer::{Entry, Layer};
use crate::stack::Plan;
use crate::template_set::{SetEntry, TemplateSet};

/// Every template of the sets in use, compiled once.
pub struct Renderer {
    hb: Handlebars<'static>,
    max_bytes: usize,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Renderer({} templates)", self.hb.get_templates().len())
    }
}

fn key(file: &Path) -> String {
    file.display().to_string()
}

impl Renderer {
    /// Compile every template of `sets`; a syntax error names file, line and column.
    pub fn new(sets: &[Arc<TemplateSet>], max_bytes: usize) -> Result<Renderer, TemplateError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        for set in sets {
            for (file, source) in &set.sources {
                let name = key(file);
                if hb.has_template(&name) {
                    continue;
                }
                hb.register_template_string(&name, source.as_ref())
                    .map_err(|e| {
                        let (line, col) = e.pos().unwrap_or((0, 0));
                        TemplateError::Syntax {
                            template: name.clone(),
                            line,
                            col,
                            message: e.reason().to_string(),
                        }
                    })?;
            }
        }
        Ok(Renderer { hb, max_bytes })
    }

    /// Render template `file` with `ctx` for `clone` (use `*cluster*` for cluster templates).
    pub fn render(&self, file: &Path, ctx: &Context, clone: &str) -> Result<String, TemplateError> {
        let name = key(file);
        let out = self
            .hb
            .render_with_context(&name, ctx)
            .map_err(|e| TemplateError::Render {
                template: e.template_name.clone().unwrap_or_else(|| name.clone()),
                line: e.line_no.unwrap_or(0),
                clone: clone.to_string(),
                message: e.reason().to_string(),
            })?;
        if out.len() > self.max_bytes {
            return Err(TemplateError::TooLarge {
                path: file.to_path_buf(),
                what: format!(
                    "output for clone `{clone}` is {} bytes, more than {}",
                    out.len(),
                    self.max_bytes
                ),
            });
        }
        Ok(out)
    }
}

/// Cluster facts shared by every render, built once.
#[derive(Clone, Debug)]
pub struct Facts {
    /// `cluster` object.
    pub cluster: Value,
    /// `clones` array.
    pub clones: Arc<Value>,
}

impl Facts {
    /// Facts of `cluster`.
    pub fn new(cluster: &Cluster) -> Facts {
        let clones: Vec<Value> = cluster
            .clones
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "index": c.index,
                    "group": c.group,
                    "address": c.address.map(|a| a.to_string()),
                })
            })
            .collect();
        Facts {
            cluster: json!({ "size": cluster.len(), "server": cluster.server }),
            clones: Arc::new(Value::Array(clones)),
        }
    }
}

/// The context a per-clone template sees.
pub fn clone_context(
    clone: &CloneSpec,
    facts: &Facts,
    identity: &CloneIdentity,
    with_clones: bool,
) -> Value {
    let mut map = clone.values_json();
    map.insert("layers".into(), json!(clone.layers));
    map.insert("identity".into(), json!(identity));
    map.insert("cluster".into(), facts.cluster.clone());
    if with_clones {
        map.insert("clones".into(), (*facts.clones).clone());
    }
    Value::Object(map)
}

/// Render every cluster template used by `plans` once. Returns file → output.
pub fn render_cluster_templates(
    renderer: &Renderer,
    plans: &[Arc<Plan>],
    facts: &Facts,
    cluster_files: Value,
) -> Result<HashMap<PathBuf, Arc<[u8]>>, TemplateError> {
    let ctx = Context::wraps(json!({
        "cluster": facts.cluster,
        "clones": *facts.clones,
        "cluster_files": cluster_files,
    }))
    .map_err(|e| TemplateError::Invalid {
        path: PathBuf::from("<cluster facts>"),
        message: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for plan in plans {
        for (_, entry) in plan.entries.values() {
            if let SetEntry::ClusterTemplate { file, .. } = entry {
                if !out.contains_key(file) {
                    let text = renderer.render(file, &ctx, "*cluster*")?;
                    out.insert(file.clone(), Arc::from(text.into_bytes()));
                }
            }
        }
    }
    Ok(out)
}

/// Render one clone's layer from its plan; without `with_cluster_files`, the cluster
/// templates' outputs are left out (they go to a shared cluster layer instead).
pub fn render_layer(
    plan: &Plan,
    renderer: &Renderer,
    context: Value,
    cluster_outputs: &HashMap<PathBuf, Arc<[u8]>>,
    with_cluster_files: bool,
    clone: &str,
) -> Result<Layer, TemplateError> {
    let ctx = Context::wraps(context).map_err(|e| TemplateError::Invalid {
        path: PathBuf::from(clone),
        message: e.to_string(),
    })?;
    let mut layer = Layer::default();
    for (path, (_, entry)) in &plan.entries {
        if !with_cluster_files && matches!(entry, SetEntry::ClusterTemplate { .. }) {
            continue;
        }
        let e = match entry {
            SetEntry::Dir { meta, opaque } => Entry::Dir {
                meta: *meta,
                opaque: *opaque,
            },
            SetEntry::File { meta, data } => Entry::File {
                meta: *meta,
                data: data.clone(),
            },
            SetEntry::Symlink { meta, target } => Entry::Symlink {
                meta: *meta,
                target: target.clone(),
            },
            SetEntry::Whiteout => Entry::Whiteout,
            SetEntry::Template { meta, file } => Entry::File {
                meta: *meta,
                data: Arc::from(renderer.render(file, &ctx, clone)?.into_bytes()),
            },
            SetEntry::ClusterTemplate { meta, file } => Entry::File {
                meta: *meta,
                data: cluster_outputs
                    .get(file)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new())),
            },
        };
        layer.entries.insert(path.clone(), e);
    }
    layer.add_parents();
    Ok(layer)
}
