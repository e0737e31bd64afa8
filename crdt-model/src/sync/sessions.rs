//! [`SyncCore`]: chat sync with every connected device, as a state machine.
//!
//! The sequence (docs/protocol.md draws it): on connect, and every [`RESUMMARIZE`], each side
//! sends a summary of its chats' heads. A chat the other lacks is fetched whole; where heads
//! differ, the device with the smaller id runs a session: rounds of sync messages (requests)
//! and replies (answers) until neither has anything to say. A local change starts a session
//! with every connected device at once. A message too large for a request is not sent: the
//! other device is asked to run the session from its side ([`SyncRequest::Pull`]), so that it
//! comes as an answer, which is announced and pulled in parts ([`super::transfers`]).
//!
//! One owner per piece of state: sessions and fetches here, requests in flight in
//! [`Outbound`], large payloads in [`Outbox`] and [`Resume`], how far each device is in
//! [`Progress`]. Document work (Automerge, the store) is the caller's ([`Work`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::{
    PeerKey,
    outbound::{Outbound, Pending, Request, Submitted, Token},
    progress::{Comparison, Progress},
    resume::{MAX_RESUMES, Resume},
    running::Running,
    transfers::{Incoming, Outbox, Progress as PullProgress, Purpose},
    wire::{ChatHeads, Payload, SyncRequest, SyncResponse},
};
use crate::{ChatId, exchange::Step};

/// How often connected devices trade summaries again (anti-entropy).
pub const RESUMMARIZE: Duration = Duration::from_secs(30);
/// Rounds one session runs at most in all, however often the chat changes meanwhile: a session
/// stuck on a chat that keeps getting posts ends too (and starts afresh as stalled).
pub const MAX_SESSION_ROUNDS_IN_ALL: u32 = 10 * MAX_SESSION_ROUNDS;
/// Rounds one session runs at most without the chat changing here. Each round can carry any
/// number of changes, so an honest session needs a handful after the last change; one that goes
/// on with nothing changing is two devices trading the same heads and needs again and again
/// (one needs a change the other cannot send yet). It ends, logged; the chat then counts as
/// stalled and starts afresh (`progress::STALLED_AFTER`) instead of costing a round trip after
/// round trip for as long as that lasts. A session that carries a stream of posts goes on for
/// as long as they come: every change here counts its rounds from zero again.
pub const MAX_SESSION_ROUNDS: u32 = 200;
/// How long nothing new is sent to a device that said "slow down". With at most
/// `MAX_IN_FLIGHT` requests refused per pause, an honest device stays far from the refusals
/// that count as flooding.
pub const SLOW_DOWN_PAUSE: Duration = Duration::from_secs(1);
/// How long after a session with it ends a device whose chats still look apart is sent a
/// summary again (once no session with it is left), rather than at the next periodic exchange.
///
/// Why: a session can end with both devices in sync while one of them cannot tell. When the
/// last changes of a chat went out in this device's answer to the other's request, and the
/// other then had nothing more to say, Automerge here still waits for an answer and never
/// learns the other's new heads; the chat would show as "ahead" for up to 30 s. A summary
/// carries every chat's heads and settles the picture for both.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Early summary trades with one device, at most one per this.
const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// Why document work failed, as far as the other device is concerned.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Data no honest device sends: an offence.
    Offence(String),
    /// Refused without blame (changes not provable yet, by devices not known yet, too many).
    Refused(String),
    /// This device could not do it (storage, a bug): not the other's doing.
    Internal(String),
    /// The other device's changes clash with a device's equivocation, and this is the
    /// evidence (`crate::equivocation`): it is shown to the other device, which may be honest
    /// and unaware. Nobody is blamed.
    Equivocation(Vec<u8>),
}

/// An answer as the core asks for it; a summary's contents are read when it goes.
#[derive(Debug)]
pub enum Response {
    Summary,
    Wire(SyncResponse),
}

/// Document work for the caller; each kind's result comes back through the input named.
#[derive(Debug)]
pub enum Work<P, R> {
    /// The next message of the session this device runs with `peer` about `chat`
    /// → [`SyncCore::stepped`].
    Step { peer: P, chat: ChatId },
    /// Take `peer`'s answer in the session this device runs, made durable, and the next
    /// message → [`SyncCore::stepped`].
    Receive {
        peer: P,
        chat: ChatId,
        message: Vec<u8>,
    },
    /// Take `peer`'s request in the session it runs, made durable, and the answer
    /// → [`SyncCore::answered`].
    Answer {
        peer: P,
        chat: ChatId,
        message: Vec<u8>,
        reply: R,
    },
    /// The whole chat, to send → [`SyncCore::exported`].
    Export { peer: P, chat: ChatId, reply: R },
    /// A whole chat that arrived, to store → [`SyncCore::imported`].
    Import {
        peer: P,
        chat: ChatId,
        document: Vec<u8>,
    },
    /// Compare `peer`'s summary with this device's chats → [`SyncCore::planned`] (what to
    /// fetch and sync, as soon as known) and then [`SyncCore::compared`].
    Compare { peer: P, theirs: Vec<ChatHeads> },
    /// Check and take evidence of an equivocation `peer` showed → [`SyncCore::evidence_taken`].
    TakeEvidence {
        peer: P,
        chat: ChatId,
        evidence: Vec<u8>,
        reply: R,
    },
}

/// What the caller is to do.
#[derive(Debug)]
pub enum Output<P, R> {
    /// Put a request on the wire; report its answer with [`SyncCore::answer`] and its failure
    /// with [`SyncCore::failed`], under `token`.
    Send {
        peer: P,
        token: Token,
        request: Request,
    },
    /// Answer a request `peer` sent.
    Respond {
        peer: P,
        reply: R,
        response: Response,
    },
    Work(Work<P, R>),
    /// Forget this device's sync states with `peer` about `chat` (the next session starts
    /// from nothing known).
    ForgetSync {
        peer: P,
        chat: ChatId,
    },
    /// `peer` sent data no honest device sends.
    Offence {
        peer: P,
        why: String,
    },
    /// Summaries are being traded with `peer`: rosters go along.
    RosterDue {
        peer: P,
    },
}

