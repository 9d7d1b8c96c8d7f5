//! A minimal raw MQTT client for the situations no real client library produces: a second
//! CONNECT, an oversized packet, exact DUP flags and packet ids, acknowledgements withheld
//! or sent out of order, DISCONNECT with a reason code or properties, and byte-exact checks of
//! reason codes.
//!
//! Only what the tests need is implemented: MQTT 3.1 / 3.1.1 / 5.0 packets are encoded from
//! plain structs ([`Connect`], [`Publish`], ...) and every packet the broker sends is decoded
//! into [`Packet`]. v5 properties are kept as a list of `(identifier, value)` pairs
//! ([`Props`]), with the value type taken from the table in MQTT 5.0 §2.2.2.2.

#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::WAIT;

/// Property identifiers (MQTT 5.0 §2.2.2.2).
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const AUTH_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RESPONSE_INFO: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUB_AVAILABLE: u8 = 0x28;
    pub const SUB_ID_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUB_AVAILABLE: u8 = 0x2A;
}

/// The wire type of a property value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

fn kind(id: u8) -> Kind {
    use prop::*;
    match id {
        PAYLOAD_FORMAT
        | REQUEST_PROBLEM_INFO
        | REQUEST_RESPONSE_INFO
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUB_AVAILABLE
        | SUB_ID_AVAILABLE
        | SHARED_SUB_AVAILABLE => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::U16,
        MESSAGE_EXPIRY | SESSION_EXPIRY | WILL_DELAY | MAXIMUM_PACKET_SIZE => Kind::U32,
        SUBSCRIPTION_ID => Kind::VarInt,
        CORRELATION_DATA | AUTH_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => Kind::Str,
    }
}

/// A property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Byte, two-byte, four-byte and variable byte integers.
    Int(u32),
    /// UTF-8 string.
    Str(String),
    /// Binary data.
    Bin(Vec<u8>),
    /// User property (name, value).
    Pair(String, String),
}

/// v5 properties in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, Value)>);

impl Props {
    /// No properties.
    pub fn new() -> Self {
        Props(Vec::new())
    }

    /// Adds an integer property (byte, u16, u32 or varint, by identifier).
    pub fn int(mut self, id: u8, v: u32) -> Self {
        self.0.push((id, Value::Int(v)));
        self
    }

    /// Adds a string property.
    pub fn str(mut self, id: u8, v: &str) -> Self {
        self.0.push((id, Value::Str(v.to_string())));
        self
    }

    /// Adds a binary property.
    pub fn bin(mut self, id: u8, v: &[u8]) -> Self {
        self.0.push((id, Value::Bin(v.to_vec())));
        self
    }

    /// Adds a user property.
    pub fn user(mut self, k: &str, v: &str) -> Self {
        self.0.push((prop::USER_PROPERTY, Value::Pair(k.to_string(), v.to_string())));
        self
    }

    /// First integer property `id`.
    pub fn get_int(&self, id: u8) -> Option<u32> {
        self.ints(id).into_iter().next()
    }

