//! Per-clone machine identity: systemd machine-id and an ed25519 ssh host key.
//!
//! Both are derived from a cluster secret and the clone's name (SHA-256 with domain
//! separation), so they are fresh per clone and per cluster yet reproducible: a rebuild gives
//! byte-identical layers, and the cluster's ssh known_hosts can be rendered before any clone
//! boots. The secret lives in the output directory (`.napalm-identity`, mode 0600) unless the
//! caller supplies one; whoever holds it can derive every clone's private host key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The cluster secret from which clone identities derive.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", hex::encode(self.fingerprint()))
    }
}

/// A clone's identity, as templates see it under `identity`.
#[derive(Clone, Debug, Serialize)]
pub struct CloneIdentity {
    /// 32 lowercase hex digits (`/etc/machine-id`).
    pub machine_id: String,
    /// OpenSSH private key file content (`/etc/ssh/ssh_host_ed25519_key`).
    pub ssh_host_ed25519_key: String,
    /// Public key line (`/etc/ssh/ssh_host_ed25519_key.pub`), commented with the name.
    pub ssh_host_ed25519_key_pub: String,
    /// `ssh-ed25519 AAAA…` without comment (for known_hosts).
    pub ssh_host_ed25519_public: String,
}

fn derive(secret: &[u8; 32], purpose: &str, name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"napalm-overlay identity v1\0");
    h.update(secret);
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.finalize().into()
}

fn ssh_string(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

impl Identity {
    /// An identity from caller-supplied secret bytes (hashed to 32 bytes).
    pub fn from_secret(secret: &[u8]) -> Identity {
        Identity {
            secret: Sha256::digest(secret).into(),
        }
    }

    /// Read the secret at `path`, or create it from `/dev/urandom` (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> std::io::Result<Identity> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 32 => return Ok(Identity::from_secret(&bytes)),
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is shorter than 32 bytes; delete it to make a new secret (clones get new host keys)", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // 32 bytes of secret, then 8 that only name the temporary file.
        let mut random = [0u8; 40];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
        let (secret, tag) = random.split_at(32);
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent)?;
        // Written whole beside it, then linked into place: a process killed half-way
        // leaves no short secret behind, and of two creators racing the first one wins.
        let name = path
            .file_name()
            .map_or_else(|| "identity".into(), |n| n.to_string_lossy().into_owned());
        let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = parent.join(format!(".{name}.tmp-{tag}"));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(secret)?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                std::fs::File::open(parent)?.sync_all()?;
                tracing::info!(path = %path.display(), "created a new cluster identity secret");
                Ok(Identity::from_secret(secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Identity::load_or_create(path)
            }
            Err(e) => Err(e),
        }
    }

    /// A public fingerprint of the secret (goes into build hashes).
    pub fn fingerprint(&self) -> [u8; 32] {
        derive(&self.secret, "fingerprint", "")
    }

    /// `ssh-ed25519 AAAA…` for `name` (cheaper than [`Identity::for_clone`]).
    pub fn ssh_public(&self, name: &str) -> String {
        let key = SigningKey::from_bytes(&derive(&self.secret, "ssh-ed25519", name));
        let mut blob = Vec::with_capacity(51);
        ssh_string(&mut blob, b"ssh-ed25519");
        ssh_string(&mut blob, &key.verifying_key().to_bytes());
        format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        )
    }

    /// The identity of clone `name`.
    pub fn for_clone(&self, name: &str) -> CloneIdentity {
        let mid = derive(&self.secret, "machine-id", name);
        let seed = derive(&self.secret, "ssh-ed25519", name);
        let key = SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        let mut pub_blob = Vec::with_capacity(51);
        ssh_string(&mut pub_blob, b"ssh-ed25519");
        ssh_string(&mut pub_blob, &public);
        // openssh-key-v1, unencrypted, one key.
        let check = derive(&self.secret, "checkint", name);
        let mut private = Vec::with_capacity(160);
        private.extend_from_slice(&check[..4]);
        private.extend_from_slice(&check[..4]);
        ssh_string(&mut private, b"ssh-ed25519");
        ssh_string(&mut private, &public);
        let mut sk = seed.to_vec();
        sk.extend_from_slice(&public);
        ssh_string(&mut private, &sk);
        ssh_string(&mut private, format!("root@{name}").as_bytes());
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut file = b"openssh-key-v1\0".to_vec();
        ssh_string(&mut file, b"none");
        ssh_string(&mut file, b"none");
        ssh_string(&mut file, b"");
        file.extend_from_slice(&1u32.to_be_bytes());
        ssh_string(&mut file, &pub_blob);
        ssh_string(&mut file, &private);
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = b64.encode(&file);
        let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
        for chunk in body.as_bytes().chunks(70) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
        let public_line = format!("ssh-ed25519 {}", b64.encode(&pub_blob));
        CloneIdentity {
            machine_id: hex::encode(&mid[..16]),
            ssh_host_ed25519_key: pem,
            ssh_host_ed25519_key_pub: format!("{public_line} root@{name}\n"),
            ssh_host_ed25519_public: public_line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let id = Identity::from_secret(b"test");
        let a = id.for_clone("clone01");
        assert_eq!(a.machine_id.len(), 32);
        assert_eq!(a.machine_id, id.for_clone("clone01").machine_id);
        assert_ne!(a.machine_id, id.for_clone("clone02").machine_id);
        assert_eq!(a.ssh_host_ed25519_public, id.ssh_public("clone01"));
        let other = Identity::from_secret(b"other");
        assert_ne!(a.ssh_host_ed25519_public, other.ssh_public("clone01"));
    }

    #[test]
    fn created_once_whole_even_when_racing_or_after_a_crash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ids").join(".identity-g");
        std::fs::create_dir_all(dir.path().join("ids")).expect("mkdir");
        // What a creator killed half-way leaves now: a temp file (never linked into place),
        // never a short secret.
        std::fs::write(dir.path().join("ids/.identity-g.tmp-1"), b"").expect("stale");
        let fps: Vec<[u8; 32]> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Identity::load_or_create(&path).expect("identity")))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("thread").fingerprint())
                .collect()
        });
        assert!(fps.windows(2).all(|w| w[0] == w[1]), "one secret for all");
        assert_eq!(std::fs::read(&path).expect("secret").len(), 32);
        assert_eq!(
            Identity::load_or_create(&path)
                .expect("again")
                .fingerprint(),
            fps[0]
        );
        // The short file of an older crash is reported, naming the file and the fix.
        std::fs::write(&path, b"short").expect("short");
        let Err(e) = Identity::load_or_create(&path) else {
            panic!("a short secret was accepted")
        };
        assert!(e.to_string().contains(".identity-g") && e.to_string().contains("delete it"));
    }
}
