//! How far each connected device is from this one, for `chatsync peers` and `chatsync status`:
//! the chats where it has changes this device lacks (behind), those where this device has
//! changes it lacks (ahead), when a sync with it last completed, and the bytes exchanged.
//!
//! The picture comes from the summary exchange (every chat's heads) and is then kept current by
//! sync sessions: a chat leaves both sets when a session shows both sides have the same heads,
//! and joins `ahead` when it changes here. A session cannot always tell that it ended in sync,
//! so when the last one with a device ends and chats still look apart, summaries are traded
//! again a second later (`core.rs`, `RECHECK_AFTER`). A summary comparison takes a while (it
//! may load the chats that differ), so chats that reached sync while it ran are not put back by its result.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use super::{MAX_PEERS, PeerKey};
use crate::ChatId;

/// What one device's summary showed, computed from a comparison that began at `began`.
#[derive(Debug)]
pub struct Comparison {
    pub began: Instant,
    pub behind: BTreeSet<ChatId>,
    pub ahead: BTreeSet<ChatId>,
}

#[derive(Debug, Default)]
pub struct PeerProgress {
    /// Known while connected; `None` until the first summary comparison.
    sets: Option<(BTreeSet<ChatId>, BTreeSet<ChatId>)>,
    /// When each chat was last seen in sync during this connection.
    in_sync_at: HashMap<ChatId, Instant>,
    /// Since when each chat has been seen apart, without a sync in between (see
    /// [`STALLED_AFTER`]).
    apart_since: HashMap<ChatId, Instant>,
    /// When a sync exchange with it last completed.
    pub last_sync: Option<Instant>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests and answers from it this device refused without blame.
    pub refusals: u64,
    /// Data from it that no honest device sends (`conduct.rs`).
    pub offences: u64,
}

impl PeerProgress {
    /// Chats behind and ahead, if known.
    pub fn counts(&self) -> Option<(usize, usize)> {
        self.sets
            .as_ref()
            .map(|(behind, ahead)| (behind.len(), ahead.len()))
    }

    pub fn behind(&self) -> impl Iterator<Item = &ChatId> {
        self.sets.iter().flat_map(|(behind, _)| behind.iter())
    }

    pub fn ahead(&self) -> impl Iterator<Item = &ChatId> {
        self.sets.iter().flat_map(|(_, ahead)| ahead.iter())
    }
}

/// How long a chat may stay apart from a device, with no session about it under way and no
/// sync in between, before its sync counts as stalled and starts afresh (both sides' sync
/// states forgotten). Summaries are traded again a second after a session leaves chats apart
/// (at most every 10 s) and every 30 s, so a stall is found within about half a minute.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// Progress per device. Bounded: only devices that exchanged sync data are kept, at most
/// [`MAX_PEERS`].
#[derive(Debug)]
pub struct Progress<P> {
    peers: HashMap<P, PeerProgress>,
}

impl<P> Default for Progress<P> {
    fn default() -> Self {
        Progress {
            peers: HashMap::new(),
        }
    }
}

