//! A huge page pool for a grid's clones (`GridOptions::hugepage_pool`): the kernel's
//! `vm.nr_hugepages` raised by what the clones need while the grid lives, each page
//! touched once, and set back when the grid drops.
//!
//! Why touch them: on a host that is itself a VM returning free memory to its hypervisor
//! (free page reporting, as here), a page's first touch after it sat free costs a fault in
//! the hypervisor. Pages a pool holds stay with this kernel, so only the touch at
//! reservation pays it, as on a hypervisor host that reserves its pool at boot.
//! libvirt preallocates a hugepage-backed guest's RAM when it starts it, so a cold pool
//! would move that cost into every clone's start.

use std::path::Path;

use super::error::{Ctx, GridError};

/// Where libvirt and this pool find hugetlbfs; `scripts/services` mounts it before
/// libvirtd starts (libvirtd looks for it only then).
pub const HUGETLBFS: &str = "/dev/hugepages";

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Huge pages reserved for a grid; dropping it gives them back.
pub struct HugePagePool {
    before: u64,
    /// Pages this pool added.
    pub pages: u64,
    /// Bytes in one huge page.
    pub page_bytes: u64,
}

/// The number after `key` (with its colon) in /proc/meminfo: KiB for sizes, a count for
/// `HugePages_*`.
pub fn meminfo(key: &str) -> Result<u64, GridError> {
    let m = std::fs::read_to_string("/proc/meminfo").ctx("reading /proc/meminfo")?;
    m.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| GridError::Io {
            what: format!("/proc/meminfo has no {key}"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
}

fn nr_hugepages() -> Result<u64, GridError> {
    let s = std::fs::read_to_string(NR_HUGEPAGES).ctx(format!("reading {NR_HUGEPAGES}"))?;
    s.trim().parse().map_err(|_| GridError::Io {
        what: format!("{NR_HUGEPAGES} holds {s:?}, not a count"),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    })
}

fn set_nr_hugepages(n: u64) -> Result<(), GridError> {
    std::fs::write(NR_HUGEPAGES, n.to_string()).ctx(format!("writing {n} to {NR_HUGEPAGES}"))
}

/// Whether hugetlbfs is mounted at [`HUGETLBFS`].
pub fn mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&HUGETLBFS) && f.get(2) == Some(&"hugetlbfs")
            })
        })
        .unwrap_or(false)
}

impl HugePagePool {
    /// Adds enough huge pages for `bytes` to the kernel's pool and touches each once.
    pub fn reserve(bytes: u64) -> Result<Self, GridError> {
        if !mounted() {
            return Err(GridError::Io {
                what: format!(
                    "hugetlbfs is not mounted at {HUGETLBFS}: mount it (`scripts/services \
                     start` does when it starts libvirtd) and restart libvirtd, which looks \
                     for it only when it starts"
                ),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let page_bytes = meminfo("Hugepagesize:")? * 1024;
        let pages = bytes.div_ceil(page_bytes);
        let before = nr_hugepages()?;
        set_nr_hugepages(before + pages)?;
        let pool = Self {
            before,
            pages,
            page_bytes,
        };
        // The kernel gives what it can find contiguous and says so only by the count.
        let got = nr_hugepages()?;
        if got < before + pages {
            return Err(GridError::Io {
                what: format!(
                    "asked the kernel for {pages} more huge pages ({} MiB) and it has {} of \
                     them: this host's memory is short or fragmented",
                    bytes >> 20,
                    got.saturating_sub(before)
                ),
                source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            });
        }
        pool.touch(Path::new(HUGETLBFS))?;
        Ok(pool)
    }

    /// Maps the pool's free pages through a hugetlbfs file and writes one byte in each, then
    /// lets them go back to the pool.
    fn touch(&self, dir: &Path) -> Result<(), GridError> {
        let free = meminfo("HugePages_Free:")?.min(self.pages);
        let len = (free * self.page_bytes) as usize;
        if len == 0 {
            return Ok(());
        }
        let path = dir.join(format!("napalm-grid-warm-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .ctx(format!("creating {}", path.display()))?;
        // The file's name goes at once: its pages return to the pool when the mapping
        // and the descriptor are gone, whatever happens below.
        std::fs::remove_file(&path).ctx(format!("removing {}", path.display()))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh shared mapping of our own file descriptor, `len` bytes; nothing
        // else maps it, and it is unmapped below before `file` closes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(GridError::Io {
                what: format!("mapping {} MiB of huge pages to touch them", len >> 20),
                source: std::io::Error::last_os_error(),
            });
        }
        for off in (0..len).step_by(self.page_bytes as usize) {
            // SAFETY: `off` < `len`, inside the mapping made above.
            unsafe { p.cast::<u8>().add(off).write_volatile(1) };
        }
        // SAFETY: the mapping made above, of `len` bytes, no longer used.
        unsafe { libc::munmap(p, len) };
        Ok(())
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        // Pages a guest still holds stay until it goes (the kernel keeps them as surplus).
        if let Err(e) = set_nr_hugepages(self.before) {
            eprintln!("grid: could not give the huge pages back: {e}");
        }
    }
}