/// Chat sync with every connected device. See the module docs. Whatever is walked in order is
/// kept in ordered maps, so that the same inputs always give the same outputs (the simulator
/// replays a seed exactly).
pub struct SyncCore<P, R> {
    /// The devices synced with: connected and trusted.
    up: BTreeSet<P>,
    outbound: Outbound<P>,
    /// Sessions under way, one per device and chat, and those waiting for a place.
    running: Running<P>,
    /// Sessions to run again when the current one ends (a change arrived meanwhile).
    again: HashSet<(P, ChatId)>,
    /// Requests each running session has sent since the chat last changed here, and in all
    /// (see [`MAX_SESSION_ROUNDS`], [`MAX_SESSION_ROUNDS_IN_ALL`]).
    rounds: HashMap<(P, ChatId), (u32, u32)>,
    /// Chats being fetched whole (from one device at a time, so each arrives once).
    fetching: HashSet<ChatId>,
    /// Devices to trade summaries with again soon, and when (see [`RECHECK_AFTER`]).
    recheck: BTreeMap<P, Instant>,
    /// When summaries were last traded early with each device.
    rechecked: HashMap<P, Instant>,
    /// When every connected device is sent a summary again.
    next_resummary: Option<Instant>,
    progress: Progress<P>,
    outbox: Outbox<P>,
    resume: Resume<P>,
    outputs: VecDeque<Output<P, R>>,
}

