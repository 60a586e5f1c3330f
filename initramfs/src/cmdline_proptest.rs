//! Round trips: a root spec, an ip config and a whole command line built as values display
//! to text that parses back to the same values (every fsloader type of `root=`, static and
//! DHCP `ip=`, `napalm.scratch=`).

use super::*;
use crate::ip::StaticIp;
use crate::rootspec::{Device, Role};
use crate::scratch::{ScratchMount, ScratchSpec};
use proptest::prelude::*;
use proptest::strategy::Union;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.-]{0,11}"
}

fn server() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        "[a-z][a-z0-9-]{0,9}(\\.[a-z]{2,4})?",
    ]
}

fn path() -> impl Strategy<Value = String> {
    "(/[a-zA-Z0-9_.+-]{1,8}){0,4}"
}

fn opts() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z]{2,6}(=[0-9a-z]{1,4})?(,[a-z]{2,6}){0,2}")
}

fn block_dev() -> impl Strategy<Value = String> {
    prop_oneof![
        "/dev/[a-z]{2,4}[0-9]{0,2}",
        "LABEL=[a-zA-Z0-9_-]{1,10}",
        "UUID=[0-9a-f]{4}-[0-9a-f]{4}",
    ]
}

fn with_opt(mut params: Vec<String>, opt: Option<String>) -> Vec<String> {
    params.extend(opt);
    params
}

fn device(kind: &'static str, params: Vec<String>) -> Device {
    Device::new(kind, params).unwrap_or_else(|e| panic!("generated device: {e}"))
}

/// One device of each fsloader type, with its parameters (no role yet).
fn bare_device() -> impl Strategy<Value = Device> {
    Union::new(vec![
        (block_dev(), proptest::option::of("ext4|xfs|squashfs"))
            .prop_map(|(d, fs)| match fs {
                None => Device::block(&d).unwrap_or_else(|e| panic!("{e}")),
                Some(fs) => device("block", with_opt(vec![d], Some(fs.to_owned()))),
            })
            .boxed(),
        (server(), path(), opts())
            .prop_map(|(s, p, o)| match o {
                None => Device::nfs(&s, &p).unwrap_or_else(|e| panic!("{e}")),
                Some(o) => device("nfs", vec![s, p, o]),
            })
            .boxed(),
        proptest::option::of("size=[0-9]{1,3}[mg]")
            .prop_map(|o| match o {
                None => Device::tmpfs(),
                Some(o) => device("tmpfs", vec![o]),
            })
            .boxed(),
        path()
            .prop_map(|p| Device::loop_file(&p).unwrap_or_else(|e| panic!("{e}")))
            .boxed(),
        (server(), path())
            .prop_map(|(s, p)| Device::loop_nfs(&s, &p).unwrap_or_else(|e| panic!("{e}")))
            .boxed(),
        (block_dev(), path())
            .prop_map(|(d, p)| device("loop+block", vec![d, p]))
            .boxed(),
        (name(), path())
            .prop_map(|(t, p)| device("loop+9p", vec![t, p]))
            .boxed(),
        (name(), path())
            .prop_map(|(t, p)| device("loop+virtiofs", vec![t, p]))
            .boxed(),
        (name(), opts())
            .prop_map(|(t, o)| device("9p", with_opt(vec![t], o)))
            .boxed(),
        (name(), opts())
            .prop_map(|(t, o)| device("virtiofs", with_opt(vec![t], o)))
            .boxed(),
        name()
            .prop_map(|n| Device::layer(&n).unwrap_or_else(|e| panic!("{e}")))
            .boxed(),
    ])
}

fn root_device() -> impl Strategy<Value = Device> {
    (
        bare_device(),
        proptest::option::of(prop_oneof![Just(Role::Ro), Just(Role::Rw)]),
    )
        .prop_map(|(d, role)| match role {
            Some(r) => d.with_role(r),
            None => d,
        })
}

fn root_spec() -> impl Strategy<Value = RootSpec> {
    proptest::collection::vec(root_device(), 1..6)
        .prop_map(|ds| RootSpec::new(ds).unwrap_or_else(|e| panic!("{e}")))
}

fn hostname() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z][a-z0-9-]{0,20}")
}

fn ifname() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("(eth|ens|enp)[0-9]{1,2}")
}

fn ip_config() -> impl Strategy<Value = IpConfig> {
    prop_oneof![
        Just(IpConfig::Off),
        Just(IpConfig::dhcp()),
        (ifname(), hostname()).prop_map(|(device, hostname)| IpConfig::Dhcp { device, hostname }),
        (
            any::<Ipv4Addr>(),
            any::<Ipv4Addr>(),
            proptest::option::of(any::<Ipv4Addr>()),
            proptest::option::of(any::<Ipv4Addr>()),
            hostname(),
            ifname(),
            proptest::collection::vec(any::<Ipv4Addr>(), 0..=2),
        )
            .prop_map(|(client, mask, server, gateway, hostname, device, dns)| {
                IpConfig::Static(StaticIp {
                    server,
                    gateway,
                    hostname,
                    device,
                    dns,
                    ..StaticIp::new(client, mask)
                })
            }),
    ]
}

