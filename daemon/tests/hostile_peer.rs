//! A paired device gone bad, played by a libp2p client built here: it speaks the real sync
//! protocol over a real loopback connection, first honestly (its signed post is taken, so the
//! client is a working device), then with garbage, a forged change in another device's name,
//! and a flood of requests. The daemon refuses each, suspends the device (closes its connection,
//! refuses it on reconnect, shows the suspension in `GET /v1/peers`), and carries on syncing with
//! an honest device and answering its API. The same client checks the daemon's own manners: it
//! pauses when told to slow down, and a device it removes that plays deaf is sent nothing but
//! the roster that removes it, then cut off. A device that signs two different changes as one,
//! one for each of two daemons, cannot keep them apart.

use std::time::{Duration, Instant};

use chatsync_daemon::{
    config::Config,
    net::{
        PROTOCOL_VERSION,
        protocol::{Payload, SyncRequest, SyncResponse},
    },
};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId,
    authorship::{self, Attestation},
};
use futures_util::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, identify,
    identity::Keypair,
    noise, ping,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use reqwest::StatusCode;

/// How long a test waits for daemons to converge.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
use chatsync_testkit::{TestDaemon, eventually, home::fixed_loopback_addr};

use crate::link_client::{LinkClient, LinkEvent};

#[derive(NetworkBehaviour)]
struct Client {
    /// The sync protocol's links (`link_client.rs`).
    streams: libp2p_stream::Behaviour,
    ping: ping::Behaviour,
    /// The daemon syncs with a device once identify shows it speaks the same version.
    identify: identify::Behaviour,
}

/// The bad device: its key, its libp2p client and links, and the daemon it talks to.
struct Hostile {
    keypair: Keypair,
    swarm: Swarm<Client>,
    links: LinkClient,
    daemon: PeerId,
    daemon_addr: Multiaddr,
}

/// What happened next to the bad device.
#[allow(clippy::large_enum_variant)] // One at a time, never stored.
enum Event {
    Swarm(SwarmEvent<ClientEvent>),
    Link(LinkEvent),
}

/// What became of a request.
#[derive(Debug)]
enum Outcome {
    Answered(SyncResponse),
    /// The daemon closed the connection, or the request failed on the way (why, for failure
    /// messages).
    Cut(#[allow(dead_code)] String),
}

impl Hostile {
    fn new(keypair: Keypair, daemon: PeerId, daemon_addr: Multiaddr) -> Hostile {
        let swarm = SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| Client {
                identify: identify::Behaviour::new(identify::Config::new(
                    PROTOCOL_VERSION.into(),
                    key.public(),
                )),
                streams: libp2p_stream::Behaviour::new(),
                ping: ping::Behaviour::default(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let links = LinkClient::new(swarm.behaviour().streams.new_control());
        Hostile {
            keypair,
            swarm,
            links,
            daemon,
            daemon_addr,
        }
    }

    fn device(&self) -> DeviceId {
        DeviceId::new(self.keypair.public().to_peer_id().to_base58()).unwrap()
    }

    /// Dials the daemon; true once the connection is up, false if it was refused.
    async fn connect(&mut self) -> bool {
        let addr = self
            .daemon_addr
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(self.daemon));
        self.swarm.dial(addr).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, self.next_event())
                .await
                .expect("no outcome for the dial");
            match event {
                Event::Swarm(SwarmEvent::ConnectionEstablished { .. }) => {
                    // A refusing daemon closes right after the handshake: give it a moment.
                    return self.stays_up(Duration::from_millis(500)).await;
                }
                Event::Swarm(SwarmEvent::OutgoingConnectionError { .. }) => return false,
                other => self.answer(other),
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        tokio::select! {
            event = self.swarm.select_next_some() => Event::Swarm(event),
            event = self.links.next() => Event::Link(event),
        }
    }

    /// Whether the connection is still up after `wait`, serving the daemon meanwhile.
    async fn stays_up(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.next_event()).await {
            if let Event::Swarm(SwarmEvent::ConnectionClosed { .. }) = event {
                return false;
            }
            self.answer(event);
        }
        self.swarm.is_connected(&self.daemon)
    }

