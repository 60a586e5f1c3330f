//! Napalm errors on the wire: one [`ApiError`] kind per [`ErrorReason`], each mapped to a
//! gRPC status code and carried with `google.rpc` details (ErrorInfo always; BadRequest
//! field violations for bad input; ResourceInfo for a named resource), so clients in any
//! language can act on the reason without parsing the message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::v1::ErrorReason;

/// The `ErrorInfo.domain` of every Napalm error.
pub const ERROR_DOMAIN: &str = "napalm.v1";

/// An error of the Napalm API, as a server raises it and a client decodes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Bad input: which field, and what is wrong with it.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        /// The offending field (`spec.count`, `config_xml`).
        field: String,
        /// What is wrong and what to do, quoting the input.
        description: String,
    },
    /// A named resource does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Resource kind (`domain`, `blob`, `agent`, `deployment`, `clone`).
        kind: String,
        /// The name asked for, quoted in the message.
        name: String,
    },
    /// A resource of that name exists with another definition.
    #[error("{kind} {name:?} already exists: {description}")]
    AlreadyExists {
        /// Resource kind (`domain`, `blob`, `agent`, `deployment`, `clone`).
        kind: String,
        /// The name asked for, quoted in the message.
        name: String,
        /// How it differs.
        description: String,
    },
    /// A referenced blob was never uploaded to this agent.
    #[error("blob {sha256} is not on this agent: upload it first")]
    BlobMissing {
        /// The missing blob's sha256.
        sha256: String,
    },
    /// Uploaded bytes do not match the announced digest or size.
    #[error("upload does not match its header: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Announced sha256 and size.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// Policy refuses the request (a path outside the domain directory, a host device...).
    #[error("refused by policy: {description}")]
    PolicyDenied {
        /// What was refused and why.
        description: String,
    },
    /// Nothing can be placed; the message says why per agent.
    #[error("cannot place clones: {description}")]
    Unschedulable {
        /// Per-agent reasons.
        description: String,
    },
    /// libvirt refused or failed.
    #[error("hypervisor error: {description}")]
    Hypervisor {
        /// libvirt's message.
        description: String,
    },
    /// A concurrent change won.
    #[error("conflicting change: {description}; re-read and retry")]
    Conflict {
        /// What conflicted.
        description: String,
    },
    /// This coordinator is not the leader.
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader {
        /// The leader's endpoint, when known.
        leader: String,
    },
    /// Missing or wrong credentials.
    #[error("unauthenticated: {description}")]
    Unauthenticated {
        /// What was missing or wrong.
        description: String,
    },
    /// The registry store failed.
    #[error("store unavailable: {description}")]
    StoreUnavailable {
        /// The store's error.
        description: String,
    },
}

impl ApiError {
    /// The machine-readable reason.
    pub fn reason(&self) -> ErrorReason {
        match self {
            Self::InvalidArgument { .. } => ErrorReason::InvalidArgument,
            Self::NotFound { .. } => ErrorReason::NotFound,
            Self::AlreadyExists { .. } => ErrorReason::AlreadyExists,
            Self::BlobMissing { .. } => ErrorReason::BlobMissing,
            Self::DigestMismatch { .. } => ErrorReason::DigestMismatch,
            Self::PolicyDenied { .. } => ErrorReason::PolicyDenied,
            Self::Unschedulable { .. } => ErrorReason::Unschedulable,
            Self::Hypervisor { .. } => ErrorReason::Hypervisor,
            Self::Conflict { .. } => ErrorReason::Conflict,
            Self::NotLeader { .. } => ErrorReason::NotLeader,
            Self::Unauthenticated { .. } => ErrorReason::Unauthenticated,
            Self::StoreUnavailable { .. } => ErrorReason::StoreUnavailable,
        }
    }

