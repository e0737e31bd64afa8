//! Pairing in the network task: the inviter's open invitations and its answers to
//! `/chatsync/pair/1` requests, the joiner's side of a join, and the trust check in front of
//! the sync protocol's request handler.
//!
//! Inviter: `POST /v1/invites` opens an invitation ([`Invites`]) and the gate's window for
//! devices that are not paired. A pairing request with the right proof uses the invitation up
//! (before any await, so two requests with one ticket cannot both win), adds the joiner to the
//! roster, and only then answers `Accepted` and announces [`Event::Paired`].
//!
//! Joiner: `POST /v1/join` admits the ticket's inviter in the gate, dials it at the ticket's
//! addresses and sends the proof. On `Accepted` it adds the inviter to its roster, closes the
//! pairing connection (sync never runs on it: see `gate.rs`) and lets the ordinary redial
//! connect again, which starts the summary exchange that brings every chat.

use std::{collections::HashMap, time::Instant};

use chatsync_model::{DeviceId, limits::MAX_DEVICE_NAME_BYTES};
use libp2p::{
    PeerId,
    request_response::{self, OutboundRequestId, ResponseChannel},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    Network,
    pair_protocol::{JOIN_TIMEOUT, PairRequest, PairResponse, RefusedReason},
    task::NetworkTask,
};
use crate::{
    engine::{EngineError, Event},
    pairing::{
        invites::{Invites, Refusal, TooMany},
        proof::{self, INVITE_ID_BYTES, InviteId, PROOF_BYTES},
        ticket::{Ticket, ticket_addresses},
        unix_now,
    },
};

/// Joins under way on this device at most.
const MAX_JOINS: usize = 4;
/// Results of spawned pairing work waiting for the loop, at most.
const INTERNAL_QUEUE: usize = 64;

/// What the API asks of pairing.
pub enum PairCommand {
    Invite {
        expires_secs: u64,
        reply: oneshot::Sender<Result<InviteCreated, InviteError>>,
    },
    Cancel {
        invite: InviteId,
        reply: oneshot::Sender<bool>,
    },
    Join {
        ticket: Ticket,
        name: String,
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    },
}

#[derive(Debug)]
pub struct InviteCreated {
    pub ticket: Ticket,
    pub invite: InviteId,
}

#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error(transparent)]
    TooMany(#[from] TooMany),
    #[error("this device listens on no address another device could dial; check [network] listen")]
    NoAddress,
    #[error("the network is not running")]
    Stopped,
}

/// The inviter, as the joiner now knows it.
#[derive(Debug)]
pub struct Joined {
    pub device: DeviceId,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Invalid(String),
    #[error("the ticket has expired; ask for a new one with `chatsync pair`")]
    Expired,
    #[error("the ticket was already used; ask for a new one with `chatsync pair`")]
    Used,
    #[error("{0}")]
    Refused(String),
    #[error("could not reach the inviting device: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

/// Results of spawned pairing work.
pub enum PairInternal {
    /// The inviter added a joiner to its roster (or could not).
    Added {
        peer: PeerId,
        invite: InviteId,
        channel: ResponseChannel<PairResponse>,
        result: Result<chatsync_model::RosterEntry, EngineError>,
    },
    /// The joiner added the inviter to its roster (or could not).
    Recorded {
        request: OutboundRequestId,
        result: Result<chatsync_model::RosterEntry, EngineError>,
    },
    TimedOut(OutboundRequestId),
}

struct Join {
    peer: PeerId,
    ticket: Ticket,
    /// The inviter accepted; its roster entry is being written here.
    accepted: bool,
    reply: oneshot::Sender<Result<Joined, JoinError>>,
}

/// The network task's pairing state.
pub struct Pairing {
    invites: Invites,
    joins: HashMap<OutboundRequestId, Join>,
    tx: mpsc::Sender<PairInternal>,
    pub(super) rx: mpsc::Receiver<PairInternal>,
}

impl Default for Pairing {
    fn default() -> Pairing {
        let (tx, rx) = mpsc::channel(INTERNAL_QUEUE);
        Pairing {
            invites: Invites::default(),
            joins: HashMap::new(),
            tx,
            rx,
        }
    }
}

/// A name another device sent, if it is usable as a roster name.
fn clean_name(name: &str) -> Option<&str> {
    let name = name.trim();
    (!name.is_empty() && name.len() <= MAX_DEVICE_NAME_BYTES && !name.chars().any(char::is_control))
        .then_some(name)
}

impl NetworkTask {
    pub(super) fn on_pair_command(&mut self, command: PairCommand) {
        match command {
            PairCommand::Invite {
                expires_secs,
                reply,
            } => {
                let _ = reply.send(self.create_invite(expires_secs));
            }
            PairCommand::Cancel { invite, reply } => {
                let cancelled = self.pairing.invites.cancel(&invite, unix_now());
                self.update_window();
                let _ = reply.send(cancelled);
            }
            PairCommand::Join {
                ticket,
                name,
                reply,
            } => self.start_join(ticket, name, reply),
        }
    }

