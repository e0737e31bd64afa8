//! The sync protocol between devices (`/chatsync/sync/1`, CBOR over request-response).
//!
//! On connect each device sends the other a [`SyncRequest::Summary`] of its chats' heads. For a
//! chat both have but with different heads, the device with the smaller id runs Automerge's
//! sync protocol ([`SyncRequest::Sync`] rounds) until both sides are quiet; a chat one side
//! lacks is fetched whole ([`SyncRequest::Fetch`]). After a local change, the device that made
//! it runs sync rounds for that chat with every connected device.

use serde::{Deserialize, Serialize};

use crate::engine::MAX_SYNC_BYTES;

pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/chatsync/sync/1");
/// Largest request or response on the wire: a sync message or document plus framing.
pub const MAX_WIRE_BYTES: u64 = MAX_SYNC_BYTES as u64 + 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatHeads {
    pub chat: String,
    pub heads: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Every chat the sender has, with its heads; answered with the receiver's own.
    Summary(Vec<ChatHeads>),
    /// One round of Automerge's sync protocol for one chat.
    Sync {
        chat: String,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// The whole document of a chat the sender does not have.
    Fetch { chat: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncResponse {
    Summary(Vec<ChatHeads>),
    /// The receiver's next sync message, or `None` when it has nothing more to say.
    Sync {
        #[serde(with = "serde_bytes")]
        message: Option<Vec<u8>>,
    },
    Document {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The receiver does not have that chat (after a `Sync`, it will fetch it).
    Unknown,
    /// The request was refused; the reason is for logs.
    Refused(String),
}
