//! Programmatic setup hooks (the thesis's `SetupScript` classes): executables in a set's
//! `setup.d/`, run in name order after the layer's files are laid, each with the clone's
//! render context as JSON on stdin, the layer directory as its only argument, the clone's
//! name in `NAPALM_CLONE`, and a timeout. A non-zero exit or a timeout fails that clone's
//! build with the hook's stderr.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::BuildError;

const MAX_STDERR: usize = 16 * 1024;

/// Run `hook` for `clone` on `layer_dir`.
pub fn run(
    hook: &Path,
    clone: &str,
    input: &[u8],
    layer_dir: &Path,
    timeout: Duration,
) -> Result<(), BuildError> {
    let io_err = |action, source| BuildError::Io {
        clone: clone.to_string(),
        action,
        path: hook.to_path_buf(),
        source,
    };
    let mut child = Command::new(hook)
        .arg(layer_dir)
        .env("NAPALM_CLONE", clone)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| io_err("start setup hook", e))?;
    let stdin = child.stdin.take();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            // A hook that does not read its stdin is fine.
            let _ = s.write_all(&data);
        }
    });
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(MAX_STDERR as u64).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        match child
            .try_wait()
            .map_err(|e| io_err("wait for setup hook", e))?
        {
            Some(status) => break Some(status),
            None if start.elapsed() >= timeout => {
                // The whole group: a shell hook's children must not keep stderr open.
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let _ = writer.join();
    let stderr = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            tracing::debug!(clone, hook = %hook.display(), "setup hook done");
            Ok(())
        }
        Some(s) => Err(BuildError::Hook {
            clone: clone.to_string(),
            hook: hook.to_path_buf(),
            status: format!("failed ({s})"),
            stderr,
        }),
        None => Err(BuildError::Hook {
            clone: clone.to_string(),
            hook: hook.to_path_buf(),
            status: format!("timed out after {:.1} s", timeout.as_secs_f64()),
            stderr,
        }),
    }
}
