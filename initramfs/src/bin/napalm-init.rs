//! `napalm-init`: PID 1 of a clone's initramfs: builds the union root from root= and switches to it.
//!
//! Not implemented yet: it arrives with issue #4. Running it says so and exits 2.

use clap::Parser;

/// PID 1 of a clone's initramfs: builds the union root from root= and switches to it.
#[derive(Parser)]
#[command(
    name = "napalm-init",
    version,
    about = "PID 1 of a clone's initramfs: builds the union root from root= and switches to it",
    long_about = "PID 1 of a clone's initramfs: builds the union root from root= and switches to it.\n\nNOT IMPLEMENTED YET: this binary arrives with issue #4. Running it prints this and exits with status 2."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("napalm-init: not implemented yet (issue #4); see --help");
    std::process::ExitCode::from(2)
}
