//! Listeners, the ntex server, background tasks and graceful shutdown.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleetmq_config::BrokerConfig;
use ntex::io::Io;
use ntex::service::cfg::SharedCfg;
use ntex::service::{ServiceFactory, chain_factory, fn_service};
use ntex::time::Seconds;
use ntex_mqtt::error::{HandshakeError, MqttError};
use ntex_mqtt::{MqttServer, MqttServiceConfig, QoS, v3, v5};

use crate::core::Broker;
use crate::core::sys;
use crate::frontend::{FrontendError, ListenerContext, preamble};
use crate::store::disk::DiskStore;

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Seconds = Seconds(10);

/// Sockets bound for the configured listeners, in config order.
#[derive(Debug)]
pub struct BoundListeners {
    sockets: Vec<(String, TcpListener)>,
}

impl BoundListeners {
    /// Binds every listener now, so a port conflict is reported before anything starts.
    pub fn bind(config: &BrokerConfig) -> anyhow::Result<Self> {
        refuse_unimplemented(config)?;
        let mut sockets = Vec::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let name = listener.display_name();
            let socket = TcpListener::bind(listener.bind).with_context(|| {
                format!("cannot listen on {} (listeners[{i}], \"{name}\")", listener.bind)
            })?;
            socket.set_nonblocking(true)?;
            sockets.push((name, socket));
        }
        Ok(BoundListeners { sockets })
    }

    /// Actual addresses (resolves port 0).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|(_, s)| s.local_addr().ok()).collect()
    }
}

/// Config keys this build parses but does not serve yet: refusing them beats silently
/// ignoring a security setting. Entries leave as the features land.
fn refuse_unimplemented(config: &BrokerConfig) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if l.protocol != fleetmq_config::ListenerProtocol::Mqtt {
            keys.push(format!("listeners[{i}].protocol: {}", l.protocol.as_str()));
        }
        if l.proxy_protocol {
            keys.push(format!("listeners[{i}].proxy_protocol"));
        }
        if l.max_connections > 0 {
            keys.push(format!("listeners[{i}].max_connections"));
        }
        if l.max_connection_rate > 0 {
            keys.push(format!("listeners[{i}].max_connection_rate"));
        }
    }
    if config.auth.password_file.is_some() {
        keys.push("auth.password_file".into());
    }
    if config.auth.acl_file.is_some() {
        keys.push("auth.acl_file".into());
    }
    if config.limits.max_publish_rate > 0 {
        keys.push("limits.max_publish_rate".into());
    }
    if keys.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("not supported by this build yet: {}", keys.join(", "))
    }
}

fn mqtt_config(config: &BrokerConfig) -> SharedCfg {
    let limits = &config.limits;
    let max_packet = u32::try_from(limits.max_packet_size.as_u64()).unwrap_or(u32::MAX);
    SharedCfg::new("mqtt")
        .add(
            MqttServiceConfig::new()
                .set_max_qos(QoS::ExactlyOnce)
                // CONNECT may be larger so the handshake can refuse it by name (CONNACK 0x95);
                // the connection's limit is set to `max_packet` once CONNECT is accepted.
                .set_max_size(max_packet.saturating_mul(2))
                // Payloads that arrive in pieces are reassembled by the front ends; big
                // chunks keep the pieces few.
                .set_min_chunk_size(max_packet)
                .set_max_receive(limits.max_inflight)
                .set_max_send(limits.max_inflight)
                .set_max_receive_size((max_packet as usize).saturating_mul(2).max(64 * 1024))
                .set_max_topic_alias(limits.max_topic_alias)
                .set_connect_timeout(CONNECT_TIMEOUT),
        )
        .into()
}

/// The service stack for one listener: connection preamble (MQTT 3.1, empty client ids), then ntex-mqtt with our v3
/// and v5 front ends.
fn mqtt_service(
    ctx: ListenerContext,
) -> impl ServiceFactory<Io, SharedCfg, Response = (), Error = MqttError<FrontendError>, InitError = ()> {
    let ctx = Rc::new(ctx);
    let (ctx3, ctx5) = (ctx.clone(), ctx);
    chain_factory(fn_service(async |io: Io| match preamble::normalize(&io).await {
        Ok(()) => Ok(io),
        Err(err) => Err(MqttError::Handshake(HandshakeError::Disconnected(Some(err)))),
    }))
    .and_then(
        MqttServer::new()
            .v3(v3::MqttServer::new(move |h| crate::frontend::v3::handshake(h, ctx3.clone()))
                .middleware(crate::frontend::v3::Inbound)
                .protocol(crate::frontend::v3::protocol())
                .control(crate::frontend::v3::control())
                .publish(crate::frontend::v3::publish_unused()))
            .v5(v5::MqttServer::new(move |h| crate::frontend::v5::handshake(h, ctx5.clone()))
                .middleware(crate::frontend::v5::Inbound)
                .protocol(crate::frontend::v5::protocol())
                .control(crate::frontend::v5::control())
                .publish(crate::frontend::v5::publish_unused())),
    )
}

