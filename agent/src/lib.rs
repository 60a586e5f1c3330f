//! # napalm-agent — one per hypervisor host (thesis 2.3, 3.3, table 4.3, annex V)
//!
//! Owns: the libvirt connection of its host and its lifecycle events ([`hypervisor`]), the thesis's REST/CRUD
//! contract ([`rest`]), the `napalm.v1.AgentService` gRPC server ([`grpc`]) — both thin
//! transports over the same core operations ([`core`]) — the content-addressed blob store
//! ([`blobs`]), the domain store: per-domain directories and their persisted desired state
//! ([`domain_store`]), durable (atomic, fsynced) file writes ([`durable`]), confined
//! archive extraction ([`archive`]), domain and file name rules ([`names`]), the domain
//! XML policy ([`policy`]), anti-spoofing on the host bridge with nftables ([`port_filter`]), blank scratch disks made with the host's mkfs.ext4 ([`scratch_disk`]), the templates clones start from and their saved images ([`template`]), request-id idempotency ([`idempotency`]), lifecycle events
//! ([`events`]) and reconciliation ([`core::reconcile`]); metrics as Prometheus text
//! ([`metrics`]), Ganglia gmond XML ([`ganglia`]) and OTLP/gRPC pushes when an endpoint is
//! configured ([`otel`]), mDNS/DNS-SD advertisement ([`mdns`]) and coordinator
//! registration ([`register`]); TLS for both listeners ([`tls`]); its cluster identity
//! ([`identity`]: enrollment with a join token, mutual TLS, renewal); the wall clock as an
//! edge tests can set ([`clock`]). The daemon wiring is [`server`]. With the feature `client`: `client`, a typed client of the REST API for
//! napalmctl and other callers.
//!
//! Must not touch: domains it does not own (no napalm metadata with its id), files outside
//! its state directory, or any other host's state. Scheduling is the coordinator's.
//!
//! Layout of the state directory:
//! `agent-id`, `tls/` (identity: `ca.crt`, `agent.crt`, `agent.key`, `coordinator`; mode 0700), `blobs/sha256/HEX`, `domains/NAME/{record.json,config.xml,console.log,files/}` (`console.log`: the guest's
//! serial console, bounded),
//! `requests/` (idempotency records), `staging/` (unfinished uploads, wiped at start),
//! `kept/` (writable artifacts of deleted domains), `templates/KEY/{image,console.log}` (at most
//! eight saved templates) and `templates/in/` (QEMU's sockets while a clone's state is handed over).

pub mod archive;
pub mod blobs;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
pub mod core;
pub mod domain_store;
pub mod durable;
pub mod error;
pub mod events;
pub mod ganglia;
pub mod grpc;
pub mod hypervisor;
pub mod idempotency;
pub mod identity;
pub mod mdns;
pub mod metrics;
pub mod names;
pub mod otel;
pub mod policy;
pub mod port_filter;
pub mod register;
pub mod rest;
pub mod scratch_disk;
pub mod server;
pub mod template;
pub mod tls;

pub use error::{AgentError, Result};
