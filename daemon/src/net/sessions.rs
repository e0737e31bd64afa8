//! Chat sync over the network task's connections: summaries on connect, sync rounds per device
//! and chat, fetches of missing chats. The engine does the document work in spawned tasks (the
//! swarm's loop never waits for it); their results come back as [`Internal`] messages.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use chatsync_model::{ChatId, DeviceId};
use libp2p::{
    PeerId,
    request_response::{self, OutboundRequestId, ResponseChannel},
};
use tokio::sync::mpsc;

use super::{
    protocol::{ChatHeads, SyncRequest, SyncResponse},
    task::NetworkTask,
};
use crate::engine::{Engine, EngineError};

/// Messages from spawned sync work back to the network task.
pub enum Internal {
    Send(PeerId, SyncRequest, Pending),
    Respond(ResponseChannel<SyncResponse>, SyncResponse),
    /// Run a sync session with this device about this chat.
    Start(PeerId, ChatId),
    /// The session with this device about this chat is over.
    Done(PeerId, ChatId),
    Changed(BTreeSet<ChatId>),
}

/// What an outbound request was for.
#[derive(Debug)]
pub enum Pending {
    Summary,
    Sync(ChatId),
    Fetch(ChatId),
}

/// Requests in flight to one device at most; the rest wait in its queue. Below the other
/// side's stream limit, which drops what is over it.
const MAX_IN_FLIGHT: usize = 16;
/// Requests queued for one device at most (one per chat is the usual worst case).
const MAX_QUEUED: usize = 64 * 1024;

/// The network task's sync book-keeping. Bounded by devices x chats.
#[derive(Default)]
pub struct Sessions {
    pub outbound: HashMap<OutboundRequestId, (PeerId, Pending)>,
    /// Requests waiting for a free slot, per device.
    pub queued: HashMap<PeerId, VecDeque<(SyncRequest, Pending)>>,
    /// Requests in flight, per device.
    pub in_flight: HashMap<PeerId, usize>,
    /// Sessions under way, one per device and chat.
    pub running: HashSet<(PeerId, ChatId)>,
    /// Sessions to run again when the current one ends (a change arrived meanwhile).
    pub again: HashSet<(PeerId, ChatId)>,
}

fn device_of(peer: &PeerId) -> Option<DeviceId> {
    DeviceId::new(peer.to_base58()).ok()
}

fn to_wire(summary: &[(ChatId, Vec<String>)]) -> Vec<ChatHeads> {
    summary
        .iter()
        .map(|(chat, heads)| ChatHeads {
            chat: chat.to_string(),
            heads: heads.clone(),
        })
        .collect()
}

/// Decides what to do about another device's summary: fetch the chats this one lacks, and
/// (if this device has the smaller id, so that only one side starts) sync those that differ.
fn compare(
    ours: Vec<(ChatId, Vec<String>)>,
    me: &PeerId,
    peer: PeerId,
    theirs: Vec<ChatHeads>,
    internal: &mpsc::Sender<Internal>,
) {
    let ours: HashMap<ChatId, Vec<String>> = ours.into_iter().collect();
    let initiator = me.to_bytes() < peer.to_bytes();
    for entry in theirs {
        let Ok(chat) = ChatId::new(entry.chat) else {
            continue;
        };
        let message = match ours.get(&chat) {
            None => Internal::Send(
                peer,
                SyncRequest::Fetch {
                    chat: chat.to_string(),
                },
                Pending::Fetch(chat),
            ),
            Some(heads) if initiator && *heads != entry.heads => Internal::Start(peer, chat),
            Some(_) => continue,
        };
        if internal.try_send(message).is_err() {
            tracing::debug!(%peer, "sync queue full; the rest waits for the next exchange");
            return;
        }
    }
}

impl NetworkTask {
    /// A device accepted the connection: tell it what this device has.
    pub(super) fn on_peer_accepted(&mut self, peer: PeerId) {
        let summary = to_wire(&self.engine.summary());
        self.send(peer, SyncRequest::Summary(summary), Pending::Summary);
    }

