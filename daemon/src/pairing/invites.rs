//! The inviter's open invitations, in memory only.
//!
//! Why in memory: an invitation lives for minutes and its secret should exist nowhere but in
//! this process and on the ticket; a restart of the daemon ends every invitation (a ticket
//! issued before it is refused as unknown), which is the safe direction to fail in.
//!
//! Everything is bounded: at most [`MAX_LIVE`] live invitations, at most [`MAX_BAD_PROOFS`]
//! wrong proofs per invitation before it is dropped, and a short memory of spent invitations
//! (so that a second use of a ticket is refused as "used", not as "unknown").
//!
//! A spent invitation keeps the pairing window open (see [`Invites::open_until`]) until its
//! ticket would have expired, for at most [`SPENT_WINDOW`]: a device that tries the ticket
//! again is let in far enough to be told the ticket was used, instead of finding the inviter
//! unreachable.

use std::collections::{HashMap, VecDeque};

use super::{proof::InviteId, ticket::SECRET_BYTES};

/// Live invitations at most.
pub const MAX_LIVE: usize = 16;
/// Wrong proofs an invitation survives; the next one drops it.
pub const MAX_BAD_PROOFS: u32 = 5;
/// Spent invitations remembered, to say why a ticket no longer works.
const REMEMBERED: usize = 64;
/// How long a spent invitation keeps the pairing window open at most, in seconds.
pub const SPENT_WINDOW: u64 = 600;

#[derive(Debug)]
struct Invite {
    secret: [u8; SECRET_BYTES],
    expires_at: u64,
    bad_proofs: u32,
}

/// Why an invitation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spent {
    Used,
    Expired,
    Cancelled,
    /// Too many wrong proofs.
    Dropped,
}

/// Why a pairing request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such invitation (never issued, cancelled, dropped, or issued before a restart).
    Unknown,
    Used,
    Expired,
    BadProof,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("there are already {MAX_LIVE} open invitations; cancel one or wait for them to expire")]
pub struct TooMany;

#[derive(Debug, Default)]
pub struct Invites {
    live: HashMap<InviteId, Invite>,
    /// Spent invitations: why, and until when they keep the window open.
    spent: VecDeque<(InviteId, Spent, u64)>,
}

impl Invites {
    /// Opens an invitation until `expires_at` (Unix seconds).
    pub fn create(
        &mut self,
        id: InviteId,
        secret: [u8; SECRET_BYTES],
        expires_at: u64,
        now: u64,
    ) -> Result<(), TooMany> {
        self.prune(now);
        if self.live.len() >= MAX_LIVE {
            return Err(TooMany);
        }
        self.live.insert(
            id,
            Invite {
                secret,
                expires_at,
                bad_proofs: 0,
            },
        );
        Ok(())
    }

    /// Ends an invitation; whether it was open.
    pub fn cancel(&mut self, id: &InviteId, now: u64) -> bool {
        self.prune(now);
        match self.live.remove(id) {
            Some(invite) => {
                self.remember(
                    *id,
                    Spent::Cancelled,
                    invite.expires_at.min(now + SPENT_WINDOW),
                );
                true
            }
            None => false,
        }
    }

    /// Uses up the invitation `id` if `check` accepts the proof against its secret. Single
    /// use: once accepted, every later request for it is refused as used.
    pub fn redeem(
        &mut self,
        id: &InviteId,
        now: u64,
        check: impl FnOnce(&[u8; SECRET_BYTES]) -> bool,
    ) -> Result<(), Refusal> {
        self.prune(now);
        let Some(invite) = self.live.get_mut(id) else {
            return Err(match self.spent.iter().find(|(i, ..)| i == id) {
                Some((_, Spent::Used, _)) => Refusal::Used,
                Some((_, Spent::Expired, _)) => Refusal::Expired,
                Some((_, Spent::Cancelled | Spent::Dropped, _)) | None => Refusal::Unknown,
            });
        };
        let until = invite.expires_at.min(now + SPENT_WINDOW);
        if !check(&invite.secret) {
            invite.bad_proofs += 1;
            if invite.bad_proofs >= MAX_BAD_PROOFS {
                self.live.remove(id);
                self.remember(*id, Spent::Dropped, until);
            }
            return Err(Refusal::BadProof);
        }
        self.live.remove(id);
        self.remember(*id, Spent::Used, until);
        Ok(())
    }

    /// Until when (Unix seconds) devices that are not paired may connect to ask to pair:
    /// the latest expiry of the open invitations, or of recently spent ones (see the module
    /// docs); `None` when there is no reason to admit them.
    pub fn open_until(&mut self, now: u64) -> Option<u64> {
        self.prune(now);
        let live = self.live.values().map(|i| i.expires_at);
        let spent = self.spent.iter().map(|(_, _, until)| *until);
        live.chain(spent).filter(|&t| t > now).max()
    }

    /// Open invitations.
    pub fn live(&mut self, now: u64) -> usize {
        self.prune(now);
        self.live.len()
    }

