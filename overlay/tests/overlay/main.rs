//! Integration tests of napalm-overlay (one test binary; one module per concern).

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod build;
mod cascade;
mod cluster_files;
mod common;
mod default_sets;
mod hooks;
mod inspect;
mod outputs;
mod stacking;
