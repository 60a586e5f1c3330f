//! `napalm-init`: PID 1 of a clone's initramfs: builds the union root from root= and
//! switches to it (thesis 3.2). As PID 1 it ignores its arguments (the kernel passes
//! leftover command-line words); run by hand it offers a dry check of a command line.

use clap::Parser;
use napalm_initramfs::cmdline::BootConfig;
use napalm_initramfs::init::{handle_failure, run, say, Failure};
use napalm_initramfs::syscall::LinuxSyscall;
use napalm_initramfs::{fsloader, union};
use std::path::{Path, PathBuf};

/// Run by hand (not as PID 1): inspect command lines and fsloaders.
#[derive(Parser)]
#[command(
    name = "napalm-init",
    version,
    about = "PID 1 of a clone's initramfs: builds the union root from root= and switches to it",
    long_about = "PID 1 of a clone's initramfs: builds the union root from root= and switches to it.\n\n\
                  As PID 1 (the kernel's /init) it reads /proc/cmdline and boots. Run by hand it only\n\
                  checks a command line (--check) or lists the fsloaders (--fsloaders)."
)]
struct Cli {
    /// Parse and validate the kernel command line in this file, print the plan, exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Print every fsloader's parameters and help (what napalm.help prints at boot).
    #[arg(long)]
    fsloaders: bool,
}

fn check(path: &Path) -> anyhow::Result<()> {
    let cfg = BootConfig::from_cmdline(path)?;
    let Some(root) = &cfg.root else {
        anyhow::bail!("no root= in {}", path.display())
    };
    union::validate(root)?;
    for (i, d) in root.devices.iter().enumerate() {
        println!("layer {i}: {} ({:?})", d.display(), d.role());
    }
    println!(
        "ip: {:?}\ninit: {}\nunpack: {:?}\nonfail: {:?}",
        cfg.ip,
        cfg.init.display(),
        cfg.unpack,
        cfg.onfail
    );
    if cfg.template {
        println!("template: yes (waits for its identity in fw_cfg opt/napalm/cmdline)");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    if !rustix::process::getpid().is_init() {
        let cli = Cli::parse();
        if cli.fsloaders {
            print!("{}", fsloader::help_text());
            return std::process::ExitCode::SUCCESS;
        }
        let Some(path) = cli.check else {
            eprintln!("napalm-init: not PID 1; use --check FILE or --fsloaders (see --help)");
            return std::process::ExitCode::from(2);
        };
        return match check(&path) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("napalm-init: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // PID 1: a panic must never be silent (the kernel would only say "Attempted to kill init").
    std::panic::set_hook(Box::new(|info| {
        say(&format!("napalm-init: PANIC: {info}"));
    }));
    let sys = LinuxSyscall;
    let init_args: Vec<String> = std::env::args().skip(1).collect();
    let failure = std::panic::catch_unwind(|| run(&sys, Path::new("/proc/cmdline"), &init_args))
        .unwrap_or_else(|_| {
            let raw = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            Failure {
                step: "internal",
                error: "napalm-init panicked (message above); please report it".into(),
                onfail: napalm_initramfs::cmdline::onfail_lenient(&raw),
            }
        });
    handle_failure(&sys, &failure);
    std::process::ExitCode::FAILURE
}
