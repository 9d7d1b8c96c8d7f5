//! Moving a session between cluster nodes: [`Broker::export_session`] takes it out of this
//! node (closing its connection), [`Broker::import_session`] installs it on another. The moved
//! state has the shape the store loads at start ([`LoadedSession`]), so importing is recovery
//! of one session, and the importing node writes it to its own store. A joining node also
//! takes over the retained messages of a peer ([`Broker::replace_retained`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::{Broker, DropReason, Enqueued, Expiry, Job, Kick, Restored, Session, topic};
use crate::core::hooks::RelayTo;
use crate::core::session::{Journal as _, Phase};
use crate::core::types::{ByteString, Bytes, Delivery, Message, QoS};
use crate::store::{LoadedSession, Op, SessionRecord};

impl Broker {
    /// Takes session `client_id` out of this node for another node: its connection (if any) is
    /// closed as taken over, its will is published now unless it is delayed (the session lives
    /// on, so a delayed will is cancelled like on a reconnect), and the session ends here
    /// (subscriptions, queue and stored copy removed). `None` when there is no such session
    /// (or it is a bridge's).
    ///
    /// With `relay`, a stand-in keeps the session's subscriptions here for the given time and
    /// passes what is routed to it to the relay (the node the session went to), so messages
    /// routed here before the cluster learns the session's new place are not lost. It has no
    /// client id entry, queue or stored copy, and ends by itself.
    pub fn export_session(
        &self,
        client_id: &str,
        relay: Option<(RelayTo, Duration)>,
    ) -> Option<LoadedSession> {
        if client_id.starts_with(crate::bridge::SESSION_PREFIX) {
            return None;
        }
        let session = self.session(client_id)?;
        let (loaded, will_now) = {
            let mut st = session.lock();
            if st.ended {
                return None;
            }
            let connected = st.attachment.is_some();
            let will = st.will.take();
            let will_now = if connected {
                st.kick(Kick::TakenOver);
                will.filter(|w| w.delay.is_zero())
            } else {
                None
            };
            let Restored { deliveries, inbound, floor } = st.take_for_handover();
            // From here on, what is routed to the session (it stays subscribed until it ends
            // below) goes to its new node instead of a queue nobody will read.
            if let Some((to, _)) = &relay {
                st.relay = Some(to.clone());
            }
            let record = SessionRecord {
                store_id: session.store_id,
                client_id: session.client_id.clone(),
                expiry: st.expiry,
                subscriptions: st.subscriptions.iter().map(|(f, o)| (f.clone(), *o)).collect(),
                will: None,
                disconnected_at: if connected { None } else { st.disconnected_at },
            };
            (LoadedSession { record, deliveries, inbound, floor }, will_now)
        };
        if let Some(will) = will_now {
            self.publish_will(*will, &session);
        }
        if let Some((relay, grace)) = relay {
            // Subscribed before the session's own subscriptions go, so its routes never drop
            // out of the cluster in between.
            self.stand_in(&loaded.record, relay, grace);
        }
        self.end_session(&session, None);
        tracing::info!(
            client_id,
            messages = loaded.deliveries.len(),
            subscriptions = loaded.record.subscriptions.len(),
            "session handed over to another node"
        );
        Some(loaded)
    }

    fn stand_in(&self, record: &SessionRecord, relay: RelayTo, grace: Duration) {
        let inner = &*self.inner;
        let id = inner.session_ids.fetch_add(1, Ordering::Relaxed);
        let store_id = inner.store_ids.fetch_add(1, Ordering::Relaxed);
        let husk = Arc::new(Session::new(
            id,
            store_id,
            record.client_id.clone(),
            Expiry::OnDisconnect,
            inner.settings.load().queue,
        ));
        {
            let mut st = husk.lock();
            st.relay = Some(relay);
            for (raw, options) in &record.subscriptions {
                st.subscriptions.insert(raw.clone(), *options);
            }
        }
        for (raw, options) in &record.subscriptions {
            if let Ok(filter) = topic::parse_subscription(raw, usize::MAX) {
                inner.router.subscribe(&husk, &filter, *options);
            }
        }
        inner
            .scheduler
            .schedule(Instant::now() + grace, Job::Expire { session: husk.clone(), generation: 0 });
        let mut stand_ins = inner.stand_ins.lock().unwrap_or_else(|p| p.into_inner());
        stand_ins.retain(|_, s| !s.lock().ended);
        stand_ins.insert(record.client_id.clone(), husk);
    }

