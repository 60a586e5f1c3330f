//! The kernel's `ip=` syntax (Documentation/admin-guide/nfs/nfsroot.rst, thesis 3.2.4) and
//! `nameserver=`:
//!
//! ```text
//! ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//! ip=dhcp | ip=on | ip=any | ip=off | ip=none
//! ```

use std::net::Ipv4Addr;
use thiserror::Error;

/// How the network is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfig {
    /// No network (`ip=off`, `ip=none`, or no `ip=` at all).
    Off,
    /// DHCPv4 on `device` (the first ethernet interface when `None`).
    Dhcp {
        /// Interface name, e.g. `eth0`.
        device: Option<String>,
        /// Hostname to request.
        hostname: Option<String>,
    },
    /// Static addressing.
    Static(StaticIp),
}

/// The static fields of `ip=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    /// The clone's address (field 1).
    pub client: Ipv4Addr,
    /// The NFS server (informative; root= names its own server).
    pub server: Option<Ipv4Addr>,
    /// The default route (field 3); none when empty.
    pub gateway: Option<Ipv4Addr>,
    /// Netmask (defaults to the class-less /24 when empty).
    pub netmask: Ipv4Addr,
    /// Set with sethostname at boot (field 5); at most 64 bytes, no `/` or `:`.
    pub hostname: Option<String>,
    /// Interface name (the first ethernet interface when `None`).
    pub device: Option<String>,
    /// DNS servers given in the dns0/dns1 fields.
    pub dns: Vec<Ipv4Addr>,
}

/// Why an `ip=` or `nameserver=` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("ip={input}: {what} (field {field} `{name}`, at position {position})")]
pub struct IpParseError {
    /// The whole value.
    pub input: String,
    /// 1-based field number.
    pub field: usize,
    /// Field name from nfsroot.rst.
    pub name: &'static str,
    /// Byte offset of the field in the value.
    pub position: usize,
    /// What is wrong.
    pub what: String,
}

const FIELDS: [&str; 10] = [
    "client-ip",
    "server-ip",
    "gw-ip",
    "netmask",
    "hostname",
    "device",
    "autoconf",
    "dns0-ip",
    "dns1-ip",
    "ntp0-ip",
];

impl IpConfig {
    /// Parses an `ip=` value (without the `ip=` prefix).
    pub fn parse(input: &str) -> Result<IpConfig, IpParseError> {
        match input {
            "" | "off" | "none" => return Ok(IpConfig::Off),
            "dhcp" | "on" | "any" | "both" | "bootp" => {
                return Ok(IpConfig::Dhcp {
                    device: None,
                    hostname: None,
                })
            }
            _ => {}
        }
        let fields: Vec<&str> = input.split(':').collect();
        let mut offsets = Vec::with_capacity(fields.len());
        let mut pos = 0;
        for f in &fields {
            offsets.push(pos);
            pos += f.len() + 1;
        }
        let err = |i: usize, what: String| IpParseError {
            input: input.to_string(),
            field: i + 1,
            name: FIELDS.get(i).copied().unwrap_or("extra"),
            position: offsets.get(i).copied().unwrap_or(input.len()),
            what,
        };
        if fields.len() > FIELDS.len() {
            return Err(err(
                FIELDS.len(),
                format!("at most {} fields", FIELDS.len()),
            ));
        }
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        let addr = |i: usize| -> Result<Option<Ipv4Addr>, IpParseError> {
            match get(i) {
                "" => Ok(None),
                s => s
                    .parse::<Ipv4Addr>()
                    .map(Some)
                    .map_err(|_| err(i, format!("{s:?} is not an IPv4 address"))),
            }
        };
        let opt = |i: usize| match get(i) {
            "" => None,
            s => Some(s.to_string()),
        };
        let client = addr(0)?;
        let server = addr(1)?;
        let gateway = addr(2)?;
        let netmask = addr(3)?;
        let hostname = opt(4);
        let device = opt(5);
        let autoconf = get(6);
        let dns: Vec<Ipv4Addr> = [addr(7)?, addr(8)?].into_iter().flatten().collect();
        addr(9)?;
        if hostname
            .as_deref()
            .is_some_and(|h| h.len() > 64 || h.contains('/'))
        {
            return Err(err(
                4,
                "hostname longer than 64 bytes or containing `/`".into(),
            ));
        }
        let dhcp = match autoconf {
            "" => client.is_none(),
            "off" | "none" => false,
            "on" | "any" | "dhcp" | "both" | "bootp" => true,
            other => {
                return Err(err(
                    6,
                    format!("unknown autoconf {other:?} (off|none|on|any|dhcp)"),
                ))
            }
        };
        match (client, dhcp) {
            (_, true) => Ok(IpConfig::Dhcp { device, hostname }),
            (None, false) => Err(err(
                0,
                "autoconf is off but no client address is given".into(),
            )),
            (Some(client), false) => Ok(IpConfig::Static(StaticIp {
                client,
                server,
                gateway,
                netmask: netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
                hostname,
                device,
                dns,
            })),
        }
    }
}

impl IpConfig {
    /// DHCPv4 on the first ethernet interface (`ip=dhcp`).
    pub fn dhcp() -> IpConfig {
        IpConfig::Dhcp {
            device: None,
            hostname: None,
        }
    }

