//! The sync protocol's transport: one long-lived stream from each device to each device it
//! syncs with, carrying its requests there and their answers back.
//!
//! Why not a stream per request (a request-response protocol): a live post crosses every hop
//! as at least two sync messages, and a stream per message costs each of them an opening and a
//! closing on the muxer, a protocol proposal, a timer and several hand-offs between the
//! connection's task and the swarm's. A link is opened once, on the first request to a device,
//! and then a request is one frame out and its answer one frame back.
//!
//! **Frames.** A 4-byte big-endian length, then CBOR: `[number, request]` from the device that
//! opened the link, `[number, answer]` back. The number is the opener's; answers come in
//! whatever order they are ready. A frame is at most [`MAX_FRAME_BYTES`]; a longer one, or one
//! that is not CBOR of the right shape, is something no honest device sends: the link is closed
//! and the sender answers for it (`conduct.rs`). A frame that is well-formed but names a
//! request or answer this version does not know (serde's "unknown variant") is not held against
//! anyone: an unknown request is refused, an unknown answer fails its request.
//!
//! **Bounds.** A device may have at most [`MAX_UNANSWERED`] requests unanswered on one link:
//! beyond that this side stops reading, and the sender's muxer window fills (back-pressure, not
//! loss). Frames waiting to be written: at most [`LINK_QUEUE`] per link; a request that finds
//! its link's queue full fails at once, as does one unanswered after [`REQUEST_TIMEOUT`]
//! (the sync core tries again later). At most [`MAX_INBOUND_PER_DEVICE`] links from one
//! device; a newer one replaces the oldest.
//!
//! The network task owns the [`Links`] (what is in flight, and the way to every link); each
//! link's stream is owned by a task of its own, which reports what it reads as
//! [`LinkEvent`]s on the task's internal channel.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use libp2p::{PeerId, Stream};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_util::{
    codec::{FramedRead, LengthDelimitedCodec},
    compat::FuturesAsyncReadCompatExt,
    sync::CancellationToken,
};

use chatsync_model::sync::Token;

use super::{
    protocol::{MAX_WIRE_BYTES, PROTOCOL, SyncRequest, SyncResponse},
    sessions::Internal,
};

/// Largest frame: the largest request or answer, and its number.
pub const MAX_FRAME_BYTES: usize = MAX_WIRE_BYTES as usize + 64;
/// Requests one device may have unanswered on one link.
pub const MAX_UNANSWERED: usize = 64;
/// Frames waiting to be written to one link.
pub const LINK_QUEUE: usize = 256;
/// How long a request waits for its answer before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Links one device may have open to this one at once.
pub const MAX_INBOUND_PER_DEVICE: usize = 2;
/// Bytes of the length before every frame.
const LENGTH_BYTES: usize = 4;

/// What a request was sent for, handed back when it is answered or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A request of the sync core.
    Sync(Token),
    /// A roster sent outside the core (`roster.rs`).
    Roster,
}

/// The way back for the answer to one request (what the sync core holds while it works the
/// answer out). While it exists, it takes one of the link's [`MAX_UNANSWERED`] places, which
/// it gives back once its answer is written, or when it is dropped unanswered.
pub struct ReplyTo {
    peer: PeerId,
    number: u64,
    frames: mpsc::Sender<Frame>,
    place: OwnedSemaphorePermit,
}

impl ReplyTo {
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo({}, #{})", self.peer, self.number)
    }
}

/// What a link's task reports to the network task.
pub enum LinkEvent {
    /// A device opened a link to this one.
    Opened(PeerId, Stream),
    /// A request came in on a link a device opened.
    Request {
        reply: ReplyTo,
        request: SyncRequest,
    },
    /// An answer came back on a link this device opened (`None`: one this version cannot
    /// read, so its request failed).
    Answer {
        peer: PeerId,
        link: u64,
        number: u64,
        response: Option<SyncResponse>,
    },
    /// A link ended; `offence`: because the other device sent what no honest device sends.
    Closed {
        peer: PeerId,
        link: u64,
        offence: Option<String>,
    },
}

/// A request sent and not yet answered.
struct InFlight {
    peer: PeerId,
    link: u64,
    sent: Instant,
    purpose: Purpose,
}

/// A frame queued for a link's writer (with the place its answer held, if it is one).
struct Frame {
    bytes: Bytes,
    _place: Option<OwnedSemaphorePermit>,
}

