//! Real guests through the host's libvirtd (`qemu:///system`, TCG): the agent binary runs
//! as a separate process; guests boot the Debian cloud kernel with a busybox initramfs
//! built here, which prints a marker on the serial console (a file in the domain dir).
//! Guests have no network interface. Domains are undefined on drop, even on failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use napalm_agent::hypervisor::libvirt::Libvirt;
use napalm_agent::hypervisor::{Hypervisor, RunState};

const MARKER: &str = "NAPALM-INITRAMFS-RAN";
const TOKEN: &str = "qemu-test-token";

fn ensure_libvirtd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    let st = Command::new("bash")
        .arg(&script)
        .arg("start")
        .status()
        .expect("run scripts/services");
    assert!(
        st.success(),
        "scripts/services start failed: libvirtd is needed for these tests"
    );
}

fn kernel() -> Vec<u8> {
    let k = std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        })
        .expect("a Debian cloud kernel /boot/vmlinuz-*-cloud-amd64");
    std::fs::read(k).expect("read kernel")
}

/// A newc cpio with busybox as /bin/busybox and an /init printing the marker then idling.
fn initramfs(dir: &Path) -> Vec<u8> {
    let root = dir.join("initramfs-root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static at /bin/busybox");
    let init = format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\nwhile :; do /bin/busybox sleep 3600; done\n");
    std::fs::write(root.join("init"), init).expect("init");
    Command::new("chmod")
        .args(["755"])
        .arg(root.join("init"))
        .status()
        .expect("chmod");
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet")
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .expect("cpio");
    assert!(
        out.status.success() && out.stdout.len() > 100_000,
        "cpio failed"
    );
    out.stdout
}

fn domain_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>vmlinuz</kernel><initrd>initrd.img</initrd>\
         <cmdline>console=ttyS0 panic=-1</cmdline></os>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><serial type='file'><source path='console.log'/><target port='0'/></serial>\
         <memballoon model='none'/></devices></domain>"
    )
}

struct Artifacts {
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

impl Artifacts {
    /// The host's kernel and an initramfs built under `dir`.
    fn built_in(dir: &Path) -> Self {
        Self {
            kernel: kernel(),
            initrd: initramfs(dir),
        }
    }
}

fn archive(name: &str, a: &Artifacts) -> Vec<u8> {
    let xml = domain_xml(name);
    crate::common::tar_gz(&[
        ("config.xml", xml.as_bytes()),
        ("vmlinuz", &a.kernel),
        ("initrd.img", &a.initrd),
    ])
}

/// The agent process plus cleanup of everything it owns in libvirt.
struct AgentProc {
    child: Option<Child>,
    state: PathBuf,
    port: u16,
    grpc_port: u16,
    log: PathBuf,
}

impl AgentProc {
    fn spawn(dir: &Path) -> Self {
        let mut a = Self {
            child: None,
            state: dir.join("state"),
            port: crate::common::free_port(),
            grpc_port: crate::common::free_port(),
            log: dir.join("agent.log"),
        };
        a.start();
        a
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_napalm-agent"))
            .args([
                "--uri",
                "qemu:///system",
                "--insecure-plain",
                "--shutdown-timeout",
                "2",
                "--reconcile-every",
                "1",
            ])
            .arg("--state-dir")
            .arg(&self.state)
            .args([
                "--http-listen",
                &format!("127.0.0.1:{}", self.port),
                "--grpc-listen",
                &format!("127.0.0.1:{}", self.grpc_port),
            ])
            .env("NAPALM_AGENT_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn napalm-agent");
        self.child = Some(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if curl(&["-o", "/dev/null", "-w", "%{http_code}", &self.url("/about")]).0 == "200" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent did not answer within 30 s; see {}",
            self.log.display()
        );
    }

    /// SIGKILL, as `kill -9`.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn agent_id(&self) -> String {
        std::fs::read_to_string(self.state.join("agent-id")).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        let id = self.agent_id();
        if let Ok(hv) = Libvirt::open("qemu:///system") {
            for d in hv.list().unwrap_or_default() {
                let xml = hv.find(&d.name).ok().flatten().map(|(_, x)| x);
                if !id.is_empty()
                    && xml
                        .and_then(|x| napalm_agent::policy::owner_of(&x))
                        .as_deref()
                        == Some(id.as_str())
                {
                    let _ = hv.undefine(&d.name);
                }
            }
        }
    }
}

/// Runs curl with the token; returns (stdout, stderr).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl -X PUT --data-binary DATA URL` (`DATA` may be `@FILE`): the body and stderr.
fn put(data: &str, url: &str) -> (String, String) {
    curl(&["-X", "PUT", "--data-binary", data, url])
}

