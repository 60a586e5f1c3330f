//! The thesis's REST/CRUD contract (SPEC §3, table 4.3) on axum, under a configurable
//! prefix. Handlers only translate HTTP to core calls ([`crate::core::Agent`]) and back:
//! each table-4.3 operation is exactly one request (create = 1 PUT, change state = 1 PUT,
//! delete = 1 DELETE, status = 1 GET, get file = 1 GET, send file = 1 PUT, archive = 1 GET).
//! A bearer token is required unless the operator runs with `--insecure-no-auth`.

mod handlers;
pub mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::core::Agent;

/// Settings of the REST server.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// Path prefix (`""` or `/napalm`), no trailing slash.
    pub prefix: String,
    /// Bearer token; `None` disables authentication (local trials only).
    pub token: Option<String>,
    /// Largest domain archive accepted, bytes.
    pub max_archive_bytes: usize,
    /// Largest single file accepted, bytes.
    pub max_file_bytes: usize,
    /// Largest XML document accepted, bytes.
    pub max_xml_bytes: usize,
    /// libvirt URI (shown by /about).
    pub libvirt_uri: String,
}

/// Requests served, by method (also exported as metrics; lets tests verify table 4.3).
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// GET and HEAD requests (reads: lists, status, files, archives).
    pub get: AtomicU64,
    /// PUT requests (create, replace a file, change state).
    pub put: AtomicU64,
    /// POST requests (none in the thesis's contract; counted to prove it).
    pub post: AtomicU64,
    /// DELETE requests (delete a domain).
    pub delete: AtomicU64,
    /// Any other method (answered 405).
    pub other: AtomicU64,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The core operations every handler calls.
    pub agent: Arc<Agent>,
    /// Prefix, token and size limits.
    pub cfg: Arc<RestConfig>,
    /// Requests by method, counted by a middleware before authentication.
    pub counters: Arc<HttpCounters>,
    /// Extra text appended to `/metrics` (the metrics module renders it).
    pub metrics:
        Option<Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, String> + Send + Sync>>,
}

async fn count(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let c = &s.counters;
    let m = req.method();
    let ctr = if m == "GET" || m == "HEAD" {
        &c.get
    } else if m == "PUT" {
        &c.put
    } else if m == "POST" {
        &c.post
    } else if m == "DELETE" {
        &c.delete
    } else {
        &c.other
    };
    ctr.fetch_add(1, Ordering::Relaxed);
    next.run(req).await
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.cfg.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(napalm_proto::auth::bearer)
            .unwrap_or("");
        if !napalm_proto::auth::token_matches(token, given) {
            return unauthorized(render::Format::negotiate(req.headers()));
        }
    }
    next.run(req).await
}

/// The 401 answer to a missing or wrong bearer token, in the negotiated format: its body
/// says status 401 and reason `UNAUTHENTICATED` (as gRPC's UNAUTHENTICATED), like the
/// HTTP status, with a `WWW-Authenticate` challenge.
fn unauthorized(f: render::Format) -> Response {
    let code = StatusCode::UNAUTHORIZED;
    let e = napalm_proto::ApiError::Unauthenticated {
        description: "missing or wrong bearer token in the Authorization header".into(),
    };
    let reason = e.reason().as_str_name().trim_start_matches("ERROR_REASON_");
    let msg = e.to_string();
    tracing::debug!(error = %msg, status = code.as_u16(), "request refused");
    let (ct, data) = match f {
        render::Format::Json => (
            "application/json",
            serde_json::json!({"error": {"status": code.as_u16(), "reason": reason, "message": msg}})
                .to_string(),
        ),
        render::Format::Html => (
            "text/html; charset=utf-8",
            render::page(
                &format!("Error {}", code.as_u16()),
                &format!("<p>{}</p>", render::esc(&msg)),
            ),
        ),
        render::Format::Xml => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\"?>\n<error><status>{}</status><reason>{reason}</reason><message>{}</message></error>\n",
                code.as_u16(),
                render::esc(&msg)
            ),
        ),
    };
    (
        code,
        [
            (header::CONTENT_TYPE, ct),
            (header::WWW_AUTHENTICATE, "Bearer realm=\"napalm\""),
        ],
        data,
    )
        .into_response()
}

/// The router, prefix included.
pub fn router(state: AppState) -> Router {
    use handlers as h;
    let cfg = Arc::clone(&state.cfg);
    let xml_limit = DefaultBodyLimit::max(cfg.max_xml_bytes);
    let inner = Router::new()
        .route("/", get(h::index))
        .route("/about", get(h::about))
        .route("/about.json", get(h::about_json))
        .route("/capabilities.xml", get(h::capabilities))
        .route("/capabilities.json", get(h::capabilities_json))
        .route("/domains.xml", get(h::domains))
        .route("/domains.json", get(h::domains_json))
        .route("/metrics", get(h::metrics))
        .route(
            "/domain/{name}",
            get(h::domain)
                .delete(h::delete)
                .put(h::create)
                .layer(DefaultBodyLimit::max(cfg.max_archive_bytes)),
        )
        .route(
            "/domain/{name}/config.xml",
            get(h::config).put(h::put_config).layer(xml_limit),
        )
        .route(
            "/domain/{name}/status.xml",
            get(h::status)
                .put(h::put_status)
                .post(h::put_status)
                .layer(xml_limit),
        )
        .route("/domain/{name}/status.json", get(h::status_json))
        .route("/domain/{name}/archive.tar.gz", get(h::archive))
        .route("/domain/{name}/console", get(h::console))
        .route(
            "/domain/{name}/{*file}",
            get(h::file)
                .put(h::put_file)
                .layer(DefaultBodyLimit::max(cfg.max_file_bytes)),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such resource\n").into_response() })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state);
    if cfg.prefix.is_empty() {
        inner
    } else {
        Router::new().nest(&cfg.prefix, inner)
    }
}
