//! The embedded durable store: fjall (an LSM tree with a write-ahead journal) under
//! `storage.data_dir`, written by one thread with group commit.
//!
//! Every connection's writes go through one channel to the writer thread, which applies
//! everything waiting as one atomic batch and, with `fsync: always`, syncs the journal once
//! for the whole batch before advancing the durability watermark past it. So many publishers
//! share each fsync (group commit) and a PUBACK never precedes the data it promises.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fjall::compaction::filter::{CompactionFilter, Context, Factory, ItemAccessor, Verdict};
use fjall::config::FilterPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use fleetmq_config::{Fsync, Storage};
use rustc_hash::FxHashMap;
use tokio::sync::watch;

use super::records::{self, Clock};
use super::{Durable, Loaded, LoadedSession, Op, Store, StoreError, Watermark};
use crate::core::session::Phase;

/// Store format marker, checked at start.
const STORE_FORMAT: &[u8] = b"fleetmq-store-1";

/// Key of the commit counter inside the store, advanced by every batch.
const COMMIT_KEY: &str = "commit";

/// File next to the store holding the last commit counter known to be synced to disk. The
/// journal recovers a torn tail by truncating it, which is right after a crash but would also
/// silently drop synced data if the journal were damaged; comparing the recovered counter
/// with this file tells the two apart, so the broker refuses to start instead of starting
/// with less than it acknowledged.
const SYNCED_FILE: &str = "synced-commit";

fn read_synced(path: &Path) -> Result<u64, StoreError> {
    match std::fs::read(path.join(SYNCED_FILE)) {
        Ok(bytes) if bytes.len() == 16 => {
            let value = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
            let check = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default());
            // A torn or garbled write of this small file only costs the check, never data.
            Ok(if check == !value { value } else { 0 })
        }
        Ok(_) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(engine(path, "cannot read the synced-commit marker", e)),
    }
}

fn write_synced(path: &Path, value: u64) -> std::io::Result<()> {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&value.to_be_bytes());
    bytes[8..].copy_from_slice(&(!value).to_be_bytes());
    std::fs::write(path.join(SYNCED_FILE), bytes)
}

#[derive(Clone)]
struct Keyspaces {
    meta: Keyspace,
    retained: Keyspace,
    sessions: Keyspace,
    queue: Keyspace,
    /// Per session incarnation: every queue entry below this sequence number is acknowledged.
    floors: Keyspace,
    inbound: Keyspace,
    delayed: Keyspace,
}

/// Queue floors by session incarnation, shared by the writer and the compaction filter.
type Floors = Arc<RwLock<FxHashMap<u64, u64>>>;

/// Drops queue entries below their session's floor while fjall compacts, so an acknowledged
/// message costs no deletion of its own. Dropping without a tombstone may let an older
/// version of the same key reappear from a lower level; that version is below the floor too,
/// so recovery skips it and a later compaction drops it.
struct FloorFilterFactory(Floors);

impl Factory for FloorFilterFactory {
    fn name(&self) -> &str {
        "fleetmq-queue-floor"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(FloorFilter { floors: self.0.clone(), last: None })
    }
}

struct FloorFilter {
    floors: Floors,
    /// Keys arrive sorted, so the session of the previous key is usually the next one's too.
    last: Option<(u64, u64)>,
}

impl CompactionFilter for FloorFilter {
    fn filter_item(
        &mut self,
        item: ItemAccessor<'_>,
        _: &Context,
    ) -> fjall::compaction::filter::CompactionFilterResult {
        let Ok((store_id, seq)) = records::split_key16(item.key()) else { return Ok(Verdict::Keep) };
        let floor = match self.last {
            Some((id, floor)) if id == store_id => floor,
            _ => {
                let floor = self
                    .floors
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&store_id)
                    .copied()
                    .unwrap_or(0);
                self.last = Some((store_id, floor));
                floor
            }
        };
        Ok(if seq < floor { Verdict::Destroy } else { Verdict::Keep })
    }
}

