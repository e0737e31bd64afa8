//! Field names of the chat document. Every key the model reads or writes is named here, so the
//! shape of the document can be read in one place:
//!
//! ```text
//! ROOT
//!   schema: int (SCHEMA_VERSION)
//!   id: str, title: str, created_at: int (ms), created_by: str (device id)
//!   messages: map { bucket -> map { message id -> map {
//!       header: str (author, author's name, ts, clock, reply_to: see crate::header),
//!       text: str, edited_at: int (ms, optional), deleted: bool (optional),
//!       attachments: str (optional, written with the post: see crate::attachment),
//!       "reaction:<device id>": str (one key per reacting device) } } }
//!   read: map { device id -> message id }
//! ```
//!
//! A bucket is two lowercase hex digits, the top six bits of the SHA-256 of the message ids it
//! holds; all 64 are created with the chat (see crate::layout).
//!
//! Documents of schemas 1 and 2 keep every message directly in `messages` (message id -> map).
//!
//! Documents of schema 1 held the header's facts in fields of their own: author: str (device
//! id), author_name: str, ts: int (ms, author's wall clock), clock: int (hybrid logical clock,
//! see crate::clock), reply_to: str (optional). Messages written so are still read; a message
//! with a header is read from its header alone.

/// Version of the document layout. A replica refuses documents with a newer version.
pub const SCHEMA_VERSION: i64 = 3;

pub const SCHEMA: &str = "schema";
pub const ID: &str = "id";
pub const TITLE: &str = "title";
pub const CREATED_AT: &str = "created_at";
pub const CREATED_BY: &str = "created_by";
pub const MESSAGES: &str = "messages";
pub const READ: &str = "read";

pub const HEADER: &str = "header";
pub const AUTHOR: &str = "author";
pub const AUTHOR_NAME: &str = "author_name";
pub const TS: &str = "ts";
pub const CLOCK: &str = "clock";
pub const TEXT: &str = "text";
pub const REPLY_TO: &str = "reply_to";
pub const EDITED_AT: &str = "edited_at";
pub const DELETED: &str = "deleted";
pub const ATTACHMENTS: &str = "attachments";
/// Prefix of a message's reaction keys, one per device. Flat keys in the message rather than a
/// nested map: each device writes only its own key, and no container has to be created that two
/// devices could create concurrently (which would hide one device's entries).
pub const REACTION_PREFIX: &str = "reaction:";

/// The key of `device`'s reaction in a message.
pub fn reaction_key(device: &str) -> String {
    format!("{REACTION_PREFIX}{device}")
}
