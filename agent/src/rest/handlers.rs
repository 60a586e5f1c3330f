//! One handler per resource and verb; each is a single core call plus rendering.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::render::{self, Format};
use super::AppState;
use crate::error::AgentError;
use crate::hypervisor::RunState;

type Q = Query<HashMap<String, String>>;

fn fail(h: &HeaderMap, e: AgentError) -> Response {
    render::error(Format::negotiate(h), &e)
}

fn request_id(h: &HeaderMap) -> Option<String> {
    h.get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn prefix(s: &AppState) -> &str {
    &s.cfg.prefix
}

pub(super) async fn index(State(s): State<AppState>, h: HeaderMap) -> Response {
    let p = prefix(&s);
    let links = format!("<ul><li><a href=\"{p}/about\">about</a></li><li><a href=\"{p}/domains.xml\">domains</a></li><li><a href=\"{p}/capabilities.xml\">capabilities</a></li></ul>");
    let a = s.agent.about(&s.cfg.libvirt_uri);
    render::negotiated(
        Format::negotiate(&h),
        &a,
        || render::about_xml(&a),
        || render::page("Napalm agent", &links),
        &h,
    )
}

pub(super) async fn about(State(s): State<AppState>, h: HeaderMap) -> Response {
    let a = s.agent.about(&s.cfg.libvirt_uri);
    render::negotiated(
        Format::negotiate(&h),
        &a,
        || render::about_xml(&a),
        || render::about_html(&a),
        &h,
    )
}

pub(super) async fn about_json(State(s): State<AppState>, h: HeaderMap) -> Response {
    let a = s.agent.about(&s.cfg.libvirt_uri);
    render::negotiated(Format::Json, &a, String::new, String::new, &h)
}

pub(super) async fn capabilities(State(s): State<AppState>, h: HeaderMap) -> Response {
    match s.agent.capabilities().await {
        Ok(c) => render::negotiated(
            Format::negotiate(&h),
            &c,
            || c.raw_xml.clone(),
            || render::capabilities_html(&c),
            &h,
        ),
        Err(e) => fail(&h, e),
    }
}

pub(super) async fn capabilities_json(State(s): State<AppState>, h: HeaderMap) -> Response {
    match s.agent.capabilities().await {
        Ok(c) => render::negotiated(Format::Json, &c, String::new, String::new, &h),
        Err(e) => fail(&h, e),
    }
}

async fn list(s: &AppState, h: &HeaderMap, f: Format) -> Response {
    match s.agent.list(false).await {
        Ok(d) => render::negotiated(
            f,
            &d,
            || render::domains_xml(prefix(s), &d),
            || render::domains_html(prefix(s), &d),
            h,
        ),
        Err(e) => fail(h, e),
    }
}

pub(super) async fn domains(State(s): State<AppState>, h: HeaderMap) -> Response {
    list(&s, &h, Format::negotiate(&h)).await
}

pub(super) async fn domains_json(State(s): State<AppState>, h: HeaderMap) -> Response {
    list(&s, &h, Format::Json).await
}

pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    let text = match &s.metrics {
        Some(f) => f().await,
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(super) async fn domain(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    match s.agent.get(&name, false).await {
        Ok(d) => render::negotiated(
            Format::negotiate(&h),
            &d,
            || render::domain_xml(prefix(&s), &d),
            || render::domain_html(prefix(&s), &d),
            &h,
        ),
        Err(e) => fail(&h, e),
    }
}

/// Table 4.3 "create": one PUT of the archive. `?start=false` only defines.
pub(super) async fn create(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Q,
    h: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = crate::names::check_domain_name(&name) {
        return fail(&h, e);
    }
    let body = match s
        .agent
        .spool(body.into_data_stream(), s.cfg.max_archive_bytes as u64)
        .await
    {
        Ok(b) => b,
        Err(e) => return fail(&h, e),
    };
    let start = q
        .get("start")
        .map(|v| v != "false" && v != "0")
        .unwrap_or(true);
    let existed = s.agent.config(&name).is_ok();
    match s
        .agent
        .create_from_archive(&name, body, start, request_id(&h).as_deref())
        .await
    {
        Ok(d) => {
            let mut r = render::negotiated(
                Format::negotiate(&h),
                &d,
                || render::domain_xml(prefix(&s), &d),
                || render::domain_html(prefix(&s), &d),
                &h,
            );
            if !existed {
                *r.status_mut() = StatusCode::CREATED;
                if let Ok(v) =
                    header::HeaderValue::from_str(&format!("{}/domain/{}", prefix(&s), name))
                {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
            r
        }
        Err(e) => fail(&h, e),
    }
}

pub(super) async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Q,
    h: HeaderMap,
) -> Response {
    let purge = q.get("purge").is_some_and(|v| v != "false");
    match s
        .agent
        .delete(&name, purge, timeout(&q), request_id(&h).as_deref())
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => fail(&h, AgentError::no_domain(&name)),
        Err(e) => fail(&h, e),
    }
}

pub(super) async fn config(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    match s.agent.config(&name) {
        Ok(x) => {
            let tag = render::etag_of(x.as_bytes());
            if render::not_modified(&h, &tag) {
                return render::not_modified_response(&tag);
            }
            render::body("application/xml", x, Some(tag))
        }
        Err(e) => fail(&h, e),
    }
}

pub(super) async fn put_config(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let xml = match std::str::from_utf8(&body) {
        Ok(x) => x,
        Err(_) => return fail(&h, AgentError::invalid("config.xml", "body is not UTF-8")),
    };
    if let (Some(want), Ok(cur)) = (
        h.get(header::IF_MATCH).and_then(|v| v.to_str().ok()),
        s.agent.config(&name),
    ) {
        if want.trim() != render::etag_of(cur.as_bytes()) && want.trim() != "*" {
            return fail(
                &h,
                AgentError::Conflict(
                    "If-Match does not match the current config.xml; re-read it".into(),
                ),
            );
        }
    }
    match s.agent.put_config(&name, xml).await {
        Ok(_) => {
            let tag = render::etag_of(xml.as_bytes());
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = header::HeaderValue::from_str(&tag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Err(e) => fail(&h, e),
    }
}

async fn status_in(s: &AppState, name: &str, h: &HeaderMap, f: Format) -> Response {
    match s.agent.status(name).await {
        Ok(st) => {
            let v = serde_json::json!({ "state": st });
            render::negotiated(
                f,
                &v,
                || render::status_xml(st),
                || {
                    render::page(
                        &format!("Domain {name}"),
                        &format!("<p>state: <b>{}</b></p>", st.as_str()),
                    )
                },
                h,
            )
        }
        Err(e) => fail(h, e),
    }
}

pub(super) async fn status(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    status_in(&s, &name, &h, Format::negotiate(&h)).await
}

pub(super) async fn status_json(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    status_in(&s, &name, &h, Format::Json).await
}

fn timeout(q: &Q) -> Option<Duration> {
    q.get("timeout")
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0 && *t < 86400.0)
        .map(Duration::from_secs_f64)
}

/// Parses `<status><state>running</state></status>` (or `{"state":"running"}`).
pub fn parse_status(body: &[u8], json: bool) -> Result<RunState, AgentError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| AgentError::invalid("status.xml", "body is not UTF-8"))?;
    let word = if json {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| AgentError::invalid("status", format!("malformed JSON: {e}")))?;
        v.get("state")
            .and_then(|s| s.as_str())
            .ok_or_else(|| AgentError::invalid("status", "no \"state\" string"))?
            .to_owned()
    } else {
        let doc = crate::policy::parse("status.xml", text)?;
        let root = doc.root_element();
        if root.tag_name().name() != "status" {
            return Err(AgentError::invalid(
                "status.xml",
                format!(
                    "root element is <{}>, expected <status>",
                    root.tag_name().name()
                ),
            ));
        }
        root.children()
            .find(|c| c.has_tag_name("state"))
            .and_then(|c| c.text())
            .ok_or_else(|| AgentError::invalid("status.xml", "no <state> element"))?
            .trim()
            .to_owned()
    };
    RunState::parse(&word).ok_or_else(|| {
        AgentError::invalid(
            "status.xml",
            format!("unknown state {word:?}: use running, shutoff or paused"),
        )
    })
}

