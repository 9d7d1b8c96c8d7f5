//! Seams for clustering (`crate::cluster`): the core reports subscription changes and hands
//! over every message it dispatched, without knowing what a cluster is. Unset (no `cluster`
//! section) they cost one `OnceLock` read.

use std::any::Any;
use std::sync::Arc;

use super::topic::SubscriptionFilter;
use super::types::{ByteString, Message};

/// Told about every subscription the router gains or loses (one call per session and filter;
/// replacing a session's subscription is not a change).
pub trait RouteWatch: Send + Sync {
    /// A session subscribed to `filter`.
    fn added(&self, filter: &SubscriptionFilter);
    /// A session's subscription to `filter` is gone.
    fn removed(&self, filter: &SubscriptionFilter);
}

/// Receives every message the core dispatched locally that originated on this node (client
/// publishes after their ACL check, wills, delayed publishes), never messages that arrived
/// from a peer. `Any` lets the owner get its concrete type back from the broker.
pub trait Forwarder: Any + Send + Sync {
    /// Called before local routing; must not block. Returns how many peers the message went
    /// to and which shared groups this node serves for it.
    fn forward(&self, message: &Arc<Message>) -> Forwarded;
}

/// What [`Forwarder::forward`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// Peers the message was queued for (they count as matches for the publisher).
    pub peers: usize,
    /// Shared groups this node delivers the message to.
    pub shared: SharedMode,
}

/// Which shared subscriptions a routing delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SharedMode {
    /// Every matching group picks one member here (a single broker).
    #[default]
    Local,
    /// Only these `(group, filter)` pairs (the cluster picked this node for them; other
    /// nodes serve the other groups).
    Only(Vec<(ByteString, ByteString)>),
}

/// Passes deliveries for a session that moved to another node on to that node, for a short
/// while after the move: until the rest of the cluster has learned the session's new place,
/// messages for it keep arriving here.
pub trait Relay: Send + Sync {
    /// A delivery for `client_id`'s session, which now lives elsewhere.
    fn relay(&self, client_id: &str, delivery: &super::types::Delivery);
}

/// A session's relay, if it moved (see [`Relay`]).
#[derive(Clone)]
pub struct RelayTo(pub Arc<dyn Relay>);

impl std::fmt::Debug for RelayTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayTo")
    }
}
