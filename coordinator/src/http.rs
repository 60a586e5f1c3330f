//! The coordinator's HTTP endpoint, for booted clones that only have wget or curl:
//! `POST /v1/clones/register` with the clone's token in `Authorization: Bearer TOKEN` (or
//! `X-Napalm-Clone-Token: TOKEN`) and `{"name", "address", "machine_id"?, "boot_id"?,
//! "kernel"?}` is the HTTP twin of `RegisterClone` (same registry operation). A token in
//! the URL (`?token=`, what older hooks sent) is refused with 400 and says to send the
//! header instead: proxies and access logs keep URLs.
//! `GET /v1/clones/NAME/cluster/FILE` (FILE: `hosts`, `mpi`, `known-hosts`, `json`) gives
//! clone NAME its deployment's cluster files from the live registry
//! ([`crate::cluster_files`]), authenticated by the clone's own token in a header
//! (`Authorization: Bearer TOKEN` or `X-Napalm-Clone-Token: TOKEN`, never the URL: 401
//! without one, 403 with another clone's), with a strong `ETag` from the content so a
//! watcher's `If-None-Match` gets `304 Not Modified` while nothing changed.
//! `GET /v1/clones/NAME/cluster?files=hosts,known-hosts` gives the same clone the index of
//! those files (`FILE ETAG` lines; all four without `files`), and with
//! `index=ETAG&wait=60s` (ETAG: the index's own tag, which the caller has) holds the
//! answer until one of them changes or the wait (at most 5m) ends: a watcher sleeps in one
//! request instead of polling ([`crate::cluster_index`]). Bad `files` or `wait`: 400,
//! quoting them (after the token is checked); more than a few held at once by one clone:
//! 429.
//! `GET /healthz` answers `ok`. The same listener serves what operators watch, read-only:
//! `GET /metrics` ([`crate::metrics`], OpenMetrics text), `GET /` and `GET /v1/view.json`
//! (the web view, [`crate::web`]).
//!
//! The same router is served in plain HTTP and, when the coordinator runs the cluster PKI
//! and `--https-listen` is set, over TLS with the coordinator's own certificate
//! ([`serve_tls`]; no client certificate asked: clones authenticate with their token, and
//! verify the server with the cluster CA their layer carries).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use napalm_proto::v1::{BootPhase, BootTimings, RegisterCloneRequest};
use napalm_proto::ApiError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cluster_files::ClusterFilesError;
use crate::metrics::Metrics;
use crate::registry::clones::TokenKey;
use crate::registry::Registry;

#[derive(Clone)]
struct AppState {
    registry: Registry,
    tokens: Arc<TokenKey>,
    metrics: Metrics,
    indexes: Arc<crate::cluster_index::Indexes>,
}

/// The body a clone's register hook posts.
#[derive(Deserialize)]
struct RegisterBody {
    name: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    boot_id: String,
    #[serde(default)]
    kernel: String,
    /// napalm-init's `/run/napalm/boot.json`, as the hook found it.
    #[serde(default)]
    boot: Option<Value>,
    /// Seconds since kernel start when the hook ran (`/proc/uptime`).
    #[serde(default)]
    uptime: Option<f64>,
    /// The agent whose domain booted the clone (`napalm.agent=` on its command line).
    #[serde(default)]
    agent: String,
}

fn secs(s: f64) -> Option<prost_types::Duration> {
    (s.is_finite() && s >= 0.0).then(|| prost_types::Duration {
        seconds: s.trunc() as i64,
        nanos: (s.fract() * 1e9) as i32,
    })
}

