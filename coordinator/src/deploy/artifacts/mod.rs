//! What a clone boots: the shared kernel (`kernel`: the bzImage, or for QEMU/KVM its ELF
//! entered through PVH), and its own initramfs = the base image
//! (napalm-init + modules, built once by `napalm-mkinitramfs`) followed by one more cpio
//! segment holding its differentiation layer (built by napalm-overlay from the deployment's
//! template sets). Everything is content-addressed, so an unchanged clone ships nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use napalm_initramfs::image::{layer_segment, Compression};
use napalm_overlay::provenance::{Level, Origin, Resolved, Sourced};
use napalm_overlay::{CloneSpec, Cluster, Config, Identity, LayerBuilder, Outputs, SetLibrary};
use napalm_proto::v1::BlobRef;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::ship::Blob;
use super::DeployError;

mod firmware;
mod kernel;
mod versions;

pub use firmware::{GuestFirmware, FIRMWARE, QBOOT};
pub use kernel::{KernelEntry, Kernels, BZIMAGE, VMLINUX};

/// Where the inputs and outputs of clone artifacts are.
#[derive(Debug, Clone)]
pub struct ArtifactConfig {
    /// The guest kernel (`/boot/vmlinuz-*-cloud-amd64`).
    pub kernel: PathBuf,
    /// Which entry QEMU/KVM clones boot it through (`--kernel-entry`).
    pub kernel_entry: KernelEntry,
    /// Which firmware QEMU TCG clones start with (`--guest-firmware`).
    pub firmware: GuestFirmware,
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

/// A clones.conf that declares a deployment's clones (names, groups, template sets,
/// values), as the operator sent it.
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    /// The file's name as the operator gave it (provenance says `FILE:LINE`).
    pub file: &'a str,
    /// Its content.
    pub text: &'a str,
}

impl Declared<'_> {
    /// The file's clones after the cascade; errors quote the file and line.
    pub fn resolve(&self) -> Result<Cluster, napalm_overlay::ConfigError> {
        let limits = napalm_overlay::Limits::default();
        Config::parse(self.file, self.text, &limits)?.resolve_with(&limits)
    }
}