    pub(super) fn on_peer_gone(&mut self, peer: PeerId) {
        if let Some(device) = device_of(&peer) {
            self.engine.forget_peer(&device);
        }
        self.sessions.running.retain(|(p, _)| *p != peer);
        self.sessions.again.retain(|(p, _)| *p != peer);
        self.sessions.queued.remove(&peer);
        self.sessions.in_flight.remove(&peer);
        self.sessions.outbound.retain(|_, (p, _)| *p != peer);
    }

    /// Anti-entropy: trade summaries again with every connected device, so that anything a
    /// lost request left out is found and synced.
    pub(super) fn resummarize(&mut self) {
        for peer in self.accepted_peers() {
            self.on_peer_accepted(peer);
        }
    }

    /// A request to `peer` finished (answered or failed): send the next queued one.
    fn request_finished(&mut self, peer: PeerId) {
        if let Some(n) = self.sessions.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        let next = self
            .sessions
            .queued
            .get_mut(&peer)
            .and_then(VecDeque::pop_front);
        if let Some((request, pending)) = next {
            self.send(peer, request, pending);
        }
    }

    pub(super) fn send(&mut self, peer: PeerId, request: SyncRequest, pending: Pending) {
        if !self.swarm.is_connected(&peer) {
            if let Pending::Sync(chat) = pending {
                self.sessions.running.remove(&(peer, chat));
            }
            return;
        }
        let in_flight = self.sessions.in_flight.entry(peer).or_default();
        if *in_flight >= MAX_IN_FLIGHT {
            let queue = self.sessions.queued.entry(peer).or_default();
            if queue.len() < MAX_QUEUED {
                queue.push_back((request, pending));
            } else if let Pending::Sync(chat) = pending {
                // Dropped: the next summary exchange finds what it would have synced.
                self.sessions.running.remove(&(peer, chat));
            }
            return;
        }
        *in_flight += 1;
        tracing::trace!(%peer, ?pending, "sync request");
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.sessions.outbound.insert(id, (peer, pending));
    }

