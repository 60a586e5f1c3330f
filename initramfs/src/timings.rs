//! Boot timings (thesis table 4.4): every phase stamped with the time since the kernel
//! started (CLOCK_BOOTTIME), printed on the console and written as JSON to
//! `/run/napalm/boot.json` for the register hook.

use serde::Serialize;

/// Seconds since the kernel started.
pub fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// One phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Phase {
    /// Phase name (`modules`, `network`, `mount nfs:…`, `switch_root`).
    pub name: String,
    /// Start, seconds since kernel start.
    pub start: f64,
    /// End, seconds since kernel start.
    pub end: f64,
}

/// The timings of one boot.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Timings {
    /// When napalm-init started (the kernel-init phase ends here).
    pub init_start: f64,
    /// The phases in order.
    pub phases: Vec<Phase>,
    /// When the real init is exec'ed (set last).
    pub exec_init: Option<f64>,
}

impl Timings {
    /// Starts recording at `now`.
    pub fn new(now: f64) -> Self {
        Self {
            init_start: now,
            phases: Vec::new(),
            exec_init: None,
        }
    }

    /// Records a phase and returns its console line.
    pub fn record(&mut self, name: &str, start: f64, end: f64) -> String {
        self.phases.push(Phase {
            name: name.to_string(),
            start,
            end,
        });
        format!("napalm: [{end:8.3}] {name} ({:.3}s)", end - start)
    }

    /// The JSON document written to `/run/napalm/boot.json`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_serialises() {
        let mut t = Timings::new(1.5);
        let line = t.record("modules", 1.5, 1.75);
        assert_eq!(line, "napalm: [   1.750] modules (0.250s)");
        t.exec_init = Some(2.0);
        let v: serde_json::Value = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(v["phases"][0]["name"], "modules");
        assert_eq!(v["exec_init"], 2.0);
        assert!(uptime() > 0.0);
    }
}
