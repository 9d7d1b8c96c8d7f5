//! Broker integration tests: the real broker (in-process, ephemeral port) driven by real
//! MQTT clients (rumqttc v3 and v5) and, where no client can produce the packet, raw bytes.

mod cli;
mod common;
mod delayed;
mod flow;
mod http;
mod limits;
mod qos;
mod raw;
mod retained;
mod sessions;
mod shared;
mod smoke;
mod sys;
mod topics;
mod v3_protocol;
mod v5_protocol;
mod wills;