/// Boot timings from napalm-init's report (`timings.phases[{name,start,end}]`,
/// `timings.exec_init`) and the hook's uptime; whatever is missing stays unset.
fn boot_timings(boot: Option<&Value>, uptime: Option<f64>) -> Option<BootTimings> {
    let t = boot.and_then(|b| b.get("timings"));
    if t.is_none() && uptime.is_none() {
        return None;
    }
    // A clone restored from a template counts from its restore: its guest's uptime
    // carries on from the template's (napalm-init's `restored_at_s`).
    let origin = boot
        .and_then(|b| b.get("restored_at_s"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let phases = t
        .and_then(|t| t.get("phases"))
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let start = p.get("start")?.as_f64()?;
                    let end = p.get("end")?.as_f64()?;
                    Some(BootPhase {
                        name: p.get("name")?.as_str()?.chars().take(200).collect(),
                        start: secs(start - origin),
                        duration: secs(end - start),
                    })
                })
                .take(64)
                .collect()
        })
        .unwrap_or_default();
    Some(BootTimings {
        phases,
        to_init: t
            .and_then(|t| t.get("exec_init"))
            .and_then(Value::as_f64)
            .and_then(|e| secs(e - origin)),
        to_registered: uptime.and_then(|u| secs(u - origin)),
    })
}

/// The router (mounted at `/`); registrations' boot times go to `metrics`, which
/// `/metrics` renders.
pub fn router(registry: Registry, tokens: Arc<TokenKey>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/clones/register", post(register))
        .route("/v1/clones/{name}/cluster", get(cluster_index))
        .route("/v1/clones/{name}/cluster/{file}", get(cluster_file))
        .route("/metrics", get(metrics_page))
        .route("/", get(|| async { Html(crate::web::INDEX_HTML) }))
        .route("/v1/view.json", get(view))
        .with_state(AppState {
            registry,
            tokens,
            metrics,
            indexes: Arc::default(),
        })
        .layer(axum::extract::DefaultBodyLimit::max(64 << 10))
}

/// The clone token a request carries in its headers: `Authorization: Bearer TOKEN`, else
/// `X-Napalm-Clone-Token: TOKEN`.
fn clone_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| {
            headers
                .get("x-napalm-clone-token")
                .and_then(|v| v.to_str().ok())
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

async fn cluster_file(
    State(st): State<AppState>,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = clone_token(&headers);
    match crate::cluster_files::for_clone(&st.registry, &st.tokens, &name, token, &file).await {
        Ok(r) if not_modified(&headers, &r.etag) => (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, r.etag),
                (header::CACHE_CONTROL, "no-cache".into()),
            ],
        )
            .into_response(),
        Ok(r) => rendered(r),
        Err(e) => refusal(e, token.is_some(), &name, Some(&file)),
    }
}

/// A cluster file or index: plain text with its entity tag, to be revalidated.
fn rendered(r: crate::cluster_files::Rendered) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::ETAG, r.etag),
            (header::CACHE_CONTROL, "no-cache".into()),
        ],
        r.body,
    )
        .into_response()
}

/// The query of `GET /v1/clones/NAME/cluster`.
#[derive(Deserialize)]
struct IndexQuery {
    /// Comma-separated file names; all when absent.
    #[serde(default)]
    files: String,
    /// The tag of the index the caller has: hold the answer while it is current.
    index: Option<String>,
    /// How long to hold it (`60`, `60s`, `2m`).
    wait: Option<String>,
}

async fn cluster_index(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<IndexQuery>,
    headers: HeaderMap,
) -> Response {
    let token = clone_token(&headers);
    let answer = st
        .indexes
        .wait(
            &st.registry,
            &st.tokens,
            &name,
            token,
            &q.files,
            q.index.as_deref(),
            q.wait.as_deref(),
        )
        .await;
    match answer {
        Ok(r) => rendered(r),
        Err(e) => refusal(e, token.is_some(), &name, None),
    }
}

/// The answer to a cluster file request that failed: 401/403 for tokens, 404 for what is
/// not there, 400 for a bad query, 429 for a clone holding too many requests, 503 when the
/// registry cannot be read. `file` is `None`
/// for the index.
fn refusal(e: ClusterFilesError, had_token: bool, name: &str, file: Option<&str>) -> Response {
    let code = match &e {
        // A token was sent but is not this clone's: forbidden; none at all: 401.
        ClusterFilesError::Unauthenticated { .. } if had_token => StatusCode::FORBIDDEN,
        ClusterFilesError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
        ClusterFilesError::NotFound { .. } => StatusCode::NOT_FOUND,
        // An unknown file in the path is a resource that does not exist; in the query of
        // the index, a bad request.
        ClusterFilesError::Format(_) if file.is_some() => StatusCode::NOT_FOUND,
        ClusterFilesError::Format(_) | ClusterFilesError::Wait(_) => StatusCode::BAD_REQUEST,
        ClusterFilesError::TooManyHeld { .. } => StatusCode::TOO_MANY_REQUESTS,
        ClusterFilesError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let file = file.unwrap_or("(index)");
    if code == StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(clone = %name, file = %file, error = %e, "cluster file failed");
    } else {
        tracing::debug!(clone = %name, file = %file, error = %e, "cluster file refused");
    }
    let mut resp = (code, format!("{e}\n")).into_response();
    if code == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"napalm clone\""),
        );
    }
    resp
}

