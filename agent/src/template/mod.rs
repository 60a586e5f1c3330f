//! Clones started from a template: one guest per clone shape boots until napalm-init has
//! loaded its modules and waits for its identity, libvirt saves its memory, and each
//! clone of that shape starts by restoring it with its own command line in QEMU's fw_cfg
//! (napalm-init's side: `initramfs/README.md`, "Restored from a template"). Under TCG a
//! cold boot's kernel start and module loads are most of a clone's CPU; a restore is a
//! QEMU start and a copy of the image.
//!
//! This module owns the images (`STATE/templates/KEY/image`, at most [`KEPT`] kept, the
//! least recently used dropped first), the XML edits ([`xml`]), the image's layout
//! ([`image`]) and handing the stream to QEMU ([`stream`]). The agent's core decides when
//! to use them (`core::from_template`).

pub mod image;
pub mod xml;

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use image::{Image, ImageError};
pub use napalm_initramfs::identity::{HANDOVER, TEMPLATE_READY};

/// Template images kept per agent.
pub const KEPT: usize = 8;

/// The templates of one agent: their directory and who is making which.
pub struct Templates {
    dir: PathBuf,
    sockets: PathBuf,
    making: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Templates {
    /// Templates under `dir` (`STATE/templates`). QEMU's listening sockets go in `dir/in`,
    /// or, when that path is too long for a socket's (at most 107 bytes), in a directory
    /// of the system's temporary directory named after `dir`.
    pub fn new(dir: PathBuf) -> Self {
        use sha2::{Digest, Sha256};
        let mut sockets = dir.join("in");
        if sockets.as_os_str().len() > 80 {
            let tag = hex::encode(&Sha256::digest(dir.to_string_lossy().as_bytes())[..6]);
            sockets = std::env::temp_dir().join(format!("napalm-in-{tag}"));
        }
        Self {
            sockets,
            dir,
            making: Default::default(),
        }
    }

    /// The directory of template `key`.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The lock held while template `key` is made (one maker per key; the others wait and
    /// use what it made).
    pub fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.making.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(key.to_owned()).or_default())
    }

    /// The finished image of `key`, if there is one (its use is noted for [`Self::prune`]).
    pub fn image(&self, key: &str) -> Option<Image> {
        let path = self.dir(key).join("image");
        let image = Image::open(&path).ok()?;
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(image)
    }

    /// Drops the least recently used images beyond [`KEPT`], never `keep`.
    pub fn prune(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name() != keep && e.path() != self.sockets)
            .map(|e| {
                let used = std::fs::metadata(e.path().join("image"))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (used, e.path())
            })
            .collect();
        all.sort();
        let excess = (all.len() + 1).saturating_sub(KEPT);
        for (_, dir) in all.into_iter().take(excess) {
            tracing::info!(template = %dir.display(), "dropping the least recently used template");
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// A fresh socket path for one restore, in a directory QEMU (another user) may create
    /// it in.
    pub fn socket(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.sockets)?;
        // Sticky and writable by all, like /tmp: QEMU runs as libvirt's qemu user.
        std::fs::set_permissions(&self.sockets, std::fs::Permissions::from_mode(0o1733))?;
        Ok(self
            .sockets
            .join(format!("{}.sock", crate::durable::unique())))
    }
}

/// Where a template's guest is, by its console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Neither line below yet.
    Booting,
    /// napalm-init waits for its identity ([`TEMPLATE_READY`]).
    Waiting,
    /// napalm-init handed over to /sbin/init ([`HANDOVER`]): one that does not know
    /// `napalm.template` and boots on.
    BootedOn,
}

/// What the console log `console` of a template's guest shows (read once).
pub fn console(console: &Path) -> Console {
    let b = std::fs::read(console).unwrap_or_default();
    let says = |line: &str| b.windows(line.len()).any(|w| w == line.as_bytes());
    if says(TEMPLATE_READY) {
        Console::Waiting
    } else if says(HANDOVER) {
        Console::BootedOn
    } else {
        Console::Booting
    }
}

/// The last `n` bytes of a console log, for errors.
pub fn tail(console: &Path, n: usize) -> String {
    let b = std::fs::read(console).unwrap_or_default();
    String::from_utf8_lossy(&b[b.len().saturating_sub(n)..])
        .trim()
        .to_owned()
}

/// Hands `image`'s stream to the QEMU listening at `socket` (waiting up to `wait` for it
/// to listen, unless `stop` is set), then waits until QEMU has read it all and closed its
/// end (it has loaded the state, or failed to); returns the bytes sent.
pub fn stream(
    image: &Image,
    socket: &Path,
    wait: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<u64> {
    let until = Instant::now() + wait;
    let mut s = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() >= until || stop.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("QEMU did not listen at {}: {e}", socket.display()),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut f = std::fs::File::open(&image.path)?;
    f.seek(std::io::SeekFrom::Start(image.stream_offset))?;
    let sent = std::io::copy(&mut f, &mut s)?;
    s.flush()?;
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(
        until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    ))?;
    // QEMU sends nothing back on an incoming migration: EOF is its end closed.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tells_a_waiting_napalm_init_from_one_that_booted_on() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("console.log");
        assert_eq!(console(&c), Console::Booting);
        std::fs::write(&c, "[ 0.9] x\r\nnapalm-init: template ready\r\n").unwrap();
        assert_eq!(console(&c), Console::Waiting);
        std::fs::write(
            &c,
            "napalm: initramfs took 0.6s (kernel 1.0s); transferring control to /sbin/init ...",
        )
        .unwrap();
        assert_eq!(console(&c), Console::BootedOn);
    }

    #[test]
    fn the_least_recently_used_images_go_first_and_never_the_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let t = Templates::new(dir.path().to_path_buf());
        let base = std::time::SystemTime::now() - Duration::from_secs(1000);
        for i in 0..KEPT + 2 {
            let d = t.dir(&format!("k{i:02}"));
            std::fs::create_dir_all(&d).unwrap();
            let f = std::fs::File::create(d.join("image")).unwrap();
            // k00 is the oldest; "k03" is in use though old.
            f.set_modified(base + Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        t.prune("k03");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), KEPT - 1 + 1, "{left:?}");
        assert!(left.contains(&"k03".to_owned()));
        assert!(!left.contains(&"k00".to_owned()) && !left.contains(&"k01".to_owned()));
    }

    #[test]
    fn the_stream_is_what_follows_the_header_and_waits_for_the_other_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut f = vec![0u8; 0];
        f.extend(b"LibvirtQemudSave");
        for w in [2u32, 3, 1, 0, 0] {
            f.extend(w.to_ne_bytes());
        }
        f.resize(92, 0);
        f.extend(b"<x/QEVMstate-bytes");
        std::fs::write(&path, &f).unwrap();
        let image = Image::open(&path).unwrap();
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let got = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut b = Vec::new();
            c.read_to_end(&mut b).unwrap();
            b
        });
        let go = std::sync::atomic::AtomicBool::new(false);
        let sent = stream(&image, &sock, Duration::from_secs(5), &go).unwrap();
        assert_eq!(got.join().unwrap(), b"QEVMstate-bytes");
        assert_eq!(sent, 15);
        let e = stream(
            &image,
            &dir.path().join("none"),
            Duration::from_millis(50),
            &go,
        )
        .unwrap_err();
        assert!(e.to_string().contains("did not listen"), "{e}");
    }
}
