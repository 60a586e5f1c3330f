//! nfs-ganesha's counters over its private D-Bus (`napalm_integration::ganesha`) against a
//! real NFS client, without QEMU, libvirt or the grid lock: a grid of no agent and no
//! coordinator ([`Hypervisor::Test`]) whose server runs the private bus and ganesha
//! through the grid's own [`Grid::start_ganesha`], exporting one directory; the grid's
//! client namespace reads a file with libnfs's `nfs-cat` (package libnfs-utils) over
//! NFSv4.0. The kernel's NFS client cannot be used here: this machine's kernel has none
//! built in and no modules to load (`nfs` is not in /proc/filesystems), so libnfs is the
//! real client, speaking the protocol from user space.

use std::process::Stdio;
use std::time::Duration;

use napalm_integration::error_chain;
use napalm_integration::ganesha::{self, GaneshaError, NfsStats, PrivateBus, Server};
use napalm_integration::grid::{Grid, GridOptions, Hypervisor};
use napalm_integration::netns::{Host, Network};

/// The test export's `Export_Id` (1 is what the coordinator gives the root; any will do).
const EXPORT_ID: u16 = 2;
/// A size that takes more than one READ of libnfs's default 1 MiB.
const SIZE: usize = (1 << 20) + 4321;

/// `n` bytes no compressor or cache would fake: xorshift from a fixed seed.
fn content(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `dir/export/blob` and, in `exports`, an EXPORT block serving `dir/export`
/// read-only as `/stats`; returns the blob.
fn export(dir: &std::path::Path, exports: &std::path::Path) -> Vec<u8> {
    let export = dir.join("export");
    std::fs::create_dir_all(&export).expect("mkdir export");
    let blob = content(SIZE);
    std::fs::write(export.join("blob"), &blob).expect("write blob");
    std::fs::write(
        exports,
        format!(
            "EXPORT {{ Export_Id = {EXPORT_ID}; Path = {}; Pseudo = /stats; Access_Type = RO; Squash = No_Root_Squash; SecType = sys; Protocols = 4; Transports = TCP; FSAL {{ Name = VFS; }} }}\n",
            export.display()
        ),
    )
    .expect("write the exports");
    blob
}

/// `nfs-cat nfs://SERVER/stats/blob?version=4` from `client`: the file's bytes.
fn nfs_cat(client: &Host, server: &Host) -> Vec<u8> {
    let url = format!("nfs://{}/stats/blob?version=4", server.addr);
    let out = client
        .command("timeout")
        .args(["-k", "5", "60", "nfs-cat", &url])
        .stdin(Stdio::null())
        .output()
        .expect("running nfs-cat (package libnfs-utils; scripts/setup installs it)");
    assert!(
        out.status.success(),
        "nfs-cat {url} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn stats(g: &Grid) -> NfsStats {
    g.nfs_stats()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

#[test]
fn ganesha_counts_what_a_real_nfs_client_reads() {
    let opts = GridOptions {
        agents: 0,
        hypervisor: Hypervisor::Test,
        coordinator: false,
        ..Default::default()
    };
    let mut g = Grid::start(opts, "nfsstats").unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    // What the coordinator writes in a QEMU grid: the file ganesha.conf includes.
    let blob = export(&g.dir, &g.dir.join("ganesha/napalm-exports.conf"));
    g.start_ganesha()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));

    let before = stats(&g);
    let got = nfs_cat(&g.client, &g.server);
    assert!(
        got == blob,
        "nfs-cat read {} bytes, not the file's {SIZE}",
        got.len()
    );
    let after = stats(&g);
    let d = after.since(&before);
    eprintln!(
        "one read of {SIZE} bytes: {} NFSv4 operations {:?} (top: {:?}); READ {:?} of export {EXPORT_ID}",
        d.nfs4_ops_total(),
        d.nfs4_ops_by_version(),
        d.top_nfs4_ops(6),
        d.read_of(EXPORT_ID)
    );
    assert!(d.nfs4_op("READ") >= 1, "no READ counted: {d:?}");
    assert!(d.nfs4_op("OPEN") >= 1, "no OPEN counted: {d:?}");
    assert!(d.nfs4_op("PUTFH") >= 1, "no PUTFH counted: {d:?}");
    // libnfs speaks NFSv4.0; the per-version counter counts the same operations.
    let by_version = d.nfs4_ops_by_version();
    assert_eq!(by_version.get("NFSv40"), Some(&d.nfs4_ops_total()), "{d:?}");
    assert_eq!(
        by_version.values().sum::<u64>(),
        d.nfs4_ops_total(),
        "{d:?}"
    );
    let read = d.read_of(EXPORT_ID);
    assert!(
        read.transferred >= SIZE as u64,
        "export {EXPORT_ID} read {} bytes, the file has {SIZE}: {d:?}",
        read.transferred
    );
    assert!(read.ops >= 1 && read.errors == 0, "{read:?}");
    assert_eq!(
        d.read().transferred,
        read.transferred,
        "only that export was read"
    );
    assert_eq!(d.write().ops, 0, "a read-only export saw no WRITE: {d:?}");

    // A second read counts again, and only what it read: the differences are per interval.
    let again = nfs_cat(&g.client, &g.server);
    assert!(again == blob);
    let d2 = stats(&g).since(&after);
    let read2 = d2.read_of(EXPORT_ID);
    assert!(
        read2.transferred >= SIZE as u64 && read2.transferred <= 2 * SIZE as u64,
        "the second read counted {} bytes: {d2:?}",
        read2.transferred
    );
    assert!(d2.nfs4_op("READ") >= 1, "{d2:?}");

    // A restart keeps the bus and the new ganesha answers on it, its counters from zero.
    g.start_ganesha()
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let fresh = stats(&g);
    assert_eq!(fresh.nfs4_op("READ"), 0, "{fresh:?}");
    assert_eq!(fresh.read().transferred, 0, "{fresh:?}");
    assert!(nfs_cat(&g.client, &g.server) == blob);
    assert!(stats(&g).read_of(EXPORT_ID).transferred >= SIZE as u64);
}

#[test]
fn ganesha_off_its_bus_is_refused_and_stopped() {
    let dir = tempfile::Builder::new()
        .prefix("napalm-nfs-stats-")
        .tempdir()
        .expect("temp dir");
    let exports = dir.path().join("exports.conf");
    export(dir.path(), &exports);
    let mut net = Network::new().expect("network");
    let srv = net.host(1).expect("server host");
    let mut bus = PrivateBus::start(&srv, dir.path(), dir.path())
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    // The bus dies: ganesha still serves NFS (it only logs that it has no bus), but its
    // counters cannot be read, and the harness must say so rather than run blind.
    bus.kill();
    let err = match ganesha::start(&Server {
        host: &srv,
        dir: dir.path(),
        log_dir: dir.path(),
        exports: &exports,
        bus: &bus,
    }) {
        Ok(_) => panic!("ganesha started although its bus is gone"),
        Err(e) => e,
    };
    let msg = error_chain(&err);
    eprintln!("{msg}");
    assert!(matches!(err, GaneshaError::NotOnBus { .. }), "{msg}");
    for want in [
        "DBUS_SYSTEM_BUS_ADDRESS=unix:path=",
        "ganesha.nfsd -F -f",
        "does not own org.ganesha.nfsd",
        "dbus_bus_get failed",
    ] {
        assert!(msg.contains(want), "the error lacks {want:?}: {msg}");
    }
    // What was started is stopped: nothing serves NFS on the server any more.
    let addr = format!("{}:{}", srv.addr, ganesha::NFS_PORT)
        .parse()
        .expect("address");
    assert!(
        !srv.listens(addr, Duration::from_secs(1)).expect("probe"),
        "the refused ganesha still listens"
    );
}
