//! Transports: what a listener does with a new TCP connection before MQTT starts.
//!
//! ```text
//! accept ─ connection rate limit ─ [PROXY header] ─ [TLS] ─ [HTTP upgrade → WebSocket] ─ MQTT
//! ```
//!
//! Every stage is an ntex filter or service on the same `Io`, so the MQTT front ends are the
//! same for all four listener protocols and see the client's address (from the PROXY header
//! when there is one) and its certificate (when it presented one).

pub mod proxy;
pub mod tls;
pub mod ws;

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleetmq_config::{Listener, ListenerProtocol};
use ntex::io::{Filter, Io, IoConfig, Layer};
use ntex::service::boxed::{self, BoxServiceFactory};
use ntex::service::cfg::SharedCfg;
use ntex::service::{ServiceFactory, chain_factory, fn_service};
use ntex::util::{BytePageSize, Ready};

use crate::frontend::socket::{WRITE_HIGH_WATERMARK, WRITE_THRESHOLD};
use crate::frontend::{ConnectionSlots, ListenerContext};

/// Why a connection ended before or outside MQTT (logged at debug; MQTT-level reasons are
/// logged by the front ends).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listener's connection rate limit refused the connection.
    #[error("connection rate limit reached")]
    RateLimited,
    /// TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The WebSocket upgrade failed or the path was wrong.
    #[error("{0}")]
    WebSocket(String),
    /// The HTTP layer in front of WebSocket failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The connection ended before MQTT started (no or a bad CONNECT).
    #[error("{0}")]
    Mqtt(String),
}

/// A token bucket: `rate` new connections per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter admitting `per_second` on average.
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        RateLimiter { rate, state: Mutex::new((rate, Instant::now())) }
    }

    /// Takes a token if one is available.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let refilled =
            (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now);
            true
        } else {
            *state = (refilled, now);
            false
        }
    }
}

/// Boxed per-listener stack.
pub type ListenerFactory = BoxServiceFactory<SharedCfg, Io, (), TransportError, ()>;

/// What a listener's stack needs; `Send + Clone` so every worker thread builds its own.
#[derive(Clone, Debug)]
pub struct ListenerStack {
    protocol: ListenerProtocol,
    proxy_protocol: bool,
    ws_path: Arc<str>,
    max_frame: usize,
    tls: Option<tls::TlsHandle>,
    rate: Option<Arc<RateLimiter>>,
    slots: Option<Arc<ConnectionSlots>>,
    identity_as_username: bool,
}

impl ListenerStack {
    /// The stack for `listener`; `tls` is its certificate handle (mqtts/wss), `max_packet`
    /// the largest MQTT packet (WebSocket frames may carry a whole one).
    pub fn new(listener: &Listener, tls: Option<tls::TlsHandle>, max_packet: usize) -> Self {
        ListenerStack {
            protocol: listener.protocol,
            proxy_protocol: listener.proxy_protocol,
            ws_path: Arc::from(listener.ws_path()),
            max_frame: max_packet.saturating_add(16),
            tls,
            rate: (listener.max_connection_rate > 0)
                .then(|| Arc::new(RateLimiter::new(listener.max_connection_rate))),
            slots: (listener.max_connections > 0)
                .then(|| Arc::new(ConnectionSlots::new(listener.max_connections))),
            identity_as_username: listener.tls.as_ref().is_some_and(|t| t.use_identity_as_username),
        }
    }

    /// Whether the listener takes usernames from client certificates.
    pub fn identity_as_username(&self) -> bool {
        self.identity_as_username
    }

    /// The listener's connection slots (`max_connections`), shared by all its workers.
    pub fn slots(&self) -> Option<Arc<ConnectionSlots>> {
        self.slots.clone()
    }

    /// Plain MQTT over TCP without the PROXY protocol: served on FleetMQ's own socket
    /// ([`crate::frontend::socket::TcpSocket`]) instead of ntex's `Io`.
    pub fn is_plain(&self) -> bool {
        self.protocol == ListenerProtocol::Mqtt && !self.proxy_protocol
    }

