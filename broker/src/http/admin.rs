//! The admin REST API under `/api/v1/`: clients, subscriptions, retained messages, stats and
//! reload. JSON out, errors as `{"error": "..."}`; every request needs
//! `Authorization: Bearer <token>` (see [`super::token`]). docs/admin-api.md is the reference.
//!
//! Client ids and topics are taken from the rest of the path, percent-decoded, so both
//! `/api/v1/retained/a%2Fb` and `/api/v1/retained/a/b` name the topic `a/b`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ntex::http::{Method, Request, Response, StatusCode, header};
use ntex::util::Bytes;
use serde::Serialize;

use super::token::{self, Verdict};
use super::{Endpoint, ListenerSummary, Query, blocking, error, json, percent_decode};
use crate::core::Broker;
use crate::core::admin::{AdminError, ClientInfo, SubscriptionInfo};
use crate::core::metrics::DropReason;
use crate::core::session::Expiry;
use crate::core::types::{Message, QoS, RetainHandling, SubscriptionOptions};

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page (larger `limit`s are reduced to it).
pub const MAX_LIMIT: usize = 1000;
/// How long `DELETE /api/v1/clients/{id}` waits for the connection to close before answering.
pub const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// A refused request: status and message (and the methods allowed, for 405).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), allow: None }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn into_response(self) -> Response {
        let mut response = error(self.status, self.message);
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        let status = match err {
            AdminError::NoSuchClient(_) => StatusCode::NOT_FOUND,
            AdminError::NotConnected(_) => StatusCode::CONFLICT,
            AdminError::Topic(_) | AdminError::SharedFilter => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, err.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Serves `/api/v1/...` (auth first, so unknown paths reveal nothing without a token).
pub(super) async fn handle(endpoint: &Arc<Endpoint>, req: &Request, body: Bytes) -> Response {
    let Some(admin_token) = &endpoint.admin else {
        return error(StatusCode::NOT_FOUND, "the admin API is disabled (set http.admin_token_file)");
    };
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| token::bearer(v.as_bytes()));
    match admin_token.check(presented) {
        Verdict::Allowed => {}
        Verdict::Denied => {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"fleetmq\""),
            );
            return response;
        }
        Verdict::Unavailable => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin API is unavailable: http.admin_token_file cannot be used (see the broker log)",
            );
        }
    }
    match route(endpoint, req, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn route(endpoint: &Arc<Endpoint>, req: &Request, _body: Bytes) -> ApiResult {
    let query = Query::parse(req.uri().query()).map_err(ApiError::bad_request)?;
    let path = req.path();
    let rest = path.get("/api/v1".len()..).unwrap_or_default();
    // One slash only: in `retained//a` the topic is `/a`.
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (resource, arg) = match rest.split_once('/') {
        Some((resource, "")) => (resource, None),
        Some((resource, arg)) => (resource, Some(arg)),
        None => (rest, None),
    };
    let method = req.method();
    match (resource, arg) {
        ("clients", None) => {
            allow(method, &[Method::GET], "GET")?;
            list_clients(&endpoint.broker, &query).await
        }
        ("clients", Some(raw)) => {
            let id = decode(raw)?;
            allow(method, &[Method::GET, Method::DELETE], "GET, DELETE")?;
            if method == Method::GET {
                get_client(&endpoint.broker, &query, &id)
            } else {
                disconnect_client(&endpoint.broker, &query, &id).await
            }
        }
        ("subscriptions", None) => {
            allow(method, &[Method::GET], "GET")?;
            list_subscriptions(&endpoint.broker, &query).await
        }
        ("retained", None) => {
            allow(method, &[Method::GET], "GET")?;
            list_retained(&endpoint.broker, &query).await
        }
        ("retained", Some(raw)) => {
            let topic = decode(raw)?;
            allow(method, &[Method::GET, Method::DELETE], "GET, DELETE")?;
            if method == Method::GET {
                get_retained(&endpoint.broker, &query, &topic)
            } else {
                clear_retained(&endpoint.broker, &query, &topic).await
            }
        }
        ("stats", None) => {
            allow(method, &[Method::GET], "GET")?;
            query.only(&[]).map_err(ApiError::bad_request)?;
            stats(&endpoint.broker, endpoint.listeners.clone()).await
        }
        ("bridges", None) => {
            allow(method, &[Method::GET], "GET")?;
            query.only(&[]).map_err(ApiError::bad_request)?;
            Ok(json(StatusCode::OK, &list_bridges(&endpoint.broker)))
        }
        ("cluster", None) => {
            allow(method, &[Method::GET], "GET")?;
            query.only(&[]).map_err(ApiError::bad_request)?;
            Ok(json(StatusCode::OK, &cluster_status(&endpoint.broker)))
        }
        ("reload", None) => {
            allow(method, &[Method::POST], "POST")?;
            query.only(&[]).map_err(ApiError::bad_request)?;
            reload(endpoint).await
        }
        ("drain", None) => {
            allow(method, &[Method::POST], "POST")?;
            query.only(&[]).map_err(ApiError::bad_request)?;
            let Some(drain) = endpoint.drain.clone() else {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "drain not available"));
            };
            tracing::info!("drain requested through the admin API: shutting down gracefully");
            drain();
            Ok(json(
                StatusCode::ACCEPTED,
                &Reloaded { result: "draining: the broker hands its sessions over and exits".into() },
            ))
        }
        _ => Err(ApiError::not_found(format!("no such resource: {path}"))),
    }
}

