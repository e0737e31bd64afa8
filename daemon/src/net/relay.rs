//! Devices apart: circuit relay v2, both sides, and hole punching.
//!
//! **Relay clients.** A device given relays (`--relay-addr`, `network.relays`) keeps a
//! reservation on each: it listens on `RELAY_ADDR/p2p-circuit`, so that the relay forwards to it
//! connections from devices that cannot reach it directly. The relayed addresses the relay
//! hands back are listen addresses like any other: `chatsync status` shows them, identify tells
//! connected devices about them, and pairing tickets carry them. libp2p closes a relayed
//! listener for good when its reservation or its connection to the relay fails, so this module
//! opens it again, with backoff, for as long as the daemon runs.
//!
//! A device reached through a relay is gated exactly like a direct one (`gate.rs` sees its
//! proven id, whatever the path). The relay itself is not a roster device: the gate admits the
//! connections this device makes to relays it uses (configured, or named in the addresses it
//! dials), and `TrustedOnly` keeps the sync protocol off them.
//!
//! **Hole punching.** Over a relayed connection, DCUtR tries to open a direct one (both sides
//! dial each other's observed addresses at once). When a direct connection to a device is up,
//! relayed connections to it are closed: they cost the relay's limits, and a sync link or an
//! attachment stream could still be opened over them. When hole punching fails, the relayed connection
//! simply stays.
//!
//! **Relay mode.** `chatsyncd --relay` adds libp2p's relay server, with every limit from
//! `[relay]` (reservations in all and per device, circuits in all and per device, bytes and time
//! per circuit, how often a device may reserve or open a circuit, and optionally which devices
//! may use it at all). The gate admits devices outside the roster to a relay, up to the number
//! of reservations and circuits it allows, but never for sync: a relay stores nothing and sees
//! only Noise-encrypted bytes between the two ends.
//!
//! **Limits met mid-transfer.** A relay closes a circuit that has carried its byte limit or
//! lived its time limit. Over relayed connections large payloads travel in small parts
//! (`chatsync_model::sync::transfers`), and a transfer cut with its connection is resumed from
//! where it stopped after the devices reconnect (`chatsync_model::sync::resume`), so a catch-up
//! larger than one circuit allows still completes.

use std::{
    collections::HashSet,
    net::IpAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId, core::ConnectedPoint, core::transport::ListenerId, dcutr,
    multiaddr::Protocol, relay, swarm::ConnectionId,
};

use super::task::NetworkTask;
use crate::{config::RelayConfig, engine::now_ms};

/// Relays a device keeps reservations on, at most.
pub const MAX_CONFIGURED_RELAYS: usize = 8;
/// Relayed addresses remembered per device from what it announces.
const MAX_LEARNT_RELAYED: usize = 4;
/// Wait before opening a failed reservation again: doubles up to the ceiling.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(15);
/// Relayed addresses listed per reservation, at most (a relay chooses how many it sends).
const MAX_RELAYED_ADDRS: usize = 8;

/// How a connection reaches the other device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Directly, at a private, link-local or loopback address.
    Lan,
    /// Directly, at any other address (a public one, or after hole punching).
    Direct,
    /// Through a relay.
    Relayed,
}

/// The path of a connection, and the relay it goes through if it is relayed.
pub fn path_of(endpoint: &ConnectedPoint) -> (Path, Option<PeerId>) {
    let (local_or_dialled, remote) = match endpoint {
        ConnectedPoint::Dialer { address, .. } => (address, address),
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => (local_addr, send_back_addr),
    };
    if endpoint.is_relayed() {
        return (Path::Relayed, relay_of(local_or_dialled));
    }
    (path_of_ip(remote), None)
}

fn path_of_ip(addr: &Multiaddr) -> Path {
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    });
    match ip {
        Some(IpAddr::V4(ip)) if ip.is_private() || ip.is_loopback() || ip.is_link_local() => {
            Path::Lan
        }
        Some(IpAddr::V6(ip))
            if ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local() =>
        {
            Path::Lan
        }
        _ => Path::Direct,
    }
}

/// The relay a relayed address goes through: the device id just before `/p2p-circuit`.
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Where a reservation on a relay stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationState {
    Reserved,
    Connecting,
    /// After a failure.
    Retrying,
}

