//! The shared root export (thesis 3.3, 4.7): the coordinator writes and applies the NFS
//! export configuration — the reference root read-only to every clone, and each stateful
//! clone's state directory read-write to that clone's address only — for nfs-ganesha
//! (EXPORT blocks in a file `ganesha.conf` includes; SIGHUP makes ganesha add, update and
//! remove exports without a restart) and, equivalently, `/etc/exports` lines for a kernel
//! NFS server (`exportfs -ra`).
//!
//! Paths are served under their own names (ganesha's `Pseudo` = `Path`), so a clone's
//! `root=nfs:SERVER:/srv/napalm/root` means the same with either server.
//!
//! Each clone's state is one directory `STATE/DEPLOYMENT/CLONE/` holding `upper.img`, an
//! ext4 image the clone loop-mounts over NFS as its overlay upper (an overlayfs upper cannot
//! be NFS itself, thesis 3.2.5); the image is created on first use and kept across
//! undeploys, as state should be.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors writing or applying exports.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The NFS server could not be told to reload.
    #[error("reloading the NFS server: {0}")]
    Reload(String),
    /// A state image could not be made.
    #[error("state image {path}: {why}")]
    State {
        /// The image.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A path or name that cannot be put in an export file.
    #[error("{0}")]
    Invalid(String),
}

/// Where and how the exports are served.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Server-side directory of the reference root, exported read-only.
    pub root: PathBuf,
    /// Who may mount the root: an address, a CIDR (`10.1.2.0/24`) or `*`.
    pub root_clients: String,
    /// Per-clone state lives in `STATE/DEPLOYMENT/CLONE/`.
    pub state_dir: PathBuf,
    /// Size of a new clone's state image, bytes.
    pub state_size: u64,
    /// nfs-ganesha: the file of EXPORT blocks this coordinator owns (ganesha.conf
    /// `%include`s it).
    pub ganesha_file: Option<PathBuf>,
    /// nfs-ganesha's pid file: the daemon gets SIGHUP after a change.
    pub ganesha_pid_file: Option<PathBuf>,
    /// Kernel NFS server: the exports file this coordinator owns (e.g.
    /// `/etc/exports.d/napalm.exports`).
    pub exports_file: Option<PathBuf>,
    /// Run `exportfs -ra` after writing `exports_file`.
    pub exportfs: bool,
}

/// One clone's state export.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateExport {
    /// Deployment.
    pub deployment: String,
    /// Clone name.
    pub clone: String,
    /// The only address allowed to mount it.
    pub address: Ipv4Addr,
}

/// One clone's differentiation layer served over NFS (read-only, to that clone only: it
/// holds the clone's private host key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LayerExport {
    /// Clone name.
    pub clone: String,
    /// The layer directory on the server.
    pub path: PathBuf,
    /// The only address allowed to mount it.
    pub address: Ipv4Addr,
}

/// Tells an NFS server to re-read its exports: the edge that touches other processes.
pub trait Reload: Send + Sync {
    /// Reloads after the files were rewritten.
    fn reload(&self, cfg: &ExportConfig) -> Result<(), ExportError>;
}

/// The real one: SIGHUP to the ganesha pid in `ganesha_pid_file` (if it runs) and
/// `exportfs -ra` when asked.
pub struct SystemReload;

