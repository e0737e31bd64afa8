//! The network task's event loop.

use std::{
    collections::{BTreeSet, HashMap},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_model::DeviceId;
use futures_util::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::ConnectedPoint,
    identify, mdns,
    multiaddr::Protocol,
    ping,
    swarm::{
        ConnectionId, DialError, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Command, PeerInfo, SyncState,
    behaviour::{
        Behaviour, BehaviourEvent, PING_INTERVAL, PING_TIMEOUT, PROTOCOL_VERSION, build_swarm,
    },
    conduct::{Admission, Conduct, cost},
    links::Links,
    pairing::Pairing,
    peers::{MAX_PEERS, PeerBook, transport},
    protocol::SyncRequest,
    relay::{RelayState, path_of, server_config},
    remembered::Remembered,
    sessions::{Core, Internal, forward_changes},
};
use crate::{
    config::NetworkConfig,
    engine::{Engine, Event, SyncStatus, Trust, now_ms},
};

/// Addresses kept per device found by mDNS.
const MAX_DISCOVERED_ADDRESSES: usize = 8;
/// Results of spawned sync work waiting for the loop, at most.
const INTERNAL_QUEUE: usize = 1024;
/// How often due redials are looked for, and the sync core's timers run.
const TICK: Duration = Duration::from_millis(250);
/// A connection to a device that has answered no ping for this long is dead: a ping goes every
/// [`PING_INTERVAL`] and may take [`PING_TIMEOUT`].
const SILENT_AFTER: Duration = PING_INTERVAL.saturating_add(PING_TIMEOUT);
/// How long a device of another chatsync version waits before it is dialled again.
const INCOMPATIBLE_REDIAL: Duration = Duration::from_secs(300);
/// How long shutdown waits for document work under way to finish.
const WORK_AFTER_SHUTDOWN: Duration = Duration::from_secs(10);

pub struct NetworkTask {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) book: PeerBook,
    pub(super) engine: Arc<Engine>,
    /// Chat sync: every decision about it (`chatsync_model::sync`).
    pub(super) sync: Core,
    /// The sync protocol's links to and from every device, and the requests in flight on
    /// them (`links.rs`).
    pub(super) links: Links,
    /// Document work and other tasks the loop spawned: shutdown waits for them.
    pub(super) tasks: TaskTracker,
    pub(super) pairing: Pairing,
    pub(super) remembered: Remembered,
    pub(super) conduct: Conduct,
    pub(super) internal: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    trust: watch::Receiver<Trust>,
    pub(super) allowed: BTreeSet<PeerId>,
    /// Devices just removed from the roster, still connected until they have been told (or a
    /// deadline passed): see `roster.rs`.
    pub(super) removing: HashMap<PeerId, Instant>,
    listen_addrs: Vec<Multiaddr>,
    /// Addresses mDNS found, trusted or not: mDNS announces a device only once per record
    /// lifetime, so a device trusted later must still be found here.
    discovered: HashMap<PeerId, BTreeSet<Multiaddr>>,
    events: broadcast::Sender<Event>,
    /// The sync state last published as an event (state, chats, behind, ahead, peers).
    reported_progress: Option<(SyncStatus, usize, usize, usize, usize)>,
    commands: mpsc::Receiver<Command>,
    /// Reservations on relays, and relay mode (`relay.rs`).
    pub(super) relay: RelayState,
}

