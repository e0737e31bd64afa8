//! The sync protocol's messages (CBOR over request-response, `/chatsync/sync/3`), their limits,
//! and how a summary is cut to fit on the wire. docs/protocol.md describes the conversation
//! they make up.
//!
//! On connect each device sends the other a [`SyncRequest::Summary`] of its chats' heads. For a
//! chat both have but with different heads, the device with the smaller id runs Automerge's
//! sync protocol ([`SyncRequest::Sync`] rounds) until both sides are quiet; a chat one side
//! lacks is fetched whole ([`SyncRequest::Fetch`]). After a local change, the device that made
//! it runs sync rounds for that chat with every connected device.
//!
//! Rosters travel whole ([`SyncRequest::Roster`]) first on every connection and whenever one
//! changes, so that devices added or removed anywhere are known everywhere.
//!
//! Large payloads are announced and pulled, so that no single message on the wire is large and
//! nothing has a size limit below [`MAX_TRANSFER_BYTES`]: a response whose payload is over
//! [`PART_BYTES`] carries [`Payload::Parts`] instead, and the receiver pulls the parts one by one
//! with [`SyncRequest::Part`]. Requests never carry large payloads: a device whose next sync
//! message is too large for a request sends [`SyncRequest::Pull`] instead, asking the other
//! device to run the session from its side, where the large message becomes a response.

use serde::{Deserialize, Serialize};

use crate::ChatId;

/// Payloads up to this size travel inline; larger ones are split into parts of this size.
pub const PART_BYTES: usize = 1024 * 1024;
/// Largest payload (sync message or whole chat) a device sends or accepts, in parts.
pub const MAX_TRANSFER_BYTES: usize = 256 * 1024 * 1024;
/// Chats listed in one summary at most (the most recently active first); about 110 bytes each.
pub const MAX_SUMMARY_CHATS: usize = 50_000;
/// Heads listed per chat in a summary at most (a chat normally has one or two).
pub const MAX_SUMMARY_HEADS: usize = 32;
/// A summary's encoded size at most: what fits under [`MAX_WIRE_BYTES`] with room for the
/// request's own framing. 50,000 chats with two heads each would not fit; the most recently
/// active that do are listed.
pub const MAX_SUMMARY_BYTES: usize = MAX_WIRE_BYTES as usize - 64 * 1024;
/// Largest request or response on the wire: a full summary, or one part plus framing.
pub const MAX_WIRE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatHeads {
    pub chat: String,
    pub heads: Vec<String>,
}

/// Bytes carried by a response: inline, or announced for pulling part by part.
#[derive(Clone, Serialize, Deserialize)]
pub enum Payload {
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Pull with [`SyncRequest::Part`] until `len` bytes have arrived.
    Parts {
        transfer: u64,
        len: u64,
    },
}

