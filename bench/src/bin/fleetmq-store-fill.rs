//! `fleetmq-store-fill`: writes a large state straight into a broker data dir, for the
//! recovery benchmark (publishing a million retained messages over MQTT first would measure
//! the network, not recovery).

use std::sync::Arc;

use clap::Parser;
use fleetmq_broker::core::session::Expiry;
use fleetmq_broker::core::types::{Delivery, Message, QoS};
use fleetmq_broker::store::disk::DiskStore;
use fleetmq_broker::store::{Op, SessionRecord, Store};
use fleetmq_config::Storage;

#[derive(Debug, Parser)]
struct Args {
    /// The broker's storage.data_dir.
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Retained messages to write.
    #[arg(long, default_value_t = 0)]
    retained: usize,
    /// Persistent sessions to write.
    #[arg(long, default_value_t = 0)]
    sessions: usize,
    /// Queued messages per session.
    #[arg(long, default_value_t = 0)]
    queued: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let storage = Storage { data_dir: args.data_dir.clone(), ..Storage::default() };
    let store = DiskStore::open(&storage)?;
    let payload = vec![b'x'; args.payload];
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    for i in 0..args.retained {
        let m = Message::new(
            format!("fill/retained/{}/{}", i / 1000, i % 1000),
            payload.clone(),
            QoS::AtLeastOnce,
            true,
        );
        store.submit(Op::RetainedSet(Arc::new(m)));
        if i % 50_000 == 49_999 {
            rt.block_on(store.flush().wait())?;
        }
    }
    for s in 0..args.sessions {
        let store_id = s as u64 + 1;
        store.submit(Op::SessionPut(Box::new(SessionRecord {
            store_id,
            client_id: format!("fill-session-{s}").into(),
            expiry: Expiry::Never,
            subscriptions: vec![(
                format!("fill/s/{s}/#").into(),
                fleetmq_broker::core::types::SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            )],
            will: None,
            disconnected_at: Some(std::time::SystemTime::now()),
        })));
        for q in 0..args.queued {
            let m =
                Arc::new(Message::new(format!("fill/s/{s}/{q}"), payload.clone(), QoS::AtLeastOnce, false));
            store.submit(Op::QueuePut {
                store_id,
                seq: q as u64,
                delivery: Delivery::new(m, QoS::AtLeastOnce, false),
                phase: None,
            });
        }
        if s % 500 == 499 {
            rt.block_on(store.flush().wait())?;
        }
    }
    rt.block_on(store.flush().wait())?;
    store.close();
    println!(
        "wrote {} retained, {} sessions x {} queued into {}",
        args.retained,
        args.sessions,
        args.queued,
        args.data_dir.display()
    );
    Ok(())
}