    fn prune(&mut self, now: u64) {
        let expired: Vec<InviteId> = self
            .live
            .iter()
            .filter(|(_, i)| now >= i.expires_at)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.live.remove(&id);
            self.remember(id, Spent::Expired, now);
        }
    }

    fn remember(&mut self, id: InviteId, why: Spent, until: u64) {
        if self.spent.len() >= REMEMBERED {
            self.spent.pop_front();
        }
        self.spent.push_back((id, why, until));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn id(n: u8) -> InviteId {
        [n; 16]
    }

    fn secret(n: u8) -> [u8; SECRET_BYTES] {
        [n; SECRET_BYTES]
    }

    fn right(n: u8) -> impl FnOnce(&[u8; SECRET_BYTES]) -> bool {
        move |s| *s == secret(n)
    }

    #[test]
    fn an_invitation_is_used_once() {
        let mut inv = Invites::default();
        inv.create(id(1), secret(1), NOW + 600, NOW).unwrap();
        assert_eq!(inv.open_until(NOW), Some(NOW + 600));
        assert_eq!(inv.redeem(&id(1), NOW, right(1)), Ok(()));
        assert_eq!(inv.redeem(&id(1), NOW, right(1)), Err(Refusal::Used));
        assert_eq!(inv.live(NOW), 0);
        // The window stays open a while, so that a second try hears "used"...
        assert_eq!(inv.open_until(NOW), Some(NOW + 600));
        // ...but not past the ticket's expiry, nor longer than SPENT_WINDOW.
        inv.create(id(2), secret(2), NOW + 30, NOW).unwrap();
        inv.redeem(&id(2), NOW, right(2)).unwrap();
        assert_eq!(inv.open_until(NOW + 600), None);
        let mut long = Invites::default();
        long.create(id(3), secret(3), NOW + 86_400, NOW).unwrap();
        long.redeem(&id(3), NOW, right(3)).unwrap();
        assert_eq!(long.open_until(NOW), Some(NOW + SPENT_WINDOW));
        assert_eq!(long.open_until(NOW + SPENT_WINDOW), None);
    }

    #[test]
    fn an_expired_invitation_is_refused_as_expired() {
        let mut inv = Invites::default();
        inv.create(id(1), secret(1), NOW + 1, NOW).unwrap();
        assert_eq!(inv.open_until(NOW), Some(NOW + 1));
        assert_eq!(inv.open_until(NOW + 1), None);
        assert_eq!(inv.redeem(&id(1), NOW + 1, right(1)), Err(Refusal::Expired));
        assert_eq!(inv.redeem(&id(1), NOW + 2, right(1)), Err(Refusal::Expired));
    }

    #[test]
    fn unknown_and_cancelled_invitations_are_unknown() {
        let mut inv = Invites::default();
        assert_eq!(inv.redeem(&id(9), NOW, right(9)), Err(Refusal::Unknown));
        inv.create(id(1), secret(1), NOW + 600, NOW).unwrap();
        assert!(inv.cancel(&id(1), NOW));
        assert!(!inv.cancel(&id(1), NOW));
        assert_eq!(inv.redeem(&id(1), NOW, right(1)), Err(Refusal::Unknown));
    }

    #[test]
    fn wrong_proofs_drop_the_invitation_after_a_few() {
        let mut inv = Invites::default();
        inv.create(id(1), secret(1), NOW + 600, NOW).unwrap();
        for _ in 0..MAX_BAD_PROOFS - 1 {
            assert_eq!(inv.redeem(&id(1), NOW, right(2)), Err(Refusal::BadProof));
        }
        // Still open: the right proof works...
        let mut other = Invites::default();
        other.create(id(1), secret(1), NOW + 600, NOW).unwrap();
        for _ in 0..MAX_BAD_PROOFS - 1 {
            let _ = other.redeem(&id(1), NOW, right(2));
        }
        assert_eq!(other.redeem(&id(1), NOW, right(1)), Ok(()));
        // ...but one more wrong proof drops it for good.
        assert_eq!(inv.redeem(&id(1), NOW, right(2)), Err(Refusal::BadProof));
        assert_eq!(inv.live(NOW), 0);
        assert_eq!(inv.redeem(&id(1), NOW, right(1)), Err(Refusal::Unknown));
    }

    #[test]
    fn live_invitations_are_bounded() {
        let mut inv = Invites::default();
        for n in 0..MAX_LIVE as u8 {
            inv.create(id(n), secret(n), NOW + 600, NOW).unwrap();
        }
        assert_eq!(
            inv.create(id(100), secret(100), NOW + 600, NOW),
            Err(TooMany)
        );
        // Expired ones make room.
        let mut short = Invites::default();
        for n in 0..MAX_LIVE as u8 {
            short.create(id(n), secret(n), NOW + 1, NOW).unwrap();
        }
        assert_eq!(
            short.create(id(100), secret(100), NOW + 600, NOW + 1),
            Ok(())
        );
        assert_eq!(short.live(NOW + 1), 1);
    }

    #[test]
    fn the_memory_of_spent_invitations_is_bounded() {
        let mut inv = Invites::default();
        for n in 0..=255u8 {
            inv.create(id(n), secret(n), NOW + 600, NOW).unwrap();
            inv.redeem(&id(n), NOW, right(n)).unwrap();
        }
        assert!(inv.spent.len() <= REMEMBERED);
        assert_eq!(inv.redeem(&id(255), NOW, right(255)), Err(Refusal::Used));
    }
}
