//! Listeners, the ntex server, background tasks and graceful shutdown.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleetmq_config::{BrokerConfig, ListenerProtocol};
use ntex::service::chain_factory;
use ntex_mqtt::error::MqttError;

use crate::auth::AuthState;
use crate::core::Broker;
use crate::core::sys;
use crate::frontend::ListenerContext;
use crate::reload::{ConfigSource, Reloader, SharedReloader};
use crate::store::disk::DiskStore;
use crate::transport::ListenerStack;
use crate::transport::tls::{self, TlsHandle};

/// Sockets bound for the configured listeners, in config order, with their transport
/// stacks (TLS certificates are loaded at bind time, so a bad file stops the start).
#[derive(Debug)]
pub struct BoundListeners {
    sockets: Vec<(String, TcpListener)>,
    stacks: Vec<ListenerStack>,
    /// Certificate handles of TLS listeners, by listener index (for rotation).
    tls: Vec<(usize, TlsHandle)>,
    /// The HTTP endpoint's socket (`http.bind`), when `http.enabled`.
    http: Option<TcpListener>,
    /// The cluster link listener (`cluster.link_bind`), when clustering is on.
    cluster_link: Option<TcpListener>,
    /// Its certificate (`cluster.tls`).
    cluster_tls: Option<crate::transport::tls::TlsHandle>,
}

impl BoundListeners {
    /// Binds every listener now, so a port conflict is reported before anything starts.
    pub fn bind(config: &BrokerConfig) -> anyhow::Result<Self> {
        let mut sockets = Vec::new();
        let mut stacks = Vec::new();
        let mut handles = Vec::new();
        let max_packet = usize::try_from(config.limits.max_packet_size.as_u64()).unwrap_or(usize::MAX);
        for (i, listener) in config.listeners.iter().enumerate() {
            let name = listener.display_name();
            let tls = match &listener.tls {
                Some(tls) => {
                    let handle = TlsHandle::new(tls::server_config(i, tls)?);
                    handles.push((i, handle.clone()));
                    Some(handle)
                }
                None => None,
            };
            let socket = TcpListener::bind(listener.bind).with_context(|| {
                format!("cannot listen on {} (listeners[{i}], \"{name}\")", listener.bind)
            })?;
            socket.set_nonblocking(true)?;
            sockets.push((name, socket));
            stacks.push(ListenerStack::new(listener, tls, max_packet));
        }
        let http = crate::http::bind(config)?;
        let cluster_link = match &config.cluster {
            None => None,
            Some(cluster) => {
                // Gossip binds its UDP socket when it starts; try the address now so a conflict
                // stops the start with a clear message instead of a logged error later.
                drop(std::net::UdpSocket::bind(cluster.gossip_bind).with_context(|| {
                    format!("cannot bind cluster.gossip_bind {} (UDP)", cluster.gossip_bind)
                })?);
                let socket = TcpListener::bind(cluster.link_bind)
                    .with_context(|| format!("cannot listen on cluster.link_bind {}", cluster.link_bind))?;
                socket.set_nonblocking(true)?;
                Some(socket)
            }
        };
        let cluster_tls = match config.cluster.as_ref().and_then(|c| c.tls.as_ref()) {
            Some(tls) => {
                let server = fleetmq_config::Tls {
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                    ca_file: None,
                    min_version: fleetmq_config::TlsVersion::V1_2,
                    require_certificate: false,
                    use_identity_as_username: false,
                };
                Some(crate::transport::tls::TlsHandle::new(crate::transport::tls::server_config_at(
                    "cluster.tls",
                    &server,
                )?))
            }
            None => None,
        };
        Ok(BoundListeners { sockets, stacks, tls: handles, http, cluster_link, cluster_tls })
    }

    /// Actual address of the HTTP endpoint (resolves port 0), when it is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Actual addresses (resolves port 0).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|(_, s)| s.local_addr().ok()).collect()
    }
}

