//! `fleetmq-load`: an MQTT load generator for benchmarks.
//!
//! Single-threaded tokio (so it fits on one core, pinned apart from the broker), rumqttc
//! clients. Publishers are closed-loop with a bounded window (rumqttc's in-flight limit);
//! payloads carry the publisher id, a sequence number and a send timestamp, so the
//! subscribers count loss and duplicates exactly and measure end-to-end latency.
//!
//! Prints one JSON object with the results.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    /// P publishers → S subscribers on `bench/#` (fan-in with S = 1).
    Fanin,
    /// 1 publisher → S subscribers of one topic.
    Fanout,
    /// P publisher/subscriber pairs, each on its own topic.
    Pairs,
    /// `--connections` idle MQTT 3.1.1 connections (keep-alive 0), held until a line arrives
    /// on standard input (or `--hold` ends), for the broker's memory per connection.
    Idle,
}

#[derive(Debug, Parser)]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Ports subscribers connect to, round robin (a cluster's nodes); default `--port`.
    #[arg(long, value_delimiter = ',')]
    sub_ports: Vec<u16>,
    /// Ports publishers connect to, round robin; default `--port`.
    #[arg(long, value_delimiter = ',')]
    pub_ports: Vec<u16>,
    /// Seconds to wait between the last SUBACK and the first publish (a cluster needs a few
    /// gossip rounds to spread new subscriptions).
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    settle: Duration,
    /// Workload shape.
    #[arg(long, value_enum, default_value = "fanin")]
    workload: Workload,
    /// Publishers (fan-in, pairs).
    #[arg(long, default_value_t = 50)]
    publishers: usize,
    /// Subscribers (fan-in, fan-out).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// QoS for publishing and subscribing (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Payload bytes (at least 24: id, sequence, timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// How long publishers publish.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Total publish rate in messages/s across publishers (0 = as fast as the window allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages per publisher (0 = publish until `--duration` ends). A bounded run lets a
    /// slower subscriber drain everything afterwards, so losses mean real losses rather than
    /// queue overflow.
    #[arg(long, default_value_t = 0)]
    messages: u64,
    /// Per-client in-flight window.
    #[arg(long, default_value_t = 100)]
    window: u16,
    /// Subscribers use persistent sessions (clean session 0), so a durable broker stores
    /// every delivery.
    #[arg(long)]
    persistent: bool,
    /// Client id prefix (runs against the same broker must not collide).
    #[arg(long, default_value = "load")]
    id: String,
    /// Idle workload: connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Idle workload: CONNECT handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Idle workload: seconds to hold the connections (0 = until a line on standard input).
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    hold: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s').parse::<f64>().map(Duration::from_secs_f64).map_err(|e| e.to_string())
}

#[derive(Debug, Default, Serialize)]
struct Report {
    workload: String,
    qos: u8,
    payload: usize,
    publishers: usize,
    subscribers: usize,
    persistent: bool,
    seconds: f64,
    published: u64,
    acknowledged: u64,
    delivered: u64,
    expected: u64,
    lost: u64,
    duplicates: u64,
    publish_rate: f64,
    delivery_rate: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_p999_ms: f64,
    /// Per published message, the latency of its first and of its last delivery (medians
    /// over the messages): how long a fan-out takes to reach every subscriber.
    first_delivery_p50_ms: f64,
    last_delivery_p50_ms: f64,
    /// The 90th and 99th percentiles over the messages of their last delivery's latency: a
    /// fan-out's p99 over all deliveries mixes typical messages' last deliveries with the
    /// slow messages', and these separate the two.
    last_delivery_p90_ms: f64,
    last_delivery_p99_ms: f64,
}

/// The `n`th port of `ports` round robin, or `--port`.
fn port_for(args: &Args, ports: &[u16], n: usize) -> u16 {
    if ports.is_empty() { args.port } else { ports[n % ports.len()] }
}

fn options(args: &Args, id: String, clean: bool, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, args.host.clone(), port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(clean);
    o.set_inflight(args.window);
    o.set_max_packet_size(1 << 24, 1 << 24);
    o
}

fn qos(level: u8) -> QoS {
    if level == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
}

fn now_micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// A received message: (publisher, sequence, latency µs).
type Received = (u32, u64, u64);

async fn subscriber(
    args: &Args,
    n: usize,
    filter: String,
    epoch: Instant,
    tx: mpsc::UnboundedSender<Received>,
) -> anyhow::Result<AsyncClient> {
    let clean = !args.persistent;
    let (client, mut events) = AsyncClient::new(
        options(args, format!("{}-sub-{n}", args.id), clean, port_for(args, &args.sub_ports, n)),
        10_000,
    );
    client.subscribe(filter, qos(args.qos)).await?;
    loop {
        match events.poll().await.context("subscriber connection")? {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }
    tokio::task::spawn_local(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event
                && p.payload.len() >= 20
            {
                let publisher = u32::from_be_bytes(p.payload[0..4].try_into().unwrap_or_default());
                let seq = u64::from_be_bytes(p.payload[4..12].try_into().unwrap_or_default());
                let sent = u64::from_be_bytes(p.payload[12..20].try_into().unwrap_or_default());
                let _ = tx.send((publisher, seq, now_micros(epoch).saturating_sub(sent)));
            }
        }
    });
    Ok(client)
}

