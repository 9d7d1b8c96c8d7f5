//! Broker integration tests: the real broker (in-process, ephemeral port) driven by real
//! MQTT clients (rumqttc v3 and v5) and, where no client can produce the packet, raw bytes.

mod common;
mod smoke;