/// Serves until `shutdown` resolves (or `POST /api/v1/drain`), then shuts down gracefully: stop
/// accepting, ask clients to leave (v5: DISCONNECT 0x8B), wait up to `server.shutdown_timeout`,
/// hand the remaining sessions to the cluster's other nodes, stop.
pub async fn serve(
    broker: Broker,
    listeners: BoundListeners,
    shutdown: impl Future<Output = ()>,
    reloader: SharedReloader,
    hangup: Option<tokio::signal::unix::Signal>,
) -> anyhow::Result<()> {
    let config = broker.config().clone();
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let mut builder = ntex::server::build().workers(workers).disable_signals().shutdown_timeout(
        ntex::time::Millis(u32::try_from(config.server.shutdown_timeout.as_millis()).unwrap_or(u32::MAX)),
    );
    // What the admin API's stats report (the console's tester looks for a ws listener there).
    let summaries: Vec<crate::http::ListenerSummary> = listeners
        .sockets
        .iter()
        .zip(&config.listeners)
        .filter_map(|((name, socket), listener)| {
            Some(crate::http::ListenerSummary {
                name: name.clone(),
                protocol: listener.protocol.as_str(),
                address: socket.local_addr().ok()?,
                path: listener.protocol.is_websocket().then(|| listener.ws_path().to_string()),
            })
        })
        .collect();
    let mut plain = crate::transport::PlainListeners::default();
    for ((index, (name, socket)), stack) in listeners.sockets.into_iter().enumerate().zip(listeners.stacks) {
        let listener = &config.listeners[index];
        let transport = match listener.protocol {
            ListenerProtocol::Ws | ListenerProtocol::Wss => {
                format!("{} on {}", listener.protocol.as_str(), listener.ws_path())
            }
            other => other.as_str().to_string(),
        };
        let proxy = if listener.proxy_protocol { ", PROXY protocol required" } else { "" };
        tracing::info!(listener = %name, "listening on {} ({transport}{proxy}; MQTT 3.1, 3.1.1, 5.0)", socket.local_addr()?);
        let ctx = ListenerContext {
            broker: broker.clone(),
            name: name.as_str().into(),
            slots: stack.slots(),
            identity_as_username: stack.identity_as_username(),
        };
        plain.add(&stack, ctx.clone());
        builder = builder
            .listen(name.clone(), socket, async move |_| stack.factory(ctx.clone()))?
            .config(name.clone(), crate::transport::io_config());
    }
    if !plain.is_empty() {
        builder = builder.on_accept(async move |listener: Arc<str>, stream| plain.adopt(&listener, stream));
    }
    // POST /api/v1/drain does what SIGTERM does.
    let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
    if let Some(socket) = listeners.http {
        // POST /api/v1/reload does what SIGHUP does.
        let hook_reloader = reloader.clone();
        let hook: crate::http::ReloadHook =
            Arc::new(move || hook_reloader.lock().unwrap_or_else(|p| p.into_inner()).check(true));
        let drain: crate::http::DrainHook = Arc::new(move || {
            let _ = drain_tx.send(true);
        });
        let endpoint = crate::http::Endpoint::new(broker.clone(), Some(hook))?
            .with_listeners(summaries)
            .with_drain(drain);
        builder = crate::http::listen(builder, socket, endpoint)?;
    }
    let cluster = crate::cluster::Cluster::of(&broker);
    let mut link_port = 0;
    if let (Some(cluster), Some(socket)) = (&cluster, listeners.cluster_link) {
        link_port = socket.local_addr()?.port();
        tracing::info!(node = cluster.node(), "cluster link listening on {}", socket.local_addr()?);
        let (cluster, core) = (cluster.clone(), broker.clone());
        let name = crate::cluster::link_server::SERVICE_NAME;
        builder = match listeners.cluster_tls.clone() {
            None => builder.listen(name, socket, async move |_| {
                crate::cluster::link_server::factory(cluster.clone(), core.clone())
            })?,
            Some(handle) => builder.listen(name, socket, async move |_| {
                chain_factory(crate::transport::tls::TlsAccept(handle.clone()))
                    .map_err(|err| {
                        tracing::debug!("cluster link: TLS handshake failed: {err}");
                        MqttError::Service(crate::cluster::link_server::LinkError::new(format!("TLS: {err}")))
                    })
                    .and_then(crate::cluster::link_server::factory(cluster.clone(), core.clone()))
            })?,
        }
        .config(name, crate::cluster::link_server::config(&config));
    }
    let server = builder.run();
    if let Some(cluster) = &cluster {
        cluster.start(broker.clone(), link_port);
    }

    // After recovery and binding: the bridges' internal sessions resume their stored queues.
    let bridges = crate::bridge::Bridges::start(&broker);
    let bridge_updates = bridges.clone();
    reloader.lock().unwrap_or_else(|p| p.into_inner()).add_hook(
        "bridges",
        Vec::new(),
        Box::new(move |config: &BrokerConfig| {
            bridge_updates.update(config.bridges.clone());
            Ok(Vec::new())
        }),
    );
    ntex::rt::spawn(Reloader::run(reloader, hangup));
    let timers = broker.clone();
    ntex::rt::spawn(async move {
        // Delayed publishes and wills that came due while the node was down fire at once:
        // in a cluster, only once the node knows its peers' routes, or they would reach this
        // node's subscribers only.
        if let Some(cluster) = crate::cluster::Cluster::of(&timers) {
            cluster.joined().await;
        }
        timers.run_timers().await
    });
    let periodic = broker.clone();
    let interval = config.sys.interval;
    ntex::rt::spawn(async move {
        loop {
            // Read every time: `sys.interval` is reloadable.
            let interval = periodic.config().sys.interval;
            let tick = if interval.is_zero() { Duration::from_secs(60) } else { interval };
            tokio::time::sleep(tick).await;
            if !periodic.config().sys.interval.is_zero() {
                sys::publish(&periodic);
            }
            periodic.housekeeping();
        }
    });
    if !interval.is_zero() {
        sys::publish(&broker);
    }
    tokio::select! {
        _ = shutdown => {}
        Ok(()) = drain_rx.changed() => tracing::info!("drain requested through the admin API"),
    }
    // Bridges first, while the store is open: their sessions detach like clients do.
    bridges.stop();
    tracing::info!(
        connections = broker.connected(),
        "shutting down: no new connections, disconnecting clients"
    );
    // Established cluster links keep running: clients that reconnect to other nodes meanwhile
    // take their sessions from here.
    server.pause().await;
    broker.begin_shutdown();
    let deadline = Instant::now() + config.server.shutdown_timeout;
    while broker.connected() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if broker.connected() > 0 {
        tracing::warn!(remaining = broker.connected(), "shutdown timeout: closing remaining connections");
    }
    if let Some(cluster) = &cluster {
        // Drain: the sessions still here go to the other nodes (kept on disk when there are
        // none); then leave, so peers drop this node's routes at once instead of waiting for
        // the failure detector.
        let bound = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(2));
        cluster.hand_over_all(&broker, bound).await;
        cluster.stop().await;
    }
    // Not ntex's graceful stop: the graceful part (no new connections, clients asked to leave
    // and waited for up to `shutdown_timeout`, the cluster drained) is done above. ntex-server
    // 3.11's graceful stop also sometimes misses a stopped worker's completion and then waits
    // the whole `shutdown_timeout` more with no connection left (1 stop in 40 here).
    server.stop(false).await;
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
        let auth = load_auth(&config)?;
        let broker = Broker::new(config);
        broker.set_auth(auth);
        crate::cluster::Cluster::attach(&broker)?;
        return Ok(broker);
    }
    let started = Instant::now();
    let store = DiskStore::open(&config.storage).with_context(|| {
        format!("cannot open the store in storage.data_dir {}", config.storage.data_dir.display())
    })?;
    let fsync = config.storage.fsync;
    let auth = load_auth(&config)?;
    let broker = Broker::with_store(config, Box::new(store));
    broker.set_auth(auth);
    // Before recovery, so the restored subscriptions are announced to the cluster.
    crate::cluster::Cluster::attach(&broker)?;
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

