//! The broker core: sessions by client id, connect/takeover/disconnect, publish, subscribe,
//! wills and timers. Front ends translate packets into these calls; nothing here knows
//! which protocol version a client speaks beyond what the session needs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use fleetmq_config::BrokerConfig;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::{Hash, Hasher};

use super::metrics::{DropReason, Metrics};
use super::retained::Retained;
use super::router::Router;
use super::scheduler::{Job, Scheduler};
use super::session::{
    BatchStats, ConnSignal, Enqueued, Expiry, Journal, Kick, Outgoing, Phase, QueueLimits, Restored, Session,
    SessionState, Will,
};
use super::topic::{self, TopicError};
use super::types::{
    ByteString, Bytes, Delivery, Message, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions,
    expiry_deadline,
};
use crate::auth::{AuthState, ClientAcl};
use crate::store::{Durable, MemoryStore, Op, SessionRecord, Store, StoreError};

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
    /// `limits.conflate` filters.
    pub conflate: Vec<String>,
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
            conflate: limits.conflate.clone(),
        }
    }
}

/// What [`Broker::apply_config`] did with a reloaded config: top-level sections applied,
/// and sections that differ but only take effect after a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Sections now in force.
    pub applied: Vec<String>,
    /// Sections that changed in the file but keep their running values until a restart.
    pub needs_restart: Vec<String>,
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
    /// User Name, if sent (or the client certificate's CN with `use_identity_as_username`).
    pub username: Option<ByteString>,
    /// Password, if sent.
    pub password: Option<Bytes>,
    /// Remote address.
    pub peer: Option<SocketAddr>,
}

/// How a connecting client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Nothing: anonymous.
    Anonymous,
    /// User Name (and Password, possibly empty) from CONNECT.
    Password {
        /// User Name.
        username: ByteString,
        /// Password as sent (empty when absent).
        password: Bytes,
    },
    /// A client certificate verified by the TLS handshake (`use_identity_as_username`).
    Certificate,
}

/// Why a connection is refused. Front ends map these to CONNACK codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Anonymous access is disabled (no User Name, or no password file to check one).
    #[error("not authorized")]
    NotAuthorized,
    /// User Name or Password not accepted (v5 0x86, v3 4).
    #[error("bad user name or password")]
    BadCredentials,
    /// Empty client id where the protocol does not allow one.
    #[error("client identifier not valid")]
    ClientIdRejected,
    /// `limits.max_connections` reached, or the listener's `max_connections` (the front end
    /// checks that one, since the core does not know listeners).
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
    /// `$SYS` topics, or the publisher's ACL grants no write access (Not Authorized, 0x87).
    #[error("not authorized to publish to this topic")]
    NotAuthorized,
}

/// Why a subscription is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// Invalid filter (v5 0x8F, v3 0x80).
    #[error("{0}")]
    Topic(#[from] TopicError),
    /// The ACL grants no read access in this filter (v5 0x87, v3 0x80).
    #[error("not authorized by the ACL")]
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
    /// The config in force; replaced by [`Broker::apply_config`] on reload.
    config: ArcSwap<BrokerConfig>,
    settings: ArcSwap<Settings>,
    /// Password file and ACL in force; replaced by [`Broker::set_auth`] on reload.
    auth: ArcSwap<AuthState>,
    registry: Registry,
    router: Router,
    retained: Retained,
    scheduler: Scheduler,
    metrics: Metrics,
    store: Box<dyn Store>,
    session_ids: AtomicU64,
    store_ids: AtomicU64,
    delayed_seq: AtomicU64,
    generations: AtomicU64,
    shutting_down: AtomicBool,
    started: Instant,
    /// Status of the configured bridges (filled by `bridge::Bridges::start`).
    bridges: crate::bridge::state::Board,
    /// Stand-ins of sessions that moved to other cluster nodes, by client id (see
    /// `handover`), so relayed messages that arrive after a session moved on follow it.
    stand_ins: Mutex<FxHashMap<ByteString, Arc<Session>>>,
    /// Hands locally originated messages to the cluster (unset: clustering off).
    forwarder: OnceLock<Arc<dyn super::hooks::Forwarder>>,
}

/// Mirrors session changes into the store, for persistent sessions only.
struct StoreJournal<'a> {
    store: &'a dyn Store,
    store_id: u64,
    active: bool,
    /// Ticket of the last change an acknowledgement must wait for (0: none).
    ticket: u64,
}

impl StoreJournal<'_> {
    fn submit(&mut self, op: Op) {
        let needs_sync = op.needs_sync();
        let ticket = self.store.submit(op);
        if needs_sync {
            self.ticket = ticket;
        }
    }
}