/// [`put`], answering the HTTP status code instead of the body.
fn put_code(data: &str, url: &str) -> (String, String) {
    curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "PUT",
        "--data-binary",
        data,
        url,
    ])
}

/// [GET, PUT, DELETE] served so far, from /metrics (the read itself is one GET).
fn served(a: &AgentProc) -> [i64; 3] {
    let (m, _) = curl(&[&a.url("/metrics")]);
    let v = |meth: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("napalm_http_requests_total{{method=\"{meth}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<i64>().ok())
            .expect("counter in /metrics")
    };
    [v("GET"), v("PUT"), v("DELETE")]
}

/// Requests of one operation: counter difference, minus the GET of /metrics itself.
fn op_requests(a: &AgentProc, f: impl FnOnce()) -> [i64; 3] {
    let b = served(a);
    f();
    let e = served(a);
    [e[0] - b[0] - 1, e[1] - b[1], e[2] - b[2]]
}

fn wait_marker(a: &AgentProc, name: &str) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        let (out, _) = curl(&[&a.url(&format!("/domain/{name}/console.log"))]);
        if out.contains(MARKER) {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{name}: the marker never reached the console; see {}",
        a.state
            .join(format!("domains/{name}/files/console.log"))
            .display()
    );
}

fn workdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().expect("tempdir");
    // QEMU may run as an unprivileged user: it must traverse to the domain files.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

#[test]
fn boot_stop_delete_with_table_4_3_counts_via_curl() {
    ensure_libvirtd();
    let dir = workdir();
    let arts = Artifacts::built_in(dir.path());
    let ar = dir.path().join("q-boot.tar.gz");
    std::fs::write(&ar, archive("q-boot", &arts)).expect("archive");
    let a = AgentProc::spawn(dir.path());
    let hv = Libvirt::open("qemu:///system").expect("libvirt");
    let arg = format!("@{}", ar.display());

    let t0 = Instant::now();
    let n = op_requests(&a, || {
        let (code, err) = put_code(&arg, &a.url("/domain/q-boot"));
        assert_eq!(code, "201", "create: {err}");
    });
    assert_eq!(n, [0, 1, 0], "create = 1 PUT");
    let boot = wait_marker(&a, "q-boot");
    eprintln!(
        "q-boot: create request {:?}, initramfs marker on console after {:?} more",
        t0.elapsed() - boot,
        boot
    );

    // No network: the live definition has no interface at all.
    let (_, live) = hv.find("q-boot").expect("find").expect("live");
    assert!(
        !live.contains("<interface"),
        "guest must have no network interface"
    );
    // Per-domain counters reach /metrics: the guest has used CPU.
    let (m, _) = curl(&[&a.url("/metrics")]);
    let cpu: f64 = m
        .lines()
        .find(|l| l.starts_with("napalm_domain_cpu_time_seconds_total{domain=\"q-boot\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("cpu time of q-boot in /metrics");
    assert!(cpu > 0.1, "q-boot used {cpu} s of CPU");

    let n = op_requests(&a, || {
        let (s, _) = curl(&[&a.url("/domain/q-boot/status.xml")]);
        assert!(s.contains("<status><state>running</state></status>"), "{s}");
    });
    assert_eq!(n, [1, 0, 0], "status = 1 GET");

    let n = op_requests(&a, || {
        let (s, _) = curl(&[&a.url("/domain/q-boot/console.log")]);
        assert!(
            s.contains("Run /init as init process") && s.contains(MARKER),
            "{s}"
        );
    });
    assert_eq!(n, [1, 0, 0], "get file = 1 GET");

    let n = op_requests(&a, || {
        let (s, _) = put(
            "<status><state>shutoff</state></status>",
            &a.url("/domain/q-boot/status.xml"),
        );
        assert!(s.contains("<state>shutoff</state>"), "{s}");
    });
    assert_eq!(n, [0, 1, 0], "change state = 1 PUT");
    assert_eq!(hv.state("q-boot").expect("state"), Some(RunState::Shutoff));

    let initrd = format!("@{}", dir.path().join("initramfs-root/init").display());
    let n = op_requests(&a, || {
        let (code, _) = put_code(&initrd, &a.url("/domain/q-boot/initrd.img"));
        assert_eq!(code, "204");
    });
    assert_eq!(n, [0, 1, 0], "send file = 1 PUT");

    let got = dir.path().join("got.tar.gz");
    let n = op_requests(&a, || {
        let (code, _) = curl(&[
            "-o",
            &got.to_string_lossy(),
            "-w",
            "%{http_code}",
            &a.url("/domain/q-boot/archive.tar.gz"),
        ]);
        assert_eq!(code, "200");
    });
    assert_eq!(n, [1, 0, 0], "get archive = 1 GET");
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(&got)
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["config.xml", "vmlinuz", "initrd.img", "console.log"] {
        assert!(
            listing.lines().any(|l| l == f),
            "{f} missing from archive: {listing}"
        );
    }

    let n = op_requests(&a, || {
        let (code, _) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &a.url("/domain/q-boot"),
        ]);
        assert_eq!(code, "204");
    });
    assert_eq!(n, [0, 0, 1], "delete = 1 DELETE");
    assert_eq!(
        hv.state("q-boot").expect("state"),
        None,
        "gone from libvirt"
    );
    assert!(
        !a.state.join("domains/q-boot").exists(),
        "domain directory removed"
    );
}

