//! The driver of the sync core ([`chatsync_model::sync::SyncCore`]): it feeds the core what
//! the links and the engine report, and carries out what the core decides. Requests and
//! answers go on the links to other devices (`links.rs`); document work runs on the engine in
//! tracked tasks (the swarm's loop never waits for it) whose results come back as
//! [`Internal`] messages. Every decision (what to send, when, what a failure means) is the
//! core's; nothing here keeps sync state (the links keep which request is whose).

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use chatsync_model::{
    ChatId, DeviceId,
    sync::{
        Comparison, Failure, Output, Request, Response, Token, Work,
        wire::{ChatHeads, MAX_SUMMARY_CHATS, summary_to_wire},
    },
};
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::{
    links::{LinkEvent, Purpose, ReplyTo},
    protocol::{SyncRequest, SyncResponse},
    task::NetworkTask,
};
use crate::engine::{Engine, EngineError, Relation, SyncRole, SyncStep, same_heads};

/// The sync core as the daemon runs it: devices are peer ids, answers go back on links.
pub type Core = chatsync_model::sync::SyncCore<PeerId, ReplyTo>;

/// Results of work done outside the network task's loop, back to it.
pub enum Internal {
    /// A step of the session this device runs ([`Work::Step`], [`Work::Receive`]).
    Stepped(PeerId, ChatId, Result<SyncStep, Failure>),
    /// A request's sync message was taken ([`Work::Answer`]); `None`: the chat is not here.
    Answered(PeerId, ChatId, ReplyTo, Result<Option<SyncStep>, Failure>),
    /// A chat was read for sending ([`Work::Export`]); `None`: the chat is not here.
    Exported(PeerId, ReplyTo, Result<Option<Vec<u8>>, Failure>),
    /// A whole chat was stored, or not ([`Work::Import`]).
    Imported(PeerId, ChatId, Result<(), Failure>),
    /// What a summary calls for: chats to fetch and chats to sync ([`Work::Compare`]).
    Planned(PeerId, Vec<ChatId>, Vec<ChatId>),
    /// The summary comparison with this device finished.
    Compared(PeerId, Comparison),
    Changed(BTreeSet<ChatId>),
    /// This device's roster, read for sending to this device.
    SendRoster(PeerId, Vec<u8>),
    /// This device's roster, to answer a roster request with.
    AnswerRoster(PeerId, ReplyTo, Vec<u8>),
    /// This device sent data no honest device sends, refused for this reason (`conduct.rs`).
    Misbehaved(PeerId, String),
    /// What a link read, or that it ended (`links.rs`).
    Link(LinkEvent),
    /// Evidence of an equivocation was taken, or not ([`Work::TakeEvidence`]); `false`: the chat
    /// is not here.
    EvidenceTaken(PeerId, ChatId, ReplyTo, Result<bool, Failure>),
}

/// How the engine's errors count for the other device.
fn failure(e: EngineError) -> Failure {
    if let EngineError::Equivocation(evidence) = e {
        Failure::Equivocation(evidence)
    } else if e.is_misbehaviour() {
        Failure::Offence(e.to_string())
    } else if e.is_refusal() {
        Failure::Refused(e.to_string())
    } else {
        Failure::Internal(e.to_string())
    }
}

fn device_of(peer: &PeerId) -> Option<DeviceId> {
    DeviceId::new(peer.to_base58()).ok()
}

