//! Which snapshots a retention policy keeps: the newest of each of the last N days, weeks and
//! months that have one, and always the newest of all (days, weeks and months in UTC; weeks
//! start on Monday).

use std::collections::BTreeSet;

/// How many days, weeks and months keep a snapshot each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

/// The numbers of the snapshots to keep, of `snapshots` (number, time in ms since the epoch).
pub fn keep(snapshots: &[(u64, i64)], policy: Retention) -> BTreeSet<u64> {
    let mut newest_first = snapshots.to_vec();
    newest_first.sort_by_key(|(seq, at)| std::cmp::Reverse((*at, *seq)));
    let mut kept = BTreeSet::new();
    if let Some((seq, _)) = newest_first.first() {
        kept.insert(*seq);
    }
    let day = |at: i64| at.div_euclid(86_400_000);
    // 1970-01-01 was a Thursday: shifting by three days starts weeks on Monday.
    let week = |at: i64| (day(at) + 3).div_euclid(7);
    let month = |at: i64| {
        let (year, month) = civil_year_month(day(at));
        year * 12 + i64::from(month)
    };
    for (count, period) in [
        (policy.daily, &day as &dyn Fn(i64) -> i64),
        (policy.weekly, &week),
        (policy.monthly, &month),
    ] {
        let mut seen = BTreeSet::new();
        for (seq, at) in &newest_first {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(period(*at)) {
                kept.insert(*seq);
            }
        }
    }
    kept
}

/// Year and month (1-12) of a day counted from 1970-01-01 (proleptic Gregorian).
fn civil_year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    #[test]
    fn months_are_counted_right() {
        assert_eq!(civil_year_month(0), (1970, 1));
        assert_eq!(civil_year_month(31), (1970, 2));
        // 2026-12-07 and 2024-02-29.
        assert_eq!(civil_year_month(20_794), (2026, 12));
        assert_eq!(civil_year_month(19_782), (2024, 2));
    }

    #[test]
    fn a_policy_keeps_the_newest_of_each_period() {
        // Four snapshots a day for sixty days.
        let start = 20_000 * DAY;
        let snapshots: Vec<(u64, i64)> = (0..240u64)
            .map(|n| (n + 1, start + n as i64 * 6 * HOUR))
            .collect();
        let kept = keep(
            &snapshots,
            Retention {
                daily: 7,
                weekly: 4,
                monthly: 12,
            },
        );
        // The newest is kept, then one per day for a week (the newest that day).
        assert!(kept.contains(&240));
        for d in 0..7 {
            assert!(kept.contains(&(240 - 4 * d)), "day {d}");
        }
        assert!(!kept.contains(&239));
        // Beyond the week, weeks and months: far fewer than all. (Day 20,000 is 2024-10-04;
        // October's newest is the last of the 31st, number 112.)
        assert!(kept.len() <= 7 + 4 + 3, "{kept:?}");
        assert!(
            kept.contains(&112),
            "the oldest month keeps its newest: {kept:?}"
        );
        // Nothing kept but the newest.
        let none = keep(
            &snapshots,
            Retention {
                daily: 0,
                weekly: 0,
                monthly: 0,
            },
        );
        assert_eq!(none, BTreeSet::from([240]));
        assert!(
            keep(
                &[],
                Retention {
                    daily: 1,
                    weekly: 1,
                    monthly: 1
                }
            )
            .is_empty()
        );
    }
}
