//! Chat sync over the network task's connections: summaries on connect, sync rounds per device
//! and chat, fetches of missing chats, and large payloads pulled in parts. The engine does the
//! document work in spawned tasks (the swarm's loop never waits for it); their results come
//! back as [`Internal`] messages.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_model::{ChatId, DeviceId};
use libp2p::{
    PeerId,
    request_response::{self, OutboundRequestId, ResponseChannel},
};
use tokio::sync::mpsc;

use super::{
    progress::Comparison,
    protocol::{
        ChatHeads, MAX_SUMMARY_BYTES, MAX_SUMMARY_CHATS, MAX_SUMMARY_HEADS, Payload, SLOW_DOWN,
        SyncRequest, SyncResponse,
    },
    task::NetworkTask,
    transfers::{Incoming, Progress as PullProgress, Purpose},
};
use crate::engine::{Engine, EngineError, Relation, SyncRole, SyncStep, same_heads};

/// Messages from spawned sync work back to the network task.
pub enum Internal {
    /// Fetch this chat whole from this device, unless it is already on its way.
    Fetch(PeerId, ChatId),
    Respond(PeerId, ResponseChannel<SyncResponse>, SyncResponse),
    /// Run a sync session with this device about this chat.
    Start(PeerId, ChatId),
    /// A step of the session with this device about this chat was computed.
    Step(PeerId, ChatId, Result<SyncStep, EngineError>),
    /// A sync request from this device about this chat was answered; its state is as shown.
    Answered(PeerId, ChatId, bool),
    /// A fetch of a whole chat from this device ended (stored, or not).
    Fetched(PeerId, ChatId, bool),
    /// A summary comparison with this device finished.
    Compared(PeerId, Comparison),
    Changed(BTreeSet<ChatId>),
    /// This device's roster, read for sending to this device.
    SendRoster(PeerId, Vec<u8>),
    /// This device sent data no honest device sends, refused for this reason (`conduct.rs`).
    Misbehaved(PeerId, String),
    /// Data from this device was refused without blame (changes this one cannot prove yet,
    /// by devices it does not know yet, or too many at once).
    Refused(PeerId),
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
    Roster,
}

/// Requests in flight to one device at most; the rest wait in its queue. Below the other
/// side's stream limit, which drops what is over it.
const MAX_IN_FLIGHT: usize = 16;
/// Requests queued for one device at most (one per chat is the usual worst case).
const MAX_QUEUED: usize = 64 * 1024;
/// Rounds one session runs at most. Each round can carry any number of changes, so an honest
/// session needs a handful; one that goes on is two devices trading the same heads and needs
/// again and again (one needs a change the other cannot send yet). It ends, logged; the chat
/// then counts as stalled and starts afresh (`progress::STALLED_AFTER`) instead of costing a
/// round trip after round trip for as long as that lasts.
const MAX_SESSION_ROUNDS: u32 = 200;
/// How long nothing new is sent to a device that said "slow down" (`conduct.rs`). With at most
/// [`MAX_IN_FLIGHT`] requests refused per pause, an honest device stays far from the refusals
/// that count as flooding.
const SLOW_DOWN_PAUSE: Duration = Duration::from_secs(1);

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
    /// Requests each running session has sent (see [`MAX_SESSION_ROUNDS`]).
    pub rounds: HashMap<(PeerId, ChatId), u32>,
    /// Chats being fetched whole (from one device at a time, so each arrives once).
    pub fetching: HashSet<ChatId>,
    /// Devices that said "slow down", and until when their requests wait in their queue.
    pub paused: HashMap<PeerId, Instant>,
    /// Devices to trade summaries with again soon, and when (see [`RECHECK_AFTER`]).
    pub recheck: HashMap<PeerId, Instant>,
    /// When summaries were last traded early with each device.
    pub rechecked: HashMap<PeerId, Instant>,
}

