//! Large transfers outlive the connection they started on.
//!
//! A payload pulled in parts (`transfers.rs`) can be cut by a lost connection: a relay closes
//! each circuit after a number of bytes or seconds, and a catch-up larger than that would
//! otherwise start again from nothing on every new circuit, and never arrive. So the parts
//! received so far are kept here when a pull is cut, and when the device is connected again the
//! pull goes on from where it stopped (the sender keeps its side for
//! `transfers::TRANSFER_IDLE`). A transfer the sender no longer has fails as before: a fetch
//! is asked again at the next summary exchange, a sync session starts over.
//!
//! Bounded: [`MAX_KEPT_PER_PEER`] transfers per device, [`MAX_KEPT_BYTES`] in all, each for
//! [`KEEP_FOR`], and each resumed at most [`MAX_RESUMES`] times.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    PeerKey,
    transfers::{Incoming, TRANSFER_IDLE},
};

/// Cut transfers kept per device, at most.
const MAX_KEPT_PER_PEER: usize = 8;
/// Bytes of cut transfers kept over all devices, at most.
const MAX_KEPT_BYTES: usize = 256 * 1024 * 1024;
/// How long a cut transfer is kept (the sender keeps its side as long after the last pull).
const KEEP_FOR: Duration = TRANSFER_IDLE;
/// Times one transfer is resumed at most, so that a transfer that keeps failing ends.
pub const MAX_RESUMES: u32 = 64;

/// Transfers cut with their connection, per device.
pub struct Resume<P> {
    kept: HashMap<P, Vec<(Instant, Box<Incoming>)>>,
    bytes: usize,
}

impl<P> Default for Resume<P> {
    fn default() -> Self {
        Resume {
            kept: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<P: PeerKey> Resume<P> {
    /// Keeps a cut transfer, or hands it back if it cannot be kept (resumed too often).
    pub fn keep(
        &mut self,
        peer: P,
        mut incoming: Box<Incoming>,
        now: Instant,
    ) -> Result<(), Box<Incoming>> {
        self.expire(now);
        if incoming.resumed >= MAX_RESUMES || incoming.held() > MAX_KEPT_BYTES {
            return Err(incoming);
        }
        incoming.resumed += 1;
        let size = incoming.held();
        // Room: the oldest of this device's go first, then the oldest of anyone's.
        if self
            .kept
            .get(&peer)
            .is_some_and(|k| k.len() >= MAX_KEPT_PER_PEER)
        {
            self.drop_oldest(Some(peer));
        }
        while self.bytes + size > MAX_KEPT_BYTES && self.bytes > 0 {
            self.drop_oldest(None);
        }
        self.bytes += size;
        self.kept.entry(peer).or_default().push((now, incoming));
        Ok(())
    }

    /// The cut transfers of `peer`, taken out (boxed, as every pull carries them).
    #[allow(clippy::vec_box)]
    pub fn take(&mut self, peer: &P, now: Instant) -> Vec<Box<Incoming>> {
        self.expire(now);
        let kept = self.kept.remove(peer).unwrap_or_default();
        self.bytes -= kept.iter().map(|(_, i)| i.held()).sum::<usize>();
        kept.into_iter().map(|(_, i)| i).collect()
    }

    fn expire(&mut self, now: Instant) {
        let mut freed = 0;
        for list in self.kept.values_mut() {
            list.retain(|(at, i)| {
                let keep = now.duration_since(*at) < KEEP_FOR;
                if !keep {
                    freed += i.held();
                }
                keep
            });
        }
        self.kept.retain(|_, l| !l.is_empty());
        self.bytes -= freed;
    }

    fn drop_oldest(&mut self, of: Option<P>) {
        let oldest = self
            .kept
            .iter()
            .filter(|(p, _)| of.is_none_or(|o| o == **p))
            .flat_map(|(p, l)| l.iter().enumerate().map(move |(i, (at, _))| (*at, *p, i)))
            .min();
        if let Some((_, peer, i)) = oldest
            && let Some(list) = self.kept.get_mut(&peer)
        {
            let (_, gone) = list.remove(i);
            self.bytes -= gone.held();
            if list.is_empty() {
                self.kept.remove(&peer);
            }
        }
    }

    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        ChatId,
        sync::transfers::{Progress, Purpose},
    };

    fn incoming(held: usize) -> Box<Incoming> {
        let chat = ChatId::new("c").unwrap();
        let mut i = Box::new(Incoming::start(Purpose::Fetch(chat), 1, held as u64 + 10).unwrap());
        if held > 0 {
            match i.take_part(&vec![1; held]) {
                Progress::More(more) => i = more,
                _ => panic!("not more"),
            }
        }
        i
    }

    #[test]
    fn cut_transfers_are_kept_bounded_and_for_a_while() {
        let mut r = Resume::<u32>::default();
        let peer = 1;
        let t0 = Instant::now();
        for _ in 0..MAX_KEPT_PER_PEER + 3 {
            assert!(r.keep(peer, incoming(100), t0).is_ok());
        }
        assert_eq!(r.kept[&peer].len(), MAX_KEPT_PER_PEER);
        assert_eq!(r.kept_bytes(), MAX_KEPT_PER_PEER * 100);
        let taken = r.take(&peer, t0);
        assert_eq!(taken.len(), MAX_KEPT_PER_PEER);
        assert!(taken.iter().all(|i| i.resumed == 1));
        assert_eq!(r.kept_bytes(), 0);
        assert!(r.keep(peer, incoming(100), t0).is_ok());
        assert!(r.take(&peer, t0 + KEEP_FOR).is_empty(), "kept too long");
        assert_eq!(r.kept_bytes(), 0);
        let mut worn = incoming(10);
        worn.resumed = MAX_RESUMES;
        assert!(r.keep(peer, worn, t0).is_err());
    }
}
