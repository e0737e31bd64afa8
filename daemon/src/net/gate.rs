//! Who may connect, and who may sync.
//!
//! [`Gate`] decides every connection right after the encrypted handshake, when the other
//! device's id is proven: roster devices are admitted; so are devices that are not paired yet,
//! but only while this device has an open invitation (`chatsync pair`), at most
//! [`MAX_UNPAIRED`] at once, each for at most [`UNPAIRED_LIFETIME`]; and, on a device that is
//! joining, the inviter named by the ticket. Everyone else is refused before any protocol runs.
//!
//! [`TrustedOnly`] wraps the sync protocol so that a connection to a device outside the roster
//! (a pairing connection) does not even offer it: such a peer cannot open a sync stream, so it
//! cannot make this device read a request. The network task checks trust again on every sync
//! link and request it handles (`sessions.rs`), so neither check alone keeps the chats safe.
//!
//! Relays (`relay.rs`) are the other exception, both ways. A device dials the relays it uses
//! (configured ones, and those named in its roster devices' and tickets' relayed addresses, at
//! most [`MAX_RELAYS`]); the gate admits those outbound connections, but they are not roster
//! connections, so `TrustedOnly` keeps sync off them: a relay gets relay, identify, ping. A
//! daemon that serves as a relay admits connections from any device, up to a cap, for the same
//! protocols only. Devices reached *through* a relay are gated exactly like direct ones: the
//! gate sees the other device's proven id whatever the path.
//!
//! A device removed from the mesh is refused always, open invitation or not. A roster device the
//! network task suspended for misconduct (`conduct.rs`) is refused, both
//! ways, until its suspension ends.
//!
//! Trust is decided per connection when it is established: a device that pairs over a
//! connection is synced with over its next one (the joiner reconnects once paired).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use either::Either;
use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

/// Connections from devices that are not paired, at most, while invitations are open.
pub const MAX_UNPAIRED: usize = 4;
/// How long a connection from a device that is not paired may stay open; pairing takes one
/// request.
pub const UNPAIRED_LIFETIME: Duration = Duration::from_secs(20);
/// Relays this device may dial, at most (configured ones, and ones its devices use).
pub const MAX_RELAYS: usize = 16;

/// The roster's devices (without this one), shared by the gate and the sync wrapper.
#[derive(Clone, Default)]
pub struct Trusted(Arc<RwLock<HashSet<PeerId>>>);

impl Trusted {
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    fn insert(&self, peer: PeerId) -> bool {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer)
    }

    fn remove(&self, peer: &PeerId) -> bool {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer)
    }
}

#[derive(Debug)]
struct NotAdmitted(PeerId);

impl std::fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} is not in the roster", self.0)
    }
}

impl std::error::Error for NotAdmitted {}

#[derive(Debug)]
struct Suspended(PeerId);

impl std::fmt::Display for Suspended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} is suspended for misconduct", self.0)
    }
}

impl std::error::Error for Suspended {}

/// The connection gate (see the module docs).
pub struct Gate {
    trusted: Trusted,
    /// Devices that are not paired may connect until then (the last open invitation's end).
    open_until: Option<Instant>,
    /// Inviters of tickets being used on this device.
    joining: HashSet<PeerId>,
    /// Devices removed from the mesh: refused even while devices that are not paired may
    /// connect.
    removed: HashSet<PeerId>,
    /// Devices refused until then, trusted or not (see `conduct.rs`).
    suspended: HashMap<PeerId, Instant>,
    /// Relays this device may dial (never sync with).
    relays: HashSet<PeerId>,
    /// While serving as a relay: connections of devices outside the roster that came to use
    /// it, at most this many.
    relay_clients: Option<usize>,
    clients: HashSet<ConnectionId>,
    /// Connections of devices outside the roster, and when they are closed.
    unpaired: HashMap<ConnectionId, (PeerId, Instant)>,
    to_close: VecDeque<(PeerId, CloseConnection)>,
    /// How long an unpaired connection may stay ([`UNPAIRED_LIFETIME`]).
    lifetime: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waker: Option<Waker>,
}

impl Gate {
    pub fn new(trusted: Trusted) -> Gate {
        Gate {
            trusted,
            open_until: None,
            joining: HashSet::new(),
            removed: HashSet::new(),
            suspended: HashMap::new(),
            relays: HashSet::new(),
            relay_clients: None,
            clients: HashSet::new(),
            unpaired: HashMap::new(),
            to_close: VecDeque::new(),
            lifetime: UNPAIRED_LIFETIME,
            timer: None,
            waker: None,
        }
    }

    pub fn is_trusted(&self, peer: &PeerId) -> bool {
        self.trusted.contains(peer)
    }

