//! Harness: static init build, image build, QEMU and ganesha guards that always clean up.

use napalm_initramfs::image::{build, default_modules, layer_segment, Compression, ImageSpec};
use napalm_initramfs::modsig::ModuleSignatures;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Boots run one at a time: TCG on two cores, and timings are compared.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Debian cloud kernel in /boot and its version.
pub fn kernel() -> (PathBuf, String) {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64")
        })
        .collect();
    found.sort();
    let k = found
        .pop()
        .expect("no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64");
    let ver = k
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    (k, ver)
}

/// The static napalm-init (built once per test process by
/// [`napalm_initramfs::testing::static_init`]).
pub fn static_init() -> PathBuf {
    napalm_initramfs::testing::static_init().unwrap_or_else(|e| panic!("{e}"))
}

/// A busybox root in `dir` whose /sbin/init runs `script` (sh), then syncs and powers off.
pub fn busybox_root(dir: &Path, script: &str) {
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "var",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is needed");
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
    let init = format!(
        "#!/bin/sh\nexport PATH=/bin\nbb=/bin/busybox\n$bb mount -t proc proc /proc 2>/dev/null\n{script}\n$bb sync\necho NAPALM-GUEST-DONE\n$bb poweroff -f\n"
    );
    std::fs::write(dir.join("sbin/init"), init).unwrap();
    std::process::Command::new("chmod")
        .args(["755"])
        .arg(dir.join("sbin/init"))
        .status()
        .unwrap();
}

/// The median of the boot benches' samples (the upper one of an even count; NaN for none).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The boot benches' number of boots per side or variant: `NAPALM_BENCH_BOOTS` (3).
pub fn bench_boots() -> usize {
    std::env::var("NAPALM_BENCH_BOOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// A busybox root for the boot benches in `dir`, whose /sbin/init first reports the
/// kernel's uptime (`NAPALM-UPTIME`), then runs `then` (sh lines) and powers off.
pub fn uptime_root(dir: &Path, then: &str) {
    busybox_root(dir, "");
    std::fs::write(
        dir.join("sbin/init"),
        format!(
            "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n\
             echo \"NAPALM-UPTIME $(/bin/busybox cat /proc/uptime)\"\n{then}/bin/busybox poweroff -f\n"
        ),
    )
    .unwrap();
}

/// The base image (static init + default modules, their signatures cut off as
/// napalm-mkinitramfs and the grid build it), built once per test process.
pub fn base_image() -> &'static [u8] {
    base_image_with(ModuleSignatures::Strip)
}

/// The base image with the modules' signatures kept or cut off.
pub fn base_image_with(signatures: ModuleSignatures) -> &'static [u8] {
    static STRIPPED: OnceLock<Vec<u8>> = OnceLock::new();
    static SIGNED: OnceLock<Vec<u8>> = OnceLock::new();
    let once = match signatures {
        ModuleSignatures::Strip => &STRIPPED,
        ModuleSignatures::Keep => &SIGNED,
    };
    once.get_or_init(|| {
        let (_, ver) = kernel();
        let (modules, optional) = default_modules(false);
        let spec = ImageSpec {
            init: static_init(),
            kernel_config: Some(PathBuf::from(format!("/boot/config-{ver}"))),
            kernel_version: ver,
            modules_root: PathBuf::from("/lib/modules"),
            modules,
            optional_modules: optional,
            busybox: None,
            layers: Vec::new(),
            // As the grid's and napalm-mkinitramfs's default: uncompressed, with the
            // clones' layers appended compressed after it.
            compression: Compression::None,
            module_signatures: signatures,
            mtime: 0,
        };
        build(&spec).expect("building the initramfs").bytes
    })
}

/// The base image with the given layers appended as segments (`cat base layer`), the way
/// a clone's image is made; returns its path and size.
pub fn initramfs(out: &Path, layers: &[(&str, &Path)]) -> (PathBuf, usize) {
    let mut bytes = base_image().to_vec();
    for (name, dir) in layers {
        bytes.extend(layer_segment(name, dir, Compression::Gzip, 0).expect("layer segment"));
    }
    let path = out.join("initramfs.img");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes.len())
}

/// A running QEMU; killed and reaped on drop, whatever happened.
pub struct Qemu {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Everything the guest printed so far.
    pub output: String,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    /// Boots `initrd` with `append` after a quiet kernel and a talkative napalm-init
    /// (`napalm.quiet=1` in `append` quiets it too); `net_port` adds the restricted NFS
    /// forward, `disk` a virtio disk.
    pub fn boot(initrd: &Path, append: &str, net_port: Option<u16>, disk: Option<&Path>) -> Qemu {
        Self::boot_cmdline(
            initrd,
            // The kernel quiet, napalm-init's log on the console: the tests read it.
            &format!("console=ttyS0 quiet napalm.quiet=0 napalm.timeout=20 {append}"),
            net_port,
            disk,
        )
    }

    /// Like [`Qemu::boot`] with the whole kernel command line given.
    pub fn boot_cmdline(
        initrd: &Path,
        cmdline: &str,
        net_port: Option<u16>,
        disk: Option<&Path>,
    ) -> Qemu {
        Self::boot_full(initrd, cmdline, net_port, disk, &[])
    }

