//! What the admin API and the Prometheus endpoint need from the core: snapshots of clients,
//! subscriptions, retained messages and session totals, and the few changes an operator may
//! make (disconnect a client, end a session, clear a retained message).
//!
//! This is a child module of `core::broker` (declared there with `#[path]`) so it can read
//! the registry, retained store and store handle without widening the broker's public API.
//! Everything here runs off the publish path: it takes the same locks as the rest of the
//! core (registry shard, then one session at a time) and only for as long as a copy takes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::Broker;
use crate::core::session::{Expiry, Kick, Session};
use crate::core::topic::{self, TopicError};
use crate::core::types::{ByteString, Bytes, Message, ProtocolVersion, QoS, SubscriptionOptions};
use crate::store::{Durable, Op};

/// Facts about a live connection that only its front end knows at connect time; kept on the
/// session's attachment (so they disappear with the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Remote address, when the transport has one.
    pub peer: Option<SocketAddr>,
    /// Protocol version of the connection.
    pub protocol: ProtocolVersion,
    /// Keep-alive in seconds as in effect (v5: after the server's cap; 0 = none).
    pub keep_alive: u16,
    /// Name of the listener the client connected to.
    pub listener: Arc<str>,
    /// User Name from CONNECT, if any.
    pub username: Option<ByteString>,
    /// When the connection was accepted.
    pub connected_at: SystemTime,
}

/// A copy of one session's state, taken under its lock.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// MQTT client identifier.
    pub client_id: ByteString,
    /// A connection is attached.
    pub connected: bool,
    /// Details of the attached connection (`None` while disconnected, and for the instant
    /// between connect and the front end recording them).
    pub connection: Option<Arc<ConnectionInfo>>,
    /// Session lifetime after disconnect.
    pub expiry: Expiry,
    /// When the last connection ended (disconnected sessions).
    pub disconnected_at: Option<SystemTime>,
    /// Messages waiting to be sent.
    pub queued: usize,
    /// Outbound QoS 1/2 messages awaiting acknowledgement.
    pub inflight: usize,
    /// Inbound QoS 2 messages awaiting PUBREL.
    pub inbound_qos2: usize,
    /// Subscriptions (filter as sent, with any `$share/` prefix), sorted by filter.
    pub subscriptions: Vec<(ByteString, SubscriptionOptions)>,
    /// Topic of the pending will, if any.
    pub will_topic: Option<ByteString>,
}

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// The subscribing client.
    pub client_id: ByteString,
    /// Filter as the client sent it (with any `$share/<group>/` prefix).
    pub filter: ByteString,
    /// Granted options.
    pub options: SubscriptionOptions,
}

/// Upper bounds (inclusive) of the session queue depth histogram exported as metrics.
pub const QUEUE_DEPTH_BUCKETS: [u64; 7] = [0, 1, 10, 100, 1_000, 10_000, 100_000];

/// Totals over all sessions, computed by walking them (for a metrics scrape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTotals {
    /// Sessions known, connected or not.
    pub sessions: u64,
    /// Sessions with a connection attached.
    pub connected: u64,
    /// Attached connections by listener name (connections whose details are recorded).
    pub by_listener: Vec<(String, u64)>,
    /// Sum of all queue depths.
    pub queued: u64,
    /// Deepest single queue.
    pub queued_max: u64,
    /// Sessions whose queue depth is at most `QUEUE_DEPTH_BUCKETS[i]` (cumulative).
    pub depth_buckets: [u64; QUEUE_DEPTH_BUCKETS.len()],
    /// Sum of outbound in-flight messages.
    pub inflight: u64,
}

/// What an admin disconnect did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminDisconnect {
    /// Generation of the connection that was asked to close, if one was attached.
    pub generation: Option<u64>,
    /// The session was ended too (subscriptions, queue and stored state removed).
    pub session_ended: bool,
}