impl Journal for StoreJournal<'_> {
    fn queued(&mut self, seq: u64, delivery: &Delivery) {
        if self.active {
            self.submit(Op::QueuePut {
                store_id: self.store_id,
                seq,
                delivery: delivery.clone(),
                phase: None,
            });
        }
    }

    fn released(&mut self, seq: u64, delivery: &Delivery) {
        if self.active {
            let phase = Some(Phase::AwaitPubcomp);
            self.submit(Op::QueuePut { store_id: self.store_id, seq, delivery: delivery.clone(), phase });
        }
    }

    fn removed(&mut self, seq: u64) {
        if self.active {
            self.submit(Op::QueueDelete { store_id: self.store_id, seq });
        }
    }

    fn acked_below(&mut self, floor: u64) {
        if self.active {
            self.submit(Op::QueueFloor { store_id: self.store_id, floor });
        }
    }

    fn inbound(&mut self, packet_id: u16, present: bool) {
        if self.active {
            self.submit(Op::Inbound { store_id: self.store_id, packet_id, present });
        }
    }
}

/// What recovery found at start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Retained messages restored.
    pub retained: usize,
    /// Persistent sessions restored.
    pub sessions: usize,
    /// Queued or in-flight messages restored.
    pub messages: usize,
    /// Delayed publishes rescheduled.
    pub delayed: usize,
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

    /// A broker writing through `store`. Call [`Broker::recover`] before serving clients.
    pub fn with_store(config: BrokerConfig, store: Box<dyn Store>) -> Self {
        let settings = Settings::from_config(&config);
        Broker {
            inner: Arc::new(Inner {
                config: ArcSwap::from_pointee(config),
                settings: ArcSwap::from_pointee(settings),
                auth: ArcSwap::from_pointee(AuthState::default()),
                registry: Registry::new(),
                router: Router::default(),
                retained: Retained::default(),
                scheduler: Scheduler::default(),
                metrics: Metrics::default(),
                store,
                session_ids: AtomicU64::new(1),
                store_ids: AtomicU64::new(1),
                delayed_seq: AtomicU64::new(0),
                generations: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                started: Instant::now(),
                bridges: crate::bridge::state::Board::default(),
                forwarder: OnceLock::new(),
                stand_ins: Mutex::new(FxHashMap::default()),
            }),
        }
    }

    /// The configuration in force (the start config with reloaded sections applied).
    pub fn config(&self) -> Guard<Arc<BrokerConfig>> {
        self.inner.config.load()
    }

    /// Derived settings.
    pub fn settings(&self) -> Guard<Arc<Settings>> {
        self.inner.settings.load()
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

    /// Bytes the durable store occupies on disk (0 without persistence).
    pub fn store_size(&self) -> u64 {
        self.inner.store.disk_size()
    }

    /// Completes once every change submitted so far is durable.
    pub fn store_flush(&self) -> Durable {
        self.inner.store.flush()
    }

    /// Completion of the store changes up to `ticket` (0: nothing to wait for).
    pub fn durable(&self, ticket: u64) -> Durable {
        if ticket == 0 { Durable::ready() } else { self.inner.store.durable(ticket) }
    }

    /// Store progress, for a connection waiting on many acknowledgements at once.
    pub fn store_watermark(&self) -> Option<tokio::sync::watch::Receiver<crate::store::Watermark>> {
        self.inner.store.watermark()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Looks up a session by client id.
    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.inner.registry.lock(client_id).get(client_id).cloned()
    }

    /// A journal for `session` in its current state.
    fn journal(&self, session: &Session, st: &SessionState) -> StoreJournal<'_> {
        StoreJournal {
            store: &*self.inner.store,
            store_id: session.store_id,
            active: self.inner.store.is_persistent() && st.expiry != Expiry::OnDisconnect,
            ticket: 0,
        }
    }

    /// Writes the session's metadata when it is persistent; returns the ticket (0: nothing
    /// written).
    fn persist_session(&self, session: &Session, st: &mut SessionState) -> u64 {
        if !self.inner.store.is_persistent() || st.expiry == Expiry::OnDisconnect || st.ended {
            return 0;
        }
        st.persisted = true;
        self.inner.store.submit(Op::SessionPut(Box::new(SessionRecord {
            store_id: session.store_id,
            client_id: session.client_id.clone(),
            expiry: st.expiry,
            subscriptions: st.subscriptions.iter().map(|(f, o)| (f.clone(), *o)).collect(),
            will: st.will.as_deref().cloned(),
            disconnected_at: st.disconnected_at,
        })))
    }

    /// Restores what the store kept: retained messages, persistent sessions with their
    /// subscriptions, queues and in-flight state, wills and expiry timers, and delayed
    /// publishes. Expired data is dropped. Sessions whose clients were connected when the
    /// broker stopped count as disconnected now; their wills are not published (the broker,
    /// not the client, went away).
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        let inner = &*self.inner;
        let loaded = inner.store.load()?;
        let mut stats = Recovered { retained: loaded.retained.len(), ..Recovered::default() };
        for message in loaded.retained {
            inner.retained.set(Arc::new(message));
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut max_store_id = 0;
        let mut to_end = Vec::new();
        let mut wills_due = Vec::new();
        for loaded in loaded.sessions {
            let record = loaded.record;
            max_store_id = max_store_id.max(record.store_id);
            stats.sessions += 1;
            stats.messages += loaded.deliveries.len();
            let id = inner.session_ids.fetch_add(1, Ordering::Relaxed);
            let session = Arc::new(Session::new(
                id,
                record.store_id,
                record.client_id.clone(),
                record.expiry,
                inner.settings.load().queue,
            ));
            let gone_for = record.disconnected_at.map(|at| wall.duration_since(at).unwrap_or_default());
            {
                let mut st = session.lock();
                st.restore(Restored {
                    deliveries: loaded.deliveries,
                    inbound: loaded.inbound,
                    floor: loaded.floor,
                });
                st.persisted = true;
                st.disconnected_at = Some(record.disconnected_at.unwrap_or(wall));
                // A will only survives if its connection had already ended abnormally.
                st.will = record.will.filter(|_| gone_for.is_some()).map(Box::new);
                for (raw, options) in &record.subscriptions {
                    st.subscriptions.insert(raw.clone(), *options);
                }
            }
            for (raw, options) in &record.subscriptions {
                match topic::parse_subscription(raw, usize::MAX) {
                    Ok(filter) => {
                        inner.router.subscribe(&session, &filter, *options);
                    }
                    Err(err) => {
                        tracing::warn!(client_id = %record.client_id, "stored subscription {raw} dropped: {err}")
                    }
                }
            }
            inner.registry.lock(&record.client_id).insert(record.client_id.clone(), session.clone());
            let gone_for = gone_for.unwrap_or_default();
            if let Expiry::After(d) = record.expiry {
                match d.checked_sub(gone_for) {
                    Some(left) if !left.is_zero() => {
                        inner
                            .scheduler
                            .schedule(now + left, Job::Expire { session: session.clone(), generation: 0 });
                    }
                    _ => to_end.push(session.clone()),
                }
            }
            let delay = session.lock().will.as_ref().map(|w| w.delay);
            if let Some(delay) = delay {
                match delay.checked_sub(gone_for) {
                    Some(left) if !left.is_zero() => inner
                        .scheduler
                        .schedule(now + left, Job::Will { session: session.clone(), generation: 0 }),
                    _ => wills_due.push(session.clone()),
                }
            }
        }
        inner.store_ids.store(max_store_id + 1, Ordering::Relaxed);
        for session in wills_due {
            self.fire_will(&session, 0);
        }
        for session in to_end {
            self.end_session(&session, Some(0));
        }
        let mut max_delayed_seq = 0;
        for (due, key, message) in loaded.delayed {
            max_delayed_seq = max_delayed_seq.max(key.1);
            let left = due.duration_since(wall).unwrap_or_default();
            inner.scheduler.schedule(now + left, Job::Publish(message, Some(key)));
            stats.delayed += 1;
        }
        inner.delayed_seq.store(max_delayed_seq + 1, Ordering::Relaxed);
        Ok(stats)
    }

    /// Checks a connecting client's credentials (before [`Broker::connect`]). Password hashes
    /// are verified on the blocking pool: an argon2id check takes tens of milliseconds that
    /// must not stall the other connections of this worker (verified credentials are cached).
    /// Failures count in `auth_failures`; the reason is only logged, never sent.
    pub async fn authenticate(&self, credentials: Credentials) -> Result<(), ConnectError> {
        let allow_anonymous = self.inner.settings.load().allow_anonymous;
        let result = match credentials {
            Credentials::Certificate => Ok(()),
            Credentials::Anonymous => {
                if allow_anonymous {
                    Ok(())
                } else {
                    Err(ConnectError::NotAuthorized)
                }
            }
            Credentials::Password { username, password } => {
                let auth = self.inner.auth.load_full();
                if auth.passwords.is_none() {
                    // No password file: the User Name only names the client for the ACL.
                    if allow_anonymous { Ok(()) } else { Err(ConnectError::NotAuthorized) }
                } else {
                    let verified = tokio::task::spawn_blocking(move || {
                        auth.passwords.as_ref().is_some_and(|file| file.verify(&username, &password))
                    })
                    .await
                    .unwrap_or(false);
                    if verified { Ok(()) } else { Err(ConnectError::BadCredentials) }
                }
            }
        };
        if result.is_err() {
            self.inner.metrics.auth_failure();
        }
        result
    }

    /// Puts new auth files in force: every session's ACL is resolved again, and connected
    /// clients whose user is no longer in the password file are disconnected (v5 reason
    /// 0x87); everyone else stays connected.
    pub fn set_auth(&self, state: AuthState) {
        let state = Arc::new(state);
        self.inner.auth.store(state.clone());
        for session in self.inner.registry.all() {
            let username = session.username();
            session.set_acl(acl_for(&state, username.as_deref(), &session.client_id));
            let removed = match (&state.passwords, &username) {
                (Some(file), Some(user)) => !file.contains(user),
                _ => false,
            };
            if removed {
                let st = session.lock();
                if st.attachment.is_some() {
                    tracing::info!(client_id = %session.client_id, "user removed from the password file: disconnecting");
                    st.kick(Kick::NotAuthorized);
                }
            }
        }
    }

    /// The auth files in force.
    pub fn auth(&self) -> Guard<Arc<AuthState>> {
        self.inner.auth.load()
    }

    /// Status of the bridges, for the admin API and `/metrics`.
    pub fn bridges(&self) -> &crate::bridge::state::Board {
        &self.inner.bridges
    }

    /// Connects a client (see [`Broker::connect_bridge`]); client ids starting with
    /// `$bridge/` belong to bridges and are refused.
    pub fn connect(&self, req: ConnectRequest) -> Result<Connected, ConnectError> {
        if req.client_id.starts_with(crate::bridge::SESSION_PREFIX) {
            return Err(ConnectError::ClientIdRejected);
        }
        self.attach(req, false)
    }

    /// Attaches a bridge's internal session (`$bridge/<name>`): no client id check, no
    /// `sessions.max_session_expiry` cap (its queue must outlive any remote outage), and an
    /// ACL that allows everything (the bridge's topic rules are the operator's decision).
    pub fn connect_bridge(&self, req: ConnectRequest) -> Result<Connected, ConnectError> {
        debug_assert!(req.client_id.starts_with(crate::bridge::SESSION_PREFIX));
        self.attach(req, true)
    }

    /// Connects a client: authenticates, resolves the client id, takes over or resumes an
    /// existing session (MQTT 5.0 §3.1.4) and attaches the connection to it.
    fn attach(&self, req: ConnectRequest, bridge: bool) -> Result<Connected, ConnectError> {
        let inner = &*self.inner;
        if self.is_shutting_down() {
            return Err(ConnectError::ServerUnavailable);
        }
        let max_connections = inner.settings.load().max_connections;
        if max_connections > 0 && inner.metrics.connected() >= max_connections {
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
        let expiry =
            if bridge { req.expiry } else { req.expiry.capped(inner.settings.load().max_session_expiry) };
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
                    let was_persisted = st.persisted;
                    st.attach(generation, signal.clone(), req.receive_max);
                    st.expiry = expiry;
                    st.will = req.will.map(Box::new);
                    existing.set_online(true);
                    if self.persist_session(&existing, &mut st) == 0 && was_persisted {
                        // Resumed with Session Expiry Interval 0: the stored copy must go.
                        st.persisted = false;
                        inner.store.submit(Op::SessionDelete {
                            client_id: client_id.clone(),
                            store_id: existing.store_id,
                        });
                    }
                    drop(st);
                    (existing, true)
                }
                other => {
                    replaced = other;
                    let id = inner.session_ids.fetch_add(1, Ordering::Relaxed);
                    let store_id = inner.store_ids.fetch_add(1, Ordering::Relaxed);
                    let session = Arc::new(Session::new(
                        id,
                        store_id,
                        client_id.clone(),
                        expiry,
                        inner.settings.load().queue,
                    ));
                    {
                        let mut st = session.lock();
                        st.attach(generation, signal.clone(), req.receive_max);
                        st.will = req.will.map(Box::new);
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
        if !present {
            // After ending the old incarnation, so its deletion cannot overtake this write.
            let mut st = session.lock();
            self.persist_session(&session, &mut st);
        }
        if let Some(will) = will_now {
            self.publish_will(*will, &session);
        }
        session.set_acl(acl_for(&inner.auth.load(), req.username.as_deref(), &client_id));
        session.set_username(req.username.clone());
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
                    st.expiry = expiry.capped(inner.settings.load().max_session_expiry);
                }
            }
            if self.is_shutting_down() {
                // Clients are being disconnected by us, not failing: no wills.
                st.will = None;
            }
            self.persist_session(session, &mut st);
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
            let will = st.will.take();
            if will.is_some() {
                self.persist_session(session, &mut st);
            }
            will
        };
        if let Some(will) = will {
            self.publish_will(*will, session);
        }
    }

    fn publish_will(&self, will: Will, session: &Session) {
        // Like any PUBLISH of the client's: its ACL (of the connection that set the will).
        if !session.acl().can_publish(&will.message.topic) || will.message.topic.starts_with("$SYS") {
            tracing::info!(client_id = %session.client_id, topic = %will.message.topic, "will not published: not authorized");
            return;
        }
        let mut message = will.message;
        message.expires_at = expiry_deadline(Instant::now(), will.expiry_interval);
        message.origin = session.id;
        tracing::debug!(topic = %message.topic, "publishing will message");
        self.dispatch(Arc::new(message), &self.inner.settings.load());
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
            if st.persisted {
                inner.store.submit(Op::SessionDelete {
                    client_id: session.client_id.clone(),
                    store_id: session.store_id,
                });
            }
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
            self.publish_will(*will, session);
        }
        true
    }

    /// Publishes a client's message: validates the topic, handles `$delayed/`, stores or
    /// clears retained state and routes it. The returned [`Durable`] completes once every
    /// stored effect (queued copies for persistent sessions, retained state, the delayed
    /// message) is durable; the acknowledgement to the publisher waits for it.
    pub fn publish(&self, message: Message) -> Result<(Published, Durable), PublishError> {
        self.publish_as(message, None)
    }

    /// [`Broker::publish`] on behalf of a client whose ACL must allow the (final, for
    /// `$delayed`) topic.
    pub fn publish_as(
        &self,
        message: Message,
        acl: Option<&ClientAcl>,
    ) -> Result<(Published, Durable), PublishError> {
        self.publish_checked(message, acl, true)
    }

    /// [`Broker::publish`] for this node's sessions only: with clustering, the message is not
    /// forwarded to peers. Bridges bring messages in this way, because every node runs its
    /// own bridge and receives its own copy from the remote.
    pub fn publish_here(&self, message: Message) -> Result<(Published, Durable), PublishError> {
        self.publish_checked(message, None, false)
    }

    fn publish_checked(
        &self,
        message: Message,
        acl: Option<&ClientAcl>,
        forward: bool,
    ) -> Result<(Published, Durable), PublishError> {
        let inner = &*self.inner;
        let span = tracing::info_span!(
            target: crate::telemetry::SPANS,
            "mqtt.publish",
            mqtt.topic = %message.topic,
            mqtt.qos = message.qos as u8,
            mqtt.retain = message.retain,
            mqtt.payload_size = message.payload.len(),
            mqtt.matched = tracing::field::Empty,
        );
        let _entered = span.enter();
        let settings = inner.settings.load();
        let max_levels = settings.max_topic_levels;
        if let Some(delayed) = topic::parse_delayed(&message.topic, max_levels) {
            let (delay, target) = delayed?;
            if acl.is_some_and(|acl| !acl.can_publish(&target)) {
                return Err(PublishError::NotAuthorized);
            }
            let mut message = message;
            message.topic = target;
            tracing::debug!(topic = %message.topic, delay, "delayed publish scheduled");
            let delay = Duration::from_secs(u64::from(delay));
            let mut ticket = 0;
            let key = inner.store.is_persistent().then(|| {
                let due = SystemTime::now() + delay;
                let key = (crate::store::unix_ms(due), inner.delayed_seq.fetch_add(1, Ordering::Relaxed));
                ticket = inner.store.submit(Op::DelayedPut(key, due, Box::new(message.clone())));
                key
            });
            inner.scheduler.schedule(Instant::now() + delay, Job::Publish(message, key));
            return Ok((Published::Delayed, self.durable(ticket)));
        }
        topic::validate_topic_name(&message.topic, max_levels)?;
        if message.topic.starts_with("$SYS") || acl.is_some_and(|acl| !acl.can_publish(&message.topic)) {
            return Err(PublishError::NotAuthorized);
        }
        let message = Arc::new(message);
        let (matched, ticket) = if forward {
            self.dispatch(message, &settings)
        } else {
            self.route_local(message, &super::hooks::SharedMode::Local, &settings)
        };
        span.record("mqtt.matched", matched);
        Ok((Published::Routed { matched }, self.durable(ticket)))
    }

    /// Publishes a broker-originated message (e.g. `$SYS`), bypassing client checks. Returns
    /// the number of sessions it matched.
    pub fn publish_internal(&self, message: Message) -> usize {
        self.dispatch(Arc::new(message), &self.inner.settings.load()).0
    }

    /// Clustering: reports subscription changes to `watch` (install before
    /// [`Broker::recover`] so restored subscriptions are reported too) and hands every
    /// locally originated message to `forwarder`. Each can be installed once.
    pub fn set_cluster_hooks(
        &self,
        watch: Arc<dyn super::hooks::RouteWatch>,
        forwarder: Arc<dyn super::hooks::Forwarder>,
    ) {
        self.inner.router.set_watch(watch);
        let _ = self.inner.forwarder.set(forwarder);
    }

    /// The forwarder installed by [`Broker::set_cluster_hooks`].
    pub fn forwarder(&self) -> Option<Arc<dyn super::hooks::Forwarder>> {
        self.inner.forwarder.get().cloned()
    }

    /// A message forwarded by a cluster peer: stored if retained and routed to this node's
    /// sessions only (never forwarded again, so nothing loops). Returns the sessions matched.
    /// `shared`: the `(group, filter)` pairs the sending node picked this node for.
    pub fn publish_from_peer(&self, message: Message, shared: Vec<(ByteString, ByteString)>) -> usize {
        self.route_local(
            Arc::new(message),
            &super::hooks::SharedMode::Only(shared),
            &self.inner.settings.load(),
        )
        .0
    }

    /// Routes a message here and, with clustering, to the peers that need it; returns the
    /// sessions matched and the store ticket an acknowledgement must wait for (0: none).
    /// `settings`: the caller's snapshot (one load per message).
    fn dispatch(&self, message: Arc<Message>, settings: &Settings) -> (usize, u64) {
        match self.inner.forwarder.get() {
            None => self.route_local(message, &super::hooks::SharedMode::Local, settings),
            Some(forwarder) => {
                let forwarded = forwarder.forward(&message);
                let (matched, ticket) = self.route_local(message, &forwarded.shared, settings);
                // Peers with subscribers count as matches (v5 "No matching subscribers").
                (matched + forwarded.peers, ticket)
            }
        }
    }

    /// Stores retained state and routes a message to this node's sessions.
    fn route_local(
        &self,
        message: Arc<Message>,
        shared: &super::hooks::SharedMode,
        settings: &Settings,
    ) -> (usize, u64) {
        let inner = &*self.inner;
        let mut ticket = 0;
        if message.retain && inner.retained.set(message.clone()) && inner.store.is_persistent() {
            ticket = inner.store.submit(if message.payload.is_empty() {
                Op::RetainedClear(message.topic.clone())
            } else {
                Op::RetainedSet(message.clone())
            });
        }
        let conflate = !settings.conflate.is_empty()
            && settings.conflate.iter().any(|f| topic::matches(f, &message.topic));
        let mut matched = 0;
        inner.router.route_with(&message, shared, |session, delivery| {
            matched += 1;
            let mut st = session.lock();
            if let Some(relay) = &st.relay {
                relay.0.relay(&session.client_id, &delivery);
                return;
            }
            let mut journal = self.journal(session, &st);
            let outcome = st.enqueue(delivery, conflate, &mut journal);
            ticket = ticket.max(journal.ticket);
            match outcome {
                Enqueued::Wake | Enqueued::Queued | Enqueued::Conflated => {}
                Enqueued::Overflow { queued, evicted } => {
                    let n = u64::from(evicted) + u64::from(!queued);
                    inner.metrics.dropped(DropReason::QueueFull, n);
                    inner.bridges.dropped_overflow(&session.client_id, n);
                    tracing::debug!(client_id = %session.client_id, "queue full, message dropped");
                }
                Enqueued::SkippedOffline if session.client_id.starts_with(crate::bridge::SESSION_PREFIX) => {
                    // QoS 0 while the bridge's remote is down: shown per bridge.
                    inner.bridges.dropped_offline(&session.client_id);
                }
                Enqueued::SkippedOffline | Enqueued::SessionEnded => {}
            }
        });
        (matched, ticket)
    }

    /// Adds subscriptions. Returns, per request, the granted QoS or why it was refused, the
    /// retained messages to send after the SUBACK (Retain Handling applied; none for shared
    /// subscriptions), and the durability of the stored subscriptions (the SUBACK waits).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        requests: &[SubscribeRequest],
    ) -> (Vec<Result<QoS, SubscribeError>>, Vec<Delivery>, Durable) {
        let inner = &*self.inner;
        let mut results = Vec::with_capacity(requests.len());
        let mut retained = Vec::new();
        let now = Instant::now();
        let mut changed = false;
        for req in requests {
            let filter = match topic::parse_subscription(&req.filter, inner.settings.load().max_topic_levels)
            {
                Ok(filter) => filter,
                Err(err) => {
                    results.push(Err(err.into()));
                    continue;
                }
            };
            if !session.acl().can_subscribe(&req.filter) {
                results.push(Err(SubscribeError::NotAuthorized));
                continue;
            }
            let existed = {
                let mut st = session.lock();
                if st.ended {
                    results.push(Ok(req.options.qos));
                    continue;
                }
                st.subscriptions.insert(req.filter.clone(), req.options).is_some()
            };
            changed = true;
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
                let acl = session.acl();
                found.retain(|message| acl.can_read(&message.topic));
                retained.extend(found.into_iter().map(|message| Delivery {
                    qos: message.qos.min(req.options.qos),
                    retain: true,
                    subscription_ids: req.options.subscription_id.into_iter().collect(),
                    message,
                }));
            }
            results.push(Ok(req.options.qos));
        }
        let ticket = if changed { self.persist_session(session, &mut session.lock()) } else { 0 };
        (results, retained, self.durable(ticket))
    }

    /// Queues retained messages found by [`Broker::subscribe`], once the SUBACK is out.
    pub fn deliver_retained(&self, session: &Arc<Session>, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut st = session.lock();
        for delivery in deliveries {
            let mut journal = self.journal(session, &st);
            if let Enqueued::Overflow { queued, evicted } = st.enqueue(delivery, false, &mut journal) {
                let n = u64::from(evicted) + u64::from(!queued);
                self.inner.metrics.dropped(DropReason::QueueFull, n);
                self.inner.bridges.dropped_overflow(&session.client_id, n);
            }
        }
    }

    /// Removes subscriptions; per filter, whether it existed or why the filter is invalid.
    pub fn unsubscribe(
        &self,
        session: &Arc<Session>,
        filters: &[ByteString],
    ) -> Vec<Result<bool, TopicError>> {
        let results: Vec<_> = filters
            .iter()
            .map(|raw| {
                let filter = topic::parse_subscription(raw, self.inner.settings.load().max_topic_levels)?;
                let existed = session.lock().subscriptions.remove(raw).is_some();
                if existed {
                    self.inner.router.unsubscribe(session, &filter);
                }
                Ok(existed)
            })
            .collect();
        if results.iter().any(|r| matches!(r, Ok(true))) {
            self.persist_session(session, &mut session.lock());
        }
        results
    }

    /// Takes the next batch for a connection's writer (see [`SessionState::next_batch`]).
    pub fn next_batch(
        &self,
        session: &Session,
        generation: u64,
        max: usize,
        out: &mut Vec<Outgoing>,
    ) -> BatchStats {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        st.next_batch(generation, true, max, Instant::now, out, &mut journal)
    }

    /// PUBACK from the client.
    pub fn puback(&self, session: &Session, packet_id: u16) {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        st.on_puback(packet_id, &mut journal);
    }

    /// PUBREC from the client: returns whether the id was known, and the durability of the
    /// recorded release (the PUBREL waits for it, so a restart re-sends PUBREL, not PUBLISH).
    pub fn pubrec(&self, session: &Session, packet_id: u16, generation: u64) -> (bool, Durable) {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        let known = st.on_pubrec(packet_id, generation, &mut journal);
        (known, self.durable(journal.ticket))
    }

    /// PUBREC with an error reason (v5).
    pub fn pubrec_failed(&self, session: &Session, packet_id: u16) {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        st.on_pubrec_failed(packet_id, &mut journal);
    }

    /// PUBCOMP from the client.
    pub fn pubcomp(&self, session: &Session, packet_id: u16) {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        st.on_pubcomp(packet_id, &mut journal);
    }

    /// Drops an in-flight message the connection could not send.
    pub fn discard(&self, session: &Session, packet_id: u16) {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        st.discard_inflight(packet_id, &mut journal);
    }

    /// Inbound QoS 2 PUBLISH: whether to route it (see
    /// [`SessionState::begin_inbound_qos2`]), and the store ticket of the recorded packet id
    /// (its PUBREC waits for it).
    pub fn inbound_qos2(&self, session: &Session, packet_id: u16, dup: bool) -> (bool, u64) {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        let route = st.begin_inbound_qos2(packet_id, dup, &mut journal);
        (route, journal.ticket)
    }

    /// Inbound PUBREL: whether the id was known.
    pub fn release_inbound_qos2(&self, session: &Session, packet_id: u16) -> bool {
        let mut st = session.lock();
        let mut journal = self.journal(session, &st);
        st.release_inbound_qos2(packet_id, &mut journal)
    }

    /// Runs due timers until the process ends. Spawn once per broker.
    pub async fn run_timers(&self) {
        self.inner
            .scheduler
            .run(|job| {
                // Once shutdown has begun, a durable broker leaves due jobs to the next start:
                // expiries, delayed wills and delayed publishes are in the store and are
                // rescheduled at recovery. Firing them now would expire a session (and drop its
                // queue) that the restart was about to resume, just because shutting down took
                // a while.
                if self.is_shutting_down() && self.inner.store.is_persistent() {
                    return;
                }
                match job {
                    Job::Publish(message, key) => {
                        self.dispatch(Arc::new(message), &self.inner.settings.load());
                        if let Some(key) = key {
                            self.inner.store.submit(Op::DelayedDelete(key));
                        }
                    }
                    Job::Will { session, generation } => self.fire_will(&session, generation),
                    Job::Expire { session, generation } => {
                        if self.end_session(&session, Some(generation)) {
                            tracing::info!(client_id = %session.client_id, "session expired");
                        }
                    }
                }
            })
            .await;
    }

    /// Puts a reloaded config in force. Sections the running broker cannot change (listeners,
    /// storage, server, the HTTP bind address, the log format, cluster) keep their current values and are reported
    /// as needing a restart; the rest applies at once: limits (queue limits of every session;
    /// the in-flight window from each client's next connection), sessions, `$SYS`, auth
    /// policy and files, the admin token file.
    pub fn apply_config(&self, mut new: BrokerConfig) -> ConfigChange {
        let old = self.config();
        let mut change = ConfigChange::default();
        macro_rules! restart_only {
            ($($field:ident).+, $name:expr) => {
                if new.$($field).+ != old.$($field).+ {
                    change.needs_restart.push($name.to_string());
                    new.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        restart_only!(listeners, "listeners");
        restart_only!(storage, "storage");
        restart_only!(server, "server");
        restart_only!(http.enabled, "http.enabled");
        restart_only!(http.bind, "http.bind");
        restart_only!(log.format, "log.format");
        restart_only!(cluster, "cluster");
        if new.log.level != old.log.level {
            match crate::telemetry::set_log_level(&new.log.level) {
                Ok(_) => change.applied.push("log.level".to_string()),
                Err(err) => {
                    tracing::error!("reloaded config: {err}; keeping log.level {:?}", old.log.level);
                    new.log.level = old.log.level.clone();
                }
            }
        }
        for (name, changed) in [
            ("limits", new.limits != old.limits),
            ("sessions", new.sessions != old.sessions),
            ("sys", new.sys != old.sys),
            ("auth", new.auth != old.auth),
            ("http.admin_token_file", new.http.admin_token_file != old.http.admin_token_file),
            // Applied by the bridge manager (a reload hook), bridge by bridge.
            ("bridges", new.bridges != old.bridges),
        ] {
            if changed {
                change.applied.push(name.to_string());
            }
        }
        let limits_changed = new.limits != old.limits;
        drop(old);
        let settings = Settings::from_config(&new);
        let queue = settings.queue;
        self.inner.settings.store(Arc::new(settings));
        self.inner.config.store(Arc::new(new));
        if limits_changed {
            for session in self.inner.registry.all() {
                session.lock().set_limits(queue);
            }
        }
        change
    }

    /// Periodic housekeeping: expired retained messages, and expired messages queued for
    /// offline sessions (so they leave memory and disk without waiting for a reconnect).
    pub fn housekeeping(&self) {
        let now = Instant::now();
        let purged = self.inner.retained.purge_expired(now);
        if purged > 0 {
            tracing::debug!(purged, "expired retained messages removed");
        }
        let mut dropped = 0;
        for session in self.inner.registry.all() {
            let mut st = session.lock();
            let mut journal = self.journal(&session, &st);
            dropped += st.drop_expired(now, &mut journal);
        }
        if dropped > 0 {
            self.inner.metrics.dropped(DropReason::Expired, u64::from(dropped));
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

/// The ACL of a session: bridges' internal sessions may do everything.
fn acl_for(auth: &AuthState, username: Option<&str>, client_id: &str) -> ClientAcl {
    if client_id.starts_with(crate::bridge::SESSION_PREFIX) {
        ClientAcl::allow_all()
    } else {
        auth.acl.client(username, client_id)
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

// Admin API operations (listing, disconnecting, retained clean-up) live in their own file; a
// child module so they can use the registry and store without widening this module's API.
#[path = "admin.rs"]
pub mod admin;
mod handover;

#[cfg(test)]
mod tests;