    /// Like [`Qemu::boot_cmdline`] with extra QEMU arguments (devices).
    pub fn boot_full(
        initrd: &Path,
        cmdline: &str,
        net_port: Option<u16>,
        disk: Option<&Path>,
        extra: &[String],
    ) -> Qemu {
        Self::boot_kernel(&kernel().0, initrd, cmdline, net_port, disk, extra)
    }

    /// Like [`Qemu::boot_full`] with another kernel file (the ELF for a PVH boot).
    pub fn boot_kernel(
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
        net_port: Option<u16>,
        disk: Option<&Path>,
        extra: &[String],
    ) -> Qemu {
        let mut cmd = Command::new("qemu-system-x86_64");
        // A caller's own `-accel` (TCG's options) replaces the default.
        if !extra.iter().any(|a| a == "-accel") {
            cmd.args(["-accel", "tcg"]);
        }
        cmd.args([
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline]);
        match net_port {
            Some(port) => {
                cmd.args([
                    "-netdev",
                    &format!(
                        "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:{port}"
                    ),
                    "-device",
                    "virtio-net-pci,netdev=n0",
                ]);
            }
            None => {
                cmd.args(["-nic", "none"]);
            }
        }
        cmd.args(extra);
        if let Some(d) = disk {
            cmd.args([
                "-drive",
                &format!("file={},if=virtio,format=raw", d.display()),
            ]);
        }
        let mut child = die_with_parent(&mut cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (Debian qemu-system-x86) is needed");
        let (tx, rx) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Qemu {
            child,
            stdin,
            lines: rx,
            output: String::new(),
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `text` on the guest's serial console.
    pub fn send(&mut self, text: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Collects output until it contains `marker`; false on exit or timeout.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.output.contains(marker) {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    self.output.push_str(&l);
                    self.output.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                return false;
            }
        }
        true
    }

    /// Collects output until QEMU exits or `timeout` passes; returns whether it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    self.output.push_str(&l);
                    self.output.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    return true;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }

    /// Boots to the end and returns the console output; panics (with it) on timeout.
    pub fn run(initrd: &Path, append: &str, net_port: Option<u16>, disk: Option<&Path>) -> String {
        let mut q = Qemu::boot(initrd, append, net_port, disk);
        let exited = q.wait_exit(Duration::from_secs(120));
        assert!(
            exited,
            "QEMU did not power off within 120 s; console:\n{}",
            q.output
        );
        eprintln!("---- guest console ({append}) ----\n{}", q.output);
        std::mem::take(&mut q.output)
    }
}

/// The "initramfs took X s" figure napalm-init prints.
pub fn initramfs_seconds(out: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.contains("initramfs took"))?;
    l.split("initramfs took ")
        .nth(1)?
        .split('s')
        .next()?
        .parse()
        .ok()
}

/// nfs-ganesha in the foreground on 127.0.0.1:<free port>, NFSv4 only, VFS FSAL, exporting
/// `export` as the pseudo root; killed by PID on drop.
pub struct Ganesha {
    child: Child,
    /// The TCP port it listens on.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ganesha {
    /// Starts it and waits until it accepts connections.
    pub fn start(export: &Path) -> Ganesha {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("ganesha.conf");
        std::fs::write(
            &conf,
            format!(
                "NFS_CORE_PARAM {{ Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1; Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; }}\n\
                 NFSV4 {{ Graceless = true; Lease_Lifetime = 10; }}\n\
                 NFS_KRB5 {{ Active_krb5 = false; }}\n\
                 EXPORT {{ Export_Id = 1; Path = {}; Pseudo = /; Access_Type = RW; Squash = No_Root_Squash; SecType = sys; Protocols = 4; Transports = TCP; FSAL {{ Name = VFS; }} }}\n",
                export.display()
            ),
        )
        .unwrap();
        let child = die_with_parent(&mut Command::new("ganesha.nfsd"))
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(dir.path().join("ganesha.log"))
            .arg("-p")
            .arg(dir.path().join("ganesha.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ganesha.nfsd (Debian nfs-ganesha, nfs-ganesha-vfs) is needed");
        let g = Ganesha {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ganesha did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        g
    }
}

/// Makes the child die with the test process even if it is killed before Drop runs.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// virtiofsd (the C one QEMU ships in /usr/lib/qemu) sharing `dir` on a socket; killed on drop.
pub struct Virtiofsd {
    child: Child,
    /// The vhost-user socket.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Virtiofsd {
    /// Starts it and waits for the socket.
    pub fn start(shared: &Path) -> Virtiofsd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vfs.sock");
        let child = die_with_parent(&mut Command::new("/usr/lib/qemu/virtiofsd"))
            .arg(format!("--socket-path={}", socket.display()))
            .args([
                "-o",
                &format!("source={}", shared.display()),
                "-o",
                "cache=none",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/lib/qemu/virtiofsd (Debian qemu-system-common) is needed");
        let v = Virtiofsd {
            child,
            socket,
            _dir: dir,
        };
        let start = Instant::now();
        while !v.socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "virtiofsd made no socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        v
    }

    /// The QEMU arguments for a vhost-user-fs device with `tag` (guest RAM must be shared).
    pub fn qemu_args(&self, tag: &str) -> Vec<String> {
        [
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=vfs0,path={}", self.socket.display()),
            "-device",
            &format!("vhost-user-fs-pci,chardev=vfs0,tag={tag}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Runs a host tool, panicking with its stderr on failure.
pub fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