/// Sets `key` on `clone` at the coordinator's level: it wins over the file's value, which
/// provenance keeps as overridden (`clone show --explain`).
fn impose(clone: &mut CloneSpec, key: &str, value: Value, level: &Level) {
    let origin = Origin::api("napalm-coordinator", level.clone());
    let mut overridden = Vec::new();
    if let Some(old) = clone.values.remove(key) {
        overridden.extend(old.overridden);
        overridden.push(Sourced {
            value: old.value,
            origin: old.origin,
        });
    }
    clone.values.insert(
        key.to_owned(),
        Resolved {
            value,
            origin,
            overridden,
        },
    );
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
pub type BuildResults = Vec<(String, Result<BuiltLayer, DeployError>)>;

/// Builds kernels, layers and images.
pub struct Artifacts {
    cfg: ArtifactConfig,
    kernels: OnceLock<Kernels>,
    base: OnceLock<Blob>,
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, DeployError> {
    std::fs::read(path).map_err(|e| DeployError::Input {
        what,
        path: path.to_owned(),
        source: Arc::new(e),
    })
}

impl Artifacts {
    /// Artifacts from `cfg` (files are read on first use).
    pub fn new(cfg: ArtifactConfig) -> Self {
        Self {
            cfg,
            kernels: OnceLock::new(),
            base: OnceLock::new(),
        }
    }

    /// The kernel in the forms clones boot it, with the firmware that loads it (read, and
    /// the kernel's ELF extracted, once).
    pub fn kernels(&self) -> Result<Kernels, DeployError> {
        if let Some(k) = self.kernels.get() {
            return Ok(k.clone());
        }
        let mut k = Kernels::load(&self.cfg.kernel, self.cfg.kernel_entry)?;
        k.firmware = self.cfg.firmware.load(std::path::Path::new(QBOOT))?;
        Ok(self.kernels.get_or_init(|| k).clone())
    }

    fn base(&self) -> Result<Arc<Vec<u8>>, DeployError> {
        Ok(self.base_blob()?.bytes)
    }

    /// The base initramfs as clones with their layer over NFS boot it (read and hashed
    /// once).
    pub fn base_blob(&self) -> Result<Blob, DeployError> {
        if let Some(b) = self.base.get() {
            return Ok(b.clone());
        }
        let b = Blob::new("initrd-base", read(&self.cfg.base_image, "base initramfs")?);
        Ok(self.base.get_or_init(|| b).clone())
    }

    /// Whether every named template set exists; the error names the missing one and where
    /// sets were looked for.
    pub fn check_sets(&self, names: &[String]) -> Result<(), DeployError> {
        let lib = SetLibrary::new(self.cfg.sets.clone());
        for n in names {
            match lib.get(n) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(DeployError::UnknownSet {
                        name: n.clone(),
                        searched: self
                            .cfg
                            .sets
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
                Err(e) => {
                    return Err(DeployError::BadSet {
                        name: n.clone(),
                        source: Arc::new(e),
                    })
                }
            }
        }
        Ok(())
    }

    /// Builds the layers and images of `clones` (blocking: run it off the async workers).
    /// `globals` are the deployment-wide values (server, mode…), `layers` the sets,
    /// `identity` the cluster secret clones' host keys and machine ids derive from.
    /// With a `declared` clones.conf, each clone's sets and values come from its cascade
    /// and `globals`, `layers` and the clones' own values are imposed over the file's.
    /// `staged` builds beside the exported layers (nothing a clone mounts changes): to
    /// learn which clones a new spec changes before replacing any.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        deployment: &str,
        globals: &[(String, Value)],
        layers: &[String],
        clones: &[CloneInput],
        declared: Option<Declared<'_>>,
        over_nfs: bool,
        staged: bool,
        identity: Identity,
    ) -> Result<BuildResults, DeployError> {
        let cluster = match declared {
            Some(file) => {
                let mut cluster = file
                    .resolve()
                    .map_err(|e| DeployError::Cluster(Arc::new(e)))?;
                for c in clones {
                    let Some(spec) = cluster.clones.iter_mut().find(|s| s.name == c.name) else {
                        continue;
                    };
                    for (k, v) in globals {
                        impose(spec, k, v.clone(), &Level::Global);
                    }
                    let host = Level::Host(c.name.clone());
                    for (k, v) in &c.values {
                        if k == "address" {
                            if let Some(a) = v.as_str().and_then(|a| a.parse().ok()) {
                                spec.address = Some(a);
                            }
                        }
                        impose(spec, k, v.clone(), &host);
                    }
                }
                cluster
            }
            None => {
                let mut config = Config::new(&format!("deployment {deployment}"));
                let g = config.global();
                for (k, v) in globals {
                    g.set(k, v.clone());
                }
                g.set("layers", json!(layers));
                for c in clones {
                    g.add_hosts(&c.name, c.values.clone());
                }
                config
                    .resolve()
                    .map_err(|e| DeployError::Cluster(Arc::new(e)))?
            }
        };
        let sets = SetLibrary::new(self.cfg.sets.clone());
        let dir = if staged {
            self.cfg.layers_dir.join(".staging").join(deployment)
        } else {
            self.cfg.layers_dir.join(deployment)
        };
        // The cluster identity (from which clones' host keys derive) stays beside, not
        // inside, the directory whose per-clone subdirectories may be NFS-exported.
        std::fs::create_dir_all(&self.cfg.layers_dir)
            .map_err(|e| DeployError::io("creating", &self.cfg.layers_dir, e))?;
        private_dir(&self.cfg.layers_dir)?;
        // A deployment made before identities were derived keeps the secret it was given
        // (and so its clones' host keys).
        let id_path = self.cfg.layers_dir.join(format!(".identity-{deployment}"));
        let identity = if id_path.exists() {
            Identity::load_or_create(&id_path)
                .map_err(|e| DeployError::io("reading the cluster identity", &id_path, e))?
        } else {
            identity
        };
        // Only the directory form: it is what the NFS layer export serves and what the
        // initramfs segment is packed from (the cpio and tar.gz forms cost a gzip per clone).
        let builder = LayerBuilder::new(&cluster, &sets, &dir)
            .identity(identity)
            .outputs(Outputs {
                dir: true,
                cpio: false,
                tar_gz: false,
            });
        let names: Vec<&str> = clones.iter().map(|c| c.name.as_str()).collect();
        let started = std::time::Instant::now();
        let report = builder
            .build(&names)
            .map_err(|e| DeployError::Layer(Arc::new(e)))?;
        let failed: std::collections::HashMap<String, DeployError> = report
            .failed
            .into_iter()
            .map(|(n, e)| (n, DeployError::Layer(Arc::new(e))))
            .collect();
        let layers_took = started.elapsed();
        if over_nfs || staged {
            // Every clone boots the same image; its layer comes over NFS.
            let shared = self.base_blob()?;
            return Ok(clones
                .iter()
                .map(|c| {
                    let r = match failed.get(&c.name) {
                        Some(e) => Err(e.clone()),
                        None => layer_hash(&builder, &c.name).map(|hash| BuiltLayer {
                            hash,
                            image: shared.clone(),
                        }),
                    };
                    (c.name.clone(), r)
                })
                .collect());
        }
        let base = Base::new(&self.base()?);
        // Compressing segments is most of the work at 1,000 clones: one thread per core.
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, clones.len().max(1));
        let mut images = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(c) = clones.get(i) else { break };
                            let r = match failed.get(&c.name) {
                                Some(e) => Err(e.clone()),
                                None => image(&builder, &base, &c.name),
                            };
                            done.push((i, r));
                        }
                        done
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(clones.len());
            for w in workers {
                all.extend(
                    w.join()
                        .map_err(|_| DeployError::TaskPanicked("image builder"))?,
                );
            }
            Ok::<_, DeployError>(all)
        })?;
        images.sort_by_key(|(i, _)| *i);
        tracing::debug!(
            clones = clones.len(),
            layers_ms = layers_took.as_millis() as u64,
            images_ms = (started.elapsed() - layers_took).as_millis() as u64,
            threads,
            "built layers and images"
        );
        Ok(images
            .into_iter()
            .zip(clones)
            .map(|((_, r), c)| (c.name.clone(), r))
            .collect())
    }
}