    /// Queues a delivery another node relayed for `client_id` (its session moved here while
    /// the message was on its way). Returns the store ticket to wait for, or `None` when the
    /// client has no session here (the message is dropped).
    pub fn deliver_relayed(&self, client_id: &str, delivery: Delivery) -> Option<u64> {
        let Some(session) = self.session(client_id) else {
            // The session moved on again while the message travelled: pass it along too.
            let husk =
                self.inner.stand_ins.lock().unwrap_or_else(|p| p.into_inner()).get(client_id).cloned()?;
            let st = husk.lock();
            let relay = st.relay.as_ref().filter(|_| !st.ended)?;
            relay.0.relay(client_id, &delivery);
            return Some(0);
        };
        let mut st = session.lock();
        if st.ended {
            return None;
        }
        let mut journal = self.journal(&session, &st);
        if let Enqueued::Overflow { queued, evicted } = st.enqueue(delivery, false, &mut journal) {
            self.inner.metrics.dropped(DropReason::QueueFull, u64::from(evicted) + u64::from(!queued));
        }
        Some(journal.ticket)
    }

    /// Whether this node has a session for `other`'s client that is newer than `other`: both
    /// disconnected, this one more recently. (Two copies exist when a node that crashed comes
    /// back with the session its client had before starting a new one elsewhere.)
    pub fn has_newer_session(&self, other: &LoadedSession) -> bool {
        let Some(local) = self.session(&other.record.client_id) else { return false };
        let st = local.lock();
        match (st.disconnected_at, other.record.disconnected_at) {
            (Some(here), Some(there)) => here > there,
            _ => false,
        }
    }

    /// Every retained message here except `$` topics (per node), for a joining cluster node.
    pub fn retained_for_sync(&self) -> Vec<Arc<Message>> {
        let mut all = self.inner.retained.all();
        all.retain(|m| !m.topic.starts_with('$'));
        all
    }

    /// Makes this node's retained state (except `$` topics) exactly `messages`, the set a
    /// peer had: each is stored (not routed: nobody is told, like a restore) and topics the
    /// peer does not have are cleared. Returns the store ticket to wait for.
    pub fn replace_retained(&self, messages: Vec<Message>) -> u64 {
        let inner = &*self.inner;
        let keep: rustc_hash::FxHashSet<ByteString> = messages.iter().map(|m| m.topic.clone()).collect();
        let mut ticket = 0;
        for stale in self.retained_for_sync().into_iter().filter(|m| !keep.contains(&m.topic)) {
            let empty = Arc::new(Message::new(stale.topic.clone(), Bytes::new(), QoS::AtMostOnce, true));
            if inner.retained.set(empty) && inner.store.is_persistent() {
                ticket = inner.store.submit(Op::RetainedClear(stale.topic.clone()));
            }
        }
        for message in messages {
            let message = Arc::new(message);
            if inner.retained.set(message.clone()) && inner.store.is_persistent() {
                ticket = inner.store.submit(Op::RetainedSet(message));
            }
        }
        ticket
    }

    /// Stores one retained message from a peer (not routed). Returns the store ticket.
    pub fn replace_retained_one(&self, message: Message) -> u64 {
        let inner = &*self.inner;
        let message = Arc::new(message);
        if inner.retained.set(message.clone()) && inner.store.is_persistent() {
            return inner.store.submit(if message.payload.is_empty() {
                Op::RetainedClear(message.topic.clone())
            } else {
                Op::RetainedSet(message)
            });
        }
        0
    }

    /// Installs a session exported by another node, replacing any local one of the same
    /// client id, as a disconnected session (the client's connection attaches next). It is
    /// written to this node's store when persistent; returns the store ticket to wait for
    /// before the session counts as moved (0: nothing written).
    pub fn import_session(&self, loaded: LoadedSession) -> u64 {
        let inner = &*self.inner;
        let client_id = loaded.record.client_id.clone();
        if let Some(old) = self.session(&client_id) {
            old.lock().kick(Kick::TakenOver);
            self.end_session(&old, None);
        }
        let id = inner.session_ids.fetch_add(1, Ordering::Relaxed);
        let store_id = inner.store_ids.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(
            id,
            store_id,
            client_id.clone(),
            loaded.record.expiry,
            inner.settings.load().queue,
        ));
        let messages = loaded.deliveries.len();
        let mut ticket;
        {
            let mut st = session.lock();
            let mut journal = self.journal(&session, &st);
            for (seq, delivery, phase) in &loaded.deliveries {
                if delivery.qos.level() > 0 {
                    journal.queued(*seq, delivery);
                    if *phase == Some(Phase::AwaitPubcomp) {
                        journal.released(*seq, delivery);
                    }
                }
            }
            for packet_id in &loaded.inbound {
                journal.inbound(*packet_id, true);
            }
            ticket = journal.ticket;
            st.restore(Restored {
                deliveries: loaded.deliveries,
                inbound: loaded.inbound,
                floor: loaded.floor,
            });
            st.disconnected_at = Some(loaded.record.disconnected_at.unwrap_or_else(SystemTime::now));
            for (raw, options) in &loaded.record.subscriptions {
                st.subscriptions.insert(raw.clone(), *options);
            }
            ticket = ticket.max(self.persist_session(&session, &mut st));
        }
        for (raw, options) in &loaded.record.subscriptions {
            match topic::parse_subscription(raw, usize::MAX) {
                Ok(filter) => {
                    inner.router.subscribe(&session, &filter, *options);
                }
                Err(err) => {
                    tracing::warn!(client_id = %client_id, "handed-over subscription {raw} dropped: {err}")
                }
            }
        }
        inner.registry.lock(&client_id).insert(client_id.clone(), session.clone());
        // Expires here like any disconnected session, unless its client attaches first.
        if let Expiry::After(d) = loaded.record.expiry {
            inner
                .scheduler
                .schedule(Instant::now() + d, Job::Expire { session: session.clone(), generation: 0 });
        }
        tracing::info!(client_id = %client_id, messages, "session taken over from another node");
        ticket
    }
}

