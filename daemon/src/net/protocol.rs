//! The sync protocol on the wire: its libp2p protocol name, and its messages (which live with
//! the sync core in `chatsync_model::sync::wire`; docs/protocol.md describes the conversation).
//!
//! Versions: the protocol name carries the version. `/chatsync/sync/3` added a typed slow-down
//! answer and never counts an unprovable change as an offence; `/chatsync/sync/4` added the
//! evidence of an equivocation (`SyncRequest::Evidence`); `/chatsync/sync/5` carries chats of
//! schema 3 (messages in buckets), which a version 4 device would take for damaged data and
//! count against the sender, and refuses a chat of a newer schema without blame;
//! `/chatsync/sync/6` carries the same messages on one long-lived link each way (`links.rs`)
//! instead of a stream per request. A device of an older version does not speak it, so the two
//! do not sync (their connection, roster and pairing still work) until both are upgraded.

pub use chatsync_model::sync::wire::*;

pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/chatsync/sync/6");
