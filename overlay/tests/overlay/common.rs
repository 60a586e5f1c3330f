//! Helpers: fixture paths and small template sets written into temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use napalm_overlay::{Cluster, Config, Identity, SetLibrary};

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn annex_iv() -> PathBuf {
    data("annex-iv-clones.conf")
}

/// Write `files` (path relative to the set dir → content) into `dir/set`. A path ending in
/// `@755` gets that mode; content starting with `->` makes a symlink.
pub fn write_set(dir: &Path, set: &str, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let (rel, mode) = match rel.split_once('@') {
            Some((r, m)) => (r, Some(u32::from_str_radix(m, 8).unwrap())),
            None => (*rel, None),
        };
        let path = dir.join(set).join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if let Some(target) = content.strip_prefix("->") {
            std::os::unix::fs::symlink(target, &path).unwrap();
            continue;
        }
        if rel.ends_with('/') {
            std::fs::create_dir_all(&path).unwrap();
            continue;
        }
        std::fs::write(&path, content).unwrap();
        if let Some(m) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        }
    }
}

pub fn cluster(yaml: &str) -> Cluster {
    Config::parse("test.conf", yaml, &Default::default())
        .unwrap()
        .resolve()
        .unwrap()
}

pub fn library(dirs: &[&Path]) -> SetLibrary {
    SetLibrary::new(dirs.iter().map(|d| d.to_path_buf()).collect())
}

pub fn identity() -> Identity {
    Identity::from_secret(b"napalm tests")
}

/// Run a command, return stdout; panic with stderr on failure.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
