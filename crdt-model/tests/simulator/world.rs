//! The simulated world: devices, their disks, links between them and the messages in flight.

use std::collections::{BTreeSet, HashMap, VecDeque};

use automerge::{ActorId, sync::State};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId, ModelError,
    authorship::{self, ActorTop, Attestation, Provenance, Standing},
    exchange::{self, Keys},
    proofs::Proofs,
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
/// Rounds (every message in flight delivered, then a summary exchange on every link) within
/// which the devices must converge after the heal.
pub const MAX_ROUNDS: usize = 60;

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

/// The conversation this device runs with one other device.
#[derive(Default, Clone, Copy)]
struct Running {
    busy: bool,
    again: bool,
    /// Requests sent in this conversation (the daemon ends one after `MAX_SESSION_ROUNDS`).
    rounds: u32,
}

/// Requests one conversation sends at most, as in the daemon (`net/sessions.rs`).
const MAX_SESSION_ROUNDS: u32 = 200;

struct Node {
    id: DeviceId,
    device: Device,
    runs: u32,
    alive: bool,
    chat: Option<Chat>,
    disk: Disk,
    unflushed: Vec<Write>,
    /// Messages that go out once what they answer is flushed (the daemon answers only once
    /// what arrived is durable).
    held: Vec<Envelope>,
    states: HashMap<(usize, Role), State>,
    running: HashMap<usize, Running>,
    /// A fetch of the chat is under way (from one device at a time).
    fetching: bool,
}

enum Body {
    Sync(Vec<u8>),
    Reply(Option<Vec<u8>>),
    Refused,
    /// The receiver lacks the chat.
    Unknown,
    Fetch,
    Document(Option<Vec<u8>>),
}

struct Envelope {
    from: usize,
    to: usize,
    body: Body,
}

/// What one run measured after the final heal.
pub struct Report {
    /// Rounds (every message in flight delivered, then a summary exchange on every link)
    /// until every device had the same heads.
    pub rounds_to_converge: usize,
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
    /// Links whose devices the last summary exchange found apart (see `summary`).
    apart: BTreeSet<(usize, usize)>,
    in_flight: VecDeque<Envelope>,
    chat: ChatId,
    acknowledged: BTreeSet<MessageId>,
    posts: u64,
    clock: i64,
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

impl World {
    pub fn new(seed: u64, shape: Shape) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let count = rng.random_range(3..=7usize);
        let nodes = (0..count)
            .map(|i| {
                let id = DeviceId::new(format!("dev-{i}")).unwrap();
                Node {
                    device: Device::with_session(id.clone(), format!("d{i}"), b"0").unwrap(),
                    id,
                    runs: 0,
                    alive: true,
                    chat: None,
                    disk: Disk::default(),
                    unflushed: Vec::new(),
                    held: Vec::new(),
                    states: HashMap::new(),
                    running: HashMap::new(),
                    fetching: false,
                }
            })
            .collect();
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
            apart: BTreeSet::new(),
            in_flight: VecDeque::new(),
            chat: ChatId::new("simulated").unwrap(),
            acknowledged: BTreeSet::new(),
            posts: 0,
            clock: 1_000,
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
        // Everyone starts connected: summaries on every link.
        self.summaries_everywhere();
        for _ in 0..FAULT_STEPS {
            let roll = self.rng.random_range(0..100u32);
            match roll {
                0..=24 => self.post(),
                25..=64 => self.deliver_one(0.03),
                65..=74 => self.flush_one(),
                75..=81 => self.summary_on_random_link(),
                82..=87 if partitions => self.cut_or_heal(),
                88..=90 => self.crash_one(),
                91..=95 => self.restart_one(),
                _ => self.deliver_one(0.0),
            }
        }
        self.heal_everything();
        let most_missed = self.most_missed();
        let (messages_before, bytes_before) = (self.delivered, self.delivered_bytes);
        let rounds = self.converge();
        self.check();
        Report {
            rounds_to_converge: rounds,
            messages_to_converge: self.delivered - messages_before,
            bytes_to_converge: self.delivered_bytes - bytes_before,
            most_missed,
        }
    }

