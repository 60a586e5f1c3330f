//! `napalmctl clone …` and `napalmctl clones --config`: the Clone tool of the thesis
//! (3.5.1) on a clones.conf, offline — thin wrappers over napalm-overlay.

use std::path::PathBuf;
use std::time::Instant;

use napalm_overlay::cluster_files::Format;
use napalm_overlay::{ClusterFiles, Config, LayerBuilder, SetLibrary};

use crate::Failure;

/// Where the clone configuration and template sets are.
#[derive(clap::Args, Debug, Clone)]
pub struct Sources {
    /// The clone configuration (annex IV format).
    #[arg(
        long,
        global = true,
        env = "NAPALM_CLONES_CONF",
        default_value = "/etc/clones.conf"
    )]
    pub config: PathBuf,
    /// Template set directories, searched first (the shipped sets come last).
    #[arg(long = "sets", global = true)]
    pub sets: Vec<PathBuf>,
    /// Layer output directory (also holds the cluster identity).
    #[arg(
        long,
        global = true,
        env = "NAPALM_LAYERS",
        default_value = "/var/lib/napalm/layers"
    )]
    pub out: PathBuf,
}

/// `napalmctl clone` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CloneCommand {
    /// A clone's resolved values (`--explain`: and where each came from, file:line).
    Show {
        /// Clone name.
        name: String,
        /// Print each value's origin and what it overrode.
        #[arg(long)]
        explain: bool,
    },
    /// What the clone's layer holds (paths, kinds, modes, owners).
    Render {
        /// Clone name.
        name: String,
    },
    /// What the clone sees differently from the server root.
    Diff {
        /// Clone name.
        name: String,
        /// The server root to compare with.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Build layers (incremental: unchanged clones are skipped).
    Build {
        /// Clones to build.
        names: Vec<String>,
        /// Build every clone of the configuration.
        #[arg(long)]
        all: bool,
        /// Rebuild even when inputs did not change.
        #[arg(long)]
        force: bool,
        /// Print how long each phase took.
        #[arg(long)]
        timings: bool,
    },
}

fn fail(code: u8, e: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        message: e.to_string(),
    }
}

fn library(src: &Sources) -> SetLibrary {
    let mut dirs = src.sets.clone();
    dirs.push(napalm_overlay::default_sets_dir());
    SetLibrary::new(dirs)
}

fn cluster(src: &Sources) -> Result<napalm_overlay::Cluster, Failure> {
    Config::load(&src.config)
        .and_then(|c| c.resolve())
        .map_err(|e| fail(2, e))
}

/// Runs one `clone` subcommand.
pub fn run(src: &Sources, cmd: &CloneCommand) -> Result<String, Failure> {
    let cluster = cluster(src)?;
    let sets = library(src);
    let builder = LayerBuilder::new(&cluster, &sets, &src.out);
    let known = |name: &str| {
        cluster.get(name).ok_or_else(|| {
            fail(
                4,
                format!(
                    "no clone {name:?} in {}; `napalmctl clones --config …` lists them",
                    src.config.display()
                ),
            )
        })
    };
    match cmd {
        CloneCommand::Show { name, explain } => {
            let c = known(name)?;
            let mut out = format!("# {} (layers: {})\n", c.name, c.layers.join(", "));
            if *explain {
                for e in c.explain() {
                    out += &format!("{e}\n");
                }
            } else {
                for (k, v) in c.values_json() {
                    out += &format!("{k} = {v}\n");
                }
            }
            Ok(out)
        }
        CloneCommand::Render { name } => {
            known(name)?;
            let layer = builder.render(name).map_err(|e| fail(1, e))?;
            Ok(napalm_overlay::inspect::listing(&layer)
                .iter()
                .map(|l| format!("{l}\n"))
                .collect())
        }
        CloneCommand::Diff { name, root } => {
            known(name)?;
            let layer = builder.render(name).map_err(|e| fail(1, e))?;
            let changes = napalm_overlay::inspect::diff(&layer, root)
                .map_err(|e| fail(1, format!("reading {}: {e}", root.display())))?;
            Ok(changes.iter().map(|c| format!("{c}\n")).collect())
        }
        CloneCommand::Build {
            names,
            all,
            force,
            timings,
        } => {
            if names.is_empty() && !all {
                return Err(fail(2, "name the clones to build, or pass --all"));
            }
            let t = Instant::now();
            let b = builder.force(*force);
            let report = if *all {
                b.build_all()
            } else {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                b.build(&refs)
            }
            .map_err(|e| fail(1, e))?;
            let mut out = format!(
                "{} built, {} unchanged, {} failed\n",
                report.built.len(),
                report.unchanged.len(),
                report.failed.len()
            );
            for (n, e) in &report.failed {
                out += &format!("{n}: {e}\n");
            }
            if *timings {
                out += &format!(
                    "prepare {:.1} ms, write {:.1} ms, total {:.1} ms\n",
                    report.prepare.as_secs_f64() * 1e3,
                    report.write.as_secs_f64() * 1e3,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            if report.failed.is_empty() {
                Ok(out)
            } else {
                Err(fail(1, out.trim_end()))
            }
        }
    }
}

/// `napalmctl clones --config F --format …`: cluster-wide files, rendered once.
pub fn list(src: &Sources, format: &str) -> Result<String, Failure> {
    let format: Format = format.parse().map_err(|e: String| fail(2, e))?;
    let cluster = cluster(src)?;
    let sets = library(src);
    let identity = LayerBuilder::new(&cluster, &sets, &src.out)
        .load_identity()
        .map_err(|e| fail(1, e))?;
    Ok(ClusterFiles::new(&cluster, &identity).render(format))
}