struct OutboundLink {
    link: u64,
    frames: mpsc::Sender<Frame>,
}

struct InboundLink {
    peer: PeerId,
    stop: CancellationToken,
}

/// Every link of this device, and the requests in flight on them (see the module docs).
pub struct Links {
    control: libp2p_stream::Control,
    internal: mpsc::Sender<Internal>,
    /// Ends every link's task when the network task stops.
    stop: CancellationToken,
    next_link: u64,
    next_number: u64,
    outbound: HashMap<PeerId, OutboundLink>,
    inbound: HashMap<u64, InboundLink>,
    in_flight: HashMap<u64, InFlight>,
}

impl Links {
    pub fn new(control: libp2p_stream::Control, internal: mpsc::Sender<Internal>) -> Links {
        Links {
            control,
            internal,
            stop: CancellationToken::new(),
            next_link: 0,
            next_number: 0,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// Starts taking the links other devices open (reported as [`LinkEvent::Opened`]).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut incoming = self
            .control
            .accept(PROTOCOL)
            .map_err(|e| anyhow::anyhow!("cannot accept sync streams: {e}"))?;
        let (internal, stop) = (self.internal.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = incoming.next() => next,
                };
                let Some((peer, stream)) = next else { return };
                let opened = Internal::Link(LinkEvent::Opened(peer, stream));
                if internal.send(opened).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Ends every link.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Sends `request` to `peer` on this device's link to it (opened now if there is none).
    /// `Err`: it could not be queued, and has failed.
    pub fn send(
        &mut self,
        peer: PeerId,
        request: &SyncRequest,
        purpose: Purpose,
        now: Instant,
    ) -> Result<(), Purpose> {
        let number = self.next_number;
        self.next_number += 1;
        let Some(bytes) = encode(&(number, request)) else {
            tracing::warn!(%peer, "a sync request too large to send");
            return Err(purpose);
        };
        let link = self.outbound_link(peer);
        let queued = link.frames.try_send(Frame {
            bytes,
            _place: None,
        });
        if queued.is_err() {
            tracing::debug!(%peer, "the link to this device is full; the request fails");
            return Err(purpose);
        }
        let link = link.link;
        self.in_flight.insert(
            number,
            InFlight {
                peer,
                link,
                sent: now,
                purpose,
            },
        );
        Ok(())
    }

    fn outbound_link(&mut self, peer: PeerId) -> &OutboundLink {
        // A link whose task has ended but not yet reported it: replaced now (its report then
        // fails only what was in flight on it).
        if self
            .outbound
            .get(&peer)
            .is_some_and(|link| link.frames.is_closed())
        {
            self.outbound.remove(&peer);
        }
        if !self.outbound.contains_key(&peer) {
            let link = self.next_link;
            self.next_link += 1;
            let (frames, queued) = mpsc::channel(LINK_QUEUE);
            tokio::spawn(run_outbound(
                peer,
                link,
                self.control.clone(),
                queued,
                self.internal.clone(),
                self.stop.child_token(),
            ));
            self.outbound.insert(peer, OutboundLink { link, frames });
        }
        &self.outbound[&peer]
    }

    /// Answers a request. Nothing happens if its link has ended meanwhile.
    pub fn respond(&mut self, reply: ReplyTo, response: &SyncResponse) {
        let bytes = encode(&(reply.number, response)).or_else(|| {
            tracing::warn!(peer = %reply.peer, "an answer too large to send; refusing instead");
            encode(&(
                reply.number,
                SyncResponse::Refused("the answer is too large".into()),
            ))
        });
        if let Some(bytes) = bytes {
            // Never full: every frame in it holds one of the link's places, and the queue has
            // room for all of them.
            let _ = reply.frames.try_send(Frame {
                bytes,
                _place: Some(reply.place),
            });
        }
    }

    /// A device opened a link to this one (it was checked to be trusted): its requests come
    /// as [`LinkEvent::Request`] from now on.
    pub fn accept(&mut self, peer: PeerId, stream: Stream) {
        let link = self.next_link;
        self.next_link += 1;
        // Link numbers grow with every link: the smallest is the oldest.
        let mut theirs: Vec<u64> = self
            .inbound
            .iter()
            .filter(|(_, l)| l.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        theirs.sort_unstable();
        while theirs.len() >= MAX_INBOUND_PER_DEVICE {
            let oldest = theirs.remove(0);
            if let Some(old) = self.inbound.remove(&oldest) {
                old.stop.cancel();
            }
        }
        let stop = self.stop.child_token();
        self.inbound.insert(
            link,
            InboundLink {
                peer,
                stop: stop.clone(),
            },
        );
        tokio::spawn(run_inbound(peer, link, stream, self.internal.clone(), stop));
    }

    /// The answer numbered `number` came from `peer` on `link`: what its request was for, if it
    /// is one this device sent there and still waits for.
    pub fn answered(&mut self, peer: PeerId, link: u64, number: u64) -> Option<Purpose> {
        match self.in_flight.get(&number) {
            Some(f) if f.peer == peer && f.link == link => {
                self.in_flight.remove(&number).map(|f| f.purpose)
            }
            _ => None,
        }
    }

    /// A link ended: the requests it leaves unanswered (if it was this device's).
    pub fn closed(&mut self, peer: PeerId, link: u64) -> Vec<Purpose> {
        if self.inbound.get(&link).is_some_and(|l| l.peer == peer) {
            self.inbound.remove(&link);
            return Vec::new();
        }
        if self.outbound.get(&peer).is_some_and(|l| l.link == link) {
            self.outbound.remove(&peer);
        }
        self.take_in_flight(|f| f.peer == peer && f.link == link)
    }

    /// `peer` is gone or no longer synced with: its links end; the requests they leave
    /// unanswered are returned.
    pub fn forget(&mut self, peer: PeerId) -> Vec<Purpose> {
        self.outbound.remove(&peer);
        self.inbound.retain(|_, l| {
            if l.peer == peer {
                l.stop.cancel();
            }
            l.peer != peer
        });
        self.take_in_flight(|f| f.peer == peer)
    }

    /// Requests unanswered for [`REQUEST_TIMEOUT`], now failed, with their devices.
    pub fn expired(&mut self, now: Instant) -> Vec<(PeerId, Purpose)> {
        let mut expired: Vec<(u64, PeerId, Purpose)> = Vec::new();
        self.in_flight.retain(|number, f| {
            let due = now.saturating_duration_since(f.sent) >= REQUEST_TIMEOUT;
            if due {
                expired.push((*number, f.peer, f.purpose));
            }
            !due
        });
        expired.sort_by_key(|(number, ..)| *number);
        expired
            .into_iter()
            .map(|(_, p, purpose)| (p, purpose))
            .collect()
    }

    fn take_in_flight(&mut self, which: impl Fn(&InFlight) -> bool) -> Vec<Purpose> {
        let mut taken: Vec<(u64, Purpose)> = Vec::new();
        self.in_flight.retain(|number, f| {
            let take = which(f);
            if take {
                taken.push((*number, f.purpose));
            }
            !take
        });
        taken.sort_by_key(|(number, _)| *number);
        taken.into_iter().map(|(_, purpose)| purpose).collect()
    }
}

/// The frame of `value`: its length, then its CBOR. `None` if it is larger than a frame may be.
fn encode<T: Serialize>(value: &T) -> Option<Bytes> {
    let mut bytes = cbor4ii::serde::to_vec(vec![0; LENGTH_BYTES], value).ok()?;
    let len = bytes.len() - LENGTH_BYTES;
    if len > MAX_FRAME_BYTES {
        return None;
    }
    bytes[..LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Some(Bytes::from(bytes))
}

/// Reads frames of `T` until the link ends.
struct Reader<R> {
    frames: FramedRead<R, LengthDelimitedCodec>,
}

/// Why reading a link stopped.
enum Ended {
    /// Closed, reset, or no longer needed.
    Closed,
    /// The other device sent what no honest device sends.
    Offence(String),
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(read: R) -> Reader<R> {
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(LENGTH_BYTES)
            .max_frame_length(MAX_FRAME_BYTES)
            .new_codec();
        Reader {
            frames: FramedRead::new(read, codec),
        }
    }

    /// The next frame: its number and what it carries (`None`: something this version does
    /// not know, or a frame without a readable number, which is skipped).
    async fn next<T: DeserializeOwned>(&mut self) -> Result<(Option<u64>, Option<T>), Ended> {
        let frame = match self.frames.next().await {
            None => return Err(Ended::Closed),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Ended::Offence(format!(
                    "a sync frame over the size limit: {e}"
                )));
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "a sync link ended");
                return Err(Ended::Closed);
            }
            Some(Ok(frame)) => frame,
        };
        match cbor4ii::serde::from_slice::<(u64, T)>(&frame) {
            Ok((number, value)) => Ok((Some(number), Some(value))),
            Err(cbor4ii::serde::DecodeError::Custom(why)) => {
                tracing::debug!(%why, "a sync frame this version does not know");
                let number = cbor4ii::serde::from_slice::<(u64, serde::de::IgnoredAny)>(&frame)
                    .ok()
                    .map(|(number, _)| number);
                Ok((number, None))
            }
            Err(e) => Err(Ended::Offence(format!(
                "a sync frame that does not decode: {e}"
            ))),
        }
    }
}

/// Writes queued frames, flushing once the queue is empty, until the queue closes or the
/// stream fails.
async fn write_frames<W: AsyncWrite + Unpin>(mut write: W, mut queued: mpsc::Receiver<Frame>) {
    while let Some(frame) = queued.recv().await {
        let mut written = write.write_all(&frame.bytes).await;
        drop(frame);
        while written.is_ok()
            && let Ok(frame) = queued.try_recv()
        {
            written = write.write_all(&frame.bytes).await;
        }
        let flushed = match written {
            Ok(()) => write.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            tracing::debug!(error = %e, "writing to a sync link failed");
            return;
        }
    }
}

async fn run_outbound(
    peer: PeerId,
    link: u64,
    mut control: libp2p_stream::Control,
    queued: mpsc::Receiver<Frame>,
    internal: mpsc::Sender<Internal>,
    stop: CancellationToken,
) {
    let ended = async {
        let stream = match control.open_stream(peer, PROTOCOL).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot open a sync link");
                return Ended::Closed;
            }
        };
        let (read, write) = tokio::io::split(stream.compat());
        let reading = async {
            let mut reader = Reader::new(read);
            loop {
                let (number, response) = match reader.next::<SyncResponse>().await {
                    Ok((Some(number), response)) => (number, response),
                    // Its request will have waited in vain.
                    Ok((None, _)) => continue,
                    Err(ended) => return ended,
                };
                let answer = LinkEvent::Answer {
                    peer,
                    link,
                    number,
                    response,
                };
                if internal.send(Internal::Link(answer)).await.is_err() {
                    return Ended::Closed;
                }
            }
        };
        tokio::select! {
            ended = reading => ended,
            () = write_frames(write, queued) => Ended::Closed,
        }
    };
    let ended = tokio::select! {
        _ = stop.cancelled() => return,
        ended = ended => ended,
    };
    report_closed(&internal, peer, link, ended).await;
}

