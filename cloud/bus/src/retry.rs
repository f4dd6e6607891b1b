//! Retries, sans IO: the in-flight window of one target's delivery queue.
//!
//! [`Tracker`] holds the deliveries taken from a target's queue stream (by stream version) and
//! decides, from the outcome of each attempt and the time it is given, whether the delivery is
//! done, is retried later (exponential backoff with jitter, as EventBridge does), or is
//! exhausted and goes to the dead-letter stream — by [`RetryPolicy`]'s two limits, attempts and
//! event age. It also says how far the queue's checkpoint may move: to the end of the
//! contiguous prefix of finished deliveries, so a restart redelivers at most the window.
//! No clock, no sockets: times are Unix milliseconds passed in; the tokio shell in
//! `bus::deliver` does the I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::RetryPolicy;

/// Exponential backoff: `base · 2^(attempt-1)`, capped, with "equal jitter" (half fixed, half
/// random), so retries of many deliveries spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// 1 s doubling up to 3 minutes: 185 retries then last about nine hours, and the event-age
    /// limit (24 h by default) ends the rest.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(180),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1-based), given a random 64-bit value.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let exp = retry.saturating_sub(1).min(32);
        let full = self.base.saturating_mul(1u32 << exp.min(31)).min(self.cap);
        let half = full / 2;
        let span = full.saturating_sub(half).as_millis() as u64;
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        half + Duration::from_millis(jitter)
    }
}

/// Why a delivery went to the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// `MaximumRetryAttempts` retries failed.
    MaximumRetryAttempts,
    /// The event became older than `MaximumEventAgeInSeconds`.
    MaximumEventAgeInSeconds,
    /// The target refused it for good (a 4xx, a missing stream ...).
    PermanentError,
}

impl Exhausted {
    pub fn as_str(&self) -> &'static str {
        match self {
            Exhausted::MaximumRetryAttempts => "MaximumRetryAttempts",
            Exhausted::MaximumEventAgeInSeconds => "MaximumEventAgeInSeconds",
            Exhausted::PermanentError => "PermanentError",
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again at this time (Unix ms).
    RetryAt(i64),
    DeadLetter(Exhausted),
}

#[derive(Debug, Clone)]
struct Slot<T> {
    item: T,
    /// When the event entered the bus (age is counted from it).
    ingested_ms: i64,
    /// Attempts made so far.
    attempts: u32,
    /// When the next attempt is due; `None` while an attempt is running or once finished.
    due_ms: Option<i64>,
    finished: bool,
}

/// The in-flight window of one target, keyed by queue-stream version.
#[derive(Debug)]
pub struct Tracker<T> {
    policy: RetryPolicy,
    backoff: Backoff,
    window: usize,
    slots: BTreeMap<u64, Slot<T>>,
    /// Every version below this one is finished (what the checkpoint may say).
    floor: u64,
    rng: u64,
}

impl<T: Clone> Tracker<T> {
    /// A tracker whose queue starts at version `floor` (the first version not yet finished).
    pub fn new(
        policy: RetryPolicy,
        backoff: Backoff,
        window: usize,
        floor: u64,
        seed: u64,
    ) -> Self {
        Tracker {
            policy,
            backoff,
            window: window.max(1),
            slots: BTreeMap::new(),
            floor,
            rng: seed | 1,
        }
    }

    /// How many more deliveries the window takes now.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.slots.len())
    }

    /// The next queue version to read.
    pub fn next_version(&self) -> u64 {
        self.slots.keys().next_back().map_or(self.floor, |v| v + 1)
    }

    /// Adds the delivery at queue version `version` (due at once).
    pub fn offer(&mut self, version: u64, item: T, ingested_ms: i64, now_ms: i64) {
        self.slots.insert(
            version,
            Slot {
                item,
                ingested_ms,
                attempts: 0,
                due_ms: Some(now_ms),
                finished: false,
            },
        );
    }

    /// Takes up to `max` deliveries due at `now_ms` (oldest first), marking them running, with
    /// their attempt number (1 = first).
    pub fn take_due(&mut self, now_ms: i64, max: usize) -> Vec<(u64, T, u32)> {
        let mut out = Vec::new();
        for (v, s) in self.slots.iter_mut() {
            if out.len() >= max {
                break;
            }
            if s.due_ms.is_some_and(|d| d <= now_ms) {
                s.due_ms = None;
                s.attempts += 1;
                out.push((*v, s.item.clone(), s.attempts));
            }
        }
        out
    }

