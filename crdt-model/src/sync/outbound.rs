//! Requests on their way to other devices: at most [`MAX_IN_FLIGHT`] to one device at a time,
//! the rest queued in order; a device that said "slow down" gets nothing new until its pause
//! is over. Every request sent has a [`Token`] under which its answer or failure comes back.
//!
//! Why a cap per device: the other side's stream limit drops what is over it, and an answer
//! that never comes costs a whole timeout.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Instant,
};

use super::{PeerKey, transfers::Incoming, transfers::Purpose, wire::SyncRequest};
use crate::ChatId;

/// Requests in flight to one device at most; the rest wait in its queue.
pub const MAX_IN_FLIGHT: usize = 16;
/// Requests queued for one device at most (one per chat is the usual worst case).
const MAX_QUEUED: usize = 64 * 1024;

/// Names one request sent, until its answer or failure is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// A request as the core asks for it. A summary's contents are read from the store by whoever
/// puts it on the wire, when it goes (queued summaries are then current).
#[derive(Debug)]
pub enum Request {
    Summary,
    Wire(SyncRequest),
}

/// What an outbound request was for.
#[derive(Debug)]
pub enum Pending {
    Summary,
    Sync(ChatId),
    Fetch(ChatId),
    /// Asked the other device to run the session about this chat from its side.
    Pull(ChatId),
    Part(Box<Incoming>),
    /// Showed the other device evidence of an equivocation in this chat.
    Evidence(ChatId),
}

impl Pending {
    /// The chat this request fetches whole, if it does.
    pub fn fetch(&self) -> Option<&ChatId> {
        match self {
            Pending::Fetch(chat) => Some(chat),
            Pending::Part(incoming) => match &incoming.purpose {
                Purpose::Fetch(chat) => Some(chat),
                Purpose::Sync(_) => None,
            },
            _ => None,
        }
    }
}

/// What became of a request handed to [`Outbound::submit`].
pub enum Submitted<P> {
    /// Goes on the wire now.
    Send(P, Token, Request),
    /// Waits in the device's queue.
    Queued,
    /// The queue is full: dropped (the next summary exchange finds what it was for).
    Dropped(Pending),
}

/// Outbound requests of every device. Bounded by devices x ([`MAX_IN_FLIGHT`] + `MAX_QUEUED`).
/// Maps that are walked are ordered, so that the same inputs always give the same outputs.
pub struct Outbound<P> {
    in_flight: BTreeMap<Token, (P, Pending)>,
    /// Requests in flight per device.
    counts: HashMap<P, usize>,
    queued: HashMap<P, VecDeque<(Request, Pending)>>,
    /// Devices that said "slow down", and until when.
    paused: BTreeMap<P, Instant>,
    next: u64,
}

impl<P> Default for Outbound<P> {
    fn default() -> Self {
        Outbound {
            in_flight: BTreeMap::new(),
            counts: HashMap::new(),
            queued: HashMap::new(),
            paused: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<P: PeerKey> Outbound<P> {
    /// Sends the request now if the device has a free slot and is not paused; else queues it.
    pub fn submit(&mut self, peer: P, request: Request, pending: Pending) -> Submitted<P> {
        let count = self.counts.entry(peer).or_default();
        if self.paused.contains_key(&peer) || *count >= MAX_IN_FLIGHT {
            let queue = self.queued.entry(peer).or_default();
            if queue.len() >= MAX_QUEUED {
                return Submitted::Dropped(pending);
            }
            queue.push_back((request, pending));
            return Submitted::Queued;
        }
        *count += 1;
        let token = Token(self.next);
        self.next = self.next.wrapping_add(1);
        self.in_flight.insert(token, (peer, pending));
        Submitted::Send(peer, token, request)
    }

    /// The request under `token` was answered or failed: what it was for, and the device's
    /// next queued request if one may go now (to hand back to [`Outbound::submit`]).
    #[allow(clippy::type_complexity)]
    pub fn finished(&mut self, token: Token) -> Option<(P, Pending, Option<(Request, Pending)>)> {
        let (peer, pending) = self.in_flight.remove(&token)?;
        if let Some(n) = self.counts.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        let next = if self.paused.contains_key(&peer) {
            None
        } else {
            self.queued.get_mut(&peer).and_then(VecDeque::pop_front)
        };
        Some((peer, pending, next))
    }

    /// Nothing new goes to `peer` until `until`.
    pub fn pause(&mut self, peer: P, until: Instant) {
        self.paused.insert(peer, until);
    }

    /// Ends the pauses that are over: the queued requests that may go now, per device (each
    /// to hand back to [`Outbound::submit`]).
    pub fn resume_due(&mut self, now: Instant) -> Vec<(P, Request, Pending)> {
        let due: Vec<P> = self
            .paused
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        let mut out = Vec::new();
        for peer in due {
            self.paused.remove(&peer);
            let free = MAX_IN_FLIGHT.saturating_sub(self.counts.get(&peer).copied().unwrap_or(0));
            let Some(queue) = self.queued.get_mut(&peer) else {
                continue;
            };
            for _ in 0..free {
                let Some((request, pending)) = queue.pop_front() else {
                    break;
                };
                out.push((peer, request, pending));
            }
        }
        out
    }

    /// Drops everything for `peer` (it is gone): what was queued and what was in flight (their
    /// answers will not come; reports under their tokens are then ignored).
    pub fn forget(&mut self, peer: P) -> Vec<Pending> {
        let mut dropped: Vec<Pending> = self
            .queued
            .remove(&peer)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, pending)| pending)
            .collect();
        let tokens: Vec<Token> = self
            .in_flight
            .iter()
            .filter(|(_, (p, _))| *p == peer)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            if let Some((_, pending)) = self.in_flight.remove(&token) {
                dropped.push(pending);
            }
        }
        self.counts.remove(&peer);
        self.paused.remove(&peer);
        dropped
    }

