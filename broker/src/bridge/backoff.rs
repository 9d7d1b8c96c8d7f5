//! Reconnect delays: exponential with "equal jitter" (half fixed, half random), so many
//! edge brokers losing the same cloud endpoint do not reconnect in lockstep.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delay sequence for one bridge; [`Backoff::reset`] after a successful connect.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// From the configured bounds (validated: `0 < initial <= max`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), attempt: 0 }
    }

    /// Starts over from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, in `[ceiling/2, ceiling]` where the ceiling doubles from `initial` up
    /// to `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(random_fraction())
    }

    /// [`Backoff::next_delay`] with the random fraction (0..=1) given, for tests.
    pub fn next_with(&mut self, fraction: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(fraction.clamp(0.0, 1.0))
    }
}

/// A fraction in 0..=1 from the std hasher's per-process random keys and the clock; good
/// enough to spread reconnects without a random-number crate.
fn random_fraction() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let bits = RandomState::new().hash_one(nanos.as_nanos());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let highs: Vec<_> = (0..6).map(|_| b.next_with(1.0)).collect();
        let secs: Vec<_> = highs.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next_with(0.0), Duration::from_millis(500), "lowest is half the ceiling");
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(10), "{d:?}");
        }
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(b.next_with(0.7) <= Duration::from_secs(60));
        }
    }
}
