//! A template boot (`napalm.template`) against [`RecordingSyscall`]: the wait for the
//! identity in fw_cfg, the boot as that clone, and how it fails.

use super::tests::{boot_root, position};
use super::*;
use crate::syscall::RecordingSyscall;

/// A template's command line: a clone's, quiet, plus `napalm.template`.
const TEMPLATE: &str =
    "console=ttyS0 quiet root=nfs:10.0.2.100::ro;tmpfs:rw ip=dhcp napalm.onfail=shell napalm.template\n";

/// A clone's identity as the agent writes it into fw_cfg (NUL-terminated here).
const IDENTITY: &str = "console=ttyS0 root=nfs:10.0.2.100:/srv/clone07:ro;tmpfs:rw \
    ip=10.0.2.57::10.0.2.2:255.255.255.0:clone07:eth0:off napalm.onfail=reboot \
    napalm.mac=52:54:00:00:00:07 napalm.now=1712345678.25 napalm.seed=00ff10\n\0";

/// A template boot root with a NIC in sysfs.
fn template_root(cmdline: &str) -> tempfile::TempDir {
    let d = boot_root(cmdline);
    std::fs::create_dir_all(d.path().join("sys/class/net/eth0")).unwrap();
    std::fs::create_dir_all(d.path().join("sys/class/net/lo")).unwrap();
    d
}

/// Boots `d` (its `cmdline`) with the fw_cfg answers given; the failure, the calls and
/// the lines printed on the console.
fn boot(
    d: &tempfile::TempDir,
    answers: Vec<Option<&str>>,
) -> (Failure, RecordingSyscall, Vec<String>) {
    let sys = RecordingSyscall::new(Some(d.path()));
    sys.fw_cfg_answers(
        answers
            .into_iter()
            .map(|a| a.map(|a| a.as_bytes().to_vec())),
    );
    let mut b = Boot::new(&sys, d.path());
    let f = match b.steps(&d.path().join("cmdline"), &[]) {
        Err(f) => f,
        Ok(never) => match never {},
    };
    let printed = std::mem::take(&mut b.printed);
    drop(b);
    (f, sys, printed)
}

#[test]
fn a_template_waits_for_its_identity_and_boots_as_that_clone() {
    let d = template_root(TEMPLATE);
    let (f, sys, printed) = boot(&d, vec![None, None, Some(IDENTITY)]);
    // The identity's onfail, not the template's shell.
    assert_eq!((f.step, f.onfail), ("exec init", OnFail::Reboot), "{f:?}");
    let calls = sys.calls();
    let at = |c: &str| position(&calls, c);
    let polls: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i] == "fw_cfg opt/napalm/cmdline")
        .collect();
    assert_eq!(polls.len(), 3, "{calls:?}");
    // The template's modules first; the identity's, already loaded, are not loaded again.
    let virtio_net = at("finit_module /lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko []");
    assert!(virtio_net < polls[0], "{calls:?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("finit_module"))
            .count(),
        3,
        "{calls:?}"
    );
    assert_eq!(calls[polls[2] + 1], "uname", "modules again: {calls:?}");
    // Then the clock, the seed and the MAC, before the network, which is the identity's.
    let clock = at("set_clock 1712345678.250000000");
    let seed = at("write /dev/urandom");
    // The CRNG reseeded from the pool right after the seed went in.
    assert_eq!(calls[seed + 1], "reseed", "{calls:?}");
    let mac = at("set_mac eth0 52:54:00:00:00:07");
    let net = at("network ip=10.0.2.57::10.0.2.2:255.255.255.0:clone07:eth0:off");
    assert!(
        polls[2] < clock && clock < seed && seed < mac && mac < net,
        "{calls:?}"
    );
    assert!(!calls.contains(&"network ip=dhcp".to_owned()), "{calls:?}");
    assert!(
        calls.contains(&"sethostname clone07".to_owned()),
        "{calls:?}"
    );
    at("mount 10.0.2.100:/srv/clone07 /mnt/unions/0-nfs nfs4 ro [vers=4.1,addr=10.0.2.100,clientaddr=10.0.2.57,proto=tcp]");
    assert_eq!(sys.written("/dev/urandom"), Some(vec![0, 0xff, 0x10]));
    // Said on the console although the template is quiet; the clone (not quiet) talks.
    assert_eq!(printed[0], "napalm-init: template ready", "{printed:?}");
    assert_eq!(TEMPLATE_READY, "napalm-init: template ready");
    assert!(
        printed[1..]
            .iter()
            .any(|l| l.starts_with("napalm: restored from a template at ")
                && l.contains("s (waited ")),
        "{printed:?}"
    );
    // The clone's own command line, which /proc/cmdline (the template's) is not, less the
    // seed.
    let own = String::from_utf8(sys.written("/run/napalm/cmdline").expect("cmdline")).unwrap();
    assert!(
        own.starts_with("console=ttyS0 root=nfs:10.0.2.100:/srv/clone07:ro;tmpfs:rw"),
        "{own:?}"
    );
    assert!(
        own.contains("napalm.mac=52:54:00:00:00:07") && !own.contains("seed"),
        "{own:?}"
    );
    at("bind /run/napalm/cmdline /proc/cmdline");
    let json = sys.written("/run/napalm/boot.json").expect("boot.json");
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8(json).unwrap()).unwrap();
    assert_eq!(v["template"], true, "{v}");
    let restored = v["restored_at_s"].as_f64().expect("restored_at_s");
    let ready = v["template_ready_at_s"]
        .as_f64()
        .expect("template_ready_at_s");
    assert!(ready > 0.0 && ready <= restored, "{v}");
    assert!(
        restored <= v["timings"]["exec_init"].as_f64().unwrap(),
        "{v}"
    );
    assert_eq!(v["root"], "nfs:10.0.2.100:/srv/clone07:ro;tmpfs:rw");
    assert_eq!(v["network"]["addr"], "10.0.2.57");
    let log: Vec<&str> = v["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(log.contains(&"napalm-init: template ready"), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("napalm: restored from a template at")),
        "{log:?}"
    );
}

