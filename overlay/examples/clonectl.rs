//! What `napalmctl clone …` / `napalmctl clones` do, as a thin wrapper over the library
//! (the real CLI lives in the coordinator). Run from `overlay/`:
//!
//! ```text
//! cargo run --example clonectl -- --config examples/clones.conf show clone07 --explain
//! cargo run --example clonectl -- --config examples/clones.conf clones --format mpi
//! cargo run --example clonectl -- --config examples/clones.conf --out /tmp/systems build --all --timings
//! cargo run --example clonectl -- --config examples/clones.conf render clone07
//! cargo run --example clonectl -- --config examples/clones.conf diff clone07 --root /
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use napalm_overlay::{inspect, ClusterFiles, Config, Format, LayerBuilder, SetLibrary};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    let mut take = |flag: &str| -> Option<String> {
        let i = args.iter().position(|a| a == flag)?;
        args.remove(i);
        (i < args.len()).then(|| args.remove(i))
    };
    let config = take("--config").unwrap_or_else(|| "/etc/clones.conf".into());
    let out = PathBuf::from(take("--out").unwrap_or_else(|| "/var/state/systems".into()));
    let root = PathBuf::from(take("--root").unwrap_or_else(|| "/".into()));
    let format = take("--format");
    let mut dirs = Vec::new();
    while let Some(d) = take("--sets") {
        dirs.push(PathBuf::from(d));
    }
    if dirs.is_empty() {
        dirs.push(napalm_overlay::default_sets_dir());
    }
    let flag = |f: &str| args.iter().any(|a| a == f);
    let (explain, all, timings, force) = (
        flag("--explain"),
        flag("--all"),
        flag("--timings"),
        flag("--force"),
    );
    let words: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();

    let cluster = Config::load(&config)?.resolve()?;
    let sets = SetLibrary::new(dirs);
    let builder = LayerBuilder::new(&cluster, &sets, &out).force(force);
    match words.as_slice() {
        ["show", name] => {
            let clone = cluster.get(name).ok_or(format!("no clone `{name}`"))?;
            for e in clone.explain() {
                if explain {
                    println!("{e}");
                } else {
                    println!("{} = {}", e.key, e.value);
                }
            }
        }
        ["render", name] => {
            for line in inspect::listing(&builder.render(name)?) {
                println!("{line}");
            }
        }
        ["diff", name] => {
            for change in inspect::diff(&builder.render(name)?, &root)? {
                println!("{change}");
            }
        }
        ["build", names @ ..] => {
            let report = if all || names.is_empty() {
                builder.build_all()?
            } else {
                builder.build(names)?
            };
            println!(
                "{} built, {} unchanged, {} failed",
                report.built.len(),
                report.unchanged.len(),
                report.failed.len()
            );
            if timings {
                println!(
                    "prepare {:.1} ms, write {:.1} ms",
                    report.prepare.as_secs_f64() * 1e3,
                    report.write.as_secs_f64() * 1e3
                );
            }
            for (name, e) in &report.failed {
                eprintln!("{name}: {e}");
            }
            if !report.failed.is_empty() {
                return Err("some layers failed to build".into());
            }
        }
        ["clones"] => {
            let format: Format = format.as_deref().unwrap_or("table").parse()?;
            let identity = builder.load_identity()?;
            print!("{}", ClusterFiles::new(&cluster, &identity).render(format));
        }
        _ => return Err("usage: clonectl [--config F] [--sets D]... [--out D] show NAME [--explain] | render NAME | diff NAME [--root /] | build [--all|NAME...] [--timings] [--force] | clones [--format hosts|mpi|known-hosts|json|yaml|table]".into()),
    }
    Ok(())
}
