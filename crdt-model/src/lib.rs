//! The chatsync chat document: one Automerge document per chat, and the rules that apply to it.
//!
//! This crate is pure data and logic. It does no IO (no clock, no randomness, no network, no
//! disk): callers pass in the current time and fresh ids. That keeps every rule here testable
//! with property tests that simulate many replicas merging in arbitrary orders.
//!
//! Map of the crate:
//! - [`ids`]: validated identifiers for chats, messages and devices.
//! - [`clock`]: the hybrid logical clock that gives messages a causal display order.
//! - [`schema`]: the field names of the document, in one place.
//! - [`message`]: the read-only view of one message.
//! - [`attachment`]: what a message says about its files (hash, size, name, type); their bytes
//!   live outside the document.
//! - [`chat`]: [`ChatDoc`], the document plus an in-memory display-order index.
//! - [`layout`]: where a chat keeps its messages' entries (one map, or 64 buckets).
//! - `touched`: what received changes did to each message ([`Touched`]), read off their
//!   operations.
//! - [`authorship`]: which device wrote a change, and the signatures that prove it.
//! - [`equivocation`]: what replicas keep of a chat once a device signed two changes as one,
//!   and the evidence that makes them agree.
//! - [`exchange`]: one step of a sync conversation about a chat (sealed messages out, checked
//!   messages in), the same in the daemon and in the simulator.
//! - [`proofs`]: one replica's attestations for one chat, and outgoing sync messages made
//!   provable on their own.
//! - [`roster`]: [`RosterDoc`], the replicated list of the devices that may sync.
//! - [`sync`]: the sync protocol between devices as a state machine (summaries, sessions,
//!   fetches, transfers, timers), driven by the daemon's network task and by the simulator.
//! - [`limits`]: size limits every replica enforces on what it writes and what it shows.
//! - [`wire_check`]: checks on bytes from peers (sync messages, documents) before Automerge
//!   parses them.
//!
//! Why the document looks the way it does:
//! - Messages live in maps keyed by message id, not a list: list positions would not give a
//!   meaningful order. Automerge's cost of applying a write to a map grows with the map, so
//!   chats of schema 3 spread their messages over 64 bucket maps by a hash of the id.
//! - Display order comes from the hybrid logical clock stamped on each message, ties broken by
//!   author device id and then message id. Every replica with the same changes computes the same
//!   order, and a message always sorts after every message its author had seen when writing it
//!   (so a reply never sorts before what it answers), however wrong the device clocks are.
//! - Containers that several devices write into (`messages` and its buckets, `read`) are
//!   created exactly once, in the genesis change, and reactions are flat keys of the message
//!   (`reaction:<device>`), not a nested map: two devices creating "the same" container
//!   concurrently would otherwise hide each other's entries.

pub mod attachment;
pub mod authorship;
pub mod chat;
pub mod clock;
pub mod equivocation;
pub mod exchange;
pub mod ids;
pub mod layout;
pub mod limits;
pub mod message;
pub mod proofs;
pub mod roster;
pub mod schema;
pub mod sync;
pub mod wire_check;

mod access;
mod error;
pub mod header;
mod touched;

pub use attachment::{Attachment, BlobHash};
pub use chat::{ChatDoc, ChatInfo, Device, Excluded, Snapshot, SyncReceived};
pub use clock::Clock;
pub use error::ModelError;
pub use ids::{ChatId, DeviceId, MessageId};
pub use message::Message;
pub use roster::{RosterDoc, RosterEntry};
pub use touched::{TouchKind, Touched};
