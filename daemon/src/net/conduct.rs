//! How much a device may ask of this one, and what happens when it sends what no honest
//! device sends.
//!
//! Pairing makes a device trusted, not harmless: a paired device can be compromised, or run a
//! buggy or hostile build. Two things bound what it can cost this device:
//!
//! - **Rate.** Every sync request spends tokens from the sender's bucket ([`cost`]): cheap
//!   requests one, sync messages more with their size, summaries and whole-chat fetches (which
//!   make this device read every chat's heads, or save a whole chat) many. The bucket refills at
//!   [`REQUEST_RATE`] tokens a second up to [`REQUEST_BURST`]; a request it cannot pay for is
//!   refused at once, unread, with `SlowDown`. Honest devices rarely get there (a new device
//!   fetching 1,000 chats spends half the burst), and when they do they pause for a second
//!   (`chatsync_model::sync::sessions`), so at most a few in-flight requests are refused each second. A device
//!   that keeps sending after being told to slow down ([`FLOOD_REFUSALS`] refusals within a
//!   minute, far more than that) is suspended.
//! - **Offences.** Data that no honest device sends (a sync message that does not decode,
//!   forged or unsigned changes, writes as another device, a document that is not the chat
//!   asked for, transfer parts that break their announcement, a malformed roster) is refused,
//!   logged with the reason, and counted. [`OFFENCES_TO_SUSPEND`] offences within
//!   [`OFFENCE_WINDOW`] suspend the device: its connections are closed and it is refused, both
//!   ways, for [`FIRST_SUSPENSION`], doubling with each further suspension up to
//!   [`LONGEST_SUSPENSION`]. One offence alone does not suspend: a single glitch (say, a
//!   message damaged by a bug in one version) costs that one exchange, which starts afresh.
//!
//! Refusals an honest device can cause are not offences: changes by a device this one does not
//! trust yet, or no longer, arrive from honest devices while news of a roster change travels.
//!
//! Suspensions live in memory: a restart forgives. The roster is the lasting answer to a
//! device that cannot be trusted (`chatsync devices revoke`).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use libp2p::PeerId;

use super::protocol::SyncRequest;

/// Tokens a device's bucket gains per second.
pub const REQUEST_RATE: f64 = 2_000.0;
/// Tokens a device's bucket holds at most: the burst it may send at once.
pub const REQUEST_BURST: f64 = 20_000.0;
/// Requests refused for rate within [`FLOOD_WINDOW`] that suspend the sender.
pub const FLOOD_REFUSALS: u32 = 3_000;
const FLOOD_WINDOW: Duration = Duration::from_secs(60);
/// Offences within [`OFFENCE_WINDOW`] that suspend a device.
pub const OFFENCES_TO_SUSPEND: usize = 3;
pub const OFFENCE_WINDOW: Duration = Duration::from_secs(600);
/// How long a first suspension lasts; each further one doubles it, up to the longest.
pub const FIRST_SUSPENSION: Duration = Duration::from_secs(60);
pub const LONGEST_SUSPENSION: Duration = Duration::from_secs(3600);
/// Devices with a record at most; records of devices in good standing go first.
const MAX_RECORDS: usize = 4096;
/// A sync message costs one token per this many bytes, on top of its base cost.
const BYTES_PER_TOKEN: usize = 64 * 1024;

/// What a request costs its sender, in tokens: roughly the work it makes this device do.
pub fn cost(request: &SyncRequest) -> f64 {
    match request {
        SyncRequest::Part { .. } | SyncRequest::Pull { .. } => 1.0,
        SyncRequest::Sync { message, .. } => 2.0 + (message.len() / BYTES_PER_TOKEN) as f64,
        SyncRequest::Roster(bytes) => 10.0 + (bytes.len() / BYTES_PER_TOKEN) as f64,
        SyncRequest::Fetch { .. } => 10.0,
        SyncRequest::Summary(_) => 200.0,
        // Two signature checks, and a rebuild of the chat when it bans something new.
        SyncRequest::Evidence { evidence, .. } => 100.0 + (evidence.len() / BYTES_PER_TOKEN) as f64,
    }
}

/// What to do with a request.
#[derive(Debug, PartialEq)]
pub enum Admission {
    Serve,
    /// Refuse it unread: the sender is over its rate.
    SlowDown,
    /// Refuse it, and suspend the sender for this long: it ignored being told to slow down.
    Suspend(Duration),
}

/// The conduct of every device that sent requests (see the module docs).
#[derive(Default)]
pub struct Conduct {
    records: HashMap<PeerId, Record>,
}

