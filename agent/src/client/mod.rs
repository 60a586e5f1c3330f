//! A typed client of one agent's REST/CRUD API (thesis 3.3, table 4.3): one async method
//! per operation, one HTTP request each, so a caller (`napalmctl domain`) only parses its
//! arguments and renders the answers.
//!
//! | method | request |
//! |---|---|
//! | [`AgentClient::list`] | GET `/domains.json` |
//! | [`AgentClient::show`] | GET `/domain/NAME` (JSON) |
//! | [`AgentClient::status`] | GET `/domain/NAME/status.json` |
//! | [`AgentClient::config`] | GET `/domain/NAME/config.xml` |
//! | [`AgentClient::create`] | PUT `/domain/NAME` (archive; `?start=false` to only define) |
//! | [`AgentClient::set_state`] | PUT `/domain/NAME/status.xml` (`?timeout=S`) |
//! | [`AgentClient::delete`] | DELETE `/domain/NAME` (`?purge=true`) |
//! | [`AgentClient::archive`] | GET `/domain/NAME/archive.tar.gz` |
//! | [`AgentClient::console`] | GET `/domain/NAME/console?lines=N` (JSON) |
//!
//! Names are checked with the agent's own rule ([`crate::names::is_domain_name`]) before
//! any request, so a name never changes the request path. Plain HTTP only: the crate is
//! built without a TLS client. Failures are [`ClientError`]s; [`ClientError::class`] sorts
//! them into unreachable / not found / bad input / failed.
//!
//! Behind the cargo feature `client` (the daemon does not need an HTTP client).

mod archive;
mod error;

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};

pub use archive::build_archive;
pub use error::{ClientError, ErrorClass, Transport, UrlProblem};

use crate::core::{ConsoleView, DomainView};
use crate::hypervisor::RunState;

/// How long connecting to the agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all (an archive upload or download included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Checks a domain name with the agent's rule (1-64 of `A-Za-z0-9._-`, not starting with
/// `.` or `-`): [`ClientError::BadName`] otherwise.
pub fn check_name(name: &str) -> Result<(), ClientError> {
    if crate::names::is_domain_name(name) {
        Ok(())
    } else {
        Err(ClientError::BadName {
            name: name.to_owned(),
        })
    }
}

/// The answer to [`AgentClient::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// `true` when the agent created it (201), `false` when an identical domain existed.
    pub created: bool,
    /// Its state after the call, when the agent's answer said.
    pub state: Option<RunState>,
}