impl Payload {
    /// Bytes this payload occupies on the wire, without framing.
    pub fn wire_len(&self) -> usize {
        match self {
            Payload::Inline(bytes) => bytes.len(),
            Payload::Parts { .. } => 16,
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
            Payload::Parts { transfer, len } => write!(f, "Parts(#{transfer}, {len} bytes)"),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Every chat the sender has, with its heads; answered with the receiver's own.
    Summary(Vec<ChatHeads>),
    /// One round of Automerge's sync protocol for one chat (at most [`PART_BYTES`]).
    Sync {
        chat: String,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// The whole document of a chat the sender does not have.
    Fetch { chat: String },
    /// The sender has more about this chat than fits a request: the receiver should run a sync
    /// session for it from its side. Answered with [`SyncResponse::Sync`] and no message.
    Pull { chat: String },
    /// One part of an announced payload, starting at `offset`.
    Part { transfer: u64, offset: u64 },
    /// The sender's whole roster (small: a few hundred bytes per device); answered with the
    /// receiver's, merged.
    Roster(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Proof that a device equivocated in this chat (`crate::equivocation::Evidence`), sent
    /// when the receiver's changes clash with it; answered with [`SyncResponse::Sync`] and no
    /// message once taken.
    Evidence {
        chat: String,
        #[serde(with = "serde_bytes")]
        evidence: Vec<u8>,
    },
}

impl std::fmt::Debug for SyncRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncRequest::Summary(chats) => write!(f, "Summary({} chats)", chats.len()),
            SyncRequest::Sync { chat, message } => {
                write!(f, "Sync({chat}, {} bytes)", message.len())
            }
            SyncRequest::Fetch { chat } => write!(f, "Fetch({chat})"),
            SyncRequest::Pull { chat } => write!(f, "Pull({chat})"),
            SyncRequest::Part { transfer, offset } => write!(f, "Part(#{transfer} @{offset})"),
            SyncRequest::Roster(bytes) => write!(f, "Roster({} bytes)", bytes.len()),
            SyncRequest::Evidence { chat, evidence } => {
                write!(f, "Evidence({chat}, {} bytes)", evidence.len())
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncResponse {
    Summary(Vec<ChatHeads>),
    /// The receiver's next sync message, or `None` when it has nothing more to say.
    Sync {
        message: Option<Payload>,
    },
    Document {
        payload: Payload,
    },
    /// One part of an announced payload (at most [`PART_BYTES`]).
    Part {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The receiver's roster, after merging the sender's.
    Roster(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The receiver does not have that chat or transfer (after a `Sync`, it will fetch it).
    Unknown,
    /// The request was refused; the reason is for logs.
    Refused(String),
    /// The receiver is over its request rate and did not read the request: the sender pauses
    /// (`core::SLOW_DOWN_PAUSE`), then asks again. Ignoring it is misconduct.
    SlowDown,
}

impl SyncRequest {
    /// Payload bytes this request carries, for traffic counts.
    pub fn wire_len(&self) -> usize {
        match self {
            SyncRequest::Summary(chats) => summary_len(chats),
            SyncRequest::Sync { chat, message } => chat.len() + message.len(),
            SyncRequest::Fetch { chat } | SyncRequest::Pull { chat } => chat.len(),
            SyncRequest::Part { .. } => 16,
            SyncRequest::Roster(bytes) => bytes.len(),
            SyncRequest::Evidence { chat, evidence } => chat.len() + evidence.len(),
        }
    }
}

impl SyncResponse {
    /// Payload bytes this response carries, for traffic counts.
    pub fn wire_len(&self) -> usize {
        match self {
            SyncResponse::Summary(chats) => summary_len(chats),
            SyncResponse::Sync { message } => message.as_ref().map_or(0, Payload::wire_len),
            SyncResponse::Document { payload } => payload.wire_len(),
            SyncResponse::Part { bytes } | SyncResponse::Roster(bytes) => bytes.len(),
            SyncResponse::Unknown | SyncResponse::SlowDown => 0,
            SyncResponse::Refused(why) => why.len(),
        }
    }
}

fn summary_len(chats: &[ChatHeads]) -> usize {
    chats
        .iter()
        .map(|c| c.chat.len() + c.heads.iter().map(String::len).sum::<usize>())
        .sum()
}

/// A summary as it goes on the wire: the most recently active chats first, as many as fit in
/// [`MAX_SUMMARY_BYTES`] (a summary cut by the codec's size limit would never decode, and the
/// two devices would never compare their chats again).
pub fn summary_to_wire(summary: &[(ChatId, Vec<String>)]) -> Vec<ChatHeads> {
    let mut budget = MAX_SUMMARY_BYTES;
    let mut out = Vec::with_capacity(summary.len());
    for (chat, heads) in summary {
        let heads = listed_heads(heads);
        let cost = summary_entry_bytes(chat.as_str(), &heads);
        if cost > budget {
            break;
        }
        budget -= cost;
        out.push(ChatHeads {
            chat: chat.to_string(),
            heads,
        });
    }
    out
}

/// The heads a summary lists for a chat: the [`MAX_SUMMARY_HEADS`] smallest, so that two devices
/// with the same heads list the same ones.
fn listed_heads(heads: &[String]) -> Vec<String> {
    let mut heads = heads.to_vec();
    heads.sort_unstable();
    heads.truncate(MAX_SUMMARY_HEADS);
    heads
}

/// Whether a chat with heads `ours` (all of them) may be in sync with a device whose summary
/// listed `theirs` for it. A chat with more heads than a summary lists (many devices wrote at
/// once, and none since) is compared by the heads listed: otherwise it would always look apart.
pub fn summary_matches(ours: &[String], theirs: &[String]) -> bool {
    let ours = listed_heads(ours);
    let mut theirs = theirs.to_vec();
    theirs.sort_unstable();
    ours == theirs
}

/// An upper bound of one summary entry's CBOR size: a two-entry map, its keys, the chat id, and
/// each head (64 hex characters) with its string header.
fn summary_entry_bytes(chat: &str, heads: &[String]) -> usize {
    16 + chat.len() + heads.iter().map(|h| h.len() + 3).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:064x}")).collect()
    }

    #[test]
    fn a_chat_with_more_heads_than_a_summary_lists_still_matches_itself() {
        let mut all = heads(MAX_SUMMARY_HEADS + 8);
        all.reverse();
        let chat = ChatId::new("c").unwrap_or_else(|_| unreachable!());
        let wire = summary_to_wire(&[(chat, all.clone())]);
        assert_eq!(wire[0].heads.len(), MAX_SUMMARY_HEADS);
        assert!(summary_matches(&all, &wire[0].heads));
        // A head among those listed that the other lacks: apart.
        let mut other = all.clone();
        other.retain(|h| *h != format!("{:064x}", 0));
        assert!(!summary_matches(&other, &wire[0].heads));
        assert!(!summary_matches(&heads(2), &heads(3)));
        assert!(summary_matches(&heads(2), &heads(2)));
    }
}
