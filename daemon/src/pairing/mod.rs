//! Pairing a new device with one already in the mesh, by a one-time ticket (`chatsync pair`
//! on the inviter, `chatsync join TICKET` on the new device).
//!
//! This module is the part without IO, tested here: the ticket's text and binary forms
//! ([`ticket`]), the proof of holding the ticket's secret and the invite id ([`proof`]), and
//! the inviter's book of open invitations ([`invites`]). The network side (the connection gate
//! and the `/chatsync/pair/1` protocol) is in `net/gate.rs` and `net/pairing.rs`.

pub mod invites;
pub mod proof;
pub mod ticket;

/// Now, in Unix seconds (tickets carry their expiry in the inviter's wall clock).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
