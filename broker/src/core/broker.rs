//! The broker core: sessions by client id, connect/takeover/disconnect, publish, subscribe,
//! wills and timers. Front ends translate packets into these calls; nothing here knows
//! which protocol version a client speaks beyond what the session needs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetmq_config::BrokerConfig;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::{Hash, Hasher};

use super::metrics::{DropReason, Metrics};
use super::retained::Retained;
use super::router::Router;
use super::scheduler::{Job, Scheduler};
use super::session::{ConnSignal, Enqueued, Expiry, Kick, QueueLimits, Session, Will};
use super::topic::{self, TopicError};
use super::types::{
    ByteString, Bytes, Delivery, Message, ProtocolVersion, QoS, RetainHandling, SessionId,
    SubscriptionOptions, expiry_deadline,
};
use crate::store::{MemoryStore, Store};

/// Settings the core reads on every connection, derived from the config once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Accept clients without credentials.
    pub allow_anonymous: bool,
    /// `limits.max_connections` (0 = unlimited).
    pub max_connections: u64,
    /// `limits.max_topic_levels`.
    pub max_topic_levels: usize,
    /// Per-session queue limits.
    pub queue: QueueLimits,
    /// Lifetime of v3 persistent sessions (`None` = never expire).
    pub persistent_session_expiry: Option<Duration>,
    /// Cap on v5 Session Expiry Interval.
    pub max_session_expiry: Option<Duration>,
}

impl Settings {
    /// Derives the settings from a validated config.
    pub fn from_config(config: &BrokerConfig) -> Self {
        let limits = &config.limits;
        Settings {
            allow_anonymous: config.anonymous_allowed(),
            max_connections: u64::from(limits.max_connections),
            max_topic_levels: usize::from(limits.max_topic_levels),
            queue: QueueLimits {
                max_messages: limits.max_queued_messages as usize,
                max_bytes: usize::try_from(limits.max_queued_bytes.as_u64()).unwrap_or(usize::MAX),
                max_inflight: limits.max_inflight,
            },
            persistent_session_expiry: config.sessions.persistent_session_expiry,
            max_session_expiry: config.sessions.max_session_expiry,
        }
    }
}

/// What a front end knows about a connecting client.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Client identifier as sent (may be empty).
    pub client_id: ByteString,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Requested session lifetime (the front end maps v3 clean session and v5 intervals).
    pub expiry: Expiry,
    /// Will message, if any.
    pub will: Option<Will>,
    /// Protocol of the connection.
    pub protocol: ProtocolVersion,
    /// Client's Receive Maximum (v5), or `u16::MAX`.
    pub receive_max: u16,
    /// User Name, if sent.
    pub username: Option<ByteString>,
    /// Password, if sent.
    pub password: Option<Bytes>,
    /// Remote address.
    pub peer: Option<SocketAddr>,
}

/// Why a connection is refused. Front ends map these to CONNACK codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Anonymous access is disabled and no credentials matched.
    #[error("not authorized")]
    NotAuthorized,
    /// Empty client id where the protocol does not allow one.
    #[error("client identifier not valid")]
    ClientIdRejected,
    /// `limits.max_connections` reached.
    #[error("connection limit reached")]
    QuotaExceeded,
    /// The broker is shutting down.
    #[error("server shutting down")]
    ServerUnavailable,
}

/// A successful connect.
#[derive(Debug)]
pub struct Connected {
    /// The session (new or resumed).
    pub session: Arc<Session>,
    /// This connection's generation.
    pub generation: u64,
    /// Whether an existing session was resumed.
    pub session_present: bool,
    /// Client id the broker assigned (empty id from the client).
    pub assigned_client_id: Option<ByteString>,
    /// The connection's wake-up/close signal.
    pub signal: Arc<ConnSignal>,
    /// Session expiry after caps, to report in CONNACK.
    pub expiry: Expiry,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// The client sent DISCONNECT.
    Normal {
        /// v5 reason 0x04 "Disconnect with Will Message".
        publish_will: bool,
        /// v5 Session Expiry Interval from the DISCONNECT.
        expiry: Option<Expiry>,
    },
    /// Network error, protocol error, keep-alive timeout, or closed by the broker.
    Abnormal,
}

