//! FleetMQ broker: MQTT 3.1, 3.1.1 and 5.0 on ntex-mqtt.
//!
//! Layout follows the data path: `server` (listeners, transports) → `frontend` (ntex-mqtt v3
//! and v5 handlers translating packets) → `core` (sessions, router, retained, timers) →
//! `store` (persistence seam).

pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod core;
pub mod frontend;
pub mod http;
pub mod reload;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;
