//! [`TokenBucket`]: the agent's bandwidth cap on wire bytes, driven by the session's `now`.
//!
//! A rate of `kbps` kilobits per second is exactly `kbps` bits per millisecond, so the bucket
//! counts bits and refills `kbps` bits per elapsed millisecond: integer arithmetic, no drift,
//! deterministic for a given sequence of `now`s.
//!
//! Every frame the agent sends is charged (its protobuf encoding; transport framing such as gRPC,
//! HTTP/2 and TLS overhead is not counted), but only batches are ever *held*: Hello, Ping and the
//! like always go. A batch may go when the bucket is not in debt (level >= 0); it is then charged
//! whole, which may take the level below zero, and the next batch waits until the refill has
//! paid the debt. Since a batch's size is only known once it is built (and compressed), charging
//! after the fact keeps the long-run rate exact without predicting sizes.
//!
//! The bucket holds at most `burst` bits: the larger of 100 ms at the rate ([`BURST_MS`]) and one
//! full batch (`max_batch_bytes`). So after an idle period at most `burst` plus one batch go out
//! back to back, and from then on the wire rate is the cap. The bucket starts full.

/// The burst allowance in milliseconds of the rate (unless one batch is larger).
pub const BURST_MS: u64 = 100;

/// A token bucket over bits, refilled at `kbps` bits per millisecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    /// Bits per millisecond (= kbit/s); never 0.
    rate: u64,
    /// The most bits the bucket holds.
    capacity: i128,
    /// Bits available; negative: a debt the refill must pay before the next batch.
    level: i128,
    /// The time `level` is valid at.
    at: u64,
}

impl TokenBucket {
    /// A full bucket for `kbps` kilobits per second whose burst covers at least one batch of
    /// `max_batch_bytes`; `None` for `kbps == 0` (no cap).
    pub fn new(kbps: u64, max_batch_bytes: usize, now: u64) -> Option<Self> {
        if kbps == 0 {
            return None;
        }
        let batch_bits = i128::try_from(max_batch_bytes)
            .unwrap_or(i128::MAX)
            .saturating_mul(8);
        let capacity = i128::from(kbps)
            .saturating_mul(i128::from(BURST_MS))
            .max(batch_bits);
        Some(Self {
            rate: kbps,
            capacity,
            level: capacity,
            at: now,
        })
    }

    /// The rate in kbit/s (bits per ms).
    pub fn kbps(&self) -> u64 {
        self.rate
    }

    /// The burst: the most bits the bucket holds.
    pub fn capacity_bits(&self) -> i128 {
        self.capacity
    }

    /// The bits available at the last refill (negative: in debt).
    pub fn level_bits(&self) -> i128 {
        self.level
    }

    /// Adds what the time since the last refill earned (up to the capacity). Time never runs
    /// backwards here: an earlier `now` changes nothing.
    pub fn refill(&mut self, now: u64) {
        if now <= self.at {
            return;
        }
        let earned = i128::from(now - self.at).saturating_mul(i128::from(self.rate));
        self.level = self.level.saturating_add(earned).min(self.capacity);
        self.at = now;
    }

    /// Whether a batch may go now (after [`TokenBucket::refill`]).
    pub fn ready(&self) -> bool {
        self.level >= 0
    }

    /// Charges a frame of `bytes` (may go into debt).
    pub fn charge(&mut self, bytes: usize) {
        let bits = i128::try_from(bytes).unwrap_or(i128::MAX).saturating_mul(8);
        self.level = self.level.saturating_sub(bits);
    }

    /// When the debt is paid and the next batch may go: `None` when not in debt.
    pub fn ready_at(&self) -> Option<u64> {
        if self.level >= 0 {
            return None;
        }
        let debt = self.level.unsigned_abs();
        let rate = u128::from(self.rate);
        let ms = debt.div_ceil(rate);
        Some(
            self.at
                .saturating_add(u64::try_from(ms).unwrap_or(u64::MAX)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cap_without_a_rate() {
        assert_eq!(TokenBucket::new(0, 1000, 0), None);
    }

    #[test]
    fn burst_is_100ms_or_one_batch() {
        // 1000 kbit/s: 100 ms = 100_000 bits > one 1000-byte batch.
        let b = TokenBucket::new(1000, 1000, 0).unwrap();
        assert_eq!(b.capacity_bits(), 100_000);
        // 8 kbit/s: 100 ms = 800 bits < one 1000-byte batch (8000 bits).
        let b = TokenBucket::new(8, 1000, 0).unwrap();
        assert_eq!(b.capacity_bits(), 8000);
    }

    #[test]
    fn debt_is_paid_at_the_rate() {
        let mut b = TokenBucket::new(8, 1000, 10).unwrap();
        assert!(b.ready());
        b.charge(1000);
        assert_eq!(b.level_bits(), 0);
        assert!(b.ready());
        b.charge(1001); // 8008 bits of debt at 8 bits/ms: 1001 ms
        assert!(!b.ready());
        assert_eq!(b.ready_at(), Some(10 + 1001));
        b.refill(1010);
        assert!(!b.ready());
        assert_eq!(b.ready_at(), Some(1011));
        b.refill(1011);
        assert!(b.ready());
        assert_eq!(b.ready_at(), None);
        // Idle time fills the bucket up to its capacity only.
        b.refill(1_000_000);
        assert_eq!(b.level_bits(), b.capacity_bits());
        // Time running backwards changes nothing.
        b.charge(500);
        b.refill(5);
        assert_eq!(b.level_bits(), 8000 - 4000);
    }

    #[test]
    fn rounding_up() {
        let mut b = TokenBucket::new(3, 1, 0).unwrap(); // capacity 300 bits
        b.charge(38); // 304 bits: debt of 4 bits at 3 bits/ms = 2 ms
        assert_eq!(b.ready_at(), Some(2));
        let mut b = TokenBucket::new(u64::MAX, usize::MAX, 0).unwrap();
        b.charge(usize::MAX);
        b.refill(u64::MAX);
        assert!(b.ready());
    }
}