async fn run_inbound(
    peer: PeerId,
    link: u64,
    stream: Stream,
    internal: mpsc::Sender<Internal>,
    stop: CancellationToken,
) {
    let (read, write) = tokio::io::split(stream.compat());
    // Room for every answer in flight: see `Links::respond`.
    let (frames, queued) = mpsc::channel(MAX_UNANSWERED);
    let places = Arc::new(Semaphore::new(MAX_UNANSWERED));
    let reading = async {
        let mut reader = Reader::new(read);
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return Ended::Closed;
            };
            let (number, request) = match reader.next::<SyncRequest>().await {
                Ok((Some(number), Some(request))) => (number, request),
                Ok((Some(number), None)) => {
                    let refused =
                        SyncResponse::Refused("a request this version does not know".into());
                    if let Some(bytes) = encode(&(number, refused)) {
                        let _ = frames.try_send(Frame {
                            bytes,
                            _place: Some(place),
                        });
                    }
                    continue;
                }
                Ok((None, _)) => continue,
                Err(ended) => return ended,
            };
            let reply = ReplyTo {
                peer,
                number,
                frames: frames.clone(),
                place,
            };
            let request = LinkEvent::Request { reply, request };
            if internal.send(Internal::Link(request)).await.is_err() {
                return Ended::Closed;
            }
        }
    };
    let ended = tokio::select! {
        _ = stop.cancelled() => return,
        ended = reading => ended,
        () = write_frames(write, queued) => Ended::Closed,
    };
    report_closed(&internal, peer, link, ended).await;
}

