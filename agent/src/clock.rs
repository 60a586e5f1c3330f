//! The clock edge: the agent reads wall-clock time through [`Clock`] wherever logic depends
//! on it — timestamps it records (a domain's creation, events, samples, Ganglia reports)
//! and the age at which an idempotency record is forgotten — so tests can set time by hand.
//! Durations of operations are measured with `Instant`, which no logic decides on. One
//! implementation serves agent and coordinator: `napalm_proto::time`.

pub use napalm_proto::time::{Clock, ManualClock, SystemClock};
