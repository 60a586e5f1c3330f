//! Ganglia: Debian's `gmetad` polls the agent's gmond XML.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use napalm_integration::grid::AGENT_GANGLIA;
use napalm_integration::proc::{wait_for, Daemon};

use super::*;

#[test]
fn gmetad_polls_the_agent_ganglia_xml() {
    let mut g = start(false);
    create_with_curl(&g, "c-gmond");

    let dir = g.dir.join("gmetad");
    std::fs::create_dir_all(dir.join("rrds")).expect("mkdir");
    let conf = format!(
        "data_source \"napalm\" 1 {}\ngridname \"napalm-clients\"\nsetuid off\n\
         rrd_rootdir \"{}\"\nxml_port 8651\ninteractive_port 8652\n",
        g.agent_addr(AGENT_GANGLIA),
        dir.join("rrds").display()
    );
    std::fs::write(dir.join("gmetad.conf"), conf).expect("gmetad.conf");
    let gmetad = g
        .client
        .command("gmetad")
        .args(["-d", "1", "-c"])
        .arg(dir.join("gmetad.conf"))
        .arg("-p")
        .arg(dir.join("gmetad.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log(&dir, "gmetad.log"))
        .spawn()
        .expect("gmetad (Debian package gmetad)");
    let mut gmetad = Daemon(gmetad);

    let xml_port: SocketAddr = "127.0.0.1:8651".parse().expect("addr");
    let client = g.client.clone();
    let seen = wait_for(Duration::from_secs(40), || {
        read_all(&client, xml_port).filter(|x| x.contains("<HOST NAME=\"c-gmond\""))
    });
    let Some(xml) = seen else {
        let log = std::fs::read_to_string(dir.join("gmetad.log")).unwrap_or_default();
        let state = gmetad.0.try_wait();
        g.fail(&format!(
            "gmetad never showed the agent's domain ({state:?}):\n{log}"
        ));
    };
    assert!(xml.contains("<GRID NAME=\"napalm-clients\""), "{xml}");
    // The grid names each agent's cluster after its host (`--ganglia-cluster`).
    let cluster = g.agent_cluster(0);
    assert!(
        xml.contains(&format!("<CLUSTER NAME=\"{cluster}\"")),
        "{xml}"
    );
    // The agent's own host carries the standard gmond metrics; the domain its own.
    assert!(xml.contains("TAGS=\"napalm-agent\""), "{xml}");
    assert!(xml.contains("TAGS=\"napalm-domain\""), "{xml}");
    let domain = &xml[xml.find("<HOST NAME=\"c-gmond\"").expect("domain host")..];
    let domain = &domain[..domain.find("</HOST>").expect("host ends")];
    assert!(
        domain.contains("<METRIC NAME=\"cpu_num\" VAL=\"1\""),
        "{domain}"
    );
    // gmetad's interactive port answers a query for just that host.
    let client = g.client.clone();
    let query = format!("/{cluster}/c-gmond\n");
    let q = client
        .spawn(move || {
            use std::io::Write;
            let mut s = TcpStream::connect_timeout(
                &"127.0.0.1:8652".parse().expect("addr"),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(query.as_bytes()).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .expect("enter namespace")
        .join()
        .ok()
        .flatten()
        .unwrap_or_default();
    assert!(
        q.contains("<HOST NAME=\"c-gmond\""),
        "interactive query: {q}"
    );
    assert!(
        !q.contains("TAGS=\"napalm-agent\""),
        "query not filtered: {q}"
    );
    gmetad.kill();
}
