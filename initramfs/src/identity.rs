//! The values of the three arguments only the agent writes, into the command line a
//! restored template reads as its identity (`napalm.template`, README "Restored from a
//! template"): `napalm.mac=` (the clone's NIC address), `napalm.now=` (the wall clock)
//! and `napalm.seed=` (bytes for the random pool). Parsed here, for [`crate::cmdline`];
//! each parser says what is wrong quoting its input.

use std::fmt;

/// The kernel argument that makes a boot a template: napalm-init loads its modules, says
/// [`TEMPLATE_READY`] and waits for [`IDENTITY_FILE`].
pub const TEMPLATE_ARG: &str = "napalm.template";
/// The QEMU fw_cfg file that carries a restored clone's kernel command line (its identity).
pub const IDENTITY_FILE: &str = "opt/napalm/cmdline";
/// The console line a template prints (even when quiet) once it waits: the host saves it
/// then.
pub const TEMPLATE_READY: &str = "napalm-init: template ready";
/// The words of napalm-init's last console line (even when quiet), as it hands over to the
/// root's init: a template that prints them did not wait.
pub const HANDOVER: &str = "transferring control to";

/// A wall-clock time: seconds and nanoseconds since the Unix epoch (`napalm.now=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: u64,
    /// Nanoseconds, below 1 000 000 000.
    pub nanos: u32,
}

impl UnixTime {
    /// Parses decimal seconds with an optional fraction (`1712345678`, `1712345678.25`);
    /// digits past nanoseconds are dropped.
    pub fn parse(s: &str) -> Result<UnixTime, String> {
        let bad = || {
            format!("expected Unix seconds, decimal with an optional fraction (1712345678.25), got {s:?}")
        };
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(frac)
            || (s.contains('.') && frac.is_empty())
        {
            return Err(bad());
        }
        let secs = whole.parse().map_err(|_| bad())?;
        let nanos = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(9)
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        Ok(UnixTime { secs, nanos })
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// An Ethernet address, six two-digit hex groups (`52:54:00:12:34:56`, as sysfs shows
/// them); `None` when `s` is not one.
pub fn ethernet_address(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses a unicast Ethernet address ([`ethernet_address`], not multicast, not zero).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = |why: &str| format!("expected a unicast MAC like 52:54:00:12:34:56, got {s:?}{why}");
    let mac = ethernet_address(s).ok_or_else(|| bad(""))?;
    if mac[0] & 1 == 1 {
        return Err(bad(" (a multicast address)"));
    }
    if mac == [0; 6] {
        return Err(bad(" (all zeroes)"));
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses the seed: an even number of hex digits, at least one byte.
pub fn parse_seed(s: &str) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(s).map_err(|e| {
        format!("expected bytes as hex digits (an even number of them), got {s:?}: {e}")
    })?;
    if bytes.is_empty() {
        return Err("expected at least one byte of hex, got \"\"".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times() {
        for (s, secs, nanos) in [
            ("1712345678", 1_712_345_678, 0),
            ("1712345678.25", 1_712_345_678, 250_000_000),
            ("0.000000001", 0, 1),
            ("1.1234567899", 1, 123_456_789),
        ] {
            assert_eq!(UnixTime::parse(s), Ok(UnixTime { secs, nanos }), "{s}");
        }
        assert_eq!(UnixTime::parse("5.5").unwrap().to_string(), "5.500000000");
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "1e9",
            "12:00",
            "1.2.3",
            " 1",
            "99999999999999999999",
        ] {
            let e = UnixTime::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:aB:cd:EF"),
            Ok([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            "52:54:00:ab:cd:ef"
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52-54-00-ab-cd-ef",
            "2:54:00:ab:cd:ef",
            "52:054:00:ab:cd:ef",
            "52:54:00:ab:cd:eg",
            "52:54:00:ab:cd:+f",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let e = parse_mac(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn seeds() {
        assert_eq!(parse_seed("00ff10"), Ok(vec![0, 0xff, 0x10]));
        for bad in ["", "0", "zz", "00f"] {
            let e = parse_seed(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