    /// Sends one request and waits for what becomes of it.
    async fn ask(&mut self, request: SyncRequest) -> Outcome {
        let id = self.links.send(self.daemon, &request);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, self.next_event())
                .await
                .expect("no answer in time");
            match event {
                Event::Link(LinkEvent::Answer(number, response)) if number == id => {
                    return Outcome::Answered(response);
                }
                Event::Link(LinkEvent::Failed(numbers)) if numbers.contains(&id) => {
                    return Outcome::Cut("the link ended".into());
                }
                Event::Swarm(SwarmEvent::ConnectionClosed { cause, .. }) => {
                    return Outcome::Cut(format!("connection closed: {cause:?}"));
                }
                other => self.answer(other),
            }
        }
    }

    /// The daemon's own requests (roster, summaries) get a polite refusal.
    fn answer(&mut self, event: Event) {
        if let Event::Link(LinkEvent::Request(_, reply)) = event {
            reply.send(SyncResponse::Refused("busy".into()));
        }
    }

    /// Fetches `chat` whole, as the daemon sealed it.
    async fn fetch(&mut self, chat: &ChatId) -> (Vec<Attestation>, Vec<u8>) {
        let fetch = SyncRequest::Fetch {
            chat: chat.to_string(),
        };
        match self.ask(fetch).await {
            Outcome::Answered(SyncResponse::Document {
                payload: Payload::Inline(bytes),
            }) => {
                let (attestations, body) = authorship::open(&bytes).unwrap();
                (attestations, body.to_vec())
            }
            other => panic!("the chat was not sent: {other:?}"),
        }
    }

    fn sync(chat: &ChatId, sealed: Vec<u8>) -> SyncRequest {
        SyncRequest::Sync {
            chat: chat.to_string(),
            message: sealed,
        }
    }
}

/// A sync message that brings what `doc` wrote as `author` to a device holding `known`, sealed
/// with an attestation of `author`'s newest change signed by the hostile device's key.
fn change_message(
    hostile: &Hostile,
    chat: &ChatId,
    known: &[u8],
    doc: &mut ChatDoc,
    author: &Device,
) -> Vec<u8> {
    crate::craft::carrying(chat, known, doc, author, &hostile.keypair)
}

fn is_refusal(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Answered(SyncResponse::Refused(_)) | Outcome::Cut(_)
    )
}

async fn suspended_on(daemon: &TestDaemon, device: &DeviceId) -> bool {
    let peers = daemon.peers().await;
    peers
        .iter()
        .any(|p| p.device == device.as_str() && !p.connected && p.suspended_until.is_some())
}

/// The daemon lists the hostile device as suspended, and refuses it when it dials again.
async fn assert_suspended(daemon: &TestDaemon, hostile: &mut Hostile) {
    let device = hostile.device();
    eventually("the peer list shows the suspension", WAIT, || {
        suspended_on(daemon, &device)
    })
    .await;
    assert!(
        !hostile.connect().await,
        "a suspended device connected again"
    );
}