    /// Records an attempt's outcome: `Ok(())`, or an error that is retryable or not.
    pub fn complete(&mut self, version: u64, ok: bool, retryable: bool, now_ms: i64) -> Verdict {
        let policy = self.policy;
        let Some(slot) = self.slots.get_mut(&version) else {
            return Verdict::Delivered;
        };
        let verdict = if ok {
            Verdict::Delivered
        } else if !retryable {
            Verdict::DeadLetter(Exhausted::PermanentError)
        } else if slot.attempts > policy.maximum_retry_attempts {
            Verdict::DeadLetter(Exhausted::MaximumRetryAttempts)
        } else {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let delay = self.backoff.delay(slot.attempts, self.rng).as_millis() as i64;
            let at = now_ms.saturating_add(delay);
            let deadline = slot
                .ingested_ms
                .saturating_add(i64::from(policy.maximum_event_age_in_seconds) * 1000);
            if at > deadline {
                Verdict::DeadLetter(Exhausted::MaximumEventAgeInSeconds)
            } else {
                Verdict::RetryAt(at)
            }
        };
        match verdict {
            Verdict::RetryAt(at) => slot.due_ms = Some(at),
            _ => slot.finished = true,
        }
        verdict
    }

    /// Drops the finished prefix and returns the new floor if it moved: every queue version
    /// below it is finished, so the checkpoint may record `floor - 1`.
    pub fn advance(&mut self) -> Option<u64> {
        let before = self.floor;
        while let Some((&v, s)) = self.slots.iter().next() {
            if !s.finished {
                break;
            }
            self.slots.remove(&v);
            self.floor = v + 1;
        }
        (self.floor != before).then_some(self.floor)
    }

    /// The earliest time a waiting delivery is due, if any is waiting.
    pub fn next_due(&self) -> Option<i64> {
        self.slots.values().filter_map(|s| s.due_ms).min()
    }

    /// Deliveries in the window (running, waiting or finished but not yet below the floor).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, age: u32) -> RetryPolicy {
        RetryPolicy {
            maximum_retry_attempts: attempts,
            maximum_event_age_in_seconds: age,
        }
    }

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1_000),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let b = backoff();
        for (retry, full) in [
            (1u32, 100u64),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for r in [0u64, 7, u64::MAX] {
                let d = b.delay(retry, r).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {retry}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn attempts_are_counted_and_exhaust_into_the_dead_letter_stream() {
        let mut t = Tracker::new(policy(2, 86_400), backoff(), 8, 0, 1);
        t.offer(0, "e", 0, 0);
        let mut now = 0;
        for attempt in 1..=3 {
            let got = t.take_due(now, 10);
            assert_eq!(got, vec![(0, "e", attempt)]);
            match t.complete(0, false, true, now) {
                Verdict::RetryAt(at) if attempt < 3 => {
                    assert!(at > now);
                    assert!(t.take_due(at - 1, 10).is_empty(), "not due before its time");
                    now = at;
                }
                Verdict::DeadLetter(Exhausted::MaximumRetryAttempts) if attempt == 3 => {}
                v => panic!("attempt {attempt}: {v:?}"),
            }
        }
        assert_eq!(t.advance(), Some(1));
        assert!(t.is_empty());
    }

    #[test]
    fn the_event_age_limit_ends_retries() {
        let mut t = Tracker::new(
            policy(185, 60),
            Backoff {
                base: Duration::from_secs(20),
                cap: Duration::from_secs(40),
            },
            8,
            0,
            3,
        );
        t.offer(0, "e", 0, 0);
        let mut now = 0;
        loop {
            assert_eq!(t.take_due(now, 1).len(), 1);
            match t.complete(0, false, true, now) {
                Verdict::RetryAt(at) => {
                    assert!(at <= 60_000);
                    now = at;
                }
                Verdict::DeadLetter(e) => {
                    assert_eq!(e, Exhausted::MaximumEventAgeInSeconds);
                    break;
                }
                Verdict::Delivered => panic!("failed attempts never deliver"),
            }
        }
    }

    #[test]
    fn a_permanent_error_is_not_retried() {
        let mut t = Tracker::new(policy(185, 86_400), backoff(), 8, 5, 1);
        t.offer(5, "e", 0, 0);
        assert_eq!(t.take_due(0, 1).len(), 1);
        assert_eq!(
            t.complete(5, false, false, 0),
            Verdict::DeadLetter(Exhausted::PermanentError)
        );
    }

    #[test]
    fn the_floor_moves_only_over_a_finished_prefix_and_a_waiting_retry_does_not_block_others() {
        let mut t = Tracker::new(policy(185, 86_400), backoff(), 3, 10, 1);
        for v in 10..13 {
            t.offer(v, v, 0, 0);
        }
        assert_eq!(t.room(), 0);
        assert_eq!(t.next_version(), 13);
        let due = t.take_due(0, 10);
        assert_eq!(due.len(), 3);
        assert!(matches!(
            t.complete(10, false, true, 0),
            Verdict::RetryAt(_)
        ));
        assert_eq!(t.complete(11, true, false, 0), Verdict::Delivered);
        assert_eq!(t.complete(12, true, false, 0), Verdict::Delivered);
        assert_eq!(t.advance(), None, "10 is still waiting");
        let at = t.next_due().unwrap();
        assert_eq!(t.take_due(at, 10), vec![(10, 10, 2)]);
        assert_eq!(t.complete(10, true, false, at), Verdict::Delivered);
        assert_eq!(t.advance(), Some(13));
        assert_eq!(t.room(), 3);
    }
}