struct Record {
    tokens: f64,
    refilled: Instant,
    /// Requests refused for rate since `refusals_since`.
    refusals: u32,
    refusals_since: Instant,
    /// When its recent offences happened (within [`OFFENCE_WINDOW`]).
    offences: VecDeque<Instant>,
    /// Suspensions so far, for the length of the next.
    suspensions: u32,
    suspended_until: Option<Instant>,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            tokens: REQUEST_BURST,
            refilled: now,
            refusals: 0,
            refusals_since: now,
            offences: VecDeque::new(),
            suspensions: 0,
            suspended_until: None,
        }
    }

    /// Suspends the device, and returns for how long.
    fn suspend(&mut self, now: Instant) -> Duration {
        let doublings = self.suspensions.min(16);
        let length = FIRST_SUSPENSION
            .saturating_mul(1 << doublings)
            .min(LONGEST_SUSPENSION);
        self.suspensions = self.suspensions.saturating_add(1);
        self.suspended_until = Some(now + length);
        self.offences.clear();
        self.refusals = 0;
        self.refusals_since = now;
        self.tokens = REQUEST_BURST;
        length
    }

    /// Nothing to remember: no offence, suspension, or spent tokens worth keeping.
    fn in_good_standing(&self, now: Instant) -> bool {
        self.suspensions == 0
            && self.offences.is_empty()
            && self.refusals == 0
            && self.tokens + now.duration_since(self.refilled).as_secs_f64() * REQUEST_RATE
                >= REQUEST_BURST
    }
}

impl Conduct {
    /// Decides whether to serve a request of this cost from `peer`, and charges for it.
    pub fn admit(&mut self, peer: PeerId, cost: f64, now: Instant) -> Admission {
        let record = self.record(peer, now);
        let elapsed = now.duration_since(record.refilled).as_secs_f64();
        record.tokens = (record.tokens + elapsed * REQUEST_RATE).min(REQUEST_BURST);
        record.refilled = now;
        if record.tokens >= cost {
            record.tokens -= cost;
            return Admission::Serve;
        }
        if now.duration_since(record.refusals_since) > FLOOD_WINDOW {
            record.refusals = 0;
            record.refusals_since = now;
        }
        record.refusals += 1;
        if record.refusals >= FLOOD_REFUSALS {
            return Admission::Suspend(record.suspend(now));
        }
        Admission::SlowDown
    }

    /// Counts an offence by `peer`; returns how long it is suspended for, when this one
    /// suspends it.
    pub fn offence(&mut self, peer: PeerId, now: Instant) -> Option<Duration> {
        let record = self.record(peer, now);
        while record
            .offences
            .front()
            .is_some_and(|t| now.duration_since(*t) > OFFENCE_WINDOW)
        {
            record.offences.pop_front();
        }
        record.offences.push_back(now);
        (record.offences.len() >= OFFENCES_TO_SUSPEND).then(|| record.suspend(now))
    }

    /// Until when `peer` is suspended, if it is.
    pub fn suspended_until(&self, peer: &PeerId, now: Instant) -> Option<Instant> {
        self.records
            .get(peer)
            .and_then(|r| r.suspended_until)
            .filter(|until| *until > now)
    }

