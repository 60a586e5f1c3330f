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
struct Cli {
    /// Any arguments; none is acted on yet.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "napalmctl {}: not implemented yet (issue #6); see --help",
        cli.args.join(" ")
    );
    std::process::ExitCode::from(2)
}
