//! Ganglia's own dashboard over a grid, as the thesis's figure shows it: Debian's `gmetad`
//! polls every agent's gmond-compatible XML (`napalm-agent --ganglia-listen`: the agent's
//! host and one `<HOST>` per clone it runs) and Debian's `ganglia-webfrontend` (PHP) renders
//! gmetad's tree and RRDs, both in the grid's server namespace. The web frontend is served
//! by PHP's built-in server (`php -S`), so no Apache runs.
//!
//! Each agent reports a cluster of its own, named after its host (`--ganglia-cluster
//! agentN`): the hypervisor and the clones it runs, as it sees them. gmetad merges every
//! data source that reports one cluster name into one cluster and writes that cluster's
//! summary RRDs from each, once per poll: with the agents under one name their writes
//! collided every second ("illegal attempt to update … minimum one second step") and
//! the summary graphs alternated between the agents. [`Ganglia::start`]'s data source for
//! agent `i` is named after its cluster.
//!
//! Clones that run gmond themselves (the `ganglia` template set on a root with gmond)
//! report their own metrics, as in the thesis's figure: to a collector gmond on the server
//! ([`COLLECTOR_PORT`], UDP in, XML out over TCP) that gmetad polls as the data source
//! [`CLONES_CLUSTER`], the cluster name the set gives them.
//!
//! Debian 12's `ganglia-webfrontend` 3.7.5 was written for PHP 7 and fails under its PHP 8.2
//! (every page ends in a fatal error). The frontend is therefore served from a copy in the
//! grid's directory with the few PHP 8 fixes of [`PHP8_FIXES`] applied and `each()` (removed
//! in PHP 8, used by its bundled Dwoo) defined by an `auto_prepend_file`; the installed
//! package and the machine's `/etc` are not touched. A fix whose text is no longer found
//! fails [`Ganglia::start`], so a fixed package shows up here.
//!
//! Both daemons die with the process that started them and are killed by PID on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::grid::Grid;
use crate::netns::{Host, NetError};
use crate::proc::{wait_for, Daemon};

/// gmetad's XML port (the whole tree) on the server host.
pub const GMETAD_XML: u16 = 8651;
/// gmetad's interactive port (queries by path), which the web frontend reads.
pub const GMETAD_INTERACTIVE: u16 = 8652;
/// The web frontend's port on the server host.
pub const WEB_PORT: u16 = 8680;
/// The cluster the clones' own gmonds report (the `ganglia` set's default
/// `ganglia_cluster`).
pub const CLONES_CLUSTER: &str = "napalm-clones";
/// The collector gmond's port on the server (UDP from the clones, TCP to gmetad): the
/// `ganglia` set's default `ganglia_port`.
pub const COLLECTOR_PORT: u16 = 8649;
/// Where Debian installs the web frontend.
const WEBFRONTEND: &str = "/usr/share/ganglia-webfrontend";

/// Fixes for Debian 12's ganglia-webfrontend 3.7.5, mostly for PHP 8: (file, text,
/// replacement), each text replaced wherever it occurs, with why.
pub const PHP8_FIXES: &[(&str, &str, &str)] = &[
    // PHP 8 calls error handlers with 4 arguments; the handler requires 5, so the first
    // warning of any page is a fatal ArgumentCountError.
    (
        "lib/common_api.php",
        "$line, $context) {",
        "$line, $context = null) {",
    ),
    // Gmetad() reads $SKIP_GMETAD_CONTEXTS without declaring it global: null, which
    // in_array() refuses in PHP 8 (TypeError).
    (
        "ganglia.php",
        "in_array($context, $SKIP_GMETAD_CONTEXTS) ) {",
        "in_array($context, $SKIP_GMETAD_CONTEXTS ?? array()) ) {",
    ),
    // A bare constant name used as an array key: an Error in PHP 8.
    (
        "cluster_view.php",
        "$cluster[LOCALTIME]",
        "$cluster['LOCALTIME']",
    ),
    // PHP 8 takes string keys of call_user_func_array()'s arguments as named parameters;
    // Dwoo's compiler passes its parameter map (keys such as `*`).
    (
        "dwoo/Dwoo/Compiler.php",
        "call_user_func_array($funcCompiler, $params);",
        "call_user_func_array($funcCompiler, array_values($params));",
    ),
    // A metric a host does not report reads as a string, which number_format() refuses.
    (
        "graph.d/metric.php",
        "number_format($value)",
        "number_format((float) $value)",
    ),
    (
        "graph.d/metric.php",
        "number_format($value, 2)",
        "number_format((float) $value, 2)",
    ),
    // A cluster summary RRD without data averages to "nan", a string, which PHP 8 no
    // longer takes for 0 (`"nan" == 0` is false): the page then divides by it and dies
    // with a TypeError halfway (a cluster whose hosts sent cpu_num once, as gmond's
    // collect_once group does, shows it).
    (
        "cluster_view.php",
        "if ($avg_cpu_num == 0)",
        "if (!is_numeric($avg_cpu_num) || $avg_cpu_num == 0)",
    ),
    // The cluster page's stacked graph (not a PHP 8 matter): stacked.php passes the whole
    // rrdtool command it built through sanitize(), whose htmlentities(ENT_QUOTES) turns
    // the command's own quotes into `&#039;`, so rrdtool refuses every call ("start
    // time: unparsable time") and the image is broken. The request's values are filtered
    // where they are read instead, and the command is left as built (its other parts are
    // escapeshellarg()ed or come from gmetad).
    (
        "stacked.php",
        "$clustername = $_REQUEST['c'];",
        "$clustername = preg_replace('/[^A-Za-z0-9_.:-]/', '', $_REQUEST['c']);",
    ),
    (
        "stacked.php",
        "$metricname = $_REQUEST['m'];",
        "$metricname = preg_replace('/[^A-Za-z0-9_.:-]/', '', $_REQUEST['m']);",
    ),
    (
        "stacked.php",
        "$range = $_REQUEST['r'];",
        "$range = preg_replace('/[^A-Za-z0-9_]/', '', $_REQUEST['r']);",
    ),
    (
        "stacked.php",
        "$command .= \"TZ='\" . $_SESSION['tz'] . \"' \";",
        "$command .= \"TZ='\" . preg_replace('/[^A-Za-z0-9_\\/+-]/', '', $_SESSION['tz']) . \"' \";",
    ),
    (
        "stacked.php",
        "$command = sanitize($command);",
        "// sanitize() would HTML-encode the command's own quotes (napalm fix).",
    ),
];