/// A reservation this device keeps (or tries to keep) on a relay.
#[derive(Clone, Debug)]
pub struct ReservationInfo {
    pub relay: String,
    /// The relay's address as configured.
    pub address: String,
    pub state: ReservationState,
    /// Addresses other devices reach this one at through the relay.
    pub relayed_addrs: Vec<String>,
    /// When the current reservation was first accepted (ms since the Unix epoch).
    pub since: Option<i64>,
    /// Renewals of the current reservation.
    pub renewals: u64,
    /// The relay's limits per circuit, as it announced them.
    pub circuit_bytes: Option<u64>,
    pub circuit_secs: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// This daemon's relay server, when it runs one.
#[derive(Clone, Debug)]
pub struct RelayServerInfo {
    /// Devices holding a reservation now.
    pub reservations: usize,
    /// Circuits open now.
    pub circuits: usize,
    /// Connections of devices outside the roster using the relay.
    pub clients: usize,
    /// Addresses it gives to the devices that reserve.
    pub external_addrs: Vec<String>,
    /// Since this daemon started.
    pub reservations_accepted: u64,
    pub reservations_denied: u64,
    pub circuits_accepted: u64,
    pub circuits_denied: u64,
    pub max_reservations: usize,
    pub max_circuits: usize,
    pub max_circuit_bytes: u64,
    pub max_circuit_secs: u64,
    /// Only these devices may use it; empty means any device, within the limits.
    pub allow: Vec<String>,
}

/// Both sides of relaying, as `status` shows them.
#[derive(Clone, Debug, Default)]
pub struct RelayStatus {
    pub reservations: Vec<ReservationInfo>,
    pub server: Option<RelayServerInfo>,
}

struct Reserving {
    relay: PeerId,
    /// The relay's address, ending in `/p2p/RELAY_ID`.
    addr: Multiaddr,
    listener: Option<ListenerId>,
    reserved: bool,
    relayed: Vec<Multiaddr>,
    since_ms: Option<i64>,
    renewals: u64,
    limit: Option<(Option<u64>, Option<u64>)>,
    error: Option<String>,
    backoff: Option<Duration>,
    next_try: Option<Instant>,
}

struct Server {
    config: RelayConfig,
    /// Devices holding a reservation (bounded by the relay's own limit).
    reserved: HashSet<PeerId>,
    circuits: usize,
    external: Vec<Multiaddr>,
    /// No external address was configured: listen addresses other than loopback stand in.
    from_listen_addrs: bool,
    reservations_accepted: u64,
    reservations_denied: u64,
    circuits_accepted: u64,
    circuits_denied: u64,
}

/// The network task's relay state.
#[derive(Default)]
pub struct RelayState {
    reserving: Vec<Reserving>,
    server: Option<Server>,
}

/// The relay server's configuration from `[relay]` (already checked by
/// [`RelayConfig::check`]).
pub fn server_config(c: &RelayConfig) -> relay::Config {
    let per_minute = |n: u32| {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        (n, Duration::from_secs(60) / n.get())
    };
    let (reservations, every) = per_minute(c.reservations_per_minute);
    let (circuits, circuit_every) = per_minute(c.circuits_per_minute);
    let mut config = relay::Config {
        max_reservations: c.max_reservations,
        max_reservations_per_peer: c.max_reservations_per_peer,
        reservation_duration: Duration::from_secs(c.reservation_secs),
        reservation_rate_limiters: Vec::new(),
        max_circuits: c.max_circuits,
        max_circuits_per_peer: c.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(c.max_circuit_secs),
        max_circuit_bytes: c.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(reservations, every)
    .circuit_src_per_peer(circuits, circuit_every)
    // Many identities from one address are still one address.
    .reservation_rate_per_ip(
        reservations.saturating_mul(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN)),
        every / 4,
    )
    .circuit_src_per_ip(
        circuits.saturating_mul(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN)),
        circuit_every / 4,
    );
    let allow: HashSet<PeerId> = c.allow.iter().filter_map(|d| d.parse().ok()).collect();
    if !c.allow.is_empty() {
        let (a, b) = (allow.clone(), allow);
        config
            .reservation_rate_limiters
            .push(Box::new(move |peer: PeerId, _: &Multiaddr, _| {
                a.contains(&peer)
            }));
        config
            .circuit_src_rate_limiters
            .push(Box::new(move |peer: PeerId, _: &Multiaddr, _| {
                b.contains(&peer)
            }));
    }
    config
}

