//! A small DHCPv4 client (RFC 2131: DISCOVER, OFFER, REQUEST, ACK) over a UDP socket bound
//! to the interface, with the broadcast flag set so replies reach an unconfigured host.
//! Hand-written because a static PID 1 needs only these four messages and no runtime.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// What the server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address offered to us (yiaddr).
    pub addr: Ipv4Addr,
    /// Netmask (option 1).
    pub netmask: Ipv4Addr,
    /// Router (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Host name (option 12).
    pub hostname: Option<String>,
    /// Server identifier (option 54).
    pub server: Option<Ipv4Addr>,
}

/// Message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// Broadcast by us: who can give an address?
    Discover = 1,
    /// A server's proposal, answering Discover.
    Offer = 2,
    /// Ours: taking the offered address from that server.
    Request = 3,
    /// The server confirms; the lease is ours.
    Ack = 5,
    /// The server refuses the Request; start again.
    Nak = 6,
}

/// Builds a DISCOVER or REQUEST.
pub fn build(
    kind: MsgType,
    xid: u32,
    mac: [u8; 6],
    requested: Option<(Ipv4Addr, Ipv4Addr)>,
    hostname: Option<&str>,
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, kind as u8]);
    if let Some((addr, server)) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&addr.octets());
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&server.octets());
    }
    if let Some(h) = hostname.filter(|h| h.len() < 64) {
        p.extend_from_slice(&[12, h.len() as u8]);
        p.extend_from_slice(h.as_bytes());
    }
    p.extend_from_slice(&[55, 4, 1, 3, 6, 12, 255]);
    p
}

/// Parses a BOOTREPLY for `xid`; returns its type and lease.
pub fn parse(buf: &[u8], xid: u32) -> Option<(MsgType, Lease)> {
    if buf.len() < 240 || buf[0] != 2 || buf[4..8] != xid.to_be_bytes() || buf[236..240] != MAGIC {
        return None;
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let mut lease = Lease {
        addr: ip(&buf[16..20]),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: Vec::new(),
        hostname: None,
        server: None,
    };
    let mut kind = None;
    let mut i = 240;
    while i < buf.len() {
        let code = buf[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = *buf.get(i + 1)? as usize;
        let v = buf.get(i + 2..i + 2 + len)?;
        match (code, len) {
            (53, 1) => {
                kind = match v[0] {
                    2 => Some(MsgType::Offer),
                    5 => Some(MsgType::Ack),
                    6 => Some(MsgType::Nak),
                    _ => None,
                }
            }
            (1, 4) => lease.netmask = ip(v),
            (3, l) if l >= 4 => lease.router = Some(ip(v)),
            (6, l) if l >= 4 => lease.dns = v.chunks_exact(4).map(ip).collect(),
            (12, _) => lease.hostname = Some(String::from_utf8_lossy(v).into_owned()),
            (54, 4) => lease.server = Some(ip(v)),
            _ => {}
        }
        i += 2 + len;
    }
    Some((kind?, lease))
}

fn socket(iface: &str) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68))?;
    s.set_broadcast(true)?;
    // SAFETY: setsockopt with a byte buffer that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_ptr().cast(),
            iface.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(s)
}

fn exchange(
    s: &UdpSocket,
    msg: &[u8],
    xid: u32,
    want: MsgType,
    deadline: Instant,
) -> io::Result<Lease> {
    let mut buf = [0u8; 1500];
    let mut next_send = Instant::now();
    let mut backoff = Duration::from_millis(500);
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            s.send_to(msg, (Ipv4Addr::BROADCAST, 67))?;
            next_send = Instant::now() + backoff;
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
        match s.recv_from(&mut buf) {
            Ok((n, _)) => match parse(&buf[..n], xid) {
                Some((MsgType::Nak, _)) => {
                    return Err(io::Error::other("DHCP server answered NAK"))
                }
                Some((k, lease)) if k == want => return Ok(lease),
                _ => {}
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no DHCP {want:?} received"),
    ))
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on `iface` within `timeout`.
pub fn acquire(
    iface: &str,
    mac: [u8; 6],
    hostname: Option<&str>,
    timeout: Duration,
) -> io::Result<Lease> {
    let deadline = Instant::now() + timeout;
    let s = socket(iface)?;
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
        ^ (crate::timings::uptime() * 1e6) as u32;
    let offer = exchange(
        &s,
        &build(MsgType::Discover, xid, mac, None, hostname),
        xid,
        MsgType::Offer,
        deadline,
    )?;
    let server = offer.server.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let req = build(
        MsgType::Request,
        xid,
        mac,
        Some((offer.addr, server)),
        hostname,
    );
    exchange(&s, &req, xid, MsgType::Ack, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_and_reply_parsing() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let d = build(MsgType::Discover, 0xdeadbeef, mac, None, Some("clone01"));
        assert_eq!(&d[..3], &[1, 1, 6]);
        assert_eq!(&d[4..8], &0xdeadbeefu32.to_be_bytes());
        assert_eq!(d[10], 0x80);
        assert_eq!(&d[28..34], &mac);
        assert_eq!(&d[236..243], &[99, 130, 83, 99, 53, 1, 1]);
        assert_eq!(*d.last().unwrap(), 255);
        // A reply as QEMU's slirp sends it.
        let mut r = vec![0u8; 240];
        r[0] = 2;
        r[4..8].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        r[16..20].copy_from_slice(&[10, 0, 2, 15]);
        r[236..240].copy_from_slice(&MAGIC);
        r.extend_from_slice(&[
            53, 1, 2, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 4, 10, 0, 2, 3, 54, 4, 10, 0,
            2, 2, 0, 255,
        ]);
        let (k, l) = parse(&r, 0xdeadbeef).unwrap();
        assert_eq!(k, MsgType::Offer);
        assert_eq!(l.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(l.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(parse(&r, 1).is_none(), "other xid");
        assert!(parse(&r[..200], 0xdeadbeef).is_none(), "short");
        let mut bad = r.clone();
        bad.truncate(245); // option runs past the end
        bad[243] = 40;
        assert!(parse(&bad, 0xdeadbeef).is_none());
    }
}