    /// This value if it reads back from its own display, else the parse error that says
    /// which field would not (a hostname with `:` or `/`, more than two DNS servers).
    pub fn checked(self) -> Result<IpConfig, IpParseError> {
        let text = self.to_string();
        let back = IpConfig::parse(&text)?;
        if back != self {
            return Err(IpParseError {
                input: text,
                field: 1,
                name: FIELDS[0],
                position: 0,
                what: format!("reads back as {back:?}, not as {self:?}"),
            });
        }
        Ok(self)
    }
}

impl StaticIp {
    /// `client` with `netmask`, nothing else set (no server, gateway, hostname, device or
    /// DNS: napalm-init then takes the first ethernet interface).
    pub fn new(client: Ipv4Addr, netmask: Ipv4Addr) -> StaticIp {
        StaticIp {
            client,
            server: None,
            gateway: None,
            netmask,
            hostname: None,
            device: None,
            dns: Vec::new(),
        }
    }
}

fn opt_field<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The `ip=` value (without `ip=`) in nfsroot.rst syntax: `off`, `dhcp`,
/// `::::HOST:DEV:dhcp`, or `CLIENT:SERVER:GW:MASK:HOST:DEV:off[:DNS0[:DNS1]]`.
impl std::fmt::Display for IpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpConfig::Off => f.write_str("off"),
            IpConfig::Dhcp {
                device: None,
                hostname: None,
            } => f.write_str("dhcp"),
            IpConfig::Dhcp { device, hostname } => write!(
                f,
                "::::{}:{}:dhcp",
                opt_field(hostname.as_deref()),
                opt_field(device.as_deref())
            ),
            IpConfig::Static(st) => {
                write!(
                    f,
                    "{}:{}:{}:{}:{}:{}:off",
                    st.client,
                    opt_field(st.server),
                    opt_field(st.gateway),
                    st.netmask,
                    opt_field(st.hostname.as_deref()),
                    opt_field(st.device.as_deref())
                )?;
                // The grammar has two DNS fields; more cannot be written (see `checked`).
                for d in &st.dns {
                    write!(f, ":{d}")?;
                }
                Ok(())
            }
        }
    }
}

/// Parses one `nameserver=` value (an IPv4 address).
pub fn parse_nameserver(input: &str) -> Result<Ipv4Addr, IpParseError> {
    input.parse().map_err(|_| IpParseError {
        input: input.to_string(),
        field: 1,
        name: "nameserver",
        position: 0,
        what: format!("nameserver={input:?} is not an IPv4 address"),
    })
}

/// Prefix length of a netmask (255.255.255.0 gives 24).
pub fn prefix_len(mask: Ipv4Addr) -> u32 {
    u32::from(mask).leading_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let s =
            |client, gw: Option<[u8; 4]>, mask: [u8; 4], host: Option<&str>, dev: Option<&str>| {
                IpConfig::Static(StaticIp {
                    client: Ipv4Addr::from(client),
                    server: None,
                    gateway: gw.map(Ipv4Addr::from),
                    netmask: Ipv4Addr::from(mask),
                    hostname: host.map(String::from),
                    device: dev.map(String::from),
                    dns: vec![],
                })
            };
        let cases: Vec<(&str, IpConfig)> = vec![
            ("off", IpConfig::Off),
            ("none", IpConfig::Off),
            (
                "dhcp",
                IpConfig::Dhcp {
                    device: None,
                    hostname: None,
                },
            ),
            (
                "on",
                IpConfig::Dhcp {
                    device: None,
                    hostname: None,
                },
            ),
            (
                ":::::eth1:dhcp",
                IpConfig::Dhcp {
                    device: Some("eth1".into()),
                    hostname: None,
                },
            ),
            (
                "::::clone01::",
                IpConfig::Dhcp {
                    device: None,
                    hostname: Some("clone01".into()),
                },
            ),
            (
                "10.0.2.15::10.0.2.2:255.255.255.0:clone01:eth0:off",
                s(
                    [10, 0, 2, 15],
                    Some([10, 0, 2, 2]),
                    [255, 255, 255, 0],
                    Some("clone01"),
                    Some("eth0"),
                ),
            ),
            (
                "10.0.0.5",
                s([10, 0, 0, 5], None, [255, 255, 255, 0], None, None),
            ),
            (
                "10.0.0.5:::255.255.0.0",
                s([10, 0, 0, 5], None, [255, 255, 0, 0], None, None),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(IpConfig::parse(input), Ok(want), "{input}");
        }
        let Ok(IpConfig::Static(st)) = IpConfig::parse("10.0.0.5::::h:eth0:none:10.0.0.1:10.0.0.2")
        else {
            panic!("dns fields")
        };
        assert_eq!(
            st.dns,
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = IpConfig::parse("10.0.0.500::10.0.2.2").unwrap_err();
        assert_eq!((e.field, e.name, e.position), (1, "client-ip", 0));
        assert!(
            e.to_string()
                .contains("\"10.0.0.500\" is not an IPv4 address"),
            "{e}"
        );
        let e = IpConfig::parse("10.0.0.5::gw").unwrap_err();
        assert_eq!((e.name, e.position), ("gw-ip", 10));
        let e = IpConfig::parse("10.0.0.5::::h:eth0:static").unwrap_err();
        assert_eq!(e.name, "autoconf");
        let e = IpConfig::parse(":::::eth0:off").unwrap_err();
        assert!(e.what.contains("no client address"));
        assert!(IpConfig::parse("1:2:3:4:5:6:7:8:9:10:11").is_err());
        assert!(parse_nameserver("10.0.2.3").is_ok());
        assert!(parse_nameserver("dns.example")
            .unwrap_err()
            .to_string()
            .contains("dns.example"));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 240, 0)), 20);
    }
}
