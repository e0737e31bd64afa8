//! What the network remembers between runs, so that devices find each other again after a
//! restart without mDNS (devices apart, or a network without multicast) and without anyone
//! typing an address.
//!
//! - **Where each roster device was reached**: the addresses of outbound connections that
//!   worked, a pairing ticket's addresses, and relayed addresses a device announced; most recent
//!   first, at most [`MAX_REACHED`] per device, forgotten when the device leaves the roster. On
//!   start they go into the peer book like configured addresses.
//! - **The ports this device listened on**, when the configuration leaves the choice to the
//!   system (port 0, the default): the next start asks for the same ports, so that the
//!   addresses other devices remember still reach it. If a port is taken by then, the system
//!   chooses again.
//!
//! Written when something changes, without a flush of its own: this is a head start, not an
//! acknowledged write, and the next group commit or a clean shutdown makes it durable.

use std::{collections::HashMap, str::FromStr};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

use crate::store::{ListenPorts, Store};

/// Addresses remembered per device at most.
pub const MAX_REACHED: usize = 8;
/// Longest address remembered (anything longer is not one this device would dial).
const MAX_ADDRESS_BYTES: usize = 512;

/// Where roster devices were reached, as last written to the store.
#[derive(Default)]
pub struct Remembered {
    reached: HashMap<PeerId, Vec<Multiaddr>>,
    ports: ListenPorts,
}

impl Remembered {
    /// What the store holds.
    pub fn load(store: &Store) -> Remembered {
        let mut remembered = Remembered {
            ports: store.listen_ports().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the remembered listen ports");
                ListenPorts::default()
            }),
            ..Remembered::default()
        };
        let stored = store.reached_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read remembered addresses");
            Vec::new()
        });
        for (device, addresses) in stored {
            let Ok(peer) = PeerId::from_str(&device) else {
                continue;
            };
            let addresses: Vec<Multiaddr> = addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .take(MAX_REACHED)
                .collect();
            remembered.reached.insert(peer, addresses);
        }
        remembered
    }

    /// The addresses to listen on: each configured one, with the port it got last time when the
    /// configuration says 0. The first of each pair is tried first.
    pub fn listen_addresses(&self, configured: &Multiaddr) -> Vec<Multiaddr> {
        let mut with_port = Vec::new();
        let mut replaced = false;
        for protocol in configured.iter() {
            match protocol {
                Protocol::Tcp(0) if !is_quic(configured) => match self.ports.tcp {
                    Some(port) => {
                        with_port.push(Protocol::Tcp(port));
                        replaced = true;
                    }
                    None => with_port.push(protocol),
                },
                Protocol::Udp(0) if is_quic(configured) => match self.ports.quic {
                    Some(port) => {
                        with_port.push(Protocol::Udp(port));
                        replaced = true;
                    }
                    None => with_port.push(protocol),
                },
                other => with_port.push(other),
            }
        }
        if replaced {
            vec![with_port.into_iter().collect(), configured.clone()]
        } else {
            vec![configured.clone()]
        }
    }

    /// Notes the port a listener got; returns the ports to store if they changed.
    pub fn listening_on(&mut self, address: &Multiaddr) -> Option<ListenPorts> {
        let mut ports = self.ports.clone();
        let mut iter = address.iter();
        match (iter.next(), iter.next(), iter.next()) {
            (Some(Protocol::Ip4(_) | Protocol::Ip6(_)), Some(Protocol::Tcp(port)), None) => {
                ports.tcp = Some(port);
            }
            (
                Some(Protocol::Ip4(_) | Protocol::Ip6(_)),
                Some(Protocol::Udp(port)),
                Some(Protocol::QuicV1),
            ) => {
                ports.quic = Some(port);
            }
            _ => return None,
        }
        (ports != self.ports).then(|| {
            self.ports = ports.clone();
            ports
        })
    }

    /// Remembered addresses of `peer`.
    pub fn reached(&self, peer: &PeerId) -> &[Multiaddr] {
        self.reached.get(peer).map_or(&[], Vec::as_slice)
    }

    /// Puts `address` first among `peer`'s; returns the new list if it changed.
    pub fn reached_at(&mut self, peer: PeerId, address: Multiaddr) -> Option<Vec<Multiaddr>> {
        if address.len() > MAX_ADDRESS_BYTES {
            return None;
        }
        let list = self.reached.entry(peer).or_default();
        if list.first() == Some(&address) {
            return None;
        }
        list.retain(|a| a != &address);
        list.insert(0, address);
        list.truncate(MAX_REACHED);
        Some(list.clone())
    }

    /// Devices with remembered addresses.
    pub fn devices(&self) -> Vec<PeerId> {
        self.reached.keys().copied().collect()
    }

    /// Forgets `peer`; true if anything was remembered.
    pub fn forget(&mut self, peer: &PeerId) -> bool {
        self.reached.remove(peer).is_some()
    }
}

