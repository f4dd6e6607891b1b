//! Exponential backoff with full jitter (the "Full Jitter" variant of the AWS architecture blog).

use super::rng::SplitMix64;

/// Delays for successive retries: attempt `n` (from 0) waits a uniformly random time in
/// `0..=min(max_ms, min_ms * 2^n)`, but at least 1 ms. [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// `min_ms` is the ceiling of the first delay, `max_ms` the largest ceiling ever used.
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        let min_ms = min_ms.max(1);
        Self {
            min_ms,
            max_ms: max_ms.max(min_ms),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> u64 {
        let factor = 1u64.checked_shl(self.attempt.min(63)).unwrap_or(u64::MAX);
        self.min_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The next delay (jittered) and one more attempt counted.
    pub fn next_delay(&mut self, rng: &mut SplitMix64) -> u64 {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        rng.below_inclusive(ceiling).max(1)
    }

    /// The longest delay, jittered: for failures that retrying soon cannot fix.
    pub fn max_delay(&mut self, rng: &mut SplitMix64) -> u64 {
        self.attempt = 63;
        self.next_delay(rng)
    }

    /// Back to the first attempt (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were taken since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut rng = SplitMix64::new(1);
        let mut b = Backoff::new(100, 1_000);
        let ceilings: Vec<u64> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay(&mut rng);
                assert!((1..=c).contains(&d));
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        b.reset();
        assert_eq!(b.ceiling(), 100);
        for _ in 0..200 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), 1_000);
        assert!(b.max_delay(&mut rng) <= 1_000);
    }

    #[test]
    fn degenerate_parameters() {
        let mut rng = SplitMix64::new(1);
        let mut b = Backoff::new(0, 0);
        assert_eq!(b.next_delay(&mut rng), 1);
        let mut b = Backoff::new(u64::MAX, u64::MAX);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
    }
}
