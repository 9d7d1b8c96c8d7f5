//! One bridge's connection loop: connect to the remote (addresses in order), attach the
//! bridge's internal session to the core, forward both ways, and back off after failures.
//!
//! Out: the internal session `$bridge/<name>` subscribes to the out rules' local filters;
//! this task drains its queue like a connection writer and acknowledges a message locally
//! only after the remote acknowledged it, so unacknowledged messages stay in the (durable)
//! session queue while the remote is down. In: remote messages are published locally with
//! the internal session as origin (its out subscriptions use No Local, so they never go
//! back) and acknowledged to the remote once the local publish is durable.

use std::rc::Rc;
use std::sync::Arc;

use fleetmq_config::Bridge;
use tokio::sync::watch;

use super::backoff::Backoff;
use super::mapping::Rule;
use super::remote::{self, Handled, Inbound, Outbound, Sink};
use super::state::{BridgeStatus, LinkState};
use crate::core::Broker;
use crate::core::broker::{ConnectRequest, Connected, DisconnectKind, SubscribeRequest};
use crate::core::session::{ConnSignal, Expiry, Outgoing, Session};
use crate::core::types::{Message, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};

/// Messages taken from the session queue per lock (as in the connection writer).
const BATCH: usize = 64;

/// Runs bridge `index` (its position in `bridges`, for error keys) until `stop` turns true.
pub(super) async fn run(
    broker: Broker,
    index: usize,
    config: Bridge,
    status: Arc<BridgeStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let rules: Rc<[Rule]> = config.topics.iter().map(Rule::new).collect();
    if config.topics.iter().any(|t| t.direction.is_in() && t.qos == 2) {
        tracing::info!(bridge = %config.name, "`in` rules with qos 2 subscribe on the remote at QoS 1 (see docs/bridges.md)");
    }
    let mut backoff = Backoff::new(config.backoff.initial, config.backoff.max);
    let mut connected_before = false;
    let name = config.name.clone();
    while !*stop.borrow() {
        status.set(LinkState::Connecting, None);
        match connect_any(index, &config, &status).await {
            Ok((remote, address)) => {
                backoff.reset();
                if connected_before {
                    BridgeStatus::count(&status.reconnects);
                }
                connected_before = true;
                status.set(LinkState::Connected, Some(address.clone()));
                tracing::info!(bridge = %name, %address, "bridge connected");
                notify(&broker, &config, true);
                let reason = serve(&broker, &config, remote, &rules, &status, &mut stop).await;
                notify(&broker, &config, false);
                tracing::warn!(bridge = %name, %address, "bridge disconnected: {reason}");
                status.set_error(reason);
            }
            Err(err) => {
                tracing::warn!(bridge = %name, "bridge cannot connect: {err}");
                status.set_error(err);
            }
        }
        if *stop.borrow() {
            break;
        }
        let delay = backoff.next_delay();
        status.set(LinkState::Backoff, None);
        tracing::info!(bridge = %name, delay_ms = delay.as_millis() as u64, "bridge backing off before reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!(bridge = %name, "bridge stopped");
}

/// Mosquitto's local notification (`notifications.local`): retained
/// `$SYS/broker/connection/<name>/state` (or `notifications.topic`) = `1`/`0`.
fn notify(broker: &Broker, config: &Bridge, up: bool) {
    if config.notifications.local {
        let topic = config.local_state_topic();
        broker.publish_internal(Message::new(topic, if up { "1" } else { "0" }, QoS::AtLeastOnce, true));
    }
}

/// How long a clean stop waits for the remote to acknowledge the `0` notification.
const NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The remote notification (`notifications.remote`): a retained `1`/`0` on the remote's
/// state topic, acknowledged (QoS 1) within [`NOTIFY_TIMEOUT`] or logged. The unclean case
/// is the will set at CONNECT (see `remote`).
async fn notify_remote(sink: &Sink, config: &Bridge, up: bool) {
    if !config.notifications.remote {
        return;
    }
    let payload = ntex::util::Bytes::from_static(if up { b"1" } else { b"0" });
    let send = async {
        // The remote's Receive Maximum may be used up by forwarded messages.
        if !sink.is_ready() && !sink.ready().await {
            return Err(ntex_mqtt::error::SendPacketError::Disconnected);
        }
        sink.publish_qos1(config.remote_state_topic(), payload, true, &Outbound::default()).await
    };
    match tokio::time::timeout(NOTIFY_TIMEOUT, send).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!(bridge = %config.name, "the remote refused the state notification"),
        Ok(Err(err)) => tracing::warn!(bridge = %config.name, "state notification not sent: {err}"),
        Err(_) => tracing::warn!(bridge = %config.name, "state notification not acknowledged in time"),
    }
}

/// Tries every address in order; returns the first connection and the address used.
async fn connect_any(
    index: usize,
    config: &Bridge,
    status: &BridgeStatus,
) -> Result<(remote::Client, String), String> {
    // Read on every attempt, so a rotated Secret is picked up at the next reconnect.
    let password = match &config.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read password_file {}: {err}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some(tls) => {
            if tls.insecure_skip_verify {
                tracing::warn!(bridge = %config.name, "TLS certificate verification is off (insecure_skip_verify)");
            }
            Some((super::tls::client_config(index, tls).map_err(|e| e.to_string())?, tls.server_name.clone()))
        }
        None => None,
    };
    let mut errors = Vec::new();
    for address in &config.addresses {
        match remote::connect(config, address, password.as_deref(), tls.as_ref()).await {
            Ok(client) => return Ok((client, address.clone())),
            Err(err) => errors.push(format!("{address}: {err}")),
        }
        status.set(LinkState::Connecting, None);
    }
    Err(errors.join("; "))
}