/// One agent's REST API at a base URL with its prefix (`http://host:8480/napalm`).
#[derive(Debug, Clone)]
pub struct AgentClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AgentClient {
    /// A client of the agent at `base_url` (`http://HOST:PORT/PREFIX`; a trailing `/` is
    /// dropped), sending `token` as `Authorization: Bearer` when given. Refuses a URL that
    /// does not parse, is not `http`, or has a query or fragment.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let url = base_url.trim();
        let bad = |problem| ClientError::BadUrl {
            url: url.to_owned(),
            problem,
        };
        let parsed = Url::parse(url).map_err(|e| bad(UrlProblem::Parse(e.to_string())))?;
        match parsed.scheme() {
            "http" => {}
            "https" => return Err(bad(UrlProblem::Tls)),
            s => return Err(bad(UrlProblem::Scheme(s.to_owned()))),
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad(UrlProblem::QueryOrFragment));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Setup(error::chain(&e)))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// The base URL requests go to (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// GET `/domains.json`: every domain of the agent's host, foreign ones included.
    pub async fn list(&self) -> Result<Vec<DomainView>, ClientError> {
        self.json("/domains.json").await
    }

    /// GET `/domain/NAME`: one domain with its desired state, resources and files.
    pub async fn show(&self, name: &str) -> Result<DomainView, ClientError> {
        check_name(name)?;
        self.json(&format!("/domain/{name}")).await
    }

    /// GET `/domain/NAME/status.json`: the domain's run state.
    pub async fn status(&self, name: &str) -> Result<RunState, ClientError> {
        check_name(name)?;
        #[derive(serde::Deserialize)]
        struct Status {
            state: RunState,
        }
        let s: Status = self.json(&format!("/domain/{name}/status.json")).await?;
        Ok(s.state)
    }

    /// GET `/domain/NAME/config.xml`: the domain's libvirt XML as the agent keeps it
    /// (invalid UTF-8 replaced).
    pub async fn config(&self, name: &str) -> Result<String, ClientError> {
        check_name(name)?;
        let (_, data) = self
            .call(
                Method::GET,
                &format!("/domain/{name}/config.xml"),
                "application/xml",
                None,
            )
            .await?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// PUT `/domain/NAME` with a domain archive (tar, tar.gz or tar.zst holding
    /// `config.xml` and its files; see [`build_archive`]); `start = false` only defines it.
    pub async fn create(
        &self,
        name: &str,
        archive: Vec<u8>,
        start: bool,
    ) -> Result<Created, ClientError> {
        check_name(name)?;
        let query = if start { "" } else { "?start=false" };
        let (status, data) = self
            .call(
                Method::PUT,
                &format!("/domain/{name}{query}"),
                "application/json",
                Some(("application/octet-stream", archive)),
            )
            .await?;
        Ok(Created {
            created: status == StatusCode::CREATED,
            state: state_in(&data),
        })
    }

    /// PUT `/domain/NAME/status.xml` asking for `target` (`running` starts or resumes,
    /// `shutoff` shuts down, forced after `timeout` or the agent's own, `paused` pauses).
    /// Returns the state the agent reports after it, else `target`.
    pub async fn set_state(
        &self,
        name: &str,
        target: RunState,
        timeout: Option<Duration>,
    ) -> Result<RunState, ClientError> {
        check_name(name)?;
        let query = timeout.map_or(String::new(), |t| format!("?timeout={}", t.as_secs_f64()));
        let body = format!("<status><state>{}</state></status>", target.as_str());
        let (_, data) = self
            .call(
                Method::PUT,
                &format!("/domain/{name}/status.xml{query}"),
                "application/json",
                Some(("application/xml", body.into_bytes())),
            )
            .await?;
        Ok(state_in(&data).unwrap_or(target))
    }

    /// Starts (or resumes) a domain: [`Self::set_state`] with `running`.
    pub async fn start(&self, name: &str) -> Result<RunState, ClientError> {
        self.set_state(name, RunState::Running, None).await
    }

    /// Shuts a domain down, forced after `timeout` (else the agent's own timeout).
    pub async fn stop(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<RunState, ClientError> {
        self.set_state(name, RunState::Shutoff, timeout).await
    }

    /// Pauses a running domain.
    pub async fn pause(&self, name: &str) -> Result<RunState, ClientError> {
        self.set_state(name, RunState::Paused, None).await
    }

    /// DELETE `/domain/NAME`: stops and removes it; `purge` also deletes its writable
    /// files (disks), which the agent otherwise keeps.
    pub async fn delete(&self, name: &str, purge: bool) -> Result<(), ClientError> {
        check_name(name)?;
        let query = if purge { "?purge=true" } else { "" };
        self.call(
            Method::DELETE,
            &format!("/domain/{name}{query}"),
            "application/json",
            None,
        )
        .await?;
        Ok(())
    }

    /// GET `/domain/NAME/archive.tar.gz`: the domain's archive (config.xml and its files).
    pub async fn archive(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        check_name(name)?;
        let (_, data) = self
            .call(
                Method::GET,
                &format!("/domain/{name}/archive.tar.gz"),
                "application/gzip",
                None,
            )
            .await?;
        Ok(data)
    }

    /// GET `/domain/NAME/console?lines=N`: the last `lines` non-empty lines of the
    /// domain's serial console, oldest first (0: the agent's default of 20; it returns at
    /// most 1000).
    pub async fn console(&self, name: &str, lines: usize) -> Result<ConsoleView, ClientError> {
        check_name(name)?;
        self.json(&format!("/domain/{name}/console?lines={lines}"))
            .await
    }

    /// GET of a JSON resource, decoded into `T`.
    async fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (_, data) = self
            .call(Method::GET, path, "application/json", None)
            .await?;
        serde_json::from_slice(&data).map_err(|e| ClientError::NotJson {
            url: self.url(path),
            detail: e.to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request; a non-2xx answer becomes [`ClientError::Status`] with the agent's
    /// message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let url = self.url(path);
        tracing::debug!(%method, %url, "agent REST request");
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(ACCEPT, accept);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, data)) = body {
            req = req.header(CONTENT_TYPE, ct).body(data);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            method: method.to_string(),
            url: url.clone(),
            transport: if e.is_timeout() {
                Transport::Timeout
            } else if e.is_connect() {
                Transport::Connect
            } else {
                Transport::Other
            },
            detail: error::chain(&e),
        })?;
        let status = resp.status();
        let data = resp.bytes().await.map_err(|e| ClientError::Read {
            method: method.to_string(),
            url: url.clone(),
            detail: e.to_string(),
        })?;
        if status.is_success() {
            return Ok((status, data.to_vec()));
        }
        let message = error::agent_message(&data);
        tracing::debug!(%method, %url, %status, %message, "agent refused");
        Err(ClientError::Status {
            method: method.to_string(),
            url,
            status: status.as_u16(),
            status_text: status.to_string(),
            message,
        })
    }
}

/// The `state` of a JSON answer (`{"state":"running",…}`), if it has one.
fn state_in(data: &[u8]) -> Option<RunState> {
    #[derive(serde::Deserialize)]
    struct WithState {
        state: RunState,
    }
    serde_json::from_slice::<WithState>(data)
        .ok()
        .map(|w| w.state)
}