    /// The gRPC status code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::DigestMismatch { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::BlobMissing { .. } | Self::Unschedulable { .. } => Code::FailedPrecondition,
            Self::PolicyDenied { .. } => Code::PermissionDenied,
            Self::Hypervisor { .. } => Code::Internal,
            Self::Conflict { .. } => Code::Aborted,
            Self::NotLeader { .. } | Self::StoreUnavailable { .. } => Code::Unavailable,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
        }
    }

    /// Key/value pairs carried in `ErrorInfo.metadata`, from which [`ApiError::from_status`]
    /// rebuilds the error.
    fn metadata(&self) -> HashMap<String, String> {
        let pairs: Vec<(&str, &str)> = match self {
            Self::InvalidArgument { field, description } => {
                vec![("field", field), ("description", description)]
            }
            Self::NotFound { kind, name } => vec![("kind", kind), ("name", name)],
            Self::AlreadyExists {
                kind,
                name,
                description,
            } => vec![("kind", kind), ("name", name), ("description", description)],
            Self::BlobMissing { sha256 } => vec![("sha256", sha256)],
            Self::DigestMismatch { expected, actual } => {
                vec![("expected", expected), ("actual", actual)]
            }
            Self::NotLeader { leader } => vec![("leader", leader)],
            Self::PolicyDenied { description }
            | Self::Unschedulable { description }
            | Self::Hypervisor { description }
            | Self::Conflict { description }
            | Self::Unauthenticated { description }
            | Self::StoreUnavailable { description } => vec![("description", description)],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Rebuilds the error from a status raised by a Napalm server. `None` when the status
    /// carries no Napalm `ErrorInfo` (a transport error, another server).
    pub fn from_status(status: &Status) -> Option<Self> {
        let details = status.get_error_details();
        let info = details.error_info()?;
        if info.domain != ERROR_DOMAIN {
            return None;
        }
        let reason = ErrorReason::from_str_name(&info.reason)?;
        let m = |k: &str| info.metadata.get(k).cloned().unwrap_or_default();
        Some(match reason {
            ErrorReason::Unspecified => return None,
            ErrorReason::InvalidArgument => Self::InvalidArgument {
                field: m("field"),
                description: m("description"),
            },
            ErrorReason::NotFound => Self::NotFound {
                kind: m("kind"),
                name: m("name"),
            },
            ErrorReason::AlreadyExists => Self::AlreadyExists {
                kind: m("kind"),
                name: m("name"),
                description: m("description"),
            },
            ErrorReason::BlobMissing => Self::BlobMissing {
                sha256: m("sha256"),
            },
            ErrorReason::DigestMismatch => Self::DigestMismatch {
                expected: m("expected"),
                actual: m("actual"),
            },
            ErrorReason::PolicyDenied => Self::PolicyDenied {
                description: m("description"),
            },
            ErrorReason::Unschedulable => Self::Unschedulable {
                description: m("description"),
            },
            ErrorReason::Hypervisor => Self::Hypervisor {
                description: m("description"),
            },
            ErrorReason::Conflict => Self::Conflict {
                description: m("description"),
            },
            ErrorReason::NotLeader => Self::NotLeader {
                leader: m("leader"),
            },
            ErrorReason::Unauthenticated => Self::Unauthenticated {
                description: m("description"),
            },
            ErrorReason::StoreUnavailable => Self::StoreUnavailable {
                description: m("description"),
            },
        })
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let mut details = ErrorDetails::new();
        details.set_error_info(err.reason().as_str_name(), ERROR_DOMAIN, err.metadata());
        match &err {
            ApiError::InvalidArgument { field, description } => {
                details.add_bad_request_violation(field.clone(), description.clone());
            }
            ApiError::NotFound { kind, name } => {
                details.set_resource_info(kind.clone(), name.clone(), "", "not found");
            }
            ApiError::AlreadyExists {
                kind,
                name,
                description,
            } => {
                details.set_resource_info(kind.clone(), name.clone(), "", description.clone());
            }
            _ => {}
        }
        Status::with_error_details(err.code(), err.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ApiError> {
        let s = |x: &str| x.to_owned();
        vec![
            ApiError::InvalidArgument {
                field: s("spec.count"),
                description: s("count must be at least 1, got \"0\""),
            },
            ApiError::NotFound {
                kind: s("domain"),
                name: s("clone01"),
            },
            ApiError::AlreadyExists {
                kind: s("domain"),
                name: s("clone01"),
                description: s("different config_xml"),
            },
            ApiError::BlobMissing { sha256: s("ab12") },
            ApiError::DigestMismatch {
                expected: s("ab12/10"),
                actual: s("cd34/9"),
            },
            ApiError::PolicyDenied {
                description: s("path /etc/shadow is outside the domain directory"),
            },
            ApiError::Unschedulable {
                description: s("agent a1: needs 512 MiB, 256 MiB free"),
            },
            ApiError::Hypervisor {
                description: s("virDomainCreate failed"),
            },
            ApiError::Conflict {
                description: s("revision 4 != 5"),
            },
            ApiError::NotLeader {
                leader: s("http://10.0.0.2:7700"),
            },
            ApiError::Unauthenticated {
                description: s("missing bearer token"),
            },
            ApiError::StoreUnavailable {
                description: s("etcd 127.0.0.1:2379 refused"),
            },
        ]
    }

    #[test]
    fn every_error_survives_a_status_round_trip() {
        for err in all() {
            let status = Status::from(err.clone());
            assert_eq!(status.code(), err.code(), "{err}");
            assert_eq!(status.message(), err.to_string());
            assert_eq!(ApiError::from_status(&status), Some(err));
        }
    }

    #[test]
    fn bad_request_carries_a_field_violation() {
        let status = Status::from(ApiError::InvalidArgument {
            field: "spec.count".into(),
            description: "must be >= 1".into(),
        });
        let details = status.get_error_details();
        let br = details.bad_request().expect("bad request detail");
        assert_eq!(br.field_violations[0].field, "spec.count");
    }

    #[test]
    fn foreign_status_is_not_decoded() {
        assert_eq!(
            ApiError::from_status(&Status::unavailable("conn refused")),
            None
        );
    }
}
