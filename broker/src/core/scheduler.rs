//! Timed work: delayed publishes, delayed wills and session expiry.
//!
//! One heap ordered by deadline, drained by a single task ([`Scheduler::run`]). Jobs that
//! refer to a session carry the connection generation they were scheduled for; if the
//! session has been resumed since, the job finds a newer generation and does nothing, so
//! nothing needs cancelling.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::session::Session;
use super::types::Message;

/// A unit of timed work.
#[derive(Debug)]
pub enum Job {
    /// Publish a `$delayed` message (with its store key when it is persisted).
    Publish(Message, Option<crate::store::DelayedKey>),
    /// Publish the will of a session whose connection ended with a Will Delay Interval.
    Will {
        /// The session holding the will.
        session: Arc<Session>,
        /// Generation of the connection that ended.
        generation: u64,
    },
    /// End a disconnected session whose Session Expiry Interval has passed.
    Expire {
        /// The session.
        session: Arc<Session>,
        /// Generation of the connection that ended.
        generation: u64,
    },
}

struct Timed {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    // Reversed: BinaryHeap is a max-heap and we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// The timer heap.
#[derive(Default)]
pub struct Scheduler {
    heap: Mutex<BinaryHeap<Timed>>,
    seq: AtomicU64,
    changed: Notify,
}

impl Scheduler {
    /// Schedules `job` at `at`.
    pub fn schedule(&self, at: Instant, job: Job) {
        let seq = self.seq.fetch_add(1, AtomicOrdering::Relaxed);
        let mut heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
        let earliest = heap.peek().is_none_or(|top| at < top.at);
        heap.push(Timed { at, seq, job });
        drop(heap);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Jobs waiting (delayed publishes count towards `$SYS` stored messages).
    pub fn len(&self) -> usize {
        self.heap.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every job due at `now`, earliest first.
    pub fn take_due(&self, now: Instant) -> Vec<Job> {
        let mut heap = self.heap.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        while heap.peek().is_some_and(|t| t.at <= now) {
            if let Some(t) = heap.pop() {
                due.push(t.job);
            }
        }
        due
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner()).peek().map(|t| t.at)
    }

    /// Runs forever, handing due jobs to `execute`.
    pub async fn run(&self, mut execute: impl FnMut(Job)) {
        loop {
            for job in self.take_due(Instant::now()) {
                execute(job);
            }
            let changed = self.changed.notified();
            match self.next_deadline() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::types::QoS;

    fn publish(topic: &str) -> Job {
        Job::Publish(Message::new(topic.to_string(), "", QoS::AtMostOnce, false), None)
    }

    fn topic(job: &Job) -> String {
        match job {
            Job::Publish(m, _) => m.topic.to_string(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn due_jobs_come_out_in_deadline_order() {
        let s = Scheduler::default();
        let now = Instant::now();
        s.schedule(now + Duration::from_secs(3), publish("c"));
        s.schedule(now + Duration::from_secs(1), publish("a"));
        s.schedule(now + Duration::from_secs(2), publish("b"));
        s.schedule(now + Duration::from_secs(1), publish("a2"));
        assert!(s.take_due(now).is_empty());
        let due: Vec<String> = s.take_due(now + Duration::from_secs(2)).iter().map(topic).collect();
        assert_eq!(due, ["a", "a2", "b"]);
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn run_fires_at_deadlines() {
        let s = Arc::new(Scheduler::default());
        let fired = Arc::new(Mutex::new(Vec::new()));
        let (s2, f2) = (s.clone(), fired.clone());
        tokio::spawn(async move { s2.run(|job| f2.lock().unwrap().push(topic(&job))).await });
        s.schedule(Instant::now() + Duration::from_millis(1000), publish("late"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // An earlier deadline must wake the sleeping task, not wait behind "late".
        s.schedule(Instant::now() + Duration::from_millis(50), publish("early"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(*fired.lock().unwrap(), vec!["early"]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(*fired.lock().unwrap(), vec!["early", "late"]);
    }
}