/// A daemon that trusts an honest device and a hostile one, all on loopback.
async fn mesh() -> (TestDaemon, TestDaemon, Hostile, ChatId) {
    let addr = fixed_loopback_addr();
    let mut config = Config::default();
    config.network.listen = vec![addr.parse().unwrap()];
    let daemon = TestDaemon::start_with(config).await;
    let mut honest_config = Config::default();
    honest_config.network.peers = vec![format!("{addr}/p2p/{}", daemon.device_id).parse().unwrap()];
    let honest = TestDaemon::start_with(honest_config).await;
    let keypair = Keypair::generate_ed25519();
    let hostile_id = keypair.public().to_peer_id().to_base58();
    for (on, id) in [
        (&daemon, &honest.device_id),
        (&honest, &daemon.device_id),
        (&daemon, &hostile_id),
    ] {
        on.trust(id).await;
    }
    let chat = daemon.create_chat("family").await;
    daemon.post_message(&chat.id, "from the daemon").await;
    let hostile = Hostile::new(
        keypair,
        daemon.device_id.parse().unwrap(),
        addr.parse().unwrap(),
    );
    (daemon, honest, hostile, ChatId::new(chat.id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_from_a_paired_device_gets_it_suspended_and_everyone_else_carries_on() {
    let (daemon, honest, mut hostile, chat) = mesh().await;
    assert!(
        hostile.connect().await,
        "the daemon refused a roster device"
    );

    // Honest first: a post signed by the device itself is taken.
    let (_, known) = hostile.fetch(&chat).await;
    let me = Device::with_session(hostile.device(), "hostile", b"session1").unwrap();
    let mut doc = ChatDoc::load(&known, &me).unwrap();
    doc.post(&me, MessageId::new("hostile-1").unwrap(), "signed", None, 1)
        .unwrap();
    let message = change_message(&hostile, &chat, &known, &mut doc, &me);
    let outcome = hostile.ask(Hostile::sync(&chat, message)).await;
    assert!(
        matches!(outcome, Outcome::Answered(SyncResponse::Sync { .. })),
        "{outcome:?}"
    );
    eventually("the signed post is shown", WAIT, || async {
        daemon
            .texts(chat.as_str())
            .await
            .contains(&"signed".to_string())
    })
    .await;

    // Then: a post in the honest device's name (its actor), signed with the hostile key.
    let (_, known) = hostile.fetch(&chat).await;
    let victim = DeviceId::new(honest.device_id.clone()).unwrap();
    let posing = Device::with_session(victim, "honest", b"forged").unwrap();
    let mut forged = ChatDoc::load(&known, &posing).unwrap();
    forged
        .post(
            &posing,
            MessageId::new("forged-1").unwrap(),
            "forged",
            None,
            2,
        )
        .unwrap();
    let message = change_message(&hostile, &chat, &known, &mut forged, &posing);
    let outcome = hostile.ask(Hostile::sync(&chat, message)).await;
    assert!(
        matches!(&outcome, Outcome::Answered(SyncResponse::Refused(why)) if why.contains("signature")),
        "a forged change was not refused for its signature: {outcome:?}"
    );

    // Garbage: not a signed payload; a signed payload whose body is not a sync message. The
    // third offence suspends the device: its connection is closed.
    let garbage = [
        b"\x00not a sync message".to_vec(),
        authorship::seal(&[], b"\x42\xff\xff\xff\xff garbage"),
    ];
    for bytes in garbage {
        let outcome = hostile.ask(Hostile::sync(&chat, bytes)).await;
        assert!(is_refusal(&outcome), "garbage was not refused: {outcome:?}");
    }
    assert!(
        !hostile.stays_up(Duration::from_secs(3)).await,
        "the daemon kept the connection of a device that sent three bad messages"
    );
    assert!(
        !daemon
            .texts(chat.as_str())
            .await
            .contains(&"forged".to_string()),
        "the forged post is shown"
    );
    assert_suspended(&daemon, &mut hostile).await;

    // Everyone else carries on: the honest device's post arrives, the API answers.
    honest.post_message(chat.as_str(), "still here").await;
    eventually("the honest post arrives", WAIT, || async {
        daemon
            .texts(chat.as_str())
            .await
            .contains(&"still here".to_string())
    })
    .await;
    assert_eq!(daemon.status().await.chats, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_floods_requests_is_told_to_slow_down_then_suspended() {
    let (daemon, _honest, mut hostile, _chat) = mesh().await;
    assert!(
        hostile.connect().await,
        "the daemon refused a roster device"
    );
    // Summaries make the daemon read every chat's heads: the most expensive request. Sent in
    // waves without waiting, the way a flooding device would.
    let (mut refused, mut cut) = (0, false);
    'flood: for _ in 0..200 {
        let daemon_peer = hostile.daemon;
        let ids: Vec<_> = (0..64)
            .map(|_| {
                hostile
                    .links
                    .send(daemon_peer, &SyncRequest::Summary(Vec::new()))
            })
            .collect();
        let mut open = ids.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while open > 0 {
            let event = tokio::time::timeout_at(deadline, hostile.next_event())
                .await
                .expect("the daemon stopped answering");
            match event {
                Event::Link(LinkEvent::Answer(_, response)) => {
                    open -= 1;
                    if matches!(response, SyncResponse::SlowDown) {
                        refused += 1;
                    }
                }
                Event::Link(LinkEvent::Failed(numbers)) => {
                    open = open.saturating_sub(numbers.len())
                }
                Event::Swarm(SwarmEvent::ConnectionClosed { .. }) => {
                    cut = true;
                    break 'flood;
                }
                other => hostile.answer(other),
            }
        }
    }
    assert!(refused > 0, "no request was refused for rate");
    assert!(cut, "the flooding device was never disconnected");
    assert_suspended(&daemon, &mut hostile).await;
    assert_eq!(daemon.status().await.chats, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_told_to_slow_down_pauses_then_asks_again() {
    let (_daemon, _honest, mut hostile, _chat) = mesh().await;
    // This time the client plays a busy honest device: it tells the daemon to slow down when
    // the daemon first sends its summary, and takes note of when the daemon asks again.
    let addr = hostile
        .daemon_addr
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(hostile.daemon));
    hostile.swarm.dial(addr).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut first_refused: Option<Instant> = None;
    loop {
        let event = tokio::time::timeout_at(deadline, hostile.next_event())
            .await
            .expect("the daemon never asked again");
        let Event::Link(LinkEvent::Request(request, reply)) = event else {
            continue;
        };
        let response = match (&request, first_refused) {
            (SyncRequest::Summary(_), None) => {
                first_refused = Some(Instant::now());
                SyncResponse::SlowDown
            }
            (SyncRequest::Summary(_), Some(at)) => {
                let waited = at.elapsed();
                assert!(
                    waited >= Duration::from_millis(900),
                    "asked again after {waited:?}, without pausing"
                );
                assert!(
                    waited < Duration::from_secs(5),
                    "waited {waited:?}: the anti-entropy round, not the pause, asked again"
                );
                return;
            }
            _ => SyncResponse::Refused("busy".into()),
        };
        reply.send(response);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_that_does_not_answer_is_sent_nothing_but_the_roster() {
    let (daemon, _honest, mut hostile, chat) = mesh().await;
    assert!(
        hostile.connect().await,
        "the daemon refused a roster device"
    );
    // Wait until the daemon counts it as connected (identify ran), serving it meanwhile.
    let device = hostile.device();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peers = daemon.peers().await;
        if peers
            .iter()
            .any(|p| p.device == device.as_str() && p.connected)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never took the device up"
        );
        assert!(hostile.stays_up(Duration::from_millis(100)).await);
    }

    // Removed, and deaf to the roster that tells it so; the mesh writes on meanwhile.
    daemon
        .delete(&format!("/devices/{}", hostile.device()))
        .await;
    // What was on the wire before the removal may still arrive: let it, then write.
    let mut unanswered = Vec::new();
    let settle = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(event) = tokio::time::timeout_at(settle, hostile.next_event()).await {
        if let Event::Link(LinkEvent::Request(_, reply)) = event {
            unanswered.push(reply);
        }
    }
    daemon
        .post_message(chat.as_str(), "after the removal")
        .await;
    let fetch = hostile.links.send(
        hostile.daemon,
        &SyncRequest::Fetch {
            chat: chat.to_string(),
        },
    );
    let mut fetch_answer = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(event) = tokio::time::timeout_at(deadline, hostile.next_event()).await {
        match event {
            Event::Link(LinkEvent::Request(request, reply)) => match request {
                SyncRequest::Roster(_) => unanswered.push(reply),
                other => panic!("a removed device was sent {other:?}"),
            },
            Event::Link(LinkEvent::Answer(number, response)) if number == fetch => {
                fetch_answer = Some(response)
            }
            Event::Swarm(SwarmEvent::ConnectionClosed { .. }) => break,
            _ => {}
        }
    }
    assert!(
        !matches!(fetch_answer, Some(SyncResponse::Document { .. })),
        "a removed device fetched a chat"
    );
    assert!(
        !hostile.swarm.is_connected(&hostile.daemon),
        "a removed device that never answered stayed connected"
    );
    assert!(!hostile.connect().await, "a removed device connected again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_roster_is_an_offence_and_leaves_the_roster_as_it_was() {
    let (daemon, _honest, mut hostile, _chat) = mesh().await;
    assert!(hostile.connect().await);
    let before: serde_json::Value = daemon.get("/devices").await.json(StatusCode::OK);
    let bad = [
        b"\x85\x6f\x4a\x83 not a roster".to_vec(),
        // An Automerge document, but a chat's rather than a roster.
        {
            let me = Device::with_session(hostile.device(), "hostile", b"s").unwrap();
            ChatDoc::create(ChatId::new("x").unwrap(), "x", &me, 1)
                .unwrap()
                .save()
        },
        vec![0u8; 4096],
    ];
    for bytes in bad {
        // The daemon answers with its own roster whatever it makes of the sender's.
        let _ = hostile.ask(SyncRequest::Roster(bytes)).await;
    }
    assert!(
        !hostile.stays_up(Duration::from_secs(3)).await,
        "three bad rosters did not get the device disconnected"
    );
    assert_suspended(&daemon, &mut hostile).await;
    let after: serde_json::Value = daemon.get("/devices").await.json(StatusCode::OK);
    assert_eq!(before, after, "the roster changed");
}

/// Two daemons that trust each other and a device gone bad, apart: each listens on an address
/// the other has never reached, and dials nobody. Both hold chat `family` with one post of A's.
async fn apart_with_a_chat(keypair: &Keypair) -> (TestDaemon, String, TestDaemon, Config, ChatId) {
    let addr_a = fixed_loopback_addr();
    let mut config_a = Config::default();
    config_a.network.listen = vec![addr_a.parse().unwrap()];
    let a = TestDaemon::start_with(config_a.clone()).await;
    let mut config_b = Config::default();
    config_b.network.peers = vec![format!("{addr_a}/p2p/{}", a.device_id).parse().unwrap()];
    let b = TestDaemon::start_with(config_b.clone()).await;
    let x = keypair.public().to_peer_id().to_base58();
    for (on, id) in [(&a, &b.device_id), (&b, &a.device_id), (&a, &x), (&b, &x)] {
        on.trust(id).await;
    }
    let chat = a.create_chat("family").await;
    a.post_message(&chat.id, "from a").await;
    eventually("B has the chat", WAIT, || async {
        b.texts(&chat.id).await == ["from a"]
    })
    .await;
    // Both move to addresses the other never reached.
    let (home_a, home_b) = (a.shutdown().await, b.shutdown().await);
    let addr_a = fixed_loopback_addr();
    config_a.network.listen = vec![addr_a.parse().unwrap()];
    let a = TestDaemon::start_in(home_a, config_a).await;
    config_b.network.peers.clear();
    config_b.network.listen = vec![fixed_loopback_addr().parse().unwrap()];
    let b = TestDaemon::start_in(home_b, config_b.clone()).await;
    (a, addr_a, b, config_b, ChatId::new(chat.id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_device_cannot_split_the_mesh() {
    let keypair = Keypair::generate_ed25519();
    let (a, addr_a, b, mut config_b, chat) = apart_with_a_chat(&keypair).await;
    let b_addr = config_b.network.listen[0].clone();

    // X signs two different posts under one actor and sequence number: one for A, one for B.
    let mut to_a = Hostile::new(
        keypair.clone(),
        a.device_id.parse().unwrap(),
        addr_a.parse().unwrap(),
    );
    let mut to_b = Hostile::new(keypair, b.device_id.parse().unwrap(), b_addr);
    assert!(to_a.connect().await && to_b.connect().await);
    let (_, known) = to_a.fetch(&chat).await;
    let me = Device::with_session(to_a.device(), "x", b"twice").unwrap();
    for (hostile, text) in [(&mut to_a, "one"), (&mut to_b, "two")] {
        let mut doc = ChatDoc::load(&known, &me).unwrap();
        doc.post(
            &me,
            MessageId::new(format!("x-{text}")).unwrap(),
            text,
            None,
            5,
        )
        .unwrap();
        let message = change_message(hostile, &chat, &known, &mut doc, &me);
        let outcome = hostile.ask(Hostile::sync(&chat, message)).await;
        assert!(
            matches!(outcome, Outcome::Answered(SyncResponse::Sync { .. })),
            "{outcome:?}"
        );
    }
    // Each builds on what it took.
    a.post_message(chat.as_str(), "a after one").await;
    b.post_message(chat.as_str(), "b after two").await;
    assert!(a.texts(chat.as_str()).await.contains(&"one".to_string()));
    assert!(b.texts(chat.as_str()).await.contains(&"two".to_string()));

    // B finds A again. They meet the clash, pass the evidence, and end with the same chat:
    // every honest post, neither of X's.
    config_b.network.peers = vec![format!("{addr_a}/p2p/{}", a.device_id).parse().unwrap()];
    let b = TestDaemon::start_in(b.shutdown().await, config_b).await;
    let expected: std::collections::BTreeSet<String> = ["from a", "a after one", "b after two"]
        .into_iter()
        .map(String::from)
        .collect();
    let converged = || async {
        let (on_a, on_b) = (a.texts(chat.as_str()).await, b.texts(chat.as_str()).await);
        on_a == on_b
            && on_a
                .iter()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                == expected
    };
    eventually(
        "A and B converge without X's clashing posts",
        WAIT,
        converged,
    )
    .await;

    // Both name X, and only X; neither suspended the other.
    let x = to_a.device();
    for daemon in [&a, &b] {
        for device in daemon.devices().await {
            assert_eq!(
                device.equivocated.is_some(),
                device.id == x.as_str(),
                "{device:?}"
            );
        }
        for peer in daemon.peers().await {
            if peer.device != x.as_str() {
                assert!(peer.suspended_until.is_none(), "{peer:?}");
            }
        }
    }

    // What was dropped stays dropped after a restart.
    let a = a.restart().await;
    eventually("A converged again after its restart", WAIT, || async {
        a.texts(chat.as_str()).await == b.texts(chat.as_str()).await
    })
    .await;
    assert_eq!(
        a.texts(chat.as_str())
            .await
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
}