    /// Counts a new connection against `max_connection_rate`; false when over it.
    fn admit(&self, broker: &crate::core::Broker, listener: &str) -> bool {
        let admitted = self.rate.as_ref().is_none_or(|r| r.try_acquire());
        if !admitted {
            broker.metrics().connection_rate_limited();
            tracing::debug!(listener = %listener, "connection refused: connection rate limit");
        }
        admitted
    }

    /// The service factory for one worker.
    pub fn factory(&self, ctx: ListenerContext) -> ListenerFactory {
        let (stack, broker, listener) = (self.clone(), ctx.broker.clone(), ctx.name.clone());
        let admit = move || stack.admit(&broker, &listener);
        if self.is_plain() {
            // Plain TCP connections are taken before ntex wraps them ([`PlainListeners`]).
            return boxed::factory(fn_service(|_: Io| {
                Ready::Err(TransportError::Mqtt("plain MQTT connections are served by PlainListeners".into()))
            }));
        }
        let gate = fn_service(move |io: Io| {
            Ready::from(if admit() { Ok(io) } else { Err(TransportError::RateLimited) })
        });
        if self.proxy_protocol {
            let add = fn_service(|io: Io| {
                Ready::Ok::<_, TransportError>(io.add_filter(proxy::ProxyLayer::default()))
            });
            boxed::factory(chain_factory(gate).and_then(add).and_then(self.after_proxy(ctx)))
        } else {
            boxed::factory(chain_factory(gate).and_then(self.after_proxy(ctx)))
        }
    }

    fn after_proxy<F: Filter>(
        &self,
        ctx: ListenerContext,
    ) -> BoxServiceFactory<SharedCfg, Io<F>, (), TransportError, ()> {
        let tls = || {
            let handle = self.tls.clone().expect("validated config: TLS listeners have certificates");
            chain_factory(tls::TlsAccept(handle)).map_err(TransportError::Tls)
        };
        let (path, max_frame) = (Rc::from(&*self.ws_path), self.max_frame);
        match self.protocol {
            ListenerProtocol::Mqtt => boxed::factory(mqtt::<F>(ctx)),
            ListenerProtocol::Mqtts => {
                boxed::factory(tls().and_then(mqtt::<Layer<tls::TlsServerFilter, F>>(ctx)))
            }
            ListenerProtocol::Ws => {
                boxed::factory(ws::websocket::<F, _>(path, max_frame, move || mqtt(ctx.clone())))
            }
            ListenerProtocol::Wss => {
                boxed::factory(tls().and_then(ws::websocket::<Layer<tls::TlsServerFilter, F>, _>(
                    path,
                    max_frame,
                    move || mqtt(ctx.clone()),
                )))
            }
        }
    }
}

fn mqtt<F: Filter>(
    ctx: ListenerContext,
) -> impl ServiceFactory<Io<F>, SharedCfg, Response = (), Error = TransportError, InitError = ()> {
    let ctx = Rc::new(ctx);
    fn_service(move |io: Io<F>| {
        spawn_connection(io, ctx.clone());
        Ready::Ok(())
    })
}

/// Runs an MQTT connection as a task of its own on this worker, so the listener's service
/// call (and every layer's boxed future around it) ends now: a connection's future is then
/// polled directly by the runtime and is the only allocation it keeps.
fn spawn_connection<F: Filter>(io: Io<F>, ctx: Rc<ListenerContext>) {
    // Not awaited: the handle only reports the task's end, which the task logs itself.
    drop(ntex::rt::spawn(async move {
        if let Err(err) = crate::frontend::connection::serve(io, ctx.clone()).await {
            tracing::debug!(listener = %ctx.name, "connection closed before MQTT started: {err}");
        }
    }));
}

/// The plain MQTT listeners ([`ListenerStack::is_plain`]) by name, for ntex-server's
/// on-accept hook: their connections are taken as std `TcpStream`s before ntex wraps them in
/// an `Io`, and served by [`crate::frontend::connection::serve_tcp`] on the accepting worker.
///
/// ntex-server 3.11 hands listeners only `Io`s. Its on-accept hook is the one place that sees
/// the accepted stream, on the worker thread that will serve it, and the hook's error is how
/// it keeps the stream: the server then drops the connection from its own bookkeeping and
/// does nothing more with it (it logs the error through `log`, which FleetMQ does not
/// install). Accepting, pausing on shutdown and spreading connections over the workers stay
/// ntex-server's.
#[derive(Clone, Default)]
pub struct PlainListeners(Arc<std::collections::HashMap<String, (ListenerStack, ListenerContext)>>);