fn allow(method: &Method, allowed: &[Method], header: &'static str) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("method {method} not allowed here (allowed: {header})"),
            allow: Some(header),
        })
    }
}

fn decode(raw: &str) -> Result<String, ApiError> {
    percent_decode(raw, false).map_err(ApiError::bad_request)
}

/// `limit` and `offset` of a listing.
#[derive(Debug, Clone, Copy)]
struct Page {
    offset: usize,
    limit: usize,
}

impl Page {
    fn from_query(query: &Query) -> Result<Self, ApiError> {
        Ok(Page {
            offset: query.number("offset", 0).map_err(ApiError::bad_request)?,
            limit: query.number("limit", DEFAULT_LIMIT).map_err(ApiError::bad_request)?.min(MAX_LIMIT),
        })
    }

    fn apply<T>(self, all: Vec<T>) -> Listing<T> {
        let total = all.len();
        let items = all.into_iter().skip(self.offset).take(self.limit).collect();
        Listing { total, offset: self.offset, limit: self.limit, items }
    }
}

/// One page of a listing.
#[derive(Debug, Serialize)]
struct Listing<T> {
    /// Items in the whole listing.
    total: usize,
    offset: usize,
    limit: usize,
    items: Vec<T>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[derive(Debug, Serialize)]
struct ClientJson {
    client_id: String,
    connected: bool,
    /// `ip:port` of the connection.
    address: Option<String>,
    protocol: Option<&'static str>,
    keep_alive: Option<u16>,
    listener: Option<String>,
    username: Option<String>,
    /// Unix seconds.
    connected_at: Option<u64>,
    /// Unix seconds (disconnected sessions).
    disconnected_at: Option<u64>,
    /// Seconds the session outlives its connection: 0 = ends with it, null = never expires.
    session_expiry_interval: Option<u64>,
    queued: usize,
    inflight: usize,
    inbound_qos2: usize,
    subscription_count: usize,
}

impl From<&ClientInfo> for ClientJson {
    fn from(c: &ClientInfo) -> Self {
        let conn = c.connection.as_deref();
        ClientJson {
            client_id: c.client_id.to_string(),
            connected: c.connected,
            address: conn.and_then(|i| i.peer).map(|p| p.to_string()),
            protocol: conn.map(|i| i.protocol.as_str()),
            keep_alive: conn.map(|i| i.keep_alive),
            listener: conn.map(|i| i.listener.to_string()),
            username: conn.and_then(|i| i.username.as_ref()).map(|u| u.to_string()),
            connected_at: conn.map(|i| unix_secs(i.connected_at)),
            disconnected_at: c.disconnected_at.map(unix_secs),
            session_expiry_interval: match c.expiry {
                Expiry::OnDisconnect => Some(0),
                Expiry::After(d) => Some(d.as_secs()),
                Expiry::Never => None,
            },
            queued: c.queued,
            inflight: c.inflight,
            inbound_qos2: c.inbound_qos2,
            subscription_count: c.subscriptions.len(),
        }
    }
}

#[derive(Debug, Serialize)]
struct ClientDetail {
    #[serde(flatten)]
    client: ClientJson,
    subscriptions: Vec<SubscriptionJson>,
    /// Topic of the will the session holds, if any.
    will_topic: Option<String>,
}

#[derive(Debug, Serialize)]
struct SubscriptionJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    subscription_id: Option<u32>,
}

