//! The broker's HTTP endpoint (`http.bind`): Prometheus `/metrics`, `/healthz`, `/readyz` and
//! the admin API under `/api/v1/` (only with `http.admin_token_file`; see docs/admin-api.md) and
//! the web console under `/console/` (static pages on top of the admin API; docs/console.md).
//!
//! It is one more listener of the broker's ntex server (ntex's HTTP/1.1 service with a small
//! hand-written router), so it shares the workers, the start and the shutdown of the MQTT
//! listeners. Work that walks every session (a scrape, a client listing) runs on the blocking
//! pool so the worker's MQTT connections are not held up by it.

pub mod admin;
pub mod console;
pub mod metrics;
pub mod token;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use fleetmq_config::BrokerConfig;
use ntex::http::{HttpService, HttpServiceConfig, KeepAlive, Method, Request, Response, StatusCode, header};
use ntex::server::ServerBuilder;
use ntex::service::cfg::SharedCfg;
use ntex::service::fn_service;
use ntex::time::Seconds;
use ntex::util::{Bytes, BytesMut};
use serde::Serialize;

use crate::core::Broker;

/// Name of the HTTP service in the ntex server (distinct from the default listener names,
/// `<protocol>-<port>`).
pub const SERVICE_NAME: &str = "fleetmq-http";

/// Largest request body accepted (larger ones get 413).
pub const MAX_BODY: usize = 64 * 1024;

/// What `POST /api/v1/reload` runs: reloads the configuration and returns a summary of what
/// changed, or why nothing could be applied. Called on the blocking pool.
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Starts the graceful shutdown (`POST /api/v1/drain`), as SIGTERM does.
pub type DrainHook = Arc<dyn Fn() + Send + Sync>;

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The metrics registry refused a metric (a bug in the metric definitions).
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running MQTT listener as `GET /api/v1/stats` reports it (the console offers the
/// WebSocket one to its publish/subscribe tester).
#[derive(Debug, Clone, Serialize)]
pub struct ListenerSummary {
    /// `listeners[].name` or `<protocol>-<port>`.
    pub name: String,
    /// `mqtt`, `mqtts`, `ws` or `wss`.
    pub protocol: &'static str,
    /// The bound address (port 0 resolved).
    pub address: SocketAddr,
    /// The WebSocket path (`ws`/`wss` only).
    pub path: Option<String>,
}

/// State shared by the HTTP service of every worker.
pub struct Endpoint {
    broker: Broker,
    metrics: metrics::Exporter,
    admin: Option<token::AdminToken>,
    reload: Option<ReloadHook>,
    drain: Option<DrainHook>,
    listeners: Vec<ListenerSummary>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("admin", &self.admin)
            .field("reload", &self.reload.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint for `broker`; the admin API is on when `http.admin_token_file` is set.
    pub fn new(broker: Broker, reload: Option<ReloadHook>) -> Result<Self, HttpError> {
        let admin = broker.config().http.admin_token_file.as_deref().map(token::AdminToken::new);
        let metrics = metrics::Exporter::new(broker.clone())?;
        Ok(Endpoint { broker, metrics, admin, reload, drain: None, listeners: Vec::new() })
    }

    /// Sets the listeners the stats report (the server knows their bound addresses; the
    /// configuration may say port 0).
    pub fn with_listeners(mut self, listeners: Vec<ListenerSummary>) -> Self {
        self.listeners = listeners;
        self
    }

    /// Enables `POST /api/v1/drain`.
    pub fn with_drain(mut self, drain: DrainHook) -> Self {
        self.drain = Some(drain);
        self
    }

    /// Serves one request.
    pub async fn handle(self: &Arc<Self>, mut req: Request) -> Response {
        let started = Instant::now();
        let response = self.route(&mut req).await;
        tracing::debug!(
            method = %req.method(),
            path = req.path(),
            status = response.status().as_u16(),
            peer = %crate::frontend::display_peer(req.peer_addr()),
            elapsed_us = started.elapsed().as_micros() as u64,
            "HTTP request"
        );
        response
    }

    async fn route(self: &Arc<Self>, req: &mut Request) -> Response {
        let api = req.path() == "/api/v1" || req.path().starts_with("/api/v1/");
        let body = match read_body(req).await {
            Ok(body) => body,
            Err((status, message)) if api => return error(status, message),
            Err((status, message)) => return text(status, format!("{message}\n")),
        };
        if api {
            return admin::handle(self, req, body).await;
        }
        if console::is_console_path(req.path()) {
            return console::serve(req);
        }
        let path = req.path();
        if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            // The endpoint is served by the same server as the MQTT listeners, so answering
            // at all means they are bound and the store is open; what remains is a cluster
            // node still learning its peers (CONNECTs wait meanwhile) and shutdown.
            "/readyz" if self.broker.is_shutting_down() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            "/readyz" if crate::cluster::Cluster::of(&self.broker).is_some_and(|c| !c.is_joined()) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "joining the cluster\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            _ => {
                let endpoint = self.clone();
                match blocking(move || endpoint.metrics.render().map_err(|e| e.to_string()))
                    .await
                    .and_then(|r| r)
                {
                    Ok(body) => {
                        Response::build(StatusCode::OK).content_type(metrics::CONTENT_TYPE).body(body)
                    }
                    Err(err) => {
                        tracing::error!("metrics scrape failed: {err}");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n")
                    }
                }
            }
        }
    }
}

