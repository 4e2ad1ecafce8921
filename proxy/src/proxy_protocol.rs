//! PROXY protocol v2 (the binary header load balancers put before TLS) and
//! the client address that policy sees.
//!
//! Only peers in `listen.trusted_proxies` are believed. From a trusted peer
//! with `proxy_protocol = true` the header is required; from anyone else a
//! PROXY header is refused, so an attacker cannot claim another address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block accepted (addresses plus TLVs).
const MAX_LEN: usize = 1024;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// Not a v2 header.
    #[error("missing or malformed PROXY v2 signature")]
    Signature,
    /// Version or command not understood.
    #[error("unsupported PROXY version or command")]
    Version,
    /// Address block too short or too long.
    #[error("malformed PROXY address block")]
    Length,
    /// I/O while reading.
    #[error("connection closed while reading the PROXY header")]
    Io,
}

/// Reads a v2 header; `Ok(None)` for a LOCAL command (health checks of the
/// balancer itself: use the peer address) or an unspecified family.
pub async fn read_v2<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .await
        .map_err(|_| ProxyHeaderError::Io)?;
    if head[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let (ver, cmd) = (head[12] >> 4, head[12] & 0x0f);
    if ver != 2 || cmd > 1 {
        return Err(ProxyHeaderError::Version);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_LEN {
        return Err(ProxyHeaderError::Length);
    }
    let mut block = vec![0u8; len];
    r.read_exact(&mut block)
        .await
        .map_err(|_| ProxyHeaderError::Io)?;
    if cmd == 0 {
        return Ok(None);
    }
    parse_addresses(head[13], &block)
}

fn parse_addresses(family: u8, b: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match family >> 4 {
        1 => {
            let a: [u8; 12] = b
                .get(..12)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::Length)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        2 => {
            let a: [u8; 36] = b
                .get(..36)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::Length)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        0 => Ok(None),
        _ => Err(ProxyHeaderError::Version),
    }
}

/// True when `ip` is one of the trusted proxies (IPv4-mapped IPv6 as IPv4).
pub fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client address from `X-Forwarded-For` when the peer is a trusted proxy:
/// the last hop that is not itself trusted (hops a client prepends are ignored).
pub fn client_from_xff<'a>(
    trusted: &[IpNet],
    peer: IpAddr,
    xff: impl Iterator<Item = &'a str>,
) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    let hops: Vec<&str> = xff.flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // An unparsable hop ends what can be believed.
            break;
        };
        client = ip;
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    client
}

/// Builds a v2 header (for tests and tools).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_refusals() {
        let src: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let h = encode_v2(src, dst);
        assert_eq!(read_v2(&mut &h[..]).await, Ok(Some(src)));
        let src6: SocketAddr = "[2001:db8::7]:1".parse().unwrap();
        let h6 = encode_v2(src6, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(read_v2(&mut &h6[..]).await, Ok(Some(src6)));
        let mut bad = h.clone();
        bad[0] = b'X';
        assert_eq!(
            read_v2(&mut &bad[..]).await,
            Err(ProxyHeaderError::Signature)
        );
        let mut short = h.clone();
        short[15] = 4;
        assert_eq!(
            read_v2(&mut &short[..]).await,
            Err(ProxyHeaderError::Length)
        );
        assert_eq!(read_v2(&mut &h[..10]).await, Err(ProxyHeaderError::Io));
    }

    #[test]
    fn xff_last_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let got = client_from_xff(
            &trusted,
            lb,
            ["6.6.6.6, 198.51.100.4, 10.0.0.9"].into_iter(),
        );
        assert_eq!(got, "198.51.100.4".parse::<IpAddr>().unwrap());
        let direct: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_from_xff(&trusted, direct, ["6.6.6.6"].into_iter()),
            direct
        );
    }
}