    fn create_invite(&mut self, expires_secs: u64) -> Result<InviteCreated, InviteError> {
        let listening: Vec<_> = self.swarm.listeners().cloned().collect();
        let addresses = ticket_addresses(&listening);
        if addresses.is_empty() {
            return Err(InviteError::NoAddress);
        }
        let now = unix_now();
        let secret: [u8; 32] = rand::random();
        let invite = proof::invite_id(&secret);
        let expires_at = now.saturating_add(expires_secs);
        self.pairing
            .invites
            .create(invite, secret, expires_at, now)?;
        self.update_window();
        tracing::info!(invite = %hex::encode(invite), expires_secs, "invitation opened");
        Ok(InviteCreated {
            ticket: Ticket {
                inviter: *self.swarm.local_peer_id(),
                secret,
                expires_at,
                addresses,
            },
            invite,
        })
    }

    /// Lets devices that are not paired connect while an invitation is open.
    fn update_window(&mut self) {
        let now = unix_now();
        let until =
            self.pairing.invites.open_until(now).map(|end| {
                Instant::now() + std::time::Duration::from_secs(end.saturating_sub(now))
            });
        self.swarm.behaviour_mut().gate.open_window(until);
    }

    pub(super) fn on_pair_event(
        &mut self,
        event: request_response::Event<PairRequest, PairResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_pair_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_pair_response(request_id, response),
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.end_join(request_id, Err(JoinError::Unreachable(error.to_string()))),
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "a pairing request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Inviter: checks the proof, uses the invitation up, and adds the joiner.
    fn on_pair_request(
        &mut self,
        peer: PeerId,
        request: PairRequest,
        channel: ResponseChannel<PairResponse>,
    ) {
        let me = *self.swarm.local_peer_id();
        let checked = match <InviteId>::try_from(request.invite.as_slice()) {
            Ok(invite) if request.proof.len() == PROOF_BYTES && peer != me => self
                .pairing
                .invites
                .redeem(&invite, unix_now(), |secret| {
                    proof::check(secret, &me, &peer, &request.proof)
                })
                .map(|()| invite)
                .map_err(|refusal| match refusal {
                    Refusal::Unknown => RefusedReason::Unknown,
                    Refusal::Used => RefusedReason::Used,
                    Refusal::Expired => RefusedReason::Expired,
                    Refusal::BadProof => RefusedReason::BadProof,
                }),
            _ => Err(RefusedReason::Unknown),
        };
        self.update_window();
        let invite = match checked {
            Ok(invite) => invite,
            Err(reason) => {
                tracing::info!(%peer, ?reason, "refused a pairing request");
                self.answer(channel, PairResponse::Refused { reason });
                return;
            }
        };
        tracing::info!(%peer, "pairing request accepted; adding the device");
        let name = clean_name(&request.name).map(str::to_string);
        let engine = self.engine.clone();
        let tx = self.pairing.tx.clone();
        self.tasks.spawn(async move {
            let result = engine.add_device(&peer.to_base58(), name.as_deref()).await;
            let _ = tx
                .send(PairInternal::Added {
                    peer,
                    invite,
                    channel,
                    result,
                })
                .await;
        });
    }

    fn answer(&mut self, channel: ResponseChannel<PairResponse>, response: PairResponse) {
        if self
            .swarm
            .behaviour_mut()
            .pair
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("the pairing answer could not be sent (connection gone)");
        }
    }

