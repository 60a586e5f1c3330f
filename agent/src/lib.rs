//! # napalm-agent — one per hypervisor host (thesis 2.3, 3.3, table 4.3, annex V)
//!
//! Owns: the libvirt connection of its host, the thesis's REST/CRUD contract, the
//! `napalm.v1.AgentService` gRPC server (both over the same core operations), the
//! content-addressed blob store, per-domain directories and desired state, mDNS/DNS-SD
//! advertisement, registration with a coordinator, and metrics export.
//!
//! Must not touch: domains it does not own (no napalm metadata), files outside its state
//! directory, or any other host's state. Scheduling is the coordinator's.
//!
//! Status: arrives with issue #5; this crate is the place it goes.