    /// Every integer property `id` (e.g. Subscription Identifiers).
    pub fn ints(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|(i, v)| match v {
                Value::Int(n) if *i == id => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// First string property `id`.
    pub fn get_str(&self, id: u8) -> Option<&str> {
        self.0.iter().find_map(|(i, v)| match v {
            Value::Str(s) if *i == id => Some(s.as_str()),
            _ => None,
        })
    }

    /// First binary property `id`.
    pub fn get_bin(&self, id: u8) -> Option<&[u8]> {
        self.0.iter().find_map(|(i, v)| match v {
            Value::Bin(b) if *i == id => Some(b.as_slice()),
            _ => None,
        })
    }

    /// User properties in order.
    pub fn users(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                Value::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether property `id` is present.
    pub fn has(&self, id: u8) -> bool {
        self.0.iter().any(|(i, _)| *i == id)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        for (id, value) in &self.0 {
            body.push(*id);
            match (kind(*id), value) {
                (Kind::Byte, Value::Int(n)) => body.push(*n as u8),
                (Kind::U16, Value::Int(n)) => body.extend_from_slice(&(*n as u16).to_be_bytes()),
                (Kind::U32, Value::Int(n)) => body.extend_from_slice(&n.to_be_bytes()),
                (Kind::VarInt, Value::Int(n)) => varint(*n as usize, &mut body),
                (Kind::Str, Value::Str(s)) => string(s, &mut body),
                (Kind::Bin, Value::Bin(b)) => binary(b, &mut body),
                (Kind::Pair, Value::Pair(k, v)) => {
                    string(k, &mut body);
                    string(v, &mut body);
                }
                (k, v) => panic!("property 0x{id:02x} is {k:?}, not {v:?}"),
            }
        }
        varint(body.len(), out);
        out.extend(body);
    }

    fn decode(r: &mut Reader<'_>) -> Props {
        let len = r.varint();
        let end = r.pos + len;
        let mut props = Vec::new();
        while r.pos < end {
            let id = r.u8();
            let value = match kind(id) {
                Kind::Byte => Value::Int(u32::from(r.u8())),
                Kind::U16 => Value::Int(u32::from(r.u16())),
                Kind::U32 => Value::Int(r.u32()),
                Kind::VarInt => Value::Int(r.varint() as u32),
                Kind::Str => Value::Str(r.string()),
                Kind::Bin => Value::Bin(r.binary()),
                Kind::Pair => {
                    let k = r.string();
                    Value::Pair(k, r.string())
                }
            };
            props.push((id, value));
        }
        Props(props)
    }
}

/// Protocol level in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V311,
    /// MQTT 5.0 (`MQTT`, level 5).
    V5,
}

/// A will message in CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// v5 will properties.
    pub props: Props,
}

impl Will {
    /// QoS 0 will without properties.
    pub fn new(topic: &str, payload: &str) -> Self {
        Will { topic: topic.into(), payload: payload.into(), qos: 0, retain: false, props: Props::new() }
    }
}

/// CONNECT.
#[derive(Debug, Clone)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    /// v5 CONNECT properties.
    pub props: Props,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    /// Clean-session CONNECT for `client_id` with a 30 s keep-alive.
    pub fn new(version: Version, client_id: &str) -> Self {
        Connect {
            version,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 30,
            props: Props::new(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self.version {
            Version::V31 => {
                string("MQIsdp", &mut body);
                body.push(3);
            }
            Version::V311 => {
                string("MQTT", &mut body);
                body.push(4);
            }
            Version::V5 => {
                string("MQTT", &mut body);
                body.push(5);
            }
        }
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        let v5 = self.version == Version::V5;
        if v5 {
            self.props.encode(&mut body);
        }
        string(&self.client_id, &mut body);
        if let Some(w) = &self.will {
            if v5 {
                w.props.encode(&mut body);
            }
            string(&w.topic, &mut body);
            binary(&w.payload, &mut body);
        }
        if let Some(u) = &self.username {
            string(u, &mut body);
        }
        if let Some(p) = &self.password {
            binary(p, &mut body);
        }
        frame(0x10, &body)
    }
}

/// PUBLISH, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// Packet identifier (QoS 1/2).
    pub id: Option<u16>,
    /// v5 properties.
    pub props: Props,
    pub payload: Vec<u8>,
}

impl Publish {
    /// A PUBLISH of `payload` to `topic`; `id` is used for QoS 1/2.
    pub fn new(topic: &str, qos: u8, id: u16, payload: &[u8]) -> Self {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            id: (qos > 0).then_some(id),
            props: Props::new(),
            payload: payload.to_vec(),
        }
    }

    /// Encodes for `v5` or v3.
    pub fn encode(&self, v5: bool) -> Vec<u8> {
        let mut body = Vec::new();
        string(&self.topic, &mut body);
        if let Some(id) = self.id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if v5 {
            self.props.encode(&mut body);
        }
        body.extend_from_slice(&self.payload);
        let header = 0x30 | (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain);
        frame(header, &body)
    }
}

/// Acknowledgement kinds (the packet type nibble).
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        session_present: bool,
        code: u8,
        props: Props,
    },
    Publish(Publish),
    /// PUBACK, PUBREC, PUBREL or PUBCOMP (`kind` is one of [`PUBACK`]...).
    Ack {
        kind: u8,
        id: u16,
        code: u8,
        props: Props,
    },
    SubAck {
        id: u16,
        codes: Vec<u8>,
        props: Props,
    },
    UnsubAck {
        id: u16,
        codes: Vec<u8>,
        props: Props,
    },
    PingResp,
    Disconnect {
        code: u8,
        props: Props,
    },
    /// Any other packet type (byte 1 of the fixed header).
    Other(u8),
}

