//! The admin identity a coordinator writes at start (kubeadm's `admin.conf`, k3s's
//! `k3s.yaml`): with the plain listeners off, the operator on the coordinator's host needs
//! a first client certificate to reach the TLS listener, and `napalmctl login` (an admin
//! certificate's CSR call) hands out the others. The directory has napalmctl's identity
//! layout: `ca.crt`, `operator.crt` (chain), `operator.key` (0600) and a
//! `napalmctl.yaml` naming the TLS endpoints, for `NAPALM_CONFIG`.
//!
//! Written when missing or unreadable, when issued by another CA, and when past two
//! thirds of its lifetime; otherwise left alone, so a restart never changes a working
//! identity.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use napalm_trust::id::OperatorRole;

use super::Trust;

/// Lifetime of the admin certificate written at start (kubeadm's admin.conf: a year); a
/// coordinator (re)started past two thirds of it writes a new one.
pub const ADMIN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The operator name of the identity written at start.
pub const ADMIN_NAME: &str = "admin";

/// Why the admin identity could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A file or the directory could not be written.
    #[error("writing the admin identity {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate could not be issued.
    #[error("issuing the admin certificate")]
    Issue(#[source] napalm_trust::TrustError),
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh identity was written (expiring at `not_after`, Unix seconds).
    Written {
        /// The certificate's expiry.
        not_after: i64,
    },
    /// The one there is valid, from this CA, before two thirds of its life.
    Kept {
        /// The certificate's expiry.
        not_after: i64,
    },
}

/// Writes the admin identity into `dir` unless a good one is there (see the module);
/// `endpoints` (`host:port` of the TLS listener) go into its `napalmctl.yaml`.
pub fn ensure(
    trust: &Trust,
    dir: &Path,
    endpoints: &[String],
    now: i64,
) -> Result<Outcome, AdminError> {
    if let Some(not_after) = still_good(trust, dir, now) {
        return Ok(Outcome::Kept { not_after });
    }
    let (chain, key) = trust
        .issue_operator(ADMIN_NAME, OperatorRole::Admin, ADMIN_TTL)
        .map_err(AdminError::Issue)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| AdminError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    write(&dir.join("operator.key"), &key, 0o600)?;
    write(&dir.join("operator.crt"), &chain, 0o644)?;
    write(&dir.join("ca.crt"), trust.ca_pem(), 0o644)?;
    let urls: Vec<String> = endpoints
        .iter()
        .map(|e| format!("https://{}", local(e)))
        .collect();
    write(
        &dir.join("napalmctl.yaml"),
        &format!(
            "# written by napalm-coordinator at start: operator {ADMIN_NAME} (admin)\n\
             coordinator: {}\nidentity: {}\n",
            urls.join(","),
            dir.display()
        ),
        0o600,
    )?;
    let not_after = leaf_not_after(&chain).unwrap_or(now);
    Ok(Outcome::Written { not_after })
}

/// The expiry of the identity in `dir` when it chains to this CA and is not past two
/// thirds of its life at `now`.
fn still_good(trust: &Trust, dir: &Path, now: i64) -> Option<i64> {
    let ca = std::fs::read_to_string(dir.join("ca.crt")).ok()?;
    if ca.trim() != trust.ca_pem().trim() {
        return None;
    }
    std::fs::metadata(dir.join("operator.key")).ok()?;
    let chain = std::fs::read(dir.join("operator.crt")).ok()?;
    let certs = napalm_trust::tls::certs_from_pem(&chain).ok()?;
    let leaf = certs.first()?;
    let from = napalm_trust::id::not_before(leaf).ok()?;
    let to = napalm_trust::id::not_after(leaf).ok()?;
    (now < from + (to - from) * 2 / 3).then_some(to)
}

/// `endpoint` as this host dials it: a listener bound to every address (`0.0.0.0:P`,
/// `[::]:P`) is reached on loopback.
fn local(endpoint: &str) -> String {
    match endpoint.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port())).to_string()
        }
        _ => endpoint.to_owned(),
    }
}

fn leaf_not_after(chain: &str) -> Option<i64> {
    let certs = napalm_trust::tls::certs_from_pem(chain.as_bytes()).ok()?;
    napalm_trust::id::not_after(certs.first()?).ok()
}

/// Writes `text` to `path` with `mode`, through a temporary file renamed over it.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), AdminError> {
    let tmp = path.with_extension("tmp");
    let io = |source| AdminError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{ensure, local, Outcome};
    use crate::clock::{Clock, ManualClock};
    use crate::registry::Registry;
    use crate::trust::{Trust, TrustConfig};

    async fn trust(dir: &std::path::Path, clock: Arc<ManualClock>) -> Trust {
        let store = crate::store::open(&dir.join("r.redb").to_string_lossy())
            .await
            .expect("store");
        let registry = Registry::new(store, clock);
        Trust::open(
            registry,
            TrustConfig::loopback(),
            "127.0.0.1:8490".parse().expect("addr"),
        )
        .await
        .expect("the CA")
    }

    /// Written once, kept while good, written again past two thirds of its year or when
    /// another CA runs the cluster.
    #[tokio::test]
    async fn the_admin_identity_is_kept_while_good_and_replaced_when_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let admin = tmp.path().join("admin");
        let clock = Arc::new(ManualClock::at(1_795_000_000_000));
        let t = trust(&tmp.path().join("a"), clock.clone()).await;
        let now = |c: &ManualClock| i64::try_from(c.unix_ms() / 1000).expect("secs");
        let ep = ["0.0.0.0:8490".to_owned()];
        assert!(matches!(
            ensure(&t, &admin, &ep, now(&clock)).expect("first"),
            Outcome::Written { .. }
        ));
        let first = std::fs::read(admin.join("operator.crt")).expect("cert");
        let yaml = std::fs::read_to_string(admin.join("napalmctl.yaml")).expect("yaml");
        assert!(
            yaml.contains("coordinator: https://127.0.0.1:8490"),
            "{yaml}"
        );
        clock.advance(Duration::from_secs(200 * 24 * 3600));
        assert!(matches!(
            ensure(&t, &admin, &ep, now(&clock)).expect("kept"),
            Outcome::Kept { .. }
        ));
        assert_eq!(
            std::fs::read(admin.join("operator.crt")).expect("cert"),
            first
        );
        clock.advance(Duration::from_secs(50 * 24 * 3600));
        assert!(matches!(
            ensure(&t, &admin, &ep, now(&clock)).expect("renewed"),
            Outcome::Written { .. }
        ));
        let renewed = std::fs::read(admin.join("operator.crt")).expect("cert");
        assert_ne!(renewed, first, "past two thirds of its year");
        let other = trust(&tmp.path().join("b"), clock.clone()).await;
        assert!(matches!(
            ensure(&other, &admin, &ep, now(&clock)).expect("other CA"),
            Outcome::Written { .. }
        ));
        assert_eq!(
            std::fs::read_to_string(admin.join("ca.crt")).expect("ca"),
            other.ca_pem(),
            "the identity follows the cluster's CA"
        );
    }

    #[test]
    fn a_listener_on_every_address_is_dialed_on_loopback() {
        assert_eq!(local("0.0.0.0:8490"), "127.0.0.1:8490");
        assert_eq!(local("[::]:8490"), "127.0.0.1:8490");
        assert_eq!(local("10.0.0.1:8490"), "10.0.0.1:8490");
        assert_eq!(
            local("coordinator.example:8490"),
            "coordinator.example:8490"
        );
    }
}
