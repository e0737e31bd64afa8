//! Announce and pull: payloads too large for one message on the wire travel in parts.
//!
//! The sending side keeps each large payload in an [`Outbox`] under a transfer number and
//! answers with [`Payload::Parts`]; the receiving side pulls it part by part into an
//! [`Incoming`] buffer and hands the whole payload on once it is complete. Both sides are
//! bounded: the outbox by transfers per device, total bytes and idle time; an incoming payload
//! by the length announced, which must be under [`MAX_TRANSFER_BYTES`].
//!
//! Transfers survive a lost connection: the outbox keeps a transfer until nobody has pulled
//! from it for [`TRANSFER_IDLE`], whether the device is connected or not, and the receiver
//! keeps what it has pulled (`resume.rs`) and goes on from there when the device is back. Over
//! relayed connections, whose relay cuts each circuit after a number of bytes, parts are
//! [`RELAYED_PART_BYTES`] so that every circuit completes some of them.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{
    PeerKey,
    wire::{MAX_TRANSFER_BYTES, PART_BYTES, Payload, SyncResponse},
};
use crate::ChatId;

/// Transfers kept for one device at most.
const MAX_TRANSFERS_PER_PEER: usize = 8;
/// Bytes kept in the outbox at most, over all devices.
const MAX_OUTBOX_BYTES: usize = 512 * 1024 * 1024;
/// A transfer nobody pulled from for this long is dropped.
pub const TRANSFER_IDLE: Duration = Duration::from_secs(60);
/// Part size (and largest inline payload) for devices reached only through relays: relays
/// close circuits after a number of bytes (libp2p's default is 128 KiB), and a part that
/// cannot cross one circuit would never arrive.
pub const RELAYED_PART_BYTES: usize = 32 * 1024;

struct Outgoing<P> {
    peer: P,
    bytes: Vec<u8>,
    last_pulled: Instant,
}

/// Large payloads waiting to be pulled by the devices they were announced to.
///
/// Transfer numbers start where the caller says ([`Outbox::starting_at`]); the daemon starts
/// them at a random number each run, because a device that lost its connection in the middle
/// of a pull resumes it by number for a while (`resume.rs`): were numbers to restart at 0, a
/// device that pulled transfer 0 from this one before a restart could resume it with parts of
/// another payload that the restarted daemon numbered 0 too, and take them for a lie.
pub struct Outbox<P> {
    transfers: HashMap<u64, Outgoing<P>>,
    next: u64,
    bytes: usize,
    /// Devices reached only through relays: they get [`RELAYED_PART_BYTES`] parts.
    relayed: HashSet<P>,
}

impl<P: PeerKey> Outbox<P> {
    /// An outbox whose first transfer is numbered `first`.
    pub fn starting_at(first: u64) -> Outbox<P> {
        Outbox {
            transfers: HashMap::new(),
            next: first,
            bytes: 0,
            relayed: HashSet::new(),
        }
    }

    /// Whether `peer` is reached only through relays (small parts) or not.
    pub fn set_relayed(&mut self, peer: P, relayed: bool) {
        if relayed {
            self.relayed.insert(peer);
        } else {
            self.relayed.remove(&peer);
        }
    }

    /// The largest part (and inline payload) for `peer`.
    pub fn part_bytes(&self, peer: &P) -> usize {
        if self.relayed.contains(peer) {
            RELAYED_PART_BYTES
        } else {
            PART_BYTES
        }
    }

    /// Makes `response` fit on the wire: a payload over [`PART_BYTES`] is kept here and
    /// announced instead. A response that cannot be kept becomes a refusal.
    pub fn prepare(&mut self, peer: P, response: SyncResponse, now: Instant) -> SyncResponse {
        match response {
            SyncResponse::Sync {
                message: Some(payload),
            } => match self.announce(peer, payload, now) {
                Ok(payload) => SyncResponse::Sync {
                    message: Some(payload),
                },
                Err(why) => SyncResponse::Refused(why),
            },
            SyncResponse::Document { payload } => match self.announce(peer, payload, now) {
                Ok(payload) => SyncResponse::Document { payload },
                Err(why) => SyncResponse::Refused(why),
            },
            other => other,
        }
    }