/// Why a PUBLISH is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Bad topic name or `$delayed` form (Topic Name Invalid, 0x90).
    #[error("{0}")]
    Topic(#[from] TopicError),
    /// Clients may not publish to `$SYS` (Not Authorized, 0x87).
    #[error("publishing to $SYS topics is not allowed")]
    NotAuthorized,
}

/// What became of an accepted publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Routed now; `matched` sessions had a matching subscription.
    Routed {
        /// Sessions the message matched (0: v5 "No matching subscribers").
        matched: usize,
    },
    /// A `$delayed` message, scheduled.
    Delayed,
}

/// One entry of a SUBSCRIBE.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Filter as sent, possibly with `$share/<group>/`.
    pub filter: ByteString,
    /// Requested options.
    pub options: SubscriptionOptions,
}

type ClientMap = FxHashMap<ByteString, Arc<Session>>;

/// Sessions by client id, sharded so connects on different workers rarely contend.
struct Registry {
    shards: Box<[Mutex<ClientMap>]>,
}

impl Registry {
    fn new() -> Self {
        Registry { shards: (0..16).map(|_| Mutex::new(FxHashMap::default())).collect() }
    }

    fn lock(&self, client_id: &str) -> MutexGuard<'_, ClientMap> {
        let mut hasher = FxHasher::default();
        client_id.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() as usize) % self.shards.len()];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

struct Inner {
    config: BrokerConfig,
    settings: Settings,
    registry: Registry,
    router: Router,
    retained: Retained,
    scheduler: Scheduler,
    metrics: Metrics,
    store: Box<dyn Store>,
    session_ids: AtomicU64,
    generations: AtomicU64,
    shutting_down: AtomicBool,
    started: Instant,
}

