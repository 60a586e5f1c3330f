//! The kernel command line as napalm-init reads it (Kata agent style: from a PATH, so tests
//! feed a file): `root=`, `ip=`, `nameserver=`, `init=`, `unpack=`, `napalm.scratch=`
//! ([`crate::scratch`]), `napalm.help`, `napalm.onfail=`, `napalm.timeout=`, the
//! kernel's `quiet`, and for a clone restored from a template snapshot (README "Restored
//! from a template"): `napalm.template` (boot only to the modules, then wait for the
//! identity in QEMU's fw_cfg) and the three arguments only the agent writes into that
//! identity, `napalm.mac=`, `napalm.now=` and `napalm.seed=` ([`crate::identity`]).

use crate::identity::{self, UnixTime};
use crate::ip::{parse_nameserver, IpConfig, IpParseError};
use crate::rootspec::{RootParseError, RootSpec};
use crate::scratch::{ScratchError, ScratchSpec};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What to do when booting fails (`napalm.onfail=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    /// Start the rescue shell (busybox) if the image carries one, else halt.
    Shell,
    /// Power the machine off.
    Halt,
    /// Reboot and try again (`napalm.onfail=reboot`).
    Reboot,
}

/// Everything napalm-init takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `root=`, parsed; `None` when absent.
    pub root: Option<RootSpec>,
    /// `ip=`; `Off` when absent.
    pub ip: IpConfig,
    /// `nameserver=` values, in order.
    pub nameservers: Vec<Ipv4Addr>,
    /// `init=`: the program to exec in the new root (default `/sbin/init`).
    pub init: PathBuf,
    /// `unpack=`: `;`-separated archives or directories of archives, paths in the new root.
    pub unpack: Vec<PathBuf>,
    /// `napalm.scratch=`: tmpfs paths mounted beside the union (empty when absent; a later
    /// word replaces an earlier one).
    pub scratch: ScratchSpec,
    /// `napalm.help`: print every fsloader's help on the console.
    pub help: bool,
    /// `napalm.onfail=`.
    pub onfail: OnFail,
    /// `napalm.timeout=` seconds to wait for devices and links (default 10).
    pub timeout_secs: u64,
    /// The kernel's own `quiet` (or `napalm.quiet=1`; `napalm.quiet=0` after it undoes it):
    /// napalm-init keeps its log in boot.json and prints only failures and one summary line.
    pub quiet: bool,
    /// `napalm.template` (or `=1`; `=0` turns it off): this boot makes a template. After
    /// the modules napalm-init prints `napalm-init: template ready` and waits for the
    /// fw_cfg file `opt/napalm/cmdline`, the clone's whole command line, which then
    /// replaces this one (the host saves the template's memory meanwhile and restores it
    /// into each clone's QEMU).
    pub template: bool,
    /// `napalm.mac=aa:bb:cc:dd:ee:ff`: the clone's NIC address, set on the interface
    /// before the network comes up. Only the agent writes it, into a template's identity;
    /// a normal boot ignores it (the NIC already has its address).
    pub mac: Option<[u8; 6]>,
    /// `napalm.now=<unix seconds[.fraction]>`: the wall clock to set (a restored template's
    /// is stale). Agent-written, acted upon only in an identity, like `mac`.
    pub now: Option<UnixTime>,
    /// `napalm.seed=<hex>`: bytes written to `/dev/urandom` (mixed into the pool, which a
    /// restored template shares with its siblings). Agent-written, acted upon only in an
    /// identity, like `mac`.
    pub seed: Option<Vec<u8>>,
}

/// Why the command line was rejected.
#[derive(Debug, Error)]
pub enum CmdlineError {
    /// The file could not be read.
    #[error("cannot read kernel command line from {path}: {source}")]
    Read {
        /// The file given (`/proc/cmdline` at boot).
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// `root=` is malformed.
    #[error(transparent)]
    Root(#[from] RootParseError),
    /// `ip=` or `nameserver=` is malformed.
    #[error(transparent)]
    Ip(#[from] IpParseError),
    /// `napalm.scratch=` is malformed.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// Another parameter is malformed.
    #[error("{param}: {what}")]
    Param {
        /// The offending `key=value` as written.
        param: String,
        /// What is wrong.
        what: String,
    },
    /// A quote is not closed.
    #[error("kernel command line has an unterminated quote at position {0}")]
    Quote(usize),
}

/// Splits a command line into words, honouring double quotes as the kernel does.
pub fn split_words(line: &str) -> Result<Vec<String>, CmdlineError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quote = None;
    let mut has_word = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => {
                in_quote = if in_quote.is_some() { None } else { Some(i) };
                has_word = true;
            }
            c if c.is_whitespace() && in_quote.is_none() => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if let Some(i) = in_quote {
        return Err(CmdlineError::Quote(i));
    }
    if has_word {
        words.push(cur);
    }
    Ok(words)
}

impl BootConfig {
    /// Reads and parses the command line stored at `path` (`/proc/cmdline` at boot).
    pub fn from_cmdline(path: &Path) -> Result<BootConfig, CmdlineError> {
        let text = std::fs::read_to_string(path).map_err(|source| CmdlineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses a command line; unknown parameters are left to the kernel and the real init.
    pub fn parse(line: &str) -> Result<BootConfig, CmdlineError> {
        let mut cfg = BootConfig {
            root: None,
            ip: IpConfig::Off,
            nameservers: Vec::new(),
            init: PathBuf::from("/sbin/init"),
            unpack: Vec::new(),
            scratch: ScratchSpec::default(),
            help: false,
            onfail: OnFail::Halt,
            timeout_secs: 10,
            quiet: false,
            template: false,
            mac: None,
            now: None,
            seed: None,
        };
        for word in split_words(line)? {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            let bad = |what: &str| CmdlineError::Param {
                param: word.clone(),
                what: what.to_string(),
            };
            match (key, value) {
                ("root", Some(v)) => cfg.root = Some(RootSpec::parse(v)?),
                ("ip", Some(v)) => cfg.ip = IpConfig::parse(v)?,
                ("nameserver", Some(v)) => cfg.nameservers.push(parse_nameserver(v)?),
                ("init", Some(v)) => {
                    if !v.starts_with('/') {
                        return Err(bad("init= must be an absolute path, e.g. init=/sbin/init"));
                    }
                    cfg.init = PathBuf::from(v);
                }
                ("unpack", Some(v)) => {
                    cfg.unpack = v
                        .split(';')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect();
                    if let Some(p) = cfg.unpack.iter().find(|p| !p.is_absolute()) {
                        return Err(bad(&format!("{} is not an absolute path", p.display())));
                    }
                }
                ("napalm.scratch", Some(v)) => cfg.scratch = ScratchSpec::parse(v)?,
                ("napalm.help", None) | ("napalm.help", Some("1")) => cfg.help = true,
                ("quiet", None) => cfg.quiet = true,
                // Later words win: `quiet napalm.quiet=0` keeps the kernel quiet and
                // napalm-init talkative (and a site's `napalm.quiet=0` can follow defaults).
                ("napalm.quiet", Some("0")) => cfg.quiet = false,
                ("napalm.quiet", Some("1")) => cfg.quiet = true,
                ("napalm.onfail", Some(v)) => {
                    cfg.onfail = match v {
                        "shell" => OnFail::Shell,
                        "halt" | "poweroff" => OnFail::Halt,
                        "reboot" => OnFail::Reboot,
                        _ => return Err(bad("expected napalm.onfail=shell|halt|reboot")),
                    }
                }
                (identity::TEMPLATE_ARG, None | Some("1")) => cfg.template = true,
                (identity::TEMPLATE_ARG, Some("0")) => cfg.template = false,
                (identity::TEMPLATE_ARG, Some(_)) => {
                    return Err(bad("expected napalm.template, napalm.template=1 or =0"))
                }
                ("napalm.mac", Some(v)) => {
                    cfg.mac = Some(identity::parse_mac(v).map_err(|w| bad(&w))?)
                }
                ("napalm.now", Some(v)) => cfg.now = Some(UnixTime::parse(v).map_err(|w| bad(&w))?),
                ("napalm.seed", Some(v)) => {
                    cfg.seed = Some(identity::parse_seed(v).map_err(|w| bad(&w))?)
                }
                ("napalm.mac" | "napalm.now" | "napalm.seed", None) => {
                    return Err(bad("expects a value (key=value)"))
                }
                ("napalm.timeout", Some(v)) => {
                    cfg.timeout_secs = v.parse().map_err(|_| bad("expected a number of seconds"))?
                }
                _ => {}
            }
        }
        Ok(cfg)
    }
}

/// Kernel arguments that shorten a clone's boot, with why each is there. Measured on this
/// project's guests (Debian cloud kernel 6.1 under QEMU TCG, libvirt's `-no-acpi` domain the
/// coordinator's XML then gave, 1 vCPU; README "Figures" has the table), CPU seconds of a whole
/// boot to /sbin/init, medians of 3 interleaved boots on a loaded 2-core host:
/// 2.87 s with none of them, 2.10 s with all.
///
/// The host puts them before its own arguments, so a site's later word wins where the kernel
/// lets one (`loglevel=7` after `quiet`; `napalm.quiet=0` for napalm-init's log);
/// [`FAST_BOOT_OFF`] among the site's arguments leaves them all out.
pub const FAST_BOOT_ARGS: [(&str, &str); 6] = [
    (
        "quiet",
        "the console gets warnings only, and napalm-init keeps its log in \
         /run/napalm/boot.json: every byte on the emulated UART is a trapped I/O, and a \
         console somebody reads (virsh console, a test) blocks the vCPU while it drains",
    ),
    (
        "cryptomgr.notests",
        "no self-test of every crypto algorithm the kernel registers (the late-initcall \
         wait for pending tests: ~0.3 s of wall time under TCG); the clone is not a FIPS \
         system",
    ),
    (
        "initcall_blacklist=tracer_init_tracefs,crypto_kdf108_init,slab_debugfs_init",
        "three init calls a clone does without. tracer_init_tracefs: no tracefs tree; \
         creating a directory and its files for every trace event, at boot for the \
         built-in ones and at load for each module's (nfsv4 alone has hundreds), cost \
         0.6 s of CPU; clones give up ftrace's tracefs interface. crypto_kdf108_init: \
         only the SP800-108 KDF's self-test, which cryptomgr.notests does not skip \
         (0.3-0.5 s under TCG); the KDF itself stays available. slab_debugfs_init: \
         the slab caches' debugfs files (0.1 s)",
    ),
    (
        "lpj=1000000",
        "no delay-loop calibration: without ACPI the guest has no HPET or PM timer, so \
         the TSC cannot be calibrated and the kernel times a busy loop against jiffies \
         (0.1-0.6 s under TCG, and a different value every boot: 0.4-2.2 M). Only for \
         such guests: where the TSC is calibrated (ACPI, KVM's clock, Xen) udelay counts \
         TSC cycles per jiffy from this value, and a preset would override the TSC's own \
         and shorten every delay (fast_boot_args leaves it out there)",
    ),
    (
        "no_timer_check",
        "no check that the IO-APIC timer ticks (it waits for ticks that a descheduled \
         TCG vCPU delivers late); virtual timers work",
    ),
    (
        "noreplace-smp",
        "a one-vCPU kernel keeps its SMP instructions: by default it rewrites every LOCK \
         prefix in its text to the uniprocessor form at boot, and again in each module it \
         loads, and under TCG each rewrite of code already run throws its translation \
         away (QEMU CPU to /sbin/init 0.78x and 0.96x, medians of 10 interleaved boots in \
         two series, `bench_boot_variants`; the kernel's log pauses 0.27-0.55 s at the \
         rewrite). An atomic's LOCK costs a uniprocessor guest a few cycles",
    ),
];

/// The argument a QEMU TCG guest always gets, and why: its clock must not run on its TSC.
///
/// Under TCG the guest's TSC is the host's, and the kernel calibrates its frequency by
/// timing emulated timers in busy loops. On a loaded host the vCPU is descheduled inside
/// those loops: one clone of an 8-clone deploy measured `PIT calibration deviates from
/// HPET: 63156 2297697` (kHz), and the kernel, which trusts the PIT then, took its TSC for
/// 63 MHz. Its clock then ran 36 times fast from 3 s of boot until the clocksource watchdog
/// caught it, 160 s later by the guest's count: the RTC set the wall clock right in between
/// (`rtc_cmos: setting system clock`), so the guest believed it had booted 96 s before its
/// QEMU started, and every timeout in it ran short. With the TSC marked unstable from the
/// start the kernel keeps time with the HPET (or the PM timer; jiffies without ACPI), which
/// QEMU drives from the host's clock. Not a boot-speed argument: `napalm.fastboot=0` keeps
/// it. KVM and Xen guests have their paravirtual clocks and do not get it.
pub const TCG_CLOCK_ARG: &str = "tsc=unstable";

/// Among a host's own kernel arguments, this word leaves [`FAST_BOOT_ARGS`] out.
pub const FAST_BOOT_OFF: &str = "napalm.fastboot=0";

/// [`FAST_BOOT_ARGS`]' words, space-separated, unless `site_args` contains
/// [`FAST_BOOT_OFF`] (then empty). `calibrated_tsc`: the guest can calibrate its TSC (it
/// has ACPI's timers, or KVM's or Xen's clock), so `lpj=` is left out.
pub fn fast_boot_args(site_args: &str, calibrated_tsc: bool) -> String {
    if site_args.split_whitespace().any(|w| w == FAST_BOOT_OFF) {
        return String::new();
    }
    FAST_BOOT_ARGS
        .iter()
        .map(|(w, _)| *w)
        .filter(|w| !(calibrated_tsc && w.starts_with("lpj=")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A clone's kernel command line built as values, for the host that boots it: the words
/// before, `root=`, `ip=`, `napalm.scratch=` (when there is scratch), the words after. `Display` gives the line the kernel gets, and
/// [`BootConfig::parse`] of it gives back the same root and ip.
///
/// ```
/// use napalm_initramfs::cmdline::KernelCmdline;
/// use napalm_initramfs::ip::IpConfig;
/// use napalm_initramfs::rootspec::{Device, Role, RootSpec};
///
/// let root = RootSpec::new([
///     Device::nfs("10.0.2.100", "/srv/root")?.with_role(Role::Ro),
///     Device::layer("clone01")?.with_role(Role::Ro),
///     Device::tmpfs().with_role(Role::Rw),
/// ])?;
/// let line = KernelCmdline::new(root, IpConfig::dhcp())
///     .before("console=ttyS0")
///     .after("quiet");
/// assert_eq!(
///     line.to_string(),
///     "console=ttyS0 root=nfs:10.0.2.100:/srv/root:ro;layer:clone01:ro;tmpfs:rw ip=dhcp quiet"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCmdline {
    /// Words before `root=` (e.g. `console=ttyS0`), verbatim; empty ones are skipped.
    pub before: Vec<String>,
    /// `root=`.
    pub root: RootSpec,
    /// `ip=`.
    pub ip: IpConfig,
    /// `napalm.scratch=`, written only when not empty.
    pub scratch: ScratchSpec,
    /// Words after `ip=` and `napalm.scratch=` (e.g. a deployment's own kernel arguments), verbatim; empty ones
    /// are skipped.
    pub after: Vec<String>,
}

impl KernelCmdline {
    /// `root=ROOT ip=IP` with nothing around them.
    pub fn new(root: RootSpec, ip: IpConfig) -> KernelCmdline {
        KernelCmdline {
            before: Vec::new(),
            root,
            ip,
            scratch: ScratchSpec::default(),
            after: Vec::new(),
        }
    }

    /// Sets `napalm.scratch=` (an empty spec writes nothing).
    pub fn scratch(mut self, scratch: ScratchSpec) -> KernelCmdline {
        self.scratch = scratch;
        self
    }

    /// Adds `words` (one or several, space-separated) before `root=`.
    pub fn before(mut self, words: impl Into<String>) -> KernelCmdline {
        self.before.push(words.into());
        self
    }

    /// Adds `words` (one or several, space-separated) after `ip=`.
    pub fn after(mut self, words: impl Into<String>) -> KernelCmdline {
        self.after.push(words.into());
        self
    }
}

impl std::fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for w in self.before.iter().filter(|w| !w.is_empty()) {
            write!(f, "{w} ")?;
        }
        write!(f, "root={} ip={}", self.root, self.ip)?;
        if !self.scratch.is_empty() {
            write!(f, " napalm.scratch={}", self.scratch)?;
        }
        for w in self.after.iter().filter(|w| !w.is_empty()) {
            write!(f, " {w}")?;
        }
        Ok(())
    }
}

/// Reads only `napalm.onfail=` leniently, for when the full parse failed.
pub fn onfail_lenient(line: &str) -> OnFail {
    line.split_whitespace()
        .find_map(|w| match w.strip_prefix("napalm.onfail=") {
            Some("shell") => Some(OnFail::Shell),
            Some("reboot") => Some(OnFail::Reboot),
            Some(_) => Some(OnFail::Halt),
            None => None,
        })
        .unwrap_or(OnFail::Halt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct TestData {
        line: &'static str,
        check: fn(&BootConfig) -> bool,
    }

    #[test]
    fn from_cmdline_file() {
        let cases = [
            // Thesis 3.2.6: stateless clone unpacking packages onto the tmpfs layer.
            TestData {
                line: "console=ttyS0 root=nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:ro;tmpfs:rw unpack=/var/tmpfs-overlay\n",
                check: |c| {
                    c.root.as_ref().is_some_and(|r| r.devices.len() == 3)
                        && c.unpack == vec![PathBuf::from("/var/tmpfs-overlay")]
                        && c.ip == IpConfig::Off
                },
            },
            TestData {
                line: "root=tmpfs:rw ip=dhcp nameserver=10.0.2.3 nameserver=10.0.2.4 init=/bin/sh napalm.help napalm.onfail=shell napalm.timeout=3",
                check: |c| {
                    c.nameservers.len() == 2
                        && c.init == Path::new("/bin/sh")
                        && c.help
                        && c.onfail == OnFail::Shell
                        && c.timeout_secs == 3
                        && matches!(c.ip, IpConfig::Dhcp { .. })
                },
            },
            TestData {
                line: "quiet \"root=layer:a;tmpfs:rw\" unpack=/a.tar;/b;",
                check: |c| {
                    c.root.is_some() && c.unpack.len() == 2 && c.onfail == OnFail::Halt && c.quiet
                },
            },
            TestData {
                line: "root=tmpfs:rw napalm.scratch=/scratch:tmpfs:256M,/var/tmp:tmpfs:64M",
                check: |c| {
                    c.scratch.mounts.len() == 2
                        && c.scratch.mounts[1].path == "/var/tmp"
                        && c.scratch.tmpfs_bytes() == 320 << 20
                },
            },
            // A later napalm.quiet=0 undoes quiet for napalm-init only.
            TestData { line: "quiet root=tmpfs:rw napalm.quiet=0", check: |c| !c.quiet },
            TestData {
                line: "",
                check: |c| c.root.is_none() && c.init == Path::new("/sbin/init") && !c.quiet,
            },
        ];
        for case in cases {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(case.line.as_bytes()).unwrap();
            let cfg =
                BootConfig::from_cmdline(f.path()).unwrap_or_else(|e| panic!("{}: {e}", case.line));
            assert!((case.check)(&cfg), "{}: {cfg:?}", case.line);
        }
    }

    #[test]
    fn fast_boot_args_unless_the_site_says_no() {
        let on = fast_boot_args("console=ttyS0 napalm.onfail=halt", false);
        assert!(on.starts_with("quiet cryptomgr.notests "), "{on}");
        assert_eq!(on.split(' ').count(), FAST_BOOT_ARGS.len());
        assert!(on.contains(" lpj=1000000 "), "{on}");
        assert!(BootConfig::parse(&on).unwrap().quiet);
        let calibrated = fast_boot_args("console=ttyS0", true);
        assert_eq!(calibrated.split(' ').count(), FAST_BOOT_ARGS.len() - 1);
        assert!(!calibrated.contains("lpj="), "{calibrated}");
        assert_eq!(fast_boot_args("console=ttyS0 napalm.fastboot=0", false), "");
    }

    #[test]
    fn template_and_the_identity_arguments() {
        let c = BootConfig::parse("root=tmpfs:rw").unwrap();
        assert!(!c.template && c.mac.is_none() && c.now.is_none() && c.seed.is_none());
        for (line, on) in [
            ("napalm.template", true),
            ("napalm.template=1", true),
            ("napalm.template=0", false),
            ("napalm.template napalm.template=0", false),
        ] {
            assert_eq!(BootConfig::parse(line).unwrap().template, on, "{line}");
        }
        let c = BootConfig::parse(
            "root=tmpfs:rw napalm.mac=52:54:00:00:00:07 napalm.now=1712345678.25 napalm.seed=00ff10",
        )
        .unwrap();
        assert_eq!(c.mac, Some([0x52, 0x54, 0, 0, 0, 7]));
        assert_eq!(
            c.now,
            Some(UnixTime {
                secs: 1_712_345_678,
                nanos: 250_000_000
            })
        );
        assert_eq!(c.seed, Some(vec![0, 0xff, 0x10]));
    }

    #[test]
    fn a_malformed_identity_argument_is_an_error_quoting_it() {
        for (word, quoted) in [
            ("napalm.mac=52:54:00:00:07", "\"52:54:00:00:07\""),
            ("napalm.mac=01:00:5e:00:00:01", "\"01:00:5e:00:00:01\""),
            ("napalm.now=yesterday", "\"yesterday\""),
            ("napalm.now=-5", "\"-5\""),
            ("napalm.seed=xyz1", "\"xyz1\""),
            ("napalm.seed=abc", "\"abc\""),
            ("napalm.template=yes", "napalm.template=yes"),
            ("napalm.mac", "napalm.mac"),
        ] {
            let e = BootConfig::parse(&format!("root=tmpfs:rw {word}")).unwrap_err();
            assert!(
                matches!(e, CmdlineError::Param { ref param, .. } if param == word),
                "{e:?}"
            );
            let e = e.to_string();
            assert!(e.starts_with(word) && e.contains(quoted), "{word}: {e}");
        }
    }

    #[test]
    fn errors() {
        let e = BootConfig::parse("root=nfs:a::ro;;tmpfs").unwrap_err();
        assert!(
            matches!(e, CmdlineError::Root(ref r) if r.position == 10),
            "{e}"
        );
        assert!(BootConfig::parse("ip=1.2.3").is_err());
        assert!(BootConfig::parse("init=sbin/init")
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        assert!(BootConfig::parse("napalm.onfail=explode").is_err());
        let scratch = BootConfig::parse("root=tmpfs:rw napalm.scratch=/scratch:tmpfs:1Q")
            .unwrap_err()
            .to_string();
        assert!(
            scratch.contains("\"/scratch:tmpfs:1Q\"") && scratch.contains("size \"1Q\""),
            "{scratch}"
        );
        assert!(matches!(
            BootConfig::parse("a=\"b"),
            Err(CmdlineError::Quote(2))
        ));
        let missing = BootConfig::from_cmdline(Path::new("/nonexistent/cmdline")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/cmdline"));
        assert_eq!(
            onfail_lenient("root=;; napalm.onfail=reboot"),
            OnFail::Reboot
        );
    }
}

#[cfg(test)]
#[path = "cmdline_proptest.rs"]
mod proptests;