/// Why an admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No session has this client id.
    #[error("no session for client id {0:?}")]
    NoSuchClient(String),
    /// The session has no connection to close (and ending it was not asked for).
    #[error("client {0:?} is not connected (end its session with ?session=true)")]
    NotConnected(String),
    /// A topic or filter argument is invalid.
    #[error("{0}")]
    Topic(#[from] TopicError),
    /// `$share/` and `$queue/` filters never match retained messages.
    #[error("shared subscription filters do not match retained messages")]
    SharedFilter,
}

fn snapshot(session: &Session) -> ClientInfo {
    let st = session.lock();
    let mut subscriptions: Vec<(ByteString, SubscriptionOptions)> =
        st.subscriptions.iter().map(|(f, o)| (f.clone(), *o)).collect();
    subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
    ClientInfo {
        client_id: session.client_id.clone(),
        connected: st.attachment.is_some(),
        connection: st.attachment.as_ref().and_then(|a| a.info.clone()),
        expiry: st.expiry,
        disconnected_at: if st.attachment.is_some() { None } else { st.disconnected_at },
        queued: st.queue_len(),
        inflight: st.inflight_len(),
        inbound_qos2: st.inbound_qos2_len(),
        subscriptions,
        will_topic: st.will.as_ref().map(|w| w.message.topic.clone()),
    }
}

impl Broker {
    /// Records who is behind the connection `generation` of `session` (a no-op if that
    /// connection is gone already). Front ends call it right after a successful connect.
    pub fn set_connection_info(&self, session: &Session, generation: u64, info: Arc<ConnectionInfo>) {
        let mut st = session.lock();
        if let Some(attachment) = st.attachment.as_mut().filter(|a| a.generation == generation) {
            attachment.info = Some(info);
        }
    }

    /// Client ids of every session, sorted (stable order for pagination).
    pub fn client_ids(&self) -> Vec<ByteString> {
        let mut ids: Vec<ByteString> =
            self.inner.registry.all().into_iter().map(|s| s.client_id.clone()).collect();
        ids.sort();
        ids
    }

    /// A snapshot of the session of `client_id`.
    pub fn client_info(&self, client_id: &str) -> Option<ClientInfo> {
        self.session(client_id).map(|s| snapshot(&s))
    }

    /// Subscriptions of every session (or of `client_id` only), sorted by client id, then
    /// filter.
    pub fn subscriptions(&self, client_id: Option<&str>) -> Vec<SubscriptionInfo> {
        let sessions = match client_id {
            Some(id) => self.session(id).into_iter().collect(),
            None => self.inner.registry.all(),
        };
        let mut out = Vec::new();
        for session in sessions {
            let st = session.lock();
            out.extend(st.subscriptions.iter().map(|(filter, options)| SubscriptionInfo {
                client_id: session.client_id.clone(),
                filter: filter.clone(),
                options: *options,
            }));
        }
        out.sort_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
        out
    }

    /// Walks every session once for queue, in-flight and connection totals.
    pub fn session_totals(&self) -> SessionTotals {
        let mut totals = SessionTotals::default();
        let mut by_listener: Vec<(String, u64)> = Vec::new();
        for session in self.inner.registry.all() {
            let st = session.lock();
            totals.sessions += 1;
            let depth = st.queue_len() as u64;
            totals.queued += depth;
            totals.queued_max = totals.queued_max.max(depth);
            for (bucket, bound) in totals.depth_buckets.iter_mut().zip(QUEUE_DEPTH_BUCKETS) {
                if depth <= bound {
                    *bucket += 1;
                }
            }
            totals.inflight += st.inflight_len() as u64;
            if let Some(attachment) = &st.attachment {
                totals.connected += 1;
                if let Some(info) = &attachment.info {
                    // Few listeners: a linear search beats hashing every connection.
                    match by_listener.iter_mut().find(|(name, _)| **name == *info.listener) {
                        Some((_, n)) => *n += 1,
                        None => by_listener.push((info.listener.to_string(), 1)),
                    }
                }
            }
        }
        by_listener.sort();
        totals.by_listener = by_listener;
        totals
    }

