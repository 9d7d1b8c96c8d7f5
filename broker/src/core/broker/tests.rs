use super::*;

fn broker() -> Broker {
    let mut config = BrokerConfig::default();
    config.limits.max_inflight = 10;
    Broker::new(config)
}

fn connect(b: &Broker, id: &str, clean: bool, expiry: Expiry, will: Option<Will>) -> Connected {
    b.connect(ConnectRequest {
        client_id: ByteString::from(id),
        clean_start: clean,
        expiry,
        will,
        protocol: ProtocolVersion::V5,
        receive_max: 100,
        username: None,
        password: None,
        peer: None,
    })
    .unwrap()
}

fn sub(b: &Broker, c: &Connected, filter: &str, qos: QoS) -> Vec<Delivery> {
    let (res, retained, _) = b.subscribe(
        &c.session,
        &[SubscribeRequest { filter: ByteString::from(filter), options: SubscriptionOptions::with_qos(qos) }],
    );
    assert!(res[0].is_ok());
    retained
}

fn publish(b: &Broker, topic: &str, payload: &str, qos: QoS, retain: bool) -> usize {
    match b.publish(Message::new(topic.to_string(), payload.to_string(), qos, retain)).unwrap().0 {
        Published::Routed { matched } => matched,
        Published::Delayed => panic!("not a delayed publish"),
    }
}

fn will(topic: &str, delay: u64) -> Will {
    Will {
        message: Message::new(topic.to_string(), "gone", QoS::AtLeastOnce, false),
        expiry_interval: None,
        delay: Duration::from_secs(delay),
    }
}

fn queued(c: &Connected) -> usize {
    c.session.lock().queue_len()
}

#[test]
fn resume_keeps_subscriptions_and_queue() {
    let b = broker();
    let a = connect(&b, "a", true, Expiry::Never, None);
    sub(&b, &a, "t/#", QoS::AtLeastOnce);
    b.disconnect(&a.session, a.generation, DisconnectKind::Normal { publish_will: false, expiry: None });
    assert_eq!(publish(&b, "t/1", "x", QoS::AtLeastOnce, false), 1, "queued while offline");
    assert_eq!(
        publish(&b, "t/1", "x", QoS::AtMostOnce, false),
        1,
        "matched, but QoS 0 is not queued offline"
    );
    let again = connect(&b, "a", false, Expiry::Never, None);
    assert!(again.session_present);
    assert!(Arc::ptr_eq(&again.session, &a.session));
    assert_eq!(queued(&again), 1);
}

#[test]
fn clean_start_discards_the_old_session() {
    let b = broker();
    let a = connect(&b, "a", false, Expiry::Never, None);
    sub(&b, &a, "t", QoS::AtLeastOnce);
    b.disconnect(&a.session, a.generation, DisconnectKind::Abnormal);
    let fresh = connect(&b, "a", true, Expiry::Never, None);
    assert!(!fresh.session_present);
    assert_eq!(b.subscription_count(), 0);
    assert_eq!(publish(&b, "t", "x", QoS::AtLeastOnce, false), 0);
    assert!(a.session.lock().ended);
}

#[test]
fn session_expiry_zero_ends_at_disconnect() {
    let b = broker();
    let a = connect(&b, "a", false, Expiry::OnDisconnect, None);
    sub(&b, &a, "t", QoS::AtLeastOnce);
    b.disconnect(&a.session, a.generation, DisconnectKind::Abnormal);
    assert_eq!(b.session_count(), 0);
    assert_eq!(b.subscription_count(), 0);
    assert!(!connect(&b, "a", false, Expiry::Never, None).session_present);
}

#[test]
fn takeover_kicks_the_old_connection_and_resumes() {
    let b = broker();
    let first = connect(&b, "dup", false, Expiry::Never, None);
    let second = connect(&b, "dup", false, Expiry::Never, None);
    assert_eq!(first.signal.kicked(), Some(Kick::TakenOver));
    assert!(second.session_present);
    // The old connection's teardown must not detach the new one.
    b.disconnect(&first.session, first.generation, DisconnectKind::Abnormal);
    assert!(second.session.lock().is_attached(second.generation));
}