/// Works out what another device's summary calls for: fetch the chats this one lacks, and
/// (if this device has the smaller id, so that only one side starts) sync those that differ.
/// Then works out, for `chatsync peers`, which side is ahead in each chat that differs.
async fn compare(
    engine: Arc<Engine>,
    me: PeerId,
    peer: PeerId,
    theirs: Vec<ChatHeads>,
    internal: mpsc::Sender<Internal>,
) {
    let began = Instant::now();
    let ours: std::collections::HashMap<ChatId, Vec<String>> =
        engine.summary(MAX_SUMMARY_CHATS).into_iter().collect();
    let initiator = me.to_bytes() < peer.to_bytes();
    let mut listed = std::collections::HashSet::new();
    let mut differing = Vec::new();
    let mut comparison = Comparison {
        began,
        behind: BTreeSet::new(),
        ahead: BTreeSet::new(),
    };
    let (mut fetch, mut start) = (Vec::new(), Vec::new());
    for entry in theirs {
        let Ok(chat) = ChatId::new(entry.chat) else {
            continue;
        };
        listed.insert(chat.clone());
        match ours.get(&chat) {
            None => {
                comparison.behind.insert(chat.clone());
                fetch.push(chat);
            }
            Some(heads) if !same_heads(heads, &entry.heads) => {
                if initiator {
                    if let Some(device) = device_of(&peer) {
                        engine.note_summary_heads(&device, &chat, &entry.heads);
                    }
                    start.push(chat.clone());
                }
                differing.push((chat, entry.heads));
            }
            Some(_) => {}
        }
    }
    let _ = internal.send(Internal::Planned(peer, fetch, start)).await;
    comparison
        .ahead
        .extend(ours.into_keys().filter(|chat| !listed.contains(chat)));
    for (chat, heads) in differing {
        match engine.compare_heads(&chat, &heads).await {
            Ok(Relation::Behind) => comparison.behind.insert(chat),
            Ok(Relation::Ahead) => comparison.ahead.insert(chat),
            Ok(Relation::Same) | Err(_) => false,
        };
    }
    let _ = internal.send(Internal::Compared(peer, comparison)).await;
}

impl NetworkTask {
    /// Carries out everything the core decided.
    pub(super) fn drive(&mut self) {
        while let Some(output) = self.sync.poll_output() {
            match output {
                Output::Send {
                    peer,
                    token,
                    request,
                } => self.send_request(peer, token, request),
                Output::Respond {
                    peer,
                    reply,
                    response,
                } => {
                    let response = match response {
                        // Worked out before the device was removed: it gets nothing now but
                        // the roster that tells it (`roster.rs`).
                        _ if !self.allowed.contains(&peer) => {
                            SyncResponse::Refused("not trusted".into())
                        }
                        Response::Summary => SyncResponse::Summary(self.summary()),
                        Response::Wire(response) => response,
                    };
                    self.respond(peer, reply, response);
                }
                Output::Work(work) => self.work(work),
                Output::ForgetSync { peer, chat } => {
                    if let Some(device) = device_of(&peer) {
                        self.engine.forget_sync(&device, &chat);
                    }
                }
                Output::Offence { peer, why } => self.offence(peer, &why),
                Output::RosterDue { peer } => self.send_roster(peer),
            }
        }
    }

    fn summary(&self) -> Vec<ChatHeads> {
        summary_to_wire(&self.engine.summary(MAX_SUMMARY_CHATS))
    }

    fn send_request(&mut self, peer: PeerId, token: Token, request: Request) {
        let request = match request {
            Request::Summary => SyncRequest::Summary(self.summary()),
            Request::Wire(request) => request,
        };
        tracing::trace!(%peer, ?request, "sync request");
        self.sync.count_traffic(peer, request.wire_len(), 0);
        let now = Instant::now();
        if let Err(purpose) = self.links.send(peer, &request, Purpose::Sync(token), now) {
            self.request_failed(peer, purpose, now);
        }
    }

    /// A request was not answered (its link ended, it waited too long, or it could not be
    /// sent).
    pub(super) fn request_failed(&mut self, peer: PeerId, purpose: Purpose, now: Instant) {
        match purpose {
            Purpose::Sync(token) => self.sync.failed(token, now),
            Purpose::Roster => self.roster_failed(peer),
        }
    }

    /// Fails the requests that waited too long for their answers.
    pub(super) fn expire_requests(&mut self) {
        let now = Instant::now();
        for (peer, purpose) in self.links.expired(now) {
            tracing::debug!(%peer, "a sync request had no answer in time");
            self.request_failed(peer, purpose, now);
        }
    }