/// One remote connection: attaches the internal session, subscribes both sides and forwards
/// until either side ends. Returns why it ended.
async fn serve(
    broker: &Broker,
    config: &Bridge,
    client: remote::Client,
    rules: &Rc<[Rule]>,
    status: &Arc<BridgeStatus>,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let sink = client.sink();
    let request = ConnectRequest {
        client_id: status.session_id.as_str().into(),
        clean_start: false,
        expiry: Expiry::Never,
        will: None,
        protocol: ProtocolVersion::V5,
        receive_max: client.receive_max(),
        username: None,
        password: None,
        peer: None,
    };
    let Connected { session, generation, signal, .. } = match broker.connect_bridge(request) {
        Ok(connected) => connected,
        Err(err) => {
            sink.close();
            return format!("cannot attach the local session: {err}");
        }
    };
    // The session may have been created just now.
    super::apply_queue(broker, config);

    // In direction: runs the remote connection's dispatcher (it also completes our
    // publishes' acknowledgements); its end is the end of the link.
    let handler = {
        let (broker, rules, status, origin) = (broker.clone(), rules.clone(), status.clone(), session.id);
        move |message: Inbound| {
            let (broker, rules, status) = (broker.clone(), rules.clone(), status.clone());
            async move { inbound(&broker, &rules, &status, origin, message).await }
        }
    };
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<String>();
    ntex::rt::spawn(async move {
        let _ = done_tx.send(client.run(handler).await);
    });

    let reason = match subscribe(broker, &sink, &session, rules, status).await {
        Ok(()) => {
            // Spawned: the drain must not wait for this acknowledgement.
            let (notify_sink, notify_config) = (sink.clone(), config.clone());
            ntex::rt::spawn(async move { notify_remote(&notify_sink, &notify_config, true).await });
            drain(broker, &sink, &session, generation, &signal, rules, status, &mut done, stop).await
        }
        Err(err) => err,
    };
    if *stop.borrow() && sink.is_open() {
        // A clean stop: the DISCONNECT below discards the will, so say `0` explicitly.
        notify_remote(&sink, config, false).await;
    }
    sink.close();
    broker.disconnect(&session, generation, DisconnectKind::Normal { publish_will: false, expiry: None });
    reason
}

