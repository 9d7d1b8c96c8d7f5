//! What happens to a new connection before its CONNECT is decoded.
//!
//! - MQTT 3.1, which ntex-mqtt does not understand: its CONNECT differs from 3.1.1's only in
//!   the protocol name (`MQIsdp`, level 3 instead of `MQTT`, level 4), and every later packet
//!   is identical. The header of a 3.1 CONNECT is rewritten in the read buffer to the 3.1.1
//!   form and the connection is marked, so the v3 handshake applies 3.1 rules.
//! - A 3.x CONNECT with an empty client id and clean session 0 must get CONNACK 0x02
//!   (MQTT 3.1.1 §3.1.3-8), but ntex-mqtt's decoder rejects it before any handshake code runs
//!   and just closes the socket; so it is answered here.
//!
//! - The protocol level picks the codec: 3 and 4 the v3 one, 5 the v5 one; others get
//!   CONNACK 0x01 (MQTT 3.1.1 §3.1.2.2).
//!
//! Only the fixed header, protocol name, flags and client-id length are read; no second codec.

use std::io;

use super::socket::Socket;
use ntex::util::BytesMut;

const V31_NAME: &[u8] = b"\x00\x06MQIsdp\x03";
const V311_NAME: &[u8] = b"\x00\x04MQTT\x04";
const MQTT_NAME: &[u8] = b"\x00\x04MQTT";

/// Which protocol a connection's CONNECT asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preamble {
    /// MQTT 3.1.1, or 3.1 (`v3_1`) rewritten to the 3.1.1 form.
    V3 {
        /// The client speaks MQTT 3.1.
        v3_1: bool,
    },
    /// MQTT 5.0.
    V5,
}

/// Waits for the start of the first packet, answers an empty-client-id CONNECT that ntex-mqtt's
/// decoder cannot, rewrites a 3.1 CONNECT to 3.1.1, and reads the protocol level. An error
/// means the connection has been answered (or is gone) and must be closed.
pub(crate) async fn normalize<S: Socket>(io: &S) -> io::Result<Preamble> {
    loop {
        if let Some(version) = io.with_read_buf(empty_id_with_session) {
            tracing::info!(
                peer = %super::display_peer(io.peer_addr()),
                protocol = version,
                "connection refused: client identifier not valid (empty client id with clean session 0)"
            );
            // CONNACK: type 2, remaining length 2, no session present, return code 2.
            io.encode_slice(&[0x20, 0x02, 0x00, 0x02])?;
            let _ = io.flush(true).await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty client id with clean session 0"));
        }
        let level = io.with_read_buf(|buf| rewrite_connect(buf).map(|v3_1| (v3_1, protocol_level(buf))));
        match level.and_then(|(v3_1, level)| level.map(|level| (v3_1, level))) {
            Some((v3_1, Ok(3 | 4))) => return Ok(Preamble::V3 { v3_1 }),
            Some((_, Ok(5))) => return Ok(Preamble::V5),
            Some((_, Ok(level))) => {
                // MQTT 3.1.1 §3.1.2.2: CONNACK 0x01 (unacceptable protocol level), then close.
                io.encode_slice(&[0x20, 0x02, 0x00, 0x01])?;
                let _ = io.flush(true).await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unsupported MQTT protocol level {level}"),
                ));
            }
            Some((_, Err(reason))) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
            None => {
                if io.read_ready().await?.is_none() {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before CONNECT"));
                }
            }
        }
    }
}

/// The protocol level of the CONNECT at the start of `buf` (after any 3.1 rewrite); `None`
/// when more bytes are needed.
fn protocol_level(buf: &mut BytesMut) -> Option<Result<u8, &'static str>> {
    if *buf.first()? != 0x10 {
        return Some(Err("the first packet is not CONNECT [MQTT-3.1.0-1]"));
    }
    let header = connect_header(buf)?;
    let name = buf.get(header..header + MQTT_NAME.len())?;
    if name != MQTT_NAME {
        return Some(Err("CONNECT protocol name is not MQTT"));
    }
    Some(Ok(*buf.get(header + MQTT_NAME.len())?))
}

/// Offset just past the Remaining Length of a CONNECT, or `None` if incomplete/not CONNECT.
fn connect_header(buf: &[u8]) -> Option<usize> {
    if *buf.first()? != 0x10 {
        return None;
    }
    let mut header = 1;
    loop {
        let byte = *buf.get(header)?;
        header += 1;
        if byte & 0x80 == 0 {
            return Some(header);
        }
        if header > 4 {
            return None;
        }
    }
}

/// If `buf` holds a complete-enough 3.x CONNECT with a zero-length client id and clean
/// session 0, the protocol name for logs.
fn empty_id_with_session(buf: &mut BytesMut) -> Option<&'static str> {
    let header = connect_header(buf)?;
    let (name, version) = if buf[header..].starts_with(V31_NAME) {
        (V31_NAME, "3.1")
    } else if buf[header..].starts_with(V311_NAME) {
        (V311_NAME, "3.1.1")
    } else {
        return None;
    };
    // After the name and level: flags (1), keep-alive (2), client id length (2).
    let flags = *buf.get(header + name.len())?;
    let id_len_at = header + name.len() + 3;
    let id_len = u16::from_be_bytes([*buf.get(id_len_at)?, *buf.get(id_len_at + 1)?]);
    (id_len == 0 && flags & 0x02 == 0).then_some(version)
}

