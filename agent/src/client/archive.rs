//! Packing a domain archive from a libvirt XML file and the files it references.

use std::path::{Path, PathBuf};

use super::ClientError;

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A plain tar holding `xml` as `config.xml` and each of `files` under its own file name
/// (the names config.xml refers to), ready for [`super::AgentClient::create`]. Two files
/// with the same name are refused: each travels under its own name.
pub fn build_archive(xml: &Path, files: &[PathBuf]) -> Result<Vec<u8>, ClientError> {
    let mut entries: Vec<(String, Vec<u8>)> =
        vec![("config.xml".into(), read(xml, "the domain XML")?)];
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ClientError::NoFileName {
                path: f.display().to_string(),
            })?
            .to_owned();
        if entries.iter().any(|(n, _)| *n == name) {
            return Err(ClientError::DuplicateName {
                path: f.display().to_string(),
                name,
            });
        }
        let data = read(f, "--file")?;
        entries.push((name, data));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice())
            .map_err(|source| ClientError::Pack {
                name: name.clone(),
                source,
            })?;
    }
    b.into_inner()
        .map_err(|source| ClientError::FinishArchive { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_xml_and_each_file_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let xml = dir.path().join("dom.xml");
        let k = dir.path().join("vmlinuz");
        std::fs::write(&xml, "<domain/>").expect("write");
        std::fs::write(&k, "kernel").expect("write");
        let tar = build_archive(&xml, std::slice::from_ref(&k)).expect("archive");
        let mut a = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = a
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["config.xml", "vmlinuz"]);
        let e = build_archive(&xml, &[k.clone(), k]).expect_err("duplicate");
        assert!(matches!(e, ClientError::DuplicateName { ref name, .. } if name == "vmlinuz"));
        let e = build_archive(&dir.path().join("none.xml"), &[]).expect_err("missing");
        assert_eq!(e.class(), super::super::ErrorClass::BadInput);
    }
}