    /// Asks the connection of `client_id` to close (v5 clients get DISCONNECT 0x98,
    /// Administrative action; v3 connections are closed). The will is handled as for any
    /// connection the server closes: it is published (after its delay). With `end_session`,
    /// the session ends too, as if it had expired: subscriptions, queue and stored state go,
    /// and it is not resumed on reconnect. Without `end_session`, a session without a
    /// connection is refused with [`AdminError::NotConnected`].
    pub fn admin_disconnect(
        &self,
        client_id: &str,
        end_session: bool,
    ) -> Result<AdminDisconnect, AdminError> {
        let session =
            self.session(client_id).ok_or_else(|| AdminError::NoSuchClient(client_id.to_string()))?;
        let generation = {
            let st = session.lock();
            let generation = st.attachment.as_ref().map(|a| a.generation);
            if generation.is_some() {
                st.kick(Kick::AdminAction);
            }
            generation
        };
        if generation.is_none() && !end_session {
            return Err(AdminError::NotConnected(client_id.to_string()));
        }
        let session_ended = end_session && self.end_session(&session, None);
        tracing::info!(
            client_id,
            connected = generation.is_some(),
            session_ended,
            "client disconnected through the admin API"
        );
        Ok(AdminDisconnect { generation, session_ended })
    }

    /// Ends the session of `client_id`, connected or not, like [`Broker::admin_disconnect`]
    /// with `end_session` but without its log line (a bridge removed from the config logs its
    /// own). Returns how many messages it still held (queued plus in flight), or `None` when
    /// there was no such session.
    pub fn discard_session(&self, client_id: &str) -> Option<usize> {
        let session = self.session(client_id)?;
        let held = {
            let st = session.lock();
            st.kick(Kick::AdminAction);
            st.queue_len() + st.inflight_len()
        };
        self.end_session(&session, None).then_some(held)
    }

    /// Whether the connection `generation` of `client_id` is still attached.
    pub fn is_connection_attached(&self, client_id: &str, generation: u64) -> bool {
        self.session(client_id).is_some_and(|s| s.lock().is_attached(generation))
    }

    /// Unexpired retained messages whose topics match `filter` (an MQTT filter; `$` topics
    /// only match filters that name their first level, as for subscribers), sorted by topic.
    pub fn retained_matching(&self, filter: &str) -> Result<Vec<Arc<Message>>, AdminError> {
        let parsed = topic::parse_subscription(&ByteString::from(filter), usize::MAX)?;
        if parsed.group.is_some() {
            return Err(AdminError::SharedFilter);
        }
        let mut out = Vec::new();
        self.inner.retained.matching(&parsed.filter, Instant::now(), &mut out);
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(out)
    }

    /// The retained message of `topic`, if one is held and unexpired.
    pub fn retained_message(&self, topic_name: &str) -> Result<Option<Arc<Message>>, AdminError> {
        topic::validate_topic_name(topic_name, usize::MAX)?;
        let mut out = Vec::new();
        // A topic name has no wildcards, so as a filter it matches exactly itself.
        self.inner.retained.matching(topic_name, Instant::now(), &mut out);
        Ok(out.pop())
    }

