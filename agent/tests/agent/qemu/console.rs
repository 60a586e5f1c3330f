//! A guest's console kept by the agent: a pty console's output lands in the domain
//! directory and is served back over REST (`GET /domain/NAME/console`).

use super::*;

/// Like the coordinator's clones: the console on a `pty` serial only, nothing in a file
/// of the client's.
fn pty_domain_xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>vmlinuz</kernel><initrd>initrd.img</initrd>\
         <cmdline>console=ttyS0 panic=-1</cmdline></os>\
         <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
         <devices><serial type='pty'><target port='0'/></serial>\
         <console type='pty'><target type='serial' port='0'/></console>\
         <memballoon model='none'/></devices></domain>"
    )
}

/// The console lines the agent serves over REST (`GET /domain/NAME/console?lines=N`).
fn console_lines(a: &AgentProc, name: &str, n: usize) -> Vec<String> {
    let (out, _) = curl(&[&a.url(&format!("/domain/{name}/console?lines={n}"))]);
    out.lines().map(str::to_owned).collect()
}

/// Waits until the served console holds the initramfs's marker; returns how long it took.
fn wait_console_marker(a: &AgentProc, name: &str) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        if console_lines(a, name, 50)
            .iter()
            .any(|l| l.contains(MARKER))
        {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{name}: the marker never reached the kept console {}",
        a.state
            .join(format!("domains/{name}/console.log"))
            .display()
    );
}

#[test]
fn a_pty_consoles_output_is_kept_in_the_domain_dir_and_served() {
    ensure_libvirtd();
    let dir = workdir();
    let arts = Artifacts::built_in(dir.path());
    let xml = pty_domain_xml("q-console");
    let ar = dir.path().join("q-console.tar.gz");
    std::fs::write(
        &ar,
        crate::common::tar_gz(&[
            ("config.xml", xml.as_bytes()),
            ("vmlinuz", &arts.kernel),
            ("initrd.img", &arts.initrd),
        ]),
    )
    .expect("archive");
    let a = AgentProc::spawn(dir.path());
    let (code, err) = put_code(&format!("@{}", ar.display()), &a.url("/domain/q-console"));
    assert_eq!(code, "201", "create: {err}");
    let took = wait_console_marker(&a, "q-console");
    eprintln!("q-console: the initramfs's marker served from the kept console after {took:?}");

    // The file in the domain's directory holds what the kernel printed.
    let file = a.state.join("domains/q-console/console.log");
    let text = String::from_utf8_lossy(&std::fs::read(&file).expect("console file")).into_owned();
    assert!(text.contains("Linux version"), "{text}");
    assert!(text.contains("Run /init as init process"), "{text}");
    assert!(text.contains(MARKER), "{text}");
    // The API serves its last lines, the marker among them, cleaned of carriage returns.
    let last = console_lines(&a, "q-console", 5);
    assert!(!last.is_empty() && last.len() <= 5, "{last:?}");
    assert!(last.iter().any(|l| l.contains(MARKER)), "{last:?}");
    assert!(last.iter().all(|l| !l.contains('\r')), "{last:?}");
    // The typed client, as JSON.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let c = rt
        .block_on(async {
            napalm_agent::client::AgentClient::new(&a.url(""), Some(TOKEN.into()))
                .expect("client")
                .console("q-console", 200)
                .await
        })
        .expect("console over the client");
    assert!(c.logged);
    assert_eq!(c.lines.len(), 200, "the guest printed more than 200 lines");
    assert!(
        c.lines
            .iter()
            .any(|l| l.contains("Run /init as init process")),
        "{:?}",
        c.lines
    );

    // A new start begins a new console: the previous boot's lines are gone.
    let (s, _) = put(
        "<status><state>shutoff</state></status>",
        &a.url("/domain/q-console/status.xml?timeout=0"),
    );
    assert!(s.contains("<state>shutoff</state>"), "{s}");
    let (s, _) = put(
        "<status><state>running</state></status>",
        &a.url("/domain/q-console/status.xml"),
    );
    assert!(s.contains("<state>running</state>"), "{s}");
    wait_console_marker(&a, "q-console");
    let text = String::from_utf8_lossy(&std::fs::read(&file).expect("console file")).into_owned();
    assert_eq!(
        text.matches("Linux version").count(),
        1,
        "one boot in the console after a restart: {text}"
    );

    let (code, _) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "DELETE",
        &a.url("/domain/q-console"),
    ]);
    assert_eq!(code, "204");
    assert!(!file.exists(), "the console goes with the domain");
}