/// Connections of devices outside the roster a relay admits: enough for every reservation and
/// for the source of every circuit.
pub fn max_relay_clients(c: &RelayConfig) -> usize {
    c.max_reservations.saturating_add(c.max_circuits)
}

impl RelayState {
    pub fn new(relays: &[Multiaddr], server: &RelayConfig) -> RelayState {
        let mut state = RelayState::default();
        for addr in relays {
            let Some(Protocol::P2p(relay)) = addr.iter().last() else {
                tracing::warn!(%addr, "ignoring a relay address without /p2p/RELAY_ID at its end");
                continue;
            };
            if is_relayed(addr) {
                tracing::warn!(%addr, "ignoring a relay address that is itself relayed");
                continue;
            }
            if state.reserving.iter().any(|r| r.addr == *addr) {
                continue;
            }
            if state.reserving.len() >= MAX_CONFIGURED_RELAYS {
                tracing::warn!(%addr, "ignoring relays after the first {MAX_CONFIGURED_RELAYS}");
                break;
            }
            state.reserving.push(Reserving {
                relay,
                addr: addr.clone(),
                listener: None,
                reserved: false,
                relayed: Vec::new(),
                since_ms: None,
                renewals: 0,
                limit: None,
                error: None,
                backoff: None,
                next_try: None,
            });
        }
        if server.enabled {
            state.server = Some(Server {
                config: server.clone(),
                reserved: HashSet::new(),
                circuits: 0,
                external: Vec::new(),
                from_listen_addrs: server.external_addrs.is_empty(),
                reservations_accepted: 0,
                reservations_denied: 0,
                circuits_accepted: 0,
                circuits_denied: 0,
            });
        }
        state
    }

    /// The relays this device keeps reservations on.
    pub fn configured(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.reserving.iter().map(|r| r.relay)
    }

    fn by_listener(&mut self, listener: ListenerId) -> Option<&mut Reserving> {
        self.reserving
            .iter_mut()
            .find(|r| r.listener == Some(listener))
    }
}

impl NetworkTask {
    /// Relay mode's external addresses, the gate's relays, and the first reservations.
    pub(super) fn start_relays(&mut self) {
        let configured: Vec<PeerId> = self.relay.configured().collect();
        for relay in configured {
            self.swarm.behaviour_mut().gate.allow_relay(relay);
        }
        if let Some(config) = self.relay.server.as_ref().map(|s| s.config.clone()) {
            self.swarm
                .behaviour_mut()
                .gate
                .serve_relay(max_relay_clients(&config));
            for addr in &config.external_addrs {
                self.add_relay_external(addr.clone());
            }
            tracing::info!(
                max_reservations = config.max_reservations,
                max_circuits = config.max_circuits,
                max_circuit_bytes = config.max_circuit_bytes,
                max_circuit_secs = config.max_circuit_secs,
                allow = config.allow.len(),
                "serving as a relay"
            );
        }
        self.relay_tick();
    }

    fn add_relay_external(&mut self, addr: Multiaddr) {
        let Some(server) = self.relay.server.as_mut() else {
            return;
        };
        if server.external.contains(&addr) || server.external.len() >= MAX_RELAYED_ADDRS {
            return;
        }
        tracing::info!(%addr, "relay reachable at");
        server.external.push(addr.clone());
        self.swarm.add_external_address(addr);
    }

    /// Opens the reservations that are due (first ones, and retries after failures).
    pub(super) fn relay_tick(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (i, r) in self.relay.reserving.iter().enumerate() {
            if r.listener.is_none() && r.next_try.is_none_or(|t| now >= t) {
                due.push(i);
            }
        }
        for i in due {
            let addr = self.relay.reserving[i]
                .addr
                .clone()
                .with(Protocol::P2pCircuit);
            let result = self.swarm.listen_on(addr.clone());
            let r = &mut self.relay.reserving[i];
            let backoff = r.backoff.map_or(FIRST_RETRY, |b| (b * 2).min(MAX_RETRY));
            r.backoff = Some(backoff);
            r.next_try = Some(now + backoff);
            match result {
                Ok(id) => {
                    tracing::debug!(%addr, "asking the relay for a reservation");
                    r.listener = Some(id);
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot listen through the relay");
                    r.error = Some(e.to_string());
                }
            }
        }
    }