    pub(super) fn respond(&mut self, peer: PeerId, reply: ReplyTo, response: SyncResponse) {
        self.sync.count_traffic(peer, response.wire_len(), 0);
        self.links.respond(reply, &response);
    }

    /// Runs document work on the engine in a tracked task; its result comes back as an
    /// [`Internal`] message.
    fn work(&mut self, work: Work<PeerId, ReplyTo>) {
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        match work {
            Work::Step { peer, chat } => {
                let Some(device) = device_of(&peer) else {
                    let step = Ok(SyncStep {
                        message: None,
                        in_sync: false,
                    });
                    self.sync.stepped(peer, chat, step, Instant::now());
                    return;
                };
                self.tasks.spawn(async move {
                    let step = engine.sync_message(&device, &chat).await.map_err(failure);
                    let _ = internal.send(Internal::Stepped(peer, chat, step)).await;
                });
            }
            Work::Receive {
                peer,
                chat,
                message,
            } => {
                let Some(device) = device_of(&peer) else {
                    let step = Err(Failure::Internal("not a device id".into()));
                    self.sync.stepped(peer, chat, step, Instant::now());
                    return;
                };
                self.tasks.spawn(async move {
                    let step = engine
                        .receive_sync(&device, &chat, SyncRole::Running, &message)
                        .await
                        .map_err(failure);
                    let _ = internal.send(Internal::Stepped(peer, chat, step)).await;
                });
            }
            Work::Answer {
                peer,
                chat,
                message,
                reply,
            } => {
                let Some(device) = device_of(&peer) else {
                    return;
                };
                self.tasks.spawn(async move {
                    let step = if engine.has_chat(&chat) {
                        engine
                            .receive_sync(&device, &chat, SyncRole::Answering, &message)
                            .await
                            .map(Some)
                            .map_err(failure)
                    } else {
                        Ok(None)
                    };
                    let _ = internal
                        .send(Internal::Answered(peer, chat, reply, step))
                        .await;
                });
            }
            Work::Export { peer, chat, reply } => {
                self.tasks.spawn(async move {
                    let document = if engine.has_chat(&chat) {
                        engine.export_chat(&chat).await.map(Some).map_err(failure)
                    } else {
                        Ok(None)
                    };
                    let _ = internal
                        .send(Internal::Exported(peer, reply, document))
                        .await;
                });
            }
            Work::Import {
                peer,
                chat,
                document,
            } => {
                self.tasks.spawn(async move {
                    let stored = engine.import_chat(&chat, &document).await.map_err(failure);
                    let _ = internal.send(Internal::Imported(peer, chat, stored)).await;
                });
            }
            Work::TakeEvidence {
                peer,
                chat,
                evidence,
                reply,
            } => {
                let Some(device) = device_of(&peer) else {
                    return;
                };
                self.tasks.spawn(async move {
                    let taken = if engine.has_chat(&chat) {
                        engine
                            .take_evidence(&device, &chat, &evidence)
                            .await
                            .map(|()| true)
                            .map_err(failure)
                    } else {
                        Ok(false)
                    };
                    let _ = internal
                        .send(Internal::EvidenceTaken(peer, chat, reply, taken))
                        .await;
                });
            }
            Work::Compare { peer, theirs } => {
                let me = *self.swarm.local_peer_id();
                self.tasks
                    .spawn(compare(engine, me, peer, theirs, internal));
            }
        }
    }

    pub(super) fn on_internal(&mut self, message: Internal) {
        let now = Instant::now();
        match message {
            Internal::Stepped(peer, chat, step) => self.sync.stepped(peer, chat, step, now),
            Internal::Answered(peer, chat, reply, step) => {
                self.sync.answered(peer, chat, reply, step, now)
            }
            Internal::Exported(peer, reply, document) => {
                self.sync.exported(peer, reply, document, now)
            }
            Internal::Imported(peer, chat, stored) => self.sync.imported(peer, chat, stored, now),
            Internal::EvidenceTaken(peer, chat, reply, taken) => {
                self.sync.evidence_taken(peer, chat, reply, taken, now)
            }
            Internal::Planned(peer, fetch, start) => self.sync.planned(peer, fetch, start, now),
            Internal::Compared(peer, comparison) => self.sync.compared(peer, comparison, now),
            Internal::Changed(chats) => self.sync.changed(&chats, now),
            Internal::SendRoster(peer, roster) => self.roster_ready(peer, roster),
            Internal::AnswerRoster(peer, reply, roster) => {
                self.respond(peer, reply, SyncResponse::Roster(roster))
            }
            Internal::Misbehaved(peer, why) => self.offence(peer, &why),
            Internal::Link(event) => self.on_link_event(event, now),
        }
        self.drive();
    }

