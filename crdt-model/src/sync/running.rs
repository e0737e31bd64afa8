//! The sync sessions under way with each device, at most [`MAX_SESSIONS`] at a time, and the
//! ones waiting for a place.
//!
//! Why a cap: a session holds its chat in memory from its first message to its last, on both
//! devices. Started all at once, the sessions of a catch-up of many chats take their turns
//! round after round, each round of each chat waiting behind a round of every other; once the
//! chats outgrow the memory budget, each is unloaded before its turn comes again and loaded
//! anew for every round. With a few sessions at a time, each runs to its end while its chat
//! is in memory, and the rest wait their turn. A session for a change made on this device goes
//! to the head of the line, so that a post is not held up behind a catch-up.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{PeerKey, outbound::MAX_IN_FLIGHT};
use crate::ChatId;

/// Sessions under way with one device at most: as many as requests may be in flight to it, so
/// that every session under way can have its round on the wire.
pub const MAX_SESSIONS: usize = MAX_IN_FLIGHT;

/// Sessions under way and waiting, per device. Nothing here is walked, so hashed maps keep
/// the core's outputs the same for the same inputs.
pub(super) struct Running<P> {
    under_way: HashMap<P, HashSet<ChatId>>,
    waiting: HashMap<P, Waiting>,
}

/// The sessions waiting for a place with one device, in the order they start.
#[derive(Default)]
struct Waiting {
    order: VecDeque<ChatId>,
    members: HashSet<ChatId>,
}

impl<P> Default for Running<P> {
    fn default() -> Self {
        Running {
            under_way: HashMap::new(),
            waiting: HashMap::new(),
        }
    }
}

impl<P: PeerKey> Running<P> {
    /// Whether a session with `peer` about `chat` is under way.
    pub fn is_under_way(&self, peer: P, chat: &ChatId) -> bool {
        self.under_way.get(&peer).is_some_and(|s| s.contains(chat))
    }

    /// Whether a session with `peer` about `chat` is under way or waiting to start.
    pub fn is_pending(&self, peer: P, chat: &ChatId) -> bool {
        self.is_under_way(peer, chat)
            || self
                .waiting
                .get(&peer)
                .is_some_and(|w| w.members.contains(chat))
    }

    /// Whether any session with `peer` is under way or waiting.
    pub fn any(&self, peer: P) -> bool {
        self.under_way.get(&peer).is_some_and(|s| !s.is_empty())
            || self.waiting.get(&peer).is_some_and(|w| !w.order.is_empty())
    }

    /// Sessions under way with every device.
    pub fn len(&self) -> usize {
        self.under_way.values().map(HashSet::len).sum()
    }

    /// A session about `chat` with `peer` is to run (it is neither under way nor waiting):
    /// `true` if it starts now, `false` if it waits for a place (at the head of the line when
    /// `first`; one already waiting moves there then).
    pub fn start(&mut self, peer: P, chat: ChatId, first: bool) -> bool {
        let under_way = self.under_way.entry(peer).or_default();
        let waiting = self.waiting.entry(peer).or_default();
        if waiting.members.contains(&chat) {
            if first {
                waiting.order.retain(|c| *c != chat);
                waiting.order.push_front(chat);
            }
            return false;
        }
        if under_way.len() < MAX_SESSIONS {
            under_way.insert(chat);
            return true;
        }
        waiting.members.insert(chat.clone());
        match first {
            true => waiting.order.push_front(chat),
            false => waiting.order.push_back(chat),
        }
        false
    }

    /// Marks a session under way whatever the cap (a transfer resumed holds its session again).
    /// `false` if it was under way already.
    pub fn resume(&mut self, peer: P, chat: ChatId) -> bool {
        if let Some(waiting) = self.waiting.get_mut(&peer)
            && waiting.members.remove(&chat)
        {
            waiting.order.retain(|c| *c != chat);
        }
        self.under_way.entry(peer).or_default().insert(chat)
    }

    /// The session about `chat` with `peer` ended: the waiting session that starts in its
    /// place, if any (it is under way from now).
    pub fn end(&mut self, peer: P, chat: &ChatId) -> Option<ChatId> {
        let under_way = self.under_way.get_mut(&peer)?;
        under_way.remove(chat);
        if under_way.len() >= MAX_SESSIONS {
            return None;
        }
        let waiting = self.waiting.get_mut(&peer)?;
        let next = waiting.order.pop_front()?;
        waiting.members.remove(&next);
        under_way.insert(next.clone());
        Some(next)
    }

    /// `peer` is gone: its sessions end, and the waiting ones are dropped (a summary trade
    /// finds what they were for when it is back).
    pub fn forget(&mut self, peer: P) {
        self.under_way.remove(&peer);
        self.waiting.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(i: usize) -> ChatId {
        ChatId::new(format!("c{i}")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sessions_past_the_cap_wait_and_start_in_turn_as_others_end() {
        let mut running: Running<u8> = Running::default();
        for i in 0..MAX_SESSIONS {
            assert!(running.start(1, chat(i), false));
        }
        assert!(!running.start(1, chat(100), false));
        assert!(!running.start(1, chat(101), false));
        // Another device has places of its own.
        assert!(running.start(2, chat(100), false));
        // A local change's session goes first.
        assert!(!running.start(1, chat(102), true));
        assert!(running.is_pending(1, &chat(101)) && !running.is_under_way(1, &chat(101)));
        assert_eq!(running.len(), MAX_SESSIONS + 1);
        assert_eq!(running.end(1, &chat(0)), Some(chat(102)));
        assert_eq!(running.end(1, &chat(1)), Some(chat(100)));
        assert_eq!(running.end(1, &chat(2)), Some(chat(101)));
        assert_eq!(running.end(1, &chat(3)), None);
        assert!(running.is_under_way(1, &chat(101)));
        assert_eq!(running.len(), MAX_SESSIONS);
    }

    #[test]
    fn a_waiting_session_asked_for_again_waits_once_and_a_resumed_one_stops_waiting() {
        let mut running: Running<u8> = Running::default();
        for i in 0..MAX_SESSIONS {
            running.start(1, chat(i), false);
        }
        assert!(!running.start(1, chat(100), false));
        assert!(!running.start(1, chat(101), false));
        assert!(!running.start(1, chat(101), true));
        assert!(!running.start(1, chat(100), false));
        // Resumed past the cap: the next ending leaves no place free.
        assert!(running.resume(1, chat(101)));
        assert!(!running.resume(1, chat(101)));
        assert_eq!(running.end(1, &chat(0)), None);
        assert_eq!(running.end(1, &chat(1)), Some(chat(100)));
        assert_eq!(running.end(1, &chat(2)), None);
        running.forget(1);
        assert!(!running.any(1));
        assert_eq!(running.len(), 0);
    }
}