#[test]
fn an_identity_that_says_napalm_template_fails_the_identity_step() {
    let d = template_root(TEMPLATE);
    let identity = "root=tmpfs:rw napalm.onfail=reboot napalm.template";
    let (f, sys, _) = boot(&d, vec![Some(identity)]);
    assert_eq!((f.step, f.onfail), ("identity", OnFail::Reboot), "{f:?}");
    assert!(
        f.error.contains(&format!("{identity:?}"))
            && f.error.contains("itself says napalm.template"),
        "{}",
        f.error
    );
    assert!(
        !sys.calls().iter().any(|c| c.starts_with("network")),
        "{:?}",
        sys.calls()
    );
}

#[test]
fn a_malformed_identity_fails_the_identity_step_quoting_it() {
    for (word, quoted) in [
        ("napalm.mac=52:54:00:00:07", "\"52:54:00:00:07\""),
        ("napalm.now=soon", "\"soon\""),
        ("napalm.seed=0g", "\"0g\""),
        ("root=nfs:a::ro;;tmpfs", "root=nfs:a::ro;;tmpfs"),
    ] {
        let d = template_root(TEMPLATE);
        let identity = format!("root=tmpfs:rw napalm.onfail=reboot {word}");
        let (f, sys, _) = boot(&d, vec![Some(&identity)]);
        // The identity's onfail, read leniently.
        assert_eq!(
            (f.step, f.onfail),
            ("identity", OnFail::Reboot),
            "{word}: {f:?}"
        );
        assert!(
            f.error.contains(word) && f.error.contains(quoted),
            "{word}: {}",
            f.error
        );
        assert!(
            !sys.calls().iter().any(|c| c.starts_with("set_")),
            "{:?}",
            sys.calls()
        );
    }
}

#[test]
fn a_malformed_identity_argument_on_the_kernel_command_line_is_a_cmdline_error() {
    for (word, quoted) in [
        ("napalm.mac=zz:54:00:00:00:07", "\"zz:54:00:00:00:07\""),
        ("napalm.now=1.2.3", "\"1.2.3\""),
        ("napalm.seed=abc", "\"abc\""),
    ] {
        let d = template_root(&format!("root=tmpfs:rw {word}"));
        let (f, sys, _) = boot(&d, vec![]);
        assert_eq!(f.step, "cmdline", "{word}: {f:?}");
        assert!(
            f.error.contains(word) && f.error.contains(quoted),
            "{word}: {}",
            f.error
        );
        assert!(!sys.calls().iter().any(|c| c.starts_with("fw_cfg")));
    }
}

#[test]
fn a_normal_boot_never_touches_fw_cfg_and_ignores_identity_arguments() {
    for line in [
        "root=tmpfs:rw ip=dhcp napalm.mac=52:54:00:00:00:07 napalm.now=5 napalm.seed=00",
        "root=tmpfs:rw ip=dhcp napalm.template=0",
    ] {
        let d = template_root(line);
        let (f, sys, printed) = boot(&d, vec![Some(IDENTITY)]);
        assert_eq!(f.step, "exec init", "{line}: {f:?}");
        let calls = sys.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("fw_cfg") || c.starts_with("set_")),
            "{line}: {calls:?}"
        );
        assert!(sys.written("/dev/urandom").is_none());
        assert!(
            !printed.iter().any(|l| l.contains("template")),
            "{printed:?}"
        );
        let json = sys.written("/run/napalm/boot.json").expect("boot.json");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["template"], false, "{v}");
        assert!(v.get("restored_at_s").is_none(), "{v}");
        assert!(sys.written("/run/napalm/cmdline").is_none());
    }
}

#[test]
fn a_template_without_fw_cfg_fails_clearly() {
    let d = template_root(TEMPLATE);
    let (f, _, printed) = boot(&d, vec![None]);
    assert_eq!((f.step, f.onfail), ("identity", OnFail::Shell), "{f:?}");
    assert!(
        f.error
            .contains("napalm.template needs QEMU's fw_cfg (ports 0x510-0x511), not found"),
        "{}",
        f.error
    );
    assert_eq!(printed, ["napalm-init: template ready"]);
}

#[test]
fn a_mac_that_cannot_be_set_names_the_interface_and_the_mac() {
    let d = template_root(TEMPLATE);
    let sys = RecordingSyscall::new(Some(d.path()));
    sys.fw_cfg_answers([Some(IDENTITY.as_bytes().to_vec())]);
    sys.fail_on("set_mac");
    let f = Boot::new(&sys, d.path()).run(&d.path().join("cmdline"), &[]);
    assert_eq!((f.step, f.onfail), ("identity", OnFail::Reboot), "{f:?}");
    assert!(
        f.error.contains("eth0") && f.error.contains("52:54:00:00:00:07"),
        "{}",
        f.error
    );
    // No NIC at all (ip=dhcp names none): the MAC and what is missing.
    let d = boot_root(TEMPLATE);
    std::fs::create_dir_all(d.path().join("sys/class/net/lo")).unwrap();
    let identity = "root=tmpfs:rw ip=dhcp napalm.timeout=0 napalm.mac=52:54:00:00:00:08";
    let (f, _, _) = boot(&d, vec![Some(identity)]);
    assert_eq!(f.step, "identity", "{f:?}");
    assert!(
        f.error.contains("napalm.mac=52:54:00:00:00:08")
            && f.error.contains("no network interface"),
        "{}",
        f.error
    );
}
