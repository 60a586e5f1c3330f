//! # napalm-coordinator — the control plane (thesis 3.4, 3.5.3, 4.5) and `napalmctl`
//!
//! Owns: the registry of agents, clones and deployments ([`store`]: embedded redb file or
//! etcd, revision-checked transactions, leader election), agent discovery (mDNS browse,
//! registration, static list), heartbeats, the [`scheduler`], the deploy pipeline (layers
//! via napalm-overlay, initramfs via napalm-initramfs, domain XML, shipping artifacts,
//! following clones until they register), NFS export rules, registry [`events`] for
//! watchers (`WatchEvents`, `napalmctl watch`), and the `napalmctl` CLI.
//!
//! Security: the gRPC API takes a bearer token from operators (`napalmctl --token`) and
//! registering agents alike ([`service::RequireToken`], added by the daemon unless it runs
//! with `--insecure-no-auth`); booted clones prove themselves with their own HMAC clone
//! tokens instead (`RegisterClone` and its HTTP twin). Static agents that do not answer
//! yet are retried with backoff ([`discovery::keep_registering_static`]).
//!
//! Must not touch: libvirt directly (agents do that), or a clone's files except through
//! the layers it builds.
//!
//! Status (issue #6): store, registry, discovery, scheduler, deploy pipeline (stateless
//! and stateful) and [`exports`] are here; `napalm-coordinator --help` says what is not.

pub mod browse;
pub mod clock;
pub mod deploy;
pub mod discovery;
pub mod events;
pub mod exports;
pub mod http;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
