//! PROXY protocol v1 and v2 (HAProxy's specification, "The PROXY protocol", versions 1 and
//! 2): a load balancer that terminates or forwards TCP prepends the original client address
//! to the stream. [`ProxyLayer`] is an ntex filter that strips the header and answers
//! `PeerAddr` queries with the client's address, so logs, the admin API and ACL patterns see
//! the device rather than the load balancer.
//!
//! Written here because no maintained crate provides it for ntex's filter model; the parser is
//! small, pure and unit-tested.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ntex::io::types::PeerAddr;
use ntex::io::{FilterBuf, FilterLayer};

/// v2 signature (spec §2.2).
const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Longest v1 line, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// Largest v2 header accepted: the fixed 16 bytes plus addresses and TLVs. The format allows
/// 64 KiB; real load balancers send a few hundred bytes.
const V2_MAX: usize = 16 + 4096;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Not all of it has arrived.
    Incomplete,
    /// Complete: `len` bytes long; `source` is the client's address, `None` for a v2 LOCAL
    /// command or v1 `UNKNOWN` (health checks by the proxy itself: the real peer applies).
    Complete {
        /// Header length in bytes.
        len: usize,
        /// Original source address.
        source: Option<SocketAddr>,
    },
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The stream does not start with a PROXY header.
    #[error("connection did not start with a PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Parses the start of a stream.
pub fn parse(buf: &[u8]) -> Result<Header, ProxyError> {
    if buf.is_empty() {
        return Ok(Header::Incomplete);
    }
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] == V2_SIGNATURE[..sig] {
        return if sig < V2_SIGNATURE.len() { Ok(Header::Incomplete) } else { parse_v2(buf) };
    }
    let prefix = buf.len().min(6);
    if buf[..prefix] == b"PROXY "[..prefix] {
        return if prefix < 6 { Ok(Header::Incomplete) } else { parse_v1(buf) };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Header, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(Header::Incomplete)
        };
    };
    let line =
        std::str::from_utf8(&buf[6..end]).map_err(|_| ProxyError::Malformed("v1 line is not ASCII"))?;
    let len = end + 2;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored (spec §2.1).
        return Ok(Header::Complete { len, source: None });
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, src_port, _dst_port] = fields[..] else {
        return Err(ProxyError::Malformed("v1 line needs 4 fields after the family"));
    };
    let ip: IpAddr = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::Malformed("bad v1 IPv4 address"))?,
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::Malformed("bad v1 IPv6 address"))?,
        _ => return Err(ProxyError::Malformed("v1 family must be TCP4, TCP6 or UNKNOWN")),
    };
    let port: u16 = src_port.parse().map_err(|_| ProxyError::Malformed("bad v1 port"))?;
    Ok(Header::Complete { len, source: Some(SocketAddr::new(ip, port)) })
}

fn parse_v2(buf: &[u8]) -> Result<Header, ProxyError> {
    if buf.len() < 16 {
        return Ok(Header::Incomplete);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version nibble is not 2"));
    }
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + rest;
    if len > V2_MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(Header::Incomplete);
    }
    let body = &buf[16..len];
    let source = match version_command & 0x0F {
        // LOCAL: the proxy's own connection (health check); addresses are to be ignored.
        0x0 => None,
        0x1 => match buf[13] >> 4 {
            0x1 => {
                let a: [u8; 12] = body
                    .get(..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProxyError::Malformed("v2 IPv4 block too short"))?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]])))
            }
            0x2 => {
                let a: [u8; 36] = body
                    .get(..36)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProxyError::Malformed("v2 IPv6 block too short"))?;
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[..16]);
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), u16::from_be_bytes([a[32], a[33]])))
            }
            // AF_UNSPEC or AF_UNIX: no IP address to report; keep the real peer.
            0x0 | 0x3 => None,
            _ => return Err(ProxyError::Malformed("v2 unknown address family")),
        },
        _ => return Err(ProxyError::Malformed("v2 command must be LOCAL or PROXY")),
    };
    Ok(Header::Complete { len, source })
}

