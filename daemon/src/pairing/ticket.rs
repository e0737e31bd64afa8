//! The pairing ticket: what `chatsync pair` shows (as a QR code and as text) and
//! `chatsync join` takes.
//!
//! Text form: `cspair1_` (a kind prefix, the format version, `_`) followed by lowercase base32
//! (RFC 4648, no padding) of the binary form:
//!
//! ```text
//! version u8 (= 1)
//! inviter device id: length u8 (<= 64), bytes (a libp2p peer id)
//! secret: 32 bytes
//! expiry: u64 big endian, Unix seconds
//! addresses: count u8 (<= 8), each length u8 (<= 64) + multiaddr bytes
//! checksum: the first 4 bytes of SHA-256 of everything above
//! ```
//!
//! Why this shape: the prefix says what the text is (a chatsync pairing ticket, not a device id
//! or a chat id) and the version lets the format evolve without old devices misreading new
//! tickets; base32 survives being typed, pasted into chats and scanned. The checksum catches a
//! mangled copy early with a clear message. It is not a signature: the secret is the
//! authentication, and a ticket someone edited names a secret the inviter never issued.
//!
//! Tickets are untrusted input: parsing checks every length against a bound before reading,
//! never allocates more than [`MAX_TICKET_CHARS`] allows, and never panics.

use data_encoding::BASE32_NOPAD;
use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use sha2::{Digest, Sha256};

/// The kind prefix of the text form (before the version).
pub const KIND: &str = "cspair";
/// The binary and text format version this device writes and reads.
pub const VERSION: u8 = 1;
/// Longest ticket text accepted (a version 1 ticket is at most about 1,050 characters).
pub const MAX_TICKET_CHARS: usize = 2048;
/// Addresses carried at most.
pub const MAX_ADDRESSES: usize = 8;
/// Longest address carried, in bytes of its binary form.
pub const MAX_ADDRESS_BYTES: usize = 64;
/// Longest device id (peer id bytes) accepted.
const MAX_PEER_ID_BYTES: usize = 64;
pub const SECRET_BYTES: usize = 32;
const CHECKSUM_BYTES: usize = 4;

/// A decoded pairing ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The inviting device (its key: the connection to it is authenticated against this).
    pub inviter: PeerId,
    /// Proves the holder was given the ticket; never sent over the network.
    pub secret: [u8; SECRET_BYTES],
    /// When the invitation ends (Unix seconds, the inviter's clock).
    pub expires_at: u64,
    /// Where the inviter listens, most useful first.
    pub addresses: Vec<Multiaddr>,
}

impl std::fmt::Debug for Ticket {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("inviter", &self.inviter)
            .field("expires_at", &self.expires_at)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not a chatsync pairing ticket (they start with \"{KIND}{VERSION}_\")")]
    NotATicket,
    #[error("the ticket is from a newer version of chatsync (format {0}); update this device")]
    NewerVersion(u32),
    #[error("the ticket is damaged ({0}); copy it again, whole")]
    Damaged(&'static str),
}

impl Ticket {
    /// The ticket's text form.
    pub fn to_text(&self) -> String {
        format!(
            "{KIND}{VERSION}_{}",
            BASE32_NOPAD.encode(&self.to_bytes()).to_ascii_lowercase()
        )
    }

