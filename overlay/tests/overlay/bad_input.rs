//! Every bad-input case is refused with a message that says where and what.

use napalm_overlay::{
    BuildError, Config, ConfigError, LayerBuilder, Limits, SetLibrary, TemplateError,
};

use crate::common::{identity, library, write_set};

fn parse_err(yaml: &str) -> ConfigError {
    match Config::parse("bad.conf", yaml, &Limits::default()).and_then(|c| c.resolve()) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

fn assert_msg(e: &impl std::fmt::Display, parts: &[&str]) {
    let m = e.to_string();
    for p in parts {
        assert!(m.contains(p), "message {m:?} lacks {p:?}");
    }
}

#[test]
fn yaml_syntax_error_has_file_line_col() {
    let e = parse_err("server: 10.0.0.1\ngroups:\n  g: [1, 2\n  h: 3\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert_msg(&e, &["bad.conf:", "invalid YAML"]);
    let ConfigError::Syntax { line, .. } = e else {
        unreachable!()
    };
    assert!(line >= 3, "line {line}");
}

#[test]
fn unknown_and_computed_keys_are_refused_with_position() {
    let e = parse_err("groups:\n  g:\n    host:\n      c1:\n");
    assert_msg(
        &e,
        &[
            "bad.conf:3:5",
            "unknown key `host`",
            "did you mean `hosts`?",
        ],
    );
    let e = parse_err("Groups:\n  g: {}\n");
    assert_msg(&e, &["bad.conf:1:1", "`groups`"]);
    let e = parse_err("hosts:\n  c1: { name: other }\n");
    assert_msg(&e, &["bad.conf:2:9", "`name` is computed"]);
    let e = parse_err("hosts:\n  c1: { hosts: [x] }\n");
    assert_msg(&e, &["bad.conf:2:9", "a host cannot hold `hosts`"]);
}

#[test]
fn duplicate_hosts_and_keys_are_refused() {
    let e = parse_err("groups:\n  a: { hosts: { c1: } }\n  b:\n    hosts:\n      c1:\n");
    assert_msg(
        &e,
        &[
            "bad.conf:5:7",
            "duplicate host `c1`",
            "first defined at line 2",
        ],
    );
    let e = parse_err("hosts:\n  c[1-3]:\n  C2:\n");
    assert_msg(&e, &["bad.conf:3:3", "duplicate host `C2`"]);
    let e = parse_err("server: a\nserver: b\n");
    assert!(e.to_string().contains("bad.conf:2:"), "{e}");
    let e = parse_err("hosts:\n  a: { address: 10.0.0.5 }\n  b: { address: 10.0.0.5 }\n");
    assert_msg(&e, &["duplicate address 10.0.0.5"]);
}

#[test]
fn invalid_hostnames_ranges_and_values_are_refused() {
    let e = parse_err("hosts:\n  bad_name:\n");
    assert_msg(
        &e,
        &[
            "bad.conf:2:3",
            "`bad_name` is not a valid hostname",
            "contains `_`",
        ],
    );
    let e = parse_err("hosts:\n  clone[01-x]:\n");
    assert_msg(&e, &["bad.conf:2:3", "not a number"]);
    let e = parse_err("hosts:\n  c[9-1]:\n");
    assert_msg(&e, &["runs backwards"]);
    let e = parse_err("layers: [base, ../../etc]\nhosts: { c1: }\n");
    assert_msg(&e, &["bad.conf:1:1", "no paths"]);
    let e = parse_err("address: nowhere\nhosts: { c1: }\n");
    assert_msg(&e, &["bad.conf:1:1", "is not an IP address"]);
}

#[test]
fn alias_bombs_and_absurd_sizes_are_refused() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = parse_err(&bomb);
    assert_msg(&e, &["bad.conf:"]);
    let e = parse_err("hosts:\n  n[1-999999999]:\n");
    assert_msg(&e, &["bad.conf:2:3"]);
    let limits = Limits {
        max_config_bytes: 64,
        ..Limits::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.conf");
    std::fs::write(&big, format!("x: {}\n", "y".repeat(100))).unwrap();
    let e = Config::load_with(&big, &limits).unwrap_err();
    assert_msg(&e, &["big.conf:1:1", "more than 64 bytes"]);
    let limits = Limits {
        max_clones: 10,
        ..Limits::default()
    };
    let e = Config::parse("bad.conf", "hosts: { 'n[1-8]': , 'm[1-8]': }\n", &limits)
        .unwrap()
        .resolve_with(&limits)
        .unwrap_err();
    assert_msg(&e, &["more than 10"]);
}

fn build_err(files: &[(&str, &str)], limits: Limits) -> BuildError {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), "s", files);
    let c = crate::common::cluster("layers: [s]\nhosts: { c1: }\n");
    let lib = SetLibrary::with_limits(vec![tmp.path().to_path_buf()], limits);
    let r = LayerBuilder::new(&c, &lib, tmp.path().join("out"))
        .identity(identity())
        .build_all();
    match r {
        Err(e) => e,
        Ok(report) => match report.into_result() {
            Err(e) => e,
            Ok(_) => panic!("accepted {files:?}"),
        },
    }
}

