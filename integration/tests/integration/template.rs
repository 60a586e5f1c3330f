//! Clones started from their agent's template (`napalm-coordinator --boot-from-template
//! true`): real QEMU (TCG) clones on two agents sharing this host's libvirtd; each boots
//! one template guest for their shape, saves it while napalm-init waits, and starts each
//! of its clones by restoring it with the clone's own command line in QEMU's fw_cfg. Each must come up as itself: its own MAC,
//! name and address, the host's time, and random numbers of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use napalm_integration::grid::{clone_address, Grid, GridOptions};
use serde_json::Value;

use crate::bench::deploy_with;

/// The MAC libvirt gave domain `name`'s NIC.
fn libvirt_mac(name: &str) -> String {
    let text = virsh(&["domiflist", name]);
    text.split_whitespace()
        .find(|w| w.len() == 17 && w.matches(':').count() == 5)
        .unwrap_or_else(|| panic!("no MAC in virsh domiflist {name}:\n{text}"))
        .to_owned()
}

/// What a clone script printed after `tag=` on its line.
fn field<'a>(out: &'a str, tag: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{tag}=")))
        .unwrap_or_default()
        .trim()
}

#[test]
fn clones_restored_from_one_template_each_come_up_as_themselves() {
    // Two agents on this host's one libvirtd, as in the demo: each makes its own template.
    let g = template_grid(2, "gridt");
    // All three register (deploy_with fails the test otherwise).
    deploy_with(&g, "gridt", 3, "128M");

    // One template per agent for the clones it runs: one image in each agent's templates.
    let clones: Vec<Value> = g.clones("gridt").expect("napalmctl clones");
    assert_eq!(clones.len(), 3, "{clones:?}");
    for i in 0..2 {
        let id = std::fs::read_to_string(g.dir.join(format!("agent{i}/agent-id")))
            .expect("the agent's id");
        let runs = clones.iter().filter(|c| c["agent"] == id.trim()).count();
        let templates = g.dir.join(format!("agent{i}/templates"));
        let images: Vec<_> = std::fs::read_dir(&templates)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("image").is_file())
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            images.len(),
            usize::from(runs > 0),
            "agent{i} runs {runs} clones; template images in {}: {images:?}",
            templates.display()
        );
    }
    // The template's guest is gone once saved: only the clones run.
    assert!(template_guests(&g).is_empty(), "{:?}", g.domains());

    let mut randoms = Vec::new();
    for c in &clones {
        let name = c["clone"].as_str().expect("a clone has a name").to_owned();
        let addr = clone_address(c);
        assert!(
            g.wait_clone_shell(&addr, Duration::from_secs(90)),
            "the shell of {name} at {addr}; logs in {}",
            g.dir.display()
        );
        let out = g
            .clone_sh(
                &addr,
                "echo mac=$(cat /sys/class/net/e*/address)\n\
                 echo host=$(hostname)\n\
                 echo addr=$(ip -4 -o addr show scope global 2>/dev/null | awk '{print $4}')\n\
                 echo now=$(date +%s)\n\
                 echo random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n')\n\
                 echo bootid=$(cat /proc/sys/kernel/random/boot_id)\n\
                 echo own=$(cat /proc/cmdline)\n\
                 echo boot=$(cat /run/napalm/boot.json)",
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("the shell of {name}: {e}"));
        assert_eq!(
            field(&out, "mac"),
            libvirt_mac(&name),
            "{name}'s NIC has the template's MAC, not its own:\n{out}"
        );
        assert_eq!(field(&out, "host"), name, "{out}");
        assert!(
            field(&out, "addr").starts_with(&format!("{addr}/")),
            "{name} has not its address {addr}:\n{out}"
        );
        let host_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the host's clock")
            .as_secs() as i64;
        let guest_now: i64 = field(&out, "now").parse().unwrap_or(0);
        assert!(
            (host_now - guest_now).abs() <= 30,
            "{name}'s clock says {guest_now}, the host's {host_now}:\n{out}"
        );
        let boot: Value = serde_json::from_str(field(&out, "boot"))
            .unwrap_or_else(|e| panic!("{name}'s boot.json: {e}\n{out}"));
        assert_eq!(boot["template"], true, "{name} booted cold: {boot}");
        let restored = boot["restored_at_s"].as_f64().unwrap_or(0.0);
        assert!(restored > 0.0, "{boot}");
        // A figure, not an assertion: the guest's part from its restore to /sbin/init.
        if let Some(init) = boot["timings"]["exec_init"].as_f64() {
            println!(
                "{name}: restored -> /sbin/init {:.3} s (guest clock)",
                init - restored
            );
        }
        // Its own command line where its scripts look (the kernel's is the template's).
        assert!(
            field(&out, "own").contains(&format!(":{name}:")),
            "{name}'s /proc/cmdline is not its own:\n{out}"
        );
        randoms.push((name.clone(), field(&out, "random").to_owned()));
        randoms.push((format!("{name} boot_id"), field(&out, "bootid").to_owned()));
    }
    for (i, (a, ra)) in randoms.iter().enumerate() {
        assert!(ra.len() >= 32, "{a}: {ra:?}");
        for (b, rb) in &randoms[i + 1..] {
            assert_ne!(
                ra, rb,
                "{a} and {b} read the same random bytes: restored with one random state"
            );
        }
    }
}

fn virsh(args: &[&str]) -> String {
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The template guests of `g`'s agents libvirt has (running: they are transient).
fn template_guests(g: &Grid) -> Vec<String> {
    g.domains()
        .into_iter()
        .filter(|d| d.starts_with("napalm-tpl-"))
        .collect()
}

/// A grid of `agents` whose coordinator starts clones from templates.
fn template_grid(agents: usize, name: &str) -> Grid {
    let opts = GridOptions {
        agents,
        keep: std::env::var_os("NAPALM_KEEP_GRID").is_some(),
        coordinator_args: vec!["--boot-from-template".into(), "true".into()],
        ..Default::default()
    };
    Grid::start(opts, name).expect("starting the grid")
}

#[test]
fn an_agent_killed_while_it_makes_a_template_leaves_no_guest_and_its_clones_come_up() {
    use std::process::Stdio;
    let mut g = template_grid(1, "gridu");
    let child = g
        .napalmctl_command()
        .expect("napalmctl")
        .args(["deploy", "--hypervisor", "qemu", "--memory", "128M"])
        .args(["--name", "gridu", "--count", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning napalmctl deploy");
    // The agent is making the template: its guest runs, napalm-init not yet waiting.
    let guest = napalm_integration::proc::wait_for(Duration::from_secs(120), || {
        template_guests(&g).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no template guest started; logs in {}", g.dir.display()));
    g.kill_agent(0);
    // libvirtd keeps it running: nobody else would ever stop it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        template_guests(&g).contains(&guest),
        "{guest} went with its agent"
    );
    g.start_agent(0).expect("agent back");
    let gone = napalm_integration::proc::wait_for(Duration::from_secs(60), || {
        (!template_guests(&g).contains(&guest)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the restarted agent left its template guest {guest} running; logs in {}",
        g.dir.display()
    );
    crate::grid::finish(child, Duration::from_secs(300));
    // No second deploy: the coordinator's loop brings both clones up.
    crate::grid::converged(&g, "gridu", 2, Duration::from_secs(180));
    crate::grid::assert_exactly(&g, "gridu", 2);
    assert!(template_guests(&g).is_empty(), "{:?}", template_guests(&g));
}
