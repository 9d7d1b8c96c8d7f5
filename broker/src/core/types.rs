//! Protocol-neutral vocabulary shared by the front ends and the core.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use ntex::util::{ByteString, Bytes};

/// Quality of service level (MQTT §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The numeric level, as in the packet.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// Which protocol a connection speaks. Only changes what the front end encodes; the core
/// treats every session alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V3_1,
    /// MQTT 3.1.1 (level 4).
    V3_1_1,
    /// MQTT 5.0 (level 5).
    V5,
}

impl ProtocolVersion {
    /// Human-readable name for logs and `$SYS`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "3.1",
            ProtocolVersion::V3_1_1 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        }
    }

    /// MQTT 5 features (properties, reason codes) are available.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Identity of a session inside this process; never reused, so a stale reference can never
/// address a newer session with the same client id.
pub type SessionId = u64;

/// Session id used for messages the broker itself originates (`$SYS`, wills are attributed
/// to their client).
pub const BROKER_ORIGIN: SessionId = 0;

/// v5 application properties that travel with a message unchanged (MQTT 5.0 §3.3.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Payload Format Indicator: payload is UTF-8.
    pub payload_is_utf8: bool,
    /// Content Type.
    pub content_type: Option<ByteString>,
    /// Response Topic.
    pub response_topic: Option<ByteString>,
    /// Correlation Data.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl Properties {
    /// True when nothing would be encoded.
    pub fn is_empty(&self) -> bool {
        !self.payload_is_utf8
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }
}

/// An application message as the broker routes it. Immutable once published; fan-out shares
/// one `Arc<Message>` between all subscribers, so the payload is never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never contains wildcards).
    pub topic: ByteString,
    /// Payload bytes (reference counted).
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// v5 properties; `None` when there are none (v3 publishers, most v5 ones).
    pub properties: Option<Box<Properties>>,
    /// Absolute expiry from the Message Expiry Interval.
    pub expires_at: Option<Instant>,
    /// Publishing session (for No Local), or [`BROKER_ORIGIN`].
    pub origin: SessionId,
}

impl Message {
    /// A message without properties or expiry.
    pub fn new(topic: impl Into<ByteString>, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: None,
            expires_at: None,
            origin: BROKER_ORIGIN,
        }
    }

    /// Whether the Message Expiry Interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Remaining expiry interval in whole seconds, rounded up, for forwarding
    /// (MQTT 5.0 §3.3.2.3.3); `None` when the message never expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }

    /// Approximate memory held by the message, for queue byte limits.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// Converts a v5 Message Expiry Interval into an absolute deadline.
pub fn expiry_deadline(now: Instant, interval_secs: Option<u32>) -> Option<Instant> {
    interval_secs.map(|secs| now + Duration::from_secs(u64::from(secs)))
}

/// One message on its way to one session: the shared message plus what this subscriber's
/// subscription decided (QoS after the grant cap, RETAIN as delivered, identifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The routed message.
    pub message: Arc<Message>,
    /// QoS for this subscriber: min(message QoS, granted QoS).
    pub qos: QoS,
    /// RETAIN flag as sent to this subscriber.
    pub retain: bool,
    /// Subscription Identifiers of every matching subscription (v5).
    pub subscription_ids: Vec<NonZeroU32>,
}

impl Delivery {
    /// A delivery with no subscription identifiers.
    pub fn new(message: Arc<Message>, qos: QoS, retain: bool) -> Self {
        Delivery { message, qos, retain, subscription_ids: Vec::new() }
    }
}

/// Subscription options (MQTT 5.0 §3.8.3.1); v3 subscriptions use the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// Do not deliver the subscriber's own publishes.
    pub no_local: bool,
    /// Keep the RETAIN flag on normal deliveries.
    pub retain_as_published: bool,
    /// When retained messages are sent at subscribe time.
    pub retain_handling: RetainHandling,
    /// Subscription Identifier.
    pub subscription_id: Option<NonZeroU32>,
}

impl SubscriptionOptions {
    /// Options of a v3 subscription with the granted QoS.
    pub fn with_qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAlways,
            subscription_id: None,
        }
    }
}

/// Retain Handling option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: send retained messages at every subscribe.
    SendAlways,
    /// 1: only if the subscription did not exist.
    SendIfNew,
    /// 2: never at subscribe time.
    DontSend,
}