impl Reload for SystemReload {
    fn reload(&self, cfg: &ExportConfig) -> Result<(), ExportError> {
        if let Some(pf) = &cfg.ganesha_pid_file {
            match std::fs::read_to_string(pf) {
                Ok(s) => {
                    let pid: i32 = s.trim().parse().map_err(|_| {
                        ExportError::Reload(format!(
                            "pid file {} holds {:?}, not a pid",
                            pf.display(),
                            s.trim()
                        ))
                    })?;
                    // SAFETY: kill(2) with a pid read from ganesha's own pid file.
                    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
                        let e = std::io::Error::last_os_error();
                        tracing::warn!(pid, error = %e, "ganesha is not running; exports apply when it starts");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!(pid_file = %pf.display(), "ganesha not started yet; exports apply when it starts");
                }
                Err(e) => return Err(ExportError::Reload(format!("{}: {e}", pf.display()))),
            }
        }
        if cfg.exportfs && cfg.exports_file.is_some() {
            let out = Command::new("exportfs")
                .arg("-ra")
                .output()
                .map_err(|e| ExportError::Reload(format!("exportfs -ra: {e}")))?;
            if !out.status.success() {
                return Err(ExportError::Reload(format!(
                    "exportfs -ra: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }
}

/// Writes and applies exports.
pub struct Exporter {
    cfg: ExportConfig,
    reload: Box<dyn Reload>,
}

fn check_path(p: &Path) -> Result<String, ExportError> {
    let s = p.to_str().unwrap_or_default();
    if !p.is_absolute()
        || s.is_empty()
        || s.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '"' | ';' | '{' | '}' | '#' | '(' | ')')
        })
    {
        return Err(ExportError::Invalid(format!(
            "export path {:?} must be absolute, without spaces, quotes or any of ;{{}}#(); \
             choose another directory",
            p.display()
        )));
    }
    Ok(s.to_owned())
}

/// Stable ganesha `Export_Id`s (2..=65535; 1 is the root): derived from the path, so an
/// export keeps its id across reloads; collisions probe forward in path order.
fn export_ids(paths: &[String]) -> Vec<u16> {
    use sha2::{Digest, Sha256};
    let mut used = BTreeSet::from([0u16, 1]);
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by(|a, b| paths[*a].cmp(&paths[*b]));
    let mut ids = vec![0u16; paths.len()];
    for i in order {
        let h = Sha256::digest(paths[i].as_bytes());
        let mut id = u16::from_be_bytes([h[0], h[1]]);
        while used.contains(&id) {
            id = id.wrapping_add(1);
        }
        used.insert(id);
        ids[i] = id;
    }
    ids
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter applying with `reload`.
    pub fn new(cfg: ExportConfig, reload: Box<dyn Reload>) -> Result<Self, ExportError> {
        check_path(&cfg.root)?;
        check_path(&cfg.state_dir)?;
        if cfg.root_clients.is_empty()
            || cfg
                .root_clients
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | ':' | '*' | '-')))
        {
            return Err(ExportError::Invalid(format!(
                "root clients {:?} must be an address, a CIDR like 10.1.2.0/24, or *",
                cfg.root_clients
            )));
        }
        Ok(Self { cfg, reload })
    }

    /// The configuration.
    pub fn config(&self) -> &ExportConfig {
        &self.cfg
    }

    /// Server-side directory of one clone's state.
    pub fn state_path(&self, deployment: &str, clone: &str) -> PathBuf {
        self.cfg.state_dir.join(deployment).join(clone)
    }

    /// The EXPORT blocks for nfs-ganesha.
    pub fn ganesha(
        &self,
        states: &[StateExport],
        layers: &[LayerExport],
    ) -> Result<String, ExportError> {
        let root = check_path(&self.cfg.root)?;
        let mut s = String::from(
            "# Written by napalm-coordinator; changes here are overwritten.\n\
             # The reference root, read-only to every clone (thesis 3.3).\n",
        );
        let _ = writeln!(
            s,
            "EXPORT {{\n\tExport_Id = 1;\n\tPath = \"{root}\";\n\tPseudo = \"{root}\";\n\
             \tProtocols = 4;\n\tTransports = TCP;\n\tSecType = sys;\n\tSquash = No_Root_Squash;\n\
             \tAccess_Type = None;\n\tCLIENT {{ Clients = {}; Access_Type = RO; }}\n\
             \tFSAL {{ Name = VFS; }}\n}}",
            self.cfg.root_clients
        );
        let mut paths: Vec<String> = states
            .iter()
            .map(|e| check_path(&self.state_path(&e.deployment, &e.clone)))
            .collect::<Result<_, _>>()?;
        for l in layers {
            paths.push(check_path(&l.path)?);
        }
        let ids = export_ids(&paths);
        for (l, (path, id)) in layers.iter().zip(paths.iter().zip(&ids).skip(states.len())) {
            let _ = writeln!(
                s,
                "# Layer of clone {}, read-only to {} only (it holds its private keys).\n\
                 EXPORT {{\n\tExport_Id = {id};\n\tPath = \"{path}\";\n\tPseudo = \"{path}\";\n\
                 \tProtocols = 4;\n\tTransports = TCP;\n\tSecType = sys;\n\tSquash = No_Root_Squash;\n\
                 \tAccess_Type = None;\n\tCLIENT {{ Clients = {}; Access_Type = RO; }}\n\
                 \tFSAL {{ Name = VFS; }}\n}}",
                l.clone, l.address, l.address
            );
        }
        for (e, (path, id)) in states.iter().zip(paths.iter().zip(ids)) {
            let _ = writeln!(
                s,
                "# State of clone {} (deployment {}), read-write to {} only.\n\
                 EXPORT {{\n\tExport_Id = {id};\n\tPath = \"{path}\";\n\tPseudo = \"{path}\";\n\
                 \tProtocols = 4;\n\tTransports = TCP;\n\tSecType = sys;\n\tSquash = No_Root_Squash;\n\
                 \tAccess_Type = None;\n\tCLIENT {{ Clients = {}; Access_Type = RW; }}\n\
                 \tFSAL {{ Name = VFS; }}\n}}",
                e.clone, e.deployment, e.address, e.address
            );
        }
        Ok(s)
    }