struct PublisherResult {
    published: u64,
    acknowledged: u64,
}

async fn publisher(
    args: &Args,
    n: u32,
    topic: String,
    epoch: Instant,
    per_second: f64,
) -> anyhow::Result<PublisherResult> {
    let (client, mut events) = AsyncClient::new(
        options(args, format!("{}-pub-{n}", args.id), true, port_for(args, &args.pub_ports, n as usize)),
        1_000,
    );
    // PUBACKs received, and PUBLISH packets actually written: rumqttc buffers requests, so a
    // QoS 0 publish "returns" before it is sent, and disconnecting early would discard it.
    let acks = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let sent = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let (acks2, sent2) = (acks.clone(), sent.clone());
    let pump = tokio::task::spawn_local(async move {
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::PubAck(_)) => acks2.set(acks2.get() + 1),
                Event::Outgoing(Outgoing::Publish(_)) => sent2.set(sent2.get() + 1),
                _ => {}
            }
        }
    });
    let mut payload = vec![0u8; args.payload.max(20)];
    let deadline = Instant::now() + args.duration;
    let interval = (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second));
    let mut next = Instant::now();
    let mut seq = 0u64;
    while Instant::now() < deadline && (args.messages == 0 || seq < args.messages) {
        if let Some(interval) = interval {
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        payload[0..4].copy_from_slice(&n.to_be_bytes());
        payload[4..12].copy_from_slice(&seq.to_be_bytes());
        payload[12..20].copy_from_slice(&now_micros(epoch).to_be_bytes());
        // Blocks when rumqttc's window is full: closed-loop publishing.
        client.publish(topic.as_str(), qos(args.qos), false, payload.clone()).await?;
        seq += 1;
    }
    // Let buffered publishes go out and outstanding acknowledgements arrive.
    let settle = Instant::now() + Duration::from_secs(30);
    let done = |qos: u8| if qos == 0 { sent.get() } else { acks.get() };
    while done(args.qos) < seq && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    pump.abort();
    // QoS 0 has no acknowledgement: "acknowledged" is what went out on the wire.
    Ok(PublisherResult { published: seq, acknowledged: done(args.qos) })
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

async fn run(args: Args) -> anyhow::Result<Report> {
    if args.qos > 1 {
        bail!("--qos must be 0 or 1");
    }
    let epoch = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<Received>();
    let (publishers, subscribers) = match args.workload {
        Workload::Fanin => (args.publishers, args.subscribers),
        Workload::Fanout => (1, args.subscribers),
        Workload::Pairs => (args.publishers, args.publishers),
        Workload::Idle => bail!("the idle workload has its own runner"),
    };
    let mut subs = Vec::new();
    for s in 0..subscribers {
        let filter = match args.workload {
            Workload::Fanin => "bench/#".to_string(),
            Workload::Fanout => "bench/fanout".to_string(),
            Workload::Pairs | Workload::Idle => format!("bench/pair/{s}"),
        };
        subs.push(subscriber(&args, s, filter, epoch, tx.clone()).await?);
    }
    drop(tx);
    tokio::time::sleep(args.settle).await;
    let per_publisher = if args.rate == 0 { 0.0 } else { args.rate as f64 / publishers as f64 };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let topic = match args.workload {
            Workload::Fanin => format!("bench/{p}"),
            Workload::Fanout => "bench/fanout".to_string(),
            Workload::Pairs | Workload::Idle => format!("bench/pair/{p}"),
        };
        let args = clone_args(&args);
        tasks.push(tokio::task::spawn_local(async move {
            publisher(&args, p as u32, topic, epoch, per_publisher).await
        }));
    }
    let mut report = Report::default();
    for t in tasks {
        let r = t.await??;
        report.published += r.published;
        report.acknowledged += r.acknowledged;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    // Deliveries still in flight: wait until quiet.
    // Per message: deliveries, first and last latency.
    let mut seen: HashMap<(u32, u64), (u32, u64, u64)> = HashMap::new();
    let mut latencies = Vec::new();
    let quiet = Duration::from_millis(if args.persistent { 2000 } else { 700 });
    // Collection ends after `quiet` without a delivery.
    while let Ok(Some((publisher, seq, latency))) = tokio::time::timeout(quiet, rx.recv()).await {
        let entry = seen.entry((publisher, seq)).or_insert((0, u64::MAX, 0));
        *entry = (entry.0 + 1, entry.1.min(latency), entry.2.max(latency));
        latencies.push(latency);
    }
    let delivered_seconds = started.elapsed().as_secs_f64() - quiet.as_secs_f64();
    let fanout = match args.workload {
        Workload::Fanout => subscribers as u64,
        _ => 1,
    };
    report.expected = report.acknowledged * fanout;
    report.delivered = seen.values().map(|c| u64::from(c.0)).sum();
    report.duplicates = seen.values().map(|c| u64::from(c.0).saturating_sub(fanout)).sum();
    let distinct: u64 = seen.values().map(|c| u64::from(c.0).min(fanout)).sum();
    report.lost = report.expected.saturating_sub(distinct);
    latencies.sort_unstable();
    report.latency_p50_ms = percentile(&latencies, 0.50);
    report.latency_p99_ms = percentile(&latencies, 0.99);
    report.latency_p999_ms = percentile(&latencies, 0.999);
    let mut firsts: Vec<u64> = seen.values().map(|c| c.1).collect();
    let mut lasts: Vec<u64> = seen.values().map(|c| c.2).collect();
    firsts.sort_unstable();
    lasts.sort_unstable();
    report.first_delivery_p50_ms = percentile(&firsts, 0.50);
    report.last_delivery_p50_ms = percentile(&lasts, 0.50);
    report.last_delivery_p90_ms = percentile(&lasts, 0.90);
    report.last_delivery_p99_ms = percentile(&lasts, 0.99);
    report.workload = format!("{:?}", args.workload).to_lowercase();
    report.qos = args.qos;
    report.payload = args.payload;
    report.publishers = publishers;
    report.subscribers = subscribers;
    report.persistent = args.persistent;
    report.seconds = publish_seconds;
    report.publish_rate = report.acknowledged as f64 / publish_seconds;
    report.delivery_rate = report.delivered as f64 / delivered_seconds.max(publish_seconds);
    for s in subs {
        let _ = s.disconnect().await;
    }
    Ok(report)
}

fn clone_args(a: &Args) -> Args {
    Args {
        host: a.host.clone(),
        port: a.port,
        sub_ports: a.sub_ports.clone(),
        pub_ports: a.pub_ports.clone(),
        settle: a.settle,
        workload: a.workload,
        publishers: a.publishers,
        subscribers: a.subscribers,
        qos: a.qos,
        payload: a.payload,
        duration: a.duration,
        rate: a.rate,
        messages: a.messages,
        window: a.window,
        persistent: a.persistent,
        id: a.id.clone(),
        connections: a.connections,
        concurrency: a.concurrency,
        hold: a.hold,
    }
}

#[derive(Debug, Serialize)]
struct IdleReport {
    workload: &'static str,
    connections: usize,
    failed: usize,
    connect_seconds: f64,
    connect_rate: f64,
}

/// An MQTT 3.1.1 CONNECT: clean session, keep-alive 0 (never pinged, never timed out).
/// Hand-encoded because the idle workload needs nothing else of a client, and 10,000 rumqttc
/// event loops would measure the load generator rather than the broker.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + client_id.len());
    body.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

async fn idle_connection(addr: (String, u16), client_id: String) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&connect_packet(&client_id)).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("CONNACK {connack:02x?}");
    }
    Ok(stream)
}

