//! Clone registration over HTTP(S) (issue 13, the clone side): the clone token travels in
//! `Authorization: Bearer`, a token in the URL is refused with what to do; with the
//! cluster PKI the endpoint is also served over TLS with the coordinator's certificate,
//! which real curl verifies with the CA the clone's layer carries (and refuses without
//! it); the rendered base-set hook itself registers a clone over HTTPS, with curl and
//! with busybox wget; the layer's secrets are root-only and the layers directory is
//! closed to other users.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use napalm_coordinator::testing::{spec, GridOptions, TestGrid};
use napalm_coordinator::trust::TrustConfig;
use napalm_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deploy::{run, TOKEN};

/// `POST /v1/clones/register` + `query` with `headers` and a JSON body; status and body.
async fn post(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = format!(
        "POST /v1/clones/register{query} HTTP/1.0\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

async fn phase(grid: &TestGrid, name: &str) -> (ClonePhase, Vec<String>) {
    let c = grid
        .client()
        .await
        .expect("client")
        .get_clone(GetCloneRequest { name: name.into() })
        .await
        .expect("clone")
        .into_inner();
    (c.phase(), c.addresses)
}

async fn deploy(grid: &TestGrid, name: &str, count: u32) {
    let (_, summary) = run(grid
        .client()
        .await
        .expect("client")
        .deploy(DeployRequest {
            request_id: format!("deploy-{name}"),
            spec: Some(spec(name, count)),
            dry_run: false,
        })
        .await)
    .await;
    assert_eq!(summary.failed, 0, "{summary:?}");
}

#[tokio::test]
async fn the_clone_token_travels_in_a_header_and_a_token_in_the_url_is_refused() {
    let grid = TestGrid::start(GridOptions {
        agents: 1,
        agent_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .expect("grid starts");
    deploy(&grid, "hdr", 2).await;
    let http = grid.coordinator.http_addr();
    let tokens = grid.coordinator.tokens();
    let body = |n: &str| serde_json::json!({"name": n, "address": "10.77.0.150"}).to_string();

    // The old form: the token in the query string. Refused, and the answer says what to
    // do without repeating the secret.
    let t1 = tokens.token("hdr-01");
    let (status, answer) = post(http, &format!("?token={t1}"), &[], &body("hdr-01")).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("must not travel in the URL")
            && answer.contains("Authorization: Bearer TOKEN")
            && answer.contains("token=…"),
        "{answer}"
    );
    assert!(
        !answer.contains(&t1),
        "the answer repeats the token: {answer}"
    );
    // Even with the header as well: the token was in the URL, so it is refused.
    let bearer = format!("Bearer {t1}");
    let (status, answer) = post(
        http,
        &format!("?token={t1}"),
        &[("Authorization", &bearer)],
        &body("hdr-01"),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(phase(&grid, "hdr-01").await.0, ClonePhase::Running);

    // No token at all: 401 naming the header.
    let (status, answer) = post(http, "", &[], &body("hdr-01")).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("Authorization: Bearer TOKEN"), "{answer}");
    // Another clone's token: 401.
    let other = format!("Bearer {}", tokens.token("hdr-02"));
    let (status, answer) = post(http, "", &[("Authorization", &other)], &body("hdr-01")).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(phase(&grid, "hdr-01").await.0, ClonePhase::Running);

    // Its own token in the header: registered.
    let (status, answer) = post(http, "", &[("Authorization", &bearer)], &body("hdr-01")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        phase(&grid, "hdr-01").await,
        (ClonePhase::Registered, vec!["10.77.0.150".to_owned()])
    );
    // The other header form works too.
    let t2 = tokens.token("hdr-02");
    let (status, answer) = post(http, "", &[("X-Napalm-Clone-Token", &t2)], &body("hdr-02")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(phase(&grid, "hdr-02").await.0, ClonePhase::Registered);

    // The layer: the URL carries no token, the token is a root-only file.
    let root = grid.dir.path().join("layers/hdr/hdr-01/root");
    let hook =
        std::fs::read_to_string(root.join("usr/local/sbin/napalm-register-clone")).expect("hook");
    assert!(
        hook.contains("URL=\"http://10.77.0.1:7780/v1/clones/register\"") && !hook.contains(&t1),
        "{hook}"
    );
    let token_file = root.join("etc/napalm/register-token");
    assert_eq!(
        std::fs::read_to_string(&token_file).expect("token file"),
        format!("{t1}\n")
    );
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&root.join("etc/ssh/ssh_host_ed25519_key")), 0o600);
    // Without the PKI there is no CA to carry.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/napalm/ca.crt")).expect("ca.crt"),
        ""
    );
    // Other users of the server cannot reach any clone's layer.
    assert_eq!(mode(&grid.dir.path().join("layers")), 0o700);
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `cmd` off the async workers.
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("spawn"))
        .await
        .expect("join")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A PATH directory holding only busybox applets (`wget` among them, no curl): what a
/// busybox clone has.
fn busybox_path(dir: &Path) -> Option<PathBuf> {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())?;
    let bin = dir.join("busybox-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for applet in [
        "sh", "wget", "ip", "awk", "cut", "cat", "hostname", "sleep", "grep", "head", "mkdir",
    ] {
        std::os::unix::fs::symlink(busybox, bin.join(applet)).expect("symlink");
    }
    Some(bin)
}