    /// A listener reported an address: a relayed one is this device's address on that relay;
    /// in relay mode without configured external addresses, a direct one stands in for one.
    pub(super) fn relay_new_listen_addr(&mut self, listener: ListenerId, addr: &Multiaddr) {
        if let Some(r) = self.relay.by_listener(listener) {
            if r.relayed.len() < MAX_RELAYED_ADDRS && !r.relayed.contains(addr) {
                r.relayed.push(addr.clone());
            }
            return;
        }
        let stand_in = self
            .relay
            .server
            .as_ref()
            .is_some_and(|s| s.from_listen_addrs)
            && !is_relayed(addr)
            && !is_loopback(addr);
        if stand_in {
            self.add_relay_external(addr.clone());
        }
    }

    /// A listener closed: a relayed one is opened again after a while.
    pub(super) fn relay_listener_closed(
        &mut self,
        listener: ListenerId,
        reason: &Result<(), std::io::Error>,
    ) {
        if let Some(r) = self.relay.by_listener(listener) {
            r.listener = None;
            r.reserved = false;
            r.relayed.clear();
            r.since_ms = None;
            r.renewals = 0;
            r.error = Some(match reason {
                Ok(()) => "the relay closed the reservation".to_string(),
                Err(e) => error_chain(e),
            });
            tracing::info!(relay = %r.relay, error = ?r.error, "reservation lost; retrying");
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                limit,
            } => {
                for r in self
                    .relay
                    .reserving
                    .iter_mut()
                    .filter(|r| r.relay == relay_peer_id && r.listener.is_some())
                {
                    if renewal && r.reserved {
                        r.renewals += 1;
                    } else {
                        r.reserved = true;
                        r.since_ms = Some(now_ms());
                        tracing::info!(relay = %relay_peer_id, "reservation accepted");
                    }
                    r.error = None;
                    r.backoff = None;
                    r.limit = limit.map(|l| (l.data_in_bytes(), l.duration().map(|d| d.as_secs())));
                }
            }
            relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => {
                tracing::debug!(relay = %relay_peer_id, ?limit, "circuit through the relay opened");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                tracing::debug!(peer = %src_peer_id, ?limit, "a device came through the relay");
            }
        }
    }

    pub(super) fn on_relay_server_event(&mut self, event: relay::Event) {
        let Some(server) = self.relay.server.as_mut() else {
            return;
        };
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                server.reservations_accepted += 1;
                if server.reserved.len() < server.config.max_reservations {
                    server.reserved.insert(src_peer_id);
                }
                tracing::debug!(peer = %src_peer_id, "reservation accepted");
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                server.reservations_denied += 1;
                tracing::debug!(peer = %src_peer_id, ?status, "reservation denied");
            }
            relay::Event::ReservationTimedOut { src_peer_id } => {
                server.reserved.remove(&src_peer_id);
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                server.circuits_accepted += 1;
                server.circuits += 1;
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                server.circuits_denied += 1;
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit denied");
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                server.circuits = server.circuits.saturating_sub(1);
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "circuit closed");
            }
            _ => {}
        }
    }

    /// A connection closed. In relay mode, a device's reservation ends with its last
    /// connection (libp2p reports a closed reservation for every closed connection, so the
    /// count follows connections, not those reports).
    pub(super) fn relay_connection_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(server) = self.relay.server.as_mut()
            && !self.swarm.is_connected(&peer)
        {
            server.reserved.remove(&peer);
        }
        self.update_relayed_only(peer, Some(connection));
    }

    /// A relay this device dials that is not also a roster device.
    pub(super) fn is_relay_only(&self, peer: &PeerId) -> bool {
        self.swarm.behaviour().gate.is_relay(peer) && !self.allowed.contains(peer)
    }

    /// A device outside the roster (a relay client, a relay, a device that came to pair) left:
    /// its book entry goes, so that a busy relay's passing clients never fill the book that
    /// roster devices need.
    pub(super) fn forget_stranger(&mut self, peer: PeerId) {
        if !self.allowed.contains(&peer)
            && self
                .book
                .peers
                .get(&peer)
                .is_some_and(|e| !e.configured && !e.connected())
        {
            self.book.peers.remove(&peer);
        }
    }

    /// Large payloads go to a device reached only through relays in small parts
    /// (`chatsync_model::sync::transfers`).
    fn update_relayed_only(&mut self, peer: PeerId, closing: Option<ConnectionId>) {
        let relayed_only = self.book.peers.get(&peer).is_some_and(|e| {
            let mut open = e.connections.iter().filter(|(id, _)| Some(**id) != closing);
            let mut any = false;
            let all_relayed = open.all(|(_, c)| {
                any = true;
                c.path == Path::Relayed
            });
            any && all_relayed
        });
        self.sync.set_relayed(peer, relayed_only);
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(connection) => {
                tracing::info!(peer = %event.remote_peer_id, ?connection, "hole punched: direct connection");
                if let Some(entry) = self.book.peers.get_mut(&event.remote_peer_id)
                    && let Some(c) = entry.connections.get_mut(&connection)
                {
                    c.hole_punched = true;
                }
            }
            Err(e) => {
                tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punching failed; staying relayed");
                if let Some(entry) = self.book.peers.get_mut(&event.remote_peer_id) {
                    entry.hole_punch_failures = entry.hole_punch_failures.saturating_add(1);
                }
            }
        }
    }

    /// A direct connection to a device is up: relayed ones to it only cost the relay's limits.
    pub(super) fn prefer_direct(&mut self, peer: PeerId, connection: ConnectionId) {
        self.update_relayed_only(peer, None);
        let Some(entry) = self.book.peers.get(&peer) else {
            return;
        };
        if entry
            .connections
            .get(&connection)
            .is_none_or(|c| c.path == Path::Relayed)
        {
            return;
        }
        let relayed: Vec<ConnectionId> = entry
            .connections
            .iter()
            .filter(|(_, c)| c.path == Path::Relayed)
            .map(|(id, _)| *id)
            .collect();
        for id in relayed {
            tracing::debug!(%peer, ?id, "closing a relayed connection: a direct one is up");
            self.swarm.close_connection(id);
        }
    }

    /// Lets the gate admit the relays named in addresses this device is about to dial.
    pub(super) fn allow_relays_in<'a>(&mut self, addrs: impl IntoIterator<Item = &'a Multiaddr>) {
        for addr in addrs {
            if let Some(relay) = relay_of(addr)
                && relay != *self.swarm.local_peer_id()
                && !self.swarm.behaviour_mut().gate.allow_relay(relay)
            {
                tracing::debug!(%relay, "not dialling through another relay: too many");
            }
        }
    }

    /// A roster device announced its addresses: its relayed ones are worth dialling (it may
    /// move where its direct ones do not reach). Direct ones are not taken from it: identify
    /// reports addresses such as 127.0.0.1 that would reach this device itself.
    pub(super) fn learn_relayed_addrs(&mut self, peer: PeerId, announced: &[Multiaddr]) {
        let me = *self.swarm.local_peer_id();
        let Some(entry) = self.book.entry(peer) else {
            return;
        };
        let known = entry.addresses.iter().filter(|a| is_relayed(a)).count();
        let fresh: Vec<Multiaddr> = announced
            .iter()
            .filter(|a| is_relayed(a) && relay_of(a).is_some_and(|r| r != me && r != peer))
            .map(|a| without_last_p2p(a, &peer))
            .filter(|a| !entry.addresses.contains(a))
            .take(MAX_LEARNT_RELAYED.saturating_sub(known))
            .collect();
        for addr in fresh {
            entry.add_address(addr);
        }
    }

    pub(super) fn relay_status(&self) -> RelayStatus {
        RelayStatus {
            reservations: self
                .relay
                .reserving
                .iter()
                .map(|r| ReservationInfo {
                    relay: r.relay.to_base58(),
                    address: r.addr.to_string(),
                    state: if r.reserved {
                        ReservationState::Reserved
                    } else if r.listener.is_some() {
                        ReservationState::Connecting
                    } else {
                        ReservationState::Retrying
                    },
                    relayed_addrs: r.relayed.iter().map(ToString::to_string).collect(),
                    since: r.since_ms,
                    renewals: r.renewals,
                    circuit_bytes: r.limit.and_then(|l| l.0),
                    circuit_secs: r.limit.and_then(|l| l.1),
                    error: r.error.clone(),
                })
                .collect(),
            server: self.relay.server.as_ref().map(|s| RelayServerInfo {
                reservations: s.reserved.len(),
                circuits: s.circuits,
                clients: self.swarm.behaviour().gate.relay_clients(),
                external_addrs: s.external.iter().map(ToString::to_string).collect(),
                reservations_accepted: s.reservations_accepted,
                reservations_denied: s.reservations_denied,
                circuits_accepted: s.circuits_accepted,
                circuits_denied: s.circuits_denied,
                max_reservations: s.config.max_reservations,
                max_circuits: s.config.max_circuits,
                max_circuit_bytes: s.config.max_circuit_bytes,
                max_circuit_secs: s.config.max_circuit_secs,
                allow: s.config.allow.clone(),
            }),
        }
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
        _ => false,
    })
}