fn owned_live(hv: &Libvirt, id: &str) -> Vec<(String, RunState, Option<u32>)> {
    hv.list()
        .expect("list")
        .into_iter()
        .filter(|d| {
            hv.find(&d.name)
                .ok()
                .flatten()
                .and_then(|(_, x)| napalm_agent::policy::owner_of(&x))
                .as_deref()
                == Some(id)
        })
        .map(|d| (d.name, d.state, d.id))
        .collect()
}

#[test]
fn kill_9_ten_times_keeps_every_domain_running_once() {
    ensure_libvirtd();
    let dir = workdir();
    let arts = Artifacts::built_in(dir.path());
    let mut a = AgentProc::spawn(dir.path());
    let hv = Libvirt::open("qemu:///system").expect("libvirt");
    let mut expected: Vec<String> = vec!["k9-a".into(), "k9-b".into(), "k9-c".into()];
    for n in &expected {
        let p = dir.path().join(format!("{n}.tar.gz"));
        std::fs::write(&p, archive(n, &arts)).expect("write");
        let (code, err) = put_code(
            &format!("@{}", p.display()),
            &a.url(&format!("/domain/{n}")),
        );
        assert_eq!(code, "201", "{err}");
    }
    for n in &expected {
        wait_marker(&a, n);
    }
    let id = a.agent_id();
    let mut before = owned_live(&hv, &id);
    assert_eq!(before.len(), 3);
    let late = dir.path().join("k9-late.tar.gz");
    std::fs::write(&late, archive("k9-late", &arts)).expect("write");

    for round in 1..=10 {
        let mut inflight = None;
        if round == 5 {
            // Kill the agent while a create is in flight: afterwards it exists fully or not at all.
            let url = a.url("/domain/k9-late");
            let arg = format!("@{}", late.display());
            inflight = Some(std::thread::spawn(move || {
                curl(&["-o", "/dev/null", "-X", "PUT", "--data-binary", &arg, &url])
            }));
            std::thread::sleep(Duration::from_millis(400));
        }
        a.kill9();
        if let Some(t) = inflight {
            let _ = t.join();
        }
        // With the agent dead, the guests still run, with the same libvirt ids.
        let now = owned_live(&hv, &id);
        for (n, st, lid) in &before {
            let found = now
                .iter()
                .find(|d| &d.0 == n)
                .unwrap_or_else(|| panic!("round {round}: {n} lost"));
            assert_eq!(
                (found.1, found.2),
                (*st, *lid),
                "round {round}: {n} changed while the agent was dead"
            );
        }
        a.start();
        std::thread::sleep(Duration::from_millis(300));
        let (json, _) = curl(&[&a.url("/domains.json")]);
        let listed: serde_json::Value = serde_json::from_str(&json).expect("domains.json");
        let names: Vec<String> = listed
            .as_array()
            .expect("array")
            .iter()
            .map(|d| d["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        if round == 5 && names.iter().any(|n| n == "k9-late") {
            expected.push("k9-late".into());
            expected.sort();
            wait_marker(&a, "k9-late");
        }
        assert_eq!(
            names, expected,
            "round {round}: agent lists exactly the expected domains"
        );
        let live = owned_live(&hv, &id);
        let mut live_names: Vec<String> = live.iter().map(|d| d.0.clone()).collect();
        live_names.sort();
        assert_eq!(
            live_names, expected,
            "round {round}: libvirt holds each domain exactly once"
        );
        for d in listed.as_array().expect("array") {
            assert_eq!(d["state"], "running", "round {round}: {}", d["name"]);
        }
        for (n, _, lid) in &before {
            let l = live.iter().find(|d| &d.0 == n).expect("live");
            assert_eq!(
                l.2, *lid,
                "round {round}: {n} was restarted (libvirt id changed)"
            );
        }
        before = live;
        eprintln!(
            "round {round}: {} domains running, none restarted, duplicated or lost",
            expected.len()
        );
    }
    for n in &expected {
        let (code, _) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &a.url(&format!("/domain/{n}")),
        ]);
        assert_eq!(code, "204");
    }
    assert!(owned_live(&hv, &id).is_empty());
}

mod console;
