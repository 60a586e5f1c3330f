//! The host's pool of huge pages, as libvirt reports it: clones whose RAM is backed by
//! huge pages (`<memoryBacking><hugepages/>`) take it from this pool and nowhere else, so
//! the coordinator places them by it.
//!
//! libvirt's capabilities XML lists, for each NUMA cell, the page sizes the cell has and
//! how many pages of each are in the pool (`<pages unit='KiB' size='2048'>512</pages>`);
//! the first is the base page, whose count is the rest of the cell's memory. A domain
//! asking for huge pages without a size gets the default huge size, the smallest huge
//! size on x86_64 (2 MiB) and aarch64 alike: that is the pool reported.

use serde::Serialize;

/// A pool of huge pages of one size. All zero when the host has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HugePages {
    /// The page size, bytes.
    pub page_bytes: u64,
    /// The whole pool, used or not, bytes.
    pub total_bytes: u64,
    /// Free when sampled, bytes.
    pub free_bytes: u64,
}

/// The default huge size in a capabilities document, in KiB, with the pool's pages in
/// all cells and the number of cells: `None` without NUMA cells or huge sizes.
pub fn pool_in_capabilities(doc: &roxmltree::Document<'_>) -> Option<(u32, u64, u32)> {
    let cells: Vec<roxmltree::Node<'_, '_>> = doc
        .descendants()
        .filter(|n| n.has_tag_name("cell") && n.parent().is_some_and(|p| p.has_tag_name("cells")))
        .collect();
    // (size KiB, pages) of each cell's huge sizes: every <pages> but the cell's first.
    let huge: Vec<(u32, u64)> = cells
        .iter()
        .flat_map(|c| {
            c.children()
                .filter(|n| n.has_tag_name("pages"))
                .skip(1)
                .filter_map(|p| {
                    let kib = match p.attribute("unit").unwrap_or("KiB") {
                        "KiB" => 1,
                        "MiB" => 1024,
                        "GiB" => 1024 * 1024,
                        _ => return None,
                    };
                    let size = p.attribute("size")?.parse::<u32>().ok()?.checked_mul(kib)?;
                    let count = p.text().unwrap_or("0").trim().parse::<u64>().ok()?;
                    Some((size, count))
                })
        })
        .collect();
    let size = huge.iter().map(|(s, _)| *s).min()?;
    let pages = huge
        .iter()
        .filter(|(s, _)| *s == size)
        .map(|(_, n)| n)
        .sum();
    Some((size, pages, u32::try_from(cells.len()).ok()?))
}

/// The pool from `size_kib` and `pages` ([`pool_in_capabilities`]) with the free pages
/// of each cell ([`super::Hypervisor::free_pages`]); free is never counted above the pool
/// (libvirt's test driver makes its free counts up).
pub fn pool(size_kib: u32, pages: u64, free_per_cell: &[u64]) -> HugePages {
    let page_bytes = u64::from(size_kib) * 1024;
    let free: u64 = free_per_cell.iter().sum();
    HugePages {
        page_bytes,
        total_bytes: pages * page_bytes,
        free_bytes: free.min(pages) * page_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host part of `virsh capabilities` on an x86_64 host with 512 pages of 2 MiB in
    /// two cells.
    const TWO_CELLS: &str = "<capabilities><host><cpu><arch>x86_64</arch>\
        <pages unit='KiB' size='4'/><pages unit='KiB' size='2048'/>\
        <pages unit='KiB' size='1048576'/></cpu>\
        <topology><cells num='2'>\
        <cell id='0'><memory unit='KiB'>12000000</memory>\
        <pages unit='KiB' size='4'>2737920</pages><pages unit='KiB' size='2048'>384</pages>\
        <pages unit='KiB' size='1048576'>0</pages></cell>\
        <cell id='1'><memory unit='KiB'>12000000</memory>\
        <pages unit='KiB' size='4'>2737920</pages><pages unit='KiB' size='2048'>128</pages>\
        <pages unit='KiB' size='1048576'>0</pages></cell>\
        </cells></topology></host></capabilities>";

    fn parsed(xml: &str) -> Option<(u32, u64, u32)> {
        pool_in_capabilities(&roxmltree::Document::parse(xml).ok()?)
    }

    #[test]
    fn the_default_huge_size_is_the_smallest_and_its_pages_add_up_across_cells() {
        assert_eq!(parsed(TWO_CELLS), Some((2048, 512, 2)));
        let p = pool(2048, 512, &[100, 28]);
        assert_eq!(p.page_bytes, 2 << 20);
        assert_eq!(p.total_bytes, 1 << 30);
        assert_eq!(p.free_bytes, 128 * (2 << 20));
    }

    #[test]
    fn no_cells_no_pool_and_free_never_above_the_pool() {
        assert_eq!(parsed("<capabilities><host/></capabilities>"), None);
        // The test driver: no pool, yet 97 "free" pages.
        assert_eq!(pool(2048, 0, &[97, 97]).free_bytes, 0);
    }
}