    /// The same exports as `/etc/exports` lines for a kernel NFS server.
    pub fn kernel(
        &self,
        states: &[StateExport],
        layers: &[LayerExport],
    ) -> Result<String, ExportError> {
        let root = check_path(&self.cfg.root)?;
        let mut s =
            String::from("# Written by napalm-coordinator; changes here are overwritten.\n");
        let _ = writeln!(
            s,
            "{root}\t{}(ro,no_root_squash,no_subtree_check,sec=sys)",
            self.cfg.root_clients
        );
        for l in layers {
            let path = check_path(&l.path)?;
            let _ = writeln!(
                s,
                "{path}\t{}(ro,no_root_squash,no_subtree_check,sec=sys)",
                l.address
            );
        }
        for e in states {
            let path = check_path(&self.state_path(&e.deployment, &e.clone))?;
            let _ = writeln!(
                s,
                "{path}\t{}(rw,no_root_squash,no_subtree_check,sync,sec=sys)",
                e.address
            );
        }
        Ok(s)
    }

    /// Writes every configured file whose content changes (atomically) and reloads the
    /// server if anything changed. Returns whether it did.
    pub fn apply(
        &self,
        states: &[StateExport],
        layers: &[LayerExport],
    ) -> Result<bool, ExportError> {
        let mut states = states.to_vec();
        states.sort();
        states.dedup();
        let mut layers = layers.to_vec();
        layers.sort();
        layers.dedup();
        let mut changed = false;
        if let Some(f) = &self.cfg.ganesha_file {
            changed |= write_if_changed(f, &self.ganesha(&states, &layers)?)?;
        }
        if let Some(f) = &self.cfg.exports_file {
            changed |= write_if_changed(f, &self.kernel(&states, &layers)?)?;
        }
        if changed {
            self.reload.reload(&self.cfg)?;
            tracing::info!(states = states.len(), "NFS exports applied");
        }
        Ok(changed)
    }

    /// Makes sure a clone's state directory and ext4 image exist; returns the image path.
    /// An existing image is kept (that is the point of state).
    pub fn ensure_state(&self, deployment: &str, clone: &str) -> Result<PathBuf, ExportError> {
        let dir = self.state_path(deployment, clone);
        let img = dir.join("upper.img");
        let err = |why: String| ExportError::State {
            path: img.clone(),
            why,
        };
        if img.exists() {
            return Ok(img);
        }
        std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
        let tmp = dir.join(".upper.img.tmp");
        let f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.set_len(self.cfg.state_size)
            .map_err(|e| err(e.to_string()))?;
        drop(f);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "napalm-state"])
            .arg(&tmp)
            .output()
            .map_err(|e| err(format!("mkfs.ext4 (e2fsprogs): {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(format!(
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, &img).map_err(|e| err(e.to_string()))?;
        Ok(img)
    }
}