async fn metrics_page(State(st): State<AppState>) -> Response {
    match st.metrics.render(&st.registry).await {
        Ok(page) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], page).into_response(),
        Err(e) => {
            tracing::warn!(error = %crate::deploy::chain(&e), "metrics page failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("metrics unavailable: {}\n", crate::deploy::chain(&e)),
            )
                .into_response()
        }
    }
}

async fn view(State(st): State<AppState>) -> Response {
    match crate::web::view(&st.registry).await {
        Ok(v) => ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response(),
        Err(e) => {
            let e = ApiError::from(e);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    }
}

/// Whether a query string carries a `token` parameter (how older hooks sent the clone
/// token).
fn query_has_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == "token")
    })
}

/// The query string with every value blanked, to quote in an answer or a log without
/// repeating a secret: `token=…&x=…`.
fn redacted(query: &str) -> String {
    query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) => format!("{k}=…"),
            None => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// What a registration without a token in its headers is told.
pub const NO_TOKEN: &str = "registration needs the clone's token in a header: \
    \"Authorization: Bearer TOKEN\" (the base set's hook reads it from \
    /etc/napalm/register-token)";

async fn register(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Json<RegisterBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if query_has_token(query.as_deref()) {
        let q = redacted(query.as_deref().unwrap_or_default());
        tracing::warn!(query = %q, "clone registration with its token in the URL refused");
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!(
                "the clone token must not travel in the URL (got query {q:?}; proxies and \
                 logs keep URLs): POST /v1/clones/register without a query and send the \
                 token as \"Authorization: Bearer TOKEN\"; a clone whose hook puts it in \
                 the URL has a layer from an older coordinator: deploy it again"
            )})),
        )
            .into_response();
    }
    let Some(token) = clone_token(&headers).map(str::to_owned) else {
        let mut resp = (StatusCode::UNAUTHORIZED, Json(json!({"error": NO_TOKEN}))).into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"napalm clone\""),
        );
        return resp;
    };
    registered(st, token, body).await.into_response()
}

async fn registered(
    st: AppState,
    token: String,
    body: Result<Json<RegisterBody>, axum::extract::rejection::JsonRejection>,
) -> (StatusCode, Json<Value>) {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("body must be JSON {{\"name\",\"address\"}}: {e}")})),
            )
        }
    };
    let req = RegisterCloneRequest {
        name: body.name,
        token,
        addresses: if body.address.is_empty() {
            vec![]
        } else {
            vec![body.address]
        },
        boot: boot_timings(body.boot.as_ref(), body.uptime),
        kernel: body.kernel,
        boot_id: body.boot_id,
        agent_id: body.agent,
    };
    match st.registry.register_clone(req, &st.tokens).await {
        Ok(r) => {
            let c = r.clone.unwrap_or_default();
            st.metrics
                .clone_booted(c.boot.as_ref().and_then(|b| b.to_registered.as_ref()));
            (
                StatusCode::OK,
                Json(json!({"name": c.name, "addresses": c.addresses})),
            )
        }
        Err(e) => {
            let e = ApiError::from(e);
            let code = match &e {
                ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
                ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
                ApiError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (code, Json(json!({"error": e.to_string()})))
        }
    }
}