    fn announce(&mut self, peer: P, payload: Payload, now: Instant) -> Result<Payload, String> {
        let Payload::Inline(bytes) = payload else {
            return Ok(payload);
        };
        if bytes.len() <= self.part_bytes(&peer) {
            return Ok(Payload::Inline(bytes));
        }
        if bytes.len() > MAX_TRANSFER_BYTES {
            return Err(format!(
                "the payload ({} bytes) is over the limit of {MAX_TRANSFER_BYTES}",
                bytes.len()
            ));
        }
        self.expire(now);
        // At its limit, a device's least recently pulled transfer makes room: it pulls a few
        // at a time, so that one was most likely given up (its connection was lost).
        let mine = || self.transfers.iter().filter(|(_, t)| t.peer == peer);
        if mine().count() >= MAX_TRANSFERS_PER_PEER
            && let Some(oldest) = mine()
                .min_by_key(|(id, t)| (t.last_pulled, **id))
                .map(|(id, _)| *id)
        {
            self.remove(oldest);
        }
        if self.bytes + bytes.len() > MAX_OUTBOX_BYTES {
            return Err("busy: too many large transfers under way; try again later".into());
        }
        let transfer = self.next;
        self.next = self.next.wrapping_add(1);
        let len = bytes.len() as u64;
        self.bytes += bytes.len();
        self.transfers.insert(
            transfer,
            Outgoing {
                peer,
                bytes,
                last_pulled: now,
            },
        );
        Ok(Payload::Parts { transfer, len })
    }

    /// The part of `transfer` at `offset`, for `peer` only. The transfer is dropped once its
    /// last part has been handed out.
    pub fn part(&mut self, peer: P, transfer: u64, offset: u64, now: Instant) -> SyncResponse {
        let part_bytes = self.part_bytes(&peer);
        let Some(outgoing) = self.transfers.get_mut(&transfer) else {
            return SyncResponse::Unknown;
        };
        if outgoing.peer != peer {
            return SyncResponse::Unknown;
        }
        let len = outgoing.bytes.len();
        let Some(start) = usize::try_from(offset).ok().filter(|&o| o < len) else {
            return SyncResponse::Refused(format!("offset {offset} is outside the transfer"));
        };
        let end = (start + part_bytes).min(len);
        outgoing.last_pulled = now;
        let bytes = outgoing.bytes[start..end].to_vec();
        if end == len {
            self.remove(transfer);
        }
        SyncResponse::Part { bytes }
    }

    /// Drops transfers nobody pulled from for [`TRANSFER_IDLE`].
    pub fn expire(&mut self, now: Instant) {
        let stale: Vec<u64> = self
            .transfers
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_pulled) >= TRANSFER_IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.remove(id);
        }
    }

    fn remove(&mut self, transfer: u64) {
        if let Some(t) = self.transfers.remove(&transfer) {
            self.bytes -= t.bytes.len();
        }
    }

    /// Bytes held, for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.bytes
    }
}

/// What a pulled payload is for, once it is complete.
#[derive(Debug)]
pub enum Purpose {
    /// The other device's next sync message about this chat.
    Sync(ChatId),
    /// The whole document of a chat this device lacks.
    Fetch(ChatId),
}

/// A payload being pulled from another device.
pub struct Incoming {
    pub purpose: Purpose,
    pub transfer: u64,
    len: usize,
    bytes: Vec<u8>,
    /// Times it was resumed after its connection was lost (`resume.rs` bounds them).
    pub resumed: u32,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Incoming({:?}, #{}, {}/{} bytes)",
            self.purpose,
            self.transfer,
            self.bytes.len(),
            self.len
        )
    }
}

/// After a part arrived: pull the next one, or the payload is complete, or the part was wrong.
pub enum Progress {
    More(Box<Incoming>),
    Complete(Purpose, Vec<u8>),
    Failed(Purpose, String),
}

