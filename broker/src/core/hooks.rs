//! Seams for clustering (`crate::cluster`): the core reports subscription changes and hands
//! over every message it dispatched, without knowing what a cluster is. Unset (no `cluster`
//! section) they cost one `OnceLock` read.

use std::any::Any;
use std::sync::Arc;

use super::topic::SubscriptionFilter;
use super::types::Message;

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
    /// Called after local routing; must not block.
    fn forward(&self, message: &Arc<Message>);
}