/// How long after a session with it ends a device whose chats still look apart is sent a
/// summary again (once no session with it is left), rather than at the next periodic exchange.
///
/// Why: a session can end with both devices in sync while one of them cannot tell. When the
/// last changes of a chat went out in this device's answer to the other's request, and the
/// other then had nothing more to say, Automerge here still waits for an answer and never
/// learns the other's new heads; the chat would show as "ahead" for up to 30 s. A summary
/// carries every chat's heads and settles the picture for both.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Early summary trades with one device, at most one per this.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Pending {
    /// The chat this request fetches whole, if it does.
    fn fetch(&self) -> Option<&ChatId> {
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

/// The devices whose time in `times` has come.
fn due(times: &HashMap<PeerId, Instant>, now: Instant) -> Vec<PeerId> {
    times
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(peer, _)| *peer)
        .collect()
}

fn device_of(peer: &PeerId) -> Option<DeviceId> {
    DeviceId::new(peer.to_base58()).ok()
}

/// A summary as it goes on the wire: the most recently active chats first, as many as fit in
/// [`MAX_SUMMARY_BYTES`] (a summary cut by the codec's size limit would never decode, and the
/// two devices would never compare their chats again).
fn to_wire(summary: &[(ChatId, Vec<String>)]) -> Vec<ChatHeads> {
    let mut budget = MAX_SUMMARY_BYTES;
    let mut out = Vec::with_capacity(summary.len());
    for (chat, heads) in summary {
        let heads: Vec<String> = heads.iter().take(MAX_SUMMARY_HEADS).cloned().collect();
        let cost = summary_entry_bytes(chat.as_str(), &heads);
        if cost > budget {
            break;
        }
        budget -= cost;
        out.push(ChatHeads {
            chat: chat.to_string(),
            heads,
        });
    }
    out
}

/// An upper bound of one summary entry's CBOR size: a two-entry map, its keys, the chat id, and
/// each head (64 hex characters) with its string header.
fn summary_entry_bytes(chat: &str, heads: &[String]) -> usize {
    16 + chat.len() + heads.iter().map(|h| h.len() + 3).sum::<usize>()
}

