//! The PROXY protocol header, version 2 (binary), as HAProxy and cloud load balancers send it
//! ahead of the client's bytes (haproxy.org/download/2.9/doc/proxy-protocol.txt §2.2).
//!
//! Only what the relay needs: the client's source address for TCP over IPv4 or IPv6, or `LOCAL`
//! (a health check by the balancer itself). TLVs are skipped; anything malformed is an error and
//! the connection is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest header accepted: 16 fixed bytes plus at most this many address and TLV bytes.
pub const MAX_PAYLOAD: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What a PROXY v2 header says (haproxy.org/download/2.9/doc/proxy-protocol.txt §2.2).
pub enum Header {
    /// A proxied connection from `source` to `destination`.
    Proxy {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// The proxy's own connection (health check), or an address family the relay does not use
    /// (UNIX sockets, UNSPEC): keep the proxy's address.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Why the bytes are not a PROXY v2 header the relay accepts.
pub enum ProxyError {
    /// The bytes do not start with the v2 signature (a client talking directly, or v1 text).
    NotProxyV2,
    /// A bad version or command, or addresses shorter than their family needs.
    Malformed,
    /// The announced length is over [`MAX_PAYLOAD`].
    TooLong,
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed, otherwise the
/// header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyError::NotProxyV2);
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 || command > 1 {
        return Err(ProxyError::Malformed);
    }
    let family = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let payload = &buf[16..16 + len];
    let used = 16 + len;
    if command == 0 {
        return Ok(Some((Header::Local, used)));
    }
    let header = match family {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            let a = payload.get(..12).ok_or(ProxyError::Malformed)?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Header::Proxy {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        // TCP over IPv6.
        0x21 => {
            let a = payload.get(..36).ok_or(ProxyError::Malformed)?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Header::Proxy {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UDP, UNIX: nothing the relay can use as a client address.
        _ => Header::Local,
    };
    Ok(Some((header, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(src: [u8; 4], sport: u16, tlv: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x21);
        h.push(0x11);
        h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&2525u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn parses_ipv4_and_ipv6_and_local() {
        let mut h = v4_header([192, 0, 2, 7], 40000, &[0x04, 0, 1, 0]);
        let len = h.len();
        h.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(
            parse(&h),
            Ok(Some((
                Header::Proxy {
                    source: "192.0.2.7:40000".parse().unwrap(),
                    destination: "127.0.0.1:2525".parse().unwrap()
                },
                len
            )))
        );
        // Every shorter prefix asks for more.
        for n in 0..len {
            assert_eq!(parse(&h[..n]), Ok(None), "{n}");
        }
        let mut v6 = SIGNATURE.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0, 36]);
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x9c, 0x40, 0x09, 0xdd]);
        assert_eq!(
            parse(&v6).unwrap().unwrap().0,
            Header::Proxy {
                source: "[2001:db8::1]:40000".parse().unwrap(),
                destination: "[::1]:2525".parse().unwrap()
            }
        );
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some((Header::Local, 16))));
    }

    #[test]
    fn refuses_what_is_not_a_v2_header() {
        assert_eq!(parse(b"EHLO client\r\n"), Err(ProxyError::NotProxyV2));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ProxyError::NotProxyV2)
        );
        let mut h = v4_header([1, 2, 3, 4], 1, &[]);
        h[12] = 0x31;
        assert_eq!(parse(&h), Err(ProxyError::Malformed));
        let mut h = v4_header([1, 2, 3, 4], 1, &[]);
        h[14] = 0xff;
        assert_eq!(parse(&h), Err(ProxyError::TooLong));
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&h), Err(ProxyError::Malformed));
    }
}
