//! Idle-connection memory floor, variant B: one tokio task per connection over a plain
//! `TcpStream`, ntex-mqtt's v3 codec for framing, and no buffer held while idle (wait for
//! readiness, then read into a stack buffer that never lives across an await).
//! Answers CONNECT with CONNACK 0 and PINGREQ with PINGRESP; ignores everything else.

use ntex::codec::Decoder;
use ntex::util::BytesMut;
use ntex_mqtt::v3::codec::{Codec, Decoded, Packet};
use tokio::io::AsyncWriteExt;

/// Appends what the socket has now; `Ok(0)` is end of stream.
fn read_now(stream: &tokio::net::TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    let mut tmp = [0u8; 1024];
    let n = stream.try_read(&mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// Waits for input and decodes it; `None` when the connection ends.
async fn next_packets(stream: &tokio::net::TcpStream, buf: &mut BytesMut, codec: &Codec) -> Option<Vec<Packet>> {
    loop {
        stream.readable().await.ok()?;
        match read_now(stream, buf) {
            Ok(0) => return None,
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
    let mut packets = Vec::new();
    while let Some(decoded) = codec.decode(buf).ok()? {
        if let Decoded::Packet(packet, _) = decoded {
            packets.push(packet);
        }
    }
    if buf.is_empty() {
        // Give the allocation back while idle.
        *buf = BytesMut::new();
    }
    Some(packets)
}

async fn connection(mut stream: tokio::net::TcpStream) -> Option<()> {
    let codec = Codec::default();
    let mut buf = BytesMut::new();
    loop {
        let packets = next_packets(&stream, &mut buf, &codec).await?;
        if packets.iter().any(|p| matches!(p, Packet::Connect(_))) {
            break;
        }
    }
    // CONNACK, accepted (written by hand: this measures memory, not encoding).
    stream.write_all(&[0x20, 2, 0, 0]).await.ok()?;
    loop {
        let packets = next_packets(&stream, &mut buf, &codec).await?;
        if packets.iter().any(|p| matches!(p, Packet::Disconnect)) {
            return Some(());
        }
        if packets.iter().any(|p| matches!(p, Packet::PingRequest)) {
            stream.write_all(&[0xd0, 0]).await.ok()?;
        }
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18902);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // ntex-mqtt's codec is not Sync: connections are local tasks on this one thread.
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(connection(stream));
        }
    })
}
