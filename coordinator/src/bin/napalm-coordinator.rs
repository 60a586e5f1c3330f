//! `napalm-coordinator`: Control plane: registry, discovery, scheduling and deployment of clones.
//!
//! Not implemented yet: it arrives with issue #6. Running it says so and exits 2.

use clap::Parser;

/// Control plane: registry, discovery, scheduling and deployment of clones.
#[derive(Parser)]
#[command(
    name = "napalm-coordinator",
    version,
    about = "Control plane: registry, discovery, scheduling and deployment of clones",
    long_about = "Control plane: registry, discovery, scheduling and deployment of clones.\n\nNOT IMPLEMENTED YET: this binary arrives with issue #6. Running it prints this and exits with status 2."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("napalm-coordinator: not implemented yet (issue #6); see --help");
    std::process::ExitCode::from(2)
}
