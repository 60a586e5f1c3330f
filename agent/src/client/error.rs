//! What can go wrong talking to an agent, and which of four kinds of failure it is.

/// How a request failed to get an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The agent did not answer within the client's timeouts.
    Timeout,
    /// No connection could be made (nothing listens, no route, refused).
    Connect,
    /// Anything else on the way (a broken connection, a malformed HTTP answer).
    Other,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timeout => "did not answer in time",
            Self::Connect => "cannot be reached",
            Self::Other => "failed",
        })
    }
}

/// Why a base URL is refused; the text continues "agent URL "…" ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not a URL at all.
    #[error("does not parse: {0}; use http://HOST:PORT/PREFIX")]
    Parse(String),
    /// `https`: this build has no TLS client.
    #[error(
        "uses TLS, which this client cannot speak yet; reach the agent over plain HTTP \
         (e.g. through an SSH tunnel)"
    )]
    Tls,
    /// A scheme other than `http`.
    #[error("has scheme {0:?}; use http://HOST:PORT/PREFIX")]
    Scheme(String),
    /// A `?query` or `#fragment`, which would end up in every request path.
    #[error("has a query or fragment; give only http://HOST:PORT/PREFIX")]
    QueryOrFragment,
}

/// Which kind of failure an error is, for a caller's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The agent could not be reached or did not answer in time.
    Unreachable,
    /// The agent answered 404: no such domain (or resource).
    NotFound,
    /// The caller's input was wrong: a name, a URL, a file, or a 400/413 answer.
    BadInput,
    /// Anything else: refused (401, 403), busy (409), the agent failed.
    Failed,
}

/// An error of [`super::AgentClient`] or [`super::build_archive`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A domain name the agent would refuse; no request was made.
    #[error(
        "domain name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ - not starting with \
         . or -"
    )]
    BadName {
        /// The name as given.
        name: String,
    },
    /// The agent's base URL is unusable.
    #[error("agent URL {url:?} {problem}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: UrlProblem,
    },
    /// The HTTP client could not be built (no usable system resolver or the like).
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// No answer from the agent.
    #[error("{method} {url}: the agent {transport} ({detail})")]
    Unreachable {
        /// HTTP method.
        method: String,
        /// Full request URL.
        url: String,
        /// How it failed.
        transport: Transport,
        /// The transport error with its causes.
        detail: String,
    },
    /// The agent answered but its body could not be read.
    #[error("{method} {url}: reading the answer failed: {detail}")]
    Read {
        /// HTTP method.
        method: String,
        /// Full request URL.
        url: String,
        /// The read error.
        detail: String,
    },
    /// The agent answered with an error status; `message` is its own
    /// (`{"error":{"message"}}`, else the body's text).
    #[error("{method} {url}: {status_text}: {message}")]
    Status {
        /// HTTP method.
        method: String,
        /// Full request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// HTTP status as text (`404 Not Found`).
        status_text: String,
        /// What the agent said.
        message: String,
    },
    /// A JSON resource whose answer is not the JSON expected.
    #[error("GET {url}: the agent's answer is not JSON ({detail}); is this a napalm-agent?")]
    NotJson {
        /// Full request URL.
        url: String,
        /// The decoding error.
        detail: String,
    },
    /// A file for an archive could not be read.
    #[error("cannot read {what} {path:?}: {source}")]
    ReadFile {
        /// Which file it is (`the domain XML`, `--file`…).
        what: &'static str,
        /// Its path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file for an archive whose path has no usable (UTF-8) file name.
    #[error("--file {path:?} has no usable file name")]
    NoFileName {
        /// Its path as given.
        path: String,
    },
    /// Two files for an archive with the same file name.
    #[error(
        "--file {path:?}: a file named {name:?} is already in the archive; each file travels \
         under its own name, so names must differ"
    )]
    DuplicateName {
        /// The second file's path as given.
        path: String,
        /// The name both have.
        name: String,
    },
    /// Writing the archive failed.
    #[error("cannot pack {name:?} into the archive: {source}")]
    Pack {
        /// The entry being written.
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Closing the archive failed.
    #[error("cannot finish the archive: {source}")]
    FinishArchive {
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ClientError {
    /// Which kind of failure this is: unreachable, not found, bad input, or failed.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unreachable {
                transport: Transport::Timeout | Transport::Connect,
                ..
            } => ErrorClass::Unreachable,
            Self::Status { status: 404, .. } => ErrorClass::NotFound,
            Self::Status {
                status: 400 | 413, ..
            }
            | Self::BadName { .. }
            | Self::BadUrl { .. }
            | Self::ReadFile { .. }
            | Self::NoFileName { .. }
            | Self::DuplicateName { .. } => ErrorClass::BadInput,
            _ => ErrorClass::Failed,
        }
    }

    /// The HTTP status of an agent's error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An error with its causes, `a: b: c`.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// The agent's message in an error body (`{"error":{"status","reason","message"}}`), else
/// the body's text.
pub(super) fn agent_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_yields_the_agents_message() {
        let body = br#"{"error":{"status":404,"reason":"NOT_FOUND","message":"no domain \"x\""}}"#;
        assert_eq!(agent_message(body), "no domain \"x\"");
        assert_eq!(agent_message(b" nope \n"), "nope");
    }

    #[test]
    fn statuses_sort_into_classes() {
        let st = |status: u16| ClientError::Status {
            method: "GET".into(),
            url: "http://a".into(),
            status,
            status_text: status.to_string(),
            message: String::new(),
        };
        assert_eq!(st(404).class(), ErrorClass::NotFound);
        assert_eq!(st(400).class(), ErrorClass::BadInput);
        assert_eq!(st(413).class(), ErrorClass::BadInput);
        for s in [401, 403, 409, 500] {
            assert_eq!(st(s).class(), ErrorClass::Failed, "{s}");
        }
    }
}
