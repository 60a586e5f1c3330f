//! Kernel modules: `modules.dep` parsing and dependency order (for the builder), and
//! loading the image's modules in that order with finit_module (for napalm-init).

#[cfg(feature = "guest")]
use crate::syscall::Syscall;
use std::collections::{BTreeMap, BTreeSet};
#[cfg(feature = "guest")]
use std::path::Path;
use std::path::PathBuf;
use thiserror::Error;

/// The file in the image listing module paths (relative to `/lib/modules/<ver>`) in load order.
pub const ORDER_FILE: &str = "napalm.order";

/// Why module resolution or loading failed.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// A line of modules.dep is malformed.
    #[error("modules.dep line {line}: {text:?}: expected `path.ko: dep.ko ...`")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// The line.
        text: String,
    },
    /// A requested module does not exist (and is not built in).
    #[error("module {0:?} is neither in modules.dep nor built in")]
    Unknown(String),
    /// finit_module failed.
    #[error("loading module {path}: {source}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The kernel refused the module for its signature: it enforces signatures
    /// (`module.sig_enforce=1`, a lockdown) and the module carries none it accepts.
    #[error(
        "loading module {path}: {source}: this kernel enforces module signatures \
         (module.sig_enforce=1 or a lockdown) and napalm-mkinitramfs strips them by \
         default; build the image with `napalm-mkinitramfs build --module-signatures keep`"
    )]
    Refused {
        /// The module file.
        path: PathBuf,
        /// EKEYREJECTED (enforced) or EPERM (lockdown).
        source: std::io::Error,
    },
}

#[cfg(feature = "guest")]
/// finit_module's error for `path`, telling a refused signature from other failures.
fn load_error(path: PathBuf, source: std::io::Error) -> ModuleError {
    match source.raw_os_error() {
        Some(libc::EKEYREJECTED) | Some(libc::EPERM) => ModuleError::Refused { path, source },
        _ => ModuleError::Load { path, source },
    }
}

/// A module's canonical name: `kernel/fs/nfs/nfsv4.ko.zst` → `nfsv4`, `-` → `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// A parsed `modules.dep` plus `modules.builtin`.
#[derive(Debug, Default)]
pub struct ModDep {
    /// name → (path, dependency paths).
    pub entries: BTreeMap<String, (String, Vec<String>)>,
    /// Names of built-in modules.
    pub builtin: BTreeSet<String>,
}

impl ModDep {
    /// Parses the text of `modules.dep` and `modules.builtin`.
    pub fn parse(dep: &str, builtin: &str) -> Result<ModDep, ModuleError> {
        let mut m = ModDep::default();
        for (i, line) in dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(ModuleError::Syntax {
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            let deps = deps.split_whitespace().map(String::from).collect();
            m.entries
                .insert(module_name(path), (path.trim().to_string(), deps));
        }
        m.builtin = builtin
            .lines()
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        Ok(m)
    }

    /// The module paths needed for `names`, dependencies first; built-ins are skipped,
    /// names in `optional` that do not exist are reported in the second list.
    pub fn resolve(
        &self,
        names: &[&str],
        optional: &[&str],
    ) -> Result<(Vec<String>, Vec<String>), ModuleError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        for n in names.iter().chain(optional) {
            let name = module_name(n);
            if self.builtin.contains(&name) {
                continue;
            }
            if !self.entries.contains_key(&name) {
                if optional.contains(n) {
                    missing.push(name);
                    continue;
                }
                return Err(ModuleError::Unknown(name));
            }
            self.visit(&name, &mut seen, &mut order);
        }
        Ok((order, missing))
    }

    fn visit(&self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((path, deps)) = self.entries.get(name) {
            // modules.dep lists the deepest dependency last; load from there.
            for d in deps.iter().rev() {
                self.visit(&module_name(d), seen, order);
            }
            order.push(path.clone());
        }
    }
}

#[cfg(feature = "guest")]
/// Loads `names` (those the image carries) and their dependencies, dependencies first,
/// using the image's `<dir>/modules.dep`; returns the files loaded and the seconds each took.
/// A module already loaded (`<sys_module>/<name>` exists: `/sys/module` at boot) is skipped
/// without opening its file, so a second call (a restored template's, for its identity)
/// costs only what is new; finit_module's EEXIST counts as loaded too ([`Syscall`]).
pub fn load_needed(
    sys: &dyn Syscall,
    dir: &Path,
    sys_module: &Path,
    names: &[&str],
) -> Result<Vec<(String, f64)>, ModuleError> {
    let dep_path = dir.join("modules.dep");
    let text = match std::fs::read_to_string(&dep_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ModuleError::Load {
                path: dep_path,
                source,
            })
        }
    };
    let dep = ModDep::parse(&text, "")?;
    let (order, _absent) = dep.resolve(&[], names)?;
    let mut loaded = Vec::with_capacity(order.len());
    for rel in order {
        if sys_module.join(module_name(&rel)).exists() {
            continue;
        }
        let path = dir.join(&rel);
        let start = crate::timings::uptime();
        sys.finit_module(&path, "")
            .map_err(|source| load_error(path.clone(), source))?;
        loaded.push((rel, crate::timings::uptime() - start));
    }
    Ok(loaded)
}