#[test]
fn will_published_on_abnormal_disconnect_only() {
    let b = broker();
    let watcher = connect(&b, "w", true, Expiry::Never, None);
    sub(&b, &watcher, "wills/#", QoS::AtLeastOnce);

    let clean = connect(&b, "c1", true, Expiry::OnDisconnect, Some(will("wills/c1", 0)));
    b.disconnect(
        &clean.session,
        clean.generation,
        DisconnectKind::Normal { publish_will: false, expiry: None },
    );
    assert_eq!(queued(&watcher), 0);

    let with_will = connect(&b, "c2", true, Expiry::OnDisconnect, Some(will("wills/c2", 0)));
    b.disconnect(
        &with_will.session,
        with_will.generation,
        DisconnectKind::Normal { publish_will: true, expiry: None },
    );
    assert_eq!(queued(&watcher), 1, "v5 reason 0x04 publishes the will");

    let dropped = connect(&b, "c3", true, Expiry::OnDisconnect, Some(will("wills/c3", 0)));
    b.disconnect(&dropped.session, dropped.generation, DisconnectKind::Abnormal);
    assert_eq!(queued(&watcher), 2);
}

#[test]
fn delayed_will_is_cancelled_by_a_timely_reconnect() {
    let b = broker();
    let watcher = connect(&b, "w", true, Expiry::Never, None);
    sub(&b, &watcher, "wills/#", QoS::AtLeastOnce);
    let c = connect(&b, "c", false, Expiry::Never, Some(will("wills/c", 30)));
    b.disconnect(&c.session, c.generation, DisconnectKind::Abnormal);
    assert_eq!(b.scheduled_count(), 1);
    let _back = connect(&b, "c", false, Expiry::Never, None);
    b.fire_will(&c.session, c.generation);
    assert_eq!(queued(&watcher), 0, "resumed within the delay: no will");

    let d = connect(&b, "d", false, Expiry::Never, Some(will("wills/d", 30)));
    b.disconnect(&d.session, d.generation, DisconnectKind::Abnormal);
    b.fire_will(&d.session, d.generation);
    assert_eq!(queued(&watcher), 1, "delay passed: will published");
}

#[test]
fn session_end_publishes_a_pending_delayed_will() {
    let b = broker();
    let watcher = connect(&b, "w", true, Expiry::Never, None);
    sub(&b, &watcher, "wills/#", QoS::AtLeastOnce);
    let c = connect(&b, "c", false, Expiry::After(Duration::from_secs(5)), Some(will("wills/c", 60)));
    b.disconnect(&c.session, c.generation, DisconnectKind::Abnormal);
    assert!(b.end_session(&c.session, Some(c.generation)), "expiry timer");
    assert_eq!(queued(&watcher), 1);
    assert_eq!(b.session_count(), 1);
}

#[test]
fn expiry_timer_does_not_end_a_resumed_session() {
    let b = broker();
    let c = connect(&b, "c", false, Expiry::After(Duration::from_secs(5)), None);
    b.disconnect(&c.session, c.generation, DisconnectKind::Abnormal);
    let _back = connect(&b, "c", false, Expiry::After(Duration::from_secs(5)), None);
    assert!(!b.end_session(&c.session, Some(c.generation)));
    assert_eq!(b.session_count(), 1);
}