    /// Removes the retained message of `topic` from memory and from the durable store (the
    /// same store operation as a client's empty retained PUBLISH). Current subscribers are not
    /// sent anything: this is housekeeping, not a publish. Returns whether a message was held
    /// and the durability of its removal.
    pub fn clear_retained(&self, topic_name: &str) -> Result<(bool, Durable), AdminError> {
        topic::validate_topic_name(topic_name, usize::MAX)?;
        let inner = &*self.inner;
        let empty = Arc::new(Message::new(ByteString::from(topic_name), Bytes::new(), QoS::AtMostOnce, true));
        if !inner.retained.set(empty) {
            return Ok((false, Durable::ready()));
        }
        let mut ticket = 0;
        if inner.store.is_persistent() {
            ticket = inner.store.submit(Op::RetainedClear(ByteString::from(topic_name)));
        }
        tracing::info!(topic = topic_name, "retained message cleared through the admin API");
        Ok((true, self.durable(ticket)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::broker::{ConnectRequest, DisconnectKind};
    use crate::core::session::Expiry;
    use fleetmq_config::BrokerConfig;

    fn connect(broker: &Broker, id: &str, expiry: Expiry) -> crate::core::broker::Connected {
        broker
            .connect(ConnectRequest {
                client_id: ByteString::from(id),
                clean_start: true,
                expiry,
                will: None,
                protocol: ProtocolVersion::V5,
                receive_max: 10,
                username: None,
                password: None,
                peer: None,
            })
            .expect("connects")
    }

    fn broker() -> Broker {
        let mut config = BrokerConfig::default();
        config.auth.allow_anonymous = Some(true);
        Broker::new(config)
    }

    #[test]
    fn totals_and_listener_counts_follow_connections() {
        let broker = broker();
        let a = connect(&broker, "a", Expiry::Never);
        let _b = connect(&broker, "b", Expiry::Never);
        let info = ConnectionInfo {
            peer: None,
            protocol: ProtocolVersion::V5,
            keep_alive: 30,
            listener: "main".into(),
            username: None,
            connected_at: SystemTime::now(),
        };
        broker.set_connection_info(&a.session, a.generation, Arc::new(info.clone()));
        // A stale generation changes nothing.
        broker.set_connection_info(
            &a.session,
            a.generation + 100,
            Arc::new(ConnectionInfo { keep_alive: 1, ..info }),
        );
        let totals = broker.session_totals();
        assert_eq!((totals.sessions, totals.connected), (2, 2));
        assert_eq!(totals.by_listener, vec![("main".to_string(), 1)]);
        assert_eq!(totals.depth_buckets[0], 2, "both queues are empty");
        assert_eq!(broker.client_info("a").and_then(|c| c.connection).map(|c| c.keep_alive), Some(30));
        assert_eq!(broker.client_ids(), ["a", "b"]);
    }

    #[test]
    fn admin_disconnect_kicks_and_can_end_the_session() {
        let broker = broker();
        let a = connect(&broker, "a", Expiry::Never);
        let done = broker.admin_disconnect("a", false).expect("connected");
        assert_eq!(done, AdminDisconnect { generation: Some(a.generation), session_ended: false });
        assert_eq!(a.signal.kicked(), Some(Kick::AdminAction));
        broker.disconnect(&a.session, a.generation, DisconnectKind::Abnormal);
        assert!(!broker.is_connection_attached("a", a.generation));
        assert_eq!(broker.admin_disconnect("a", false), Err(AdminError::NotConnected("a".into())));
        let ended = broker.admin_disconnect("a", true).expect("session exists");
        assert!(ended.session_ended && ended.generation.is_none());
        assert!(broker.client_info("a").is_none());
        assert_eq!(broker.admin_disconnect("a", true), Err(AdminError::NoSuchClient("a".into())));
    }

    #[test]
    fn retained_lookup_and_clear() {
        let broker = broker();
        for t in ["a/b", "a/c", "$SYS/x"] {
            broker.publish_internal(Message::new(t, "v", QoS::AtLeastOnce, true));
        }
        let topics = |f: &str| -> Vec<String> {
            broker.retained_matching(f).unwrap().iter().map(|m| m.topic.to_string()).collect()
        };
        assert_eq!(topics("#"), ["a/b", "a/c"]);
        assert_eq!(topics("$SYS/#"), ["$SYS/x"]);
        assert_eq!(broker.retained_matching("$share/g/#").unwrap_err(), AdminError::SharedFilter);
        assert!(broker.retained_message("a/+").is_err());
        assert!(broker.retained_message("a/b").unwrap().is_some());
        assert!(broker.clear_retained("a/b").unwrap().0);
        assert!(!broker.clear_retained("a/b").unwrap().0, "nothing left to clear");
        assert_eq!(topics("#"), ["a/c"]);
        assert_eq!(broker.retained_count(), 2);
    }
}