/// Scratch entries: paths that may collide or nest (refused by the builder, so dropped),
/// sizes in any unit, default or explicit modes.
fn scratch_spec() -> impl Strategy<Value = ScratchSpec> {
    proptest::collection::vec(
        (
            "(/[a-zA-Z0-9_.+@-]{1,6}){1,3}",
            1u64..(1 << 34),
            proptest::option::of(0u32..=0o7777),
        ),
        0..4,
    )
    .prop_filter_map("paths that read as scratch paths, not nested", |entries| {
        let mounts = entries
            .into_iter()
            .map(|(p, size, mode)| {
                let m = ScratchMount::tmpfs(&p, size)?;
                match mode {
                    Some(mode) => m.with_mode(mode),
                    None => Ok(m),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        ScratchSpec::new(mounts).ok()
    })
}

fn words() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop_oneof![
            Just(String::new()),
            Just("console=ttyS0".to_owned()),
            Just("quiet loglevel=3".to_owned()),
            Just("napalm.onfail=shell".to_owned()),
        ],
        0..3,
    )
}

proptest! {
    #[test]
    fn root_spec_round_trips(spec in root_spec()) {
        let text = spec.to_string();
        prop_assert_eq!(RootSpec::parse(&text), Ok(spec), "{}", text);
    }

    #[test]
    fn ip_config_round_trips(ip in ip_config()) {
        let text = ip.to_string();
        prop_assert_eq!(IpConfig::parse(&text), Ok(ip.clone()), "{}", text);
        prop_assert_eq!(ip.clone().checked(), Ok(ip));
    }

    #[test]
    fn scratch_spec_round_trips(spec in scratch_spec()) {
        let text = spec.to_string();
        prop_assert_eq!(ScratchSpec::parse(&text), Ok(spec), "{}", text);
    }

    /// Whatever the text, parsing never panics, and what parses displays back to a value
    /// that parses to the same spec.
    #[test]
    fn scratch_parse_never_panics(text in "[/a-z0-9:,.MGK]{0,30}") {
        if let Ok(spec) = ScratchSpec::parse(&text) {
            prop_assert_eq!(ScratchSpec::parse(&spec.to_string()), Ok(spec));
        }
    }

    #[test]
    fn kernel_cmdline_round_trips(
        root in root_spec(),
        ip in ip_config(),
        scratch in scratch_spec(),
        before in words(),
        after in words(),
    ) {
        let line = KernelCmdline {
            before,
            root: root.clone(),
            ip: ip.clone(),
            scratch: scratch.clone(),
            after,
        };
        let text = line.to_string();
        let cfg = BootConfig::parse(&text);
        prop_assert!(cfg.is_ok(), "{}: {:?}", text, cfg);
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(cfg.root, Some(root), "{}", text);
        prop_assert_eq!(cfg.ip, ip, "{}", text);
        prop_assert_eq!(&cfg.scratch, &scratch, "{}", text);
        prop_assert_eq!(text.contains("napalm.scratch="), !scratch.is_empty(), "{}", text);
        prop_assert!(!text.contains("  ") && !text.starts_with(' ') && !text.ends_with(' '));
    }
}

#[test]
fn builders_reject_what_would_not_read_back() {
    assert!(Device::nfs("10.0.0.1", "/a;b").is_err());
    assert!(Device::nfs("10.0.0.1", "/a b").is_err());
    assert!(Device::layer("a:b").is_err());
    assert!(Device::new("/dev/vda", Vec::<String>::new()).is_err());
    assert!(RootSpec::new([]).is_err());
    let three_dns = IpConfig::Static(StaticIp {
        dns: vec![Ipv4Addr::LOCALHOST; 3],
        ..StaticIp::new(Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST)
    });
    assert!(three_dns.checked().is_err());
    assert_eq!(
        Device::nfs("s", "/x")
            .map(|d| d.with_role(Role::Ro).with_role(Role::Rw).to_string())
            .ok(),
        Some("nfs:s:/x:rw".to_owned())
    );
}

/// The coordinator's static-address line, byte for byte as it was written with `format!`.
#[test]
fn coordinator_static_line() {
    let root = RootSpec::new([
        Device::nfs("10.77.0.1", "/srv/root")
            .map(|d| d.with_role(Role::Ro))
            .unwrap_or_else(|e| panic!("{e}")),
        Device::layer("grid1-01")
            .map(|d| d.with_role(Role::Ro))
            .unwrap_or_else(|e| panic!("{e}")),
        Device::loop_nfs("10.77.0.1", "/srv/state/grid1/grid1-01/upper.img")
            .map(|d| d.with_role(Role::Rw))
            .unwrap_or_else(|e| panic!("{e}")),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let ip = IpConfig::Static(StaticIp {
        server: Some(Ipv4Addr::new(10, 77, 0, 1)),
        hostname: Some("grid1-01".into()),
        device: Some("eth0".into()),
        ..StaticIp::new(
            Ipv4Addr::new(10, 77, 0, 101),
            Ipv4Addr::new(255, 255, 255, 0),
        )
    });
    let line = KernelCmdline::new(root, ip)
        .before("console=ttyS0")
        .after("");
    assert_eq!(
        line.to_string(),
        "console=ttyS0 root=nfs:10.77.0.1:/srv/root:ro;layer:grid1-01:ro;\
         loop+nfs:10.77.0.1:/srv/state/grid1/grid1-01/upper.img:rw \
         ip=10.77.0.101:10.77.0.1::255.255.255.0:grid1-01:eth0:off"
    );
}