/// `None`: need more bytes. `Some(true)`: a 3.1 CONNECT, rewritten. `Some(false)`: not one.
fn rewrite_connect(buf: &mut BytesMut) -> Option<bool> {
    let first = *buf.first()?;
    if first != 0x10 {
        return Some(false);
    }
    // Remaining Length: 1 to 4 bytes, 7 bits each.
    let mut remaining: usize = 0;
    let mut header = 1;
    loop {
        let byte = *buf.get(header)?;
        remaining |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Some(false);
        }
    }
    let name_end = header + V31_NAME.len();
    if buf.len() < name_end {
        // A 3.1.1 or 5.0 CONNECT may be shorter than the 3.1 name; decide on what we have.
        return (buf[header..] != V31_NAME[..buf.len() - header]).then_some(false);
    }
    if &buf[header..name_end] != V31_NAME || remaining < V31_NAME.len() {
        return Some(false);
    }
    let mut out = BytesMut::with_capacity(buf.len());
    out.extend_from_slice(&[first]);
    let mut len = remaining - (V31_NAME.len() - V311_NAME.len());
    loop {
        let mut byte = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(V311_NAME);
    out.extend_from_slice(&buf[name_end..]);
    *buf = out;
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(name: &[u8], rest: &[u8]) -> Vec<u8> {
        let body: Vec<u8> = [name, rest].concat();
        let mut out = vec![0x10];
        let mut len = body.len();
        loop {
            let mut b = (len & 0x7f) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend(body);
        out
    }

    #[test]
    fn rewrites_31_connect_to_311() {
        let rest = b"\x02\x00\x3c\x00\x03abc";
        let mut buf = BytesMut::from(&connect(V31_NAME, rest)[..]);
        assert_eq!(rewrite_connect(&mut buf), Some(true));
        assert_eq!(&buf[..], &connect(V311_NAME, rest)[..]);
    }

    #[test]
    fn remaining_length_can_shrink_by_a_byte() {
        // 3.1 body of 129 bytes needs a 2-byte length; the 127-byte 3.1.1 body needs one.
        let rest = vec![b'x'; 129 - V31_NAME.len()];
        let mut buf = BytesMut::from(&connect(V31_NAME, &rest)[..]);
        assert_eq!(buf.len(), 1 + 2 + 129);
        assert_eq!(rewrite_connect(&mut buf), Some(true));
        assert_eq!(&buf[..], &connect(V311_NAME, &rest)[..]);
        assert_eq!(buf.len(), 1 + 1 + 127);
    }

    #[test]
    fn leaves_other_packets_alone() {
        let v311 = connect(V311_NAME, b"\x02\x00\x3c\x00\x01a");
        let mut buf = BytesMut::from(&v311[..]);
        assert_eq!(rewrite_connect(&mut buf), Some(false));
        assert_eq!(&buf[..], &v311[..]);
        let mut junk = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(rewrite_connect(&mut junk), Some(false));
    }

    #[test]
    fn spots_empty_client_id_with_clean_session_0() {
        // flags 0x00 (clean session 0), keep-alive 60, client id "" (length 0)
        let mut v311 = BytesMut::from(&connect(V311_NAME, b"\x00\x00\x3c\x00\x00")[..]);
        assert_eq!(empty_id_with_session(&mut v311), Some("3.1.1"));
        let mut v31 = BytesMut::from(&connect(V31_NAME, b"\x00\x00\x3c\x00\x00")[..]);
        assert_eq!(empty_id_with_session(&mut v31), Some("3.1"));
        let mut clean = BytesMut::from(&connect(V311_NAME, b"\x02\x00\x3c\x00\x00")[..]);
        assert_eq!(empty_id_with_session(&mut clean), None, "clean session 1 is the handshake's call");
        let mut named = BytesMut::from(&connect(V311_NAME, b"\x00\x00\x3c\x00\x01a")[..]);
        assert_eq!(empty_id_with_session(&mut named), None);
        let v5 = b"\x00\x04MQTT\x05";
        let mut v5 = BytesMut::from(&connect(v5, b"\x00\x00\x3c\x00\x00\x00")[..]);
        assert_eq!(empty_id_with_session(&mut v5), None, "v5 assigns an id instead");
        let mut short = BytesMut::from(&connect(V311_NAME, b"\x00\x00\x3c\x00\x00")[..6]);
        assert_eq!(empty_id_with_session(&mut short), None);
    }

    #[test]
    fn reads_the_protocol_level() {
        let v311 = connect(V311_NAME, b"\x02\x00\x3c\x00\x01a");
        assert_eq!(protocol_level(&mut BytesMut::from(&v311[..])), Some(Ok(4)));
        let v5 = connect(b"\x00\x04MQTT\x05", b"\x02\x00\x3c\x00\x00\x01a");
        assert_eq!(protocol_level(&mut BytesMut::from(&v5[..])), Some(Ok(5)));
        let mut v31 = BytesMut::from(&connect(V31_NAME, b"\x02\x00\x3c\x00\x01a")[..]);
        assert_eq!(rewrite_connect(&mut v31), Some(true));
        assert_eq!(protocol_level(&mut v31), Some(Ok(4)), "3.1 is read as 3.1.1 after the rewrite");
        let future = connect(b"\x00\x04MQTT\x06", b"\x02\x00\x3c");
        assert_eq!(protocol_level(&mut BytesMut::from(&future[..])), Some(Ok(6)));
        for cut in 0..8 {
            assert_eq!(protocol_level(&mut BytesMut::from(&v311[..cut])), None, "cut at {cut}");
        }
        assert!(matches!(protocol_level(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n"[..])), Some(Err(_))));
        let other_name = connect(b"\x00\x04MQTX\x04", b"\x02\x00\x3c");
        assert!(matches!(protocol_level(&mut BytesMut::from(&other_name[..])), Some(Err(_))));
    }

    #[test]
    fn waits_for_more_bytes() {
        let full = connect(V31_NAME, b"\x02\x00\x3c\x00\x01a");
        for cut in 0..6 {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(rewrite_connect(&mut buf), None, "cut at {cut}");
        }
    }
}
