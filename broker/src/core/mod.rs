//! The protocol-neutral broker core: sessions, routing, retained messages, timers.
//!
//! Front ends (`crate::frontend`) translate MQTT 3.1.1 and 5.0 packets into calls on
//! [`Broker`]; the core never sees a codec type.

pub mod broker;
pub mod hooks;
pub mod metrics;
pub mod retained;
pub mod router;
pub mod scheduler;
pub mod session;
pub mod sys;
pub mod topic;
pub mod trie;
pub mod types;

pub use broker::admin;
pub use broker::{
    Broker, ConnectError, ConnectRequest, Connected, DisconnectKind, PublishError, SubscribeRequest,
};
