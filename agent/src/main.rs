//! `napalm-agent`: Per-host agent: drives libvirt and serves the REST/CRUD contract and gRPC.
//!
//! Not implemented yet: it arrives with issue #5. Running it says so and exits 2.

use clap::Parser;

/// Per-host agent: drives libvirt and serves the REST/CRUD contract and gRPC.
#[derive(Parser)]
#[command(
    name = "napalm-agent",
    version,
    about = "Per-host agent: drives libvirt and serves the REST/CRUD contract and gRPC",
    long_about = "Per-host agent: drives libvirt and serves the REST/CRUD contract and gRPC.\n\nNOT IMPLEMENTED YET: this binary arrives with issue #5. Running it prints this and exits with status 2."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("napalm-agent: not implemented yet (issue #5); see --help");
    std::process::ExitCode::from(2)
}
