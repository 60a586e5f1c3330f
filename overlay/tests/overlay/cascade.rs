//! clones.conf: annex IV, the cascade, overrides, ranges, addresses, provenance.

use napalm_overlay::provenance::Level;
use napalm_overlay::Config;
use serde_json::json;

use crate::common::{annex_iv, cluster, data};

#[test]
fn annex_iv_loads_unchanged_with_24_clones() {
    let config = Config::load(annex_iv()).unwrap();
    let c = config.resolve().unwrap();
    assert_eq!(c.len(), 24);
    assert_eq!(c.server.as_deref(), Some("10.0.0.1"));
    let names: Vec<&str> = c.clones.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names[0], "clone01");
    assert_eq!(names[23], "clone24");
    let c07 = c.get("clone07").unwrap();
    assert_eq!(c07.index, 6);
    assert_eq!(c07.group.as_deref(), Some("attack of the clones"));
    assert_eq!(c07.layers, ["base"]);
    let home = &c07.values["os_home_fs_options"];
    assert_eq!(home.value, json!("nfsvers=3"));
    assert_eq!((home.origin.line, home.origin.col), (11, 1));
    assert_eq!(home.origin.level, Level::Global);
    assert!(home.origin.file.ends_with("annex-iv-clones.conf"));
    assert_eq!(c07.values["os_root_device"].value, json!("10.0.0.1:/"));
    // `name` is computed, at the host's line (listing line 24).
    assert_eq!(c07.values["name"].origin.line, 24);
}

#[test]
fn annex_iv_as_extracted_also_gives_24_clones() {
    let c = Config::load(data("annex-iv-clones.flattened.conf"))
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(c.len(), 24);
    assert_eq!(c.get("clone24").unwrap().group, None);
}

/// Figure 3.1 of the thesis: cloneA gets a = stallman, cloneB keeps a = thompson from its
/// grandparent and overrides b.
const FIGURE_3_1: &str = "\
a: thompson
groups:
  groupe1:
    a: torvalds
    hosts: { other: }
  groupe2:
    b: ritchie
    hosts:
      cloneA:
        a: stallman
      cloneB:
        b: kernighan
";

#[test]
fn cascade_of_figure_3_1() {
    let c = cluster(FIGURE_3_1);
    let a = c.get("cloneA").unwrap();
    assert_eq!(a.values["a"].value, json!("stallman"));
    assert_eq!(a.values["a"].origin.line, 10);
    assert_eq!(a.values["a"].origin.level, Level::Host("cloneA".into()));
    assert_eq!(a.values["a"].overridden.len(), 1);
    assert_eq!(a.values["a"].overridden[0].origin.line, 1);
    assert_eq!(a.values["b"].value, json!("ritchie"));
    let b = c.get("cloneB").unwrap();
    assert_eq!(b.values["a"].value, json!("thompson"));
    assert_eq!(b.values["a"].origin.level, Level::Global);
    assert_eq!(b.values["b"].value, json!("kernighan"));
    assert_eq!(b.values["b"].overridden[0].origin.line, 7);
    assert_eq!(
        b.values["b"].overridden[0].origin.level,
        Level::Group("groupe2".into())
    );
    assert_eq!(c.get("other").unwrap().values["a"].value, json!("torvalds"));
    let explained: Vec<String> = b.explain().iter().map(|e| e.to_string()).collect();
    let line = explained.iter().find(|l| l.starts_with("b = ")).unwrap();
    assert!(
        line.contains("test.conf:12:9 (host `cloneB`)") && line.contains("overrides test.conf:7:5"),
        "{line}"
    );
}

#[test]
fn nested_groups_ranges_and_address_pools() {
    let c = cluster(
        "\
server: 10.0.0.1
slots: 1
groups:
  outer:
    address_pool: 10.0.1.10
    layers: [base, mpi]
    groups:
      inner:
        slots: 4
        hosts:
          n[1-3]:
          n4: { address: 10.0.9.9, slots: 8 }
    hosts:
      o[08-10]:
hosts:
  head: { address: 10.0.0.2, layers: [base] }
",
    );
    let names: Vec<&str> = c.clones.iter().map(|c| c.name.as_str()).collect();
    // Document order: `groups:` comes before `hosts:` at both levels.
    assert_eq!(names, ["n1", "n2", "n3", "n4", "o08", "o09", "o10", "head"]);
    let n2 = c.get("n2").unwrap();
    assert_eq!(n2.group.as_deref(), Some("outer/inner"));
    assert_eq!(n2.values["slots"].value, json!(4));
    assert_eq!(n2.values["slots"].overridden.len(), 1);
    assert_eq!(n2.layers, ["base", "mpi"]);
    // One pool (one `address_pool` line) shared in clone order; n4 has its own address.
    assert_eq!(n2.address.unwrap().to_string(), "10.0.1.11");
    assert_eq!(
        c.get("o08").unwrap().address.unwrap().to_string(),
        "10.0.1.13"
    );
    assert_eq!(n2.values["address"].origin.level, Level::Computed);
    assert_eq!(
        c.get("n4").unwrap().address.unwrap().to_string(),
        "10.0.9.9"
    );
    assert_eq!(c.get("n4").unwrap().values["slots"].value, json!(8));
    assert_eq!(c.get("head").unwrap().layers, ["base"]);
    assert_eq!(c.get("head").unwrap().group, None);
}

#[test]
fn programmatic_configuration_for_generated_deployments() {
    let mut config = Config::new("<deploy 42>");
    config.global().set("server", json!("10.0.0.1"));
    let g = config.global().group("workers");
    g.set("layers", json!(["base", "mpi"]))
        .set("address_pool", json!("10.0.2.1"));
    g.add_hosts("w[1-8]", [("slots".to_string(), json!(2))]);
    let c = config.resolve().unwrap();
    assert_eq!(c.len(), 8);
    let w8 = c.get("w8").unwrap();
    assert_eq!(w8.address.unwrap().to_string(), "10.0.2.8");
    assert_eq!(
        w8.values["slots"].origin.to_string(),
        "<deploy 42> (host `w[1-8]`)"
    );
    assert_eq!(w8.values["server"].origin.level, Level::Global);
}
