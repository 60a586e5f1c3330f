//! `napalm-mkinitramfs`: Builds a reproducible initramfs for napalm-init, with kernel modules and clone layers.
//!
//! Not implemented yet: it arrives with issue #4. Running it says so and exits 2.

use clap::Parser;

/// Builds a reproducible initramfs for napalm-init, with kernel modules and clone layers.
#[derive(Parser)]
#[command(
    name = "napalm-mkinitramfs",
    version,
    about = "Builds a reproducible initramfs for napalm-init, with kernel modules and clone layers",
    long_about = "Builds a reproducible initramfs for napalm-init, with kernel modules and clone layers.\n\nNOT IMPLEMENTED YET: this binary arrives with issue #4. Running it prints this and exits with status 2."
)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("napalm-mkinitramfs: not implemented yet (issue #4); see --help");
    std::process::ExitCode::from(2)
}
