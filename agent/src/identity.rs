//! The agent's cluster identity (issue 13): enrollment with a join token, the certificate
//! kept in the state directory, mutual TLS with it, and renewal before it expires.
//!
//! `napalm-agent --join TOKEN` generates a key here (it never leaves the host), dials the
//! coordinator addresses of the token over TLS pinned to the token's CA fingerprint,
//! sends a CSR with the token (`TrustService.Enroll`) and stores what comes back under
//! `STATE/tls/` (mode 0700): `ca.crt`, `agent.crt`, `agent.key`, `coordinator` (the
//! address that enrolled it). From then on both listeners require client certificates
//! chaining to the CA and registration/heartbeats go over mutual TLS to that address.
//! At two thirds of the certificate's lifetime a new key and CSR go to
//! `TrustService.Renew` over mutual TLS; the new pair is written and swapped into the
//! [`CertSlot`] both listeners and the coordinator client present, with no restart.
//!
//! The pair is two files, so a renewal first writes both, as one file, to
//! `agent.pending.json` (atomically), then `agent.key` and `agent.crt`, then removes it: an
//! agent that dies between the two writes finds the pending pair at its next start and
//! finishes the swap ([`Identity::load`]), instead of a new key beside the old certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use napalm_proto::trust_v1 as tpb;
use napalm_trust::tls::{self, CertSlot};
use napalm_trust::{id, JoinToken, TrustError};
use rustls_pki_types::CertificateDer;
use tpb::trust_service_client::TrustServiceClient;

/// Why enrolling, loading or renewing the identity failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The token, a certificate or a key is unusable.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The coordinator refused (the status message says why and what to do).
    #[error("the coordinator at {endpoint} refused: {message}")]
    Refused {
        /// Which coordinator address.
        endpoint: String,
        /// Its message.
        message: String,
    },
    /// No address of the token could be reached.
    #[error("no coordinator address of the join token answered: {0}")]
    Unreachable(String),
    /// The CA the coordinator returned is not the one the token pins.
    #[error(
        "the coordinator returned a CA with fingerprint {got}, the token pins {pinned}: \
         refusing it"
    )]
    CaMismatch {
        /// Fingerprint received.
        got: String,
        /// Fingerprint pinned.
        pinned: String,
    },
    /// Reading or writing the identity files.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// How long a call to the coordinator may take before it is given up.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The enrolled identity.
