//! What the network task knows about each device: addresses, live connections, and when to
//! dial it next. Bounded: a few addresses per device, and only devices that are trusted,
//! configured, or connected are kept.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, swarm::ConnectionId};

/// Addresses remembered per device.
const MAX_ADDRESSES: usize = 8;
/// Devices remembered at all (trusted ones are few; this bounds mDNS noise).
pub const MAX_PEERS: usize = 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Connection {
    pub remote: Multiaddr,
    pub outbound: bool,
    pub since_ms: i64,
    /// LAN, direct, or relayed (`relay.rs`).
    pub path: super::relay::Path,
    /// The relay it goes through, when relayed.
    pub relay: Option<PeerId>,
    /// Opened by hole punching (DCUtR) from a relayed connection.
    pub hole_punched: bool,
    /// When it was opened or last answered a ping (see `task.rs`, `close_silent`).
    pub heard_at: std::time::Instant,
}

#[derive(Debug, Default)]
pub struct Peer {
    pub addresses: BTreeSet<Multiaddr>,
    pub connections: HashMap<ConnectionId, Connection>,
    /// The other side accepted us (identify ran on a connection).
    pub accepted: bool,
    pub rtt: Option<Duration>,
    /// Configured with `--peer`/`peers`: always worth redialling.
    pub configured: bool,
    /// Hole punching attempts that failed since this daemon started.
    pub hole_punch_failures: u32,
    backoff: Option<Duration>,
    next_dial: Option<Instant>,
}

impl Peer {
    pub fn add_address(&mut self, addr: Multiaddr) {
        if self.addresses.len() < MAX_ADDRESSES {
            self.addresses.insert(addr);
        }
    }

    pub fn connected(&self) -> bool {
        !self.connections.is_empty()
    }

    /// Whether a dial is due now.
    pub fn dial_due(&self, now: Instant) -> bool {
        !self.connected() && !self.addresses.is_empty() && self.next_dial.is_none_or(|t| now >= t)
    }

    /// Records a dial attempt: the next one waits twice as long (up to a ceiling).
    pub fn dialled(&mut self, now: Instant) {
        let backoff = self
            .backoff
            .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
        self.backoff = Some(backoff);
        self.next_dial = Some(now + backoff);
    }

    /// The device speaks another version of chatsync: dialled again only after `wait` (it may
    /// be upgraded meanwhile), not every few seconds.
    pub fn incompatible(&mut self, now: Instant, wait: Duration) {
        self.backoff = Some(MAX_BACKOFF);
        self.next_dial = Some(now + wait);
    }

    /// The connection works: dial at once next time it drops.
    pub fn reset_backoff(&mut self) {
        self.backoff = None;
        self.next_dial = None;
    }
}

#[derive(Debug, Default)]
pub struct PeerBook {
    pub peers: HashMap<PeerId, Peer>,
}

impl Peer {
    /// The connection `peers` shows: a direct one if there is one (relayed connections are
    /// closed once a direct one is up), else the oldest.
    pub fn best_connection(&self) -> Option<&Connection> {
        self.connections
            .values()
            .min_by_key(|c| (c.path == super::relay::Path::Relayed, c.since_ms))
    }
}

impl PeerBook {
    /// The entry for `peer`, created if there is room.
    pub fn entry(&mut self, peer: PeerId) -> Option<&mut Peer> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            return None;
        }
        Some(self.peers.entry(peer).or_default())
    }
}

/// A connection's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
    Other,
}

/// The transport of a connection, from its address.
pub fn transport(addr: &Multiaddr) -> Transport {
    use libp2p::multiaddr::Protocol;
    if addr
        .iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
    {
        Transport::Quic
    } else if addr.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
        Transport::Tcp
    } else {
        Transport::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut p = Peer::default();
        p.add_address("/ip4/127.0.0.1/tcp/1".parse().unwrap());
        let t0 = Instant::now();
        assert!(p.dial_due(t0));
        p.dialled(t0);
        assert!(!p.dial_due(t0));
        assert!(p.dial_due(t0 + FIRST_BACKOFF));
        for _ in 0..20 {
            p.dialled(t0);
        }
        assert!(!p.dial_due(t0 + MAX_BACKOFF - Duration::from_millis(1)));
        assert!(p.dial_due(t0 + MAX_BACKOFF));
        p.reset_backoff();
        assert!(p.dial_due(t0));
    }

    #[test]
    fn addresses_and_peers_are_bounded() {
        let mut p = Peer::default();
        for port in 0..100u16 {
            p.add_address(format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap());
        }
        assert_eq!(p.addresses.len(), MAX_ADDRESSES);
        let mut book = PeerBook::default();
        for _ in 0..MAX_PEERS {
            assert!(book.entry(PeerId::random()).is_some());
        }
        assert!(book.entry(PeerId::random()).is_none());
    }

    #[test]
    fn transports_are_told_apart() {
        assert_eq!(
            transport(&"/ip4/1.2.3.4/tcp/5".parse().unwrap()),
            Transport::Tcp
        );
        assert_eq!(
            transport(&"/ip4/1.2.3.4/udp/5/quic-v1".parse().unwrap()),
            Transport::Quic
        );
    }
}
