//! The simulated world: devices (each the real sync core over a real chat document), their
//! disks, links between them, messages in flight, and virtual time.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

use automerge::{ActorId, sync::State};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId, ModelError,
    authorship::{self, ActorTop, Attestation, Provenance, Standing},
    exchange::{self, Step},
    proofs::Proofs,
    sync::{
        Comparison, Failure, Output, Request, Response, SyncCore, Token, Work,
        wire::{ChatHeads, SyncRequest, SyncResponse},
    },
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::support;

/// Which links exist between devices when nothing is cut.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Every device linked to every other; partitions, losses and crashes.
    Mesh,
    /// A line: each device linked to the next only, so changes cross every device between.
    Chain,
    /// One device in the middle, linked to all others (a device everyone reaches).
    Star,
    /// Every device linked to every other; crashes and losses, no partitions.
    MeshCrashesOnly,
}

/// Steps of faults and writes before the final heal.
const FAULT_STEPS: usize = 250;
/// Virtual time within which the devices must converge after the heal: the periodic summary
/// exchange (30 s) and the stall rule (10 s) bound it.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(5 * 60);
/// How far virtual time moves per timer tick (the daemon ticks every 250 ms).
const TICK: Duration = Duration::from_millis(250);
/// For this long after the heal messages are still lost now and then, so that what was lost
/// last is found only by the cores' timers (re-checks, the periodic summaries, stall restarts).
const LOSSY_AFTER_HEAL: Duration = Duration::from_secs(60);
/// The chance that a message is lost, before the heal and just after it.
const LOSS: f64 = 0.03;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Running,
    Answering,
}

/// What a device has flushed to its disk.
#[derive(Default)]
struct Disk {
    /// The chat as fetched or created, then every chunk of changes.
    base: Option<Vec<u8>>,
    chunks: Vec<Vec<u8>>,
    attestations: Vec<(ActorId, u64, Attestation)>,
}

/// A write not yet flushed. A crash keeps a prefix of them, any prefix (sled recovers a
/// prefix of its log).
enum Write {
    Chunk(Vec<u8>),
    Attestation(ActorTop),
    /// An attestation (actor, sequence number) forgotten.
    Forget(ActorId, u64),
    /// A post whose chunk was written before this: acknowledged by the flush.
    Post(MessageId),
}

struct Chat {
    doc: ChatDoc,
    proofs: Proofs,
}

/// Where an answer goes: the device that asked, and its request's token.
#[derive(Debug)]
pub struct Reply {
    to: usize,
    token: Token,
}

type Core = SyncCore<usize, Reply>;

/// Document work done, reported to the core (at once, or once what it wrote is flushed: the
/// engine answers only once what arrived is durable).
enum Done {
    Stepped(usize, ChatId, Result<Step, Failure>),
    Answered(usize, ChatId, Reply, Result<Option<Step>, Failure>),
}

struct Node {
    id: DeviceId,
    device: Device,
    runs: u32,
    alive: bool,
    chat: Option<Chat>,
    disk: Disk,
    unflushed: Vec<Write>,
    /// Work results that reach the core once the writes before them are flushed.
    after_flush: Vec<Done>,
    states: HashMap<(usize, Role), State>,
    /// The daemon's sync core, as it is.
    core: Core,
    /// Document work the core asked for, not done yet (the daemon runs it in tasks).
    work: VecDeque<Work<usize, Reply>>,
}

enum Body {
    Request(Token, SyncRequest),
    Response(Token, SyncResponse),
    /// The receiver learns that the sender is connected (identify finished on its side): the
    /// two sides of a new connection learn it at different times, and requests can arrive
    /// before it.
    Up,
}

struct Envelope {
    from: usize,
    to: usize,
    body: Body,
}

impl Envelope {
    fn bytes(&self) -> usize {
        match &self.body {
            Body::Request(_, r) => r.wire_len(),
            Body::Response(_, r) => r.wire_len(),
            Body::Up => 0,
        }
    }
}

/// What one run measured after the final heal.
pub struct Report {
    /// Hops (every message in flight delivered, work done, writes flushed) until every device
    /// had the same heads; a round trip is two.
    pub hops_to_converge: usize,
    /// Virtual time until then, in milliseconds.
    pub ms_to_converge: usize,
    /// Messages delivered until then, and their bytes.
    pub messages_to_converge: usize,
    pub bytes_to_converge: usize,
    /// Changes the device that lacked the most lacked at the heal.
    pub most_missed: usize,
}