impl Packet {
    /// The PUBLISH, or a panic naming what arrived instead.
    pub fn publish(self) -> Publish {
        match self {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// What [`Raw::recv`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A packet.
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time limit.
    Timeout,
}

/// A raw connection to the broker.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Encode v5 packets (properties, reason codes).
    pub v5: bool,
}

impl Raw {
    /// Opens a TCP connection without sending anything.
    pub async fn open(port: u16, v5: bool) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        Raw { stream, buf: Vec::new(), v5 }
    }

    /// Opens a TCP connection, or `None` when it is refused.
    pub async fn try_open(port: u16, v5: bool) -> Option<Raw> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Raw { stream, buf: Vec::new(), v5 })
    }

    /// Connects with `connect` and returns the connection and the CONNACK.
    pub async fn connect(port: u16, connect: &Connect) -> (Raw, Packet) {
        let mut raw = Raw::open(port, connect.version == Version::V5).await;
        raw.send(&connect.encode()).await;
        let ack = raw.expect().await;
        assert!(matches!(ack, Packet::ConnAck { .. }), "expected CONNACK, got {ack:?}");
        (raw, ack)
    }

    /// Connects and asserts the CONNACK is a success; returns session present.
    pub async fn connect_ok(port: u16, connect: &Connect) -> (Raw, bool) {
        let (raw, ack) = Raw::connect(port, connect).await;
        match ack {
            Packet::ConnAck { session_present, code: 0, .. } => (raw, session_present),
            other => panic!("CONNECT refused: {other:?}"),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to broker");
    }

    /// Writes raw bytes, ignoring errors (the broker may already have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Sends a PUBLISH.
    pub async fn publish(&mut self, p: &Publish) {
        let bytes = p.encode(self.v5);
        self.send(&bytes).await;
    }

    /// Sends PUBACK/PUBREC/PUBREL/PUBCOMP for `id` with reason Success.
    pub async fn ack(&mut self, kind: u8, id: u16) {
        let header = if kind == PUBREL { 0x62 } else { kind << 4 };
        self.send(&frame(header, &id.to_be_bytes())).await;
    }

    /// Sends SUBSCRIBE. `filters` are (filter, options byte: QoS | No Local 0x04 |
    /// Retain As Published 0x08 | Retain Handling << 4); `sub_id` is the v5 Subscription
    /// Identifier.
    pub async fn subscribe(&mut self, id: u16, filters: &[(&str, u8)], sub_id: Option<u32>) {
        let mut body = id.to_be_bytes().to_vec();
        if self.v5 {
            let mut props = Props::new();
            if let Some(s) = sub_id {
                props = props.int(prop::SUBSCRIPTION_ID, s);
            }
            props.encode(&mut body);
        }
        for (filter, opts) in filters {
            string(filter, &mut body);
            body.push(*opts);
        }
        self.send(&frame(0x82, &body)).await;
    }

    /// Subscribes and returns the SUBACK's codes.
    pub async fn subscribe_ok(&mut self, id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.subscribe(id, filters, None).await;
        match self.expect().await {
            Packet::SubAck { id: got, codes, .. } if got == id => codes,
            other => panic!("expected SUBACK {id}, got {other:?}"),
        }
    }

    /// Sends UNSUBSCRIBE.
    pub async fn unsubscribe(&mut self, id: u16, filters: &[&str]) {
        let mut body = id.to_be_bytes().to_vec();
        if self.v5 {
            Props::new().encode(&mut body);
        }
        for filter in filters {
            string(filter, &mut body);
        }
        self.send(&frame(0xA2, &body)).await;
    }

    /// Sends PINGREQ.
    pub async fn ping(&mut self) {
        self.send(&[0xC0, 0x00]).await;
    }

    /// Sends DISCONNECT (v3: no body; v5: reason code and properties).
    pub async fn disconnect(&mut self, code: u8, props: Props) {
        if self.v5 {
            let mut body = vec![code];
            props.encode(&mut body);
            self.send(&frame(0xE0, &body)).await;
        } else {
            self.send(&[0xE0, 0x00]).await;
        }
    }

    /// Next packet, [`Event::Closed`] or [`Event::Timeout`].
    pub async fn recv(&mut self, within: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((packet, used)) = decode(&self.buf, self.v5) {
                self.buf.drain(..used);
                return Event::Packet(packet);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Event::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Event::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Next packet within [`WAIT`], skipping PINGRESP.
    pub async fn expect(&mut self) -> Packet {
        loop {
            match self.recv(WAIT).await {
                Event::Packet(Packet::PingResp) => continue,
                Event::Packet(p) => return p,
                other => panic!("expected a packet, got {other:?}"),
            }
        }
    }

    /// Next PUBLISH within [`WAIT`].
    pub async fn expect_publish(&mut self) -> Publish {
        self.expect().await.publish()
    }

    /// Asserts nothing arrives (and the connection stays open) for `within`.
    pub async fn expect_nothing(&mut self, within: Duration) {
        match self.recv(within).await {
            Event::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection; returns the packets that came first.
    pub async fn expect_closed(&mut self, within: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Event::Closed => return before,
                Event::Packet(p) => before.push(p),
                Event::Timeout => panic!("connection still open after {within:?}; got {before:?}"),
            }
        }
    }
}

/// The reason code of the first v5 DISCONNECT among `packets`.
pub fn disconnect_code(packets: &[Packet]) -> Option<u8> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect { code, .. } => Some(*code),
        _ => None,
    })
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    binary(s.as_bytes(), out);
}