    // ----- faults and writes -----

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
        // Sessions with other devices start once the change is durable (see `flush`), but a
        // session already under way may carry it before.
    }

    fn flush_one(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect();
        if let Some(&at) = alive.get(self.rng.random_range(0..alive.len().max(1))) {
            self.flush(at);
        }
    }

    /// Makes `at`'s writes durable, acknowledges its posts, and tells linked devices about
    /// local changes.
    fn flush(&mut self, at: usize) {
        let writes = std::mem::take(&mut self.nodes[at].unflushed);
        let mut posted = false;
        for write in writes {
            posted |= self.write_to_disk(at, write, true);
        }
        let held = std::mem::take(&mut self.nodes[at].held);
        self.in_flight.extend(held);
        if posted {
            self.changed(at);
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

    /// Sends what `from` worked out from data it just took: at once if nothing waits to be
    /// flushed, else once it is.
    fn send_when_durable(&mut self, from: usize, to: usize, body: Body) {
        if self.nodes[from].unflushed.is_empty() {
            self.send(from, to, body);
        } else {
            self.nodes[from].held.push(Envelope { from, to, body });
        }
    }

    /// A chat changed on `at` (durably): run a conversation with every linked device.
    fn changed(&mut self, at: usize) {
        for peer in self.peers(at) {
            self.start(at, peer);
        }
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
        let peers = self.peers(at);
        for peer in peers {
            self.disconnected(at, peer);
        }
        // The disk keeps any prefix of what was written since the last flush.
        let mut writes = std::mem::take(&mut self.nodes[at].unflushed);
        let kept = self.rng.random_range(0..=writes.len());
        writes.truncate(kept);
        for write in writes {
            self.write_to_disk(at, write, false);
        }
        let node = &mut self.nodes[at];
        node.alive = false;
        node.chat = None;
        node.held.clear();
        node.states.clear();
        node.running.clear();
        node.fetching = false;
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

    /// A connection came up: both sides trade summaries.
    fn connected(&mut self, a: usize, b: usize) {
        self.summary(a, b);
    }

    /// A connection went down: what was in flight is lost, and both sides forget their
    /// conversations with each other (the daemon's `on_peer_gone`).
    fn disconnected(&mut self, a: usize, b: usize) {
        self.in_flight.retain(|e| key(e.from, e.to) != key(a, b));
        for (me, other) in [(a, b), (b, a)] {
            let node = &mut self.nodes[me];
            node.held.retain(|e| e.to != other);
            node.states.retain(|(peer, _), _| *peer != other);
            node.running.remove(&other);
            // A fetch from the other device is lost with the connection.
            node.fetching = false;
        }
    }

    fn summaries_everywhere(&mut self) {
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        for (a, b) in links {
            if self.linked(a, b) {
                self.summary(a, b);
            }
        }
    }

    fn summary_on_random_link(&mut self) {
        let links: Vec<(usize, usize)> = self
            .links
            .iter()
            .copied()
            .filter(|(a, b)| self.linked(*a, *b))
            .collect();
        if links.is_empty() {
            return;
        }
        let (a, b) = links[self.rng.random_range(0..links.len())];
        self.summary(a, b);
    }

    /// Two devices compare their chat's heads: one that lacks the chat fetches it; where the
    /// heads differ, the device with the smaller id runs a conversation.
    fn summary(&mut self, a: usize, b: usize) {
        let heads = |w: &mut World, i: usize| w.nodes[i].chat.as_mut().map(|c| c.doc.heads());
        let (ha, hb) = (heads(self, a), heads(self, b));
        match (ha, hb) {
            (None, Some(_)) => self.fetch(a, b),
            (Some(_), None) => self.fetch(b, a),
            (Some(mut x), Some(mut y)) => {
                x.sort();
                y.sort();
                if x == y {
                    self.apart.remove(&key(a, b));
                    return;
                }
                // Apart at two exchanges in a row with no conversation under way: the daemon
                // counts the chat as stalled and both devices start afresh
                // (`net/progress.rs`, `restart_stalled`).
                let busy = |w: &World, i: usize, j: usize| {
                    w.nodes[i].running.get(&j).is_some_and(|r| r.busy)
                };
                if !self.apart.insert(key(a, b)) && !busy(self, a, b) && !busy(self, b, a) {
                    self.note(format!("restart stalled {a} {b}"));
                    for (me, other) in [(a, b), (b, a)] {
                        let node = &mut self.nodes[me];
                        node.states.remove(&(other, Role::Running));
                        node.states.remove(&(other, Role::Answering));
                    }
                }
                self.start(a.min(b), a.max(b));
            }
            (None, None) => {}
        }
    }

    fn fetch(&mut self, at: usize, from: usize) {
        if self.nodes[at].fetching {
            return;
        }
        self.nodes[at].fetching = true;
        self.send(at, from, Body::Fetch);
    }

    fn send(&mut self, from: usize, to: usize, body: Body) {
        if std::env::var("CHATSYNC_SIM_TRACE").is_ok()
            && let Body::Sync(m) | Body::Reply(Some(m)) = &body
        {
            let (attestations, inner) = authorship::open(m).unwrap();
            let message = automerge::sync::Message::decode(inner).unwrap();
            let changes = authorship::changes_of_sync_message(&message).unwrap();
            for c in &changes {
                let att = attestations.iter().find(|a| {
                    changes
                        .iter()
                        .any(|d| d.hash == a.hash && d.actor == c.actor && d.seq >= c.seq)
                });
                if att.is_none() {
                    eprintln!(
                        "device {from} sends {} of {:?} seq {} to {to} without an attestation in the message (events {:?})",
                        &c.hash.to_string()[..8],
                        String::from_utf8_lossy(c.actor.to_bytes()),
                        c.seq,
                        self.log.iter().rev().take(3).collect::<Vec<_>>()
                    );
                }
            }
        }
        self.in_flight.push_back(Envelope { from, to, body });
    }

    // ----- conversations -----

    /// `at` runs a conversation with `peer`, or runs it again once the current one ends.
    fn start(&mut self, at: usize, peer: usize) {
        if self.nodes[at].chat.is_none() {
            return;
        }
        let running = self.nodes[at].running.entry(peer).or_default();
        if running.busy {
            running.again = true;
            return;
        }
        running.busy = true;
        running.rounds = 0;
        self.next_request(at, peer);
    }

    /// `at` sends the next message of the conversation it runs with `peer`, or ends it.
    fn next_request(&mut self, at: usize, peer: usize) {
        let step = {
            let node = &mut self.nodes[at];
            let own = node.id.clone();
            let chat = node.chat.as_mut().unwrap();
            let state = node.states.entry((peer, Role::Running)).or_default();
            with_keys(&own, |keys| {
                exchange::next_step(&mut chat.doc, &mut chat.proofs, state, keys)
            })
            .unwrap()
        };
        match step.message {
            Some(message) => self.request(at, peer, message, false),
            None => self.session_over(at, peer),
        }
    }

    /// `at` sends the next request of its conversation with `peer`, unless the conversation
    /// has gone on for too long (then it ends, as in the daemon).
    fn request(&mut self, at: usize, peer: usize, message: Vec<u8>, after_taking: bool) {
        let running = self.nodes[at].running.entry(peer).or_default();
        running.rounds += 1;
        if running.rounds > MAX_SESSION_ROUNDS {
            self.note(format!(
                "conversation {at} -> {peer} ended after {MAX_SESSION_ROUNDS} rounds"
            ));
            self.session_over(at, peer);
        } else if after_taking {
            self.send_when_durable(at, peer, Body::Sync(message));
        } else {
            self.send(at, peer, Body::Sync(message));
        }
    }

    fn session_over(&mut self, at: usize, peer: usize) {
        let running = self.nodes[at].running.entry(peer).or_default();
        running.busy = false;
        if std::mem::take(&mut running.again) {
            self.start(at, peer);
        }
    }

    /// A request of `at`'s to `peer` was lost or refused: the next conversation starts afresh.
    fn abandon(&mut self, at: usize, peer: usize) {
        let node = &mut self.nodes[at];
        node.states.remove(&(peer, Role::Running));
        node.states.remove(&(peer, Role::Answering));
        self.session_over(at, peer);
    }

    /// Delivers one message in flight, chosen at random; with probability `loss` it is lost
    /// instead, and its sender learns that it failed.
    fn deliver_one(&mut self, loss: f64) {
        if self.in_flight.is_empty() {
            return;
        }
        let at = self.rng.random_range(0..self.in_flight.len());
        let envelope = self.in_flight.remove(at).unwrap();
        if self.rng.random_bool(loss) {
            self.lost(envelope);
        } else {
            self.deliver(envelope);
        }
    }

    /// A lost message: whoever waits for an answer learns that it failed.
    fn lost(&mut self, envelope: Envelope) {
        let Envelope { from, to, body } = envelope;
        match body {
            Body::Sync(_) => self.abandon(from, to),
            Body::Reply(_) | Body::Refused | Body::Unknown => self.abandon(to, from),
            Body::Fetch => self.nodes[from].fetching = false,
            Body::Document(_) => self.nodes[to].fetching = false,
        }
    }

    fn deliver(&mut self, envelope: Envelope) {
        self.delivered += 1;
        self.delivered_bytes += match &envelope.body {
            Body::Sync(m) | Body::Reply(Some(m)) | Body::Document(Some(m)) => m.len(),
            _ => 0,
        };
        let Envelope { from, to, body } = envelope;
        match body {
            Body::Sync(message) => {
                if self.nodes[to].chat.is_none() {
                    self.send(to, from, Body::Unknown);
                    self.fetch(to, from);
                    return;
                }
                match self.take(to, from, Role::Answering, &message) {
                    Some(reply) => self.send_when_durable(to, from, Body::Reply(reply)),
                    None => self.send(to, from, Body::Refused),
                }
            }
            Body::Reply(None) => self.next_request(to, from),
            Body::Reply(Some(message)) => match self.take(to, from, Role::Running, &message) {
                Some(Some(next)) => self.request(to, from, next, true),
                Some(None) => self.session_over(to, from),
                None => self.abandon(to, from),
            },
            Body::Refused | Body::Unknown => self.abandon(to, from),
            Body::Fetch => {
                let own = self.nodes[to].id.clone();
                // Nothing provable to send yet goes as "no document", as the daemon refuses
                // the fetch; the fetch is tried again at a later summary.
                let document = self.nodes[to].chat.as_mut().and_then(|chat| {
                    let sign = |statement: &[u8]| Some(support::sign(&own, statement));
                    let (snapshot, attestations) = chat
                        .proofs
                        .document_to_send(&mut chat.doc, &own, &sign)
                        .ok()?;
                    Some(authorship::seal(&attestations, &snapshot.save()))
                });
                self.send(to, from, Body::Document(document));
            }
            Body::Document(document) => {
                self.nodes[to].fetching = false;
                if let Some(document) = document
                    && self.nodes[to].chat.is_none()
                {
                    self.import(to, from, &document);
                }
            }
        }
    }

    /// `at` takes a message from `peer` in the conversation where it plays `role`. Returns the
    /// reply, or `None` if it refused the message.
    fn take(
        &mut self,
        at: usize,
        peer: usize,
        role: Role,
        message: &[u8],
    ) -> Option<Option<Vec<u8>>> {
        let node = &mut self.nodes[at];
        let own = node.id.clone();
        let chat = node.chat.as_mut().unwrap();
        let state = node.states.entry((peer, role)).or_default();
        let taken = with_keys(&own, |keys| {
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
                // The answer goes out once this is durable (`send_when_durable`), and the
                // other linked devices hear of it then (`flush`).
                Some(taken.reply.unwrap().message)
            }
            Err(e) => {
                node.states.remove(&(peer, Role::Running));
                node.states.remove(&(peer, Role::Answering));
                if std::env::var("CHATSYNC_SIM_TRACE").is_ok() {
                    self.explain(at, peer, message);
                }
                self.refused(at, peer, e);
                None
            }
        }
    }

    fn import(&mut self, at: usize, from: usize, document: &[u8]) {
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
                // Created durably before anything else happens (the engine's `add_chat`).
                node.disk.base = Some(body);
                node.disk.chunks.clear();
                node.disk.attestations = kept
                    .store
                    .into_iter()
                    .map(|t| (t.actor, t.seq, t.attestation))
                    .collect();
                node.chat = Some(Chat { doc, proofs });
                // Passed on at once, and caught up with what was written after the save.
                self.changed(at);
                self.start(at, from);
            }
            Err(e) => self.refused(at, from, e),
        }
    }

    /// Prints what a refused message carried and what both sides knew (`CHATSYNC_SIM_TRACE`).
    fn explain(&mut self, at: usize, peer: usize, sealed: &[u8]) {
        let short = |h: &automerge::ChangeHash| h.to_string()[..8].to_string();
        let (attestations, body) = authorship::open(sealed).unwrap();
        let message = automerge::sync::Message::decode(body).unwrap();
        let changes = authorship::changes_of_sync_message(&message).unwrap();
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
        for (who, node) in [(at, &mut self.nodes[at])] {
            let doc = &mut node.chat.as_mut().unwrap().doc;
            for c in &changes {
                eprintln!(
                    "  {who} has {}: {}",
                    short(&c.hash),
                    doc.has_change(&c.hash)
                );
            }
            for a in &attestations {
                eprintln!(
                    "  {who} has attested {}: {}",
                    short(&a.hash),
                    doc.has_change(&a.hash)
                );
            }
        }
        let sender = self.nodes[peer].chat.as_mut().unwrap();
        for c in &changes {
            if let Some((seq, a)) = sender.proofs.kept(&c.actor) {
                eprintln!(
                    "  sender keeps for {:?}: seq {seq} {} (has it: {})",
                    String::from_utf8_lossy(c.actor.to_bytes()),
                    short(&a.hash),
                    sender.doc.has_change(&a.hash)
                );
            } else {
                eprintln!(
                    "  sender keeps nothing for {:?}",
                    String::from_utf8_lossy(c.actor.to_bytes())
                );
            }
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

    /// Rounds after the heal until every device has the same heads and nothing is in flight.
    fn converge(&mut self) -> usize {
        for round in 0..MAX_ROUNDS {
            let mut deliveries = 0;
            loop {
                while !self.in_flight.is_empty() {
                    self.deliver_one(0.0);
                    deliveries += 1;
                    assert!(
                        deliveries < 1_000_000,
                        "seed {}: conversations never end",
                        self.seed
                    );
                }
                let waiting = self
                    .nodes
                    .iter()
                    .any(|n| !n.unflushed.is_empty() || !n.held.is_empty());
                if !waiting {
                    break;
                }
                for at in 0..self.nodes.len() {
                    self.flush(at);
                }
            }
            if self.converged() {
                return round;
            }
            self.summaries_everywhere();
        }
        self.fail("devices did not converge after the heal");
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

/// Runs `f` with the keys of device `own` (the tests' stand-in signatures; every device
/// trusted).
fn with_keys<T>(own: &DeviceId, f: impl FnOnce(&Keys<'_>) -> T) -> T {
    let sign = |statement: &[u8]| Some(support::sign(own, statement));
    let standing = |_: &DeviceId| Standing::Trusted;
    f(&Keys {
        own,
        sign: &sign,
        verify: &support::verify,
        standing: &standing,
    })
}
