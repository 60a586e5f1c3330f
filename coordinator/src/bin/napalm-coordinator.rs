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
struct Cli {
    /// Any arguments; none is acted on yet.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "napalm-coordinator {}: not implemented yet (issue #6); see --help",
        cli.args.join(" ")
    );
    std::process::ExitCode::from(2)
}