/// Decides what to do about another device's summary: fetch the chats this one lacks, and
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
    let ours: HashMap<ChatId, Vec<String>> =
        engine.summary(MAX_SUMMARY_CHATS).into_iter().collect();
    let initiator = me.to_bytes() < peer.to_bytes();
    let mut listed = HashSet::new();
    let mut differing = Vec::new();
    let mut comparison = Comparison {
        began,
        behind: BTreeSet::new(),
        ahead: BTreeSet::new(),
    };
    let mut actions = Vec::new();
    for entry in theirs {
        let Ok(chat) = ChatId::new(entry.chat) else {
            continue;
        };
        listed.insert(chat.clone());
        match ours.get(&chat) {
            None => {
                comparison.behind.insert(chat.clone());
                actions.push(Internal::Fetch(peer, chat));
            }
            Some(heads) if !same_heads(heads, &entry.heads) => {
                if initiator {
                    actions.push(Internal::Start(peer, chat.clone()));
                }
                differing.push((chat, entry.heads));
            }
            Some(_) => {}
        }
    }
    for action in actions {
        if internal.try_send(action).is_err() {
            tracing::debug!(%peer, "sync queue full; the rest waits for the next exchange");
            break;
        }
    }
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
    /// A device accepted the connection: tell it what this device has.
    pub(super) fn on_peer_accepted(&mut self, peer: PeerId) {
        self.resume_transfers(peer);
        self.send_roster(peer);
        self.send_summary(peer);
    }

    fn send_summary(&mut self, peer: PeerId) {
        let summary = to_wire(&self.engine.summary(MAX_SUMMARY_CHATS));
        self.send(peer, SyncRequest::Summary(summary), Pending::Summary);
    }

    /// Trades summaries with the devices due for it (see [`RECHECK_AFTER`]).
    pub(super) fn recheck_due(&mut self) {
        let now = Instant::now();
        for peer in due(&self.sessions.recheck, now) {
            self.sessions.recheck.remove(&peer);
            if !self.looks_apart(peer) || !self.accepted_peers().contains(&peer) {
                continue;
            }
            // Sessions still running may yet settle the picture: look again once they end.
            if self.sessions.running.iter().any(|(p, _)| *p == peer) {
                self.sessions.recheck.insert(peer, now + RECHECK_AFTER);
                continue;
            }
            self.sessions.rechecked.insert(peer, now);
            self.send_summary(peer);
        }
    }

    /// Whether some chat is known to differ between this device and `peer`.
    fn looks_apart(&self, peer: PeerId) -> bool {
        self.progress
            .get(&peer)
            .and_then(|p| p.counts())
            .is_some_and(|(behind, ahead)| behind + ahead > 0)
    }

    /// Schedules an early summary trade with `peer` if its chats still look apart; it happens
    /// once no session with it is left ([`Self::recheck_due`], so that ending a session costs
    /// no scan of the running ones).
    fn recheck_when_idle(&mut self, peer: PeerId) {
        if !self.looks_apart(peer) {
            return;
        }
        let now = Instant::now();
        let earliest = self
            .sessions
            .rechecked
            .get(&peer)
            .map_or(now, |at| *at + RECHECK_EVERY);
        self.sessions
            .recheck
            .entry(peer)
            .or_insert((now + RECHECK_AFTER).max(earliest));
    }

    pub(super) fn on_peer_gone(&mut self, peer: PeerId) {
        if let Some(device) = device_of(&peer) {
            self.engine.forget_peer(&device);
        }
        self.keep_cut_transfers(peer);
        self.sessions.running.retain(|(p, _)| *p != peer);
        self.sessions.again.retain(|(p, _)| *p != peer);
        self.sessions.rounds.retain(|(p, _), _| *p != peer);
        self.sessions.recheck.remove(&peer);
        self.sessions.rechecked.remove(&peer);
        let queued = self.sessions.queued.remove(&peer).unwrap_or_default();
        self.sessions.in_flight.remove(&peer);
        self.sessions.paused.remove(&peer);
        let fetching = &mut self.sessions.fetching;
        for (_, pending) in queued {
            if let Some(chat) = pending.fetch() {
                fetching.remove(chat);
            }
        }
        self.sessions.outbound.retain(|_, (p, pending)| {
            if *p == peer
                && let Some(chat) = pending.fetch()
            {
                fetching.remove(chat);
            }
            *p != peer
        });
        self.progress.disconnected(&peer);
    }

    /// Anti-entropy: trade summaries again with every connected device, so that anything a
    /// lost request left out is found and synced.
    pub(super) fn resummarize(&mut self) {
        self.outbox.expire(Instant::now());
        for peer in self.accepted_peers() {
            self.on_peer_accepted(peer);
        }
    }

    /// A request to `peer` finished (answered or failed): send the next queued one.
    fn request_finished(&mut self, peer: PeerId) {
        if let Some(n) = self.sessions.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
        if self.sessions.paused.contains_key(&peer) {
            return;
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

    /// Fetches a chat whole, unless it is already on its way from some device.
    fn fetch(&mut self, peer: PeerId, chat: ChatId) {
        if self.sessions.fetching.insert(chat.clone()) {
            let request = SyncRequest::Fetch {
                chat: chat.to_string(),
            };
            self.send(peer, request, Pending::Fetch(chat));
        }
    }

    pub(super) fn send(&mut self, peer: PeerId, request: SyncRequest, pending: Pending) {
        // A device being removed stays connected until it is told (`roster.rs`), and hears
        // nothing else: not the sessions that changes made meanwhile start.
        let told_only = !self.allowed.contains(&peer) && !matches!(pending, Pending::Roster);
        if told_only || !self.swarm.is_connected(&peer) {
            self.abandon(peer, pending);
            return;
        }
        let paused = self.sessions.paused.contains_key(&peer);
        let in_flight = self.sessions.in_flight.entry(peer).or_default();
        if paused || *in_flight >= MAX_IN_FLIGHT {
            let queue = self.sessions.queued.entry(peer).or_default();
            if queue.len() < MAX_QUEUED {
                queue.push_back((request, pending));
            } else {
                // Dropped: the next summary exchange finds what it would have synced.
                self.abandon(peer, pending);
            }
            return;
        }
        *in_flight += 1;
        tracing::trace!(%peer, ?request, "sync request");
        self.progress.sent(peer, request.wire_len());
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.sessions.outbound.insert(id, (peer, pending));
    }

    /// `peer` said "slow down": nothing new goes to it for a while, and what it refused is
    /// asked again after the pause (a sync session starts afresh).
    fn slow_down(&mut self, peer: PeerId, pending: Pending) {
        tracing::debug!(%peer, "a device asked this one to slow down");
        self.sessions
            .paused
            .insert(peer, Instant::now() + SLOW_DOWN_PAUSE);
        match pending {
            Pending::Fetch(chat) => {
                self.sessions.fetching.remove(&chat);
                self.fetch(peer, chat);
            }
            Pending::Sync(chat) => {
                if let Some(device) = device_of(&peer) {
                    self.engine.forget_sync(&device, &chat);
                }
                self.session_over(peer, chat.clone());
                self.start_session(peer, chat);
            }
            Pending::Pull(chat) => {
                let request = SyncRequest::Pull {
                    chat: chat.to_string(),
                };
                self.send(peer, request, Pending::Pull(chat));
            }
            Pending::Part(incoming) => self.pull_next(peer, incoming),
            Pending::Summary => {
                let summary = to_wire(&self.engine.summary(MAX_SUMMARY_CHATS));
                self.send(peer, SyncRequest::Summary(summary), Pending::Summary);
            }
            Pending::Roster => self.send_roster(peer),
        }
    }

    /// Sends what waited for devices whose pause is over.
    pub(super) fn resume_paused(&mut self) {
        for peer in due(&self.sessions.paused, Instant::now()) {
            self.sessions.paused.remove(&peer);
            let free = MAX_IN_FLIGHT
                .saturating_sub(self.sessions.in_flight.get(&peer).copied().unwrap_or(0));
            for _ in 0..free {
                let Some((request, pending)) = self
                    .sessions
                    .queued
                    .get_mut(&peer)
                    .and_then(VecDeque::pop_front)
                else {
                    break;
                };
                self.send(peer, request, pending);
            }
        }
    }

    /// A request was not sent or not answered: end the session it belonged to.
    fn abandon(&mut self, peer: PeerId, pending: Pending) {
        if let Some(chat) = pending.fetch() {
            self.sessions.fetching.remove(chat);
        }
        match pending {
            Pending::Sync(chat) | Pending::Pull(chat) => {
                // The other device may or may not have taken what went out: the next session
                // starts from fresh state rather than assume it did.
                if let Some(device) = device_of(&peer) {
                    self.engine.forget_sync(&device, &chat);
                }
                self.session_over(peer, chat)
            }
            Pending::Part(incoming) => {
                // Kept to resume (`resume.rs`) unless it was cut too often.
                if let Some(incoming) = self.keep_cut_transfer(peer, incoming)
                    && let Purpose::Sync(chat) = incoming.purpose
                {
                    self.session_over(peer, chat);
                }
            }
            Pending::Summary | Pending::Fetch(_) => {}
            Pending::Roster => {
                if self.removing.contains_key(&peer) {
                    self.finish_removals(true);
                }
            }
        }
    }

    pub(super) fn on_internal(&mut self, message: Internal) {
        match message {
            Internal::Fetch(peer, chat) => self.fetch(peer, chat),
            Internal::SendRoster(peer, roster) => self.roster_ready(peer, roster),
            Internal::Respond(peer, channel, response) => {
                // Worked out before the device was removed: it gets nothing now but the roster
                // that tells it.
                let response = match response {
                    SyncResponse::Roster(_) => response,
                    _ if self.allowed.contains(&peer) => {
                        self.outbox.prepare(peer, response, Instant::now())
                    }
                    _ => SyncResponse::Refused("not trusted".into()),
                };
                self.respond(peer, channel, response);
            }
            Internal::Start(peer, chat) => self.start_session(peer, chat),
            Internal::Step(peer, chat, step) => self.on_step(peer, chat, step),
            Internal::Answered(peer, chat, in_sync) => {
                if in_sync {
                    self.progress.in_sync(peer, &chat, Instant::now());
                }
            }
            Internal::Fetched(peer, chat, stored) => {
                self.sessions.fetching.remove(&chat);
                if stored {
                    self.progress.fetched(peer, &chat);
                    // Catch up with anything written after the document was saved.
                    self.start_session(peer, chat);
                }
            }
            Internal::Compared(peer, comparison) => {
                for chat in self.progress.compared(peer, comparison) {
                    self.restart_stalled(peer, chat);
                }
            }
            Internal::Misbehaved(peer, why) => self.offence(peer, &why),
            Internal::Refused(peer) => self.progress.refused(peer),
            Internal::Changed(chats) => {
                for peer in self.accepted_peers() {
                    for chat in &chats {
                        self.progress.changed_here(peer, chat);
                        self.start_session(peer, chat.clone());
                    }
                }
            }
        }
    }

    fn respond(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
    ) {
        self.progress.sent(peer, response.wire_len());
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response);
    }

    /// A chat has stayed apart from `peer` with no session about it under way and no sync in
    /// between (`progress::STALLED_AFTER`): whatever the conversation states believe, this
    /// device forgets its two states with `peer` about the chat and runs a session afresh.
    /// The other device trades the same summaries, finds the same stall and does the same.
    fn restart_stalled(&mut self, peer: PeerId, chat: ChatId) {
        if self.sessions.running.contains(&(peer, chat.clone())) {
            return;
        }
        let Some(device) = device_of(&peer) else {
            return;
        };
        tracing::info!(
            %peer,
            %chat,
            "sync with this device about this chat made no progress since it was last found              apart; starting it afresh"
        );
        self.engine.forget_sync(&device, &chat);
        self.start_session(peer, chat);
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
            let step = match device_of(&peer) {
                Some(device) => engine.sync_message(&device, &chat).await,
                None => Ok(SyncStep {
                    message: None,
                    in_sync: false,
                }),
            };
            let _ = internal.send(Internal::Step(peer, chat, step)).await;
        });
    }

    pub(super) fn session_over_for_resume(&mut self, peer: PeerId, chat: ChatId) {
        self.session_over(peer, chat);
    }

    /// The session ended: run it again if a change arrived meanwhile.
    fn session_over(&mut self, peer: PeerId, chat: ChatId) {
        let key = (peer, chat);
        self.sessions.running.remove(&key);
        self.sessions.rounds.remove(&key);
        if self.sessions.again.remove(&key) {
            self.start_session(key.0, key.1);
        } else {
            self.recheck_when_idle(key.0);
        }
    }

    /// After one step of a session: send the next message, or end the session. A message too
    /// large for a request is not sent; the other device is asked to run the session instead,
    /// so that it arrives as a response, in parts.
    fn on_step(&mut self, peer: PeerId, chat: ChatId, step: Result<SyncStep, EngineError>) {
        let step = match step {
            Ok(step) => step,
            Err(e) => {
                if e.is_misbehaviour() {
                    self.offence(peer, &format!("chat {chat}: {e}"));
                } else {
                    tracing::warn!(%peer, %chat, error = %e, "a sync round failed");
                }
                if e.is_refusal() && !e.is_misbehaviour() {
                    self.progress.refused(peer);
                }
                self.session_over(peer, chat);
                return;
            }
        };
        if step.in_sync {
            self.progress.in_sync(peer, &chat, Instant::now());
        }
        if step.message.is_some() {
            let rounds = self
                .sessions
                .rounds
                .entry((peer, chat.clone()))
                .or_default();
            *rounds += 1;
            if *rounds > MAX_SESSION_ROUNDS {
                tracing::warn!(
                    %peer,
                    %chat,
                    rounds = MAX_SESSION_ROUNDS,
                    "a sync session went on without settling; ending it (it starts afresh once \
                     the chat counts as stalled)"
                );
                // The message made is not sent: the state must not assume it was.
                if let Some(device) = device_of(&peer) {
                    self.engine.forget_sync(&device, &chat);
                }
                self.session_over(peer, chat);
                return;
            }
        }
        match step.message {
            Some(message) if message.len() <= self.outbox.part_bytes(&peer) => {
                let request = SyncRequest::Sync {
                    chat: chat.to_string(),
                    message,
                };
                self.send(peer, request, Pending::Sync(chat));
            }
            Some(_) => {
                if let Some(device) = device_of(&peer) {
                    self.engine.forget_sync(&device, &chat);
                }
                let request = SyncRequest::Pull {
                    chat: chat.to_string(),
                };
                self.send(peer, request, Pending::Pull(chat));
            }
            None => self.session_over(peer, chat),
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.progress.received(peer, request.wire_len());
                    if self.admit_request(peer, &request) {
                        self.on_request(peer, request, channel);
                    } else {
                        self.respond(peer, channel, SyncResponse::Refused(SLOW_DOWN.into()));
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((_, pending)) = self.sessions.outbound.remove(&request_id) {
                        self.progress.received(peer, response.wire_len());
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
                    self.abandon(peer, pending);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                match &error {
                    // Not CBOR, or not a request of this protocol: no honest device sends it.
                    request_response::InboundFailure::Io(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::Unsupported
                        ) =>
                    {
                        self.offence(peer, &format!("a request that does not decode: {e}"));
                    }
                    _ => tracing::debug!(%peer, %error, "answering a sync request failed"),
                }
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
        let Some(device) = device_of(&peer) else {
            return;
        };
        if !self.allowed.contains(&peer) {
            // Being removed: it may still learn that (see `roster.rs`), nothing else.
            match request {
                SyncRequest::Roster(_) => self.on_roster_request(peer, false, channel),
                _ => self.respond(peer, channel, SyncResponse::Refused("not trusted".into())),
            }
            return;
        }
        let (chat, message) = match request {
            SyncRequest::Roster(theirs) => {
                self.merge_roster(peer, theirs);
                self.on_roster_request(peer, true, channel);
                return;
            }
            // Answered here: no document work.
            SyncRequest::Part { transfer, offset } => {
                let response = self.outbox.part(peer, transfer, offset, Instant::now());
                self.respond(peer, channel, response);
                return;
            }
            SyncRequest::Pull { chat } => {
                let response = match ChatId::new(chat) {
                    Ok(chat) => {
                        // Start afresh, so that the first message says everything needed.
                        self.engine.forget_sync(&device, &chat);
                        self.start_session(peer, chat);
                        SyncResponse::Sync { message: None }
                    }
                    Err(e) => {
                        self.offence(peer, &format!("a request named no valid chat: {e}"));
                        SyncResponse::Refused(e.to_string())
                    }
                };
                self.respond(peer, channel, response);
                return;
            }
            SyncRequest::Summary(theirs) => {
                let response =
                    SyncResponse::Summary(to_wire(&self.engine.summary(MAX_SUMMARY_CHATS)));
                self.respond(peer, channel, response);
                self.compare_summary(peer, theirs);
                return;
            }
            SyncRequest::Sync { chat, message } => (chat, Some(message)),
            SyncRequest::Fetch { chat } => (chat, None),
        };
        let chat = match ChatId::new(chat) {
            Ok(chat) => chat,
            Err(e) => {
                self.offence(peer, &format!("a request named no valid chat: {e}"));
                self.respond(peer, channel, SyncResponse::Refused(e.to_string()));
                return;
            }
        };
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        tokio::spawn(async move {
            let response = match (chat, message) {
                (chat, Some(message)) if engine.has_chat(&chat) => {
                    match engine
                        .receive_sync(&device, &chat, SyncRole::Answering, &message)
                        .await
                    {
                        Ok(step) => {
                            let _ = internal
                                .send(Internal::Answered(peer, chat, step.in_sync))
                                .await;
                            SyncResponse::Sync {
                                message: step.message.map(Payload::Inline),
                            }
                        }
                        Err(e) if e.is_misbehaviour() => {
                            let why = format!("chat {chat}: {e}");
                            let _ = internal.send(Internal::Misbehaved(peer, why)).await;
                            SyncResponse::Refused(e.to_string())
                        }
                        Err(e) => {
                            if e.is_refusal() {
                                let _ = internal.send(Internal::Refused(peer)).await;
                            }
                            refused(&peer, e)
                        }
                    }
                }
                (chat, Some(_)) => {
                    // A chat this device lacks: get it whole.
                    let _ = internal.send(Internal::Fetch(peer, chat)).await;
                    SyncResponse::Unknown
                }
                (chat, None) if engine.has_chat(&chat) => match engine.export_chat(&chat).await {
                    Ok(bytes) => SyncResponse::Document {
                        payload: Payload::Inline(bytes),
                    },
                    Err(e) => refused(&peer, e),
                },
                (_, None) => SyncResponse::Unknown,
            };
            let _ = internal
                .send(Internal::Respond(peer, channel, response))
                .await;
        });
    }

    fn on_response(&mut self, peer: PeerId, pending: Pending, response: SyncResponse) {
        tracing::trace!(%peer, ?pending, ?response, "sync response");
        match (pending, response) {
            (pending, SyncResponse::Refused(why)) if why == SLOW_DOWN => {
                self.slow_down(peer, pending);
            }
            (Pending::Summary, SyncResponse::Summary(theirs)) => self.compare_summary(peer, theirs),
            (Pending::Sync(chat), SyncResponse::Sync { message: None }) => {
                self.continue_session(peer, chat, None);
            }
            (
                Pending::Sync(chat),
                SyncResponse::Sync {
                    message: Some(payload),
                },
            ) => {
                self.receive_payload(peer, Purpose::Sync(chat), payload);
            }
            (Pending::Fetch(chat), SyncResponse::Document { payload }) => {
                self.receive_payload(peer, Purpose::Fetch(chat), payload);
            }
            (Pending::Part(incoming), SyncResponse::Part { bytes }) => match incoming.add(&bytes) {
                PullProgress::More(incoming) => self.pull_next(peer, incoming),
                PullProgress::Complete(purpose, bytes) => {
                    self.payload_arrived(peer, purpose, bytes)
                }
                PullProgress::Failed(purpose, why) => {
                    self.offence(peer, &format!("a large transfer went wrong: {why}"));
                    self.transfer_failed(peer, purpose);
                }
            },
            (Pending::Part(incoming), other) => {
                tracing::debug!(%peer, ?incoming, ?other, "a large transfer was not completed");
                self.transfer_failed(peer, incoming.purpose);
            }
            (Pending::Pull(chat), _) => self.session_over(peer, chat),
            (Pending::Roster, response) => self.on_roster_response(peer, response),
            (pending, response) => {
                if let SyncResponse::Refused(why) = &response {
                    tracing::debug!(%peer, ?pending, %why, "sync refused");
                } else if !matches!(response, SyncResponse::Unknown) {
                    tracing::debug!(%peer, ?pending, ?response, "unexpected sync response");
                }
                self.abandon(peer, pending);
            }
        }
    }

    /// Compares another device's summary with this one's, in a spawned task.
    fn compare_summary(&self, peer: PeerId, theirs: Vec<ChatHeads>) {
        let me = *self.swarm.local_peer_id();
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        tokio::spawn(compare(engine, me, peer, theirs, internal));
    }

    /// A payload arrived inline, or was announced: pull it.
    fn receive_payload(&mut self, peer: PeerId, purpose: Purpose, payload: Payload) {
        match payload {
            Payload::Inline(bytes) => self.payload_arrived(peer, purpose, bytes),
            Payload::Parts { transfer, len } => match Incoming::start(purpose, transfer, len) {
                Ok(incoming) => self.pull_next(peer, Box::new(incoming)),
                Err((purpose, why)) => {
                    self.offence(peer, &format!("refused a large transfer: {why}"));
                    self.transfer_failed(peer, purpose);
                }
            },
        }
    }

    pub(super) fn pull_next(&mut self, peer: PeerId, incoming: Box<Incoming>) {
        let request = SyncRequest::Part {
            transfer: incoming.transfer,
            offset: incoming.offset(),
        };
        self.send(peer, request, Pending::Part(incoming));
    }

    /// A large transfer failed. A sync session starts over from the other side with fresh
    /// state (the other device believes it sent what was lost); a fetch is retried at the next
    /// summary exchange.
    fn transfer_failed(&mut self, peer: PeerId, purpose: Purpose) {
        if let Purpose::Fetch(chat) = &purpose {
            self.sessions.fetching.remove(chat);
        }
        if let Purpose::Sync(chat) = purpose {
            if let Some(device) = device_of(&peer) {
                self.engine.forget_sync(&device, &chat);
            }
            let request = SyncRequest::Pull {
                chat: chat.to_string(),
            };
            self.send(peer, request, Pending::Pull(chat));
        }
    }

    fn payload_arrived(&mut self, peer: PeerId, purpose: Purpose, bytes: Vec<u8>) {
        match purpose {
            Purpose::Sync(chat) => self.continue_session(peer, chat, Some(bytes)),
            Purpose::Fetch(chat) => {
                let (engine, internal) = (self.engine.clone(), self.internal.clone());
                tokio::spawn(async move {
                    let stored = engine.import_chat(&chat, &bytes).await;
                    match &stored {
                        Err(e) if e.is_misbehaviour() => {
                            let why = format!("chat {chat}: {e}");
                            let _ = internal.send(Internal::Misbehaved(peer, why)).await;
                        }
                        Err(e) => {
                            if e.is_refusal() {
                                let _ = internal.send(Internal::Refused(peer)).await;
                            }
                            tracing::warn!(%peer, %chat, error = %e, "could not store a chat")
                        }
                        Ok(()) => {}
                    }
                    let _ = internal
                        .send(Internal::Fetched(peer, chat, stored.is_ok()))
                        .await;
                });
            }
        }
    }

    /// The other device answered a round: apply its message (if any) and compute the next.
    fn continue_session(&mut self, peer: PeerId, chat: ChatId, message: Option<Vec<u8>>) {
        let Some(device) = device_of(&peer) else {
            self.session_over(peer, chat);
            return;
        };
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        tokio::spawn(async move {
            let step = match message {
                Some(m) => {
                    engine
                        .receive_sync(&device, &chat, SyncRole::Running, &m)
                        .await
                }
                None => engine.sync_message(&device, &chat).await,
            };
            let _ = internal.send(Internal::Step(peer, chat, step)).await;
        });
    }

    pub(super) fn accepted_peers(&self) -> Vec<PeerId> {
        self.book
            .peers
            .iter()
            .filter(|(_, e)| e.accepted)
            .map(|(p, _)| *p)
            .collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use libp2p::request_response::Codec;

    use super::*;
    use crate::net::protocol::{MAX_WIRE_BYTES, PROTOCOL};

    #[test]
    fn the_largest_summary_still_fits_on_the_wire() {
        // 50,000 chats with two heads each is more than 8 MiB of CBOR: the summary keeps the
        // most recently active chats that fit, and it encodes under the codec's limit.
        let head = "ab".repeat(32);
        let summary: Vec<(ChatId, Vec<String>)> = (0..MAX_SUMMARY_CHATS)
            .map(|i| {
                let chat = ChatId::new(format!("{i:032x}")).unwrap();
                (chat, vec![head.clone(), head.clone()])
            })
            .collect();
        let wire = to_wire(&summary);
        assert!(wire.len() < summary.len(), "all {} chats fit", wire.len());
        assert!(wire.len() > 40_000, "only {} chats fit", wire.len());
        assert_eq!(
            wire[0].chat,
            summary[0].0.as_str(),
            "the first chats are kept"
        );
        let mut codec =
            request_response::cbor::codec::Codec::<SyncRequest, SyncResponse>::default();
        let mut bytes = Vec::new();
        libp2p::futures::executor::block_on(codec.write_request(
            &PROTOCOL,
            &mut libp2p::futures::io::Cursor::new(&mut bytes),
            SyncRequest::Summary(wire),
        ))
        .unwrap();
        assert!(
            (bytes.len() as u64) < MAX_WIRE_BYTES,
            "{} bytes is over the limit",
            bytes.len()
        );
    }
}
