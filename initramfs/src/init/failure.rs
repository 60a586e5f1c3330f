//! A failed boot: the console message and what `napalm.onfail=` says to do.

use crate::cmdline::OnFail;
use crate::syscall::{Shutdown, Syscall};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// A failed boot step: what was being done and why it failed.
#[derive(Debug)]
pub struct Failure {
    /// The step (`early mounts`, `cmdline`, `root`, `modules`, `identity` (a restored
    /// template's), `network`, `unpack`, `scratch`, `switch_root`, `exec init`).
    pub step: &'static str,
    /// The error, quoting its input.
    pub error: String,
    /// What to do now.
    pub onfail: OnFail,
}

/// Prints a line on the console (stdout of PID 1 is /dev/console).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reports a failure on the console and does what `napalm.onfail=` says. As PID 1 it
/// never returns; otherwise it returns so the caller can exit non-zero.
pub fn handle_failure(sys: &dyn Syscall, f: &Failure) {
    say(&format!(
        "napalm-init: FAILED at step '{}': {}",
        f.step, f.error
    ));
    let pid1 = rustix::process::getpid().is_init();
    let mut action = f.onfail;
    if action == OnFail::Shell {
        if Path::new("/bin/sh").exists() {
            say("napalm-init: napalm.onfail=shell: starting /bin/sh; leave it to power off");
            if pid1 {
                let _ = std::process::Command::new("/bin/sh").status();
            }
        } else {
            say("napalm-init: napalm.onfail=shell but this initramfs has no /bin/sh (build with --busybox); halting");
        }
        action = OnFail::Halt;
    }
    let how = if action == OnFail::Reboot {
        Shutdown::Reboot
    } else {
        Shutdown::PowerOff
    };
    say(&format!(
        "napalm-init: {} now",
        if how == Shutdown::Reboot {
            "rebooting"
        } else {
            "powering off"
        }
    ));
    if !pid1 {
        return;
    }
    if let Err(e) = sys.shutdown(how) {
        say(&format!(
            "napalm-init: reboot(2) failed: {e}; sleeping forever"
        ));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
