//! What a clone boots: the shared kernel, and its own initramfs = the base image
//! (napalm-init + modules, built once by `napalm-mkinitramfs`) followed by one more cpio
//! segment holding its differentiation layer (built by napalm-overlay from the deployment's
//! template sets). Everything is content-addressed, so an unchanged clone ships nothing.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use napalm_initramfs::image::{layer_segment, Compression};
use napalm_overlay::{Config, Identity, LayerBuilder, SetLibrary};
use serde_json::{json, Value};

use super::ship::Blob;

/// Where the inputs and outputs of clone artifacts are.
#[derive(Debug, Clone)]
pub struct ArtifactConfig {
    /// The guest kernel (`/boot/vmlinuz-*-cloud-amd64`).
    pub kernel: PathBuf,
    /// The base initramfs built by `napalm-mkinitramfs`.
    pub base_image: PathBuf,
    /// Directories of template sets, searched in order.
    pub sets: Vec<PathBuf>,
    /// Where layers are written (`NAME/root` is what the per-clone NFS export serves).
    pub layers_dir: PathBuf,
}

/// One clone to build.
#[derive(Debug, Clone)]
pub struct CloneInput {
    /// Name (host name).
    pub name: String,
    /// Values of its own level (token, register URL, index).
    pub values: Vec<(String, Value)>,
}

/// A built clone layer.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// Hash of all inputs of the layer.
    pub hash: String,
    /// The clone's initramfs (base + layer segment).
    pub image: Blob,
}

/// Per clone: its built layer, or why it failed.
pub type BuildResults = Vec<(String, Result<BuiltLayer, String>)>;

/// Builds kernels, layers and images.
pub struct Artifacts {
    cfg: ArtifactConfig,
    kernel: OnceLock<Blob>,
    base: OnceLock<Arc<Vec<u8>>>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the {what} {}: {e}; build it with napalm-mkinitramfs or pass another path",
            path.display()
        )
    })
}

impl Artifacts {
    /// Artifacts from `cfg` (files are read on first use).
    pub fn new(cfg: ArtifactConfig) -> Self {
        Self {
            cfg,
            kernel: OnceLock::new(),
            base: OnceLock::new(),
        }
    }

    /// The kernel blob.
    pub fn kernel(&self) -> Result<Blob, String> {
        if let Some(k) = self.kernel.get() {
            return Ok(k.clone());
        }
        let k = Blob::new("vmlinuz", read(&self.cfg.kernel, "kernel")?);
        Ok(self.kernel.get_or_init(|| k).clone())
    }

    fn base(&self) -> Result<Arc<Vec<u8>>, String> {
        if let Some(b) = self.base.get() {
            return Ok(Arc::clone(b));
        }
        let b = Arc::new(read(&self.cfg.base_image, "base initramfs")?);
        Ok(Arc::clone(self.base.get_or_init(|| b)))
    }

    /// Whether every named template set exists; the error names the missing one and where
    /// sets were looked for.
    pub fn check_sets(&self, names: &[String]) -> Result<(), String> {
        let lib = SetLibrary::new(self.cfg.sets.clone());
        for n in names {
            match lib.get(n) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(format!(
                        "unknown layer set {n:?}: no directory {n}/ in {}",
                        self.cfg
                            .sets
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Builds the layers and images of `clones` (blocking: run it off the async workers).
    /// `globals` are the deployment-wide values (server, mode…), `layers` the sets.
    pub fn build(
        &self,
        deployment: &str,
        globals: &[(String, Value)],
        layers: &[String],
        clones: &[CloneInput],
    ) -> Result<BuildResults, String> {
        let mut config = Config::new(&format!("deployment {deployment}"));
        let g = config.global();
        for (k, v) in globals {
            g.set(k, v.clone());
        }
        g.set("layers", json!(layers));
        for c in clones {
            g.add_hosts(&c.name, c.values.clone());
        }
        let cluster = config.resolve().map_err(|e| e.to_string())?;
        let sets = SetLibrary::new(self.cfg.sets.clone());
        let dir = self.cfg.layers_dir.join(deployment);
        // The cluster identity (from which clones' host keys derive) stays beside, not
        // inside, the directory whose per-clone subdirectories may be NFS-exported.
        std::fs::create_dir_all(&self.cfg.layers_dir)
            .map_err(|e| format!("creating {}: {e}", self.cfg.layers_dir.display()))?;
        let id_path = self.cfg.layers_dir.join(format!(".identity-{deployment}"));
        let identity = Identity::load_or_create(&id_path)
            .map_err(|e| format!("cluster identity {}: {e}", id_path.display()))?;
        let builder = LayerBuilder::new(&cluster, &sets, &dir).identity(identity);
        let names: Vec<&str> = clones.iter().map(|c| c.name.as_str()).collect();
        let report = builder.build(&names).map_err(|e| e.to_string())?;
        let failed: std::collections::HashMap<String, String> = report
            .failed
            .into_iter()
            .map(|(n, e)| (n, e.to_string()))
            .collect();
        let base = self.base()?;
        Ok(clones
            .iter()
            .map(|c| {
                let r = match failed.get(&c.name) {
                    Some(e) => Err(e.clone()),
                    None => self.image(&builder, &base, &c.name),
                };
                (c.name.clone(), r)
            })
            .collect())
    }

    fn image(
        &self,
        builder: &LayerBuilder<'_>,
        base: &[u8],
        name: &str,
    ) -> Result<BuiltLayer, String> {
        let paths = builder.paths(name);
        let hash = std::fs::read_to_string(&paths.hash)
            .map_err(|e| format!("layer of {name} has no input hash: {e}"))?
            .trim()
            .to_owned();
        // After a compressed base the kernel only takes a compressed segment.
        let segment = layer_segment(name, &paths.root, Compression::Gzip, 0)
            .map_err(|e| format!("layer segment of {name}: {e}"))?;
        let mut bytes = Vec::with_capacity(base.len() + 4 + segment.len());
        bytes.extend_from_slice(base);
        // The kernel skips zero padding between segments.
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(&segment);
        Ok(BuiltLayer {
            hash,
            image: Blob::new(&format!("initrd-{name}"), bytes),
        })
    }
}