impl NetworkTask {
    pub fn new(
        keypair: libp2p::identity::Keypair,
        config: NetworkConfig,
        engine: Arc<Engine>,
        commands: mpsc::Receiver<Command>,
    ) -> anyhow::Result<NetworkTask> {
        let trust = engine.trust();
        let events = engine.event_sender();
        let (internal, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
        let relay_server = config.relay.enabled.then(|| server_config(&config.relay));
        let mut swarm = build_swarm(keypair, config.mdns, relay_server, config.hole_punching)?;
        let relay = RelayState::new(&config.relays, &config.relay);
        let remembered = Remembered::load(engine.store());
        let mut listening = 0;
        for configured in &config.listen {
            // The port of the last run first (see `remembered.rs`), then what is configured.
            let mut tries = remembered
                .listen_addresses(configured)
                .into_iter()
                .peekable();
            while let Some(addr) = tries.next() {
                match swarm.listen_on(addr.clone()) {
                    Ok(_) => {
                        listening += 1;
                        break;
                    }
                    Err(e) if tries.peek().is_some() => {
                        tracing::debug!(%addr, error = %e, "the last run's port is taken");
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "cannot listen"),
                }
            }
        }
        if listening == 0 && !config.listen.is_empty() {
            anyhow::bail!("cannot listen on any of the configured network addresses");
        }
        let mut book = PeerBook::default();
        for addr in config.peers {
            match peer_of(&addr) {
                Some(peer) => {
                    if let Some(entry) = book.entry(peer) {
                        entry.configured = true;
                        entry.add_address(without_p2p(&addr));
                    }
                }
                None => tracing::warn!(
                    %addr,
                    "ignoring a peer address without /p2p/DEVICE_ID at its end"
                ),
            }
        }
        let links = Links::new(swarm.behaviour().sync.new_control(), internal.clone());
        let mut task = NetworkTask {
            swarm,
            book,
            engine,
            // Numbers of an earlier run must not be taken for this run's (see `Outbox`).
            sync: Core::new(rand::random()),
            links,
            tasks: TaskTracker::new(),
            pairing: Pairing::default(),
            remembered,
            conduct: Conduct::default(),
            internal,
            internal_rx,
            trust,
            allowed: BTreeSet::new(),
            removing: HashMap::new(),
            listen_addrs: Vec::new(),
            discovered: HashMap::new(),
            events,
            reported_progress: None,
            commands,
            relay,
        };
        task.start_relays();
        task.apply_trust();
        // Devices removed while this one was not running.
        for peer in task.remembered.devices() {
            if !task.allowed.contains(&peer) {
                task.remembered.save_forgotten(task.engine.store(), &peer);
            }
        }
        Ok(task)
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let forwarder = self
            .tasks
            .spawn(forward_changes(self.engine.clone(), self.internal.clone()));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal),
                Some(paired) = self.pairing.rx.recv() => self.on_pair_internal(paired),
                Ok(()) = self.trust.changed() => self.apply_trust(),
                _ = tick.tick() => {
                    self.close_silent();
                    self.finish_removals(false);
                    self.expire_requests();
                    self.sync.tick(Instant::now());
                    self.drive();
                    self.redial_due();
                    self.report_progress();
                    self.relay_tick();
                }
            }
        }
        forwarder.abort();
        self.links.stop();
        self.tasks.close();
        if tokio::time::timeout(WORK_AFTER_SHUTDOWN, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.tasks.len(),
                "document work still under way after shutdown; leaving it"
            );
        }
        tracing::debug!("network task stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_infos());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::SyncState(reply) => {
                let _ = reply.send(self.sync_state());
            }
            Command::Pair(command) => self.on_pair_command(command),
            Command::Relay(reply) => {
                let _ = reply.send(self.relay_status());
            }
        }
    }

    /// Makes the allow list match the roster: newly trusted devices may connect (and are
    /// dialled if their address is known); removed ones are disconnected at once.
    pub(super) fn apply_trust(&mut self) {
        let trust = self.trust.borrow_and_update().clone();
        let peers = |devices: &BTreeSet<DeviceId>| -> BTreeSet<PeerId> {
            devices
                .iter()
                .filter_map(|d| PeerId::from_str(d.as_str()).ok())
                .collect()
        };
        let mut trusted = peers(&trust.trusted);
        trusted.remove(self.swarm.local_peer_id());
        self.swarm
            .behaviour_mut()
            .gate
            .set_removed(peers(&trust.removed).into_iter().collect());
        let gone: Vec<PeerId> = self.allowed.difference(&trusted).copied().collect();
        for peer in gone {
            self.remembered.save_forgotten(self.engine.store(), &peer);
            // Nothing more is synced with it; it stays connected only to hear it was removed.
            self.sync.peer_down(peer, Instant::now());
            self.begin_removal(peer);
        }
        self.drive();
        for peer in trusted.difference(&self.allowed) {
            self.swarm.behaviour_mut().gate.allow_peer(*peer);
            let mut found: Vec<Multiaddr> = self.remembered.reached(peer).to_vec();
            found.extend(self.discovered.get(peer).into_iter().flatten().cloned());
            if let Some(entry) = self.book.entry(*peer) {
                for addr in found {
                    entry.add_address(addr);
                }
                entry.reset_backoff();
            }
        }
        self.allowed = trusted;
        self.book
            .peers
            .retain(|p, e| e.configured || e.connected() || self.allowed.contains(p));
        // Whatever changed in the roster, every connected device hears of it.
        for peer in self.accepted_peers() {
            self.send_roster(peer);
        }
        self.redial_due();
    }

    fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .book
            .peers
            .iter()
            .filter(|(p, e)| {
                self.allowed.contains(p) && e.dial_due(now) && !self.is_suspended(p, now)
            })
            .map(|(p, e)| (*p, e.addresses.iter().cloned().collect()))
            .collect();
        for (peer, addresses) in due {
            self.allow_relays_in(&addresses);
            if let Some(entry) = self.book.peers.get_mut(&peer) {
                entry.dialled(now);
            }
            // Explicit addresses only (identify may report ones that reach ourselves), and a
            // fresh port, which avoids the handshake failing for good when both sides dial.
            let opts = DialOpts::peer_id(peer)
                .addresses(addresses)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .allocate_new_port()
                .build();
            match self.swarm.dial(opts) {
                Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => tracing::debug!(%peer, error = ?e, "dial failed"),
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                tracing::info!(%address, "listening for devices");
                self.remembered
                    .save_listening(self.engine.store(), &address);
                self.relay_new_listen_addr(listener_id, &address);
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.listen_addrs.retain(|a| !addresses.contains(a));
                self.relay_listener_closed(listener_id, &reason);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let (remote, outbound) = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => (without_p2p(address), true),
                    ConnectedPoint::Listener { send_back_addr, .. } => {
                        (send_back_addr.clone(), false)
                    }
                };
                let (path, relay) = path_of(&endpoint);
                if outbound && self.allowed.contains(&peer_id) {
                    self.remembered
                        .save_reached(self.engine.store(), peer_id, remote.clone());
                }
                if let Some(entry) = self.book.entry(peer_id) {
                    if outbound {
                        entry.add_address(remote.clone());
                    }
                    entry.connections.insert(
                        connection_id,
                        super::peers::Connection {
                            remote,
                            outbound,
                            since_ms: now_ms(),
                            path,
                            relay,
                            hole_punched: false,
                            heard_at: Instant::now(),
                        },
                    );
                }
                self.prefer_direct(peer_id, connection_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                self.relay_connection_closed(peer_id, connection_id);
                self.connection_gone(peer_id, connection_id, &format!("{cause:?}"));
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                peer_id,
                ..
            } => {
                tracing::debug!(?peer_id, %send_back_addr, error = ?error, "refused a connection");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, error = ?error, "could not connect");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identified(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            })) => match result {
                Ok(rtt) => {
                    if let Some(entry) = self.book.peers.get_mut(&peer) {
                        entry.rtt = Some(rtt);
                        if let Some(c) = entry.connections.get_mut(&connection) {
                            c.heard_at = Instant::now();
                        }
                    }
                }
                Err(e) => {
                    // Ping never closes a connection by itself; a dead link would otherwise
                    // linger until TCP gives up.
                    tracing::debug!(%peer, error = %e, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                    // The link is dead now, not once the close completes: over a dead link
                    // that waits out a timeout of its own (10 s and more), all the while
                    // `status` would say connected.
                    self.connection_gone(peer, connection, &format!("ping failed: {e}"));
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Sync(())) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Pair(event)) => self.on_pair_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                self.on_relay_server_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                self.on_relay_client_event(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => self.on_dcutr_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if self.discovered.len() < MAX_PEERS || self.discovered.contains_key(&peer) {
                        let addrs = self.discovered.entry(peer).or_default();
                        if addrs.len() < MAX_DISCOVERED_ADDRESSES {
                            addrs.insert(addr.clone());
                        }
                    }
                    if self.allowed.contains(&peer)
                        && let Some(entry) = self.book.entry(peer)
                    {
                        entry.add_address(addr);
                    }
                }
                self.redial_due();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    if let Some(addrs) = self.discovered.get_mut(&peer) {
                        addrs.remove(&addr);
                        if addrs.is_empty() {
                            self.discovered.remove(&peer);
                        }
                    }
                    if let Some(entry) = self.book.peers.get_mut(&peer)
                        && !entry.configured
                    {
                        entry.addresses.remove(&addr);
                    }
                }
            }
            _ => {}
        }
    }

    /// Closes the connections to devices that have not answered a ping for [`SILENT_AFTER`]:
    /// their link is dead. libp2p's ping says so only at its second failure, and that one
    /// waits out a stream timeout (about 17 s in all).
    fn close_silent(&mut self) {
        let now = Instant::now();
        let silent: Vec<(PeerId, ConnectionId)> = self
            .book
            .peers
            .iter()
            .filter(|(_, e)| e.accepted)
            .flat_map(|(peer, e)| {
                e.connections
                    .iter()
                    .filter(|(_, c)| now.duration_since(c.heard_at) > SILENT_AFTER)
                    .map(|(id, _)| (*peer, *id))
            })
            .collect();
        for (peer, connection) in silent {
            tracing::debug!(%peer, "no answer to pings; closing the connection");
            self.swarm.close_connection(connection);
            self.connection_gone(peer, connection, "no answer to pings");
        }
    }

    /// A connection is closed, or dead and closing: if it was the device's last, the device is
    /// gone (once: a dead connection's close arrives later and finds it gone already).
    fn connection_gone(&mut self, peer: PeerId, connection: ConnectionId, why: &str) {
        let Some(entry) = self.book.peers.get_mut(&peer) else {
            return;
        };
        entry.connections.remove(&connection);
        if !entry.connected() {
            let was_up = std::mem::take(&mut entry.accepted);
            entry.rtt = None;
            if was_up {
                tracing::info!(%peer, cause = why, "device disconnected");
                self.announce(peer, false);
                self.on_peer_gone(peer);
            }
            self.forget_stranger(peer);
        }
    }

    /// Identify ran, so the other side accepted the connection: the device is up.
    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        // A relay this device uses need not be chatsync (any circuit relay v2 server will do).
        if self.is_relay_only(&peer) {
            return;
        }
        if info.protocol_version != PROTOCOL_VERSION {
            tracing::warn!(
                %peer,
                version = %info.protocol_version,
                agent = %info.agent_version,
                "not a compatible chatsync device; disconnecting (dialled again in 5 minutes)"
            );
            if let Some(entry) = self.book.peers.get_mut(&peer) {
                entry.incompatible(Instant::now(), INCOMPATIBLE_REDIAL);
            }
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        // A device that is not in the roster (one that came to pair) is never synced with.
        if !self.allowed.contains(&peer) {
            return;
        }
        self.learn_relayed_addrs(peer, &info.listen_addrs);
        let Some(entry) = self.book.peers.get_mut(&peer) else {
            return;
        };
        entry.reset_backoff();
        if !entry.accepted {
            entry.accepted = true;
            tracing::info!(%peer, "device connected");
            self.announce(peer, true);
            self.on_peer_accepted(peer);
        }
    }

    /// Devices connected and accepted (trusted, identified).
    pub(super) fn accepted_peers(&self) -> Vec<PeerId> {
        self.book
            .peers
            .iter()
            .filter(|(_, e)| e.accepted)
            .map(|(p, _)| *p)
            .collect()
    }

    fn announce(&self, peer: PeerId, up: bool) {
        let Ok(device) = DeviceId::new(peer.to_base58()) else {
            return;
        };
        let _ = self.events.send(if up {
            Event::PeerUp { device }
        } else {
            Event::PeerDown { device }
        });
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .book
            .peers
            .iter()
            .filter(|(p, e)| self.allowed.contains(p) || e.accepted)
            .filter_map(|(peer, e)| {
                let device = DeviceId::new(peer.to_base58()).ok()?;
                let oldest = e.best_connection();
                let progress = self.sync.progress().get(peer);
                let counts = progress.and_then(|p| p.counts()).filter(|_| e.accepted);
                Some(PeerInfo {
                    device,
                    connected: e.accepted,
                    addresses: e.addresses.iter().cloned().collect(),
                    transport: oldest.filter(|_| e.accepted).map(|c| transport(&c.remote)),
                    path: oldest.filter(|_| e.accepted).map(|c| c.path),
                    relay: oldest
                        .filter(|_| e.accepted)
                        .and_then(|c| c.relay)
                        .map(|r| r.to_base58()),
                    hole_punched: oldest.is_some_and(|c| e.accepted && c.hole_punched),
                    connections: if e.accepted { e.connections.len() } else { 0 },
                    hole_punch_failures: e.hole_punch_failures,
                    outbound: oldest.filter(|_| e.accepted).map(|c| c.outbound),
                    connected_since: oldest.filter(|_| e.accepted).map(|c| c.since_ms),
                    rtt_ms: e.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    last_sync: progress.and_then(|p| p.last_sync).map(epoch_ms),
                    chats_behind: counts.map(|(behind, _)| behind),
                    chats_ahead: counts.map(|(_, ahead)| ahead),
                    bytes_sent: progress.map_or(0, |p| p.bytes_sent),
                    bytes_received: progress.map_or(0, |p| p.bytes_received),
                    refusals: progress.map_or(0, |p| p.refusals),
                    offences: progress.map_or(0, |p| p.offences),
                    suspended_until: self.suspended_until_ms(peer),
                })
            })
            .collect();
        // Trusted devices never seen on the network are listed too (offline).
        for peer in &self.allowed {
            if !self.book.peers.contains_key(peer)
                && let Ok(device) = DeviceId::new(peer.to_base58())
            {
                let progress = self.sync.progress().get(peer);
                out.push(PeerInfo {
                    device,
                    connected: false,
                    addresses: Vec::new(),
                    transport: None,
                    path: None,
                    relay: None,
                    hole_punched: false,
                    connections: 0,
                    hole_punch_failures: 0,
                    outbound: None,
                    connected_since: None,
                    rtt_ms: None,
                    last_sync: progress.and_then(|p| p.last_sync).map(epoch_ms),
                    chats_behind: None,
                    chats_ahead: None,
                    bytes_sent: progress.map_or(0, |p| p.bytes_sent),
                    bytes_received: progress.map_or(0, |p| p.bytes_received),
                    refusals: progress.map_or(0, |p| p.refusals),
                    offences: progress.map_or(0, |p| p.offences),
                    suspended_until: self.suspended_until_ms(peer),
                });
            }
        }
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }
}

