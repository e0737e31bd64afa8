//! The sync protocol's links as another device speaks them, written from docs/protocol.md
//! (section 2) rather than from the daemon's code, so that the two can disagree: one stream
//! each way, frames of a 4-byte big-endian length then CBOR, `[number, request]` on the link a
//! device opens and `[number, answer]` back on it.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use chatsync_daemon::net::protocol::{PROTOCOL, SyncRequest, SyncResponse};
use futures_util::StreamExt;
use libp2p::{PeerId, Stream};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncRead, AsyncWriteExt},
    sync::mpsc,
};
use tokio_util::{
    codec::{FramedRead, LengthDelimitedCodec},
    compat::FuturesAsyncReadCompatExt,
};

/// What the links bring.
pub enum LinkEvent {
    /// The daemon asked something: answer with [`Reply::send`], or drop it unanswered.
    Request(SyncRequest, Reply),
    /// The answer to the request of this number.
    Answer(u64, SyncResponse),
    /// The link this device opened ended: these requests get no answer.
    Failed(Vec<u64>),
}

/// The way back for one of the daemon's requests.
pub struct Reply {
    number: u64,
    frames: mpsc::UnboundedSender<Vec<u8>>,
}

impl Reply {
    pub fn send(self, response: SyncResponse) {
        let _ = self.frames.send(frame(&(self.number, response)));
    }
}

/// This device's link to the daemon and the daemon's links to it.
pub struct LinkClient {
    control: libp2p_stream::Control,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    outbound: Option<mpsc::UnboundedSender<(u64, Vec<u8>)>>,
    next_number: u64,
}

impl LinkClient {
    /// Takes the links the daemon opens from now on.
    pub fn new(mut control: libp2p_stream::Control) -> LinkClient {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut incoming = control.accept(PROTOCOL).unwrap();
        let to_events = events_tx.clone();
        tokio::spawn(async move {
            while let Some((_, stream)) = incoming.next().await {
                tokio::spawn(serve(stream, to_events.clone()));
            }
        });
        LinkClient {
            control,
            events_tx,
            events,
            outbound: None,
            next_number: 0,
        }
    }

    /// Sends a request on this device's link to `peer` (opened if there is none); its number.
    pub fn send(&mut self, peer: PeerId, request: &SyncRequest) -> u64 {
        let number = self.next_number;
        self.next_number += 1;
        if self.outbound.as_ref().is_none_or(|o| o.is_closed()) {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(ask(self.control.clone(), peer, rx, self.events_tx.clone()));
            self.outbound = Some(tx);
        }
        if let Some(outbound) = &self.outbound {
            let _ = outbound.send((number, frame(&(number, request))));
        }
        number
    }

    pub async fn next(&mut self) -> LinkEvent {
        // Never closed: this holds a sender.
        self.events.recv().await.unwrap()
    }
}

fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let body = cbor4ii::serde::to_vec(Vec::new(), value).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn frames<R: AsyncRead>(read: R) -> FramedRead<R, LengthDelimitedCodec> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(16 << 20)
        .new_codec();
    FramedRead::new(read, codec)
}

fn decode<T: DeserializeOwned>(frame: &[u8]) -> Option<(u64, T)> {
    cbor4ii::serde::from_slice(frame).ok()
}

/// This device's link: writes its requests, reads the answers; when it ends, whatever is
/// unanswered fails.
async fn ask(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut requests: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let open: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    if let Ok(stream) = control.open_stream(peer, PROTOCOL).await {
        let (read, mut write) = tokio::io::split(stream.compat());
        let writing = async {
            while let Some((number, bytes)) = requests.recv().await {
                open.lock().unwrap().insert(number);
                if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                    return;
                }
            }
        };
        let reading = async {
            let mut answers = frames(read);
            while let Some(Ok(bytes)) = answers.next().await {
                let Some((number, answer)) = decode::<SyncResponse>(&bytes) else {
                    return;
                };
                open.lock().unwrap().remove(&number);
                let _ = events.send(LinkEvent::Answer(number, answer));
            }
        };
        tokio::select! {
            () = writing => {}
            () = reading => {}
        }
    }
    requests.close();
    let mut failed: Vec<u64> = std::mem::take(&mut *open.lock().unwrap())
        .into_iter()
        .collect();
    while let Ok((number, _)) = requests.try_recv() {
        failed.push(number);
    }
    let _ = events.send(LinkEvent::Failed(failed));
}

/// A link the daemon opened: its requests become events, their replies go back on it.
async fn serve(stream: Stream, events: mpsc::UnboundedSender<LinkEvent>) {
    let (read, mut write) = tokio::io::split(stream.compat());
    let (replies, mut to_write) = mpsc::unbounded_channel::<Vec<u8>>();
    let reading = async {
        let mut requests = frames(read);
        while let Some(Ok(bytes)) = requests.next().await {
            let Some((number, request)) = decode::<SyncRequest>(&bytes) else {
                return;
            };
            let reply = Reply {
                number,
                frames: replies.clone(),
            };
            let _ = events.send(LinkEvent::Request(request, reply));
        }
    };
    let writing = async {
        while let Some(bytes) = to_write.recv().await {
            if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reading => {}
        () = writing => {}
    }
}