pub struct World {
    seed: u64,
    rng: StdRng,
    shape: Shape,
    nodes: Vec<Node>,
    /// Links that exist when nothing is cut, as (smaller, larger).
    links: BTreeSet<(usize, usize)>,
    cut: BTreeSet<(usize, usize)>,
    in_flight: VecDeque<Envelope>,
    chat: ChatId,
    acknowledged: BTreeSet<MessageId>,
    posts: u64,
    /// The posts' logical clock (milliseconds of the messages' timestamps).
    clock: i64,
    /// Virtual time: `epoch` plus how far it has moved.
    epoch: Instant,
    elapsed: Duration,
    /// Every refusal of one device's data by another, with why.
    refusals: Vec<String>,
    /// Messages delivered so far, and their bytes.
    delivered: usize,
    delivered_bytes: usize,
    log: Vec<String>,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn new_node(i: usize, rng: &mut StdRng) -> Node {
    let id = DeviceId::new(format!("dev-{i}")).unwrap();
    Node {
        device: Device::with_session(id.clone(), format!("d{i}"), b"0").unwrap(),
        id,
        runs: 0,
        alive: true,
        chat: None,
        disk: Disk::default(),
        unflushed: Vec::new(),
        after_flush: Vec::new(),
        states: HashMap::new(),
        core: SyncCore::new(rng.random()),
        work: VecDeque::new(),
    }
}

impl World {
    pub fn new(seed: u64, shape: Shape) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(3..=7usize);
        let nodes = (0..count).map(|i| new_node(i, &mut rng)).collect();
        let mut links = BTreeSet::new();
        for a in 0..count {
            for b in a + 1..count {
                let linked = match shape {
                    Shape::Mesh | Shape::MeshCrashesOnly => true,
                    Shape::Chain => b == a + 1,
                    Shape::Star => a == 0,
                };
                if linked {
                    links.insert((a, b));
                }
            }
        }
        let mut world = World {
            seed,
            rng,
            shape,
            nodes,
            links,
            cut: BTreeSet::new(),
            in_flight: VecDeque::new(),
            chat: ChatId::new("simulated").unwrap(),
            acknowledged: BTreeSet::new(),
            posts: 0,
            clock: 1_000,
            epoch: Instant::now(),
            elapsed: Duration::ZERO,
            refusals: Vec::new(),
            delivered: 0,
            delivered_bytes: 0,
            log: Vec::new(),
        };
        // The chat is created on one device (durably) and reaches the others by fetches.
        let creator = world.rng.random_range(0..count);
        let node = &mut world.nodes[creator];
        let mut doc = ChatDoc::create(world.chat.clone(), "sim", &node.device, 1).unwrap();
        node.disk.base = Some(doc.save());
        node.chat = Some(Chat {
            doc,
            proofs: Proofs::default(),
        });
        world
    }

    fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    fn note(&mut self, what: String) {
        self.log.push(what);
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&key(a, b))
            && !self.cut.contains(&key(a, b))
            && self.nodes[a].alive
            && self.nodes[b].alive
    }

    fn peers(&self, a: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|b| *b != a && self.linked(a, *b))
            .collect()
    }

    pub fn run(mut self) -> Report {
        let partitions = !matches!(self.shape, Shape::MeshCrashesOnly);
        // Everyone starts connected.
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        for (a, b) in links {
            self.connected(a, b);
        }
        for _ in 0..FAULT_STEPS {
            let roll = self.rng.random_range(0..100u32);
            match roll {
                0..=21 => self.post(),
                22..=51 => self.deliver_one(LOSS),
                52..=61 => self.work_one(),
                62..=69 => self.flush_one(),
                70..=76 => self.pass_time(),
                77..=82 if partitions => self.cut_or_heal(),
                83..=85 => self.crash_one(),
                86..=90 => self.restart_one(),
                _ => self.deliver_one(0.0),
            }
        }
        self.heal_everything();
        let most_missed = self.most_missed();
        let (messages_before, bytes_before) = (self.delivered, self.delivered_bytes);
        let began = self.elapsed;
        let hops = self.converge();
        self.check();
        Report {
            hops_to_converge: hops,
            ms_to_converge: (self.elapsed - began).as_millis() as usize,
            messages_to_converge: self.delivered - messages_before,
            bytes_to_converge: self.delivered_bytes - bytes_before,
            most_missed,
        }
    }

    // ----- the core's outputs -----

    /// Carries out everything `at`'s core decided.
    fn pump(&mut self, at: usize) {
        while let Some(output) = self.nodes[at].core.poll_output() {
            match output {
                Output::Send {
                    peer,
                    token,
                    request,
                } => {
                    let request = match request {
                        Request::Summary => SyncRequest::Summary(self.summary(at)),
                        Request::Wire(request) => request,
                    };
                    if self.linked(at, peer) {
                        self.in_flight.push_back(Envelope {
                            from: at,
                            to: peer,
                            body: Body::Request(token, request),
                        });
                    } else {
                        let now = self.now();
                        self.nodes[at].core.failed(token, now);
                    }
                }
                Output::Respond {
                    peer,
                    reply,
                    response,
                } => {
                    let response = match response {
                        Response::Summary => SyncResponse::Summary(self.summary(at)),
                        Response::Wire(response) => response,
                    };
                    if self.linked(at, peer) {
                        self.in_flight.push_back(Envelope {
                            from: at,
                            to: reply.to,
                            body: Body::Response(reply.token, response),
                        });
                    }
                }
                Output::Work(work) => self.nodes[at].work.push_back(work),
                Output::ForgetSync { peer, chat: _ } => {
                    let node = &mut self.nodes[at];
                    node.states.remove(&(peer, Role::Running));
                    node.states.remove(&(peer, Role::Answering));
                }
                Output::Offence { peer, why } => {
                    let why = format!("device {at} took device {peer} for a liar: {why}");
                    self.note(why.clone());
                    self.refusals.push(why);
                }
                Output::RosterDue { .. } => {}
            }
        }
    }

    fn summary(&mut self, at: usize) -> Vec<ChatHeads> {
        let chat = self.chat.to_string();
        match &mut self.nodes[at].chat {
            Some(c) => vec![ChatHeads {
                chat,
                heads: c.doc.heads().iter().map(|h| h.to_string()).collect(),
            }],
            None => Vec::new(),
        }
    }

    // ----- faults, writes and time -----

    fn post(&mut self) {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive && self.nodes[*i].chat.is_some())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let at = candidates[self.rng.random_range(0..candidates.len())];
        self.posts += 1;
        self.clock += 1;
        let id = MessageId::new(format!("m{}", self.posts)).unwrap();
        let react = self.rng.random_bool(0.2);
        let node = &mut self.nodes[at];
        let chat = node.chat.as_mut().unwrap();
        let target = chat.doc.message_ids().next().cloned();
        if react && let Some(target) = target {
            chat.doc
                .react(&node.device, &target, Some("+1"), self.clock)
                .unwrap();
            let chunk = chat.doc.take_local_changes();
            node.unflushed.push(Write::Chunk(chunk));
        } else {
            chat.doc
                .post(&node.device, id.clone(), "hello", None, self.clock)
                .unwrap();
            let chunk = chat.doc.take_local_changes();
            node.unflushed.push(Write::Chunk(chunk));
            node.unflushed.push(Write::Post(id));
        }
        // Other devices hear of it once it is durable (see `flush`), but a session already
        // under way may carry it before.
    }

    /// Virtual time moves on by up to two seconds, and every core's timers run.
    fn pass_time(&mut self) {
        let by = Duration::from_millis(self.rng.random_range(1..2_000));
        self.advance(by);
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now();
        for at in 0..self.nodes.len() {
            if self.nodes[at].alive {
                self.nodes[at].core.tick(now);
                self.pump(at);
            }
        }
    }

    fn flush_one(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect();
        if let Some(&at) = alive.get(self.rng.random_range(0..alive.len().max(1))) {
            self.flush(at);
        }
    }

    /// Makes `at`'s writes durable, acknowledges its posts, reports the work that waited for
    /// them, and tells the core of the chat's new changes.
    fn flush(&mut self, at: usize) {
        let writes = std::mem::take(&mut self.nodes[at].unflushed);
        let mut changed = false;
        for write in writes {
            changed |= self.write_to_disk(at, write, true);
        }
        let now = self.now();
        for done in std::mem::take(&mut self.nodes[at].after_flush) {
            self.report(at, done, now);
        }
        if changed {
            let chats = BTreeSet::from([self.chat.clone()]);
            self.nodes[at].core.changed(&chats, now);
        }
        self.pump(at);
    }

    fn report(&mut self, at: usize, done: Done, now: Instant) {
        let core = &mut self.nodes[at].core;
        match done {
            Done::Stepped(peer, chat, step) => core.stepped(peer, chat, step, now),
            Done::Answered(peer, chat, reply, step) => core.answered(peer, chat, reply, step, now),
        }
    }

    /// Puts one write on `at`'s disk; a post is acknowledged only by a flush. Returns whether
    /// it was a chunk of changes.
    fn write_to_disk(&mut self, at: usize, write: Write, flushed: bool) -> bool {
        let disk = &mut self.nodes[at].disk;
        match write {
            Write::Chunk(bytes) => {
                let some = !bytes.is_empty();
                if some {
                    disk.chunks.push(bytes);
                }
                return some;
            }
            Write::Attestation(top) => {
                disk.attestations
                    .push((top.actor, top.seq, top.attestation));
            }
            Write::Forget(actor, seq) => {
                disk.attestations
                    .retain(|(a, s, _)| !(*a == actor && *s == seq));
            }
            Write::Post(id) => {
                if flushed {
                    self.acknowledged.insert(id);
                }
            }
        }
        false
    }

    fn cut_or_heal(&mut self) {
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        let link = links[self.rng.random_range(0..links.len())];
        if self.cut.remove(&link) {
            self.note(format!("heal {link:?}"));
            if self.linked(link.0, link.1) {
                self.connected(link.0, link.1);
            }
        } else {
            self.note(format!("cut {link:?}"));
            let was = self.linked(link.0, link.1);
            self.cut.insert(link);
            if was {
                self.disconnected(link.0, link.1);
            }
        }
    }

    fn crash_one(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect();
        if alive.len() <= 1 {
            return;
        }
        let at = alive[self.rng.random_range(0..alive.len())];
        self.note(format!("crash {at}"));
        for peer in self.peers(at) {
            self.disconnected(at, peer);
        }
        // The disk keeps any prefix of what was written since the last flush.
        let mut writes = std::mem::take(&mut self.nodes[at].unflushed);
        let kept = self.rng.random_range(0..=writes.len());
        writes.truncate(kept);
        for write in writes {
            self.write_to_disk(at, write, false);
        }
        let first_transfer = self.rng.random();
        let node = &mut self.nodes[at];
        node.alive = false;
        node.chat = None;
        node.after_flush.clear();
        node.states.clear();
        node.work.clear();
        node.core = SyncCore::new(first_transfer);
    }

    fn restart_one(&mut self) {
        let dead: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.nodes[*i].alive)
            .collect();
        if let Some(&at) = dead.get(self.rng.random_range(0..dead.len().max(1))) {
            self.restart(at);
        }
    }

    fn restart(&mut self, at: usize) {
        self.note(format!("restart {at}"));
        let node = &mut self.nodes[at];
        node.runs += 1;
        let session = format!("{}", node.runs);
        node.device = Device::with_session(
            node.id.clone(),
            node.device.name.clone(),
            session.as_bytes(),
        )
        .unwrap();
        node.alive = true;
        if let Some(base) = &node.disk.base {
            let mut bytes = base.clone();
            for chunk in &node.disk.chunks {
                bytes.extend_from_slice(chunk);
            }
            let mut doc = ChatDoc::load(&bytes, &node.device).unwrap();
            let (proofs, stale) = Proofs::restore(node.disk.attestations.clone(), &mut doc);
            node.disk
                .attestations
                .retain(|(a, s, _)| !stale.iter().any(|(x, t)| x == a && t == s));
            node.chat = Some(Chat { doc, proofs });
        }
        for peer in self.peers(at) {
            self.connected(at, peer);
        }
    }

    fn heal_everything(&mut self) {
        self.note("heal everything".into());
        for at in 0..self.nodes.len() {
            if !self.nodes[at].alive {
                self.restart(at);
            }
        }
        let cut: Vec<(usize, usize)> = std::mem::take(&mut self.cut).into_iter().collect();
        for (a, b) in cut {
            if self.linked(a, b) {
                self.connected(a, b);
            }
        }
        for at in 0..self.nodes.len() {
            self.flush(at);
        }
    }

    // ----- connections -----

    /// A connection came up: one core hears of it now, the other when its "up" is delivered,
    /// among the messages in flight (its side's identify may finish later).
    fn connected(&mut self, a: usize, b: usize) {
        let (first, second) = if self.rng.random_bool(0.5) {
            (a, b)
        } else {
            (b, a)
        };
        let now = self.now();
        self.nodes[first].core.peer_up(second, now);
        self.pump(first);
        self.in_flight.push_back(Envelope {
            from: first,
            to: second,
            body: Body::Up,
        });
    }

    /// A connection went down: what was in flight on it is lost, both cores hear of it, and
    /// both devices forget their conversations with each other (the daemon's `on_peer_gone`).
    fn disconnected(&mut self, a: usize, b: usize) {
        self.in_flight.retain(|e| key(e.from, e.to) != key(a, b));
        let now = self.now();
        for (me, other) in [(a, b), (b, a)] {
            let node = &mut self.nodes[me];
            node.states.retain(|(peer, _), _| *peer != other);
            node.core.peer_down(other, now);
            self.pump(me);
        }
    }

    // ----- messages -----

    /// Delivers one message in flight, chosen at random; with probability `loss` it is lost
    /// instead, and the device that asked learns that its request failed.
    fn deliver_one(&mut self, loss: f64) {
        if self.in_flight.is_empty() {
            return;
        }
        let at = self.rng.random_range(0..self.in_flight.len());
        let envelope = self.in_flight.remove(at).unwrap();
        let now = self.now();
        let lost = match envelope.body {
            // A connection's "up" is not a message: it cannot be lost.
            Body::Up => None,
            Body::Request(token, _) => Some((envelope.from, token)),
            Body::Response(token, _) => Some((envelope.to, token)),
        };
        if let Some((asker, token)) = lost.filter(|_| self.rng.random_bool(loss)) {
            self.nodes[asker].core.failed(token, now);
            self.pump(asker);
        } else {
            self.deliver(envelope, now);
        }
    }

    fn deliver(&mut self, envelope: Envelope, now: Instant) {
        self.delivered += 1;
        self.delivered_bytes += envelope.bytes();
        let Envelope { from, to, body } = envelope;
        match body {
            Body::Request(token, request) => {
                let reply = Reply { to: from, token };
                self.nodes[to].core.request(from, request, reply, now);
            }
            Body::Response(token, response) => self.nodes[to].core.answer(token, response, now),
            Body::Up => self.nodes[to].core.peer_up(from, now),
        }
        self.pump(to);
    }

    // ----- document work -----

    /// Does the next piece of work of a device that has some, chosen at random.
    fn work_one(&mut self) {
        let busy: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive && !self.nodes[*i].work.is_empty())
            .collect();
        if busy.is_empty() {
            return;
        }
        let at = busy[self.rng.random_range(0..busy.len())];
        self.work(at);
    }

    /// Does `at`'s next piece of work, as the engine does it.
    fn work(&mut self, at: usize) {
        let Some(work) = self.nodes[at].work.pop_front() else {
            return;
        };
        let now = self.now();
        match work {
            Work::Step { peer, chat } => {
                let step = self.next_step(at, peer);
                self.nodes[at].core.stepped(peer, chat, step, now);
            }
            Work::Receive {
                peer,
                chat,
                message,
            } => match self.take(at, peer, Role::Running, &message) {
                Ok(step) => self.when_durable(at, Done::Stepped(peer, chat, Ok(step))),
                Err(failure) => self.nodes[at].core.stepped(peer, chat, Err(failure), now),
            },
            Work::Answer {
                peer,
                chat,
                message,
                reply,
            } => {
                if self.nodes[at].chat.is_none() {
                    self.nodes[at]
                        .core
                        .answered(peer, chat, reply, Ok(None), now);
                } else {
                    match self.take(at, peer, Role::Answering, &message) {
                        Ok(step) => {
                            self.when_durable(at, Done::Answered(peer, chat, reply, Ok(Some(step))))
                        }
                        Err(failure) => {
                            self.nodes[at]
                                .core
                                .answered(peer, chat, reply, Err(failure), now)
                        }
                    }
                }
            }
            Work::Export {
                peer,
                chat: _,
                reply,
            } => {
                let document = self.export(at);
                self.nodes[at].core.exported(peer, reply, document, now);
            }
            Work::Import {
                peer,
                chat,
                document,
            } => {
                let stored = self.import(at, peer, &document);
                let imported = stored.is_ok();
                self.nodes[at]
                    .core
                    .imported(peer, chat.clone(), stored, now);
                if imported {
                    // The engine passes a chat new here on at once.
                    self.nodes[at].core.changed(&BTreeSet::from([chat]), now);
                }
            }
            Work::TakeEvidence {
                peer, chat, reply, ..
            } => {
                // No device in this world equivocates: evidence is refused, and fails the run.
                let why = format!("device {at} was shown evidence of an equivocation by {peer}");
                self.note(why.clone());
                self.refusals.push(why.clone());
                self.nodes[at].core.evidence_taken(
                    peer,
                    chat,
                    reply,
                    Err(Failure::Offence(why)),
                    now,
                );
            }
            Work::Compare { peer, theirs } => {
                let (comparison, fetch, start) = self.compare(at, peer, &theirs);
                let core = &mut self.nodes[at].core;
                core.planned(peer, fetch, start, now);
                core.compared(peer, comparison, now);
            }
        }
        self.pump(at);
    }

    /// Reports work to the core once what it wrote is durable (at once if nothing waits).
    fn when_durable(&mut self, at: usize, done: Done) {
        if self.nodes[at].unflushed.is_empty() {
            let now = self.now();
            self.report(at, done, now);
        } else {
            self.nodes[at].after_flush.push(done);
        }
    }

    /// The next message of the conversation `at` runs with `peer` (the engine's
    /// `sync_message`).
    fn next_step(&mut self, at: usize, peer: usize) -> Result<Step, Failure> {
        let node = &mut self.nodes[at];
        let own = node.id.clone();
        let Some(chat) = node.chat.as_mut() else {
            return Err(Failure::Internal("no such chat".into()));
        };
        let heads = chat.doc.heads();
        let answering = node.states.get(&(peer, Role::Answering));
        if exchange::peer_has_exactly(answering, &heads) {
            if let Some(running) = node.states.get_mut(&(peer, Role::Running)) {
                exchange::know_peer_has(running, &heads);
            }
            return Ok(Step {
                message: None,
                in_sync: true,
            });
        }
        let state = node.states.entry((peer, Role::Running)).or_default();
        support::with_keys(&own, |keys| {
            exchange::next_step(&mut chat.doc, &mut chat.proofs, state, keys)
        })
        .map_err(|e| Failure::Internal(e.to_string()))
    }

    /// `at` takes a message from `peer` in the conversation where it plays `role` (the
    /// engine's `receive_sync`): what it brought is written (flushed later), and the reply is
    /// returned.
    fn take(
        &mut self,
        at: usize,
        peer: usize,
        role: Role,
        message: &[u8],
    ) -> Result<Step, Failure> {
        let node = &mut self.nodes[at];
        let own = node.id.clone();
        let Some(chat) = node.chat.as_mut() else {
            return Err(Failure::Internal("no such chat".into()));
        };
        let state = node.states.entry((peer, role)).or_default();
        let taken = support::with_keys(&own, |keys| {
            exchange::take_message(&mut chat.doc, &mut chat.proofs, state, message, keys)
        });
        match taken {
            Ok(taken) => {
                // As the engine writes them: attestations, the chunk, then what is forgotten
                // (through the committer, after the chunk).
                for top in taken.proofs.store {
                    node.unflushed.push(Write::Attestation(top));
                }
                if !taken.changes.is_empty() {
                    node.unflushed.push(Write::Chunk(taken.changes));
                }
                for (actor, seq) in taken.proofs.forget {
                    node.unflushed.push(Write::Forget(actor, seq));
                }
                taken.reply.map_err(|e| Failure::Internal(e.to_string()))
            }
            Err(e) => {
                node.states.remove(&(peer, Role::Running));
                node.states.remove(&(peer, Role::Answering));
                if std::env::var("CHATSYNC_SIM_TRACE").is_ok() {
                    self.explain(at, peer, message);
                }
                // Any refusal of an honest device's data fails the run (`check`).
                let failure = Failure::Refused(e.to_string());
                self.refused(at, peer, e);
                Err(failure)
            }
        }
    }

    /// The whole chat as `at` sends it: what it can prove, sealed. Nothing provable yet is a
    /// refusal of the fetch, as in the daemon; it is asked again later.
    fn export(&mut self, at: usize) -> Result<Option<Vec<u8>>, Failure> {
        let node = &mut self.nodes[at];
        let own = node.id.clone();
        let Some(chat) = node.chat.as_mut() else {
            return Ok(None);
        };
        let sign = |statement: &[u8]| Some(support::sign(&own, statement));
        let (snapshot, attestations) = chat
            .proofs
            .document_to_send(&mut chat.doc, &own, &sign)
            .map_err(|e| Failure::Internal(e.to_string()))?;
        Ok(Some(authorship::seal(&attestations, &snapshot.save())))
    }

    /// Stores a whole chat from `from` (durably at once, as the engine's `add_chat`); a device
    /// that has the chat already keeps its own.
    fn import(&mut self, at: usize, from: usize, document: &[u8]) -> Result<(), Failure> {
        if self.nodes[at].chat.is_some() {
            return Ok(());
        }
        let node = &mut self.nodes[at];
        let own = node.id.clone();
        let loaded = (|| {
            let (attestations, body) = authorship::open(document)?;
            let chat = self.chat.clone();
            let proof = Provenance {
                chat: &chat,
                attestations: &attestations,
                verify: &support::verify,
                standing: &|_: &DeviceId| Standing::Trusted,
            };
            let (mut doc, tops) = ChatDoc::load_untrusted(body, &node.device, &proof)?;
            let mut proofs = Proofs::default();
            let kept = proofs.take_received(tops, &mut doc, &own);
            Ok::<_, ModelError>((doc, proofs, kept, body.to_vec()))
        })();
        match loaded {
            Ok((doc, proofs, kept, body)) => {
                node.disk.base = Some(body);
                node.disk.chunks.clear();
                node.disk.attestations = kept
                    .store
                    .into_iter()
                    .map(|t| (t.actor, t.seq, t.attestation))
                    .collect();
                node.chat = Some(Chat { doc, proofs });
                Ok(())
            }
            Err(e) => {
                // Any refusal of an honest device's data fails the run (`check`).
                let failure = Failure::Refused(e.to_string());
                self.refused(at, from, e);
                Err(failure)
            }
        }
    }

    /// What `peer`'s summary calls for, as the daemon's `compare` works it out: fetch a chat
    /// this device lacks; where heads differ, the device with the smaller id starts a session;
    /// and which side is ahead.
    fn compare(
        &mut self,
        at: usize,
        peer: usize,
        theirs: &[ChatHeads],
    ) -> (Comparison, Vec<ChatId>, Vec<ChatId>) {
        let mut comparison = Comparison {
            began: self.now(),
            behind: BTreeSet::new(),
            ahead: BTreeSet::new(),
        };
        let (mut fetch, mut start) = (Vec::new(), Vec::new());
        let listed = theirs.iter().find(|c| c.chat == self.chat.as_str());
        let chat = self.chat.clone();
        match (&mut self.nodes[at].chat, listed) {
            (None, Some(_)) => {
                comparison.behind.insert(chat.clone());
                fetch.push(chat);
            }
            (Some(_), None) => {
                comparison.ahead.insert(chat);
            }
            (Some(ours), Some(listed)) => {
                let mut mine: Vec<String> =
                    ours.doc.heads().iter().map(|h| h.to_string()).collect();
                let mut other = listed.heads.clone();
                mine.sort();
                other.sort();
                if mine != other {
                    if at < peer {
                        start.push(chat.clone());
                    }
                    let lacking = listed.heads.iter().any(|h| {
                        h.parse::<automerge::ChangeHash>()
                            .map_or(true, |h| !ours.doc.has_change(&h))
                    });
                    if lacking {
                        comparison.behind.insert(chat);
                    } else {
                        comparison.ahead.insert(chat);
                    }
                }
            }
            (None, None) => {}
        }
        (comparison, fetch, start)
    }

    /// Prints what a refused message carried and what both sides knew (`CHATSYNC_SIM_TRACE`).
    fn explain(&mut self, at: usize, peer: usize, sealed: &[u8]) {
        let short = |h: &automerge::ChangeHash| h.to_string()[..8].to_string();
        let Ok((attestations, body)) = authorship::open(sealed) else {
            return;
        };
        let Ok(message) = automerge::sync::Message::decode(body) else {
            return;
        };
        let changes = authorship::changes_of_sync_message(&message).unwrap_or_default();
        eprintln!("refused by {at}, sent by {peer}:");
        for c in &changes {
            eprintln!(
                "  change {} {:?} seq {} deps {:?}",
                short(&c.hash),
                String::from_utf8_lossy(c.actor.to_bytes()),
                c.seq,
                c.deps.iter().map(short).collect::<Vec<_>>()
            );
        }
        for a in &attestations {
            eprintln!("  attestation {}", short(&a.hash));
        }
        eprintln!(
            "  events: {:#?}",
            self.log.iter().rev().take(12).collect::<Vec<_>>()
        );
    }

    fn refused(&mut self, at: usize, peer: usize, e: ModelError) {
        let why = format!("device {at} refused data from device {peer}: {e}");
        self.note(why.clone());
        self.refusals.push(why);
    }

    // ----- the end -----

    /// Hops after the heal until every device has the same heads: each hop delivers every
    /// message in flight (for a while some are lost: [`LOSSY_AFTER_HEAL`]), does all work and
    /// flushes every disk; when nothing is left to do, virtual time moves on a tick and the
    /// cores' timers run.
    fn converge(&mut self) -> usize {
        let deadline = self.elapsed + CONVERGE_WITHIN;
        let lossy_until = self.elapsed + LOSSY_AFTER_HEAL;
        let mut hops = 0;
        loop {
            if self.converged() {
                return hops;
            }
            if self.elapsed >= deadline {
                self.fail(&format!(
                    "devices did not converge within {CONVERGE_WITHIN:?} of the heal"
                ));
            }
            let busy = !self.in_flight.is_empty()
                || self
                    .nodes
                    .iter()
                    .any(|n| !n.work.is_empty() || !n.unflushed.is_empty());
            if !busy {
                self.advance(TICK);
                continue;
            }
            hops += 1;
            let loss = if self.elapsed < lossy_until {
                LOSS
            } else {
                0.0
            };
            while !self.in_flight.is_empty() {
                self.deliver_one(loss);
            }
            for at in 0..self.nodes.len() {
                while !self.nodes[at].work.is_empty() {
                    self.work(at);
                }
                self.flush(at);
            }
        }
    }

    fn converged(&mut self) -> bool {
        let mut heads: Vec<Option<Vec<automerge::ChangeHash>>> = Vec::new();
        for node in &mut self.nodes {
            heads.push(node.chat.as_mut().map(|c| {
                let mut h = c.doc.heads();
                h.sort();
                h
            }));
        }
        heads.iter().all(|h| h.is_some() && *h == heads[0])
    }

    /// The most changes any device lacks of all the devices have together.
    fn most_missed(&mut self) -> usize {
        let mut all: BTreeSet<automerge::ChangeHash> = BTreeSet::new();
        let mut each = Vec::new();
        for node in &mut self.nodes {
            let hashes: BTreeSet<automerge::ChangeHash> = match &mut node.chat {
                Some(chat) => chat
                    .doc
                    .automerge_mut()
                    .document()
                    .get_changes_meta(&[])
                    .into_iter()
                    .map(|m| m.hash)
                    .collect(),
                None => BTreeSet::new(),
            };
            all.extend(hashes.iter().copied());
            each.push(hashes);
        }
        each.iter().map(|h| all.len() - h.len()).max().unwrap_or(0)
    }

    fn check(&mut self) {
        if !self.refusals.is_empty() {
            let first = self.refusals[0].clone();
            self.fail(&format!(
                "{} refusals between honest devices; the first: {first}",
                self.refusals.len()
            ));
        }
        let mut orders: Vec<Vec<MessageId>> = Vec::new();
        for node in &mut self.nodes {
            let doc = &node.chat.as_mut().unwrap().doc;
            let order: Vec<MessageId> = doc.messages().map(|m| m.id).collect();
            let unique: BTreeSet<&MessageId> = order.iter().collect();
            assert_eq!(
                unique.len(),
                order.len(),
                "seed {}: a message shows twice",
                self.seed
            );
            orders.push(order);
        }
        for (i, order) in orders.iter().enumerate() {
            if order != &orders[0] {
                self.fail(&format!("device {i} shows another order than device 0"));
            }
            let have: BTreeSet<&MessageId> = order.iter().collect();
            if let Some(lost) = self.acknowledged.iter().find(|id| !have.contains(id)) {
                self.fail(&format!(
                    "acknowledged post {lost} is missing on device {i}"
                ));
            }
        }
    }

    fn fail(&self, why: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(30).collect();
        panic!(
            "seed {} ({} devices, {:?}): {why}\nlast events, newest first: {tail:#?}",
            self.seed,
            self.nodes.len(),
            self.shape
        );
    }
}