/// Table 4.3 "change state": one PUT (or POST) of status.xml.
pub(super) async fn put_status(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Q,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let target = match parse_status(&body, json) {
        Ok(t) => t,
        Err(e) => return fail(&h, e),
    };
    match s
        .agent
        .set_state(&name, target, timeout(&q), request_id(&h).as_deref())
        .await
    {
        Ok(d) => status_in(&s, &d.name, &h, Format::negotiate(&h)).await,
        Err(e) => fail(&h, e),
    }
}

pub(super) async fn archive(
    State(s): State<AppState>,
    Path(name): Path<String>,
    h: HeaderMap,
) -> Response {
    match s.agent.archive(&name).await {
        Ok(data) => {
            let mut r = render::body("application/gzip", data, None);
            if let Ok(v) =
                header::HeaderValue::from_str(&format!("attachment; filename=\"{name}.tar.gz\""))
            {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Err(e) => fail(&h, e),
    }
}

/// `GET /domain/NAME/console?lines=N`: the last N lines of the guest's serial console
/// (default 20, at most 1000), as `text/plain` (one line each), JSON on request
/// (`{"name", "lines": [...], "logged"}`) or an HTML page for browsers.
pub(super) async fn console(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Q,
    h: HeaderMap,
) -> Response {
    let lines = match q.get("lines").map(|l| l.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return fail(
                &h,
                AgentError::invalid("lines", "lines must be a whole number (0 for the default)"),
            )
        }
    };
    let c = match s.agent.console(&name, lines).await {
        Ok(c) => c,
        Err(e) => return fail(&h, e),
    };
    match Format::negotiate(&h) {
        Format::Json => render::negotiated(Format::Json, &c, String::new, String::new, &h),
        Format::Html => render::negotiated(
            Format::Html,
            &c,
            String::new,
            || {
                render::page(
                    &format!("Console of {name}"),
                    &format!("<pre>{}</pre>", render::esc(&c.lines.join("\n"))),
                )
            },
            &h,
        ),
        Format::Xml => {
            let mut text = c.lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            render::body("text/plain; charset=utf-8", text, None)
        }
    }
}

/// Table 4.3 "get file": one GET of a file referenced by config.xml.
pub(super) async fn file(
    State(s): State<AppState>,
    Path((name, file)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    use std::os::unix::fs::MetadataExt;
    let p = match s.agent.file_path(&name, &file) {
        Ok(p) => p,
        Err(e) => return fail(&h, e),
    };
    let f = match tokio::fs::File::open(&p).await {
        Ok(f) => f,
        Err(e) => return fail(&h, AgentError::io(&p, e)),
    };
    let meta = match f.metadata().await {
        Ok(m) => m,
        Err(e) => return fail(&h, AgentError::io(&p, e)),
    };
    let tag = format!(
        "\"{:x}-{:x}-{:x}\"",
        meta.ino(),
        meta.len(),
        meta.mtime_nsec() as u64 ^ ((meta.mtime() as u64) << 20)
    );
    if render::not_modified(&h, &tag) {
        return render::not_modified_response(&tag);
    }
    let stream = tokio_util::io::ReaderStream::new(f);
    let mut r = render::body(
        "application/octet-stream",
        Body::from_stream(stream),
        Some(tag),
    );
    if let Ok(v) = header::HeaderValue::from_str(&meta.len().to_string()) {
        r.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    r
}

/// Table 4.3 "send file": one PUT of a file referenced by config.xml.
pub(super) async fn put_file(
    State(s): State<AppState>,
    Path((name, file)): Path<(String, String)>,
    h: HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = s.agent.check_file(&name, &file) {
        return fail(&h, e);
    }
    let body = match s
        .agent
        .spool(body.into_data_stream(), s.cfg.max_file_bytes as u64)
        .await
    {
        Ok(b) => b,
        Err(e) => return fail(&h, e),
    };
    match s.agent.put_file(&name, &file, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(&h, e),
    }
}