#[tokio::test]
async fn with_the_pki_clones_register_over_https_verified_with_the_ca_in_their_layer() {
    let grid = TestGrid::start_with(
        GridOptions {
            agents: 1,
            agent_token: Some(TOKEN.into()),
            ..Default::default()
        },
        |c| {
            c.trust = Some(TrustConfig::loopback());
            c.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            // Filled with https:// and the bound HTTPS address.
            if let Some(d) = c.deploy.as_mut() {
                d.register_base = String::new();
            }
        },
    )
    .await
    .expect("grid starts");
    let https = grid.coordinator.https_addr().expect("HTTPS is served");
    let ca_pem = grid.coordinator.trust().expect("trust").ca_pem().to_owned();
    deploy(&grid, "tls", 3).await;
    let root = |n: &str| grid.dir.path().join(format!("layers/tls/{n}/root"));
    let ca = root("tls-01").join("etc/napalm/ca.crt");
    assert_eq!(std::fs::read_to_string(&ca).expect("ca.crt"), ca_pem);
    assert_eq!(mode(&ca), 0o644);
    assert_eq!(
        mode(&root("tls-01").join("etc/napalm/register-token")),
        0o600
    );
    let base = format!("https://{https}");
    let hook = root("tls-01").join("usr/local/sbin/napalm-register-clone");
    assert!(
        std::fs::read_to_string(&hook)
            .expect("hook")
            .contains(&format!("URL=\"{base}/v1/clones/register\"")),
        "the register URL is the HTTPS endpoint"
    );

    // curl, an outside client: verifies the coordinator with the CA...
    let mut c = Command::new("curl");
    c.args(["-sS", "--cacert"])
        .arg(&ca)
        .arg(format!("{base}/healthz"));
    let o = output(c).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n");
    // ...and refuses it without (the system's CAs do not know the cluster CA): exit 60,
    // "SSL certificate problem".
    let mut c = Command::new("curl");
    c.args(["-sS"]).arg(format!("{base}/healthz"));
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(60), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("certificate"),
        "{}",
        text(&o)
    );
    // A token in the URL is refused over HTTPS too.
    let t2 = grid.coordinator.tokens().token("tls-02");
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"name":"tls-02"}"#)
        .arg(format!("{base}/v1/clones/register?token={t2}"));
    let o = output(c).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.ends_with("\n400"), "{}", text(&o));
    assert!(out.contains("Authorization: Bearer TOKEN"), "{out}");

    // The rendered hook itself, with real curl: registers tls-01 over HTTPS.
    let mut c = Command::new("sh");
    c.arg(&hook)
        .env("NAPALM_ROOT", root("tls-01"))
        .env("NAPALM_NO_WATCHER", "1");
    let o = output(c).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(phase(&grid, "tls-01").await.0, ClonePhase::Registered);

    // A layer whose CA is not the coordinator's: curl refuses the server, nothing is
    // registered.
    let fake = tempfile::tempdir().expect("tmp");
    let other = napalm_trust::ClusterCa::generate("other", 1_790_000_000).expect("ca");
    let froot = fake.path().join("root");
    std::fs::create_dir_all(froot.join("etc/napalm")).expect("mkdir");
    std::fs::copy(
        root("tls-02").join("etc/napalm/register-token"),
        froot.join("etc/napalm/register-token"),
    )
    .expect("copy");
    std::fs::write(froot.join("etc/napalm/ca.crt"), other.cert_pem()).expect("write");
    let mut c = Command::new("sh");
    c.arg(root("tls-02").join("usr/local/sbin/napalm-register-clone"))
        .env("NAPALM_ROOT", &froot)
        .env("NAPALM_NO_WATCHER", "1");
    let o = output(c).await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("certificate"),
        "{}",
        text(&o)
    );
    assert_eq!(phase(&grid, "tls-02").await.0, ClonePhase::Running);

    // A busybox clone (only busybox applets): busybox 1.35's wget does TLS without
    // verifying anything and sends no signature_algorithms extension, which rustls
    // requires: the handshake fails, the hook says why, nothing is registered.
    let tmp = tempfile::tempdir().expect("tmp");
    let bin = busybox_path(tmp.path()).expect("busybox on this host (scripts/setup installs it)");
    let busybox_hook = |hook: &Path| {
        let mut c = Command::new(bin.join("sh"));
        c.arg(hook)
            .env("PATH", &bin)
            .env("NAPALM_ROOT", root("tls-03"))
            .env("NAPALM_NO_WATCHER", "1");
        c
    };
    let o = output(busybox_hook(
        &root("tls-03").join("usr/local/sbin/napalm-register-clone"),
    ))
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("TLS certificate validation not implemented")
            && err.contains("handshake failure")
            && err.contains("put curl or GNU wget in the root"),
        "{}",
        text(&o)
    );
    assert_eq!(phase(&grid, "tls-03").await.0, ClonePhase::Running);
    // The same hook over plain HTTP: busybox wget sends the token in its header.
    let script =
        std::fs::read_to_string(root("tls-03").join("usr/local/sbin/napalm-register-clone"))
            .expect("hook");
    let plain = tmp.path().join("register-over-http");
    std::fs::write(
        &plain,
        script.replace(&base, &format!("http://{}", grid.coordinator.http_addr())),
    )
    .expect("write");
    let o = output(busybox_hook(&plain)).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(phase(&grid, "tls-03").await.0, ClonePhase::Registered);
}