/// Serves until `shutdown` resolves, then shuts down gracefully: stop accepting, ask clients
/// to leave (v5: DISCONNECT 0x8B), wait up to `server.shutdown_timeout`, stop.
pub async fn serve(
    broker: Broker,
    listeners: BoundListeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = broker.config().clone();
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let mut builder = ntex::server::build().workers(workers).disable_signals().shutdown_timeout(
        ntex::time::Millis(u32::try_from(config.server.shutdown_timeout.as_millis()).unwrap_or(u32::MAX)),
    );
    for (name, socket) in listeners.sockets {
        tracing::info!(listener = %name, "listening on {} (MQTT 3.1, 3.1.1, 5.0)", socket.local_addr()?);
        let ctx = ListenerContext { broker: broker.clone(), name: name.clone() };
        builder = builder
            .listen(name.clone(), socket, async move |_| mqtt_service(ctx.clone()))?
            .config(name, mqtt_config(&config));
    }
    let server = builder.run();

    let timers = broker.clone();
    ntex::rt::spawn(async move { timers.run_timers().await });
    let periodic = broker.clone();
    let interval = config.sys.interval;
    ntex::rt::spawn(async move {
        let tick = if interval.is_zero() { Duration::from_secs(60) } else { interval };
        loop {
            tokio::time::sleep(tick).await;
            if !interval.is_zero() {
                sys::publish(&periodic);
            }
            periodic.housekeeping();
        }
    });
    if !interval.is_zero() {
        sys::publish(&broker);
    }

    shutdown.await;
    tracing::info!(
        connections = broker.connected(),
        "shutting down: no new connections, disconnecting clients"
    );
    server.pause().await;
    broker.begin_shutdown();
    let deadline = Instant::now() + config.server.shutdown_timeout;
    while broker.connected() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if broker.connected() > 0 {
        tracing::warn!(remaining = broker.connected(), "shutdown timeout: closing remaining connections");
    }
    server.stop(true).await;
    if let Err(err) = broker.store_flush().wait().await {
        tracing::error!("final store sync failed: {err}");
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// Creates the broker core: opens the durable store (when `storage.persistence` is on) and
/// restores its state. A store that cannot be opened or read stops the broker with the path
/// and the reason; it never silently starts empty.
pub fn open_broker(config: BrokerConfig) -> anyhow::Result<Broker> {
    if !config.storage.persistence {
        tracing::info!("persistence off: sessions, queues and retained messages are kept in memory only");
        return Ok(Broker::new(config));
    }
    let started = Instant::now();
    let store = DiskStore::open(&config.storage).with_context(|| {
        format!("cannot open the store in storage.data_dir {}", config.storage.data_dir.display())
    })?;
    let fsync = config.storage.fsync;
    let broker = Broker::with_store(config, Box::new(store));
    let recovered = broker.recover().context("cannot recover the stored state (the store may be damaged)")?;
    tracing::info!(
        retained = recovered.retained,
        sessions = recovered.sessions,
        messages = recovered.messages,
        delayed = recovered.delayed,
        fsync = ?fsync,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store opened and state recovered"
    );
    Ok(broker)
}

/// Runs the broker in this thread until SIGTERM or SIGINT.
pub fn run(config: BrokerConfig) -> anyhow::Result<()> {
    ntex::rt::System::build().name("fleetmq").disable_signals().build(ntex::rt::DefaultRuntime).block_on(
        async move {
            // Signal handlers first: a SIGTERM during a long recovery must still stop cleanly
            // instead of killing the process with the default action.
            let signals = Signals::install()?;
            let broker = open_broker(config)?;
            // Bound after recovery, so a port that accepts connections means a broker that is
            // ready to serve them.
            let listeners = BoundListeners::bind(broker.config())?;
            serve(broker, listeners, signals.wait()).await
        },
    )
}

/// SIGTERM and SIGINT, registered before anything slow happens.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// A broker running on its own thread, for tests and embedding.
pub struct RunningBroker {
    /// The core (metrics, sessions) for inspection.
    pub broker: Broker,
    /// Bound listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningBroker {
    /// Starts a broker; listeners with port 0 get ephemeral ports (see [`RunningBroker::addrs`]).
    pub fn start(config: BrokerConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let listeners = BoundListeners::bind(&config)?;
        let addrs = listeners.addrs();
        let broker = open_broker(config)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let core = broker.clone();
        let thread = std::thread::Builder::new().name("fleetmq-broker".into()).spawn(move || {
            ntex::rt::System::build()
                .name("fleetmq")
                .disable_signals()
                .build(ntex::rt::DefaultRuntime)
                .block_on(async move {
                    let stop = async move {
                        // The std channel is polled from a blocking thread: tests stop rarely.
                        let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    };
                    serve(core, listeners, stop).await
                })
        })?;
        Ok(RunningBroker { broker, addrs, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Gracefully stops the broker and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| anyhow::anyhow!("broker thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