#[derive(Clone)]
pub struct Identity {
    /// The agent id the certificate names.
    pub agent_id: String,
    /// The cluster CA, DER.
    pub ca: CertificateDer<'static>,
    /// What both listeners and the coordinator client present (swapped on renewal).
    pub slot: Arc<CertSlot>,
    /// The coordinator's TLS address (`host:port`).
    pub coordinator: String,
    dir: PathBuf,
    /// Held for a whole renewal: two at once (the background loop and a caller) would
    /// interleave their writes and could leave one pair's key beside the other's
    /// certificate, or serve one pair and store the other.
    renewing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent_id", &self.agent_id)
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

/// The identity directory under a state directory.
pub fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write(dir: &Path, name: &str, data: &str) -> Result<()> {
    let p = dir.join(name);
    crate::durable::atomic_write(&p, data.as_bytes()).map_err(|e| IdentityError::Io {
        path: p.clone(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A renewed pair on its way to `agent.key` and `agent.crt` (see the module's doc).
const PENDING: &str = "agent.pending.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct PendingPair {
    key: String,
    chain: String,
}

/// Writes `key` and `chain` as the pair, crash-safely: pending file, both files, removal.
fn write_pair(dir: &Path, key: &str, chain: &str) -> Result<()> {
    let pending = serde_json::to_string(&PendingPair {
        key: key.to_owned(),
        chain: chain.to_owned(),
    })
    .map_err(|e| IdentityError::Io {
        path: dir.join(PENDING),
        source: std::io::Error::other(e),
    })?;
    write(dir, PENDING, &pending)?;
    finish_pair(dir, key, chain)
}

/// The last two steps of [`write_pair`], also what a restart does with a pending pair.
fn finish_pair(dir: &Path, key: &str, chain: &str) -> Result<()> {
    write(dir, "agent.key", key)?;
    write(dir, "agent.crt", chain)?;
    let p = dir.join(PENDING);
    std::fs::remove_file(&p).map_err(io(&p))?;
    crate::durable::sync_dir(dir).map_err(|e| IdentityError::Io {
        path: dir.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Finishes a renewal an earlier run wrote to [`PENDING`] but did not see through. A
/// pending pair that does not load is dropped (the pair in place was never touched).
fn recover_pending(dir: &Path) -> Result<()> {
    let p = dir.join(PENDING);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&p)(e)),
    };
    match serde_json::from_str::<PendingPair>(&text) {
        Ok(pair) if CertSlot::new(pair.chain.as_bytes(), pair.key.as_bytes()).is_ok() => {
            tracing::warn!(path = %p.display(), "finishing a certificate renewal an earlier run left half-written");
            finish_pair(dir, &pair.key, &pair.chain)
        }
        _ => {
            tracing::warn!(path = %p.display(), "dropping an unusable pending certificate pair");
            std::fs::remove_file(&p).map_err(io(&p))
        }
    }
}

impl Identity {
    /// The identity stored under `state_dir`, if the agent enrolled before (finishing a
    /// renewal an earlier run left half-written first).
    pub fn load(state_dir: &Path, agent_id: &str) -> Result<Option<Self>> {
        let dir = dir_of(state_dir);
        recover_pending(&dir)?;
        let cert = dir.join("agent.crt");
        if !cert.exists() {
            return Ok(None);
        }
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(io(&p))
        };
        let ca_pem = read("ca.crt")?;
        let ca = tls::certs_from_pem(ca_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| TrustError::Parse {
                what: "stored CA",
                detail: "empty".into(),
            })?;
        let chain = read("agent.crt")?;
        let key = read("agent.key")?;
        let slot = CertSlot::new(chain.as_bytes(), key.as_bytes())?;
        let named = id::agent_id_of(&slot.leaf())?.unwrap_or_default();
        if named != agent_id {
            return Err(TrustError::WrongIdentity {
                expected: agent_id.to_owned(),
                found: named,
            }
            .into());
        }
        Ok(Some(Self {
            agent_id: agent_id.to_owned(),
            ca,
            slot,
            coordinator: read("coordinator")?.trim().to_owned(),
            dir,
            renewing: Arc::default(),
        }))
    }

    /// Enrolls with `token`: key and CSR generated here, sent over TLS pinned to the
    /// token's CA; the result is stored under `state_dir` and returned.
    pub async fn join(
        state_dir: &Path,
        agent_id: &str,
        hostname: &str,
        token: &str,
    ) -> Result<Self> {
        let parsed = JoinToken::decode(token)?;
        let (key, csr) = napalm_trust::csr::generate(agent_id)?;
        let cfg = tls::pinned_client_config(&parsed.ca_fingerprint, None)?;
        let mut errors = Vec::new();
        for addr in &parsed.addresses {
            let channel = match napalm_trust::channel::connect(
                addr,
                id::COORDINATOR_DNS,
                cfg.clone(),
                TIMEOUT,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            let req = tpb::EnrollRequest {
                token: token.trim().to_owned(),
                agent_id: agent_id.to_owned(),
                hostname: hostname.to_owned(),
                csr_pem: csr.clone(),
            };
            let cert = match TrustServiceClient::new(channel).enroll(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    errors.push(format!("{addr}: {}", s.message()));
                    continue;
                }
                Err(s) => {
                    return Err(IdentityError::Refused {
                        endpoint: addr.clone(),
                        message: s.message().to_owned(),
                    })
                }
            };
            let got = tls::certs_from_pem(cert.ca_pem.as_bytes())?
                .into_iter()
                .next()
                .map(|c| napalm_trust::fingerprint(c.as_ref()))
                .unwrap_or_default();
            if got != parsed.ca_fingerprint {
                return Err(IdentityError::CaMismatch {
                    got,
                    pinned: parsed.ca_fingerprint,
                });
            }
            let dir = dir_of(state_dir);
            create_private_dir(&dir)?;
            write(&dir, "ca.crt", &cert.ca_pem)?;
            write(&dir, "agent.key", &key)?;
            write(
                &dir,
                "agent.crt",
                &format!("{}{}", cert.cert_pem, cert.ca_pem),
            )?;
            write(&dir, "coordinator", addr)?;
            tracing::info!(%agent_id, coordinator = %addr, not_after = cert.not_after, "enrolled in the cluster");
            return Self::load(state_dir, agent_id)?.ok_or_else(|| IdentityError::Io {
                path: dir.join("agent.crt"),
                source: std::io::Error::other("written but not found"),
            });
        }
        Err(IdentityError::Unreachable(errors.join("; ")))
    }

    /// A client config presenting this identity and verifying servers against the CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        Ok(tls::client_config(&self.ca, Some(Arc::clone(&self.slot)))?)
    }

    /// A server config presenting this identity and requiring CA-signed clients.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        Ok(tls::server_config(
            &self.ca,
            Arc::clone(&self.slot),
            tls::ClientAuth::Required,
        )?)
    }