#[cfg(feature = "guest")]
/// Loads every module listed in `<dir>/napalm.order`, in order; returns how many.
pub fn load_all(sys: &dyn Syscall, dir: &Path) -> Result<usize, ModuleError> {
    let order = dir.join(ORDER_FILE);
    let text = match std::fs::read_to_string(&order) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ModuleError::Load {
                path: order,
                source,
            })
        }
    };
    let mut n = 0;
    for rel in text.lines().filter(|l| !l.is_empty()) {
        let path = dir.join(rel);
        sys.finit_module(&path, "")
            .map_err(|source| load_error(path.clone(), source))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "guest")]
    use crate::syscall::RecordingSyscall;

    const DEP: &str = "kernel/fs/nfs/nfs.ko: kernel/fs/lockd/lockd.ko kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/nfs/nfsv4.ko: kernel/net/dns_resolver/dns_resolver.ko kernel/fs/nfs/nfs.ko kernel/fs/lockd/lockd.ko kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/lockd/lockd.ko: kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko
kernel/fs/nfs_common/grace.ko:
kernel/net/sunrpc/sunrpc.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/dns_resolver/dns_resolver.ko:
kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/overlayfs/overlay.ko:
";

    #[test]
    fn resolves_dependencies_first() {
        let m = ModDep::parse(DEP, "kernel/fs/ext4/ext4.ko\n").unwrap();
        let (order, missing) = m
            .resolve(&["nfsv4", "virtio-net", "ext4"], &["9p"])
            .unwrap();
        assert_eq!(missing, vec!["9p"]);
        let pos = |n: &str| order.iter().position(|p| module_name(p) == n).unwrap();
        for (dep, user) in [
            ("sunrpc", "nfs"),
            ("grace", "lockd"),
            ("lockd", "nfs"),
            ("netfs", "fscache"),
            ("nfs", "nfsv4"),
            ("dns_resolver", "nfsv4"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
        ] {
            assert!(pos(dep) < pos(user), "{dep} before {user}: {order:?}");
        }
        assert_eq!(order.len(), 11);
        assert!(m
            .resolve(&["nosuch"], &[])
            .unwrap_err()
            .to_string()
            .contains("nosuch"));
        assert!(ModDep::parse("garbage line", "").is_err());
        assert_eq!(module_name("a/b/virtio_net.ko.zst"), "virtio_net");
    }

    #[cfg(feature = "guest")]
    #[test]
    fn loads_only_what_is_needed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("modules.dep"), DEP).unwrap();
        let sys = RecordingSyscall::new(Some(d.path()));
        let sys_module = d.path().join("sys/module");
        let loaded = load_needed(
            &sys,
            d.path(),
            &sys_module,
            &["overlay", "virtio_net", "xen_netfront"],
        )
        .unwrap();
        assert_eq!(loaded.len(), 4);
        assert_eq!(
            sys.calls(),
            vec![
                "finit_module /kernel/fs/overlayfs/overlay.ko []",
                "finit_module /kernel/net/core/failover.ko []",
                "finit_module /kernel/drivers/net/net_failover.ko []",
                "finit_module /kernel/drivers/net/virtio_net.ko.zst []",
            ]
        );
    }

    #[cfg(feature = "guest")]
    #[test]
    fn a_loaded_module_is_skipped_without_touching_its_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("modules.dep"), DEP).unwrap();
        let sys_module = d.path().join("sys/module");
        // Loaded before (the recording makes /sys/module/<name> as the kernel does), or
        // by someone else: the kernel's own name, not the file's.
        std::fs::create_dir_all(sys_module.join("failover")).unwrap();
        let sys = RecordingSyscall::new(Some(d.path()));
        let first = load_needed(&sys, d.path(), &sys_module, &["overlay"]).unwrap();
        assert_eq!(first.len(), 1);
        let again = load_needed(&sys, d.path(), &sys_module, &["overlay", "virtio_net"]).unwrap();
        assert_eq!(
            again.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
            [
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko.zst"
            ]
        );
        assert_eq!(
            sys.calls(),
            vec![
                "finit_module /kernel/fs/overlayfs/overlay.ko []",
                "finit_module /kernel/drivers/net/net_failover.ko []",
                "finit_module /kernel/drivers/net/virtio_net.ko.zst []",
            ]
        );
    }

    #[cfg(feature = "guest")]
    #[test]
    fn loads_in_order_file_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(ORDER_FILE), "kernel/a.ko\nkernel/b.ko\n").unwrap();
        let sys = RecordingSyscall::new(Some(d.path()));
        assert_eq!(load_all(&sys, d.path()).unwrap(), 2);
        assert_eq!(
            sys.calls(),
            vec![
                "finit_module /kernel/a.ko []",
                "finit_module /kernel/b.ko []"
            ]
        );
        sys.fail_on("finit_module /kernel/b.ko");
        let e = load_all(&sys, d.path()).unwrap_err().to_string();
        assert!(e.contains("kernel/b.ko"), "{e}");
        assert!(!e.contains("--module-signatures"), "{e}");
    }

    #[cfg(feature = "guest")]
    #[test]
    fn a_refused_signature_says_how_to_build_the_image() {
        for errno in [libc::EKEYREJECTED, libc::EPERM] {
            let e = load_error(
                PathBuf::from("/lib/modules/v/kernel/fs/nfs/nfsv4.ko"),
                std::io::Error::from_raw_os_error(errno),
            );
            assert!(matches!(e, ModuleError::Refused { .. }));
            let e = e.to_string();
            assert!(
                e.contains("nfsv4.ko") && e.contains("--module-signatures keep"),
                "{e}"
            );
        }
        let e = load_error(
            PathBuf::from("x.ko"),
            std::io::Error::from_raw_os_error(libc::ENOEXEC),
        );
        assert!(matches!(e, ModuleError::Load { .. }));
    }
}