impl SubscriptionJson {
    fn new(client_id: Option<String>, filter: &str, options: &SubscriptionOptions) -> Self {
        SubscriptionJson {
            client_id,
            filter: filter.to_string(),
            qos: options.qos.level(),
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: match options.retain_handling {
                RetainHandling::SendAlways => 0,
                RetainHandling::SendIfNew => 1,
                RetainHandling::DontSend => 2,
            },
            subscription_id: options.subscription_id.map(|id| id.get()),
        }
    }
}

impl From<SubscriptionInfo> for SubscriptionJson {
    fn from(s: SubscriptionInfo) -> Self {
        SubscriptionJson::new(Some(s.client_id.to_string()), &s.filter, &s.options)
    }
}

async fn list_clients(broker: &Broker, query: &Query) -> ApiResult {
    query.only(&["limit", "offset"]).map_err(ApiError::bad_request)?;
    let page = Page::from_query(query)?;
    let broker = broker.clone();
    let listing = blocking(move || {
        let page = page.apply(broker.client_ids());
        // Snapshot only the page: the id list is cheap, a snapshot locks the session.
        let items: Vec<ClientJson> =
            page.items.iter().filter_map(|id| broker.client_info(id)).map(|c| ClientJson::from(&c)).collect();
        Listing { total: page.total, offset: page.offset, limit: page.limit, items }
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(json(StatusCode::OK, &listing))
}

fn get_client(broker: &Broker, query: &Query, id: &str) -> ApiResult {
    query.only(&[]).map_err(ApiError::bad_request)?;
    let info = broker.client_info(id).ok_or_else(|| AdminError::NoSuchClient(id.to_string()))?;
    let detail = ClientDetail {
        client: ClientJson::from(&info),
        subscriptions: info.subscriptions.iter().map(|(f, o)| SubscriptionJson::new(None, f, o)).collect(),
        will_topic: info.will_topic.as_ref().map(|t| t.to_string()),
    };
    Ok(json(StatusCode::OK, &detail))
}

#[derive(Debug, Serialize)]
struct Disconnected {
    client_id: String,
    /// A connection was attached and was asked to close.
    was_connected: bool,
    /// That connection had closed when this response was sent.
    connection_closed: bool,
    /// The session was ended as well (`?session=true`).
    session_ended: bool,
}

async fn disconnect_client(broker: &Broker, query: &Query, id: &str) -> ApiResult {
    query.only(&["session"]).map_err(ApiError::bad_request)?;
    let end_session = query.flag("session").map_err(ApiError::bad_request)?;
    let done = broker.admin_disconnect(id, end_session)?;
    let mut closed = false;
    if let Some(generation) = done.generation {
        // The close happens on the connection's worker; wait for it briefly so that a script
        // that disconnects and then lists clients sees the result.
        let deadline = Instant::now() + DISCONNECT_WAIT;
        loop {
            closed = !broker.is_connection_attached(id, generation);
            if closed || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(json(
        StatusCode::OK,
        &Disconnected {
            client_id: id.to_string(),
            was_connected: done.generation.is_some(),
            connection_closed: closed,
            session_ended: done.session_ended,
        },
    ))
}

async fn list_subscriptions(broker: &Broker, query: &Query) -> ApiResult {
    query.only(&["client", "limit", "offset"]).map_err(ApiError::bad_request)?;
    let page = Page::from_query(query)?;
    let client = query.get("client").map(str::to_string);
    if let Some(id) = &client
        && broker.session(id).is_none()
    {
        return Err(AdminError::NoSuchClient(id.clone()).into());
    }
    let broker = broker.clone();
    let listing = blocking(move || {
        let all: Vec<SubscriptionJson> =
            broker.subscriptions(client.as_deref()).into_iter().map(SubscriptionJson::from).collect();
        page.apply(all)
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(json(StatusCode::OK, &listing))
}

/// The MQTT filter that finds every topic starting with `prefix`: its complete levels, then
/// `#` (so `$SYS/` prefixes reach `$` topics, which `#` alone never matches).
fn prefix_filter(prefix: &str) -> String {
    match prefix.rfind('/') {
        Some(i) => format!("{}#", &prefix[..=i]),
        None => "#".to_string(),
    }
}

#[derive(Debug, Serialize)]
struct RetainedJson {
    topic: String,
    qos: u8,
    payload_size: usize,
    /// Seconds until the Message Expiry Interval ends it (null: never).
    expires_in: Option<u32>,
}

impl RetainedJson {
    fn new(message: &Message, now: Instant) -> Self {
        RetainedJson {
            topic: message.topic.to_string(),
            qos: message.qos.level(),
            payload_size: message.payload.len(),
            expires_in: message.remaining_expiry(now),
        }
    }
}

async fn list_retained(broker: &Broker, query: &Query) -> ApiResult {
    query.only(&["prefix", "filter", "limit", "offset"]).map_err(ApiError::bad_request)?;
    let page = Page::from_query(query)?;
    let prefix = query.get("prefix").unwrap_or_default().to_string();
    if prefix.contains(['+', '#']) {
        return Err(ApiError::bad_request("prefix must not contain wildcards (use filter=)"));
    }
    let filter = match query.get("filter") {
        Some(filter) => filter.to_string(),
        None => prefix_filter(&prefix),
    };
    let broker = broker.clone();
    let listing = blocking(move || -> Result<Listing<RetainedJson>, AdminError> {
        let now = Instant::now();
        let all: Vec<RetainedJson> = broker
            .retained_matching(&filter)?
            .iter()
            .filter(|m| m.topic.starts_with(prefix.as_str()))
            .map(|m| RetainedJson::new(m, now))
            .collect();
        Ok(page.apply(all))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(json(StatusCode::OK, &listing))
}

#[derive(Debug, Serialize)]
struct PropertiesJson {
    payload_format_indicator: bool,
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Base64.
    correlation_data: Option<String>,
    user_properties: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
struct RetainedDetail {
    #[serde(flatten)]
    summary: RetainedJson,
    /// `utf8` or `base64`: how `payload` is written.
    payload_encoding: &'static str,
    payload: String,
    /// v5 properties (null when the message has none).
    properties: Option<PropertiesJson>,
}

fn get_retained(broker: &Broker, query: &Query, topic: &str) -> ApiResult {
    query.only(&["encoding"]).map_err(ApiError::bad_request)?;
    let encoding = query.get("encoding").unwrap_or("auto");
    let message = broker
        .retained_message(topic)?
        .ok_or_else(|| ApiError::not_found(format!("no retained message on {topic:?}")))?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (payload_encoding, payload) = match (encoding, std::str::from_utf8(&message.payload)) {
        ("auto" | "utf8", Ok(text)) => ("utf8", text.to_string()),
        ("utf8", Err(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the payload is not valid UTF-8 (use encoding=base64)",
            ));
        }
        ("auto" | "base64", _) => ("base64", b64(&message.payload)),
        (other, _) => {
            return Err(ApiError::bad_request(format!("encoding={other:?}: use auto, utf8 or base64")));
        }
    };
    let properties = message.properties.as_deref().map(|p| PropertiesJson {
        payload_format_indicator: p.payload_is_utf8,
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.as_deref().map(b64),
        user_properties: p.user_properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    });
    let detail = RetainedDetail {
        summary: RetainedJson::new(&message, Instant::now()),
        payload_encoding,
        payload,
        properties,
    };
    Ok(json(StatusCode::OK, &detail))
}

#[derive(Debug, Serialize)]
struct Cleared {
    topic: String,
    cleared: bool,
}

async fn clear_retained(broker: &Broker, query: &Query, topic: &str) -> ApiResult {
    query.only(&[]).map_err(ApiError::bad_request)?;
    let (cleared, durable) = broker.clear_retained(topic)?;
    if !cleared {
        return Err(ApiError::not_found(format!("no retained message on {topic:?}")));
    }
    // Answer once the removal is on disk: a restart right after must not bring it back.
    durable
        .wait()
        .await
        .map_err(|err| ApiError::internal(format!("the store failed to record the removal: {err}")))?;
    Ok(json(StatusCode::OK, &Cleared { topic: topic.to_string(), cleared }))
}

#[derive(Debug, Serialize)]
struct Stats {
    version: &'static str,
    uptime_seconds: u64,
    clients: ClientStats,
    messages: MessageStats,
    bytes: ByteStats,
    sessions: u64,
    subscriptions: u64,
    retained: u64,
    scheduled: u64,
    store_size_bytes: u64,
    listeners: Vec<ListenerSummary>,
}

#[derive(Debug, Serialize)]
struct ClientStats {
    connected: u64,
    disconnected: u64,
    total: u64,
    maximum: u64,
    accepted: u64,
    refused: u64,
    auth_failures: u64,
}

#[derive(Debug, Serialize)]
struct MessageStats {
    received: u64,
    sent: u64,
    dropped: u64,
    received_by_qos: [u64; 3],
    sent_by_qos: [u64; 3],
    dropped_by_reason: BTreeMap<&'static str, u64>,
    queued: u64,
    inflight: u64,
}

#[derive(Debug, Serialize)]
struct ByteStats {
    received: u64,
    sent: u64,
}

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

async fn stats(broker: &Broker, listeners: Vec<ListenerSummary>) -> ApiResult {
    let broker = broker.clone();
    let stats = blocking(move || {
        let m = broker.metrics();
        let totals = broker.session_totals();
        // The same figures as `$SYS` (core::sys::snapshot), structured.
        let connected = m.connected();
        let total = (broker.session_count() as u64).max(connected);
        let dropped_by_reason: BTreeMap<&'static str, u64> =
            DropReason::ALL.iter().map(|r| (r.as_str(), m.dropped_count(*r))).collect();
        Stats {
            version: crate::core::sys::VERSION,
            uptime_seconds: broker.uptime().as_secs(),
            clients: ClientStats {
                connected,
                disconnected: total.saturating_sub(connected),
                total,
                maximum: m.connected_max(),
                accepted: m.connections_accepted(),
                refused: m.connections_refused(),
                auth_failures: m.auth_failures(),
            },
            messages: MessageStats {
                received: m.received_total(),
                sent: m.sent_total(),
                dropped: dropped_by_reason.values().sum(),
                received_by_qos: QOS.map(|q| m.received(q)),
                sent_by_qos: QOS.map(|q| m.sent(q)),
                dropped_by_reason,
                queued: totals.queued,
                inflight: totals.inflight,
            },
            bytes: ByteStats { received: m.bytes_received(), sent: m.bytes_sent() },
            sessions: totals.sessions,
            subscriptions: broker.subscription_count() as u64,
            retained: broker.retained_count() as u64,
            scheduled: broker.scheduled_count() as u64,
            store_size_bytes: broker.store_size(),
            listeners,
        }
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(json(StatusCode::OK, &stats))
}

/// One bridge in `GET /api/v1/bridges`.
#[derive(Debug, Serialize)]
struct BridgeInfo {
    name: String,
    state: &'static str,
    address: Option<String>,
    last_error: Option<String>,
    forwarded: Forwarded,
    reconnects: u64,
    queue_depth: usize,
    dropped_qos0: u64,
    dropped_overflow: u64,
}

#[derive(Debug, Serialize)]
struct Forwarded {
    #[serde(rename = "in")]
    inbound: u64,
    out: u64,
}

#[derive(Debug, Serialize)]
struct BridgeList {
    /// Named like the other lists of the API (`items`).
    items: Vec<BridgeInfo>,
}

fn list_bridges(broker: &Broker) -> BridgeList {
    use std::sync::atomic::Ordering::Relaxed;
    let items = broker
        .bridges()
        .all()
        .iter()
        .map(|b| {
            let link = b.snapshot();
            BridgeInfo {
                name: b.name.clone(),
                state: link.state.as_str(),
                address: link.address,
                last_error: link.last_error,
                forwarded: Forwarded {
                    inbound: b.forwarded_in.load(Relaxed),
                    out: b.forwarded_out.load(Relaxed),
                },
                reconnects: b.reconnects.load(Relaxed),
                queue_depth: crate::bridge::queue_depth(broker, b),
                dropped_qos0: b.dropped.load(Relaxed),
                dropped_overflow: b.dropped_overflow.load(Relaxed),
            }
        })
        .collect();
    BridgeList { items }
}

#[derive(Debug, Serialize)]
struct Reloaded {
    result: String,
}

/// `GET /api/v1/cluster`: `{"enabled": false}` without clustering, else this node, the
/// alive count and every member with its link and counters.
fn cluster_status(broker: &Broker) -> serde_json::Value {
    match crate::cluster::Cluster::of(broker) {
        None => serde_json::json!({ "enabled": false, "members": [] }),
        Some(cluster) => {
            let mut value = serde_json::to_value(cluster.status()).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert("enabled".to_string(), serde_json::Value::Bool(true));
            }
            value
        }
    }
}

async fn reload(endpoint: &Endpoint) -> ApiResult {
    let Some(hook) = endpoint.reload.clone() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "reload not available"));
    };
    match blocking(move || hook()).await.map_err(ApiError::internal)? {
        Ok(result) => {
            tracing::info!("configuration reloaded through the admin API: {result}");
            Ok(json(StatusCode::OK, &Reloaded { result }))
        }
        Err(why) => {
            tracing::warn!("reload through the admin API failed: {why}");
            Err(ApiError::internal(format!("reload failed: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ReloadHook;
    use fleetmq_config::BrokerConfig;
    use ntex::http::test::TestRequest;

    /// Status and `result`/`error` text of `POST /api/v1/reload` with `hook`.
    fn reload_with(hook: Option<ReloadHook>) -> (u16, serde_json::Value) {
        let dir =
            std::env::temp_dir().join(format!("fleetmq-reload-{}-{}", std::process::id(), hook.is_some()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t").unwrap();
        let mut config = BrokerConfig::default();
        config.http.admin_token_file = Some(token);
        let endpoint = Arc::new(Endpoint::new(Broker::new(config), hook).unwrap());
        let req = TestRequest::with_uri("/api/v1/reload")
            .method(Method::POST)
            .header("authorization", "Bearer t")
            .finish();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut response = runtime.block_on(endpoint.handle(req));
        let body = match response.take_body() {
            ntex::http::body::ResponseBody::Body(ntex::http::body::Body::Bytes(b)) => b,
            other => panic!("unexpected body {other:?}"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        (response.status().as_u16(), serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn reload_uses_the_hook() {
        assert_eq!(reload_with(None), (503, serde_json::json!({"error": "reload not available"})));
        let ok: ReloadHook = Arc::new(|| Ok("reloaded: config".to_string()));
        assert_eq!(reload_with(Some(ok)), (200, serde_json::json!({"result": "reloaded: config"})));
        let failing: ReloadHook = Arc::new(|| Err("config.yaml line 3: bad".to_string()));
        assert_eq!(
            reload_with(Some(failing)),
            (500, serde_json::json!({"error": "reload failed: config.yaml line 3: bad"}))
        );
    }

    #[test]
    fn prefixes_become_filters() {
        assert_eq!(prefix_filter(""), "#");
        assert_eq!(prefix_filter("sens"), "#");
        assert_eq!(prefix_filter("sensors/ro"), "sensors/#");
        assert_eq!(prefix_filter("$SYS/broker/"), "$SYS/broker/#");
        assert_eq!(prefix_filter("/a"), "/#");
    }
}