fn is_quic(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// The same, written through to the store at once (a failure is logged: what is remembered only
/// saves time at the next start).
impl Remembered {
    /// Remembers that `peer` (a roster device) was reached at `address`.
    pub fn save_reached(&mut self, store: &Store, peer: PeerId, address: Multiaddr) {
        if let Some(list) = self.reached_at(peer, address) {
            let list: Vec<String> = list.iter().map(ToString::to_string).collect();
            if let Err(e) = store.put_reached_addresses(&peer.to_base58(), &list) {
                tracing::warn!(%peer, error = %e, "cannot remember where a device was reached");
            }
        }
    }

    /// Forgets where `peer` was reached (it left the roster).
    pub fn save_forgotten(&mut self, store: &Store, peer: &PeerId) {
        if self.forget(peer)
            && let Err(e) = store.forget_reached_addresses(&peer.to_base58())
        {
            tracing::warn!(%peer, error = %e, "cannot forget a removed device's addresses");
        }
    }

    /// Notes the port a new listener got, for the next start.
    pub fn save_listening(&mut self, store: &Store, address: &Multiaddr) {
        if let Some(ports) = self.listening_on(address)
            && let Err(e) = store.put_listen_ports(&ports)
        {
            tracing::warn!(error = %e, "cannot remember the listen ports");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_port_chosen_by_the_system_is_asked_for_again() {
        let mut r = Remembered::default();
        let tcp = addr("/ip4/0.0.0.0/tcp/0");
        let quic = addr("/ip4/0.0.0.0/udp/0/quic-v1");
        assert_eq!(r.listen_addresses(&tcp), vec![tcp.clone()]);
        let got = r.listening_on(&addr("/ip4/192.0.2.1/tcp/4711")).unwrap();
        assert_eq!(got.tcp, Some(4711));
        assert_eq!(r.listening_on(&addr("/ip4/127.0.0.1/tcp/4711")), None);
        r.listening_on(&addr("/ip4/192.0.2.1/udp/4712/quic-v1"))
            .unwrap();
        assert_eq!(
            r.listen_addresses(&tcp),
            vec![addr("/ip4/0.0.0.0/tcp/4711"), tcp.clone()]
        );
        assert_eq!(
            r.listen_addresses(&quic),
            vec![addr("/ip4/0.0.0.0/udp/4712/quic-v1"), quic.clone()]
        );
        // A port the configuration names is left alone; relayed listeners are not ports.
        let fixed = addr("/ip4/0.0.0.0/tcp/4100");
        assert_eq!(r.listen_addresses(&fixed), vec![fixed.clone()]);
        let relayed = addr(
            "/ip4/192.0.2.9/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        assert_eq!(r.listening_on(&relayed), None);
    }

    #[test]
    fn reached_addresses_are_most_recent_first_and_bounded() {
        let mut r = Remembered::default();
        let peer = PeerId::random();
        for port in 1..=20u16 {
            assert!(
                r.reached_at(peer, addr(&format!("/ip4/192.0.2.1/tcp/{port}")))
                    .is_some()
            );
        }
        assert_eq!(r.reached(&peer).len(), MAX_REACHED);
        assert_eq!(r.reached(&peer)[0], addr("/ip4/192.0.2.1/tcp/20"));
        // Reached again at an older one: it moves first, nothing is lost twice.
        let again = addr("/ip4/192.0.2.1/tcp/15");
        let list = r.reached_at(peer, again.clone()).unwrap();
        assert_eq!(list[0], again);
        assert_eq!(list.len(), MAX_REACHED);
        assert_eq!(r.reached_at(peer, again), None);
        assert!(r.forget(&peer));
        assert!(r.reached(&peer).is_empty());
    }

    #[test]
    fn what_is_stored_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let peer = PeerId::random();
        store
            .put_reached_addresses(&peer.to_base58(), &["/ip4/192.0.2.1/tcp/9".to_string()])
            .unwrap();
        store
            .put_listen_ports(&ListenPorts {
                tcp: Some(5),
                quic: None,
            })
            .unwrap();
        // Garbage under another device is skipped, not fatal.
        store
            .put_reached_addresses("not a device", &["nonsense".to_string()])
            .unwrap();
        let r = Remembered::load(&store);
        assert_eq!(r.reached(&peer), &[addr("/ip4/192.0.2.1/tcp/9")]);
        assert_eq!(r.ports.tcp, Some(5));
    }
}
