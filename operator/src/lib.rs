//! FleetMQ Kubernetes operator.
//!
//! The pipeline, one module per step (as in kube-rs/controller-rs and Stackable's operators):
//!
//! ```text
//! crd (types, CEL) → reconcile::fetch (referenced objects) → validate (pure)
//!   → config + auth + build (pure, deterministic) → apply (server-side apply) → status
//! ```
//!
//! [`render`] runs the same pure steps offline; [`controller`] wires the reconcilers into
//! kube-runtime with watches, events, metrics ([`metrics`]) and leader election ([`leader`]).

pub mod apply;
pub mod auth;
pub mod build;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod crd;
pub mod error;
pub mod inputs;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod validate;
pub mod yaml;

pub use error::Error;