fn binary(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Fixed header (`header` byte and Remaining Length) followed by `body`.
pub fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.data.len() - self.pos
    }
    fn u8(&mut self) -> u8 {
        let b = self.data[self.pos];
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn varint(&mut self) -> usize {
        let mut n = 0usize;
        for shift in 0..4 {
            let b = self.u8();
            n |= usize::from(b & 0x7f) << (7 * shift);
            if b & 0x80 == 0 {
                break;
            }
        }
        n
    }
    fn binary(&mut self) -> Vec<u8> {
        let len = usize::from(self.u16());
        let b = self.data[self.pos..self.pos + len].to_vec();
        self.pos += len;
        b
    }
    fn string(&mut self) -> String {
        String::from_utf8(self.binary()).expect("UTF-8 string")
    }
    fn rest(&mut self) -> Vec<u8> {
        let b = self.data[self.pos..].to_vec();
        self.pos = self.data.len();
        b
    }
}

/// Decodes one packet from the start of `buf`; `None` when it is incomplete.
fn decode(buf: &[u8], v5: bool) -> Option<(Packet, usize)> {
    let header = *buf.first()?;
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return None;
    }
    let body = &buf[i..i + len];
    let mut r = Reader { data: body, pos: 0 };
    let packet = match header >> 4 {
        2 => {
            let flags = r.u8();
            let code = r.u8();
            let props = if v5 && r.left() > 0 { Props::decode(&mut r) } else { Props::new() };
            Packet::ConnAck { session_present: flags & 1 == 1, code, props }
        }
        3 => {
            let qos = (header >> 1) & 3;
            let topic = r.string();
            let id = (qos > 0).then(|| r.u16());
            let props = if v5 { Props::decode(&mut r) } else { Props::new() };
            Packet::Publish(Publish {
                dup: header & 0x08 != 0,
                qos,
                retain: header & 1 == 1,
                topic,
                id,
                props,
                payload: r.rest(),
            })
        }
        kind @ 4..=7 => {
            let id = r.u16();
            let code = if r.left() > 0 { r.u8() } else { 0 };
            let props = if r.left() > 0 { Props::decode(&mut r) } else { Props::new() };
            Packet::Ack { kind, id, code, props }
        }
        9 | 11 => {
            let id = r.u16();
            let props = if v5 { Props::decode(&mut r) } else { Props::new() };
            let codes = r.rest();
            if header >> 4 == 9 {
                Packet::SubAck { id, codes, props }
            } else {
                Packet::UnsubAck { id, codes, props }
            }
        }
        13 => Packet::PingResp,
        14 => {
            let code = if r.left() > 0 { r.u8() } else { 0 };
            let props = if r.left() > 0 { Props::decode(&mut r) } else { Props::new() };
            Packet::Disconnect { code, props }
        }
        _ => Packet::Other(header),
    };
    Some((packet, i + len))
}

/// SUBSCRIBE options byte (MQTT 5.0 §3.8.3.1): QoS, No Local, Retain As Published, Retain
/// Handling.
pub fn opts(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(retain_as_published) << 3) | (retain_handling << 4)
}

/// CONNECT for a v3.1.1 client.
pub fn v311(client_id: &str) -> Connect {
    Connect::new(Version::V311, client_id)
}

/// CONNECT for a v5 client.
pub fn v5(client_id: &str) -> Connect {
    Connect::new(Version::V5, client_id)
}

impl Connect {
    /// Clean Session / Clean Start flag.
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    /// Keep-alive in seconds.
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    /// Adds an integer CONNECT property (v5).
    pub fn prop(mut self, id: u8, value: u32) -> Self {
        self.props = self.props.int(id, value);
        self
    }

    /// Sets the will.
    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }
}