    /// A gRPC channel to the coordinator over mutual TLS.
    pub async fn coordinator_channel(&self) -> Result<tonic::transport::Channel> {
        Ok(napalm_trust::channel::connect(
            &self.coordinator,
            id::COORDINATOR_DNS,
            self.client_config()?,
            TIMEOUT,
        )
        .await?)
    }

    /// Seconds until the current certificate expires (negative once it has).
    pub fn seconds_left(&self) -> Result<i64> {
        Ok(id::not_after(&self.slot.leaf())? - unix_now())
    }

    /// When the current certificate should be renewed: two thirds into its intended
    /// lifetime (the issuer back-dates not-before by a clock-skew allowance, left out).
    pub fn renew_at(&self) -> Result<i64> {
        let leaf = self.slot.leaf();
        let not_after = id::not_after(&leaf)?;
        let start = id::not_before(&leaf)?
            + i64::try_from(napalm_trust::ca::CLOCK_SKEW.as_secs()).unwrap_or(0);
        let life = (not_after - start).max(0);
        Ok(not_after - life / 3)
    }

    /// Renews now: new key and CSR, `Renew` over mutual TLS, files and slot replaced.
    /// Returns the new not-after. Renewals of one identity take turns.
    pub async fn renew(&self) -> Result<i64> {
        let _turn = self.renewing.lock().await;
        let (key, csr) = napalm_trust::csr::generate(&self.agent_id)?;
        let channel = self.coordinator_channel().await?;
        let cert = TrustServiceClient::new(channel)
            .renew(tpb::RenewRequest { csr_pem: csr })
            .await
            .map_err(|s| IdentityError::Refused {
                endpoint: self.coordinator.clone(),
                message: s.message().to_owned(),
            })?
            .into_inner();
        let chain = format!("{}{}", cert.cert_pem, cert.ca_pem);
        // Check before writing: a pair that does not load must not replace a good one.
        self.slot.replace(chain.as_bytes(), key.as_bytes())?;
        write_pair(&self.dir, &key, &chain)?;
        tracing::info!(agent_id = %self.agent_id, not_after = cert.not_after, "certificate renewed");
        Ok(cert.not_after)
    }

