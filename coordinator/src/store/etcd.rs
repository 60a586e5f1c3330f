//! The etcd store: several coordinators share one registry.
//!
//! Keys map one to one; `mod_revision` is etcd's own. A [`Txn`] becomes one etcd
//! transaction whose compares are the checks (`version == 0` for [`Check::Absent`],
//! `mod_revision == r` otherwise); when they fail, the else branch reads the checked keys so
//! the conflict names the key that moved. Every commit is durable once etcd answers (raft
//! quorum), so [`super::Durability::Eventual`] changes nothing here.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, TxnOp, TxnOpResponse};

use super::embedded::describe_check;
use super::{Check, Store, StoreError, Txn, Versioned};

/// A registry in etcd.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

/// TLS to etcd (issue 13): the CA that signed etcd's server certificate and, for etcd
/// started with `--client-cert-auth`, this coordinator's client certificate and key (PEM
/// files). With it, endpoints are dialed `https://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate(s) etcd's server certificate must chain to.
    pub ca: std::path::PathBuf,
    /// Client certificate and key presented to etcd (`None`: server TLS only).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdTls {
    /// The tonic TLS options these files make; a file that cannot be read is refused
    /// naming it.
    fn options(&self) -> Result<etcd_client::TlsOptions, StoreError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| StoreError::Unavailable {
                backend: "etcd".into(),
                message: format!(
                    "reading the etcd TLS file {}: {e} (check --etcd-ca/--etcd-cert/--etcd-key)",
                    p.display()
                ),
            })
        };
        let mut o = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            o = o.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(o)
    }
}

impl EtcdStore {
    /// Connects to the given endpoints (`http://host:port`); fails within a few seconds
    /// when none answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, None).await
    }

    /// [`Self::connect`], over TLS when `tls` is given (endpoints `https://host:port`).
    pub async fn connect_with(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5));
        if let Some(t) = tls {
            options = options.with_tls(t.options()?);
        }
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unavailable(endpoints, e))?;
        // Connecting is lazy with some balancers: ask for something to prove it answers.
        client
            .status()
            .await
            .map_err(|e| unavailable(endpoints, e))?;
        Ok(Self {
            client,
            endpoints: endpoints.to_vec(),
        })
    }

    /// The underlying client (for leader election on the same connection).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        unavailable(&self.endpoints, e)
    }
}

fn unavailable(endpoints: &[String], e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        backend: format!("etcd {}", endpoints.join(",")),
        message: e.to_string(),
    }
}

fn to_i64(r: u64) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(key, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision().max(0) as u64,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = kv.key_str().map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                message: e.to_string(),
            })?;
            out.push((
                key.to_owned(),
                Versioned {
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision().max(0) as u64,
                },
            ));
        }
        Ok(out)
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let compares: Vec<Compare> = txn
            .checks
            .iter()
            .map(|(key, check)| match check {
                Check::Absent => Compare::version(key.as_str(), CompareOp::Equal, 0),
                Check::Revision(r) => {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, to_i64(*r))
                }
            })
            .collect();
        let mut ops: Vec<TxnOp> = txn
            .puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
            .collect();
        ops.extend(txn.deletes.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        let reads: Vec<TxnOp> = txn
            .checks
            .iter()
            .map(|(k, _)| TxnOp::get(k.as_str(), None))
            .collect();
        let etcd_txn = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(reads);
        let resp = self
            .client
            .clone()
            .txn(etcd_txn)
            .await
            .map_err(|e| self.err(e))?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision().max(0) as u64);
            return Ok(revision);
        }
        // Find the check that failed, from the reads of the else branch.
        for ((key, check), op) in txn.checks.iter().zip(resp.op_responses()) {
            let found = match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
                _ => None,
            };
            let holds = match (check, found) {
                (Check::Absent, None) => true,
                (Check::Revision(want), Some(have)) => *want == have,
                _ => false,
            };
            if !holds {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: describe_check(check),
                    found: found.map_or("absent".into(), |r| format!("revision {r}")),
                });
            }
        }
        Err(StoreError::Conflict {
            key: txn
                .checks
                .first()
                .map(|(k, _)| k.clone())
                .unwrap_or_default(),
            expected: "unchanged keys".into(),
            found: "a concurrent change".into(),
        })
    }

    fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }
}