/// `each()`, removed in PHP 8 and still called by the frontend's bundled Dwoo.
const PREPEND: &str = r#"<?php
if (!function_exists('each')) {
    function each(array &$a) {
        $k = key($a);
        if ($k === null) { return false; }
        $v = current($a);
        next($a);
        return array(1 => $v, 'value' => $v, 0 => $k, 'key' => $k);
    }
}
"#;

/// What can go wrong starting Ganglia on a grid.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message documents it; the fields are named for what they hold"
)]
pub enum GangliaError {
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The installed web frontend no longer has a text one of [`PHP8_FIXES`] replaces.
    #[error("{file} of {WEBFRONTEND} no longer contains {text:?} (ganglia-webfrontend changed: revisit PHP8_FIXES)")]
    FixNotFound { file: String, text: String },
    /// The server namespace could not be entered.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A daemon did not come up.
    #[error("{what} within {secs} s:\n{logs}")]
    Timeout {
        what: String,
        secs: u64,
        logs: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GangliaError {
    let what = what.into();
    move |source| GangliaError::Io { what, source }
}

/// The daemon dies with the process that started it even if that is killed before drop.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Spawns `cmd` dying with this process, its stdout and stderr both into `dir/log`
/// (one file, opened once); `what` names the program in errors.
fn spawn_logged(
    cmd: &mut Command,
    dir: &Path,
    log: &str,
    what: &str,
) -> Result<Daemon, GangliaError> {
    let out = std::fs::File::create(dir.join(log)).map_err(io(format!("creating {log}")))?;
    let err = out.try_clone().map_err(io(format!("opening {log}")))?;
    let child = die_with_parent(cmd.stdin(Stdio::null()).stdout(out).stderr(err))
        .spawn()
        .map_err(io(format!("spawning {what}")))?;
    Ok(Daemon(child))
}

/// Copies `from` to `to` recursively (files, directories and symlinks as links).
fn copy_tree(from: &Path, to: &Path) -> Result<(), GangliaError> {
    std::fs::create_dir_all(to).map_err(io(format!("creating {}", to.display())))?;
    for e in std::fs::read_dir(from).map_err(io(format!("reading {}", from.display())))? {
        let e = e.map_err(io(format!("reading {}", from.display())))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e
            .file_type()
            .map_err(io(format!("stat {}", src.display())))?;
        if ty.is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(io(format!("readlink {}", src.display())))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(io(format!("symlink {}", dst.display())))?;
        } else if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(format!("copying {}", src.display())))?;
        }
    }
    Ok(())
}

