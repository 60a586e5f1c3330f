//! Static clone addresses: each new clone record gets the pool's lowest address no other
//! clone (of any deployment) holds, known before it boots, so its `/etc/hosts`, its `ip=`
//! and its state export (restricted to that address) are all written up front. Without a
//! pool clones use DHCP.

use std::net::Ipv4Addr;
use std::str::FromStr;

/// `FIRST/PREFIX`, e.g. `10.1.2.101/24`: clone addresses from FIRST to the subnet's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    first: Ipv4Addr,
    prefix: u8,
}

/// A `--clone-addresses` value that is not a usable pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clone address pool {input:?}: {why}; write FIRST/PREFIX, e.g. 10.1.2.101/24")]
pub struct PoolError {
    /// The value given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for AddressPool {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, PoolError> {
        let bad = |why: &'static str| PoolError {
            input: s.to_owned(),
            why,
        };
        let (a, p) = s.split_once('/').ok_or_else(|| bad("no /PREFIX"))?;
        let first: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| bad("prefix must be 8..=30"))?;
        let pool = Self { first, prefix };
        if pool.capacity() == 0 {
            return Err(bad("the first address is the subnet's broadcast address"));
        }
        Ok(pool)
    }
}

impl AddressPool {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The netmask, dotted.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many clones fit (up to the broadcast address, excluded).
    pub fn capacity(&self) -> u32 {
        let broadcast = u32::from(self.first) | !self.mask();
        broadcast.saturating_sub(u32::from(self.first))
    }

    /// The first address of the pool past index `cursor` not in `used`, moving `cursor` to
    /// it. Handing out many addresses, the caller keeps one cursor (from 0) and adds each
    /// address to `used`: each is then the lowest free one, and the pool is walked once
    /// (10,000 clones asked from the start each time: 50 M lookups).
    pub fn next_free(
        &self,
        used: &std::collections::HashSet<Ipv4Addr>,
        cursor: &mut u32,
    ) -> Option<Ipv4Addr> {
        while *cursor < self.capacity() {
            *cursor += 1;
            let a = self.address(*cursor)?;
            if !used.contains(&a) {
                return Some(a);
            }
        }
        None
    }

    /// The address of clone `index` (1-based), if the pool has it.
    pub fn address(&self, index: u32) -> Option<Ipv4Addr> {
        (index >= 1 && index <= self.capacity())
            .then(|| Ipv4Addr::from(u32::from(self.first) + index - 1))
    }
}

/// The static address a clone record holds (given from the pool when it was recorded).
pub fn assigned(c: &napalm_proto::v1::Clone) -> Option<Ipv4Addr> {
    c.addresses
        .first()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_index_within_the_subnet() {
        let p: AddressPool = "10.1.2.101/24".parse().expect("pool");
        assert_eq!(p.address(1), Some(Ipv4Addr::new(10, 1, 2, 101)));
        assert_eq!(p.address(8), Some(Ipv4Addr::new(10, 1, 2, 108)));
        assert_eq!(p.capacity(), 154);
        assert_eq!(p.address(155), None);
        assert_eq!(p.address(0), None);
        assert_eq!(p.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        let used = [Ipv4Addr::new(10, 1, 2, 101), Ipv4Addr::new(10, 1, 2, 103)].into();
        let mut cursor = 0;
        assert_eq!(
            p.next_free(&used, &mut cursor),
            Some(Ipv4Addr::new(10, 1, 2, 102))
        );
        assert_eq!(
            p.next_free(&used, &mut cursor),
            Some(Ipv4Addr::new(10, 1, 2, 104))
        );
        let mut cursor = 153;
        assert_eq!(
            p.next_free(&used, &mut cursor),
            Some(Ipv4Addr::new(10, 1, 2, 254))
        );
        assert_eq!(p.next_free(&used, &mut cursor), None);
        assert_eq!(cursor, 154);
    }

    #[test]
    fn bad_pools_are_refused_quoting_the_input() {
        for bad in [
            "10.1.2.101",
            "10.1.2.300/24",
            "10.1.2.1/31",
            "10.1.2.255/24",
        ] {
            let e = bad.parse::<AddressPool>().expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