/// Subscribes the in rules on the remote and the out rules locally.
async fn subscribe(
    broker: &Broker,
    sink: &Sink,
    session: &Arc<Session>,
    rules: &[Rule],
    status: &BridgeStatus,
) -> Result<(), String> {
    // At most QoS 1: ntex-mqtt's client answers every PUBLISH it receives with PUBACK, also
    // QoS 2 ones (it has no PUBREC/PUBREL receiver path, and its acknowledgement packets
    // cannot be built outside the crate). A remote sending QoS 2 takes that PUBACK as a
    // protocol error, drops the link and sends the message again after the reconnect, once
    // per reconnect. Asking for QoS 1 makes the remote downgrade, so the link stays up and
    // the in direction is at least once.
    let remote_filters: Vec<(String, QoS)> = rules
        .iter()
        .filter(|r| r.direction.is_in())
        .map(|r| (r.remote_filter.clone(), r.qos.min(QoS::AtLeastOnce)))
        .collect();
    if !remote_filters.is_empty() {
        let granted =
            sink.subscribe(&remote_filters).await.map_err(|err| format!("remote SUBSCRIBE failed: {err}"))?;
        for ((filter, _), ok) in remote_filters.iter().zip(granted) {
            if !ok {
                tracing::warn!(bridge = %status.name, %filter, "the remote refused the subscription");
            }
        }
    }
    let requests: Vec<_> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.direction.is_out())
        .map(|(i, rule)| SubscribeRequest {
            filter: rule.local_filter.as_str().into(),
            options: SubscriptionOptions {
                qos: rule.qos,
                // Messages the bridge itself brought in (origin = this session) stay here.
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::SendIfNew,
                // Tells the drain loop which rule matched.
                subscription_id: std::num::NonZeroU32::new(u32::try_from(i + 1).unwrap_or(u32::MAX)),
            },
        })
        .collect();
    if !requests.is_empty() {
        let (results, retained, _durable) = broker.subscribe(session, &requests);
        for (req, result) in requests.iter().zip(results) {
            if let Err(err) = result {
                tracing::warn!(bridge = %status.name, filter = %req.filter, "local subscription refused: {err}");
            }
        }
        broker.deliver_retained(session, retained);
    }
    Ok(())
}

/// A remote PUBLISH for an in rule: published here, acknowledged once durable.
async fn inbound(
    broker: &Broker,
    rules: &[Rule],
    status: &BridgeStatus,
    origin: u64,
    message: Inbound,
) -> Handled {
    let topic = message.topic;
    let Some((rule, local)) =
        rules.iter().find_map(|r| Some((r, r.to_local(&topic)?)).filter(|(r, _)| r.matches_remote(&topic)))
    else {
        // Not ours (e.g. a subscription left in a persistent remote session): drop it.
        return Handled::Accepted;
    };
    let mut local = Message::new(local, message.payload, message.qos.min(rule.qos), message.retain);
    local.properties = message.properties;
    local.expires_at = message
        .expiry_interval
        .map(|secs| std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs)));
    // The origin makes the internal session's No Local subscriptions skip it: no loop.
    local.origin = origin;
    // With clustering every node's bridge receives its own copy from the remote: deliver it
    // here only, or each peer would get it once per node.
    match broker.publish_here(local) {
        Ok((_, durable)) => match durable.wait().await {
            Ok(()) => {
                BridgeStatus::count(&status.forwarded_in);
                Handled::Accepted
            }
            Err(err) => {
                tracing::error!(bridge = %status.name, "local store failed, not acknowledging: {err}");
                Handled::Failed(err.to_string())
            }
        },
        Err(err) => {
            tracing::warn!(bridge = %status.name, %topic, "remote message refused here: {err}");
            Handled::Refused
        }
    }
}