    /// Parses a ticket's text (surrounding white space and letter case are ignored, since
    /// QR readers and chat apps change both).
    pub fn from_text(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_CHARS {
            return Err(if text.get(..KIND.len()).is_some_and(is_kind) {
                TicketError::Damaged("too long")
            } else {
                TicketError::NotATicket
            });
        }
        let (head, body) = text.split_once('_').ok_or(TicketError::NotATicket)?;
        let version = head
            .get(..KIND.len())
            .filter(|k| is_kind(k))
            .map(|_| &head[KIND.len()..])
            .ok_or(TicketError::NotATicket)?;
        if version.is_empty() || version.len() > 3 || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TicketError::NotATicket);
        }
        let version: u32 = version.parse().map_err(|_| TicketError::NotATicket)?;
        if version > u32::from(VERSION) {
            return Err(TicketError::NewerVersion(version));
        }
        if version != u32::from(VERSION) {
            return Err(TicketError::Damaged("unknown format version"));
        }
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Damaged("not base32"))?;
        Ticket::from_bytes(&bytes)
    }

    /// The binary form, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        let peer = self.inviter.to_bytes();
        out.push(peer.len() as u8);
        out.extend_from_slice(&peer);
        out.extend_from_slice(&self.secret);
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        let addresses: Vec<Vec<u8>> = self
            .addresses
            .iter()
            .map(|a| a.to_vec())
            .filter(|a| a.len() <= MAX_ADDRESS_BYTES)
            .take(MAX_ADDRESSES)
            .collect();
        out.push(addresses.len() as u8);
        for a in addresses {
            out.push(a.len() as u8);
            out.extend_from_slice(&a);
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses the binary form; every length is checked before it is used.
    pub fn from_bytes(bytes: &[u8]) -> Result<Ticket, TicketError> {
        let body_len = bytes
            .len()
            .checked_sub(CHECKSUM_BYTES)
            .ok_or(TicketError::Damaged("too short"))?;
        let (body, sum) = bytes.split_at(body_len);
        if checksum(body) != sum {
            return Err(TicketError::Damaged("checksum mismatch"));
        }
        let mut r = Reader(body);
        let version = r.u8()?;
        if version > VERSION {
            return Err(TicketError::NewerVersion(u32::from(version)));
        }
        if version != VERSION {
            return Err(TicketError::Damaged("unknown format version"));
        }
        let peer_len = usize::from(r.u8()?);
        if peer_len == 0 || peer_len > MAX_PEER_ID_BYTES {
            return Err(TicketError::Damaged("bad device id length"));
        }
        let inviter = PeerId::from_bytes(r.take(peer_len)?)
            .map_err(|_| TicketError::Damaged("bad device id"))?;
        let mut secret = [0u8; SECRET_BYTES];
        secret.copy_from_slice(r.take(SECRET_BYTES)?);
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(r.take(8)?);
        let expires_at = u64::from_be_bytes(expiry);
        let count = usize::from(r.u8()?);
        if count > MAX_ADDRESSES {
            return Err(TicketError::Damaged("too many addresses"));
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u8()?);
            if len == 0 || len > MAX_ADDRESS_BYTES {
                return Err(TicketError::Damaged("bad address length"));
            }
            let addr = Multiaddr::try_from(r.take(len)?.to_vec())
                .map_err(|_| TicketError::Damaged("bad address"))?;
            if !carried_form(&addr) {
                return Err(TicketError::Damaged("bad address"));
            }
            addresses.push(addr);
        }
        if !r.0.is_empty() {
            return Err(TicketError::Damaged("trailing bytes"));
        }
        Ok(Ticket {
            inviter,
            secret,
            expires_at,
            addresses,
        })
    }

    /// Whether the ticket has expired at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

fn is_kind(s: &str) -> bool {
    s.eq_ignore_ascii_case(KIND)
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = Sha256::digest(body);
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&digest[..CHECKSUM_BYTES]);
    out
}

/// Relayed addresses a ticket carries at most, so that direct ones keep their room.
pub const MAX_RELAYED_ADDRESSES: usize = 4;

/// Whether an address has the form a ticket carries: no device id, except a relay's in a
/// relayed address (`.../p2p/RELAY_ID/p2p-circuit`, the inviter being the ticket's own).
fn carried_form(addr: &Multiaddr) -> bool {
    let parts: Vec<Protocol> = addr.iter().collect();
    let circuits = parts
        .iter()
        .filter(|p| matches!(p, Protocol::P2pCircuit))
        .count();
    let ids = parts
        .iter()
        .filter(|p| matches!(p, Protocol::P2p(_)))
        .count();
    match (circuits, ids) {
        (0, 0) => true,
        (1, 1) => {
            let n = parts.len();
            n >= 3
                && matches!(parts[n - 1], Protocol::P2pCircuit)
                && matches!(parts[n - 2], Protocol::P2p(_))
        }
        _ => false,
    }
}