/// `addr` without a trailing `/p2p/PEER` (the book keeps addresses without the device's id).
pub fn without_last_p2p(addr: &Multiaddr, peer: &PeerId) -> Multiaddr {
    let mut addr = addr.clone();
    if addr.iter().last() == Some(Protocol::P2p(*peer)) {
        addr.pop();
    }
    addr
}

/// An error and its causes on one line (libp2p nests the useful part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use libp2p::core::{Endpoint, transport::PortUse};

    use super::*;

    const RELAY: &str = "12D3KooWEvAfV87EuuHwweiPtEs6xdfvGkNJertKqSFytK2ZcTiJ";

    fn dialer(addr: &str) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: addr.parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    #[test]
    fn paths_are_told_apart() {
        assert_eq!(path_of(&dialer("/ip4/10.1.2.3/tcp/1")), (Path::Lan, None));
        assert_eq!(
            path_of(&dialer("/ip4/192.168.1.2/tcp/1")),
            (Path::Lan, None)
        );
        assert_eq!(path_of(&dialer("/ip6/fe80::1/tcp/1")), (Path::Lan, None));
        assert_eq!(
            path_of(&dialer("/ip4/203.0.113.9/tcp/1")),
            (Path::Direct, None)
        );
        assert_eq!(
            path_of(&dialer("/ip4/198.51.100.1/udp/1/quic-v1")),
            (Path::Direct, None)
        );
        let relayed = format!("/ip4/10.0.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{RELAY}");
        assert_eq!(
            path_of(&dialer(&relayed)),
            (Path::Relayed, Some(RELAY.parse().unwrap()))
        );
        let inbound = ConnectedPoint::Listener {
            local_addr: format!("/ip4/10.0.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit")
                .parse()
                .unwrap(),
            send_back_addr: format!("/p2p/{RELAY}").parse().unwrap(),
        };
        assert_eq!(
            path_of(&inbound),
            (Path::Relayed, Some(RELAY.parse().unwrap()))
        );
    }

    #[test]
    fn relay_addresses_are_checked() {
        let ok: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{RELAY}")
            .parse()
            .unwrap();
        let no_id: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let relayed: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{RELAY}")
                .parse()
                .unwrap();
        let state = RelayState::new(
            &[ok.clone(), no_id, relayed, ok.clone()],
            &RelayConfig::default(),
        );
        assert_eq!(state.reserving.len(), 1);
        assert!(state.server.is_none());
        let many: Vec<Multiaddr> = (0..20)
            .map(|i| {
                let id = libp2p::identity::Keypair::generate_ed25519()
                    .public()
                    .to_peer_id();
                format!("/ip4/10.0.0.{i}/tcp/1/p2p/{id}").parse().unwrap()
            })
            .collect();
        assert_eq!(
            RelayState::new(&many, &RelayConfig::default())
                .reserving
                .len(),
            MAX_CONFIGURED_RELAYS
        );
    }

    #[test]
    fn server_limits_come_from_the_config() {
        let c = RelayConfig {
            enabled: true,
            max_circuit_bytes: 1000,
            max_circuit_secs: 7,
            max_reservations: 3,
            allow: vec![RELAY.into()],
            ..RelayConfig::default()
        };
        let config = server_config(&c);
        assert_eq!(config.max_circuit_bytes, 1000);
        assert_eq!(config.max_circuit_duration, Duration::from_secs(7));
        assert_eq!(config.max_reservations, 3);
        // Per device and per address, plus the allow list.
        assert_eq!(config.reservation_rate_limiters.len(), 3);
        assert_eq!(config.circuit_src_rate_limiters.len(), 3);
        let mut config = config;
        let stranger = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        let allowed = config.reservation_rate_limiters[2].try_next(
            RELAY.parse().unwrap(),
            &addr,
            Instant::now(),
        );
        let refused = config.reservation_rate_limiters[2].try_next(stranger, &addr, Instant::now());
        assert!(allowed && !refused);
        assert_eq!(max_relay_clients(&c), 3 + c.max_circuits);
    }
}