#[cfg(test)]
mod tests {
    use fleetmq_config::BrokerConfig;

    use super::*;
    use crate::core::session::Outgoing;
    use crate::core::types::{ByteString, Message, QoS, SubscriptionOptions};
    use crate::core::{ConnectRequest, DisconnectKind, SubscribeRequest};

    fn request(client_id: &str, clean: bool) -> ConnectRequest {
        ConnectRequest {
            client_id: ByteString::from(client_id.to_string()),
            clean_start: clean,
            expiry: if clean { Expiry::OnDisconnect } else { Expiry::Never },
            will: None,
            protocol: crate::core::types::ProtocolVersion::V3_1_1,
            receive_max: u16::MAX,
            username: None,
            password: None,
            peer: None,
        }
    }

    #[test]
    fn a_session_moves_with_its_subscriptions_and_queue() {
        let a = Broker::new(BrokerConfig::default());
        let b = Broker::new(BrokerConfig::default());
        let connected = a.connect(request("dev-1", false)).expect("connect");
        let sub = SubscribeRequest {
            filter: ByteString::from_static("cmd/#"),
            options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        };
        let _ = a.subscribe(&connected.session, &[sub]);
        a.disconnect(
            &connected.session,
            connected.generation,
            DisconnectKind::Normal { publish_will: false, expiry: None },
        );
        for i in 0..3 {
            let _ = a
                .publish(Message::new(ByteString::from(format!("cmd/{i}")), "x", QoS::AtLeastOnce, false))
                .expect("publish");
        }

        let loaded = a.export_session("dev-1", None).expect("exported");
        assert!(a.session("dev-1").is_none(), "gone from the old node");
        assert_eq!(a.subscription_count(), 0, "its routes too");
        assert_eq!(loaded.deliveries.len(), 3);
        assert!(a.export_session("dev-1", None).is_none());

        b.import_session(loaded);
        assert_eq!(b.subscription_count(), 1);
        let resumed = b.connect(request("dev-1", false)).expect("resume");
        assert!(resumed.session_present);
        let mut batch = Vec::new();
        b.next_batch(&resumed.session, resumed.generation, 10, &mut batch);
        let topics: Vec<String> = batch
            .iter()
            .filter_map(|o| match o {
                Outgoing::Publish { delivery, .. } => Some(delivery.message.topic.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(topics, ["cmd/0", "cmd/1", "cmd/2"], "queued messages follow, in order");
        // New messages route to the new node's session.
        let _ = b
            .publish(Message::new(ByteString::from_static("cmd/3"), "y", QoS::AtLeastOnce, false))
            .expect("publish");
        assert_eq!(b.session("dev-1").expect("session").lock().queue_len(), 1);
    }

    #[test]
    fn a_newer_local_session_is_preferred_to_an_older_copy() {
        let a = Broker::new(BrokerConfig::default());
        let b = Broker::new(BrokerConfig::default());
        let old = a.connect(request("dev-3", false)).expect("connect");
        a.disconnect(
            &old.session,
            old.generation,
            DisconnectKind::Normal { publish_will: false, expiry: None },
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        let new = b.connect(request("dev-3", false)).expect("connect");
        let copy = a.export_session("dev-3", None).expect("exported");
        assert!(!b.has_newer_session(&copy), "connected here: not comparable, the copy is taken");
        b.disconnect(
            &new.session,
            new.generation,
            DisconnectKind::Normal { publish_will: false, expiry: None },
        );
        assert!(b.has_newer_session(&copy));
        assert!(!a.has_newer_session(&copy), "no session on a any more");
    }

    #[test]
    fn exporting_a_connected_session_takes_it_over() {
        let a = Broker::new(BrokerConfig::default());
        let connected = a.connect(request("dev-2", false)).expect("connect");
        assert!(a.export_session("dev-2", None).is_some());
        assert!(!a.is_connection_attached("dev-2", connected.generation));
        assert!(a.export_session("$bridge/x", None).is_none());
    }
}