/// Cheap-to-clone handle to the broker core, shared by all workers.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with the in-memory store.
    pub fn new(config: BrokerConfig) -> Self {
        Self::with_store(config, Box::new(MemoryStore))
    }

    /// A broker writing through `store`.
    pub fn with_store(config: BrokerConfig, store: Box<dyn Store>) -> Self {
        let settings = Settings::from_config(&config);
        Broker {
            inner: Arc::new(Inner {
                config,
                settings,
                registry: Registry::new(),
                router: Router::default(),
                retained: Retained::default(),
                scheduler: Scheduler::default(),
                metrics: Metrics::default(),
                store,
                session_ids: AtomicU64::new(1),
                generations: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                started: Instant::now(),
            }),
        }
    }

    /// The configuration the broker was started with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Derived settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Sessions known (connected or not).
    pub fn session_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// Subscriptions across all sessions.
    pub fn subscription_count(&self) -> usize {
        self.inner.router.len()
    }

    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        self.inner.retained.len()
    }

    /// Timed jobs pending (delayed publishes, delayed wills, expiries).
    pub fn scheduled_count(&self) -> usize {
        self.inner.scheduler.len()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Looks up a session by client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.inner.registry.lock(client_id).get(client_id).cloned()
    }

    fn authenticate(&self, req: &ConnectRequest) -> Result<(), ConnectError> {
        // Password files arrive with the security work; until then the anonymous policy
        // decides for every client, with or without credentials.
        if self.inner.settings.allow_anonymous { Ok(()) } else { Err(ConnectError::NotAuthorized) }
            .inspect_err(|_| tracing::debug!(client_id = %req.client_id, "anonymous access is disabled"))
    }

    /// Connects a client: authenticates, resolves the client id, takes over or resumes an
    /// existing session (MQTT 5.0 §3.1.4) and attaches the connection to it.
    pub fn connect(&self, req: ConnectRequest) -> Result<Connected, ConnectError> {
        let inner = &*self.inner;
        if self.is_shutting_down() {
            return Err(ConnectError::ServerUnavailable);
        }
        self.authenticate(&req)?;
        if inner.settings.max_connections > 0 && inner.metrics.connected() >= inner.settings.max_connections {
            return Err(ConnectError::QuotaExceeded);
        }
        let (client_id, assigned) = if req.client_id.is_empty() {
            match req.protocol {
                ProtocolVersion::V3_1 => return Err(ConnectError::ClientIdRejected),
                ProtocolVersion::V3_1_1 if !req.clean_start => return Err(ConnectError::ClientIdRejected),
                _ => (assigned_client_id(), true),
            }
        } else {
            (req.client_id.clone(), false)
        };
        let expiry = req.expiry.capped(inner.settings.max_session_expiry);
        let generation = inner.generations.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(ConnSignal::default());
        let mut replaced = None;
        let mut will_now = None;

        let (session, present) = {
            let mut registry = inner.registry.lock(&client_id);
            match registry.get(&client_id).cloned() {
                Some(existing) if !req.clean_start => {
                    let mut st = existing.lock();
                    if st.attachment.is_some() {
                        tracing::info!(client_id = %client_id, "session taken over by a new connection");
                        st.kick(Kick::TakenOver);
                        // The old connection ended without DISCONNECT: its will goes out now
                        // unless it is delayed, in which case this reconnect cancels it.
                        will_now = st.will.take().filter(|w| w.delay.is_zero());
                    }
                    st.attach(generation, signal.clone(), req.receive_max);
                    st.expiry = expiry;
                    st.will = req.will;
                    existing.set_online(true);
                    drop(st);
                    (existing, true)
                }
                other => {
                    replaced = other;
                    let id = inner.session_ids.fetch_add(1, Ordering::Relaxed);
                    let session = Arc::new(Session::new(id, client_id.clone(), expiry, inner.settings.queue));
                    {
                        let mut st = session.lock();
                        st.attach(generation, signal.clone(), req.receive_max);
                        st.will = req.will;
                        session.set_online(true);
                    }
                    registry.insert(client_id.clone(), session.clone());
                    (session, false)
                }
            }
        };
        if let Some(old) = replaced {
            if old.lock().attachment.is_some() {
                tracing::info!(client_id = %client_id, "session taken over by a new connection (clean start)");
            }
            old.lock().kick(Kick::TakenOver);
            self.end_session(&old, None);
        }
        if let Some(will) = will_now {
            self.publish_will(will, session.id);
        }
        inner.metrics.connection(true);
        Ok(Connected {
            session,
            generation,
            session_present: present,
            assigned_client_id: assigned.then_some(client_id),
            signal,
            expiry,
        })
    }

    /// A connection ended. Publishes or schedules the will and ends or schedules the
    /// session's expiry. A no-op for connections that were taken over.
    pub fn disconnect(&self, session: &Arc<Session>, generation: u64, how: DisconnectKind) {
        let inner = &*self.inner;
        inner.metrics.disconnected();
        let now = Instant::now();
        let (expiry, will_delay) = {
            let mut st = session.lock();
            if !st.detach(generation) {
                return;
            }
            session.set_online(false);
            if let DisconnectKind::Normal { publish_will, expiry } = how {
                if !publish_will {
                    st.will = None;
                }
                if let Some(expiry) = expiry {
                    st.expiry = expiry.capped(inner.settings.max_session_expiry);
                }
            }
            if self.is_shutting_down() {
                // Clients are being disconnected by us, not failing: no wills.
                st.will = None;
            }
            (st.expiry, st.will.as_ref().map(|w| w.delay))
        };
        if expiry == Expiry::OnDisconnect {
            self.end_session(session, Some(generation));
            return;
        }
        if let Some(delay) = will_delay {
            let delay = match expiry {
                Expiry::After(d) => delay.min(d),
                _ => delay,
            };
            if delay.is_zero() {
                self.fire_will(session, generation);
            } else {
                inner.scheduler.schedule(now + delay, Job::Will { session: session.clone(), generation });
            }
        }
        if let Expiry::After(d) = expiry {
            inner.scheduler.schedule(now + d, Job::Expire { session: session.clone(), generation });
        }
    }

    fn fire_will(&self, session: &Arc<Session>, generation: u64) {
        let will = {
            let mut st = session.lock();
            if st.ended || st.attachment.is_some() || st.last_generation != generation {
                return;
            }
            st.will.take()
        };
        if let Some(will) = will {
            self.publish_will(will, session.id);
        }
    }

    fn publish_will(&self, will: Will, origin: SessionId) {
        let mut message = will.message;
        message.expires_at = expiry_deadline(Instant::now(), will.expiry_interval);
        message.origin = origin;
        tracing::debug!(topic = %message.topic, "publishing will message");
        self.dispatch(Arc::new(message));
    }

    /// Ends a session: forgets its subscriptions, queue and registry entry, and publishes a
    /// will still pending from an abnormally closed connection. With `generation`, only if
    /// the session is still detached from exactly that connection (it may have been resumed).
    fn end_session(&self, session: &Arc<Session>, generation: Option<u64>) -> bool {
        let inner = &*self.inner;
        let (filters, will) = {
            let mut registry = inner.registry.lock(&session.client_id);
            let mut st = session.lock();
            if st.ended {
                return false;
            }
            if let Some(g) = generation
                && (st.attachment.is_some() || st.last_generation != g)
            {
                return false;
            }
            st.ended = true;
            let filters: Vec<ByteString> = st.subscriptions.drain().map(|(filter, _)| filter).collect();
            st.clear();
            let will = st.will.take();
            if registry.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
                registry.remove(&session.client_id);
            }
            session.set_online(false);
            (filters, will)
        };
        for raw in filters {
            if let Ok(filter) = topic::parse_subscription(&raw, usize::MAX) {
                inner.router.unsubscribe(session, &filter);
            }
        }
        if let Some(will) = will {
            self.publish_will(will, session.id);
        }
        true
    }

    /// Publishes a client's message: validates the topic, handles `$delayed/`, stores or
    /// clears retained state and routes it.
    pub fn publish(&self, message: Message) -> Result<Published, PublishError> {
        let max_levels = self.inner.settings.max_topic_levels;
        if let Some(delayed) = topic::parse_delayed(&message.topic, max_levels) {
            let (delay, target) = delayed?;
            let mut message = message;
            message.topic = target;
            tracing::debug!(topic = %message.topic, delay, "delayed publish scheduled");
            self.inner
                .scheduler
                .schedule(Instant::now() + Duration::from_secs(u64::from(delay)), Job::Publish(message));
            return Ok(Published::Delayed);
        }
        topic::validate_topic_name(&message.topic, max_levels)?;
        if message.topic.starts_with("$SYS") {
            return Err(PublishError::NotAuthorized);
        }
        Ok(Published::Routed { matched: self.dispatch(Arc::new(message)) })
    }

    /// Publishes a broker-originated message (e.g. `$SYS`), bypassing client checks. Returns
    /// the number of sessions it matched.
    pub fn publish_internal(&self, message: Message) -> usize {
        self.dispatch(Arc::new(message))
    }

    fn dispatch(&self, message: Arc<Message>) -> usize {
        let inner = &*self.inner;
        if message.retain && inner.retained.set(message.clone()) {
            let stored = if message.payload.is_empty() {
                inner.store.retained_remove(&message.topic)
            } else {
                inner.store.retained_set(&message)
            };
            if let Err(err) = stored {
                tracing::error!(topic = %message.topic, error = %err, "failed to persist retained message");
            }
        }
        let mut matched = 0;
        inner.router.route(&message, |session, delivery| {
            matched += 1;
            let outcome = session.lock().enqueue(delivery);
            match outcome {
                Enqueued::Wake | Enqueued::Queued => {}
                Enqueued::Overflow { queued, evicted } => {
                    inner.metrics.dropped(DropReason::QueueFull, u64::from(evicted) + u64::from(!queued));
                    tracing::debug!(client_id = %session.client_id, "queue full, message dropped");
                }
                Enqueued::SkippedOffline | Enqueued::SessionEnded => {}
            }
        });
        matched
    }

    /// Adds subscriptions. Returns, per request, the granted QoS or why it was refused, and
    /// the retained messages to send after the SUBACK (Retain Handling applied; none for
    /// shared subscriptions).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        requests: &[SubscribeRequest],
    ) -> (Vec<Result<QoS, TopicError>>, Vec<Delivery>) {
        let inner = &*self.inner;
        let mut results = Vec::with_capacity(requests.len());
        let mut retained = Vec::new();
        let now = Instant::now();
        for req in requests {
            let filter = match topic::parse_subscription(&req.filter, inner.settings.max_topic_levels) {
                Ok(filter) => filter,
                Err(err) => {
                    results.push(Err(err));
                    continue;
                }
            };
            let existed = {
                let mut st = session.lock();
                if st.ended {
                    results.push(Ok(req.options.qos));
                    continue;
                }
                st.subscriptions.insert(req.filter.clone(), req.options).is_some()
            };
            inner.router.subscribe(session, &filter, req.options);
            let send_retained = filter.group.is_none()
                && match req.options.retain_handling {
                    RetainHandling::SendAlways => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DontSend => false,
                };
            if send_retained {
                let mut found = Vec::new();
                inner.retained.matching(&filter.filter, now, &mut found);
                retained.extend(found.into_iter().map(|message| Delivery {
                    qos: message.qos.min(req.options.qos),
                    retain: true,
                    subscription_ids: req.options.subscription_id.into_iter().collect(),
                    message,
                }));
            }
            results.push(Ok(req.options.qos));
        }
        (results, retained)
    }

    /// Queues retained messages found by [`Broker::subscribe`], once the SUBACK is out.
    pub fn deliver_retained(&self, session: &Arc<Session>, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut st = session.lock();
        for delivery in deliveries {
            if let Enqueued::Overflow { queued, evicted } = st.enqueue(delivery) {
                self.inner.metrics.dropped(DropReason::QueueFull, u64::from(evicted) + u64::from(!queued));
            }
        }
    }

    /// Removes subscriptions; per filter, whether it existed or why the filter is invalid.
    pub fn unsubscribe(
        &self,
        session: &Arc<Session>,
        filters: &[ByteString],
    ) -> Vec<Result<bool, TopicError>> {
        filters
            .iter()
            .map(|raw| {
                let filter = topic::parse_subscription(raw, self.inner.settings.max_topic_levels)?;
                let existed = session.lock().subscriptions.remove(raw).is_some();
                if existed {
                    self.inner.router.unsubscribe(session, &filter);
                }
                Ok(existed)
            })
            .collect()
    }

    /// Runs due timers until the process ends. Spawn once per broker.
    pub async fn run_timers(&self) {
        self.inner
            .scheduler
            .run(|job| match job {
                Job::Publish(message) => {
                    self.dispatch(Arc::new(message));
                }
                Job::Will { session, generation } => self.fire_will(&session, generation),
                Job::Expire { session, generation } => {
                    if self.end_session(&session, Some(generation)) {
                        tracing::info!(client_id = %session.client_id, "session expired");
                    }
                }
            })
            .await;
    }

    /// Periodic housekeeping (expired retained messages).
    pub fn housekeeping(&self) {
        let purged = self.inner.retained.purge_expired(Instant::now());
        if purged > 0 {
            tracing::debug!(purged, "expired retained messages removed");
        }
    }

    /// Begins a graceful shutdown: refuses new connections and asks every connected client
    /// to go (v5: DISCONNECT 0x8B). Wills are not published for these disconnects.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        for session in self.inner.registry.all() {
            session.lock().kick(Kick::ServerShuttingDown);
        }
    }

    /// Connections still open.
    pub fn connected(&self) -> u64 {
        self.inner.metrics.connected()
    }
}

/// A client id for clients that sent none: unique per process and unlikely to collide
/// across restarts.
fn assigned_client_id() -> ByteString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    ByteString::from(format!("fleetmq-{:x}{:04x}", t & 0xffff_ffff_ffff, n & 0xffff))
}

#[cfg(test)]
mod tests;