#[test]
fn retained_set_replace_clear_and_handling() {
    let b = broker();
    publish(&b, "r/1", "one", QoS::AtLeastOnce, true);
    publish(&b, "r/1", "uno", QoS::AtLeastOnce, true);
    publish(&b, "r/2", "two", QoS::AtMostOnce, true);
    let c = connect(&b, "c", true, Expiry::OnDisconnect, None);
    let got = sub(&b, &c, "r/+", QoS::AtLeastOnce);
    let mut payloads: Vec<_> = got.iter().map(|d| (d.message.payload.clone(), d.qos, d.retain)).collect();
    payloads.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        payloads,
        vec![(Bytes::from("two"), QoS::AtMostOnce, true), (Bytes::from("uno"), QoS::AtLeastOnce, true)]
    );
    publish(&b, "r/1", "", QoS::AtLeastOnce, true);
    assert_eq!(b.retained_count(), 1);

    let (_, again, _) = b.subscribe(
        &c.session,
        &[SubscribeRequest {
            filter: ByteString::from("r/+"),
            options: SubscriptionOptions {
                retain_handling: RetainHandling::SendIfNew,
                ..SubscriptionOptions::with_qos(QoS::AtLeastOnce)
            },
        }],
    );
    assert!(again.is_empty(), "Retain Handling 1 on an existing subscription sends nothing");
    let (_, shared, _) = b.subscribe(
        &c.session,
        &[SubscribeRequest {
            filter: ByteString::from("$share/g/r/+"),
            options: SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        }],
    );
    assert!(shared.is_empty(), "no retained messages for shared subscriptions");
}

#[test]
fn publish_refusals() {
    let b = broker();
    assert!(matches!(
        b.publish(Message::new("$SYS/x", "", QoS::AtMostOnce, false)),
        Err(PublishError::NotAuthorized)
    ));
    assert!(matches!(
        b.publish(Message::new("$delayed/x/t", "", QoS::AtMostOnce, false)),
        Err(PublishError::Topic(_))
    ));
    assert!(matches!(
        b.publish(Message::new("$delayed/10/t", "", QoS::AtMostOnce, false)),
        Ok((Published::Delayed, _))
    ));
    assert_eq!(b.scheduled_count(), 1);
}

#[test]
fn empty_client_id_rules() {
    let b = broker();
    let req = |protocol, clean| {
        b.connect(ConnectRequest {
            client_id: ByteString::new(),
            clean_start: clean,
            expiry: Expiry::OnDisconnect,
            will: None,
            protocol,
            receive_max: 10,
            username: None,
            password: None,
            peer: None,
        })
    };
    assert_eq!(req(ProtocolVersion::V3_1_1, false).unwrap_err(), ConnectError::ClientIdRejected);
    assert_eq!(req(ProtocolVersion::V3_1, true).unwrap_err(), ConnectError::ClientIdRejected);
    assert!(req(ProtocolVersion::V3_1_1, true).unwrap().assigned_client_id.is_some());
    let v5 = req(ProtocolVersion::V5, false).unwrap();
    assert!(v5.assigned_client_id.as_ref().is_some_and(|id| id.starts_with("fleetmq-")));
}

#[test]
fn max_connections_and_shutdown_refuse() {
    let mut config = BrokerConfig::default();
    config.limits.max_connections = 1;
    let b = Broker::new(config);
    let a = connect(&b, "a", true, Expiry::OnDisconnect, None);
    let refused = b.connect(ConnectRequest {
        client_id: ByteString::from("b"),
        clean_start: true,
        expiry: Expiry::OnDisconnect,
        will: None,
        protocol: ProtocolVersion::V5,
        receive_max: 10,
        username: None,
        password: None,
        peer: None,
    });
    assert_eq!(refused.unwrap_err(), ConnectError::QuotaExceeded);
    b.begin_shutdown();
    assert_eq!(a.signal.kicked(), Some(Kick::ServerShuttingDown));
}

#[test]
fn anonymous_refused_when_disabled() {
    let mut config = BrokerConfig::default();
    config.auth.allow_anonymous = Some(false);
    let b = Broker::new(config);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(rt.block_on(b.authenticate(Credentials::Anonymous)), Err(ConnectError::NotAuthorized));
    // Without a password file a User Name proves nothing either.
    let named = Credentials::Password { username: "alice".into(), password: Bytes::from_static(b"x") };
    assert_eq!(rt.block_on(b.authenticate(named)), Err(ConnectError::NotAuthorized));
    assert_eq!(rt.block_on(b.authenticate(Credentials::Certificate)), Ok(()));
    assert_eq!(b.metrics().auth_failures(), 2);
}