/// Loads `auth.password_file` and `auth.acl_file`; an unreadable or malformed file stops the
/// start with the file, line and reason.
fn load_auth(config: &BrokerConfig) -> anyhow::Result<AuthState> {
    let state = AuthState::load(&config.auth).context("cannot load the auth files")?;
    if let Some(passwords) = &state.passwords {
        tracing::info!(users = passwords.len(), file = %passwords.origin(), "password file loaded");
    }
    if let Some(acl) = state.acl.origin() {
        tracing::info!(file = %acl, "ACL file loaded");
    }
    Ok(state)
}

/// Builds the shared reloader: config file (when given), TLS certificates, auth files.
fn reloader(
    broker: &Broker,
    source: Option<(PathBuf, ConfigSource)>,
    listeners: &BoundListeners,
) -> SharedReloader {
    let mut reloader = Reloader::new(broker.clone(), source, listeners.tls.clone());
    let core = broker.clone();
    reloader.add_hook(
        "auth files",
        AuthState::files(&broker.config().auth),
        Box::new(move |config: &BrokerConfig| {
            let state = AuthState::load(&config.auth).map_err(|e| e.to_string())?;
            core.set_auth(state);
            tracing::info!("auth files reloaded");
            Ok(AuthState::files(&config.auth))
        }),
    );
    Arc::new(Mutex::new(reloader))
}

