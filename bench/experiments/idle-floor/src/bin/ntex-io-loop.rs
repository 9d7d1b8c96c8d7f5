//! Idle-connection memory floor, variant A: ntex's server and `Io` with ntex-mqtt's v3 codec,
//! one async loop per connection (no ntex-mqtt dispatcher or service pipeline).
//! Answers CONNECT with CONNACK 0 and PINGREQ with PINGRESP; ignores everything else.

use ntex::io::Io;
use ntex::service::fn_service;
use ntex_mqtt::v3::codec::{Codec, ConnectAck, ConnectAckReason, Decoded, Encoded, Packet};

async fn connection(io: Io) -> Result<(), ()> {
    let codec = Codec::default();
    match io.recv(&codec).await {
        Ok(Some(Decoded::Packet(Packet::Connect(_), _))) => {}
        _ => return Err(()),
    }
    let connack = ConnectAck { session_present: false, return_code: ConnectAckReason::ConnectionAccepted };
    io.send(Encoded::Packet(Packet::ConnectAck(connack)), &codec).await.map_err(|_| ())?;
    loop {
        match io.recv(&codec).await {
            Ok(Some(Decoded::Packet(Packet::PingRequest, _))) => {
                io.send(Encoded::Packet(Packet::PingResponse), &codec).await.map_err(|_| ())?;
            }
            Ok(Some(Decoded::Packet(Packet::Disconnect, _))) | Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(_) => return Err(()),
        }
    }
}

#[ntex::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18900);
    ntex::server::build()
        .workers(1)
        .backlog(4096)
        .bind("mqtt", ("127.0.0.1", port), async |_| fn_service(connection))?
        .run()
        .await
}
