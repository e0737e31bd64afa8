//! The hybrid logical clock (HLC) that orders messages for display.
//!
//! A clock value packs wall-clock milliseconds in the high bits and a counter in the low
//! [`COUNTER_BITS`] bits. A device stamps a new message with a value greater than every clock it
//! has seen in the chat and, when its own wall clock is ahead of those, with its wall clock. So:
//! - causality holds whatever the clocks say: a message sorts after everything its author had
//!   seen (a reply after the message it answers);
//! - when clocks are roughly right, the order matches real time;
//! - a device whose clock is far ahead drags later clocks forward, but never breaks the order.
//!   The time shown to people is the separate `ts` field, the author's own wall clock.

use serde::{Deserialize, Serialize};

/// Number of low bits used by the logical counter.
pub const COUNTER_BITS: u32 = 16;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
/// Largest wall-clock value (ms) a clock can carry: about the year 6400.
pub const MAX_WALL_MS: u64 = u64::MAX >> (COUNTER_BITS + 1);

/// A hybrid logical clock value. Orders as a plain integer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Clock(u64);

impl Clock {
    pub const ZERO: Clock = Clock(0);
    /// The largest clock: every clock fits Automerge's signed integers.
    pub const MAX: Clock = Clock(i64::MAX as u64);

    pub fn from_raw(raw: u64) -> Self {
        Clock(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    /// Wall-clock milliseconds carried by this clock.
    pub fn wall_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// Logical counter carried by this clock.
    pub fn counter(self) -> u64 {
        self.0 & COUNTER_MASK
    }

    /// The clock for a new event, given the largest clock seen so far and the device's wall
    /// clock: always strictly greater than `seen`. `None` when `seen` is already the largest
    /// clock there is, which only a device stamping clocks thousands of years ahead can cause;
    /// refusing is better than a clock that no longer orders.
    pub fn tick(seen: Clock, now_ms: i64) -> Option<Clock> {
        let now = (now_ms.max(0) as u64).min(MAX_WALL_MS);
        if now > seen.wall_ms() {
            Some(Clock(now << COUNTER_BITS))
        } else if seen < Clock::MAX {
            // Counter overflow carries into the wall part, which keeps the order strict.
            Some(Clock(seen.0 + 1))
        } else {
            None
        }
    }

    /// A clock as read from a document; negative values are not clocks.
    pub fn from_stored(value: i64) -> Option<Clock> {
        u64::try_from(value).ok().map(Clock)
    }

    /// The clock as stored in a document. Every clock `tick` makes is at most [`Clock::MAX`].
    pub fn to_stored(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_follows_wall_clock_when_it_is_ahead() {
        let c = Clock::tick(Clock::ZERO, 1_000).unwrap();
        assert_eq!(c.wall_ms(), 1_000);
        assert_eq!(c.counter(), 0);
    }

    #[test]
    fn tick_counts_when_wall_clock_is_behind_or_equal() {
        let seen = Clock::tick(Clock::ZERO, 5_000).unwrap();
        let c = Clock::tick(seen, 1_000).unwrap();
        assert!(c > seen);
        assert_eq!(c.wall_ms(), 5_000);
        assert_eq!(c.counter(), 1);
        let d = Clock::tick(c, 5_000).unwrap();
        assert!(d > c);
    }

    #[test]
    fn counter_overflow_stays_ordered() {
        let seen = Clock::from_raw((7 << COUNTER_BITS) | COUNTER_MASK);
        let c = Clock::tick(seen, 0).unwrap();
        assert!(c > seen);
        assert_eq!(c.wall_ms(), 8);
    }

    #[test]
    fn negative_and_huge_wall_clocks_are_clamped() {
        assert!(Clock::tick(Clock::ZERO, -5).unwrap() > Clock::ZERO);
        let c = Clock::tick(Clock::ZERO, i64::MAX).unwrap();
        assert_eq!(c.wall_ms(), MAX_WALL_MS);
        assert!(c.to_stored() > 0);
        let d = Clock::tick(c, i64::MAX).unwrap();
        assert!(d > c);
        assert_eq!(Clock::from_stored(d.to_stored()), Some(d));
    }

    #[test]
    fn the_largest_clock_cannot_tick() {
        assert_eq!(Clock::tick(Clock::MAX, i64::MAX), None);
        let below = Clock::from_raw(Clock::MAX.raw() - 1);
        assert_eq!(Clock::tick(below, 0), Some(Clock::MAX));
        assert_eq!(Clock::MAX.to_stored(), i64::MAX);
    }
}
