//! The agent's error type: one enum for every core operation, mapped once to the wire
//! (`napalm_proto::ApiError` for gRPC, an HTTP status for REST).

use napalm_proto::ApiError;

/// What went wrong in a core operation. Messages are sentences quoting the offending input.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request is malformed.
    #[error("invalid {field}: {description}")]
    Invalid {
        /// Which part of the request (`config.xml`, `status.xml`, `name`, `archive`).
        field: String,
        /// What is wrong, quoting the input.
        description: String,
    },
    /// The named domain (or file, blob) does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// `domain`, `file`, `blob`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A domain of that name already exists with another definition.
    #[error("domain {name:?} already exists with a different definition; delete it first")]
    AlreadyExists {
        /// Domain name.
        name: String,
    },
    /// Policy refuses what the request would do on this host.
    #[error("refused by policy: {0}")]
    Policy(String),
    /// The request is larger than this agent accepts.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A blob the request references is not stored here.
    #[error("blob {0} is not on this agent: upload it first")]
    BlobMissing(String),
    /// Uploaded bytes do not match their announced digest.
    #[error("upload does not match its header: expected {expected}, got {actual}")]
    Digest {
        /// Announced `sha256/size`.
        expected: String,
        /// Received `sha256/size`.
        actual: String,
    },
    /// A request id was reused for another operation.
    #[error("request id {0:?} was already used for a different operation")]
    RequestIdReused(String),
    /// The precondition of a conditional request failed or a concurrent change won.
    #[error("conflicting change: {0}")]
    Conflict(String),
    /// libvirt refused or failed.
    #[error("hypervisor error: {0}")]
    Hypervisor(String),
    /// A port filter (anti-spoofing on the host bridge) could not be installed or removed.
    #[error("port filter: {0}")]
    PortFilter(String),
    /// The agent's own storage failed.
    #[error("agent storage error at {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of core operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// Shorthand for [`AgentError::Invalid`].
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            description: description.into(),
        }
    }

    /// Shorthand for an unknown domain.
    pub fn no_domain(name: &str) -> Self {
        Self::NotFound {
            kind: "domain",
            name: name.to_owned(),
        }
    }

    /// Wraps an I/O error with the path it concerned.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The HTTP status code this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid { .. } | Self::Digest { .. } => 400,
            Self::Policy(_) => 403,
            Self::NotFound { .. } => 404,
            Self::AlreadyExists { .. } | Self::RequestIdReused(_) | Self::Conflict(_) => 409,
            Self::BlobMissing(_) => 412,
            Self::TooLarge(_) => 413,
            Self::Hypervisor(_) | Self::PortFilter(_) => 502,
            Self::Io { .. } => 500,
        }
    }

    /// Stable machine-readable reason (the `ErrorReason` name without prefix).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { .. } | Self::TooLarge(_) => "INVALID_ARGUMENT",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::Policy(_) => "POLICY_DENIED",
            Self::BlobMissing(_) => "BLOB_MISSING",
            Self::Digest { .. } => "DIGEST_MISMATCH",
            Self::RequestIdReused(_) | Self::Conflict(_) => "CONFLICT",
            Self::Hypervisor(_) | Self::PortFilter(_) => "HYPERVISOR",
            Self::Io { .. } => "STORE_UNAVAILABLE",
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let description = e.to_string();
        match e {
            AgentError::Invalid { field, description } => {
                ApiError::InvalidArgument { field, description }
            }
            AgentError::TooLarge(d) => ApiError::InvalidArgument {
                field: "size".into(),
                description: d,
            },
            AgentError::NotFound { kind, name } => ApiError::NotFound {
                kind: kind.into(),
                name,
            },
            AgentError::AlreadyExists { name } => ApiError::AlreadyExists {
                kind: "domain".into(),
                name,
                description,
            },
            AgentError::Policy(d) => ApiError::PolicyDenied { description: d },
            AgentError::BlobMissing(sha256) => ApiError::BlobMissing { sha256 },
            AgentError::Digest { expected, actual } => {
                ApiError::DigestMismatch { expected, actual }
            }
            AgentError::RequestIdReused(_) => ApiError::Conflict { description },
            // ApiError::Conflict says "conflicting change" itself.
            AgentError::Conflict(d) => ApiError::Conflict { description: d },
            AgentError::Hypervisor(d) => ApiError::Hypervisor { description: d },
            AgentError::PortFilter(_) => ApiError::Hypervisor { description },
            AgentError::Io { .. } => ApiError::StoreUnavailable { description },
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        ApiError::from(e).into()
    }
}
