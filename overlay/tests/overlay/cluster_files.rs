//! Cluster-wide files and listings (`napalmctl clones --format …`).

use napalm_overlay::{ClusterFiles, Config, Format};

use crate::common::{annex_iv, cluster, identity};

#[test]
fn annex_iv_mpi_format_lists_24_hosts() {
    let c = Config::load(annex_iv()).unwrap().resolve().unwrap();
    let id = identity();
    let mpi = ClusterFiles::new(&c, &id).render("mpi".parse::<Format>().unwrap());
    let lines: Vec<&str> = mpi.lines().collect();
    assert_eq!(lines.len(), 24);
    assert_eq!(lines[0], "clone01");
    assert_eq!(lines[23], "clone24");
}

#[test]
fn every_format_renders() {
    let c = cluster(
        "server: 10.0.0.1\nslots: 2\naddress_pool: 10.0.1.1\nhosts:\n  n[1-3]:\n  n4: { slots: 8 }\n",
    );
    let id = identity();
    let f = ClusterFiles::new(&c, &id);
    assert_eq!(
        f.render(Format::Hosts).lines().skip(1).collect::<Vec<_>>(),
        [
            "10.0.1.1\tn1",
            "10.0.1.2\tn2",
            "10.0.1.3\tn3",
            "10.0.1.4\tn4"
        ]
    );
    assert_eq!(
        f.render(Format::Mpi),
        "n1 slots=2\nn2 slots=2\nn3 slots=2\nn4 slots=8\n"
    );
    let kh = f.render(Format::KnownHosts);
    assert!(kh.starts_with("n1,10.0.1.1 ssh-ed25519 AAAA"), "{kh}");
    assert_eq!(kh.lines().count(), 4);
    let json: serde_json::Value = serde_json::from_str(&f.render(Format::Json)).unwrap();
    assert_eq!(json[3]["values"]["slots"], 8);
    assert_eq!(json[0]["address"], "10.0.1.1");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&f.render(Format::Yaml)).unwrap();
    assert_eq!(yaml[1]["name"].as_str(), Some("n2"));
    let table = f.render(Format::Table);
    assert!(table.starts_with("NAME  INDEX  ADDRESS"), "{table}");
    assert!(
        table.contains("n4    3      10.0.1.4  -      base"),
        "{table}"
    );
    assert!("xml".parse::<Format>().unwrap_err().contains("known-hosts"));
}