#[test]
fn undefined_template_value_names_template_line_and_clone() {
    let e = build_err(
        &[("root/etc/x.tmpl", "ok {{name}}\nport {{port}}\n")],
        Limits::default(),
    );
    assert_msg(&e, &["root/etc/x.tmpl:2", "clone `c1`", "port"]);
    let e = build_err(
        &[("root/etc/x.tmpl", "line\n{{#if x}}\n")],
        Limits::default(),
    );
    assert!(
        matches!(e, BuildError::Template(TemplateError::Syntax { .. })),
        "{e}"
    );
    assert_msg(&e, &["root/etc/x.tmpl:"]);
}

#[test]
fn escaping_symlinks_and_templates_are_refused() {
    let e = build_err(
        &[("root/etc/shadow", "->../../etc/shadow")],
        Limits::default(),
    );
    assert_msg(
        &e,
        &[
            "root/etc/shadow",
            "relative symlink to `../../etc/shadow` escapes its set",
        ],
    );
    let outside = tempfile::NamedTempFile::new().unwrap();
    let link = format!("->{}", outside.path().display());
    let e = build_err(&[("root/etc/passwd.tmpl", &link)], Limits::default());
    assert!(
        matches!(e, BuildError::Template(TemplateError::Escape { .. })),
        "{e}"
    );
    // Absolute symlinks point inside the clone's own root: accepted (thesis listing 3.6).
    let tmp = tempfile::tempdir().unwrap();
    write_set(
        tmp.path(),
        "s",
        &[("root/etc/rc", "->/etc/init.d/register-clone")],
    );
    let c = crate::common::cluster("layers: [s]\nhosts: { c1: }\n");
    LayerBuilder::new(&c, &library(&[tmp.path()]), tmp.path().join("o"))
        .identity(identity())
        .build_all()
        .unwrap()
        .into_result()
        .unwrap();
}

#[test]
fn contradictory_sets_oversized_files_and_unknown_sets_are_refused() {
    let e = build_err(
        &[("root/etc/motd", "x"), ("root/etc/.wh.motd", "")],
        Limits::default(),
    );
    assert_msg(&e, &["clashes with its own whiteout"]);
    let e = build_err(
        &[("root/etc/hosts", "x"), ("root/etc/hosts.tmpl", "y")],
        Limits::default(),
    );
    assert_msg(&e, &["clashes with another file"]);
    let e = build_err(&[("root/.wh..wh..opq", "")], Limits::default());
    assert_msg(&e, &["hide the whole server root"]);
    let small = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    let e = build_err(&[("root/etc/big", "more than ten bytes")], small);
    assert_msg(&e, &["root/etc/big", "more than 10 per file"]);
    let e = build_err(
        &[("root/etc/x.tmpl", "{{name}}{{name}}{{name}}")],
        Limits {
            max_render_bytes: 4,
            ..Limits::default()
        },
    );
    assert_msg(&e, &["more than 4"]);
    let tmp = tempfile::tempdir().unwrap();
    let c = crate::common::cluster("layers: [nope]\nhosts: { c1: }\n");
    let e = LayerBuilder::new(&c, &library(&[tmp.path()]), tmp.path().join("o"))
        .identity(identity())
        .build_all()
        .unwrap_err();
    assert_msg(&e, &["template set `nope`", "clone `c1`"]);
}