/// Writes the web frontend into `dir/www`: a copy of the package with [`PHP8_FIXES`]
/// applied and a `conf.php` pointing at `dir`'s RRDs and state and at gmetad on loopback;
/// `/javascript` links to Debian's shared JavaScript libraries as Apache's alias does.
/// Returns the `auto_prepend_file` to give PHP.
pub fn prepare_webfrontend(dir: &Path) -> Result<PathBuf, GangliaError> {
    let www = dir.join("www");
    let web = www.join("ganglia");
    copy_tree(Path::new(WEBFRONTEND), &web)?;
    std::os::unix::fs::symlink("/usr/share/javascript", www.join("javascript"))
        .map_err(io("linking /javascript"))?;
    for (file, text, with) in PHP8_FIXES {
        let path = web.join(file);
        let body =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        if !body.contains(text) {
            return Err(GangliaError::FixNotFound {
                file: (*file).to_owned(),
                text: (*text).to_owned(),
            });
        }
        std::fs::write(&path, body.replace(text, with))
            .map_err(io(format!("writing {}", path.display())))?;
    }
    for d in ["rrds", "dwoo/compiled", "dwoo/cache", "conf"] {
        std::fs::create_dir_all(dir.join(d)).map_err(io(format!("creating {d}")))?;
    }
    // Debian's conf.php (its JavaScript paths) first, then this grid's settings.
    std::fs::rename(web.join("conf.php"), web.join("conf_debian.php"))
        .map_err(io("moving Debian's conf.php aside"))?;
    let d = dir.display();
    let conf = format!(
        "<?php\ninclude_once dirname(__FILE__) . '/conf_debian.php';\n\
         $conf['gmetad_root'] = '{d}';\n$conf['rrds'] = '{d}/rrds';\n\
         $conf['dwoo_compiled_dir'] = '{d}/dwoo/compiled';\n$conf['dwoo_cache_dir'] = '{d}/dwoo/cache';\n\
         $conf['views_dir'] = '{d}/conf';\n$conf['conf_dir'] = '{d}/conf';\n\
         # Paths Debian's defaults derived from its own conf_dir before this file moved\n\
         # it: the metrics cache (20 minutes) was shared by every run on the machine, so a\n\
         # run within 20 minutes of another read the other's hosts (stacked graph empty).\n\
         $conf['cachefile'] = '{d}/conf/ganglia_metrics.cache';\n\
         $conf['nagios_cache_file'] = '{d}/conf/nagios_ganglia.cache';\n\
         $conf['overlay_events_file'] = '{d}/conf/events.json';\n\
         $conf['overlay_events_color_map_file'] = '{d}/conf/event_color.json';\n\
         $conf['ganglia_ip'] = '127.0.0.1';\n$conf['ganglia_port'] = {GMETAD_INTERACTIVE};\n\
         # What the agents report for each clone: CPU time (ms, graphed per second).\n\
         $conf['default_metric'] = 'vm_cpu_time';\n"
    );
    std::fs::write(web.join("conf.php"), conf).map_err(io("writing conf.php"))?;
    let prepend = dir.join("php8-each.php");
    std::fs::write(&prepend, PREPEND).map_err(io("writing the PHP prepend file"))?;
    Ok(prepend)
}

/// gmetad and the web frontend running in a grid's server namespace.
pub struct Ganglia {
    gmetad: Daemon,
    collector: Daemon,
    web: Daemon,
    /// Their directory (config, RRDs, logs `gmetad.log` and `php.log`).
    pub dir: PathBuf,
    server: Host,
    /// When it started (Unix seconds).
    started: u64,
}

