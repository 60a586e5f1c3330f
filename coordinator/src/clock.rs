//! The clock edge: heartbeat TTLs and timestamps read time through [`Clock`], so tests can
//! move time by hand. One implementation serves agent and coordinator: `napalm_proto::time`.

pub use napalm_proto::time::{
    duration, from_timestamp, timestamp, Clock, ManualClock, SystemClock,
};