    /// A roster device: it may connect and sync.
    pub fn allow_peer(&mut self, peer: PeerId) {
        self.trusted.insert(peer);
        self.unpaired.retain(|_, (p, _)| *p != peer);
    }

    /// No longer in the roster: its connections are closed at once.
    pub fn disallow_peer(&mut self, peer: PeerId) {
        if self.trusted.remove(&peer) {
            self.close(peer, CloseConnection::All);
        }
    }

    /// The devices removed from the mesh (the roster's word, replacing the last).
    pub fn set_removed(&mut self, removed: HashSet<PeerId>) {
        self.removed = removed;
    }

    /// Closes every connection of `peer` and refuses it until `until`.
    pub fn suspend(&mut self, peer: PeerId, until: Instant) {
        let now = Instant::now();
        self.suspended.retain(|_, t| *t > now);
        self.suspended.insert(peer, until);
        self.close(peer, CloseConnection::All);
    }

    /// Refuses a removed device, and a suspended one while its suspension lasts.
    fn check_barred(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.removed.contains(peer) {
            return Err(ConnectionDenied::new(NotAdmitted(*peer)));
        }
        match self.suspended.get(peer) {
            Some(until) if Instant::now() < *until => Err(ConnectionDenied::new(Suspended(*peer))),
            _ => Ok(()),
        }
    }

    /// Devices that are not paired may connect until `until` (or not at all with `None`).
    /// Their connections already open stay until their own time runs out.
    pub fn open_window(&mut self, until: Option<Instant>) {
        self.open_until = until;
    }

    /// Admits the inviter of a ticket being used, until [`Gate::end_join`].
    pub fn begin_join(&mut self, peer: PeerId) {
        self.joining.insert(peer);
    }

    pub fn end_join(&mut self, peer: &PeerId) {
        self.joining.remove(peer);
    }

    /// Lets this device dial `peer` as a relay (not for sync). False when [`MAX_RELAYS`] are
    /// already allowed.
    pub fn allow_relay(&mut self, peer: PeerId) -> bool {
        if self.relays.contains(&peer) {
            return true;
        }
        if self.relays.len() >= MAX_RELAYS {
            return false;
        }
        self.relays.insert(peer)
    }

    pub fn is_relay(&self, peer: &PeerId) -> bool {
        self.relays.contains(peer)
    }

    /// Serves as a relay: up to `max_clients` connections from devices outside the roster are
    /// admitted (for the relay protocols only).
    pub fn serve_relay(&mut self, max_clients: usize) {
        self.relay_clients = Some(max_clients);
    }

    /// Connections of devices outside the roster using this relay now.
    pub fn relay_clients(&self) -> usize {
        self.clients.len()
    }

    fn window_open(&self) -> bool {
        self.open_until.is_some_and(|t| Instant::now() < t)
    }