/// The fjall-backed store.
pub struct DiskStore {
    path: PathBuf,
    db: Database,
    ks: Keyspaces,
    /// The channel to the writer and the last ticket issued; one lock so tickets follow the
    /// channel order.
    tx: Mutex<(Option<mpsc::Sender<Op>>, u64)>,
    progress: watch::Receiver<Watermark>,
    failed: Arc<AtomicBool>,
    floors: Floors,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn engine(path: &Path, what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("{what} ({}): {err}", path.display()))
}

impl DiskStore {
    /// Opens (or creates) the store in `storage.data_dir` and starts the writer thread. A
    /// store that cannot be opened or recovered is an error naming the path; the broker never
    /// silently starts empty over existing data.
    pub fn open(storage: &Storage) -> Result<Self, StoreError> {
        let path = storage.data_dir.join("store");
        std::fs::create_dir_all(&path).map_err(|e| engine(&path, "cannot create the store directory", e))?;
        let floors = Floors::default();
        let filter: Arc<dyn Factory> = Arc::new(FloorFilterFactory(floors.clone()));
        let db = Database::builder(&path)
            // Acknowledgements depend on our own syncs, not fjall's per-write default.
            .manual_journal_persist(true)
            .worker_threads(1)
            .with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                (keyspace == "queue").then(|| filter.clone())
            }))
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StoreError::Engine(format!(
                    "the store at {} is in use by another broker process (storage.data_dir must not be shared)",
                    path.display()
                )),
                other => engine(&path, "cannot open or recover the store", other),
            })?;
        // The broker never reads single keys back (memory is authoritative; the store is
        // scanned at start and by prefix when a session ends), so building bloom filters at
        // every flush and compaction would be pure cost.
        let options = || KeyspaceCreateOptions::default().filter_policy(FilterPolicy::disabled());
        let open = |name: &str| db.keyspace(name, options).map_err(|e| engine(&path, name, e));
        let ks = Keyspaces {
            meta: open("meta")?,
            retained: open("retained")?,
            sessions: open("sessions")?,
            queue: open("queue")?,
            floors: open("floors")?,
            inbound: open("inbound")?,
            delayed: open("delayed")?,
        };
        match ks.meta.get("format").map_err(|e| engine(&path, "cannot read the store format", e))? {
            Some(format) if &*format != STORE_FORMAT => {
                return Err(StoreError::Engine(format!(
                    "{} holds an unknown store format {:?}; refusing to start over it",
                    path.display(),
                    String::from_utf8_lossy(&format)
                )));
            }
            Some(_) => {}
            None => {
                ks.meta
                    .insert("format", STORE_FORMAT)
                    .map_err(|e| engine(&path, "cannot initialise the store", e))?;
                db.persist(PersistMode::SyncAll)
                    .map_err(|e| engine(&path, "cannot initialise the store", e))?;
            }
        }
        let recovered =
            match ks.meta.get(COMMIT_KEY).map_err(|e| engine(&path, "cannot read the commit counter", e))? {
                Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default()),
                None => 0,
            };
        let synced = read_synced(&path)?;
        if recovered < synced {
            return Err(StoreError::Engine(format!(
                "the store journal in {} lost data that was synced (it recovers to commit {recovered}, \
                 commit {synced} was on disk): the journal file (*.jnl) is damaged or truncated. \
                 Refusing to start with less than was acknowledged; restore the data dir from a \
                 backup, or move it away to start empty",
                path.display()
            )));
        }
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let (progress_tx, progress) = watch::channel(Watermark::default());
        let writer = Writer {
            db: db.clone(),
            ks: ks.clone(),
            path: path.clone(),
            fsync: storage.fsync,
            interval: storage.fsync_interval,
            failed: failed.clone(),
            commit: recovered,
            progress: progress_tx,
            floors: floors.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fleetmq-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| engine(&path, "cannot start the store writer", e))?;
        Ok(DiskStore {
            path,
            db,
            ks,
            tx: Mutex::new((Some(tx), 0)),
            progress,
            failed,
            floors,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the writer after it has applied and synced everything submitted.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).0.take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl Store for DiskStore {
    fn kind(&self) -> &'static str {
        "disk"
    }

    fn is_persistent(&self) -> bool {
        true
    }

    fn submit(&self, op: Op) -> u64 {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let sent = tx.0.as_ref().is_some_and(|sender| sender.send(op).is_ok());
        if sent {
            tx.1 += 1;
        } else if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!("store writer is gone; changes are no longer persisted");
        }
        // An unsent change gets a ticket that can never become durable.
        if sent { tx.1 } else { u64::MAX }
    }

    fn durable(&self, ticket: u64) -> Durable {
        Durable::pending(ticket, self.progress.clone())
    }

    fn flush(&self) -> Durable {
        let ticket = self.tx.lock().unwrap_or_else(|p| p.into_inner()).1;
        self.durable(ticket)
    }

    fn watermark(&self) -> Option<watch::Receiver<Watermark>> {
        Some(self.progress.clone())
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let clock = Clock::now();
        let now = Instant::now();
        let mut loaded = Loaded::default();
        let scan_err = |what: &str, e: fjall::Error| engine(&self.path, &format!("cannot read {what}"), e);

        for item in self.ks.retained.iter() {
            let (key, value) = item.into_inner().map_err(|e| scan_err("retained messages", e))?;
            let message =
                records::decode_message(&value, clock).map_err(|r| records::corrupt("retained", &key, r))?;
            if !message.is_expired(now) {
                loaded.retained.push(message);
            }
        }
        let mut sessions: HashMap<u64, LoadedSession> = HashMap::new();
        for item in self.ks.sessions.iter() {
            let (key, value) = item.into_inner().map_err(|e| scan_err("sessions", e))?;
            let client_id = String::from_utf8_lossy(&key).into_owned();
            let record = records::decode_session(&client_id, &value, clock)
                .map_err(|r| records::corrupt("session", &key, r))?;
            sessions.insert(
                record.store_id,
                LoadedSession { record, deliveries: Vec::new(), inbound: Vec::new(), floor: 0 },
            );
        }
        let mut floor_orphans = Vec::new();
        {
            let mut floors = self.floors.write().unwrap_or_else(|p| p.into_inner());
            for item in self.ks.floors.iter() {
                let (key, value) = item.into_inner().map_err(|e| scan_err("queue floors", e))?;
                let (store_id, floor) = records::split_floor(&key, &value)
                    .map_err(|r| records::corrupt("queue floor", &key, r))?;
                match sessions.get_mut(&store_id) {
                    Some(session) => {
                        session.floor = floor;
                        floors.insert(store_id, floor);
                    }
                    None => floor_orphans.push(key.to_vec()),
                }
            }
        }
        let mut orphans = Vec::new();
        for item in self.ks.queue.iter() {
            let (key, value) = item.into_inner().map_err(|e| scan_err("queued messages", e))?;
            let (store_id, seq) =
                records::split_key16(&key).map_err(|r| records::corrupt("queue", &key, r))?;
            let Some(session) = sessions.get_mut(&store_id) else {
                // The session ended but its queue deletion did not make it before a crash.
                orphans.push(key.to_vec());
                continue;
            };
            if seq < session.floor {
                // Acknowledged; compaction drops it.
                continue;
            }
            let (delivery, released) =
                records::decode_delivery(&value, clock).map_err(|r| records::corrupt("queue", &key, r))?;
            if !released && delivery.message.is_expired(now) {
                orphans.push(key.to_vec());
                continue;
            }
            session.deliveries.push((seq, delivery, released.then_some(Phase::AwaitPubcomp)));
        }
        let mut inbound_orphans = Vec::new();
        for item in self.ks.inbound.iter() {
            let key = item.key().map_err(|e| scan_err("inbound packet ids", e))?;
            let (store_id, packet_id) =
                records::split_inbound_key(&key).map_err(|r| records::corrupt("inbound", &key, r))?;
            match sessions.get_mut(&store_id) {
                Some(session) => session.inbound.push(packet_id),
                None => inbound_orphans.push(key.to_vec()),
            }
        }
        for item in self.ks.delayed.iter() {
            let (key, value) = item.into_inner().map_err(|e| scan_err("delayed messages", e))?;
            let (due_ms, seq) =
                records::split_key16(&key).map_err(|r| records::corrupt("delayed", &key, r))?;
            let message =
                records::decode_message(&value, clock).map_err(|r| records::corrupt("delayed", &key, r))?;
            loaded.delayed.push((
                std::time::UNIX_EPOCH + Duration::from_millis(due_ms),
                (due_ms, seq),
                message,
            ));
        }
        if !orphans.is_empty() || !inbound_orphans.is_empty() || !floor_orphans.is_empty() {
            let mut batch = self.db.batch();
            for key in &orphans {
                batch.remove(&self.ks.queue, key.clone());
            }
            for key in &floor_orphans {
                batch.remove(&self.ks.floors, key.clone());
            }
            for key in &inbound_orphans {
                batch.remove(&self.ks.inbound, key.clone());
            }
            batch.commit().map_err(|e| engine(&self.path, "cannot clean up the store", e))?;
            tracing::info!(
                entries = orphans.len() + inbound_orphans.len() + floor_orphans.len(),
                "removed leftover and expired queue entries"
            );
        }
        loaded.sessions = sessions.into_values().collect();
        loaded.sessions.sort_by_key(|s| s.record.store_id);
        Ok(loaded)
    }

    fn disk_size(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

/// The writer thread's state.
struct Writer {
    db: Database,
    ks: Keyspaces,
    path: PathBuf,
    fsync: Fsync,
    interval: Duration,
    failed: Arc<AtomicBool>,
    /// Batches committed so far (stored with every batch).
    commit: u64,
    /// Published after each batch: how far acknowledgements may go.
    progress: watch::Sender<Watermark>,
    /// Committed queue floors, for the compaction filter.
    floors: Floors,
}

/// Upper bound on changes applied in one batch, so one huge burst cannot delay every
/// acknowledgement behind it.
const MAX_BATCH: usize = 32_768;

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let clock_refresh = Duration::from_millis(500);
        let mut clock = Clock::now();
        let mut clock_at = Instant::now();
        // Changes applied so far; equals the ticket of the last one (tickets count submissions).
        let mut applied = 0u64;
        let mut unsynced = false;
        let mut last_sync = Instant::now();
        loop {
            let first = match self.fsync {
                Fsync::Always => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                Fsync::Interval => match rx.recv_timeout(self.interval) {
                    Ok(op) => op,
                    Err(RecvTimeoutError::Timeout) => {
                        if unsynced {
                            let _ = self.sync_or_fail();
                            unsynced = false;
                            last_sync = Instant::now();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            // Let submitters that share this core add to the batch before it is taken: on a
            // busy core this turns many tiny commits into few large ones; on an idle machine
            // it returns at once.
            std::thread::yield_now();
            let span = tracing::info_span!(
                target: crate::telemetry::SPANS,
                "store.commit",
                store.changes = tracing::field::Empty,
                store.synced = tracing::field::Empty,
            );
            let _entered = span.enter();
            if clock_at.elapsed() > clock_refresh {
                clock = Clock::now();
                clock_at = Instant::now();
            }
            let mut batch = self.db.batch();
            let mut needs_sync = false;
            let mut next = Some(first);
            let mut count = 0;
            // Floors of this batch, one write per session however many acknowledgements.
            let mut floors: FxHashMap<u64, u64> = FxHashMap::default();
            while let Some(op) = next.take() {
                applied += 1;
                count += 1;
                needs_sync |= op.needs_sync();
                match op {
                    Op::QueueFloor { store_id, floor } => {
                        let slot = floors.entry(store_id).or_default();
                        *slot = (*slot).max(floor);
                    }
                    Op::SessionDelete { client_id, store_id } => {
                        // Range deletes read the keyspace: earlier writes must be applied first.
                        self.put_floors(&mut batch, &mut floors);
                        self.commit(std::mem::replace(&mut batch, self.db.batch()));
                        self.delete_session(&client_id, store_id);
                    }
                    op => self.apply(&mut batch, op, clock),
                }
                if count < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.put_floors(&mut batch, &mut floors);
            self.commit(batch);
            unsynced = true;
            if self.fsync == Fsync::Always && needs_sync {
                let _ = self.sync_or_fail();
                unsynced = false;
            } else if self.fsync == Fsync::Interval && last_sync.elapsed() >= self.interval {
                let _ = self.sync_or_fail();
                unsynced = false;
                last_sync = Instant::now();
            }
            span.record("store.changes", count).record("store.synced", !unsynced);
            // With `fsync: interval` acknowledgements only wait for the journal write; the
            // documented loss window is the sync interval (power loss or OS crash only).
            let failed = self.failed.load(Ordering::Relaxed);
            self.progress.send_replace(Watermark { durable: if failed { 0 } else { applied }, failed });
            if failed {
                // Keep draining so submitters never block; nothing more is written.
                while rx.recv().is_ok() {}
                return;
            }
        }
        // Channel closed (shutdown): make everything durable before the process exits.
        if unsynced {
            let _ = self.sync_or_fail();
        }
        self.progress
            .send_replace(Watermark { durable: applied, failed: self.failed.load(Ordering::Relaxed) });
    }

    fn sync_or_fail(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncData).map_err(|e| self.fail("cannot sync the store journal", e))?;
        // Not synced itself: after an OS crash it may lag behind (harmless), never lead.
        write_synced(&self.path, self.commit)
            .map_err(|e| self.fail("cannot write the synced-commit marker", e))
    }

    fn fail(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(path = %self.path.display(), "{what}: {err}; acknowledgements that need the store will fail");
        }
        engine(&self.path, what, err)
    }

    fn commit(&mut self, mut batch: fjall::OwnedWriteBatch) {
        if batch.is_empty() {
            return;
        }
        self.commit += 1;
        batch.insert(&self.ks.meta, COMMIT_KEY, self.commit.to_be_bytes().to_vec());
        if let Err(err) = batch.commit() {
            self.fail("cannot write to the store", err);
        }
    }

    /// Adds the batch's queue floors to `batch` and publishes them to the compaction filter
    /// (safe before the commit: entries below a floor are acknowledged whether or not the
    /// floor itself survives a crash).
    fn put_floors(&self, batch: &mut fjall::OwnedWriteBatch, floors: &mut FxHashMap<u64, u64>) {
        if floors.is_empty() {
            return;
        }
        let mut shared = self.floors.write().unwrap_or_else(|p| p.into_inner());
        for (store_id, floor) in floors.drain() {
            batch.insert(&self.ks.floors, store_id.to_be_bytes().to_vec(), floor.to_be_bytes().to_vec());
            shared.insert(store_id, floor);
        }
    }

    fn apply(&self, batch: &mut fjall::OwnedWriteBatch, op: Op, clock: Clock) {
        let ks = &self.ks;
        match op {
            Op::RetainedSet(message) => {
                batch.insert(
                    &ks.retained,
                    message.topic.as_bytes().to_vec(),
                    records::encode_message(&message, clock),
                );
            }
            Op::RetainedClear(topic) => batch.remove(&ks.retained, topic.as_bytes().to_vec()),
            Op::SessionPut(record) => {
                batch.insert(
                    &ks.sessions,
                    record.client_id.as_bytes().to_vec(),
                    records::encode_session(&record, clock),
                );
            }
            Op::SessionDelete { .. } => unreachable!("handled by the caller"),
            Op::QueuePut { store_id, seq, delivery, phase } => batch.insert(
                &ks.queue,
                records::queue_key(store_id, seq).to_vec(),
                records::encode_delivery(&delivery, phase == Some(Phase::AwaitPubcomp), clock),
            ),
            Op::QueueDelete { store_id, seq } => {
                batch.remove(&ks.queue, records::queue_key(store_id, seq).to_vec())
            }
            Op::QueueFloor { store_id, floor } => {
                batch.insert(&ks.floors, store_id.to_be_bytes().to_vec(), floor.to_be_bytes().to_vec());
            }
            Op::Inbound { store_id, packet_id, present: true } => {
                batch.insert(&ks.inbound, records::inbound_key(store_id, packet_id).to_vec(), Vec::new());
            }
            Op::Inbound { store_id, packet_id, present: false } => {
                batch.remove(&ks.inbound, records::inbound_key(store_id, packet_id).to_vec());
            }
            Op::DelayedPut(key, _, message) => {
                batch.insert(
                    &ks.delayed,
                    records::delayed_key(key).to_vec(),
                    records::encode_message(&message, clock),
                );
            }
            Op::DelayedDelete(key) => batch.remove(&ks.delayed, records::delayed_key(key).to_vec()),
        }
    }

    fn delete_session(&mut self, client_id: &str, store_id: u64) {
        let mut batch = self.db.batch();
        let prefix = store_id.to_be_bytes();
        for (ks, what) in [(&self.ks.queue, "queue"), (&self.ks.inbound, "inbound")] {
            for item in ks.prefix(prefix) {
                match item.key() {
                    Ok(key) => batch.remove(ks, key),
                    Err(err) => {
                        self.fail(&format!("cannot scan the {what} of a session"), err);
                        return;
                    }
                }
            }
        }
        batch.remove(&self.ks.floors, prefix.to_vec());
        self.floors.write().unwrap_or_else(|p| p.into_inner()).remove(&store_id);
        // The metadata key is the client id; a newer incarnation may already own it.
        match self.ks.sessions.get(client_id.as_bytes()) {
            Ok(Some(value)) => {
                if records::decode_session(client_id, &value, Clock::now())
                    .is_ok_and(|r| r.store_id == store_id)
                {
                    batch.remove(&self.ks.sessions, client_id.as_bytes().to_vec());
                }
            }
            Ok(None) => {}
            Err(err) => {
                self.fail("cannot read a session", err);
                return;
            }
        }
        self.commit(batch);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::core::session::Expiry;
    use crate::core::types::{Delivery, Message, QoS};
    use crate::store::SessionRecord;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos =
                SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
            let dir =
                std::env::temp_dir().join(format!("fleetmq-store-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn storage(&self, fsync: Fsync) -> Storage {
            Storage { data_dir: self.0.clone(), fsync, ..Storage::default() }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(client: &str, store_id: u64) -> SessionRecord {
        SessionRecord {
            store_id,
            client_id: client.into(),
            expiry: Expiry::Never,
            subscriptions: Vec::new(),
            will: None,
            disconnected_at: None,
        }
    }

    fn delivery(payload: &str) -> Delivery {
        Delivery::new(
            Arc::new(Message::new("t", payload.to_string(), QoS::AtLeastOnce, false)),
            QoS::AtLeastOnce,
            false,
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn writes_survive_reopen_and_deletes_respect_incarnations() {
        for fsync in [Fsync::Always, Fsync::Interval] {
            let dir = TempDir::new("reopen");
            {
                let store = DiskStore::open(&dir.storage(fsync)).unwrap();
                store.submit(Op::RetainedSet(Arc::new(Message::new("r/1", "kept", QoS::AtLeastOnce, true))));
                store.submit(Op::RetainedSet(Arc::new(Message::new("r/2", "gone", QoS::AtLeastOnce, true))));
                store.submit(Op::RetainedClear("r/2".into()));
                store.submit(Op::SessionPut(Box::new(record("old", 1))));
                store.submit(Op::QueuePut { store_id: 1, seq: 0, delivery: delivery("old"), phase: None });
                // Clean start: the new incarnation is written first, then the old one deleted.
                store.submit(Op::SessionPut(Box::new(record("old", 2))));
                store.submit(Op::SessionDelete { client_id: "old".into(), store_id: 1 });
                store.submit(Op::QueuePut { store_id: 2, seq: 5, delivery: delivery("a"), phase: None });
                store.submit(Op::QueuePut { store_id: 2, seq: 6, delivery: delivery("b"), phase: None });
                store.submit(Op::QueuePut {
                    store_id: 2,
                    seq: 6,
                    delivery: delivery("b"),
                    phase: Some(Phase::AwaitPubcomp),
                });
                store.submit(Op::QueueDelete { store_id: 2, seq: 5 });
                store.submit(Op::Inbound { store_id: 2, packet_id: 9, present: true });
                store.submit(Op::Inbound { store_id: 2, packet_id: 10, present: true });
                store.submit(Op::Inbound { store_id: 2, packet_id: 10, present: false });
                block_on(store.flush().wait()).unwrap();
            }
            let store = DiskStore::open(&dir.storage(fsync)).unwrap();
            let loaded = store.load().unwrap();
            assert_eq!(loaded.retained.len(), 1);
            assert_eq!(&loaded.retained[0].payload[..], b"kept");
            assert_eq!(loaded.sessions.len(), 1, "only the new incarnation is left");
            let s = &loaded.sessions[0];
            assert_eq!(s.record.store_id, 2);
            assert_eq!(s.deliveries.len(), 1);
            assert_eq!((s.deliveries[0].0, s.deliveries[0].2), (6, Some(Phase::AwaitPubcomp)));
            assert_eq!(s.inbound, vec![9]);
        }
    }

    #[test]
    fn a_second_broker_on_the_same_directory_is_refused() {
        let dir = TempDir::new("lock");
        let _first = DiskStore::open(&dir.storage(Fsync::Always)).unwrap();
        let err = DiskStore::open(&dir.storage(Fsync::Always)).unwrap_err().to_string();
        assert!(err.contains("in use by another broker"), "{err}");
    }

    #[test]
    fn orphaned_queue_entries_are_removed_at_load() {
        let dir = TempDir::new("orphans");
        {
            let store = DiskStore::open(&dir.storage(Fsync::Always)).unwrap();
            store.submit(Op::QueuePut { store_id: 77, seq: 1, delivery: delivery("x"), phase: None });
            block_on(store.flush().wait()).unwrap();
        }
        let store = DiskStore::open(&dir.storage(Fsync::Always)).unwrap();
        assert!(store.load().unwrap().sessions.is_empty());
        assert_eq!(store.ks.queue.iter().count(), 0, "the orphan was deleted");
    }

    #[test]
    fn queue_floors_hide_acknowledged_entries_and_compaction_drops_them() {
        let dir = TempDir::new("floors");
        {
            let store = DiskStore::open(&dir.storage(Fsync::Always)).unwrap();
            store.submit(Op::SessionPut(Box::new(record("c", 3))));
            store.submit(Op::SessionPut(Box::new(record("gone", 4))));
            for seq in 0..10 {
                store.submit(Op::QueuePut { store_id: 3, seq, delivery: delivery("m"), phase: None });
            }
            store.submit(Op::QueueFloor { store_id: 3, floor: 4 });
            store.submit(Op::QueueFloor { store_id: 3, floor: 6 });
            store.submit(Op::QueueDelete { store_id: 3, seq: 8 });
            store.submit(Op::QueueFloor { store_id: 4, floor: 2 });
            store.submit(Op::SessionDelete { client_id: "gone".into(), store_id: 4 });
            block_on(store.flush().wait()).unwrap();
        }
        let store = DiskStore::open(&dir.storage(Fsync::Always)).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.sessions.len(), 1);
        let s = &loaded.sessions[0];
        assert_eq!(s.floor, 6);
        let seqs: Vec<u64> = s.deliveries.iter().map(|d| d.0).collect();
        assert_eq!(seqs, [6, 7, 9], "below the floor and deleted entries are gone");
        assert_eq!(store.ks.floors.iter().count(), 1, "an ended session's floor is deleted");
        assert_eq!(store.ks.queue.iter().count(), 9, "entries below the floor wait for compaction");
        store.ks.queue.rotate_memtable_and_wait().unwrap();
        store.ks.queue.major_compact().unwrap();
        assert_eq!(store.ks.queue.iter().count(), 3, "compaction dropped the acknowledged entries");
    }
}