fn write_if_changed(path: &Path, content: &str) -> Result<bool, ExportError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let werr = |source| ExportError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = path.with_extension("napalm-tmp");
    std::fs::write(&tmp, content).map_err(werr)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicUsize>);
    impl Reload for Count {
        fn reload(&self, _: &ExportConfig) -> Result<(), ExportError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn cfg(dir: &Path) -> ExportConfig {
        ExportConfig {
            root: "/srv/napalm/root".into(),
            root_clients: "10.1.2.0/24".into(),
            state_dir: "/srv/napalm/state".into(),
            state_size: 16 << 20,
            ganesha_file: Some(dir.join("ganesha/napalm.conf")),
            ganesha_pid_file: None,
            exports_file: Some(dir.join("exports.d/napalm.exports")),
            exportfs: false,
        }
    }

    fn st(clone: &str, a: [u8; 4]) -> StateExport {
        StateExport {
            deployment: "g".into(),
            clone: clone.into(),
            address: a.into(),
        }
    }

    #[test]
    fn root_is_read_only_and_each_state_is_for_its_clone_only() {
        let t = tempfile::tempdir().expect("tmp");
        let n = Arc::new(AtomicUsize::new(0));
        let x = Exporter::new(cfg(t.path()), Box::new(Count(n.clone()))).expect("cfg");
        let states = [st("g-02", [10, 1, 2, 102]), st("g-01", [10, 1, 2, 101])];
        let layer = [LayerExport {
            clone: "g-01".into(),
            path: "/var/lib/napalm/layers/g/g-01/root".into(),
            address: [10, 1, 2, 101].into(),
        }];
        let k = x.kernel(&states, &layer).expect("kernel");
        assert!(k.contains("/var/lib/napalm/layers/g/g-01/root\t10.1.2.101(ro,"));
        assert!(k.contains("/srv/napalm/root\t10.1.2.0/24(ro,"));
        assert!(k.contains("/srv/napalm/state/g/g-01\t10.1.2.101(rw,"));
        let g = x.ganesha(&states, &layer).expect("ganesha");
        assert!(g.contains("Path = \"/var/lib/napalm/layers/g/g-01/root\";"));
        assert!(g.contains("CLIENT { Clients = 10.1.2.101; Access_Type = RO; }"));
        assert!(g.contains("Path = \"/srv/napalm/state/g/g-02\";"));
        assert!(g.contains("CLIENT { Clients = 10.1.2.102; Access_Type = RW; }"));
        assert!(g.contains("CLIENT { Clients = 10.1.2.0/24; Access_Type = RO; }"));
        assert_eq!(g.matches("Access_Type = None;").count(), 4);
        assert!(x.apply(&states, &[]).expect("apply"));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        // Same content (any order): nothing rewritten, no reload.
        assert!(!x
            .apply(&[states[1].clone(), states[0].clone()], &[])
            .expect("apply"));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(x.apply(&states[..1], &[]).expect("apply"));
        assert_eq!(n.load(Ordering::SeqCst), 2);
        let written = std::fs::read_to_string(t.path().join("ganesha/napalm.conf")).expect("read");
        assert!(!written.contains("g-01"));
    }

    #[test]
    fn export_ids_are_stable_and_distinct() {
        let a: Vec<String> = (0..500).map(|i| format!("/s/g/c{i}")).collect();
        let ids = export_ids(&a);
        let set: BTreeSet<u16> = ids.iter().copied().collect();
        assert_eq!(set.len(), 500);
        assert!(!set.contains(&1) && !set.contains(&0));
        // Removing other exports does not move this one (barring a collision).
        assert_eq!(export_ids(&a[7..8])[0], ids[7]);
    }

    #[test]
    fn bad_paths_and_clients_are_refused_with_the_input_quoted() {
        let t = tempfile::tempdir().expect("tmp");
        let mut c = cfg(t.path());
        c.root = "srv/root".into();
        let e = Exporter::new(c, Box::new(SystemReload)).expect_err("refused");
        assert!(e.to_string().contains("\"srv/root\""), "{e}");
        let mut c = cfg(t.path());
        c.root_clients = "10.0.0.0/8; rm".into();
        let e = Exporter::new(c, Box::new(SystemReload)).expect_err("refused");
        assert!(e.to_string().contains("10.0.0.0/8; rm"), "{e}");
    }

    #[test]
    fn a_state_image_is_ext4_and_kept() {
        let t = tempfile::tempdir().expect("tmp");
        let mut c = cfg(t.path());
        c.state_dir = t.path().join("state");
        let x = Exporter::new(c, Box::new(SystemReload)).expect("cfg");
        let img = x.ensure_state("g", "g-01").expect("state");
        let meta = std::fs::metadata(&img).expect("meta");
        assert_eq!(meta.len(), 16 << 20);
        let out = Command::new("blkid").arg(&img).output().expect("blkid");
        assert!(String::from_utf8_lossy(&out.stdout).contains("TYPE=\"ext4\""));
        // An existing image is never recreated (its content is the clone's state).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .and_then(|f| f.set_len(1 << 20))
            .expect("shrink");
        let again = x.ensure_state("g", "g-01").expect("state");
        assert_eq!(again, img);
        assert_eq!(std::fs::metadata(&img).expect("meta").len(), 1 << 20);
    }
}