    /// Renews at [`Self::renew_at`], again and again, until `stop` flips; a failed
    /// renewal is retried every few seconds (a fifth of the time left, at least 1 s).
    pub async fn keep_renewed(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let wait = match self.renew_at() {
                Ok(at) => Duration::from_secs(u64::try_from(at - unix_now()).unwrap_or(0)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the current certificate");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            while let Err(e) = self.renew().await {
                let left = id::not_after(&self.slot.leaf()).map_or(0, |na| na - unix_now());
                if left <= 0 {
                    tracing::error!(
                        error = %e,
                        "the certificate expired before it could be renewed: enroll this \
                         agent again (remove STATE/tls/, then napalm-agent --join NEW_TOKEN)"
                    );
                    return;
                }
                let retry = Duration::from_secs(u64::try_from(left / 5).unwrap_or(0).max(1));
                tracing::warn!(error = %e, retry_in = ?retry, "certificate renewal failed");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key and its certificate chain (leaf + CA) for `agent`, issued by `ca`.
    fn pair(ca: &napalm_trust::ClusterCa, agent: &str) -> (String, String) {
        let (key, csr) = napalm_trust::csr::generate(agent).expect("key and CSR");
        let leaf = ca
            .issue_agent(&csr, agent, unix_now(), Duration::from_secs(3600))
            .expect("issued");
        (key, format!("{}{}", leaf.cert_pem, ca.cert_pem()))
    }

    fn stored(state: &Path, ca: &napalm_trust::ClusterCa, key: &str, chain: &str) -> PathBuf {
        let dir = dir_of(state);
        create_private_dir(&dir).expect("tls dir");
        write(&dir, "ca.crt", ca.cert_pem()).expect("ca");
        write(&dir, "agent.key", key).expect("key");
        write(&dir, "agent.crt", chain).expect("crt");
        write(&dir, "coordinator", "127.0.0.1:7443").expect("coordinator");
        dir
    }

    #[test]
    fn a_renewal_cut_between_its_two_files_is_finished_at_the_next_load() {
        let ca = napalm_trust::ClusterCa::generate("test CA", unix_now()).expect("CA");
        let (old_key, old_chain) = pair(&ca, "agent-a");
        let (new_key, new_chain) = pair(&ca, "agent-a");
        let state = tempfile::tempdir().expect("tmp");
        // The crash the pending file exists for: the new key is written, the certificate
        // is still the old one. Alone, that pair does not load.
        let dir = stored(state.path(), &ca, &new_key, &old_chain);
        assert!(Identity::load(state.path(), "agent-a").is_err());
        // With the pending pair (written before either file), the load finishes the swap.
        let pending = serde_json::to_string(&PendingPair {
            key: new_key.clone(),
            chain: new_chain.clone(),
        })
        .expect("json");
        write(&dir, PENDING, &pending).expect("pending");
        let id = Identity::load(state.path(), "agent-a")
            .expect("loads")
            .expect("enrolled");
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).expect(n);
        assert_eq!(
            (read("agent.key"), read("agent.crt")),
            (new_key, new_chain.clone())
        );
        assert!(!dir.join(PENDING).exists());
        let served = tls::certs_from_pem(new_chain.as_bytes()).expect("pem");
        assert_eq!(id.slot.leaf().as_ref(), served[0].as_ref());

        // A pending file that is not a usable pair is dropped; the pair in place stays.
        let state = tempfile::tempdir().expect("tmp");
        let dir = stored(state.path(), &ca, &old_key, &old_chain);
        write(&dir, PENDING, "{\"key\":\"torn\",\"chain\":\"\"}").expect("pending");
        assert!(Identity::load(state.path(), "agent-a")
            .expect("loads")
            .is_some());
        assert!(!dir.join(PENDING).exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("agent.key")).expect("key"),
            old_key
        );

        // A whole renewal's write leaves the new pair in place and nothing pending.
        let (key, chain) = pair(&ca, "agent-a");
        write_pair(&dir, &key, &chain).expect("written");
        assert!(!dir.join(PENDING).exists());
        let id = Identity::load(state.path(), "agent-a")
            .expect("loads")
            .expect("enrolled");
        let leaf = tls::certs_from_pem(chain.as_bytes()).expect("pem");
        assert_eq!(id.slot.leaf().as_ref(), leaf[0].as_ref());
    }
}
