//! Content negotiation and the three renderings: XML (default, the thesis's format),
//! JSON (on request, or the `.json` twins), and a readable HTML page for browsers.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::core::{About, CapabilitiesView, DomainView};
use crate::error::AgentError;
use crate::hypervisor::RunState;

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/xml` (default).
    Xml,
    /// `application/json`.
    Json,
    /// `text/html`.
    Html,
}

impl Format {
    /// From the `Accept` header: a browser (text/html first) gets HTML, a JSON client JSON.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let pos = |m: &str| accept.find(m);
        match (pos("text/html"), pos("application/json"), pos("xml")) {
            (Some(h), j, x) if j.is_none_or(|j| h < j) && x.is_none_or(|x| h < x) => Self::Html,
            (_, Some(j), x) if x.is_none_or(|x| j < x) => Self::Json,
            _ => Self::Xml,
        }
    }
}

/// Escapes text for XML and HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A body with its content type and an optional ETag.
pub fn body(ct: &'static str, data: impl Into<axum::body::Body>, etag: Option<String>) -> Response {
    let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, ct)], data.into()).into_response();
    if let Some(e) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        r.headers_mut().insert(header::ETAG, e);
    }
    r
}

/// Strong ETag of content.
pub fn etag_of(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", hex::encode(&Sha256::digest(data)[..12]))
}

/// True when `If-None-Match` matches `etag` (answer 304).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                t.trim() == etag || t.trim() == "*" || t.trim().trim_start_matches("W/") == etag
            })
        })
}

/// A 304 with the ETag.
pub fn not_modified_response(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Renders a value in the negotiated format; XML and HTML come from the closures.
pub fn negotiated<T: serde::Serialize>(
    f: Format,
    v: &T,
    xml: impl FnOnce() -> String,
    html: impl FnOnce() -> String,
    headers: &HeaderMap,
) -> Response {
    let (ct, data) = match f {
        Format::Json => (
            "application/json",
            serde_json::to_string_pretty(v).unwrap_or_default(),
        ),
        Format::Html => ("text/html; charset=utf-8", html()),
        Format::Xml => ("application/xml", xml()),
    };
    let tag = etag_of(data.as_bytes());
    if not_modified(headers, &tag) {
        return not_modified_response(&tag);
    }
    body(ct, data, Some(tag))
}

/// An HTML page.
pub fn page(title: &str, inner: &str) -> String {
    format!("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}</style></head><body><h1>{t}</h1>{inner}<p><small>napalm-agent {v}</small></p></body></html>", t = esc(title), v = env!("CARGO_PKG_VERSION"))
}

/// `<status><state>…</state></status>` (thesis listing 3.5).
pub fn status_xml(s: RunState) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<status><state>{}</state></status>\n",
        s.as_str()
    )
}

/// `/about` in XML.
pub fn about_xml(a: &About) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<about><name>{}</name><version>{}</version><description>{}</description><license>{}</license><agent-id>{}</agent-id><libvirt-uri>{}</libvirt-uri></about>\n",
        esc(a.name), esc(a.version), esc(a.description), esc(a.license), esc(&a.agent_id), esc(&a.libvirt_uri)
    )
}

/// `/about` in HTML.
pub fn about_html(a: &About) -> String {
    page(
        "Napalm agent",
        &format!(
            "<p>{}</p><p>Version {} — {} — agent {} on <code>{}</code></p>",
            esc(a.description),
            esc(a.version),
            esc(a.license),
            esc(&a.agent_id),
            esc(&a.libvirt_uri)
        ),
    )
}

/// `/domains.xml`: each domain with links to its resources.
pub fn domains_xml(prefix: &str, ds: &[DomainView]) -> String {
    let mut s = String::from("<?xml version=\"1.0\"?>\n<domains>\n");
    for d in ds {
        let base = format!("{prefix}/domain/{}", d.name);
        s += &format!(
            "  <domain name=\"{n}\" href=\"{b}\"><config href=\"{b}/config.xml\"/><status href=\"{b}/status.xml\"/><state>{st}</state></domain>\n",
            n = esc(&d.name), b = esc(&base), st = d.state.as_str()
        );
    }
    s + "</domains>\n"
}

/// `/domains.xml` for a browser.
pub fn domains_html(prefix: &str, ds: &[DomainView]) -> String {
    let mut rows = String::new();
    for d in ds {
        let b = esc(&format!("{prefix}/domain/{}", d.name));
        rows += &format!("<tr><td><a href=\"{b}\">{}</a></td><td>{}</td><td>{}</td><td><a href=\"{b}/config.xml\">config.xml</a></td></tr>", esc(&d.name), d.state.as_str(), d.vcpus);
    }
    page("Domains", &format!("<table><tr><th>name</th><th>state</th><th>vcpus</th><th>config</th></tr>{rows}</table>"))
}

/// A domain summary in XML.
pub fn domain_xml(prefix: &str, d: &DomainView) -> String {
    let b = format!("{prefix}/domain/{}", d.name);
    let files: String = d
        .files
        .iter()
        .map(|f| {
            format!(
                "<file href=\"{}\">{}</file>",
                esc(&format!("{b}/{f}")),
                esc(f)
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?>\n<domain name=\"{}\" uuid=\"{}\"><state>{}</state><desired>{}</desired><vcpus>{}</vcpus><memory unit=\"bytes\">{}</memory><config href=\"{}/config.xml\"/><status href=\"{}/status.xml\"/><archive href=\"{}/archive.tar.gz\"/><files>{files}</files></domain>\n",
        esc(&d.name), esc(&d.uuid), d.state.as_str(), d.desired.map(|s| s.as_str()).unwrap_or(""), d.vcpus, d.memory_bytes, esc(&b), esc(&b), esc(&b)
    )
}

/// The readable page of a domain (thesis figure 3.9).
pub fn domain_html(prefix: &str, d: &DomainView) -> String {
    let b = format!("{prefix}/domain/{}", d.name);
    let files: String = d
        .files
        .iter()
        .map(|f| {
            format!(
                "<li><a href=\"{}\">{}</a></li>",
                esc(&format!("{b}/{f}")),
                esc(f)
            )
        })
        .collect();
    page(
        &format!("Domain {}", d.name),
        &format!(
            "<table><tr><th>state</th><td>{}</td></tr><tr><th>desired</th><td>{}</td></tr><tr><th>uuid</th><td>{}</td></tr><tr><th>vcpus</th><td>{}</td></tr><tr><th>memory</th><td>{} MiB</td></tr></table><h2>Files</h2><ul><li><a href=\"{b2}/config.xml\">config.xml</a></li><li><a href=\"{b2}/status.xml\">status.xml</a></li>{files}<li><a href=\"{b2}/archive.tar.gz\">archive.tar.gz</a></li></ul>",
            d.state.as_str(), d.desired.map(|s| s.as_str()).unwrap_or(""), esc(&d.uuid), d.vcpus, d.memory_bytes >> 20, b2 = esc(&b)
        ),
    )
}

/// Capabilities in HTML.
pub fn capabilities_html(c: &CapabilitiesView) -> String {
    let g: String = c
        .guests
        .iter()
        .map(|g| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.os_type),
                esc(&g.arch),
                esc(&g.domain_types.join(", ")),
                esc(&g.emulator)
            )
        })
        .collect();
    page("Capabilities", &format!("<p>{} — {} CPUs, {} MiB — {}</p><table><tr><th>os</th><th>arch</th><th>types</th><th>emulator</th></tr>{g}</table>", esc(&c.host.hostname), c.host.cpus, c.host.memory_bytes >> 20, esc(&c.host.uri)))
}

/// An error in the negotiated format, with its HTTP status.
pub fn error(f: Format, e: &AgentError) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let msg = e.to_string();
    if code.is_server_error() {
        tracing::error!(error = %msg, "request failed");
    } else {
        tracing::debug!(error = %msg, status = code.as_u16(), "request refused");
    }
    let (ct, data) = match f {
        Format::Json => ("application/json", serde_json::json!({"error": {"status": code.as_u16(), "reason": e.reason(), "message": msg}}).to_string()),
        Format::Html => ("text/html; charset=utf-8", page(&format!("Error {}", code.as_u16()), &format!("<p>{}</p>", esc(&msg)))),
        Format::Xml => ("application/xml", format!("<?xml version=\"1.0\"?>\n<error><status>{}</status><reason>{}</reason><message>{}</message></error>\n", code.as_u16(), e.reason(), esc(&msg))),
    };
    (code, [(header::CONTENT_TYPE, ct)], data).into_response()
}