    pub(super) fn on_internal(&mut self, message: Internal) {
        match message {
            Internal::Send(peer, request, pending) => self.send(peer, request, pending),
            Internal::Respond(channel, response) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response);
            }
            Internal::Start(peer, chat) => self.start_session(peer, chat),
            Internal::Done(peer, chat) => {
                let key = (peer, chat);
                self.sessions.running.remove(&key);
                if self.sessions.again.remove(&key) {
                    self.start_session(key.0, key.1);
                }
            }
            Internal::Changed(chats) => {
                let peers: Vec<PeerId> = self.accepted_peers();
                for peer in peers {
                    for chat in &chats {
                        self.start_session(peer, chat.clone());
                    }
                }
            }
        }
    }

    /// Starts a sync session, or marks it to run again if one is under way.
    fn start_session(&mut self, peer: PeerId, chat: ChatId) {
        let key = (peer, chat);
        if self.sessions.running.contains(&key) {
            self.sessions.again.insert(key);
            return;
        }
        let (peer, chat) = key.clone();
        self.sessions.running.insert(key);
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        tokio::spawn(async move {
            let next = match device_of(&peer) {
                Some(device) => engine.sync_message(&device, &chat).await,
                None => Ok(None),
            };
            let _ = internal
                .send(next_step(peer, chat, next, "starting a sync session"))
                .await;
        });
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((_, pending)) = self.sessions.outbound.remove(&request_id) {
                        self.request_finished(peer);
                        self.on_response(peer, pending, response);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                if let Some((_, pending)) = self.sessions.outbound.remove(&request_id) {
                    self.request_finished(peer);
                    if let Pending::Sync(chat) = pending {
                        self.sessions.running.remove(&(peer, chat));
                    }
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "answering a sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        let me = *self.swarm.local_peer_id();
        let Some(device) = device_of(&peer) else {
            return;
        };
        tokio::spawn(async move {
            let response = match request {
                SyncRequest::Summary(theirs) => {
                    let ours = engine.summary();
                    let response = SyncResponse::Summary(to_wire(&ours));
                    compare(ours, &me, peer, theirs, &internal);
                    response
                }
                SyncRequest::Sync { chat, message } => match ChatId::new(chat) {
                    Ok(chat) if engine.has_chat(&chat) => {
                        match engine.receive_sync(&device, &chat, &message).await {
                            Ok(reply) => SyncResponse::Sync { message: reply },
                            Err(e) => refused(&peer, e),
                        }
                    }
                    Ok(chat) => {
                        // A chat this device lacks: get it whole.
                        let _ = internal
                            .send(Internal::Send(
                                peer,
                                SyncRequest::Fetch {
                                    chat: chat.to_string(),
                                },
                                Pending::Fetch(chat),
                            ))
                            .await;
                        SyncResponse::Unknown
                    }
                    Err(e) => SyncResponse::Refused(e.to_string()),
                },
                SyncRequest::Fetch { chat } => match ChatId::new(chat) {
                    Ok(chat) if engine.has_chat(&chat) => match engine.export_chat(&chat).await {
                        Ok(bytes) => SyncResponse::Document { bytes },
                        Err(e) => refused(&peer, e),
                    },
                    Ok(_) => SyncResponse::Unknown,
                    Err(e) => SyncResponse::Refused(e.to_string()),
                },
            };
            let _ = internal.send(Internal::Respond(channel, response)).await;
        });
    }

    fn on_response(&mut self, peer: PeerId, pending: Pending, response: SyncResponse) {
        tracing::trace!(%peer, ?pending, "sync response");
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        let me = *self.swarm.local_peer_id();
        let Some(device) = device_of(&peer) else {
            return;
        };
        tokio::spawn(async move {
            match (pending, response) {
                (Pending::Summary, SyncResponse::Summary(theirs)) => {
                    compare(engine.summary(), &me, peer, theirs, &internal);
                }
                (Pending::Sync(chat), SyncResponse::Sync { message }) => {
                    let next = match message {
                        Some(m) => engine.receive_sync(&device, &chat, &m).await,
                        None => engine.sync_message(&device, &chat).await,
                    };
                    let _ = internal
                        .send(next_step(peer, chat, next, "a sync round"))
                        .await;
                }
                (Pending::Sync(chat), other) => {
                    if let SyncResponse::Refused(why) = other {
                        tracing::debug!(%peer, %chat, %why, "sync refused");
                    }
                    let _ = internal.send(Internal::Done(peer, chat)).await;
                }
                (Pending::Fetch(chat), SyncResponse::Document { bytes }) => {
                    match engine.import_chat(&chat, &bytes).await {
                        // Catch up with anything written after the document was saved.
                        Ok(()) => {
                            let _ = internal.send(Internal::Start(peer, chat)).await;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, %chat, error = %e, "could not store a chat")
                        }
                    }
                }
                (pending, response) => {
                    tracing::debug!(%peer, ?pending, ?response, "unexpected sync response");
                }
            }
        });
    }

    fn accepted_peers(&self) -> Vec<PeerId> {
        self.book
            .peers
            .iter()
            .filter(|(_, e)| e.accepted)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// After one step of a session: send the next message, or end the session.
fn next_step(
    peer: PeerId,
    chat: ChatId,
    next: Result<Option<Vec<u8>>, EngineError>,
    what: &str,
) -> Internal {
    match next {
        Ok(Some(message)) => Internal::Send(
            peer,
            SyncRequest::Sync {
                chat: chat.to_string(),
                message,
            },
            Pending::Sync(chat),
        ),
        Ok(None) => Internal::Done(peer, chat),
        Err(e) => {
            tracing::warn!(%peer, %chat, error = %e, "{what} failed");
            Internal::Done(peer, chat)
        }
    }
}

fn refused(peer: &PeerId, e: EngineError) -> SyncResponse {
    tracing::warn!(%peer, error = %e, "refused a sync request");
    SyncResponse::Refused(e.to_string())
}

/// Forwards the engine's locally changed chats to the network task until it stops.
pub async fn forward_changes(engine: Arc<Engine>, internal: mpsc::Sender<Internal>) {
    loop {
        let chats = engine.changed_chats().await;
        if internal.send(Internal::Changed(chats)).await.is_err() {
            return;
        }
    }
}