/// Makes the layers directory `dir` the coordinator's alone (mode 0700, unless it is
/// already closed to group and others): clones' layers hold their ssh host keys and
/// register tokens, which only the clone (over its own NFS export, served by the root NFS
/// server) may read, never another user of the server.
fn private_dir(dir: &Path) -> Result<(), DeployError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .map_err(|e| DeployError::io("reading", dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode((mode & 0o7700) | 0o700),
        )
        .map_err(|e| DeployError::io("closing to other users", dir, e))?;
    }
    Ok(())
}

/// The base image padded to the 4-byte boundary a following segment starts at, and the
/// SHA-256 state after it: a clone's image hash only costs hashing its own segment.
struct Base {
    padded: Vec<u8>,
    hasher: Sha256,
}

impl Base {
    fn new(base: &[u8]) -> Self {
        let mut padded = Vec::with_capacity(base.len() + 3);
        padded.extend_from_slice(base);
        // The kernel skips zero padding between segments.
        while padded.len() % 4 != 0 {
            padded.push(0);
        }
        let hasher = Sha256::new_with_prefix(&padded);
        Self { padded, hasher }
    }
}

/// The input hash of a clone's built layer.
fn layer_hash(builder: &LayerBuilder<'_>, name: &str) -> Result<String, DeployError> {
    let path = builder.paths(name).hash;
    Ok(std::fs::read_to_string(&path)
        .map_err(|e| DeployError::io("reading the layer's input hash", path, e))?
        .trim()
        .to_owned())
}

/// One clone's image: the base followed by its layer segment.
fn image(builder: &LayerBuilder<'_>, base: &Base, name: &str) -> Result<BuiltLayer, DeployError> {
    let paths = builder.paths(name);
    let hash = layer_hash(builder, name)?;
    // After a compressed base the kernel only takes a compressed segment.
    let segment = layer_segment(name, &paths.root, Compression::Gzip, 0).map_err(|e| {
        DeployError::Segment {
            clone: name.to_owned(),
            source: Arc::new(e),
        }
    })?;
    let mut bytes = Vec::with_capacity(base.padded.len() + segment.len());
    bytes.extend_from_slice(&base.padded);
    bytes.extend_from_slice(&segment);
    let sha256 = hex::encode(base.hasher.clone().chain_update(&segment).finalize());
    Ok(BuiltLayer {
        hash,
        image: Blob {
            r: BlobRef {
                sha256,
                size: bytes.len() as u64,
            },
            bytes: Arc::new(bytes),
            name: format!("initrd-{name}"),
        },
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_layers_directory_is_closed_to_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("layers");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        super::private_dir(&dir).expect("close");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        super::private_dir(&dir).expect("again");
        assert_eq!(mode(&dir), 0o700);
        let e = super::private_dir(&t.path().join("missing")).expect_err("no such dir");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
