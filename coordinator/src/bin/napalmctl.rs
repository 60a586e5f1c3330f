//! `napalmctl`: Operator CLI: deploy, undeploy and inspect clones, agents and deployments.
//!
//! Not implemented yet: it arrives with issue #6. Running it says so and exits 2.

use clap::Parser;

/// Operator CLI: deploy, undeploy and inspect clones, agents and deployments.
#[derive(Parser)]
#[command(
    name = "napalmctl",
    version,
    about = "Operator CLI: deploy, undeploy and inspect clones, agents and deployments",
    long_about = "Operator CLI: deploy, undeploy and inspect clones, agents and deployments.\n\nNOT IMPLEMENTED YET: this binary arrives with issue #6. Running it prints this and exits with status 2."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("napalmctl: not implemented yet (issue #6); see --help");
    std::process::ExitCode::from(2)
}