impl Ganglia {
    /// Starts gmetad with every agent of `grid` as a data source and the web frontend on
    /// [`WEB_PORT`], both in the server namespace, under `grid.dir/ganglia`; returns when
    /// both listen.
    pub fn start(grid: &Grid) -> Result<Ganglia, GangliaError> {
        let dir = grid.dir.join("ganglia");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let prepend = prepare_webfrontend(&dir)?;
        let mut conf = String::new();
        for (i, _) in grid.agent_hosts.iter().enumerate() {
            conf += &format!(
                "data_source \"{}\" 5 {}\n",
                grid.agent_cluster(i),
                grid.agent_ganglia(i)
            );
        }
        conf += &format!(
            "data_source \"{CLONES_CLUSTER}\" 15 {}:{COLLECTOR_PORT}\n",
            grid.server.addr
        );
        conf += &format!(
            "gridname \"napalm grid\"\nsetuid off\nrrd_rootdir \"{}\"\n\
             xml_port {GMETAD_XML}\ninteractive_port {GMETAD_INTERACTIVE}\n",
            dir.join("rrds").display()
        );
        std::fs::write(dir.join("gmetad.conf"), conf).map_err(io("writing gmetad.conf"))?;
        // The collector: receives the clones' metrics, reports no host of its own, and
        // serves the tree it heard to gmetad (hosts silent for 5 minutes are dropped).
        let collector_conf = format!(
            "globals {{\n  daemonize = no\n  setuid = no\n  mute = yes\n  deaf = no\n  \
             host_dmax = 300\n  cleanup_threshold = 60\n}}\n\
             cluster {{\n  name = \"{CLONES_CLUSTER}\"\n  owner = \"napalm\"\n}}\n\
             udp_recv_channel {{\n  port = {COLLECTOR_PORT}\n  bind = {addr}\n}}\n\
             tcp_accept_channel {{\n  port = {COLLECTOR_PORT}\n  bind = {addr}\n}}\n",
            addr = grid.server.addr
        );
        std::fs::write(dir.join("collector.conf"), collector_conf)
            .map_err(io("writing collector.conf"))?;
        let collector = spawn_logged(
            grid.server
                .command("gmond")
                .arg("-c")
                .arg(dir.join("collector.conf"))
                .arg("-p")
                .arg(dir.join("collector.pid")),
            &dir,
            "collector.log",
            "gmond (Debian package ganglia-monitor)",
        )?;
        // -d 1: in the foreground (debug level 1), so the PID is gmetad's.
        let gmetad = spawn_logged(
            grid.server
                .command("gmetad")
                .args(["-d", "1", "-c"])
                .arg(dir.join("gmetad.conf"))
                .arg("-p")
                .arg(dir.join("gmetad.pid")),
            &dir,
            "gmetad.log",
            "gmetad (Debian package gmetad)",
        )?;
        let web_addr = format!("{}:{WEB_PORT}", grid.server.addr);
        let web = spawn_logged(
            grid.server
                .command("php")
                .arg("-d")
                .arg(format!("auto_prepend_file={}", prepend.display()))
                // No opcache: its shared memory is 128 MiB of huge pages when the host has
                // a pool, which would take the clones' (`GridOptions::hugepage_pool`).
                .args(["-d", "opcache.enable=0", "-d", "opcache.enable_cli=0"])
                .args(["-S", &web_addr, "-t"])
                .arg(dir.join("www")),
            &dir,
            "php.log",
            "php -S (Debian package php-cli)",
        )?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let g = Ganglia {
            gmetad,
            collector,
            web,
            dir,
            server: grid.server.clone(),
            started,
        };
        let web_sock: SocketAddr = web_addr.parse().expect("the server's address is IPv4");
        let xml_sock = SocketAddr::from(([127, 0, 0, 1], GMETAD_XML));
        let collector_sock = SocketAddr::new(web_sock.ip(), COLLECTOR_PORT);
        for (what, sock) in [
            ("php -S", web_sock),
            ("gmetad", xml_sock),
            ("the collector gmond", collector_sock),
        ] {
            let up = g
                .server
                .spawn(move || {
                    wait_for(Duration::from_secs(30), || {
                        TcpStream::connect_timeout(&sock, Duration::from_millis(200)).ok()
                    })
                    .is_some()
                })?
                .join()
                .unwrap_or(false);
            if !up {
                return Err(GangliaError::Timeout {
                    what: format!("{what} did not listen on {sock}"),
                    secs: 30,
                    logs: g.logs(),
                });
            }
        }
        Ok(g)
    }

    /// The web frontend's root: the grid page.
    pub fn url(&self) -> String {
        format!("http://{}:{WEB_PORT}/ganglia/", self.server.addr)
    }

    /// The page of cluster `cluster` (its hosts, each with a graph).
    pub fn cluster_url(&self, cluster: &str) -> String {
        format!("{}?c={cluster}", self.url())
    }

    /// The page of cluster `cluster` with its graphs from a minute before Ganglia started
    /// to now (custom range `cs`), rather than the last hour: a short run's data fills them.
    pub fn cluster_url_since_start(&self, cluster: &str) -> String {
        format!(
            "{}&cs={}",
            self.cluster_url(cluster),
            self.started.saturating_sub(60)
        )
    }

    /// gmetad's whole XML tree, read on its XML port; empty when it does not answer.
    pub fn xml(&self) -> String {
        let sock = SocketAddr::from(([127, 0, 0, 1], GMETAD_XML));
        self.server
            .spawn(move || {
                use std::io::Read;
                let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out)
            })
            .ok()
            .and_then(|t| t.join().ok().flatten())
            .unwrap_or_default()
    }

    /// gmetad's and PHP's logs, each headed by whether it still runs: for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["gmetad.log", "php.log", "collector.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            // The last 4 kB: PHP logs every request.
            let mut from = text.len().saturating_sub(4096);
            while !text.is_char_boundary(from) {
                from += 1;
            }
            let tail = &text[from..];
            s += &format!("--- {name} ---\n{tail}\n");
        }
        s
    }

    /// Stops both (SIGTERM, SIGKILL after a second); also done on drop.
    pub fn stop(&mut self) {
        self.web.stop(Duration::from_secs(1));
        self.gmetad.stop(Duration::from_secs(1));
        self.collector.stop(Duration::from_secs(1));
    }
}