    /// Requests in flight to `peer`.
    pub fn in_flight(&self, peer: &P) -> usize {
        self.counts.get(peer).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn fetch(i: usize) -> (Request, Pending) {
        let chat = ChatId::new(format!("c{i}")).unwrap();
        (
            Request::Wire(SyncRequest::Fetch {
                chat: chat.to_string(),
            }),
            Pending::Fetch(chat),
        )
    }

    #[test]
    fn at_most_the_cap_goes_at_once_and_the_rest_follows_in_order() {
        let mut out = Outbound::<u32>::default();
        let mut tokens = Vec::new();
        for i in 0..MAX_IN_FLIGHT + 2 {
            let (request, pending) = fetch(i);
            match out.submit(1, request, pending) {
                Submitted::Send(_, token, _) => tokens.push(token),
                Submitted::Queued => assert!(i >= MAX_IN_FLIGHT),
                Submitted::Dropped(_) => panic!("dropped"),
            }
        }
        assert_eq!(tokens.len(), MAX_IN_FLIGHT);
        assert_eq!(out.in_flight(&1), MAX_IN_FLIGHT);
        let (peer, _, next) = out.finished(tokens[0]).unwrap();
        assert_eq!(peer, 1);
        let (_, Pending::Fetch(chat)) = next.unwrap() else {
            panic!("not the queued fetch");
        };
        assert_eq!(chat.as_str(), format!("c{MAX_IN_FLIGHT}"));
        assert!(out.finished(tokens[0]).is_none(), "reported once");
    }

    #[test]
    fn a_paused_device_gets_nothing_until_the_pause_is_over() {
        let mut out = Outbound::<u32>::default();
        let t0 = Instant::now();
        out.pause(1, t0 + Duration::from_secs(1));
        let (request, pending) = fetch(0);
        assert!(matches!(out.submit(1, request, pending), Submitted::Queued));
        let (request, pending) = fetch(1);
        assert!(matches!(
            out.submit(2, request, pending),
            Submitted::Send(..)
        ));
        assert!(out.resume_due(t0).is_empty());
        let resumed = out.resume_due(t0 + Duration::from_secs(1));
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].0, 1);
    }

    #[test]
    fn a_device_gone_takes_its_requests_with_it() {
        let mut out = Outbound::<u32>::default();
        let mut sent = Vec::new();
        for i in 0..MAX_IN_FLIGHT + 1 {
            let (request, pending) = fetch(i);
            if let Submitted::Send(_, token, _) = out.submit(1, request, pending) {
                sent.push(token);
            }
        }
        assert_eq!(out.forget(1).len(), MAX_IN_FLIGHT + 1);
        assert!(out.finished(sent[0]).is_none());
        assert_eq!(out.in_flight(&1), 0);
    }
}