#[test]
fn password_file_decides_and_reload_swaps_it() {
    let b = Broker::new(BrokerConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // A line mosquitto_passwd 2.0.11 wrote (-H sha512) for alice / s3cret.
    let file = "alice:$6$nS4NK/tXsicPMtng$GwlbrjXrc/dRjVueg3nNpTa8xPJmZtWf9Iie4xvrTvVur8KH4sW/HCmkFDgzo+KP76UEfH1Oa0anso9FkZ6jBQ==\n";
    let passwords = crate::auth::PasswordFile::parse(file, "test").unwrap();
    b.set_auth(crate::auth::AuthState { passwords: Some(passwords), acl: crate::auth::Acl::allow_all() });
    let login = |user: &str, pw: &'static [u8]| Credentials::Password {
        username: user.into(),
        password: Bytes::from_static(pw),
    };
    assert_eq!(rt.block_on(b.authenticate(login("alice", b"s3cret"))), Ok(()));
    assert_eq!(rt.block_on(b.authenticate(login("alice", b"nope"))), Err(ConnectError::BadCredentials));
    assert_eq!(rt.block_on(b.authenticate(login("bob", b"s3cret"))), Err(ConnectError::BadCredentials));
    // The loopback default still admits anonymous clients alongside the file.
    assert_eq!(rt.block_on(b.authenticate(Credentials::Anonymous)), Ok(()));
    b.set_auth(crate::auth::AuthState::default());
    assert_eq!(
        rt.block_on(b.authenticate(login("alice", b"nope"))),
        Ok(()),
        "no file: anonymous policy decides"
    );
}

fn bridge_request(id: &str) -> ConnectRequest {
    ConnectRequest {
        client_id: ByteString::from(id),
        clean_start: false,
        expiry: Expiry::Never,
        will: None,
        protocol: ProtocolVersion::V5,
        receive_max: 100,
        username: None,
        password: None,
        peer: None,
    }
}

#[test]
fn bridge_session_ids_are_reserved_and_uncapped() {
    let mut config = BrokerConfig::default();
    config.sessions.max_session_expiry = Some(Duration::from_secs(60));
    let b = Broker::new(config);
    assert_eq!(b.connect(bridge_request("$bridge/cloud")).unwrap_err(), ConnectError::ClientIdRejected);
    let bridge = b.connect_bridge(bridge_request("$bridge/cloud")).unwrap();
    assert_eq!(bridge.expiry, Expiry::Never, "a bridge queue must outlive any outage");
    let client = b.connect(bridge_request("device")).unwrap();
    assert_eq!(client.expiry, Expiry::After(Duration::from_secs(60)), "clients stay capped");
}

#[test]
fn bridge_no_local_drops_its_own_inbound_messages_and_counts_offline_qos0() {
    let b = broker();
    let status = std::sync::Arc::new(crate::bridge::state::BridgeStatus::new("cloud"));
    b.bridges().set(vec![status.clone()]);
    let bridge = b.connect_bridge(bridge_request("$bridge/cloud")).unwrap();
    let options = SubscriptionOptions { no_local: true, ..SubscriptionOptions::with_qos(QoS::AtLeastOnce) };
    let (res, _, _) = b.subscribe(&bridge.session, &[SubscribeRequest { filter: "t/#".into(), options }]);
    assert!(res[0].is_ok());
    // Brought in by the bridge (origin = its session): not forwarded back out.
    let mut inbound = Message::new("t/in", "x", QoS::AtLeastOnce, false);
    inbound.origin = bridge.session.id;
    let (_, _durable) = b.publish(inbound).unwrap();
    assert_eq!(queued(&bridge), 0);
    // Published by anyone else: forwarded.
    assert_eq!(publish(&b, "t/local", "y", QoS::AtLeastOnce, false), 1);
    assert_eq!(queued(&bridge), 1);
    // Remote down (session detached): QoS 0 is not kept but counted for the bridge.
    b.disconnect(
        &bridge.session,
        bridge.generation,
        DisconnectKind::Normal { publish_will: false, expiry: None },
    );
    publish(&b, "t/q0", "z", QoS::AtMostOnce, false);
    assert_eq!(status.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(queued(&bridge), 1);
}