/// TLS connections as a listener [`axum::serve`] takes: the accepting and the handshakes
/// are [`napalm_trust::channel::incoming`]'s (each handshake in its own task, failed ones
/// logged and dropped); this only hands the finished streams to axum.
pub struct TlsListener {
    streams: tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    >,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.streams.next().await {
                Some(Ok(s)) => {
                    let peer = s.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (s, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "HTTPS connection dropped"),
                // Stopped: no more connections, ever.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// The TLS server configuration of the HTTPS listener: presents `identity` (swapped on
/// renewal), asks no client certificate, speaks HTTP/1.1 (ALPN) as `axum::serve` does.
pub fn tls_config(
    identity: Arc<napalm_trust::tls::CertSlot>,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, tokio_rustls::rustls::Error> {
    let mut cfg =
        tokio_rustls::rustls::ServerConfig::builder_with_provider(napalm_trust::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` over TLS (`cfg`, see [`tls_config`]) on `listener` until `stop` flips or
/// its sender is dropped.
pub fn serve_tls(
    listener: tokio::net::TcpListener,
    cfg: Arc<tokio_rustls::rustls::ServerConfig>,
    app: Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let addr = listener.local_addr()?;
    let streams = napalm_trust::channel::incoming(listener, cfg, None, stop);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(TlsListener { streams, addr }, app).await {
            tracing::error!(error = %e, "HTTPS endpoint stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_tokens_come_from_headers_and_etags_match_lists() {
        let mut h = HeaderMap::new();
        assert_eq!(clone_token(&h), None);
        h.insert("x-napalm-clone-token", "t2".parse().expect("value"));
        assert_eq!(clone_token(&h), Some("t2"));
        h.insert(header::AUTHORIZATION, "Bearer t1".parse().expect("value"));
        assert_eq!(clone_token(&h), Some("t1"), "Authorization first");
        h.insert(
            header::AUTHORIZATION,
            "Basic dXNlcg==".parse().expect("value"),
        );
        assert_eq!(clone_token(&h), Some("t2"), "not a bearer token");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "\"a\""));
        h.insert(
            header::IF_NONE_MATCH,
            "\"b\", W/\"a\"".parse().expect("value"),
        );
        assert!(not_modified(&h, "\"a\""));
        assert!(!not_modified(&h, "\"c\""));
        h.insert(header::IF_NONE_MATCH, "*".parse().expect("value"));
        assert!(not_modified(&h, "\"c\""));
    }

    #[test]
    fn tokens_in_query_strings_are_found_and_never_quoted() {
        assert!(query_has_token(Some("token=abc")));
        assert!(query_has_token(Some("x=1&token=abc")));
        assert!(query_has_token(Some("token")));
        assert!(!query_has_token(Some("tokens=1&x=token")));
        assert!(!query_has_token(None));
        assert_eq!(redacted("x=1&token=s3cret&flag"), "x=…&token=…&flag");
    }

    #[test]
    fn boot_timings_come_from_napalm_inits_report() {
        let boot = json!({"timings": {"init_start": 1.0, "exec_init": 2.5,
            "phases": [{"name": "modules", "start": 1.0, "end": 1.25},
                       {"name": "bad"}]}});
        let t = boot_timings(Some(&boot), Some(7.75)).expect("timings");
        assert_eq!(t.phases.len(), 1);
        assert_eq!(t.phases[0].name, "modules");
        assert_eq!(t.phases[0].duration.map(|d| d.nanos), Some(250_000_000));
        assert_eq!(
            t.to_init.map(|d| (d.seconds, d.nanos)),
            Some((2, 500_000_000))
        );
        assert_eq!(t.to_registered.map(|d| d.seconds), Some(7));
        assert!(boot_timings(None, None).is_none());
        // Restored from a template: counted from the restore, not the template's boot.
        let restored = json!({"restored_at_s": 3.0, "template": true,
            "timings": {"exec_init": 3.5, "phases": [{"name": "network", "start": 3.25, "end": 3.5}]}});
        let t = boot_timings(Some(&restored), Some(4.25)).expect("timings");
        assert_eq!(
            t.to_init.map(|d| (d.seconds, d.nanos)),
            Some((0, 500_000_000))
        );
        assert_eq!(
            t.to_registered.map(|d| (d.seconds, d.nanos)),
            Some((1, 250_000_000))
        );
        assert_eq!(t.phases[0].start.map(|d| d.nanos), Some(250_000_000));
        assert!(
            boot_timings(Some(&json!({"timings": {"exec_init": -1.0}})), None)
                .is_some_and(|t| t.to_init.is_none())
        );
    }
}