/// Out direction: moves the internal session's queue to the remote, acknowledging locally
/// only what the remote acknowledged.
#[allow(clippy::too_many_arguments)]
async fn drain(
    broker: &Broker,
    sink: &Sink,
    session: &Arc<Session>,
    generation: u64,
    signal: &ConnSignal,
    rules: &[Rule],
    status: &Arc<BridgeStatus>,
    done: &mut tokio::sync::oneshot::Receiver<String>,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if *stop.borrow() {
            return "bridge stopping".to_string();
        }
        if let Some(kick) = signal.kicked() {
            return format!("local session closed ({kick:?})");
        }
        if let Ok(reason) = done.try_recv() {
            return reason;
        }
        if !sink.is_open() {
            return "the remote closed the connection".to_string();
        }
        broker.next_batch(session, generation, BATCH, &mut batch);
        if batch.is_empty() {
            tokio::select! {
                () = signal.wait() => {}
                reason = &mut *done => return reason.unwrap_or_else(|_| "connection task ended".into()),
                _ = stop.changed() => {}
            }
            continue;
        }
        for item in batch.drain(..) {
            let (packet_id, delivery) = match item {
                Outgoing::Publish { packet_id, delivery, .. } => (packet_id, delivery),
                Outgoing::Release { packet_id } => {
                    // PUBREC came on an earlier remote connection, whose packet id is gone:
                    // the remote has the message, so the exchange is complete for us.
                    broker.pubcomp(session, packet_id);
                    continue;
                }
            };
            let topic = delivery
                .subscription_ids
                .iter()
                .filter_map(|id| rules.get((id.get() as usize).saturating_sub(1)))
                .chain(rules.iter())
                .find(|r| r.matches_local(&delivery.message.topic))
                .and_then(|r| r.to_remote(&delivery.message.topic));
            let Some(topic) = topic else {
                if let Some(id) = packet_id {
                    broker.discard(session, id);
                }
                continue;
            };
            // Wait for the remote's Receive Maximum before encoding, so publishes leave in
            // queue order.
            if !sink.is_ready() && !sink.ready().await {
                return "the remote closed the connection".to_string();
            }
            let payload = delivery.message.payload.clone();
            let out = Outbound {
                properties: delivery.message.properties.clone(),
                expiry_interval: delivery.message.remaining_expiry(std::time::Instant::now()),
            };
            match (delivery.qos, packet_id) {
                (QoS::AtMostOnce, _) | (_, None) => {
                    if sink.publish_qos0(topic, payload, delivery.retain, &out) {
                        BridgeStatus::count(&status.forwarded_out);
                    }
                }
                (QoS::AtLeastOnce, Some(id)) => {
                    let ack = sink.publish_qos1(topic, payload, delivery.retain, &out);
                    let (broker, session, status) = (broker.clone(), session.clone(), status.clone());
                    ntex::rt::spawn(async move {
                        match ack.await {
                            Ok(accepted) => {
                                if !accepted {
                                    tracing::warn!(bridge = %status.name, "the remote refused a message (PUBACK error reason); dropped");
                                }
                                broker.puback(&session, id);
                                BridgeStatus::count(&status.forwarded_out);
                            }
                            // Disconnected: stays in flight locally and is sent again next time.
                            Err(err) => {
                                tracing::debug!(bridge = %status.name, "publish not acknowledged: {err}")
                            }
                        }
                    });
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    let received = sink.publish_qos2(topic, payload, delivery.retain, &out);
                    let (broker, session, status) = (broker.clone(), session.clone(), status.clone());
                    ntex::rt::spawn(async move {
                        let Ok(received) = received.await else { return };
                        // Recorded (durably) before PUBREL, as for a client: a restart then
                        // completes the exchange instead of publishing again.
                        let (known, durable) = broker.pubrec(&session, id, generation);
                        if !known || durable.wait().await.is_err() {
                            return;
                        }
                        if received.release().await.is_ok() {
                            broker.pubcomp(&session, id);
                            BridgeStatus::count(&status.forwarded_out);
                        }
                    });
                }
            }
        }
    }
}