    pub(super) fn on_pair_internal(&mut self, internal: PairInternal) {
        match internal {
            PairInternal::Added {
                peer,
                invite,
                channel,
                result,
            } => match result {
                Ok(entry) => {
                    // Trusted in the gate before the answer, so that the joiner's next
                    // connection is admitted for sync.
                    self.apply_trust();
                    let name = self.engine.device_name();
                    self.answer(channel, PairResponse::Accepted { name });
                    tracing::info!(%peer, name = %entry.name, "device paired");
                    let _ = self.engine.event_sender().send(Event::Paired {
                        invite: hex::encode(invite),
                        device: entry.id,
                        name: entry.name,
                    });
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "could not add a pairing device");
                    self.answer(
                        channel,
                        PairResponse::Refused {
                            reason: RefusedReason::NotAllowed,
                        },
                    );
                }
            },
            PairInternal::Recorded { request, result } => {
                let result = result
                    .map(|entry| Joined {
                        device: entry.id,
                        name: entry.name,
                    })
                    .map_err(|e| JoinError::Failed(format!("could not record the inviter: {e}")));
                self.end_join(request, result);
            }
            PairInternal::TimedOut(request) => {
                if self
                    .pairing
                    .joins
                    .get(&request)
                    .is_some_and(|j| !j.accepted)
                {
                    self.end_join(
                        request,
                        Err(JoinError::Unreachable(format!(
                            "no answer within {} s",
                            JOIN_TIMEOUT.as_secs()
                        ))),
                    );
                }
            }
        }
    }

