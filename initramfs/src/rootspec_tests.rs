//! Table-driven tests of the `root=` grammar on the thesis's own examples.

use super::*;

struct TestData {
    input: &'static str,
    /// (kind, params, role) per device.
    want: &'static [(&'static str, &'static [&'static str], Role)],
}

#[test]
fn thesis_examples_parse() {
    let cases = [
        // 2.2.2.1: two block devices; a `/` type is `block`.
        TestData {
            input: "/dev/sda1;/dev/sda2",
            want: &[
                ("block", &["/dev/sda1"], Role::Ro),
                ("block", &["/dev/sda2"], Role::Ro),
            ],
        },
        // 2.2.2.1 and 3.2.5: stateful clone, empty dir means `/`.
        TestData {
            input: "nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:rw",
            want: &[
                ("nfs", &["10.0.0.1", "", "ro"], Role::Ro),
                (
                    "nfs",
                    &["10.0.0.1", "/var/state/systems/clone01", "rw"],
                    Role::Rw,
                ),
            ],
        },
        // 3.2.6: stateless clone with a tmpfs upper.
        TestData {
            input: "nfs:10.0.0.1::ro;nfs:10.0.0.1:/var/state/systems/clone01:ro;tmpfs:rw",
            want: &[
                ("nfs", &["10.0.0.1", "", "ro"], Role::Ro),
                (
                    "nfs",
                    &["10.0.0.1", "/var/state/systems/clone01", "ro"],
                    Role::Ro,
                ),
                ("tmpfs", &["rw"], Role::Rw),
            ],
        },
        // 3.2.2: composed type, comma list in an option.
        TestData {
            input: "lvm2+md:/dev/vg/volume:/dev/md0,/dev/md1",
            want: &[(
                "lvm2+md",
                &["/dev/vg/volume", "/dev/md0,/dev/md1"],
                Role::Ro,
            )],
        },
        // 3.2.3: `root=block:/dev/sda1` is the long form of `root=/dev/sda1`.
        TestData {
            input: "block:/dev/sda1",
            want: &[("block", &["/dev/sda1"], Role::Ro)],
        },
        // Annex II, listing II.1.
        TestData {
            input: "nfs:192.168.0.1:/mnt/rootfs",
            want: &[("nfs", &["192.168.0.1", "/mnt/rootfs"], Role::Ro)],
        },
        TestData {
            input: "nfs:10.0.0.2:/mnt/system1:ro,nolock",
            want: &[("nfs", &["10.0.0.2", "/mnt/system1", "ro,nolock"], Role::Ro)],
        },
        // Annex II, listing II.2.
        TestData {
            input: "loop+nfs:10.0.0.1:/mnt/modules",
            want: &[("loop+nfs", &["10.0.0.1", "/mnt/modules"], Role::Ro)],
        },
        TestData {
            input: "loop+nfs:10.0.0.9:/mnt/images/image.squashfs",
            want: &[(
                "loop+nfs",
                &["10.0.0.9", "/mnt/images/image.squashfs"],
                Role::Ro,
            )],
        },
        // `[ ";" ]`: one trailing separator is allowed.
        TestData {
            input: "tmpfs;",
            want: &[("tmpfs", &[], Role::Rw)],
        },
        // Modern additions.
        TestData {
            input: "LABEL=root;UUID=0a1b-2c:rw",
            want: &[
                ("block", &["LABEL=root"], Role::Ro),
                ("block", &["UUID=0a1b-2c", "rw"], Role::Rw),
            ],
        },
        TestData {
            input: "layer:clone01;virtiofs:share:ro;9p:tag",
            want: &[
                ("layer", &["clone01"], Role::Ro),
                ("virtiofs", &["share", "ro"], Role::Ro),
                ("9p", &["tag"], Role::Ro),
            ],
        },
    ];
    for case in cases {
        let spec = RootSpec::parse(case.input).unwrap_or_else(|e| panic!("{}: {e}", case.input));
        assert_eq!(spec.devices.len(), case.want.len(), "{}", case.input);
        for (d, (kind, params, role)) in spec.devices.iter().zip(case.want) {
            assert_eq!(d.kind, *kind, "{}", case.input);
            assert_eq!(
                d.params,
                params.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{}",
                case.input
            );
            assert_eq!(d.role(), *role, "{}", case.input);
        }
    }
}

#[test]
fn offsets_and_composition() {
    let spec = RootSpec::parse("nfs:10.0.0.1::ro;loop+nfs:10.0.0.9:/i.sqfs").unwrap();
    assert_eq!(spec.devices[1].offset, 17);
    assert_eq!(spec.devices[1].components(), vec!["loop", "nfs"]);
    assert_eq!(
        spec.devices[0].args(),
        &["10.0.0.1".to_string(), String::new()]
    );
    assert_eq!(spec.devices[1].display(), "loop+nfs:10.0.0.9:/i.sqfs");
}

#[test]
fn errors_quote_input_and_position() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "empty root="),
        ("nfs:a::ro;;tmpfs", 10, "empty device"),
        (";tmpfs", 0, "empty device"),
        ("tmpfs;;", 6, "empty device"),
        ("_nfs:x", 0, "must start with a letter"),
        ("nfs:x;-x", 6, "must start with a letter"),
        ("n-fs:x", 1, "not allowed in device type"),
        (":x", 0, "type missing"),
        ("loop+:x", 0, "empty part"),
        // The draft separator of listing 2.3 is refused with a hint.
        (
            "block:/dev/sda1|block:/dev/sdb2",
            15,
            "separate devices with `;`",
        ),
        ("nfs:1.2.3.4:/a b", 14, "not allowed in a parameter"),
    ];
    for (input, pos, what) in cases {
        let e = RootSpec::parse(input).expect_err(input);
        assert_eq!(e.position, *pos, "{input}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(what), "{input}: {msg}");
        assert!(msg.contains(&format!("root={input}")), "{msg}");
        // The caret line points at the position.
        let caret_line = msg.lines().last().unwrap();
        assert_eq!(caret_line.find('^'), Some(pos + 7), "{msg}");
    }
}

#[test]
fn upper_layer_rules() {
    let ok = RootSpec::parse("nfs:s::ro;layer:c;tmpfs:rw").unwrap();
    assert_eq!(ok.upper(), Ok(Some(2)));
    let none = RootSpec::parse("/dev/sda1;/dev/sda2").unwrap();
    assert_eq!(none.upper(), Ok(None));
    let two = RootSpec::parse("tmpfs:rw;tmpfs:rw").unwrap();
    assert!(two.upper().unwrap_err().contains("at most one rw"));
    let mid = RootSpec::parse("tmpfs:rw;nfs:s::ro").unwrap();
    assert!(mid.upper().unwrap_err().contains("rightmost"));
}