/// Runs the broker in this thread until SIGTERM or SIGINT. `source` is the config file and
/// how to read it again (with the command line's overrides) for hot reload.
pub fn run(config: BrokerConfig, source: Option<(PathBuf, ConfigSource)>) -> anyhow::Result<()> {
    ntex::rt::System::build().name("fleetmq").disable_signals().build(ntex::rt::DefaultRuntime).block_on(
        async move {
            // Signal handlers first: a SIGTERM during a long recovery must still stop cleanly
            // instead of killing the process with the default action.
            let signals = Signals::install()?;
            let broker = open_broker(config)?;
            // Bound after recovery, so a port that accepts connections means a broker that is
            // ready to serve them.
            let listeners = BoundListeners::bind(&broker.config())?;
            let reloader = reloader(&broker, source, &listeners);
            let (shutdown, hangup) = signals.split();
            serve(broker, listeners, shutdown, reloader, Some(hangup)).await
        },
    )
}

/// SIGTERM, SIGINT and SIGHUP, registered before anything slow happens.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    /// The shutdown signal (SIGTERM or SIGINT) and SIGHUP (reload).
    fn split(self) -> (impl Future<Output = ()>, tokio::signal::unix::Signal) {
        let (mut term, mut int) = (self.term, self.int);
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        (shutdown, self.hup)
    }
}

/// A broker running on its own thread, for tests and embedding.
pub struct RunningBroker {
    /// The core (metrics, sessions) for inspection.
    pub broker: Broker,
    /// Bound listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    http: Option<SocketAddr>,
    reloader: SharedReloader,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningBroker {
    /// Starts a broker; listeners with port 0 get ephemeral ports (see [`RunningBroker::addrs`]).
    pub fn start(config: BrokerConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let listeners = BoundListeners::bind(&config)?;
        let addrs = listeners.addrs();
        let http = listeners.http_addr();
        let broker = open_broker(config)?;
        let reloader = reloader(&broker, None, &listeners);
        let serve_reloader = reloader.clone();
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
                    serve(core, listeners, stop, serve_reloader, None).await
                })
        })?;
        Ok(RunningBroker { broker, addrs, http, reloader, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The HTTP endpoint's address (`http.bind` with port 0 resolved), when it is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Re-reads certificates and auth files now (what SIGHUP does for the binary).
    pub fn reload(&self) -> Result<String, String> {
        self.reloader.lock().unwrap_or_else(|p| p.into_inner()).check(true)
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