/// The on-accept hook's "taken" result (see [`PlainListeners`]).
#[derive(Debug)]
pub struct Adopted;

impl std::fmt::Display for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("served by FleetMQ's plain TCP front end")
    }
}

thread_local! {
    /// Each worker's contexts of the plain listeners, shared by its connections.
    static PLAIN_CONTEXTS: std::cell::RefCell<std::collections::HashMap<String, Rc<ListenerContext>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl PlainListeners {
    /// Adds a listener (only plain ones are kept).
    pub fn add(&mut self, stack: &ListenerStack, ctx: ListenerContext) {
        if stack.is_plain() {
            Arc::make_mut(&mut self.0).insert(ctx.name.to_string(), (stack.clone(), ctx));
        }
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// ntex-server's on-accept hook: takes connections of plain listeners and returns the
    /// others' streams to ntex.
    pub fn adopt(
        &self,
        listener: &str,
        stream: ntex::server::Stream,
    ) -> Result<ntex::server::Stream, Adopted> {
        let Some((stack, ctx)) = self.0.get(listener) else {
            return Ok(stream);
        };
        let ntex::server::Stream::Tcp(stream) = stream else {
            return Ok(stream);
        };
        if !stack.admit(&ctx.broker, &ctx.name) {
            return Err(Adopted);
        }
        let stream = match stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(listener, "cannot register an accepted connection: {err}");
                return Err(Adopted);
            }
        };
        let ctx = PLAIN_CONTEXTS.with_borrow_mut(|contexts| match contexts.get(&*ctx.name) {
            Some(shared) => shared.clone(),
            None => contexts.entry(ctx.name.to_string()).or_insert_with(|| Rc::new(ctx.clone())).clone(),
        });
        // Not awaited: the handle only reports the task's end, which the task logs itself.
        drop(ntex::rt::spawn(async move {
            if let Err(err) = crate::frontend::connection::serve_tcp(stream, ctx.clone()).await {
                tracing::debug!(listener = %ctx.name, "connection closed before MQTT started: {err}");
            }
        }));
        Err(Adopted)
    }
}

/// Write buffer page for the ntex listeners: 64 KiB, so a write at
/// [`WRITE_THRESHOLD`] (32 KiB) needs no page chain. The threshold matters more: with 16 KiB
/// pages the pairs flood read 331k against 378k msg/CPU-s (medians of 3 bimodal runs), and
/// idle RSS did not change.
const WRITE_PAGE: BytePageSize = BytePageSize::Size64;
/// ntex's default low watermark and per-thread buffer cache.
const WRITE_LOW_WATERMARK: usize = 512 + 24;
const BUFFER_CACHE: usize = 128;

/// The socket settings of the MQTT listeners (ntex reads them per accepted `Io`).
pub fn io_config() -> SharedCfg {
    SharedCfg::new("mqtt")
        .add(
            IoConfig::new()
                .set_write_page_size(WRITE_PAGE)
                .set_write_buf_threshold(WRITE_THRESHOLD)
                .set_write_buf(WRITE_HIGH_WATERMARK, WRITE_LOW_WATERMARK, BUFFER_CACHE),
        )
        .into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limiter.try_acquire_at(t0), "burst of one second's worth: {i}");
        }
        assert!(!limiter.try_acquire_at(t0), "bucket empty");
        assert!(!limiter.try_acquire_at(t0 + Duration::from_millis(100)), "half a token after 100 ms");
        assert!(limiter.try_acquire_at(t0 + Duration::from_millis(200)), "one token after 200 ms");
        assert!(limiter.try_acquire_at(t0 + Duration::from_secs(10)), "refilled");
        let mut admitted = 0;
        for _ in 0..100 {
            admitted += usize::from(limiter.try_acquire_at(t0 + Duration::from_secs(10)));
        }
        assert_eq!(admitted, 4, "never more than the burst");
    }
}