    fn close(&mut self, peer: PeerId, which: CloseConnection) {
        self.to_close.push_back((peer, which));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn admit_unpaired(&mut self, connection: ConnectionId, peer: PeerId) {
        self.unpaired
            .insert(connection, (peer, Instant::now() + self.lifetime));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_barred(&peer)?;
        if self.is_trusted(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        // Relay clients come directly: nobody relays through a relayed connection.
        let relayed = local
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit));
        if let Some(max) = self.relay_clients
            && !relayed
            && self.clients.len() < max
        {
            self.clients.insert(connection);
            return Ok(dummy::ConnectionHandler);
        }
        let open = self.window_open() || self.joining.contains(&peer);
        if open && self.unpaired.len() < MAX_UNPAIRED {
            self.admit_unpaired(connection, peer);
            return Ok(dummy::ConnectionHandler);
        }
        Err(ConnectionDenied::new(NotAdmitted(peer)))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(p) = &peer {
            self.check_barred(p)?;
        }
        match peer {
            Some(p) if self.is_trusted(&p) || self.joining.contains(&p) || self.is_relay(&p) => {
                Ok(Vec::new())
            }
            Some(p) => Err(ConnectionDenied::new(NotAdmitted(p))),
            // This device only ever dials devices by id.
            None => Err(ConnectionDenied::new(NotAdmitted(PeerId::random()))),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_barred(&peer)?;
        if self.is_trusted(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        if self.joining.contains(&peer) {
            self.admit_unpaired(connection, peer);
            return Ok(dummy::ConnectionHandler);
        }
        if self.is_relay(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        Err(ConnectionDenied::new(NotAdmitted(peer)))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(c) = event {
            self.unpaired.remove(&c.connection_id);
            self.clients.remove(&c.connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        let now = Instant::now();
        let over: Vec<(ConnectionId, PeerId)> = self
            .unpaired
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (connection, peer) in over {
            self.unpaired.remove(&connection);
            if !self.is_trusted(&peer) {
                tracing::debug!(%peer, "closing a connection that did not pair in time");
                self.to_close
                    .push_back((peer, CloseConnection::One(connection)));
            }
        }
        if let Some((peer_id, connection)) = self.to_close.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection,
            });
        }
        match self.unpaired.values().map(|(_, d)| *d).min() {
            Some(next) => {
                let next = tokio::time::Instant::from_std(next);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
                if timer.deadline() != next {
                    timer.as_mut().reset(next);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            None => self.timer = None,
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A behaviour that runs only on connections to roster devices (see the module docs): other
/// connections get a handler that offers nothing, and the inner behaviour never hears of them.
pub struct TrustedOnly<B> {
    inner: B,
    trusted: Trusted,
    /// Connections the inner behaviour does not run on.
    shut_out: HashSet<ConnectionId>,
}

impl<B> TrustedOnly<B> {
    pub fn new(inner: B, trusted: Trusted) -> TrustedOnly<B> {
        TrustedOnly {
            inner,
            trusted,
            shut_out: HashSet::new(),
        }
    }
}

impl<B> std::ops::Deref for TrustedOnly<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for TrustedOnly<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for TrustedOnly<B> {
    type ConnectionHandler = Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.trusted.contains(&peer) {
            self.shut_out.insert(connection);
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(connection, peer, local, remote)
            .map(Either::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(connection, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if !self.trusted.contains(&peer) {
            self.shut_out.insert(connection);
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(connection, peer, addr, role, port_use)
            .map(Either::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(c) if self.shut_out.contains(&c.connection_id) => {}
            FromSwarm::AddressChange(c) if self.shut_out.contains(&c.connection_id) => {}
            FromSwarm::ConnectionClosed(c) if self.shut_out.remove(&c.connection_id) => {}
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(event) => self
                .inner
                .on_connection_handler_event(peer, connection, event),
            Either::Right(never) => match never {},
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(Either::Left))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::future::poll_fn;

    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr() -> Multiaddr {
        "/ip4/127.0.0.1/tcp/1".parse().unwrap()
    }

    fn inbound(gate: &mut Gate, n: usize, peer: PeerId) -> bool {
        gate.handle_established_inbound_connection(
            ConnectionId::new_unchecked(n),
            peer,
            &addr(),
            &addr(),
        )
        .is_ok()
    }

    fn outbound(gate: &mut Gate, n: usize, peer: PeerId) -> bool {
        gate.handle_pending_outbound_connection(
            ConnectionId::new_unchecked(n),
            Some(peer),
            &[],
            Endpoint::Dialer,
        )
        .is_ok()
            && gate
                .handle_established_outbound_connection(
                    ConnectionId::new_unchecked(n),
                    peer,
                    &addr(),
                    Endpoint::Dialer,
                    PortUse::New,
                )
                .is_ok()
    }

    #[test]
    fn only_roster_devices_connect_while_no_invitation_is_open() {
        let mut gate = Gate::new(Trusted::default());
        let (friend, stranger) = (peer(), peer());
        gate.allow_peer(friend);
        assert!(inbound(&mut gate, 1, friend));
        assert!(outbound(&mut gate, 2, friend));
        assert!(!inbound(&mut gate, 3, stranger));
        assert!(!outbound(&mut gate, 4, stranger));
        // A window that has ended admits nobody new.
        gate.open_window(Some(Instant::now() - Duration::from_secs(1)));
        assert!(!inbound(&mut gate, 5, stranger));
        gate.disallow_peer(friend);
        assert!(!inbound(&mut gate, 6, friend));
    }

    #[test]
    fn a_removed_device_is_refused_even_while_an_invitation_is_open() {
        let mut gate = Gate::new(Trusted::default());
        let (removed, stranger) = (peer(), peer());
        gate.set_removed([removed].into_iter().collect());
        gate.open_window(Some(Instant::now() + Duration::from_secs(60)));
        assert!(!inbound(&mut gate, 1, removed));
        assert!(inbound(&mut gate, 2, stranger));
        gate.begin_join(removed);
        assert!(!outbound(&mut gate, 3, removed));
    }

    #[test]
    fn a_suspended_device_is_refused_both_ways_until_its_suspension_ends() {
        let mut gate = Gate::new(Trusted::default());
        let (friend, other) = (peer(), peer());
        gate.allow_peer(friend);
        gate.allow_peer(other);
        gate.suspend(friend, Instant::now() + Duration::from_secs(60));
        assert!(matches!(
            gate.to_close.front(),
            Some((p, CloseConnection::All)) if *p == friend
        ));
        assert!(!inbound(&mut gate, 1, friend));
        assert!(!outbound(&mut gate, 2, friend));
        assert!(inbound(&mut gate, 3, other));
        // Over: it is a roster device like before.
        gate.suspend(friend, Instant::now() - Duration::from_millis(1));
        assert!(inbound(&mut gate, 4, friend));
        assert!(outbound(&mut gate, 5, friend));
    }

    #[test]
    fn an_open_invitation_admits_a_few_devices_that_are_not_paired() {
        let mut gate = Gate::new(Trusted::default());
        gate.open_window(Some(Instant::now() + Duration::from_secs(60)));
        for n in 0..MAX_UNPAIRED {
            assert!(inbound(&mut gate, n, peer()), "stranger {n} refused");
        }
        assert!(!inbound(&mut gate, 100, peer()));
        // It never dials them, and a roster device still gets in.
        assert!(!outbound(&mut gate, 101, peer()));
        let friend = peer();
        gate.allow_peer(friend);
        assert!(inbound(&mut gate, 102, friend));
    }

    #[test]
    fn a_joiner_admits_only_its_inviter() {
        let mut gate = Gate::new(Trusted::default());
        let inviter = peer();
        gate.begin_join(inviter);
        assert!(outbound(&mut gate, 1, inviter));
        assert!(!outbound(&mut gate, 2, peer()));
        gate.end_join(&inviter);
        assert!(!outbound(&mut gate, 3, inviter));
    }

    #[test]
    fn relays_are_dialled_but_never_admitted_inbound_and_their_number_is_bounded() {
        let mut gate = Gate::new(Trusted::default());
        let relay = peer();
        assert!(!outbound(&mut gate, 1, relay));
        assert!(gate.allow_relay(relay));
        assert!(outbound(&mut gate, 2, relay));
        // A relay does not dial this device, and is not trusted for sync.
        assert!(!inbound(&mut gate, 3, relay));
        assert!(!gate.is_trusted(&relay));
        for _ in 1..MAX_RELAYS {
            assert!(gate.allow_relay(peer()));
        }
        assert!(!gate.allow_relay(peer()));
        assert!(gate.allow_relay(relay), "one already allowed stays allowed");
    }

    #[test]
    fn a_relay_admits_a_bounded_number_of_strangers_directly_only() {
        let mut gate = Gate::new(Trusted::default());
        assert!(!inbound(&mut gate, 1, peer()));
        gate.serve_relay(2);
        assert!(inbound(&mut gate, 2, peer()));
        let relayed: Multiaddr = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEvAfV87EuuHwweiPtEs6xdfvGkNJertKqSFytK2ZcTiJ/p2p-circuit"
            .parse()
            .unwrap();
        assert!(
            gate.handle_established_inbound_connection(
                ConnectionId::new_unchecked(3),
                peer(),
                &relayed,
                &addr(),
            )
            .is_err(),
            "a stranger through another relay is not a relay client"
        );
        assert!(inbound(&mut gate, 4, peer()));
        assert!(!inbound(&mut gate, 5, peer()), "over the cap");
        // A roster device is never counted against the cap.
        let friend = peer();
        gate.allow_peer(friend);
        assert!(inbound(&mut gate, 6, friend));
        assert_eq!(gate.relay_clients(), 2);
        // Strangers are still never dialled.
        assert!(!outbound(&mut gate, 7, peer()));
    }

    #[tokio::test]
    async fn a_connection_that_does_not_pair_is_closed_in_time() {
        let mut gate = Gate::new(Trusted::default());
        gate.lifetime = Duration::from_millis(100);
        gate.open_window(Some(Instant::now() + Duration::from_secs(3600)));
        let (stranger, friend) = (peer(), peer());
        assert!(inbound(&mut gate, 7, stranger));
        assert!(inbound(&mut gate, 8, friend));
        assert!(poll_fn(|cx| Poll::Ready(gate.poll(cx).is_pending())).await);
        // One that pairs meanwhile stays.
        gate.allow_peer(friend);
        // The gate wakes itself when the time is up.
        let closed = tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| gate.poll(cx)))
            .await
            .expect("the gate never closed the connection");
        match closed {
            ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(c),
            } => {
                assert_eq!(peer_id, stranger);
                assert_eq!(c, ConnectionId::new_unchecked(7));
            }
            _ => panic!("expected the stranger's connection to be closed"),
        }
        assert!(gate.unpaired.is_empty());
        assert!(poll_fn(|cx| Poll::Ready(gate.poll(cx).is_pending())).await);
    }
}