/// Reads the request body, at most [`MAX_BODY`] bytes.
async fn read_body(req: &mut Request) -> Result<Bytes, (StatusCode, String)> {
    let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {MAX_BODY} bytes"));
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut payload = req.take_payload();
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.recv().await {
        let chunk =
            chunk.map_err(|err| (StatusCode::BAD_REQUEST, format!("cannot read the request body: {err}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Runs `f` on the blocking pool (it walks all sessions or calls out to reload code).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|err| format!("task failed: {err}"))
}

/// A plain-text response.
fn text(status: StatusCode, body: impl Into<String>) -> Response {
    Response::build(status).content_type("text/plain; charset=utf-8").body(body.into())
}

/// 405 with the methods the resource has.
fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// A JSON response.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::build(status).content_type("application/json").body(body),
        Err(err) => {
            tracing::error!("cannot encode a JSON response: {err}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the response\n")
        }
    }
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Error {
        error: String,
    }
    json(status, &Error { error: message.into() })
}

/// Service settings: small header limits and short idle times (this endpoint serves probes,
/// scrapes and operators, never bulk traffic).
fn service_config() -> SharedCfg {
    SharedCfg::new(SERVICE_NAME)
        .add(
            HttpServiceConfig::new()
                .set_max_headers(32)
                .set_max_buf_size(MAX_BODY)
                .set_keepalive(KeepAlive::Timeout(Seconds(15)))
                .set_client_timeout(Seconds(5)),
        )
        .into()
}

/// Binds `http.bind` when the endpoint is enabled (so a port conflict stops the start, naming
/// the key).
pub fn bind(config: &BrokerConfig) -> Result<Option<TcpListener>, io::Error> {
    if !config.http.enabled {
        return Ok(None);
    }
    let socket = TcpListener::bind(config.http.bind).map_err(|err| {
        io::Error::new(err.kind(), format!("cannot listen on {} (http.bind): {err}", config.http.bind))
    })?;
    socket.set_nonblocking(true)?;
    Ok(Some(socket))
}

/// Adds the endpoint on `socket` to the server being built.
pub fn listen(builder: ServerBuilder, socket: TcpListener, endpoint: Endpoint) -> io::Result<ServerBuilder> {
    tracing::info!(
        admin_api = endpoint.admin.is_some(),
        "HTTP endpoint on http://{}/ (/metrics, /healthz, /readyz{}, /console/)",
        socket.local_addr()?,
        if endpoint.admin.is_some() { ", /api/v1" } else { "" }
    );
    let endpoint = Arc::new(endpoint);
    let builder = builder.listen(SERVICE_NAME, socket, async move |_| {
        let endpoint = endpoint.clone();
        HttpService::new(fn_service(async move |req: Request| Ok::<_, io::Error>(endpoint.handle(req).await)))
    })?;
    Ok(builder.config(SERVICE_NAME, service_config()))
}

/// A parsed query string.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((percent_decode(name, true)?, percent_decode(value, true)?));
        }
        Ok(Query(pairs))
    }

    /// Refuses parameters the resource does not know (a typo in `?session=true` must not
    /// silently do less than asked).
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(name, _)| !known.contains(&name.as_str())) {
            Some((name, _)) if known.is_empty() => Err(format!("unknown query parameter {name:?}")),
            Some((name, _)) => Err(format!("unknown query parameter {name:?} (known: {})", known.join(", "))),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str, default: usize) -> Result<usize, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, String> {
        match self.get(name) {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(v) => Err(format!("{name}={v:?} is not true or false")),
        }
    }
}

/// Percent-decodes a path segment or query component (`plus_is_space` for query strings,
/// where `+` means a space).
fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let Some(hex) = hex else {
                    return Err(format!("invalid percent-encoding in {raw:?}"));
                };
                let digit = |b: u8| (b as char).to_digit(16).map_or(0, |d| d as u8);
                out.push(digit(hex[0]) << 4 | digit(hex[1]));
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{raw:?} is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%2fc", false).unwrap(), "a/b/c");
        assert_eq!(percent_decode("a+b%20c", false).unwrap(), "a+b c");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(percent_decode("%E2%82%AC", false).unwrap(), "€");
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("%+1", false).is_err(), "a sign is not a hex digit");
        assert!(percent_decode("%4", false).is_err());
        assert!(percent_decode("%FF", false).is_err(), "not UTF-8");
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("limit=5&prefix=a%2Fb&session&x=1")).unwrap();
        assert_eq!(q.number("limit", 100), Ok(5));
        assert_eq!(q.number("offset", 7), Ok(7));
        assert_eq!(q.get("prefix"), Some("a/b"));
        assert_eq!(q.flag("session"), Ok(true));
        assert!(q.only(&["limit", "prefix", "session"]).unwrap_err().contains("\"x\""));
        assert!(Query::parse(Some("limit=-1")).unwrap().number("limit", 1).is_err());
        assert!(Query::parse(Some("session=yes")).unwrap().flag("session").is_err());
    }
}
