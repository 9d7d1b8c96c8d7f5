//! Storage seam between the core and durable storage.
//!
//! The core's in-memory structures are authoritative while the broker runs; a [`Store`]
//! persists what must survive a restart and hands it back at start. With
//! `persistence: false` (and until the durable engine lands) [`MemoryStore`] is used: state
//! lives only in memory and a restart starts empty.

use crate::core::types::Message;

/// Errors from a storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption); the message names the file and the reason.
    #[error("store error: {0}")]
    Engine(String),
}

/// Durable state the core writes through.
pub trait Store: Send + Sync + 'static {
    /// Engine name for logs (`memory`, ...).
    fn kind(&self) -> &'static str;
    /// A retained message was set (non-empty payload) for its topic.
    fn retained_set(&self, message: &Message) -> Result<(), StoreError>;
    /// The retained message of `topic` was cleared.
    fn retained_remove(&self, topic: &str) -> Result<(), StoreError>;
    /// Retained messages to restore at start.
    fn load_retained(&self) -> Result<Vec<Message>, StoreError>;
}

/// No persistence: everything is kept only in the core's memory.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn retained_set(&self, _message: &Message) -> Result<(), StoreError> {
        Ok(())
    }

    fn retained_remove(&self, _topic: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        Ok(Vec::new())
    }
}
