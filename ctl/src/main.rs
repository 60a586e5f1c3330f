//! `napalmctl`: the operator CLI. All logic lives in `napalm_coordinator::cli`.

use clap::Parser;
use napalm_coordinator::cli::{run, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    run(Cli::parse()).await
}