async fn report_closed(internal: &mpsc::Sender<Internal>, peer: PeerId, link: u64, ended: Ended) {
    let offence = match ended {
        Ended::Closed => None,
        Ended::Offence(why) => Some(why),
    };
    let closed = LinkEvent::Closed {
        peer,
        link,
        offence,
    };
    let _ = internal.send(Internal::Link(closed)).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_frame_is_its_length_then_its_cbor() {
        let request = SyncRequest::Pull {
            chat: "c".repeat(32),
        };
        let frame = encode(&(7u64, &request)).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let (number, back): (u64, SyncRequest) = cbor4ii::serde::from_slice(&frame[4..]).unwrap();
        assert_eq!(number, 7);
        assert!(matches!(back, SyncRequest::Pull { chat } if chat == "c".repeat(32)));
    }

    #[test]
    fn the_largest_summary_still_fits_in_a_frame() {
        use chatsync_model::{
            ChatId,
            sync::wire::{MAX_SUMMARY_CHATS, summary_to_wire},
        };
        // 50,000 chats with two heads each is more than 8 MiB of CBOR: the summary keeps the
        // most recently active chats that fit, and it encodes under the frame's limit.
        let head = "ab".repeat(32);
        let summary: Vec<(ChatId, Vec<String>)> = (0..MAX_SUMMARY_CHATS)
            .map(|i| {
                let chat = ChatId::new(format!("{i:032x}")).unwrap();
                (chat, vec![head.clone(), head.clone()])
            })
            .collect();
        let wire = summary_to_wire(&summary);
        assert!(wire.len() < summary.len(), "all {} chats fit", wire.len());
        assert!(wire.len() > 40_000, "only {} chats fit", wire.len());
        assert_eq!(
            wire[0].chat,
            summary[0].0.as_str(),
            "the first chats are kept"
        );
        let frame = encode(&(u64::MAX, &SyncRequest::Summary(wire))).unwrap();
        assert!(frame.len() <= MAX_FRAME_BYTES + LENGTH_BYTES);
    }

    #[test]
    fn a_frame_over_the_limit_is_not_built() {
        let request = SyncRequest::Roster(vec![0; MAX_FRAME_BYTES]);
        assert!(encode(&(0u64, &request)).is_none());
    }

    #[tokio::test]
    async fn a_reader_refuses_frames_over_the_limit_and_frames_that_do_not_decode() {
        let mut oversized = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0; 16]);
        let mut reader = Reader::new(&oversized[..]);
        assert!(matches!(
            reader.next::<SyncRequest>().await,
            Err(Ended::Offence(_))
        ));

        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0x00, 0x13]);
        let mut reader = Reader::new(&garbage[..]);
        assert!(matches!(
            reader.next::<SyncRequest>().await,
            Err(Ended::Offence(_))
        ));

        let mut reader = Reader::new(&[][..]);
        assert!(matches!(
            reader.next::<SyncRequest>().await,
            Err(Ended::Closed)
        ));
    }

    #[tokio::test]
    async fn a_request_this_version_does_not_know_is_skipped_not_held_against_its_sender() {
        #[derive(Serialize)]
        enum FromLater {
            Teleport { chat: String },
        }
        let frame = encode(&(
            9u64,
            FromLater::Teleport {
                chat: "family".into(),
            },
        ))
        .unwrap();
        let mut reader = Reader::new(&frame[..]);
        assert!(matches!(
            reader.next::<SyncRequest>().await,
            Ok((Some(9), None))
        ));
    }

    #[tokio::test]
    async fn frames_written_are_read_back_in_order() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = mpsc::channel(8);
        for number in 0..5u64 {
            let response = SyncResponse::Part {
                bytes: vec![number as u8; 1000 * number as usize],
            };
            let bytes = encode(&(number, &response)).unwrap();
            tx.send(Frame {
                bytes,
                _place: None,
            })
            .await
            .unwrap();
        }
        drop(tx);
        write_frames(client, rx).await;
        let mut reader = Reader::new(server);
        for expected in 0..5u64 {
            let (number, response) = reader.next::<SyncResponse>().await.ok().unwrap();
            assert_eq!(number, Some(expected));
            let response = response.unwrap();
            assert!(
                matches!(response, SyncResponse::Part { bytes } if bytes.len() == 1000 * expected as usize)
            );
        }
        assert!(matches!(
            reader.next::<SyncResponse>().await,
            Err(Ended::Closed)
        ));
    }
}