impl NetworkTask {
    /// Publishes [`Event::SyncProgress`] if the sync state changed since it was last published.
    fn report_progress(&mut self) {
        let state = self.sync_state();
        let chats = self.engine.stats().chats;
        let now = (
            state.state,
            chats,
            state.chats_behind,
            state.chats_ahead,
            state.peers_connected,
        );
        if self.reported_progress == Some(now) {
            return;
        }
        self.reported_progress = Some(now);
        let _ = self.events.send(Event::SyncProgress {
            state: state.state,
            chats,
            chats_behind: state.chats_behind,
            chats_ahead: state.chats_ahead,
            peers_connected: state.peers_connected,
        });
    }

    /// This device's sync state over every connected device.
    fn sync_state(&self) -> SyncState {
        let connected = self.accepted_peers();
        let mut behind = BTreeSet::new();
        let mut ahead = BTreeSet::new();
        let mut known = true;
        for peer in &connected {
            match self
                .sync
                .progress()
                .get(peer)
                .filter(|p| p.counts().is_some())
            {
                Some(p) => {
                    behind.extend(p.behind());
                    ahead.extend(p.ahead());
                }
                None => known = false,
            }
        }
        let sessions = self.sync.sessions_running();
        let state = if connected.is_empty() {
            SyncStatus::Offline
        } else if !known || !behind.is_empty() || !ahead.is_empty() || sessions > 0 {
            SyncStatus::Syncing
        } else {
            SyncStatus::InSync
        };
        SyncState {
            state,
            peers_connected: connected.len(),
            peers_trusted: self.allowed.len(),
            chats_behind: behind.len(),
            chats_ahead: ahead.len(),
            sessions,
            last_sync: self
                .sync
                .progress()
                .iter()
                .filter_map(|(_, p)| p.last_sync)
                .max()
                .map(epoch_ms),
        }
    }
}