    /// Joiner: dials the inviter and sends the proof.
    fn start_join(
        &mut self,
        ticket: Ticket,
        name: String,
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    ) {
        let me = *self.swarm.local_peer_id();
        let peer = ticket.inviter;
        let refuse = |reply: oneshot::Sender<_>, e| {
            let _ = reply.send(Err(e));
        };
        if peer == me {
            return refuse(
                reply,
                JoinError::Invalid(
                    "this ticket was made by this device; use it on the device that joins".into(),
                ),
            );
        }
        if ticket.expired(unix_now()) {
            return refuse(reply, JoinError::Expired);
        }
        if self.pairing.joins.len() >= MAX_JOINS
            || self.pairing.joins.values().any(|j| j.peer == peer)
        {
            return refuse(
                reply,
                JoinError::Failed("a join with this device is already under way".into()),
            );
        }
        self.swarm.behaviour_mut().gate.begin_join(peer);
        // The ticket's relayed addresses go through relays this device must be let to dial.
        self.allow_relays_in(&ticket.addresses);
        let request = PairRequest {
            invite: proof::invite_id(&ticket.secret).to_vec(),
            proof: proof::proof(&ticket.secret, &peer, &me).to_vec(),
            name,
        };
        let id = self.swarm.behaviour_mut().pair.send_request_with_addresses(
            &peer,
            request,
            ticket.addresses.clone(),
        );
        tracing::info!(inviter = %peer, "joining");
        self.pairing.joins.insert(
            id,
            Join {
                peer,
                ticket,
                accepted: false,
                reply,
            },
        );
        // A timer only (it holds no engine): not tracked, so that shutdown does not wait for it.
        let tx = self.pairing.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(JOIN_TIMEOUT).await;
            let _ = tx.send(PairInternal::TimedOut(id)).await;
        });
    }

    fn on_pair_response(&mut self, request: OutboundRequestId, response: PairResponse) {
        let Some(join) = self.pairing.joins.get_mut(&request) else {
            return;
        };
        match response {
            PairResponse::Accepted { name } => {
                join.accepted = true;
                let peer = join.peer;
                let name = clean_name(&name).map(str::to_string);
                let engine = self.engine.clone();
                let tx = self.pairing.tx.clone();
                self.tasks.spawn(async move {
                    let result = engine.add_device(&peer.to_base58(), name.as_deref()).await;
                    let _ = tx.send(PairInternal::Recorded { request, result }).await;
                });
            }
            PairResponse::Refused { reason } => {
                let error = match reason {
                    RefusedReason::Used => JoinError::Used,
                    RefusedReason::Expired => JoinError::Expired,
                    RefusedReason::Unknown => JoinError::Refused(
                        "the inviting device does not know this ticket (it was cancelled, \
                         altered, or made before the inviting daemon restarted)"
                            .into(),
                    ),
                    RefusedReason::BadProof => JoinError::Refused(
                        "the inviting device refused the ticket's proof (altered ticket?)".into(),
                    ),
                    RefusedReason::NotAllowed => JoinError::Refused(
                        "the inviting device will not add this device (it was removed from \
                         the mesh before; a removed device needs a new identity)"
                            .into(),
                    ),
                };
                self.end_join(request, Err(error));
            }
        }
    }

    /// Ends a join: the gate stops admitting the inviter for it, and the pairing connection is
    /// closed (once paired, the devices connect again as roster devices, and sync).
    fn end_join(&mut self, request: OutboundRequestId, result: Result<Joined, JoinError>) {
        let Some(join) = self.pairing.joins.remove(&request) else {
            return;
        };
        let peer = join.peer;
        self.swarm.behaviour_mut().gate.end_join(&peer);
        if result.is_ok() {
            self.apply_trust();
            // The ticket's first address stays first.
            if self.allowed.contains(&peer) {
                for addr in join.ticket.addresses.iter().rev() {
                    self.remembered
                        .save_reached(self.engine.store(), peer, addr.clone());
                }
            }
            if let Some(entry) = self.book.entry(peer) {
                for addr in join.ticket.addresses {
                    entry.add_address(addr);
                }
                entry.reset_backoff();
            }
        }
        if result.is_ok() || !self.swarm.behaviour().gate.is_trusted(&peer) {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        match &result {
            Ok(_) => tracing::info!(inviter = %peer, "joined"),
            Err(e) => tracing::info!(inviter = %peer, error = %e, "join failed"),
        }
        let _ = join.reply.send(result);
    }
}

impl Network {
    /// Opens an invitation for `expires_secs` seconds; returns its ticket.
    pub async fn invite(&self, expires_secs: u64) -> Result<InviteCreated, InviteError> {
        self.ask(|reply| {
            super::Command::Pair(PairCommand::Invite {
                expires_secs,
                reply,
            })
        })
        .await
        .unwrap_or(Err(InviteError::Stopped))
    }

    /// Cancels an open invitation; whether it was open.
    pub async fn cancel_invite(&self, invite: InviteId) -> bool {
        self.ask(|reply| super::Command::Pair(PairCommand::Cancel { invite, reply }))
            .await
            .unwrap_or(false)
    }

    /// Joins the mesh of the ticket's inviter, calling this device `name` there.
    pub async fn join(&self, ticket: Ticket, name: String) -> Result<Joined, JoinError> {
        let asked = self.ask(|reply| {
            super::Command::Pair(PairCommand::Join {
                ticket,
                name,
                reply,
            })
        });
        // The task answers within JOIN_TIMEOUT; this bound only guards against a stuck task.
        match tokio::time::timeout(JOIN_TIMEOUT * 2, asked).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(JoinError::Failed("the network is not running".into())),
            Err(_) => Err(JoinError::Unreachable("no answer in time".into())),
        }
    }
}

/// Parses an invitation id as the API shows it (hex).
pub fn parse_invite_id(text: &str) -> Option<InviteId> {
    let bytes = hex::decode(text).ok()?;
    <[u8; INVITE_ID_BYTES]>::try_from(bytes.as_slice()).ok()
}