impl<P: PeerKey, R> SyncCore<P, R> {
    /// A core whose first large transfer is numbered `first_transfer` (the daemon picks it at
    /// random each run: see [`Outbox`]).
    pub fn new(first_transfer: u64) -> Self {
        SyncCore {
            up: BTreeSet::new(),
            outbound: Outbound::default(),
            running: Running::default(),
            again: HashSet::new(),
            rounds: HashMap::new(),
            fetching: HashSet::new(),
            recheck: BTreeMap::new(),
            rechecked: HashMap::new(),
            next_resummary: None,
            progress: Progress::default(),
            outbox: Outbox::starting_at(first_transfer),
            resume: Resume::default(),
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to do, if any. Call after every input until it returns `None`.
    pub fn poll_output(&mut self) -> Option<Output<P, R>> {
        self.outputs.pop_front()
    }

    // ----- what the caller reads -----

    pub fn progress(&self) -> &Progress<P> {
        &self.progress
    }

    /// Sync sessions under way.
    pub fn sessions_running(&self) -> usize {
        self.running.len()
    }

    /// Whether a session with `peer` about `chat` is under way.
    pub fn is_running(&self, peer: P, chat: &ChatId) -> bool {
        self.running.is_under_way(peer, chat)
    }

    /// The largest sync message `peer` is sent in a request (and part, in answers).
    pub fn part_bytes(&self, peer: &P) -> usize {
        self.outbox.part_bytes(peer)
    }

    // ----- inputs: devices -----

    /// `peer` is connected and trusted: trade summaries, and go on with pulls cut earlier.
    pub fn peer_up(&mut self, peer: P, now: Instant) {
        self.up.insert(peer);
        self.exchange_summaries(peer, now);
    }

    /// `peer` is gone (or no longer trusted): its sessions end, its pulls are kept to resume.
    pub fn peer_down(&mut self, peer: P, now: Instant) {
        self.up.remove(&peer);
        for pending in self.outbound.forget(peer) {
            if let Some(chat) = pending.fetch() {
                self.fetching.remove(chat);
            }
            if let Pending::Part(incoming) = pending
                && let Err(incoming) = self.resume.keep(peer, incoming, now)
            {
                tracing::debug!(%peer, ?incoming, "giving up a transfer cut too often");
            }
        }
        self.running.forget(peer);
        self.again.retain(|(p, _)| *p != peer);
        self.rounds.retain(|(p, _), _| *p != peer);
        self.recheck.remove(&peer);
        self.rechecked.remove(&peer);
        self.progress.disconnected(&peer);
    }

    /// Whether `peer` is reached only through relays (it gets small parts) or not.
    pub fn set_relayed(&mut self, peer: P, relayed: bool) {
        self.outbox.set_relayed(peer, relayed);
    }

    /// Chats changed on this device (durably): every connected device hears of them.
    pub fn changed(&mut self, chats: &BTreeSet<ChatId>, now: Instant) {
        let _ = now;
        let peers: Vec<P> = self.up.iter().copied().collect();
        for peer in peers {
            for chat in chats {
                self.progress.changed_here(peer, chat);
                // A session under way makes progress: its rounds count afresh.
                if let Some((since_change, _)) = self.rounds.get_mut(&(peer, chat.clone())) {
                    *since_change = 0;
                }
                self.start_session_first(peer, chat.clone());
            }
        }
    }

    /// Timers: pauses that are over, early re-checks, the periodic summary exchange.
    pub fn tick(&mut self, now: Instant) {
        for (peer, request, pending) in self.outbound.resume_due(now) {
            self.submit(peer, request, pending, now);
        }
        self.recheck_due(now);
        let due = *self.next_resummary.get_or_insert(now + RESUMMARIZE);
        if now >= due {
            self.next_resummary = Some(now + RESUMMARIZE);
            self.outbox.expire(now);
            let peers: Vec<P> = self.up.iter().copied().collect();
            for peer in peers {
                self.exchange_summaries(peer, now);
            }
        }
    }

    /// Counts a refusal of `peer`'s data without blame (for status).
    pub fn count_refusal(&mut self, peer: P) {
        self.progress.refused(peer);
    }

    /// Counts an offence of `peer`'s (for status).
    pub fn count_offence(&mut self, peer: P) {
        self.progress.offence(peer);
    }

    /// Counts traffic (payload bytes) to and from `peer`.
    pub fn count_traffic(&mut self, peer: P, sent: usize, received: usize) {
        if sent > 0 {
            self.progress.sent(peer, sent);
        }
        if received > 0 {
            self.progress.received(peer, received);
        }
    }

    // ----- inputs: the wire -----

    /// `peer` sent a request (not a roster: rosters are the caller's).
    pub fn request(&mut self, peer: P, request: SyncRequest, reply: R, now: Instant) {
        let (chat, message) = match request {
            SyncRequest::Part { transfer, offset } => {
                let response = self.outbox.part(peer, transfer, offset, now);
                self.respond(peer, reply, response);
                return;
            }
            SyncRequest::Pull { chat } => {
                let response = match ChatId::new(chat) {
                    Ok(chat) => {
                        // Start afresh, so that the first message says everything needed.
                        self.outputs.push_back(Output::ForgetSync {
                            peer,
                            chat: chat.clone(),
                        });
                        self.start_session(peer, chat);
                        SyncResponse::Sync { message: None }
                    }
                    Err(e) => {
                        self.offence(peer, format!("a request named no valid chat: {e}"));
                        SyncResponse::Refused(e.to_string())
                    }
                };
                self.respond(peer, reply, response);
                return;
            }
            SyncRequest::Summary(theirs) => {
                self.outputs.push_back(Output::Respond {
                    peer,
                    reply,
                    response: Response::Summary,
                });
                self.outputs
                    .push_back(Output::Work(Work::Compare { peer, theirs }));
                return;
            }
            SyncRequest::Roster(_) => {
                tracing::debug!(%peer, "a roster request reached the sync core");
                self.respond(
                    peer,
                    reply,
                    SyncResponse::Refused("not handled here".into()),
                );
                return;
            }
            SyncRequest::Evidence { chat, evidence } => {
                match ChatId::new(chat) {
                    Ok(chat) => self.outputs.push_back(Output::Work(Work::TakeEvidence {
                        peer,
                        chat,
                        evidence,
                        reply,
                    })),
                    Err(e) => {
                        self.offence(peer, format!("a request named no valid chat: {e}"));
                        self.respond(peer, reply, SyncResponse::Refused(e.to_string()));
                    }
                }
                return;
            }
            SyncRequest::Sync { chat, message } => (chat, Some(message)),
            SyncRequest::Fetch { chat } => (chat, None),
        };
        let chat = match ChatId::new(chat) {
            Ok(chat) => chat,
            Err(e) => {
                self.offence(peer, format!("a request named no valid chat: {e}"));
                self.respond(peer, reply, SyncResponse::Refused(e.to_string()));
                return;
            }
        };
        let work = match message {
            Some(message) => Work::Answer {
                peer,
                chat,
                message,
                reply,
            },
            None => Work::Export { peer, chat, reply },
        };
        self.outputs.push_back(Output::Work(work));
    }

    /// The request under `token` was answered.
    pub fn answer(&mut self, token: Token, response: SyncResponse, now: Instant) {
        let Some((peer, pending)) = self.finished(token, now) else {
            return;
        };
        tracing::trace!(%peer, ?pending, ?response, "sync response");
        match (pending, response) {
            (pending, SyncResponse::SlowDown) => self.slow_down(peer, pending, now),
            (Pending::Summary, SyncResponse::Summary(theirs)) => {
                self.outputs
                    .push_back(Output::Work(Work::Compare { peer, theirs }));
            }
            (Pending::Sync(chat), SyncResponse::Sync { message: None }) => {
                self.outputs
                    .push_back(Output::Work(Work::Step { peer, chat }));
            }
            (
                Pending::Sync(chat),
                SyncResponse::Sync {
                    message: Some(payload),
                },
            ) => self.receive_payload(peer, Purpose::Sync(chat), payload, now),
            (Pending::Fetch(chat), SyncResponse::Document { payload }) => {
                self.receive_payload(peer, Purpose::Fetch(chat), payload, now);
            }
            (Pending::Part(incoming), SyncResponse::Part { bytes }) => {
                match incoming.take_part(&bytes) {
                    PullProgress::More(incoming) => self.pull_next(peer, incoming, now),
                    PullProgress::Complete(purpose, bytes) => {
                        self.payload_arrived(peer, purpose, bytes)
                    }
                    PullProgress::Failed(purpose, why) => {
                        self.offence(peer, format!("a large transfer went wrong: {why}"));
                        self.transfer_failed(peer, purpose, now);
                    }
                }
            }
            (Pending::Part(incoming), other) => {
                tracing::debug!(%peer, ?incoming, ?other, "a large transfer was not completed");
                self.transfer_failed(peer, incoming.purpose, now);
            }
            (Pending::Pull(chat), _) => self.session_over(peer, chat, now),
            (Pending::Evidence(chat), response) => {
                tracing::debug!(%peer, %chat, ?response, "evidence of an equivocation was shown");
            }
            (pending, response) => {
                if let SyncResponse::Refused(why) = &response {
                    tracing::debug!(%peer, ?pending, %why, "sync refused");
                } else if !matches!(response, SyncResponse::Unknown) {
                    tracing::debug!(%peer, ?pending, ?response, "unexpected sync response");
                }
                self.abandon(peer, pending, now);
            }
        }
    }

    /// The request under `token` failed (timed out, its connection closed, not sent).
    pub fn failed(&mut self, token: Token, now: Instant) {
        if let Some((peer, pending)) = self.finished(token, now) {
            self.abandon(peer, pending, now);
        }
    }

    // ----- inputs: document work done -----

    /// A step of the session this device runs with `peer` about `chat` was worked out (from
    /// [`Work::Step`] or [`Work::Receive`]): send the next message, or end the session.
    pub fn stepped(&mut self, peer: P, chat: ChatId, step: Result<Step, Failure>, now: Instant) {
        let step = match step {
            Ok(step) => step,
            Err(failure) => {
                self.failure(peer, &chat, failure, "a sync round failed", now);
                self.session_over(peer, chat, now);
                return;
            }
        };
        if step.in_sync {
            self.progress.in_sync(peer, &chat, now);
        }
        let Some(message) = step.message else {
            self.session_over(peer, chat, now);
            return;
        };
        let (since_change, in_all) = self.rounds.entry((peer, chat.clone())).or_default();
        *since_change += 1;
        *in_all += 1;
        if *since_change > MAX_SESSION_ROUNDS || *in_all > MAX_SESSION_ROUNDS_IN_ALL {
            tracing::warn!(
                %peer,
                %chat,
                rounds = MAX_SESSION_ROUNDS,
                "a sync session went on without settling; ending it (it starts afresh once the \
                 chat counts as stalled)"
            );
            // The message made is not sent: the state must not assume it was.
            self.forget_sync(peer, &chat);
            self.session_over(peer, chat, now);
            return;
        }
        if message.len() <= self.outbox.part_bytes(&peer) {
            let request = SyncRequest::Sync {
                chat: chat.to_string(),
                message,
            };
            self.send(peer, request, Pending::Sync(chat), now);
        } else {
            self.forget_sync(peer, &chat);
            let request = SyncRequest::Pull {
                chat: chat.to_string(),
            };
            self.send(peer, request, Pending::Pull(chat), now);
        }
    }

    /// A request's sync message was taken and made durable ([`Work::Answer`]): `Ok(None)` when
    /// this device lacks the chat (it fetches it).
    pub fn answered(
        &mut self,
        peer: P,
        chat: ChatId,
        reply: R,
        step: Result<Option<Step>, Failure>,
        now: Instant,
    ) {
        let response = match step {
            Ok(Some(step)) => {
                if step.in_sync {
                    self.progress.in_sync(peer, &chat, now);
                }
                SyncResponse::Sync {
                    message: step.message.map(Payload::Inline),
                }
            }
            Ok(None) => {
                self.fetch(peer, chat, now);
                SyncResponse::Unknown
            }
            Err(failure) => {
                let why = failure_text(&failure).to_string();
                self.failure(peer, &chat, failure, "refused a sync request", now);
                SyncResponse::Refused(why)
            }
        };
        self.respond_prepared(peer, reply, response, now);
    }

    /// Evidence `peer` showed was checked and taken, or not ([`Work::TakeEvidence`]); `Ok(false)`
    /// when this device lacks the chat.
    pub fn evidence_taken(
        &mut self,
        peer: P,
        chat: ChatId,
        reply: R,
        taken: Result<bool, Failure>,
        now: Instant,
    ) {
        let response = match taken {
            Ok(true) => SyncResponse::Sync { message: None },
            Ok(false) => SyncResponse::Unknown,
            Err(failure) => {
                let why = failure_text(&failure).to_string();
                self.failure(
                    peer,
                    &chat,
                    failure,
                    "refused evidence of an equivocation",
                    now,
                );
                SyncResponse::Refused(why)
            }
        };
        self.respond_prepared(peer, reply, response, now);
    }

    /// A whole chat was read for `peer` ([`Work::Export`]); `Ok(None)` when this device lacks it.
    pub fn exported(
        &mut self,
        peer: P,
        reply: R,
        document: Result<Option<Vec<u8>>, Failure>,
        now: Instant,
    ) {
        let response = match document {
            Ok(Some(bytes)) => SyncResponse::Document {
                payload: Payload::Inline(bytes),
            },
            Ok(None) => SyncResponse::Unknown,
            Err(failure) => {
                tracing::warn!(%peer, error = failure_text(&failure), "refused a fetch");
                SyncResponse::Refused(failure_text(&failure).to_string())
            }
        };
        self.respond_prepared(peer, reply, response, now);
    }

    /// A whole chat from `peer` was stored, or not ([`Work::Import`]).
    pub fn imported(&mut self, peer: P, chat: ChatId, stored: Result<(), Failure>, now: Instant) {
        self.fetching.remove(&chat);
        match stored {
            Ok(()) => {
                self.progress.fetched(peer, &chat);
                // Catch up with anything written after the document was saved.
                self.start_session(peer, chat);
            }
            Err(failure) => self.failure(peer, &chat, failure, "could not store a chat", now),
        }
        let _ = now;
    }

    /// What `peer`'s summary calls for, known before the comparison is complete: chats to
    /// fetch, and chats to run a session about (this device starts where both have the chat
    /// and it has the smaller id).
    pub fn planned(&mut self, peer: P, fetch: Vec<ChatId>, start: Vec<ChatId>, now: Instant) {
        for chat in fetch {
            self.fetch(peer, chat, now);
        }
        for chat in start {
            self.start_session(peer, chat);
        }
    }

    /// The comparison of `peer`'s summary is complete: the picture for status, and chats whose
    /// sync stalled start afresh.
    pub fn compared(&mut self, peer: P, comparison: Comparison, now: Instant) {
        for chat in self.progress.compared(peer, comparison, now) {
            self.restart_stalled(peer, chat);
        }
    }

    // ----- the machinery -----

    fn exchange_summaries(&mut self, peer: P, now: Instant) {
        for incoming in self.resume.take(&peer, now) {
            tracing::debug!(%peer, ?incoming, "resuming a transfer cut with its connection");
            self.pull_resumed(peer, incoming, now);
        }
        self.outputs.push_back(Output::RosterDue { peer });
        self.submit(peer, Request::Summary, Pending::Summary, now);
    }

    fn respond(&mut self, peer: P, reply: R, response: SyncResponse) {
        self.outputs.push_back(Output::Respond {
            peer,
            reply,
            response: Response::Wire(response),
        });
    }

    /// Answers with a payload made to fit the wire (announced in parts if large). Whether the
    /// device may be answered at all is the caller's to say (it knows the roster): a device
    /// often asks before this side has marked it up, and its request was worked on already.
    fn respond_prepared(&mut self, peer: P, reply: R, response: SyncResponse, now: Instant) {
        let response = self.outbox.prepare(peer, response, now);
        self.respond(peer, reply, response);
    }

    fn offence(&mut self, peer: P, why: String) {
        self.outputs.push_back(Output::Offence { peer, why });
    }

    fn failure(&mut self, peer: P, chat: &ChatId, failure: Failure, what: &str, now: Instant) {
        match failure {
            Failure::Offence(why) => self.offence(peer, format!("chat {chat}: {why}")),
            Failure::Refused(why) => {
                tracing::warn!(%peer, %chat, error = %why, "{what}");
                self.progress.refused(peer);
            }
            Failure::Internal(why) => tracing::warn!(%peer, %chat, error = %why, "{what}"),
            Failure::Equivocation(evidence) => {
                tracing::info!(%peer, %chat, "{what}: the changes clash with a device's equivocation; showing the evidence");
                let request = SyncRequest::Evidence {
                    chat: chat.to_string(),
                    evidence,
                };
                // Sent at once: the session that met the clash is over.
                self.send(peer, request, Pending::Evidence(chat.clone()), now);
            }
        }
    }

    fn forget_sync(&mut self, peer: P, chat: &ChatId) {
        self.outputs.push_back(Output::ForgetSync {
            peer,
            chat: chat.clone(),
        });
    }

    fn send(&mut self, peer: P, request: SyncRequest, pending: Pending, now: Instant) {
        self.submit(peer, Request::Wire(request), pending, now);
    }

    fn submit(&mut self, peer: P, request: Request, pending: Pending, now: Instant) {
        if !self.up.contains(&peer) {
            self.abandon(peer, pending, now);
            return;
        }
        match self.outbound.submit(peer, request, pending) {
            Submitted::Send(peer, token, request) => {
                tracing::trace!(%peer, ?request, "sync request");
                self.outputs.push_back(Output::Send {
                    peer,
                    token,
                    request,
                });
            }
            Submitted::Queued => {}
            Submitted::Dropped(pending) => self.abandon(peer, pending, now),
        }
    }

    /// Takes the request under `token` out of flight and lets the device's next one go.
    fn finished(&mut self, token: Token, now: Instant) -> Option<(P, Pending)> {
        let (peer, pending, next) = self.outbound.finished(token)?;
        if let Some((request, next)) = next {
            self.submit(peer, request, next, now);
        }
        Some((peer, pending))
    }

    /// `peer` said "slow down": nothing new goes to it for a while, and what it refused is
    /// asked again after the pause (a sync session starts afresh).
    fn slow_down(&mut self, peer: P, pending: Pending, now: Instant) {
        tracing::debug!(%peer, "a device asked this one to slow down");
        self.outbound.pause(peer, now + SLOW_DOWN_PAUSE);
        match pending {
            Pending::Fetch(chat) => {
                self.fetching.remove(&chat);
                self.fetch(peer, chat, now);
            }
            Pending::Sync(chat) => {
                self.forget_sync(peer, &chat);
                self.session_over(peer, chat.clone(), now);
                self.start_session(peer, chat);
            }
            Pending::Pull(chat) => {
                let request = SyncRequest::Pull {
                    chat: chat.to_string(),
                };
                self.send(peer, request, Pending::Pull(chat), now);
            }
            Pending::Part(incoming) => self.pull_next(peer, incoming, now),
            Pending::Summary => self.submit(peer, Request::Summary, Pending::Summary, now),
            // Shown again when the clash is met again.
            Pending::Evidence(_) => {}
        }
    }

    /// A request was not sent or not answered: end what it was for.
    fn abandon(&mut self, peer: P, pending: Pending, now: Instant) {
        if let Some(chat) = pending.fetch() {
            self.fetching.remove(chat);
        }
        match pending {
            Pending::Sync(chat) | Pending::Pull(chat) => {
                // The other device may or may not have taken what went out: the next session
                // starts from fresh state rather than assume it did.
                self.forget_sync(peer, &chat);
                self.session_over(peer, chat, now)
            }
            Pending::Part(incoming) => {
                // Kept to resume unless it was cut too often.
                if let Some(incoming) = self.keep_cut_transfer(peer, incoming, now)
                    && let Purpose::Sync(chat) = incoming.purpose
                {
                    self.session_over(peer, chat, now);
                }
            }
            Pending::Summary | Pending::Fetch(_) | Pending::Evidence(_) => {}
        }
    }

    /// Fetches a chat whole, unless it is already on its way from some device.
    fn fetch(&mut self, peer: P, chat: ChatId, now: Instant) {
        if self.fetching.insert(chat.clone()) {
            let request = SyncRequest::Fetch {
                chat: chat.to_string(),
            };
            self.send(peer, request, Pending::Fetch(chat), now);
        }
    }

    /// Starts a sync session, or marks it to run again if one is under way; it waits in line
    /// while the device has [`MAX_SESSIONS`](super::running::MAX_SESSIONS) under way.
    fn start_session(&mut self, peer: P, chat: ChatId) {
        self.start_session_in_line(peer, chat, false);
    }

    /// [`Self::start_session`] for a change made here: at the head of the line.
    fn start_session_first(&mut self, peer: P, chat: ChatId) {
        self.start_session_in_line(peer, chat, true);
    }

    fn start_session_in_line(&mut self, peer: P, chat: ChatId, first: bool) {
        if self.running.is_under_way(peer, &chat) {
            self.again.insert((peer, chat));
            return;
        }
        if self.running.start(peer, chat.clone(), first) {
            self.outputs
                .push_back(Output::Work(Work::Step { peer, chat }));
        }
    }

    /// The session ended: run it again if a change arrived meanwhile, else let the next one
    /// waiting start.
    fn session_over(&mut self, peer: P, chat: ChatId, now: Instant) {
        let key = (peer, chat);
        self.rounds.remove(&key);
        if self.again.remove(&key) {
            // It keeps its place.
            let (peer, chat) = key;
            self.outputs
                .push_back(Output::Work(Work::Step { peer, chat }));
            return;
        }
        match self.running.end(key.0, &key.1) {
            Some(next) => self.outputs.push_back(Output::Work(Work::Step {
                peer: key.0,
                chat: next,
            })),
            None => self.recheck_when_idle(key.0, now),
        }
    }

    /// A chat has stayed apart from `peer` with no session about it under way and no sync in
    /// between (`progress::STALLED_AFTER`): whatever the conversation states believe, this
    /// device forgets its states with `peer` about the chat and runs a session afresh. The
    /// other device trades the same summaries, finds the same stall and does the same.
    fn restart_stalled(&mut self, peer: P, chat: ChatId) {
        if self.running.is_pending(peer, &chat) {
            return;
        }
        tracing::info!(
            %peer,
            %chat,
            "sync with this device about this chat made no progress since it was last found \
             apart; starting it afresh"
        );
        self.forget_sync(peer, &chat);
        self.start_session(peer, chat);
    }

    /// Whether some chat is known to differ between this device and `peer`.
    fn looks_apart(&self, peer: P) -> bool {
        self.progress
            .get(&peer)
            .and_then(|p| p.counts())
            .is_some_and(|(behind, ahead)| behind + ahead > 0)
    }

    /// Schedules an early summary trade with `peer` if its chats still look apart; it happens
    /// once no session with it is left ([`Self::recheck_due`], so that ending a session costs
    /// no scan of the running ones).
    fn recheck_when_idle(&mut self, peer: P, now: Instant) {
        if !self.looks_apart(peer) {
            return;
        }
        let earliest = self
            .rechecked
            .get(&peer)
            .map_or(now, |at| *at + RECHECK_EVERY);
        self.recheck
            .entry(peer)
            .or_insert((now + RECHECK_AFTER).max(earliest));
    }

    /// Trades summaries with the devices due for it (see [`RECHECK_AFTER`]).
    fn recheck_due(&mut self, now: Instant) {
        let due: Vec<P> = self
            .recheck
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.recheck.remove(&peer);
            if !self.looks_apart(peer) || !self.up.contains(&peer) {
                continue;
            }
            // Sessions still running may yet settle the picture: look again once they end.
            if self.running.any(peer) {
                self.recheck.insert(peer, now + RECHECK_AFTER);
                continue;
            }
            self.rechecked.insert(peer, now);
            self.submit(peer, Request::Summary, Pending::Summary, now);
        }
    }

    /// A payload arrived inline, or was announced: pull it.
    fn receive_payload(&mut self, peer: P, purpose: Purpose, payload: Payload, now: Instant) {
        match payload {
            Payload::Inline(bytes) => self.payload_arrived(peer, purpose, bytes),
            Payload::Parts { transfer, len } => match Incoming::start(purpose, transfer, len) {
                Ok(incoming) => self.pull_next(peer, Box::new(incoming), now),
                Err((purpose, why)) => {
                    self.offence(peer, format!("refused a large transfer: {why}"));
                    self.transfer_failed(peer, purpose, now);
                }
            },
        }
    }

    fn pull_next(&mut self, peer: P, incoming: Box<Incoming>, now: Instant) {
        let request = SyncRequest::Part {
            transfer: incoming.transfer,
            offset: incoming.offset(),
        };
        self.send(peer, request, Pending::Part(incoming), now);
    }

    /// A large transfer failed. A sync session starts over from the other side with fresh
    /// state (the other device believes it sent what was lost); a fetch is retried at the next
    /// summary exchange.
    fn transfer_failed(&mut self, peer: P, purpose: Purpose, now: Instant) {
        match purpose {
            Purpose::Fetch(chat) => {
                self.fetching.remove(&chat);
            }
            Purpose::Sync(chat) => {
                self.forget_sync(peer, &chat);
                let request = SyncRequest::Pull {
                    chat: chat.to_string(),
                };
                self.send(peer, request, Pending::Pull(chat), now);
            }
        }
    }

    fn payload_arrived(&mut self, peer: P, purpose: Purpose, bytes: Vec<u8>) {
        let work = match purpose {
            Purpose::Sync(chat) => Work::Receive {
                peer,
                chat,
                message: bytes,
            },
            Purpose::Fetch(chat) => Work::Import {
                peer,
                chat,
                document: bytes,
            },
        };
        self.outputs.push_back(Output::Work(work));
    }

    /// A pull was cut (its request failed, or could not be sent). While the device is still
    /// up it goes on at once; otherwise it is kept to resume when the device is back. Returns
    /// it if it is given up (cut too often): the caller ends what it was for.
    fn keep_cut_transfer(
        &mut self,
        peer: P,
        mut incoming: Box<Incoming>,
        now: Instant,
    ) -> Option<Box<Incoming>> {
        if incoming.resumed >= MAX_RESUMES {
            tracing::debug!(%peer, ?incoming, "giving up a transfer cut too often");
            return Some(incoming);
        }
        if self.up.contains(&peer) {
            incoming.resumed += 1;
            tracing::debug!(%peer, ?incoming, "resuming a cut transfer on another connection");
            // Its session still runs; a fetch holds its chat again.
            if let Purpose::Fetch(chat) = &incoming.purpose {
                self.fetching.insert(chat.clone());
            }
            self.pull_next(peer, incoming, now);
            return None;
        }
        let session = match &incoming.purpose {
            Purpose::Sync(chat) => Some(chat.clone()),
            Purpose::Fetch(_) => None,
        };
        match self.resume.keep(peer, incoming, now) {
            Ok(()) => {
                tracing::debug!(%peer, "keeping a cut transfer to resume");
                // The session ends with the connection; the pull starts it again.
                if let Some(chat) = session {
                    self.session_over(peer, chat, now);
                }
                None
            }
            Err(incoming) => Some(incoming),
        }
    }

    /// A pull resumed when its device is back holds its fetch or its session again, so that
    /// neither starts twice.
    fn pull_resumed(&mut self, peer: P, incoming: Box<Incoming>, now: Instant) {
        match &incoming.purpose {
            Purpose::Fetch(chat) => {
                if !self.fetching.insert(chat.clone()) {
                    // Being fetched already, from this device or another: it arrives once.
                    return;
                }
            }
            Purpose::Sync(chat) => {
                if !self.running.resume(peer, chat.clone()) {
                    // A session about it is under way already: it brings the same changes.
                    return;
                }
            }
        }
        self.pull_next(peer, incoming, now);
    }
}

fn failure_text(failure: &Failure) -> &str {
    match failure {
        Failure::Offence(why) | Failure::Refused(why) | Failure::Internal(why) => why,
        Failure::Equivocation(_) => "the changes clash with a device's equivocation",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::sync::outbound::MAX_IN_FLIGHT;

    type Test = SyncCore<u32, u32>;

    fn chat(name: &str) -> ChatId {
        ChatId::new(name).unwrap()
    }

    fn drain(core: &mut Test) -> Vec<Output<u32, u32>> {
        std::iter::from_fn(|| core.poll_output()).collect()
    }

    /// The tokens of the requests sent, with what they ask.
    fn sent(outputs: &[Output<u32, u32>]) -> Vec<(Token, &Request)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { token, request, .. } => Some((*token, request)),
                _ => None,
            })
            .collect()
    }

    /// The chats of the sessions that started.
    fn stepped_chats(outputs: &[Output<u32, u32>]) -> Vec<ChatId> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Work(Work::Step { chat, .. }) => Some(chat.clone()),
                _ => None,
            })
            .collect()
    }

    fn message(bytes: usize) -> Result<Step, Failure> {
        Ok(Step {
            message: Some(vec![7; bytes]),
            in_sync: false,
        })
    }

    #[test]
    fn a_device_that_comes_up_is_sent_a_summary_and_the_roster() {
        let mut core = Test::new(0);
        let t0 = Instant::now();
        core.peer_up(1, t0);
        let out = drain(&mut core);
        assert!(matches!(out[0], Output::RosterDue { peer: 1 }));
        assert!(matches!(sent(&out)[..], [(_, Request::Summary)]));
        // And again every RESUMMARIZE, not before.
        core.tick(t0);
        assert!(sent(&drain(&mut core)).is_empty());
        core.tick(t0 + RESUMMARIZE);
        assert!(matches!(
            sent(&drain(&mut core))[..],
            [(_, Request::Summary)]
        ));
    }

    #[test]
    fn a_local_change_starts_one_session_per_device_and_runs_it_again_if_busy() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        core.peer_up(2, now);
        drain(&mut core);
        let chats = BTreeSet::from([chat("c")]);
        core.changed(&chats, now);
        assert_eq!(stepped_chats(&drain(&mut core)).len(), 2);
        // A change while the session with 1 runs: it runs again once that one ends.
        core.changed(&chats, now);
        assert_eq!(stepped_chats(&drain(&mut core)).len(), 0);
        let done = Ok(Step {
            message: None,
            in_sync: true,
        });
        core.stepped(1, chat("c"), done, now);
        let out = drain(&mut core);
        assert_eq!(stepped_chats(&out).len(), 1, "{out:?}");
        assert!(core.is_running(1, &chat("c")));
    }

    #[test]
    fn a_lost_request_forgets_the_sync_state_and_ends_the_session() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        core.changed(&BTreeSet::from([chat("c")]), now);
        drain(&mut core);
        core.stepped(1, chat("c"), message(10), now);
        let out = drain(&mut core);
        let (token, _) = sent(&out)[0];
        core.failed(token, now);
        let out = drain(&mut core);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::ForgetSync { peer: 1, .. }))
        );
        assert!(!core.is_running(1, &chat("c")));
        // A failure reported twice (or after the device went) changes nothing.
        core.failed(token, now);
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn a_message_too_large_for_a_request_asks_the_other_side_to_run_the_session() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        core.changed(&BTreeSet::from([chat("c")]), now);
        drain(&mut core);
        let too_large = core.part_bytes(&1) + 1;
        core.stepped(1, chat("c"), message(too_large), now);
        let out = drain(&mut core);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::ForgetSync { peer: 1, .. }))
        );
        assert!(matches!(
            sent(&out)[..],
            [(_, Request::Wire(SyncRequest::Pull { .. }))]
        ));
    }

    #[test]
    fn slow_down_pauses_the_device_then_the_request_goes_again() {
        let mut core = Test::new(0);
        let t0 = Instant::now();
        core.peer_up(1, t0);
        let (token, _) = sent(&drain(&mut core))[0];
        core.answer(token, SyncResponse::SlowDown, t0);
        assert!(
            sent(&drain(&mut core)).is_empty(),
            "nothing during the pause"
        );
        core.tick(t0 + SLOW_DOWN_PAUSE / 2);
        assert!(sent(&drain(&mut core)).is_empty());
        core.tick(t0 + SLOW_DOWN_PAUSE);
        assert!(matches!(
            sent(&drain(&mut core))[..],
            [(_, Request::Summary)]
        ));
    }

    #[test]
    fn a_session_that_never_settles_ends_after_the_round_cap() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        core.changed(&BTreeSet::from([chat("c")]), now);
        drain(&mut core);
        for _ in 0..MAX_SESSION_ROUNDS {
            core.stepped(1, chat("c"), message(10), now);
            let out = drain(&mut core);
            let (token, _) = sent(&out)[0];
            core.answer(token, SyncResponse::Sync { message: None }, now);
            drain(&mut core);
        }
        core.stepped(1, chat("c"), message(10), now);
        let out = drain(&mut core);
        assert!(sent(&out).is_empty(), "a request past the cap: {out:?}");
        assert!(!core.is_running(1, &chat("c")));
    }

    #[test]
    fn a_session_carrying_a_stream_of_changes_is_not_cut_by_the_round_cap() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        let chats = BTreeSet::from([chat("c")]);
        core.changed(&chats, now);
        drain(&mut core);
        for round in 0..3 * MAX_SESSION_ROUNDS {
            core.stepped(1, chat("c"), message(10), now);
            let out = drain(&mut core);
            let (token, _) = sent(&out)
                .first()
                .copied()
                .unwrap_or_else(|| panic!("cut after {round} rounds"));
            if round % 10 == 0 {
                core.changed(&chats, now);
                drain(&mut core);
            }
            core.answer(token, SyncResponse::Sync { message: None }, now);
            drain(&mut core);
        }
        assert!(core.is_running(1, &chat("c")));
        // But not for ever: a session stuck on a busy chat ends too.
        let mut ended = false;
        for _ in 0..MAX_SESSION_ROUNDS_IN_ALL {
            core.stepped(1, chat("c"), message(10), now);
            let out = drain(&mut core);
            let Some((token, _)) = sent(&out).first().copied() else {
                ended = true;
                break;
            };
            core.changed(&chats, now);
            drain(&mut core);
            core.answer(token, SyncResponse::Sync { message: None }, now);
            drain(&mut core);
        }
        assert!(
            ended,
            "a session ran past {MAX_SESSION_ROUNDS_IN_ALL} rounds"
        );
    }

    #[test]
    fn a_chat_apart_at_comparisons_ten_seconds_apart_starts_afresh() {
        let mut core = Test::new(0);
        let t0 = Instant::now();
        core.peer_up(1, t0);
        drain(&mut core);
        let apart = |began| Comparison {
            began,
            behind: BTreeSet::from([chat("c")]),
            ahead: BTreeSet::new(),
        };
        core.compared(1, apart(t0), t0);
        assert!(drain(&mut core).is_empty());
        let later = t0 + crate::sync::progress::STALLED_AFTER;
        core.compared(1, apart(later), later);
        let out = drain(&mut core);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::ForgetSync { peer: 1, .. }))
        );
        assert_eq!(stepped_chats(&out).len(), 1);
    }

    #[test]
    fn a_pull_cut_with_its_connection_goes_on_when_the_device_is_back() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        core.planned(1, vec![chat("c")], Vec::new(), now);
        let (token, _) = sent(&drain(&mut core))[0];
        let announced = SyncResponse::Document {
            payload: Payload::Parts {
                transfer: 9,
                len: 10,
            },
        };
        core.answer(token, announced, now);
        let out = drain(&mut core);
        let (token, _) = sent(&out)[0];
        core.answer(token, SyncResponse::Part { bytes: vec![1; 4] }, now);
        drain(&mut core);
        core.peer_down(1, now);
        assert!(drain(&mut core).is_empty());
        core.peer_up(1, now);
        let out = drain(&mut core);
        assert!(
            sent(&out).iter().any(|(_, r)| matches!(
                r,
                Request::Wire(SyncRequest::Part {
                    transfer: 9,
                    offset: 4
                })
            )),
            "{out:?}"
        );
    }

    #[test]
    fn requests_beyond_the_cap_wait_for_a_free_slot() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        let chats: Vec<ChatId> = (0..MAX_IN_FLIGHT + 4)
            .map(|i| chat(&format!("c{i}")))
            .collect();
        core.planned(1, chats, Vec::new(), now);
        let out = drain(&mut core);
        // The summary is one of the requests in flight.
        assert_eq!(sent(&out).len(), MAX_IN_FLIGHT - 1);
    }

    #[test]
    fn many_sessions_with_a_device_take_turns_and_a_local_change_goes_first() {
        use crate::sync::running::MAX_SESSIONS;
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        let chats: Vec<ChatId> = (0..MAX_SESSIONS + 3)
            .map(|i| chat(&format!("c{i}")))
            .collect();
        core.planned(1, Vec::new(), chats.clone(), now);
        let started = stepped_chats(&drain(&mut core));
        assert_eq!(started, chats[..MAX_SESSIONS]);
        assert_eq!(core.sessions_running(), MAX_SESSIONS);
        // A post here, in a chat whose session waits: it starts next.
        core.changed(&BTreeSet::from([chats[MAX_SESSIONS + 2].clone()]), now);
        assert!(stepped_chats(&drain(&mut core)).is_empty());
        let done = || {
            Ok(Step {
                message: None,
                in_sync: true,
            })
        };
        let mut order = Vec::new();
        for ended in &chats[..3] {
            core.stepped(1, ended.clone(), done(), now);
            order.extend(stepped_chats(&drain(&mut core)));
        }
        assert_eq!(
            order,
            [
                chats[MAX_SESSIONS + 2].clone(),
                chats[MAX_SESSIONS].clone(),
                chats[MAX_SESSIONS + 1].clone()
            ]
        );
        assert_eq!(core.sessions_running(), MAX_SESSIONS);
        // A device that goes drops its line; sessions with it start afresh when it is back.
        core.peer_down(1, now);
        assert_eq!(core.sessions_running(), 0);
    }

    #[test]
    fn a_request_naming_no_valid_chat_is_an_offence_and_refused() {
        let mut core = Test::new(0);
        let now = Instant::now();
        core.peer_up(1, now);
        drain(&mut core);
        let request = SyncRequest::Fetch {
            chat: "not a chat id!".into(),
        };
        core.request(1, request, 5, now);
        let out = drain(&mut core);
        assert!(matches!(out[0], Output::Offence { peer: 1, .. }));
        assert!(matches!(
            out[1],
            Output::Respond {
                reply: 5,
                response: Response::Wire(SyncResponse::Refused(_)),
                ..
            }
        ));
    }
}