/// Conduct (`conduct.rs` keeps the books): what the task does about a device's requests and
/// offences.
impl NetworkTask {
    /// Charges `peer` for a request. False when the request is to be refused unread: the
    /// device is over its rate (and perhaps now suspended for ignoring that).
    pub(super) fn admit_request(&mut self, peer: PeerId, request: &SyncRequest) -> bool {
        match self.conduct.admit(peer, cost(request), Instant::now()) {
            Admission::Serve => true,
            Admission::SlowDown => {
                tracing::debug!(%peer, "a device is over its request rate; told to slow down");
                false
            }
            Admission::Suspend(length) => {
                self.suspend(
                    peer,
                    length,
                    "it kept sending requests after being told to slow down",
                );
                false
            }
        }
    }

    /// `peer` sent data no honest device sends: logged, counted, and perhaps suspended.
    pub(super) fn offence(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, %why, "refused data from a device");
        self.sync.count_offence(peer);
        if let Some(length) = self.conduct.offence(peer, Instant::now()) {
            self.suspend(peer, length, why);
        }
    }

    fn suspend(&mut self, peer: PeerId, length: Duration, why: &str) {
        tracing::warn!(
            %peer,
            seconds = length.as_secs(),
            %why,
            "suspending a device for misconduct: its connections are closed and it is refused \
             until the suspension ends"
        );
        self.swarm
            .behaviour_mut()
            .gate
            .suspend(peer, Instant::now() + length);
    }

    /// Until when `peer` is suspended, in ms since the Unix epoch.
    pub(super) fn suspended_until_ms(&self, peer: &PeerId) -> Option<i64> {
        let now = Instant::now();
        let left = self.conduct.suspended_until(peer, now)?.duration_since(now);
        Some(now_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX)))
    }

    pub(super) fn is_suspended(&self, peer: &PeerId, now: Instant) -> bool {
        self.conduct.suspended_until(peer, now).is_some()
    }
}

/// A moment of this run in ms since the Unix epoch.
fn epoch_ms(at: Instant) -> i64 {
    let ago = i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX);
    now_ms().saturating_sub(ago)
}

/// The device id at the end of an address (`.../p2p/ID`).
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last()? {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    }
}

/// The address without its trailing `/p2p/ID` (a relayed address keeps its relay's id).
fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}
