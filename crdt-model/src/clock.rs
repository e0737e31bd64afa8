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
    /// clock. Always strictly greater than `seen`.
    pub fn tick(seen: Clock, now_ms: i64) -> Clock {
        let now = (now_ms.max(0) as u64).min(MAX_WALL_MS);
        if now > seen.wall_ms() {
            Clock(now << COUNTER_BITS)
        } else {
            // Counter overflow carries into the wall part, which keeps the order strict.
            Clock(seen.0.saturating_add(1))
        }
    }

    /// Whether a clock read from a peer's document is representable by this version (values
    /// above the range would not survive the round trip through Automerge's signed integers).
    pub fn from_stored(value: i64) -> Option<Clock> {
        u64::try_from(value).ok().map(Clock)
    }

    pub fn to_stored(self) -> i64 {
        // MAX_WALL_MS keeps every value produced by `tick` within i64.
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_follows_wall_clock_when_it_is_ahead() {
        let c = Clock::tick(Clock::ZERO, 1_000);
        assert_eq!(c.wall_ms(), 1_000);
        assert_eq!(c.counter(), 0);
    }

    #[test]
    fn tick_counts_when_wall_clock_is_behind_or_equal() {
        let seen = Clock::tick(Clock::ZERO, 5_000);
        let c = Clock::tick(seen, 1_000);
        assert!(c > seen);
        assert_eq!(c.wall_ms(), 5_000);
        assert_eq!(c.counter(), 1);
        let d = Clock::tick(c, 5_000);
        assert!(d > c);
    }

    #[test]
    fn counter_overflow_stays_ordered() {
        let seen = Clock::from_raw((7 << COUNTER_BITS) | COUNTER_MASK);
        let c = Clock::tick(seen, 0);
        assert!(c > seen);
        assert_eq!(c.wall_ms(), 8);
    }

    #[test]
    fn negative_and_huge_wall_clocks_are_clamped() {
        assert!(Clock::tick(Clock::ZERO, -5) > Clock::ZERO);
        let c = Clock::tick(Clock::ZERO, i64::MAX);
        assert_eq!(c.wall_ms(), MAX_WALL_MS);
        assert!(c.to_stored() > 0);
        assert!(Clock::tick(c, i64::MAX) > c);
    }
}