/// Strips the PROXY header from the stream and reports the client's address as `PeerAddr`.
#[derive(Debug, Default)]
pub struct ProxyLayer {
    done: Cell<bool>,
    source: Cell<Option<SocketAddr>>,
}

impl FilterLayer for ProxyLayer {
    fn query(&self, id: TypeId) -> Option<Box<dyn Any>> {
        if id == TypeId::of::<PeerAddr>() {
            return self.source.get().map(|addr| Box::new(PeerAddr(addr)) as Box<dyn Any>);
        }
        None
    }

    fn process_read_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        buf.with_read_buffers(|src, dst| {
            let Some(src) = src else { return Ok(()) };
            if !self.done.get() {
                match parse(src) {
                    // Unconsumed input stays in the source buffer until more arrives.
                    Ok(Header::Incomplete) => return Ok(()),
                    Ok(Header::Complete { len, source }) => {
                        let _ = src.split_to(len);
                        self.source.set(source);
                        self.done.set(true);
                    }
                    Err(err) => {
                        let peer = buf.io().query::<PeerAddr>().get().map(|p| p.0);
                        tracing::info!(peer = %crate::frontend::display_peer(peer), "connection refused: {err}");
                        return Err(io::Error::new(io::ErrorKind::InvalidData, err));
                    }
                }
            }
            if dst.is_empty() {
                std::mem::swap(src, dst);
            } else {
                dst.extend_from_slice(src);
                src.clear();
            }
            Ok(())
        })
    }

    fn process_write_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        buf.with_write_buffers(|src, dst| {
            while let Some(page) = src.take() {
                dst.append(page);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1883\r\nMQTT";
        assert_eq!(
            parse(line),
            Ok(Header::Complete { len: line.len() - 4, source: Some("192.0.2.7:56324".parse().unwrap()) })
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8883\r\n";
        assert_eq!(
            parse(line),
            Ok(Header::Complete { len: line.len(), source: Some("[2001:db8::1]:4000".parse().unwrap()) })
        );
        let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(parse(line), Ok(Header::Complete { len: line.len(), source: None }));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1883\r\n".to_vec();
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        let v2 = v2(1, 0x11, &body);
        for header in [v1, v2] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Ok(Header::Incomplete), "cut at {cut}");
            }
            assert!(matches!(parse(&header), Ok(Header::Complete { .. })));
        }
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![203, 0, 113, 9, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        // A TLV (type 0x04 NOOP, length 3) after the addresses is skipped with the header.
        body.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3]);
        let header = v2(1, 0x11, &body);
        assert_eq!(
            parse(&header),
            Ok(Header::Complete { len: header.len(), source: Some("203.0.113.9:40000".parse().unwrap()) })
        );

        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::8".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&5555u16.to_be_bytes());
        body.extend_from_slice(&8883u16.to_be_bytes());
        let header = v2(1, 0x21, &body);
        assert_eq!(
            parse(&header),
            Ok(Header::Complete { len: header.len(), source: Some("[2001:db8::7]:5555".parse().unwrap()) })
        );

        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local), Ok(Header::Complete { len: 16, source: None }));
    }

    #[test]
    fn plain_mqtt_and_garbage_are_refused() {
        // A CONNECT packet where a header was required.
        assert_eq!(parse(&[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T']), Err(ProxyError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert!(matches!(parse(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), Err(ProxyError::Malformed(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"), Err(ProxyError::Malformed(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4\r\n"), Err(ProxyError::Malformed(_))));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x31;
        assert!(matches!(parse(&bad_version), Err(ProxyError::Malformed(_))));
        assert!(matches!(parse(&v2(1, 0x11, &[0; 4])), Err(ProxyError::Malformed(_))));
    }
}