    fn record(&mut self, peer: PeerId, now: Instant) -> &mut Record {
        if self.records.len() >= MAX_RECORDS && !self.records.contains_key(&peer) {
            self.records.retain(|_, r| !r.in_good_standing(now));
            if self.records.len() >= MAX_RECORDS {
                // Only misbehaving devices left: forget the one whose last suspension ends first.
                if let Some(oldest) = self
                    .records
                    .iter()
                    .min_by_key(|(_, r)| r.suspended_until)
                    .map(|(p, _)| *p)
                {
                    self.records.remove(&oldest);
                }
            }
        }
        self.records.entry(peer).or_insert_with(|| Record::new(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn a_burst_is_served_then_refused_then_served_again_as_tokens_return() {
        let (mut conduct, p, t0) = (Conduct::default(), peer(), Instant::now());
        let served = (0..100_000)
            .take_while(|_| conduct.admit(p, 1.0, t0) == Admission::Serve)
            .count();
        assert_eq!(served, REQUEST_BURST as usize);
        assert_eq!(conduct.admit(p, 1.0, t0), Admission::SlowDown);
        // A tenth of a second later, a tenth of a second's worth of requests pass again.
        let later = t0 + Duration::from_millis(100);
        let served = (0..100_000)
            .take_while(|_| conduct.admit(p, 1.0, later) == Admission::Serve)
            .count();
        assert_eq!(served, (REQUEST_RATE / 10.0) as usize);
        // Another device has its own bucket.
        assert_eq!(conduct.admit(peer(), 1.0, later), Admission::Serve);
    }

    #[test]
    fn an_honest_pace_is_never_refused() {
        let (mut conduct, p, t0) = (Conduct::default(), peer(), Instant::now());
        // Under the rate, for ten minutes, in expensive and cheap requests.
        for ms in 0..600_000u64 {
            let at = t0 + Duration::from_millis(ms);
            let cost = if ms % 1000 == 0 { 200.0 } else { 0.0 };
            assert_eq!(conduct.admit(p, cost, at), Admission::Serve, "at {ms} ms");
            let at = at + Duration::from_micros(500);
            assert_eq!(conduct.admit(p, 1.5, at), Admission::Serve, "at {ms} ms");
        }
    }

    #[test]
    fn ignoring_slow_down_suspends() {
        let (mut conduct, p, t0) = (Conduct::default(), peer(), Instant::now());
        let mut refusals = 0;
        let verdict = loop {
            match conduct.admit(p, 100.0, t0) {
                Admission::Serve => {}
                Admission::SlowDown => refusals += 1,
                suspend => break suspend,
            }
        };
        assert_eq!(verdict, Admission::Suspend(FIRST_SUSPENSION));
        assert_eq!(refusals + 1, FLOOD_REFUSALS);
        assert_eq!(conduct.suspended_until(&p, t0), Some(t0 + FIRST_SUSPENSION));
        assert_eq!(conduct.suspended_until(&p, t0 + FIRST_SUSPENSION), None);
    }

    #[test]
    fn a_device_that_pauses_when_told_is_never_suspended() {
        let (mut conduct, p, t0) = (Conduct::default(), peer(), Instant::now());
        // A device that would send ten times the rate, for ten minutes, but does what
        // `sessions.rs` does: when refused, its other in-flight requests (16) are refused too,
        // and it waits a second.
        let (mut at, end, mut refusals) = (t0, t0 + Duration::from_secs(600), 0);
        while at < end {
            match conduct.admit(p, 20.0, at) {
                Admission::Serve => at += Duration::from_millis(1),
                Admission::SlowDown => {
                    refusals += 1;
                    for _ in 0..15 {
                        let verdict = conduct.admit(p, 20.0, at);
                        assert!(!matches!(verdict, Admission::Suspend(_)));
                    }
                    at += Duration::from_secs(1);
                }
                Admission::Suspend(_) => panic!("suspended after {:?}", at - t0),
            }
        }
        assert!(refusals > 100, "the test never hit the limit");
    }

    #[test]
    fn three_offences_in_the_window_suspend_with_doubling_lengths() {
        let (mut conduct, p, t0) = (Conduct::default(), peer(), Instant::now());
        assert_eq!(conduct.offence(p, t0), None);
        assert_eq!(conduct.offence(p, t0 + Duration::from_secs(1)), None);
        let at = t0 + Duration::from_secs(2);
        assert_eq!(conduct.offence(p, at), Some(FIRST_SUSPENSION));
        assert!(conduct.suspended_until(&p, at).is_some());
        // The next suspension is twice as long, and so on up to the longest.
        let mut expected = FIRST_SUSPENSION;
        let mut at = at;
        for _ in 0..10 {
            expected = (expected * 2).min(LONGEST_SUSPENSION);
            at += LONGEST_SUSPENSION;
            conduct.offence(p, at);
            conduct.offence(p, at);
            assert_eq!(conduct.offence(p, at), Some(expected));
        }
        assert_eq!(expected, LONGEST_SUSPENSION);
    }

    #[test]
    fn offences_further_apart_than_the_window_do_not_add_up() {
        let (mut conduct, p, t0) = (Conduct::default(), peer(), Instant::now());
        for i in 0..20u32 {
            let at = t0 + (OFFENCE_WINDOW / 2 + Duration::from_secs(1)) * i;
            assert_eq!(conduct.offence(p, at), None, "offence {i}");
        }
    }

    #[test]
    fn records_are_bounded_and_misbehaving_devices_are_remembered_first() {
        let (mut conduct, t0) = (Conduct::default(), Instant::now());
        let bad = peer();
        for _ in 0..OFFENCES_TO_SUSPEND {
            conduct.offence(bad, t0);
        }
        for _ in 0..MAX_RECORDS * 2 {
            conduct.admit(peer(), 1.0, t0 + Duration::from_secs(10));
        }
        assert!(conduct.records.len() <= MAX_RECORDS);
        assert!(conduct.suspended_until(&bad, t0).is_some());
    }
}
