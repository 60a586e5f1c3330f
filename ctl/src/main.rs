//! `napalmctl`: the operator CLI. All logic lives in the `napalm_ctl` library.

use clap::Parser;
use napalm_ctl::{run, Cli};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    run(Cli::parse()).await
}
