//! # napalm-proto — the `napalm.v1` wire contract
//!
//! Owns the gRPC contract shared by `napalm-agent`, `napalm-coordinator` and `napalmctl`:
//! the `.proto` files under `proto/napalm/v1/`, the code tonic generates from them
//! ([`v1`]), the mapping between Napalm's error kinds and gRPC statuses with
//! `google.rpc` details ([`status`]), how a server checks a bearer token ([`auth`]), and
//! the short names operators use for wire enums (`Hypervisor::short_name`), and the clock
//! edge both daemons read time through with its wire conversions ([`time`]).
//!
//! Must not touch: the machine (no libvirt, files, network; the wall clock only through
//! [`time::SystemClock`]) and no business logic. Every other crate codes against these
//! types; a change here is a change of the contract.

pub mod auth;
mod names;
pub mod status;
pub mod time;

/// Code generated from `proto/napalm/v1/*.proto` (messages, enums, clients, servers).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("napalm.v1");

    /// The encoded `FileDescriptorSet` of the whole `napalm.v1` package (for gRPC
    /// reflection, and for tests that check every message is exercised).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/napalm_v1_descriptor.bin"));
}

/// Code generated from `proto/napalm/trust/v1/trust.proto`: enrollment, renewal and join
/// tokens (`napalm.trust.v1.TrustService`), a package of its own beside `napalm.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod trust_v1 {
    tonic::include_proto!("napalm.trust.v1");
}

pub use status::ApiError;
