//! # napalm-coordinator — the control plane daemon (thesis 3.4, 3.5.3, 4.5)
//!
//! Owns: the registry of agents, clones and deployments ([`store`]: embedded redb file or
//! etcd, revision-checked transactions, leader election; [`registry`]: typed records),
//! agent discovery ([`discovery`]: static agents retried with backoff, registration;
//! [`mdns`]: browsing for agents and advertising the coordinator), heartbeats, the pure
//! [`scheduler`], the [`deploy`] pipeline in three layers (reconcile → place → apply:
//! layers via napalm-overlay, command lines via napalm-initramfs's grammar, domain XML,
//! shipping artifacts, following clones until they register), NFS export rules
//! ([`exports`]), registry [`events`] for watchers, its telemetry ([`metrics`]: OpenMetrics
//! at `GET /metrics`, gRPC latency from a `tower` layer) and read-only [`web`] view, and its
//! transports ([`service`]: gRPC `CoordinatorService`; [`http`]: the clones' plain
//! registration, `/metrics`, the web view). [`server`] wires them into the daemon;
//! `testing` (feature) wires a whole grid for tests and benches.
//!
//! Security: the gRPC API takes a bearer token from operators (`napalmctl --token`) and
//! registering agents alike ([`service::RequireToken`], unless the daemon runs with
//! `--insecure-no-auth`); booted clones prove themselves with their own HMAC clone
//! tokens instead (`RegisterClone` and its HTTP twin). `/metrics`, `/` and
//! `/v1/view.json` on the HTTP listener are read-only and unauthenticated: they show no
//! token or endpoint, but do show clone names, phases and addresses to whoever reaches it.
//!
//! Must not touch: libvirt directly (agents do that), a clone's files except through the
//! layers it builds, or the operator's terminal (`napalmctl` is the `napalm-ctl` crate,
//! which reaches this daemon only over gRPC).

pub mod clock;
pub mod cluster_files;
pub mod cluster_index;
pub mod deploy;
pub mod discovery;
pub mod events;
pub mod exports;
pub mod http;
pub mod mdns;
pub mod metrics;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trust;
pub mod web;
