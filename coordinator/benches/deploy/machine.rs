//! What the bench measures of this process and of the machine: CPU, resident memory, and
//! the cost of filling fresh memory.

use std::time::{Duration, Instant};

use super::env;

/// A field of this process's `/proc/self/status` in kB, as MiB.
pub fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The process's peak resident set so far (`VmHWM`), MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// CPU time (user + system) this process has used.
pub fn cpu_used() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU per second of wall time and resident set after idling `secs`.
pub async fn idle(secs: u64) -> (f64, f64) {
    let (c, t) = (cpu_used(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (
        (cpu_used() - c).as_secs_f64() / t.elapsed().as_secs_f64(),
        status_mib("VmRSS:"),
    )
}

pub fn idle_secs() -> u64 {
    env("NAPALM_BENCH_IDLE", 10) as u64
}

/// How long writing `bytes` to a new file in `dir` takes (then removed). On tmpfs this is
/// the cost of filling fresh memory, which is most of what storing the agents' blobs
/// costs; on a virtual machine whose host backs memory lazily and takes freed pages back
/// (free page reporting) it is several times the cost of a copy, and it moves from one
/// hour to the next (2 GiB took 0.7 s, 4 GiB 6.7 s on this machine on December 2).
pub fn fresh_memory(dir: &std::path::Path, bytes: u64) -> Duration {
    use std::io::Write;
    let path = dir.join("fresh-memory");
    let chunk = vec![0x5a_u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    drop(f);
    let took = t.elapsed();
    std::fs::remove_file(&path).unwrap();
    took
}