impl Incoming {
    /// Starts pulling an announced payload; refuses lengths over the limit.
    pub fn start(purpose: Purpose, transfer: u64, len: u64) -> Result<Incoming, (Purpose, String)> {
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0 && l <= MAX_TRANSFER_BYTES)
        else {
            return Err((
                purpose,
                format!("an announced payload of {len} bytes is empty or over the limit"),
            ));
        };
        Ok(Incoming {
            purpose,
            transfer,
            len,
            // Grows with what actually arrives, not with what was announced.
            bytes: Vec::new(),
            resumed: 0,
        })
    }

    /// Bytes pulled so far.
    pub fn held(&self) -> usize {
        self.bytes.len()
    }

    /// Where the next part starts.
    pub fn offset(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Adds a part; refuses empty, oversized, or overlong parts.
    pub fn take_part(mut self: Box<Self>, part: &[u8]) -> Progress {
        if part.is_empty() || part.len() > PART_BYTES || self.bytes.len() + part.len() > self.len {
            let why = format!(
                "bad part of {} bytes at {} of {}",
                part.len(),
                self.bytes.len(),
                self.len
            );
            return Progress::Failed(self.purpose, why);
        }
        self.bytes.extend_from_slice(part);
        if self.bytes.len() == self.len {
            let Incoming { purpose, bytes, .. } = *self;
            Progress::Complete(purpose, bytes)
        } else {
            Progress::More(self)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn chat() -> ChatId {
        ChatId::new("c").unwrap()
    }

    fn pull_all(outbox: &mut Outbox<u32>, peer: u32, payload: Payload) -> Vec<u8> {
        let Payload::Parts { transfer, len } = payload else {
            panic!("expected parts");
        };
        let mut incoming =
            Box::new(Incoming::start(Purpose::Fetch(chat()), transfer, len).unwrap());
        loop {
            let SyncResponse::Part { bytes } =
                outbox.part(peer, transfer, incoming.offset(), Instant::now())
            else {
                panic!("expected a part");
            };
            match incoming.take_part(&bytes) {
                Progress::More(next) => incoming = next,
                Progress::Complete(_, bytes) => return bytes,
                Progress::Failed(_, why) => panic!("{why}"),
            }
        }
    }

    #[test]
    fn small_payloads_stay_inline_and_large_ones_round_trip_in_parts() {
        let mut outbox = Outbox::starting_at(0);
        let peer = 1;
        let small = SyncResponse::Document {
            payload: Payload::Inline(vec![7; PART_BYTES]),
        };
        assert!(matches!(
            outbox.prepare(peer, small, Instant::now()),
            SyncResponse::Document {
                payload: Payload::Inline(b)
            } if b.len() == PART_BYTES
        ));
        let big: Vec<u8> = (0..(2 * PART_BYTES + 123)).map(|i| i as u8).collect();
        let SyncResponse::Document { payload } = outbox.prepare(
            peer,
            SyncResponse::Document {
                payload: Payload::Inline(big.clone()),
            },
            Instant::now(),
        ) else {
            panic!("expected a document");
        };
        assert_eq!(outbox.held(), big.len());
        assert_eq!(pull_all(&mut outbox, peer, payload), big);
        assert_eq!(outbox.held(), 0, "a fully pulled transfer is dropped");
    }

    #[test]
    fn only_the_device_it_was_announced_to_can_pull_it() {
        let mut outbox = Outbox::starting_at(0);
        let (peer, other) = (1, 2);
        let SyncResponse::Sync {
            message: Some(Payload::Parts { transfer, .. }),
        } = outbox.prepare(
            peer,
            SyncResponse::Sync {
                message: Some(Payload::Inline(vec![1; PART_BYTES + 1])),
            },
            Instant::now(),
        )
        else {
            panic!("expected parts");
        };
        assert!(matches!(
            outbox.part(other, transfer, 0, Instant::now()),
            SyncResponse::Unknown
        ));
        assert!(matches!(
            outbox.part(peer, transfer, u64::MAX, Instant::now()),
            SyncResponse::Refused(_)
        ));
        assert!(matches!(
            outbox.part(peer, transfer + 1, 0, Instant::now()),
            SyncResponse::Unknown
        ));
    }

    #[test]
    fn the_outbox_is_bounded_per_device_and_expires() {
        let mut outbox = Outbox::starting_at(0);
        let peer = 1;
        let t0 = Instant::now();
        let big = || SyncResponse::Document {
            payload: Payload::Inline(vec![0; PART_BYTES + 1]),
        };
        let mut first = None;
        for i in 0..MAX_TRANSFERS_PER_PEER {
            let at = t0 + Duration::from_millis(i as u64);
            match outbox.prepare(peer, big(), at) {
                SyncResponse::Document {
                    payload: Payload::Parts { transfer, .. },
                } => {
                    first.get_or_insert(transfer);
                }
                other => panic!("{other:?}"),
            }
        }
        // One more makes the least recently pulled one go.
        assert!(matches!(
            outbox.prepare(peer, big(), t0 + Duration::from_secs(1)),
            SyncResponse::Document { .. }
        ));
        assert_eq!(outbox.held(), MAX_TRANSFERS_PER_PEER * (PART_BYTES + 1));
        assert!(matches!(
            outbox.part(peer, first.unwrap(), 0, t0),
            SyncResponse::Unknown
        ));
        // Another device still gets its own.
        assert!(matches!(
            outbox.prepare(3, big(), t0),
            SyncResponse::Document { .. }
        ));
        // Kept while nobody pulls for less than the idle time, connected or not.
        outbox.expire(t0 + TRANSFER_IDLE / 2);
        assert_eq!(
            outbox.held(),
            (MAX_TRANSFERS_PER_PEER + 1) * (PART_BYTES + 1)
        );
        outbox.expire(t0 + Duration::from_secs(1) + TRANSFER_IDLE);
        assert_eq!(outbox.held(), 0);
    }

    #[test]
    fn devices_reached_through_relays_get_small_parts() {
        let mut outbox = Outbox::starting_at(0);
        let peer = 1;
        outbox.set_relayed(peer, true);
        let payload = vec![9u8; RELAYED_PART_BYTES * 3 + 5];
        let announced = outbox.prepare(
            peer,
            SyncResponse::Document {
                payload: Payload::Inline(payload.clone()),
            },
            Instant::now(),
        );
        let SyncResponse::Document {
            payload: Payload::Parts { transfer, len },
        } = announced
        else {
            panic!("not announced: {announced:?}");
        };
        assert_eq!(len as usize, payload.len());
        match outbox.part(peer, transfer, 0, Instant::now()) {
            SyncResponse::Part { bytes } => assert_eq!(bytes.len(), RELAYED_PART_BYTES),
            other => panic!("{other:?}"),
        }
        // Direct again: the rest comes in full-size parts.
        outbox.set_relayed(peer, false);
        match outbox.part(peer, transfer, RELAYED_PART_BYTES as u64, Instant::now()) {
            SyncResponse::Part { bytes } => {
                assert_eq!(bytes.len(), payload.len() - RELAYED_PART_BYTES)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incoming_parts_are_checked() {
        assert!(Incoming::start(Purpose::Fetch(chat()), 1, 0).is_err());
        assert!(Incoming::start(Purpose::Fetch(chat()), 1, MAX_TRANSFER_BYTES as u64 + 1).is_err());
        let fresh = || Box::new(Incoming::start(Purpose::Fetch(chat()), 1, 10).unwrap());
        assert!(matches!(fresh().take_part(&[]), Progress::Failed(..)));
        assert!(
            matches!(fresh().take_part(&[0; 11]), Progress::Failed(..)),
            "longer than announced"
        );
        let Progress::More(incoming) = fresh().take_part(&[1; 4]) else {
            panic!("expected more");
        };
        assert_eq!(incoming.offset(), 4);
        let Progress::Complete(_, bytes) = incoming.take_part(&[2; 6]) else {
            panic!("expected the whole payload");
        };
        assert_eq!(bytes, [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    }
}