async fn run_idle(args: &Args) -> anyhow::Result<()> {
    use std::io::Write as _;
    let started = Instant::now();
    let mut open = Vec::with_capacity(args.connections);
    let mut failed = 0;
    let mut first_error = None;
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        while pending.len() >= args.concurrency.max(1) {
            match pending.join_next().await {
                Some(Ok(Ok(stream))) => open.push(stream),
                Some(Ok(Err(err))) => {
                    failed += 1;
                    first_error.get_or_insert(err);
                }
                Some(Err(err)) => bail!("connect task: {err}"),
                None => break,
            }
        }
        pending.spawn_local(idle_connection((args.host.clone(), args.port), format!("{}-idle-{i}", args.id)));
    }
    while let Some(joined) = pending.join_next().await {
        match joined? {
            Ok(stream) => open.push(stream),
            Err(err) => {
                failed += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(err) = first_error {
        eprintln!("{failed} connections failed; first: {err:#}");
    }
    let report = IdleReport {
        workload: "idle",
        connections: open.len(),
        failed,
        connect_seconds: seconds,
        connect_rate: open.len() as f64 / seconds,
    };
    // Printed while the connections are open: the driver measures the broker now.
    println!("{}", serde_json::to_string(&report)?);
    std::io::stdout().flush()?;
    if args.hold.is_zero() {
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    } else {
        tokio::time::sleep(args.hold).await;
    }
    drop(open);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    if matches!(args.workload, Workload::Idle) {
        return local.block_on(&rt, run_idle(&args));
    }
    let report = local.block_on(&rt, run(args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