impl<P: PeerKey> Progress<P> {
    pub fn get(&self, peer: &P) -> Option<&PeerProgress> {
        self.peers.get(peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&P, &PeerProgress)> {
        self.peers.iter()
    }

    fn entry(&mut self, peer: P) -> Option<&mut PeerProgress> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            return None;
        }
        Some(self.peers.entry(peer).or_default())
    }

    /// A summary comparison finished. Returns the chats that have been apart since at least
    /// [`STALLED_AFTER`] before it, with no sync in between: their sync made no progress.
    pub fn compared(&mut self, peer: P, mut comparison: Comparison, now: Instant) -> Vec<ChatId> {
        let Some(p) = self.entry(peer) else {
            return Vec::new();
        };
        p.in_sync_at.retain(|_, at| *at >= comparison.began);
        for chat in p.in_sync_at.keys() {
            comparison.behind.remove(chat);
            comparison.ahead.remove(chat);
        }
        let began = comparison.began;
        p.apart_since
            .retain(|chat, _| comparison.behind.contains(chat) || comparison.ahead.contains(chat));
        let mut stalled = Vec::new();
        for chat in comparison.behind.iter().chain(&comparison.ahead) {
            let since = p.apart_since.entry(chat.clone()).or_insert(began);
            if began.saturating_duration_since(*since) >= STALLED_AFTER {
                stalled.push(chat.clone());
                // Started afresh now: judged again only after as long again.
                *since = began;
            }
        }
        p.sets = Some((comparison.behind, comparison.ahead));
        p.last_sync = Some(now);
        stalled
    }

    /// A session showed that both devices have the same heads for `chat`.
    pub fn in_sync(&mut self, peer: P, chat: &ChatId, now: Instant) {
        let Some(p) = self.entry(peer) else { return };
        if let Some((behind, ahead)) = &mut p.sets {
            behind.remove(chat);
            ahead.remove(chat);
        }
        p.in_sync_at.insert(chat.clone(), now);
        p.apart_since.remove(chat);
        p.last_sync = Some(now);
    }

    /// `chat` arrived whole from `peer`.
    pub fn fetched(&mut self, peer: P, chat: &ChatId) {
        if let Some((behind, _)) = self.peers.get_mut(&peer).and_then(|p| p.sets.as_mut()) {
            behind.remove(chat);
        }
    }

    /// `chat` changed on this device: connected devices lack it until a session says otherwise.
    pub fn changed_here(&mut self, peer: P, chat: &ChatId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_sync_at.remove(chat);
            if let Some((_, ahead)) = &mut p.sets {
                ahead.insert(chat.clone());
            }
        }
    }

    /// The device disconnected: how far apart we are is unknown until it is back.
    pub fn disconnected(&mut self, peer: &P) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.sets = None;
            p.in_sync_at.clear();
            p.apart_since.clear();
        }
    }

    pub fn sent(&mut self, peer: P, bytes: usize) {
        if let Some(p) = self.entry(peer) {
            p.bytes_sent += bytes as u64;
        }
    }

    /// This device refused a request or an answer of `peer`'s.
    pub fn refused(&mut self, peer: P) {
        if let Some(p) = self.entry(peer) {
            p.refusals += 1;
        }
    }

    /// `peer` sent data no honest device sends.
    pub fn offence(&mut self, peer: P) {
        if let Some(p) = self.entry(peer) {
            p.offences += 1;
        }
    }

    pub fn received(&mut self, peer: P, bytes: usize) {
        if let Some(p) = self.entry(peer) {
            p.bytes_received += bytes as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn chats(names: &[&str]) -> BTreeSet<ChatId> {
        names.iter().map(|n| ChatId::new(*n).unwrap()).collect()
    }

    #[test]
    fn sessions_and_local_changes_keep_the_picture_current() {
        let mut progress = Progress::<u32>::default();
        let peer = 1u32;
        assert!(progress.get(&peer).is_none());
        progress.compared(
            peer,
            Comparison {
                began: Instant::now(),
                behind: chats(&["a", "b"]),
                ahead: chats(&["c"]),
            },
            Instant::now(),
        );
        assert_eq!(progress.get(&peer).unwrap().counts(), Some((2, 1)));
        progress.in_sync(peer, &ChatId::new("a").unwrap(), Instant::now());
        progress.fetched(peer, &ChatId::new("b").unwrap());
        progress.in_sync(peer, &ChatId::new("c").unwrap(), Instant::now());
        assert_eq!(progress.get(&peer).unwrap().counts(), Some((0, 0)));
        progress.changed_here(peer, &ChatId::new("a").unwrap());
        assert_eq!(progress.get(&peer).unwrap().counts(), Some((0, 1)));
        progress.disconnected(&peer);
        assert_eq!(progress.get(&peer).unwrap().counts(), None);
        assert!(progress.get(&peer).unwrap().last_sync.is_some());
    }

    #[test]
    fn a_slow_comparison_does_not_undo_a_newer_sync() {
        let mut progress = Progress::<u32>::default();
        let peer = 1u32;
        let began = Instant::now();
        progress.in_sync(
            peer,
            &ChatId::new("a").unwrap(),
            began + std::time::Duration::from_millis(5),
        );
        progress.compared(
            peer,
            Comparison {
                began,
                behind: chats(&["a", "b"]),
                ahead: BTreeSet::new(),
            },
            began,
        );
        assert_eq!(progress.get(&peer).unwrap().counts(), Some((1, 0)));
    }

    #[test]
    fn a_chat_apart_with_no_sync_in_between_counts_as_stalled_once_per_period() {
        let mut progress = Progress::<u32>::default();
        let peer = 1u32;
        let start = Instant::now();
        let compare = |progress: &mut Progress<u32>, began: Instant, behind: &[&str]| {
            progress.compared(
                peer,
                Comparison {
                    began,
                    behind: chats(behind),
                    ahead: BTreeSet::new(),
                },
                began,
            )
        };
        assert!(compare(&mut progress, start, &["a", "b"]).is_empty());
        // Still apart, but not for long enough.
        let soon = start + STALLED_AFTER / 2;
        assert!(compare(&mut progress, soon, &["a", "b"]).is_empty());
        // "a" synced meanwhile; only "b" stayed apart all along.
        let later = start + STALLED_AFTER;
        progress.in_sync(peer, &ChatId::new("a").unwrap(), later);
        let after_sync = later + Duration::from_millis(1);
        assert_eq!(
            compare(&mut progress, after_sync, &["a", "b"]),
            vec![ChatId::new("b").unwrap()]
        );
        // Restarted: judged again only a whole period later.
        let next = after_sync + STALLED_AFTER / 2;
        assert!(compare(&mut progress, next, &["a", "b"]).is_empty());
        // A chat that is no longer apart starts a new period when it is apart again.
        assert!(compare(&mut progress, next, &[]).is_empty());
        let again = next + STALLED_AFTER;
        assert!(compare(&mut progress, again, &["b"]).is_empty());
    }
}