    /// A device accepted the connection: the core trades summaries with it.
    pub(super) fn on_peer_accepted(&mut self, peer: PeerId) {
        self.sync.peer_up(peer, Instant::now());
        self.drive();
    }

    /// A device disconnected, or is no longer trusted: the core ends its sessions.
    pub(super) fn on_peer_gone(&mut self, peer: PeerId) {
        if let Some(device) = device_of(&peer) {
            self.engine.forget_peer(&device);
        }
        self.sync.peer_down(peer, Instant::now());
        // What was in flight to it is over for the core already (`peer_down`); a roster it
        // was being told fails (`roster.rs`).
        for purpose in self.links.forget(peer) {
            if purpose == Purpose::Roster {
                self.roster_failed(peer);
            }
        }
        self.drive();
    }

    fn on_answer(&mut self, peer: PeerId, purpose: Purpose, response: SyncResponse, now: Instant) {
        match purpose {
            Purpose::Roster => self.on_roster_response(peer, response),
            Purpose::Sync(token) => {
                self.sync.count_traffic(peer, 0, response.wire_len());
                self.sync.answer(token, response, now);
            }
        }
    }

    fn on_link_event(&mut self, event: LinkEvent, now: Instant) {
        match event {
            LinkEvent::Opened(peer, stream) => {
                // The gate keeps other devices from opening links at all; this is the second,
                // explicit check.
                if self.swarm.behaviour().gate.is_trusted(&peer) {
                    self.links.accept(peer, stream);
                } else {
                    tracing::warn!(%peer, "refused a sync link from a device outside the roster");
                }
            }
            LinkEvent::Request { reply, request } => {
                let peer = reply.peer();
                if !self.swarm.behaviour().gate.is_trusted(&peer) {
                    tracing::warn!(%peer, "refused a sync request from a device outside the roster");
                    return;
                }
                self.sync.count_traffic(peer, 0, request.wire_len());
                if self.admit_request(peer, &request) {
                    self.on_request(peer, request, reply);
                } else {
                    self.respond(peer, reply, SyncResponse::SlowDown);
                }
            }
            LinkEvent::Answer {
                peer,
                link,
                number,
                response,
            } => match self.links.answered(peer, link, number) {
                Some(purpose) => match response {
                    Some(response) => self.on_answer(peer, purpose, response, now),
                    None => self.request_failed(peer, purpose, now),
                },
                // Answered after it timed out, or a number this device never sent there.
                None => tracing::debug!(%peer, number, "an answer to no request in flight"),
            },
            LinkEvent::Closed {
                peer,
                link,
                offence,
            } => {
                if let Some(why) = offence {
                    self.offence(peer, &why);
                }
                for purpose in self.links.closed(peer, link) {
                    self.request_failed(peer, purpose, now);
                }
            }
        }
    }

    fn on_request(&mut self, peer: PeerId, request: SyncRequest, reply: ReplyTo) {
        if !self.allowed.contains(&peer) {
            // Being removed: it may still learn that (see `roster.rs`), nothing else.
            match request {
                SyncRequest::Roster(_) => self.on_roster_request(peer, false, reply),
                _ => self.respond(peer, reply, SyncResponse::Refused("not trusted".into())),
            }
            return;
        }
        match request {
            SyncRequest::Roster(theirs) => {
                self.merge_roster(peer, theirs);
                self.on_roster_request(peer, true, reply);
            }
            request => self.sync.request(peer, request, reply, Instant::now()),
        }
    }
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
