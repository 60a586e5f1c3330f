//! Issue #13 on a real grid: the cluster PKI across network namespaces with the real
//! binaries. Each agent host enrolls with a join token an operator made for it (token →
//! CSR → certificate, the key generated in the agent's state directory), then serves and
//! calls over mutual TLS only; the coordinator serves no plain listener (no
//! `--insecure-plain`): its admin identity, written at first start, makes the join tokens,
//! and an operator logs in with it (`napalmctl login`) and deploys real
//! QEMU clones over the coordinator's TLS listener, which register over HTTPS verifying
//! the coordinator with the CA their layer carries (a busybox root with the host's curl);
//! the agents' 45 s certificates renew while the clones keep running and every agent
//! stays ready; an outsider in the client namespace without a cluster certificate gets
//! nothing from an agent.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use napalm_integration::grid::{
    clone_address, Grid, GridOptions, AGENT_GRPC, AGENT_HTTP, GRPC, HTTP, HTTPS,
};
use serde_json::Value;

/// A gRPC client that is not ours: `python3 SCRIPT CA ADDR [CERT KEY]` calls
/// `CoordinatorService/ListAgents` over TLS (the server must be `coordinator.napalm` of
/// the CA), with a token and, given CERT and KEY, a client certificate; prints
/// `status OK` or `status CODE details`.
const LIST_AGENTS_PY: &str = r#"import sys, grpc
ca, target = open(sys.argv[1], 'rb').read(), sys.argv[2]
cert = key = None
if len(sys.argv) > 4:
    cert, key = open(sys.argv[3], 'rb').read(), open(sys.argv[4], 'rb').read()
creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
ch = grpc.secure_channel(target, creds, options=[('grpc.ssl_target_name_override', 'coordinator.napalm')])
call = ch.unary_unary('/napalm.v1.CoordinatorService/ListAgents')
try:
    call(b'', timeout=10, metadata=[('authorization', 'Bearer napalm-grid-token')])
    print('status OK')
except grpc.RpcError as e:
    print('status', e.code().name, e.details())
"#;

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