/// Orders a device's listen addresses for a ticket: usable ones only (no unspecified ones,
/// none too long, no device id but a relay's), direct addresses other devices can reach
/// first, then relayed ones (at most [`MAX_RELAYED_ADDRESSES`]), then loopback ones, at most
/// [`MAX_ADDRESSES`]. Loopback stays in: devices on one machine (and tests) pair too. A
/// relayed listen address ends in this device's own id, which the ticket names already.
pub fn ticket_addresses(listen: &[Multiaddr]) -> Vec<Multiaddr> {
    let usable = listen
        .iter()
        .map(|a| {
            let mut a = a.clone();
            let relayed = a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
            if relayed && matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                a.pop();
            }
            a
        })
        .filter(|a| a.len() <= MAX_ADDRESS_BYTES && carried_form(a))
        .filter(|a| {
            a.iter().all(|p| match p {
                Protocol::Ip4(ip) => !ip.is_unspecified(),
                Protocol::Ip6(ip) => !ip.is_unspecified(),
                _ => true,
            })
        });
    let mut direct = Vec::new();
    let mut relayed = Vec::new();
    let mut loopback = Vec::new();
    for a in usable {
        let list = if a.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            &mut relayed
        } else if is_loopback(&a) {
            &mut loopback
        } else {
            &mut direct
        };
        if !list.contains(&a) {
            list.push(a);
        }
    }
    relayed.truncate(MAX_RELAYED_ADDRESSES);
    direct.truncate(MAX_ADDRESSES - relayed.len());
    let mut out = direct;
    out.append(&mut relayed);
    out.append(&mut loopback);
    out.truncate(MAX_ADDRESSES);
    out
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Damaged("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, TicketError> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn sample() -> Ticket {
        Ticket {
            inviter: libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
            secret: [7; SECRET_BYTES],
            expires_at: 1_900_000_000,
            addresses: vec![
                "/ip4/192.168.1.20/tcp/4001".parse().unwrap(),
                "/ip6/::1/udp/4001/quic-v1".parse().unwrap(),
                "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn text_round_trips_and_has_its_prefix() {
        let t = sample();
        let text = t.to_text();
        assert!(text.starts_with("cspair1_"), "{text}");
        assert!(text.len() < MAX_TICKET_CHARS);
        assert!(
            text[8..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(Ticket::from_text(&text).unwrap(), t);
        // Case and surrounding white space do not matter.
        assert_eq!(
            Ticket::from_text(&format!("  {}\n", text.to_ascii_uppercase())).unwrap(),
            t
        );
    }

    #[test]
    fn the_largest_ticket_fits_the_bound() {
        let mut t = sample();
        t.addresses = (0..20)
            .map(|i| format!("/dns6/{}.example.org/udp/65535/quic-v1", "x".repeat(30 + i)))
            .map(|a| a.parse().unwrap())
            .collect();
        t.addresses
            .retain(|a: &Multiaddr| a.to_vec().len() <= MAX_ADDRESS_BYTES);
        assert!(t.addresses.len() > MAX_ADDRESSES);
        let text = t.to_text();
        assert!(text.len() <= MAX_TICKET_CHARS, "{}", text.len());
        assert_eq!(
            Ticket::from_text(&text).unwrap().addresses.len(),
            MAX_ADDRESSES
        );
    }

    #[test]
    fn every_truncation_is_damaged() {
        let bytes = sample().to_bytes();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Ticket::from_bytes(&bytes[..len]),
                    Err(TicketError::Damaged(_))
                ),
                "a ticket cut to {len} bytes was accepted"
            );
        }
        let text = sample().to_text();
        for len in 9..text.len() {
            assert!(
                matches!(
                    Ticket::from_text(&text[..len]),
                    Err(TicketError::Damaged(_))
                ),
                "a ticket text cut to {len} characters was accepted"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                Ticket::from_bytes(&flipped).is_err(),
                "bit {i} flipped was accepted"
            );
        }
    }

    #[test]
    fn wrong_prefix_and_versions_are_told_apart() {
        let text = sample().to_text();
        let body = &text[8..];
        for other in [
            "",
            "hello",
            "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            &format!("csjoin1_{body}"),
            &format!("cspair_{body}"),
            &format!("cspairx_{body}"),
            body,
        ] {
            assert_eq!(
                Ticket::from_text(other),
                Err(TicketError::NotATicket),
                "{other:?}"
            );
        }
        assert_eq!(
            Ticket::from_text(&format!("cspair2_{body}")),
            Err(TicketError::NewerVersion(2))
        );
        assert!(matches!(
            Ticket::from_text(&format!("cspair0_{body}")),
            Err(TicketError::Damaged(_))
        ));
        // A newer binary form behind a current text prefix (with a valid checksum).
        let mut bytes = sample().to_bytes();
        bytes.truncate(bytes.len() - CHECKSUM_BYTES);
        bytes[0] = 9;
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        assert_eq!(
            Ticket::from_bytes(&bytes),
            Err(TicketError::NewerVersion(9))
        );
        let err = Ticket::from_text("garbage").unwrap_err().to_string();
        assert!(err.contains("not a chatsync pairing ticket"), "{err}");
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains("7, 7"), "{shown}");
    }

    #[test]
    fn addresses_are_ordered_for_tickets() {
        let listen: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/0.0.0.0/tcp/2",
            "/ip4/10.0.0.5/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip4/10.0.0.5/udp/1/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let picked: Vec<String> = ticket_addresses(&listen)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            picked,
            [
                "/ip4/10.0.0.5/tcp/1",
                "/ip4/10.0.0.5/udp/1/quic-v1",
                "/ip4/127.0.0.1/tcp/1",
                "/ip6/::1/tcp/1"
            ]
        );
    }

    #[test]
    fn relayed_addresses_travel_in_tickets_without_the_inviters_id() {
        let relay = "12D3KooWEvAfV87EuuHwweiPtEs6xdfvGkNJertKqSFytK2ZcTiJ";
        let me = sample().inviter;
        let mut listen: Vec<Multiaddr> = (1..=9)
            .map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().unwrap())
            .collect();
        listen.push(
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{me}")
                .parse()
                .unwrap(),
        );
        listen.insert(0, "/ip4/127.0.0.1/tcp/1".parse().unwrap());
        let picked = ticket_addresses(&listen);
        assert_eq!(picked.len(), MAX_ADDRESSES);
        let relayed = format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit");
        assert!(
            picked.iter().any(|a| a.to_string() == relayed),
            "{picked:?}"
        );
        assert!(picked.iter().all(|a| !a.to_string().contains("127.0.0.1")));
        let ticket = Ticket {
            addresses: picked.clone(),
            ..sample()
        };
        assert_eq!(
            Ticket::from_text(&ticket.to_text()).unwrap().addresses,
            picked
        );
        // Any other device id in an address is refused.
        for bad in [
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}"),
            format!("/ip4/192.0.2.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{relay}"),
            "/ip4/192.0.2.1/tcp/4001/p2p-circuit".to_string(),
        ] {
            let bad: Multiaddr = bad.parse().unwrap();
            assert!(!carried_form(&bad), "{bad}");
            if bad.len() > MAX_ADDRESS_BYTES {
                continue;
            }
            let mut bytes = Ticket {
                addresses: vec![bad],
                ..sample()
            }
            .to_bytes();
            bytes.truncate(bytes.len() - CHECKSUM_BYTES);
            let sum = checksum(&bytes);
            bytes.extend_from_slice(&sum);
            assert_eq!(
                Ticket::from_bytes(&bytes),
                Err(TicketError::Damaged("bad address"))
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = Ticket::from_bytes(&bytes);
        }

        #[test]
        fn random_text_never_panics(text in ".{0,300}") {
            let _ = Ticket::from_text(&text);
            let _ = Ticket::from_text(&format!("cspair1_{text}"));
        }

        #[test]
        fn random_base32_never_panics(body in "[a-z2-7]{0,1700}") {
            let _ = Ticket::from_text(&format!("cspair1_{body}"));
        }

        #[test]
        fn tickets_round_trip(
            secret in any::<[u8; SECRET_BYTES]>(),
            expires_at in any::<u64>(),
            ports in proptest::collection::vec(any::<u16>(), 0..12),
        ) {
            let t = Ticket {
                inviter: libp2p::identity::Keypair::generate_ed25519().public().to_peer_id(),
                secret,
                expires_at,
                addresses: ports
                    .iter()
                    .map(|p| format!("/ip4/10.1.2.3/tcp/{p}").parse().unwrap())
                    .collect(),
            };
            let back = Ticket::from_text(&t.to_text()).unwrap();
            prop_assert_eq!(&back.addresses[..], &t.addresses[..t.addresses.len().min(MAX_ADDRESSES)]);
            prop_assert_eq!(back.secret, t.secret);
            prop_assert_eq!(back.expires_at, t.expires_at);
            prop_assert_eq!(back.inviter, t.inviter);
        }
    }
}