/// The not-after of the certificate in `pem` (openssl, as an operator would read it).
fn not_after(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(pem)
        .output()
        .expect("openssl x509");
    assert!(
        out.status.success(),
        "openssl x509 {}: {out:?}",
        pem.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `napalmctl ARGS` in the server namespace with only the config `login` wrote: no
/// token anywhere, mutual TLS to the coordinator's TLS listener.
fn as_operator(g: &Grid, config: &Path, args: &[&str]) -> (bool, String, String) {
    let bin = napalm_integration::bins::napalmctl().expect("napalmctl");
    let out = g
        .server
        .command(bin)
        .env_remove("NAPALM_TOKEN")
        .env_remove("NAPALM_COORDINATOR")
        .env("NAPALM_CONFIG", config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("napalmctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `napalmctl deploy` of `count` small QEMU clones of "trusted", as the operator.
fn deploy_as_operator(g: &Grid, config: &Path, count: u32) -> (bool, String, String) {
    let count = count.to_string();
    let args = [
        "deploy",
        "--name",
        "trusted",
        "--count",
        &count,
        "--memory",
        "128M",
        "--hypervisor",
        "qemu",
    ];
    as_operator(g, config, &args)
}

fn agents(g: &Grid) -> Vec<Value> {
    let out = g
        .napalmctl(&["--output", "json", "agents"])
        .expect("napalmctl agents");
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Boot id of each registered clone of `dep`, read inside the clone.
fn boot_ids(g: &Grid, dep: &str) -> BTreeMap<String, String> {
    g.clones(dep)
        .expect("clones")
        .iter()
        .filter(|c| s(c, "phase") == "registered")
        .map(|c| {
            let id = g
                .clone_sh(
                    &clone_address(c),
                    "cat /proc/sys/kernel/random/boot_id",
                    Duration::from_secs(20),
                )
                .expect("the clone's shell answers");
            (s(c, "clone"), id.trim().to_owned())
        })
        .collect()
}

fn wait_registered(g: &Grid, dep: &str, n: usize, within: Duration) {
    let t = Instant::now();
    loop {
        let c = g.clones(dep).expect("clones");
        if c.len() == n && c.iter().all(|c| s(c, "phase") == "registered") {
            return;
        }
        assert!(
            t.elapsed() < within,
            "{n} clones of {dep} not registered within {within:?}: {c:#?}\nlogs in {}",
            g.dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What `sh -c SCRIPT` prints (stdout) in the client namespace: an outsider's view.
fn from_client(g: &Grid, script: &str) -> String {
    let out = g
        .client
        .command("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("sh in the client namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `openssl s_client` gets from `addr` without a client certificate, from the
/// client namespace: the listener must close the handshake (or the connection) on it.
fn outsider_refused(g: &Grid, addr: &str) -> String {
    from_client(
        g,
        &format!(
            "printf 'GET /domains HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | \
             timeout 10 openssl s_client -connect {addr} -quiet -verify_quiet 2>&1"
        ),
    )
}

#[test]
fn agents_enroll_across_namespaces_and_renew_while_clones_run_over_mutual_tls() {
    const TTL: Duration = Duration::from_secs(45);
    // Clones register over HTTPS, verifying the coordinator with the CA their layer
    // carries: the busybox root with the host's curl (busybox wget cannot).
    let cache = GridOptions::default().cache;
    let root = napalm_integration::rootfs::busybox_root_with(
        &cache,
        "curl",
        &[Path::new("/usr/bin/curl")],
        &[],
    )
    .expect("the busybox root with curl");
    let opts = GridOptions {
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        trust_cert_ttl: Some(TTL),
        register_over_https: true,
        root: Some(root),
        insecure_plain: false,
        ..Default::default()
    };
    // Grid::start returns once both agents are ready: each enrolled with its own token
    // (made by napalmctl with the admin identity) and registered over mutual TLS (they
    // were given no shared token).
    let g = Grid::start(opts, "trusted").expect("starting the grid with the PKI");

    // No plain listener: from the client namespace, the coordinator's plain gRPC and HTTP
    // ports refuse the connection (curl's 7).
    for port in [GRPC, HTTP] {
        let said = from_client(
            &g,
            &format!(
                "curl -sS -m 5 http://{}:{port}/healthz; echo \"exit $?\"",
                g.server.addr
            ),
        );
        assert!(
            said.contains("exit 7"),
            "plain port {port} answered without --insecure-plain: {said}"
        );
    }
    assert!(
        g.admin_identity().join("operator.key").exists(),
        "the admin identity written at first start"
    );
    // The API on the TLS listener, called by Debian's Python grpcio as an outside client
    // from the client namespace: it verifies the coordinator with the CA, but without a
    // certificate of its own it gets UNAUTHENTICATED, whatever token it sends; with the
    // admin identity's certificate the same call is answered.
    let script = g.dir.join("list-agents.py");
    std::fs::write(&script, LIST_AGENTS_PY).expect("the client script");
    let list_agents = |identity: &[&Path]| {
        let out = g
            .client
            .command("/usr/bin/python3")
            .arg(&script)
            .arg(g.admin_identity().join("ca.crt"))
            .arg(g.trust_addr())
            .args(identity)
            .output()
            .expect("python3 runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let said = list_agents(&[]);
    assert!(
        said.starts_with("status UNAUTHENTICATED"),
        "an outsider's gRPC call on the TLS listener: {said}"
    );
    let admin = g.admin_identity();
    let said = list_agents(&[&admin.join("operator.crt"), &admin.join("operator.key")]);
    assert!(said.starts_with("status OK"), "the admin's call: {said}");

    // Both join tokens were used, each by one agent, and are listed without secrets.
    let out = g
        .napalmctl(&["--output", "json", "agent", "token", "list"])
        .expect("token list");
    let tokens: Value = serde_json::from_slice(&out.stdout).expect("token list json");
    let tokens = tokens.as_array().expect("array");
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let ids: Vec<String> = agents(&g).iter().map(|a| s(a, "id")).collect();
    for t in tokens {
        assert_eq!(s(t, "state"), "used", "{t}");
        assert!(ids.contains(&s(t, "used_by")), "{t} used by one of {ids:?}");
    }
    for i in 0..2 {
        let key = g.dir.join(format!("agent{i}/tls/agent.key"));
        assert!(key.exists(), "agent {i}'s key was made on its host");
    }

    // An operator logs in (key made here, certificate over mutual TLS with the admin
    // identity) and from then on deploys with that certificate alone.
    let login_dir = g.dir.join("ops-login");
    let out = g
        .napalmctl(&[
            "login",
            "--name",
            "ops",
            "--dir",
            &login_dir.display().to_string(),
        ])
        .expect("napalmctl login");
    assert!(out.status.success(), "login: {out:?}");
    let config = login_dir.join("napalmctl.yaml");
    let written = std::fs::read_to_string(&config).expect("config");
    assert!(
        written.contains(&format!("https://{}", g.trust_addr())),
        "{written}"
    );
    let t = Instant::now();
    let (ok, out, err) = deploy_as_operator(&g, &config, 4);
    assert!(
        ok,
        "deploy over mutual TLS: {out}\n{err}\nlogs in {}",
        g.dir.display()
    );
    wait_registered(&g, "trusted", 4, Duration::from_secs(240));
    eprintln!(
        "4 clones deployed over mutual TLS, registered {:.1} s after the deploy began",
        t.elapsed().as_secs_f64()
    );
    let before = boot_ids(&g, "trusted");
    assert_eq!(before.len(), 4, "{before:?}");
    // They registered over HTTPS (their hook knows no other URL), and the coordinator's
    // certificate verifies inside a clone against the CA in its layer, and only so.
    let first = g.clones("trusted").expect("clones").remove(0);
    let https = format!("https://{}", g.server.addr);
    let seen = g
        .clone_sh(
            &clone_address(&first),
            &format!(
                "grep -c '^URL=\"{https}' /usr/local/sbin/napalm-register-clone; \
                 curl -sS --cacert /etc/napalm/ca.crt {https}:{HTTPS}/healthz; \
                 curl -sS -o /dev/null {https}:{HTTPS}/healthz; echo \"without the CA: $?\""
            ),
            Duration::from_secs(30),
        )
        .expect("the clone's shell");
    assert!(
        // Without the layer's CA curl refuses: 60 (not verified) or 77 (this root has no
        // CA bundle of its own to try).
        seen.starts_with("1\nok\n")
            && (seen.contains("without the CA: 60") || seen.contains("without the CA: 77")),
        "registration over HTTPS, verified with the layer's CA: {seen}"
    );

    // Renewal: each agent's certificate is replaced at two thirds of its 45 s while its
    // clones run; every agent answers ready at every look meanwhile.
    let certs: Vec<_> = (0..2)
        .map(|i| g.dir.join(format!("agent{i}/tls/agent.crt")))
        .collect();
    let first: Vec<String> = certs.iter().map(|c| not_after(c)).collect();
    let t = Instant::now();
    let mut looks = 0;
    loop {
        let a = agents(&g);
        assert_eq!(a.len(), 2, "{a:?}");
        for a in &a {
            assert!(
                s(a, "state").eq_ignore_ascii_case("ready"),
                "agent {} not ready during renewal: {a}\nlogs in {}",
                s(a, "name"),
                g.dir.display()
            );
        }
        looks += 1;
        let now: Vec<String> = certs.iter().map(|c| not_after(c)).collect();
        if now.iter().zip(&first).all(|(n, f)| n != f) {
            eprintln!(
                "both agents renewed {:.1} s after the first look ({looks} looks, all ready): {first:?} -> {now:?}",
                t.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            t.elapsed() < TTL * 2,
            "certificates not renewed within {:?}: {first:?} -> {now:?}\nlogs in {}",
            TTL * 2,
            g.dir.display()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The clones never noticed: same boots, still registered.
    assert_eq!(boot_ids(&g, "trusted"), before, "no clone rebooted");
    // The coordinator reaches the renewed agents over new connections: one clone more.
    let (ok, out, err) = deploy_as_operator(&g, &config, 5);
    assert!(ok, "scale to 5 after renewal: {out}\n{err}");
    wait_registered(&g, "trusted", 5, Duration::from_secs(180));

    // An outsider without a cluster certificate gets nothing from an agent: neither its
    // REST API nor its gRPC answers (the handshake needs a client certificate).
    for port in [AGENT_HTTP, AGENT_GRPC] {
        let addr = format!("{}:{port}", g.agent_hosts[0].addr);
        let said = outsider_refused(&g, &addr);
        assert!(
            !said.contains("HTTP/1.1 200") && !said.contains("\"domains\""),
            "{addr} answered an outsider: {said}"
        );
        assert!(
            said.contains("alert") || said.contains("error") || said.contains("errno"),
            "{addr}: the handshake should be refused: {said}"
        );
    }

    let (ok, _, err) = as_operator(&g, &config, &["undeploy", "trusted"]);
    assert!(ok, "undeploy over mutual TLS: {err}");
}
