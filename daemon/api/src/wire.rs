//! The wire format of the local API: every JSON body the daemon reads or writes, each a plain
//! type that serializes to what docs/api.md documents. The daemon converts its own types into
//! these in one place (`chatsync_daemon::api::convert`); nothing else of the daemon goes on the
//! wire.
//!
//! Statuses are enums that serialize to their documented strings, so that both sides of the API
//! name every value the compiler knows of. Each has an `Unknown` variant that a value from a
//! newer daemon decodes to, so that an older client keeps working.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version prefix of every route.
pub const API_PREFIX: &str = "/v1";
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// `StatusJson::store_state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Writes are taken.
    #[default]
    Ok,
    /// The store's disk has less than its reserve free: new writes are refused with
    /// `storage_full`, reads work, and writing resumes by itself once space is freed.
    Full,
    /// A write failed: writes are refused until chatsyncd restarts.
    Failed,
    /// A state this version does not know (from a newer daemon).
    #[serde(other)]
    Unknown,
}

/// How this device stands with the devices it syncs with (`SyncJson::state`, `sync.progress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// No trusted device is connected.
    #[default]
    Offline,
    /// Some connected device has changes this one lacks, or lacks some of this one's.
    Syncing,
    /// Every connected device has exactly this device's changes.
    InSync,
    #[serde(other)]
    Unknown,
}

/// How a connection reaches a device (`PeerJson::path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionPath {
    /// Directly, at a private or link-local address.
    Lan,
    /// Directly, at any other address.
    Direct,
    /// Through a relay.
    Relayed,
    #[serde(other)]
    Unknown,
}

/// A connection's transport (`PeerJson::transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Quic,
    /// Neither (a connection this version cannot name).
    Other,
    #[serde(other)]
    Unknown,
}

/// Who opened a connection (`PeerJson::direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This device dialled.
    Outbound,
    /// The other device dialled.
    Inbound,
    #[serde(other)]
    Unknown,
}

/// A reservation's state on a relay (`ReservationJson::state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Reserved,
    Connecting,
    /// After a failure (see `ReservationJson::error`).
    Retrying,
    #[serde(other)]
    Unknown,
}

/// `as_str` (the value as it appears on the wire) and `Display` for a status enum.
macro_rules! wire_names {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// The value as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_names!(StoreState { Ok => "ok", Full => "full", Failed => "failed", Unknown => "unknown" });
wire_names!(SyncStatus {
    Offline => "offline",
    Syncing => "syncing",
    InSync => "in_sync",
    Unknown => "unknown",
});
wire_names!(ConnectionPath {
    Lan => "lan",
    Direct => "direct",
    Relayed => "relayed",
    Unknown => "unknown",
});
wire_names!(Transport { Tcp => "tcp", Quic => "quic", Other => "other", Unknown => "unknown" });
wire_names!(Direction { Outbound => "outbound", Inbound => "inbound", Unknown => "unknown" });
wire_names!(ReservationState {
    Reserved => "reserved",
    Connecting => "connecting",
    Retrying => "retrying",
    Unknown => "unknown",
});

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusJson {
    pub device_id: String,
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub data_dir: String,
    pub socket: String,
    /// Number of chats on this device.
    pub chats: usize,
    /// Chats currently held in memory.
    pub loaded_chats: usize,
    /// Estimated memory held by loaded chats, in bytes.
    pub loaded_bytes_estimate: u64,
    pub store_bytes: u64,
    /// False after a failed write to the store: writes are refused until a restart.
    pub store_healthy: bool,
    pub store_state: StoreState,
    /// Bytes free on the store's disk (absent if it could not be measured).
    pub store_free_bytes: Option<u64>,
    pub started_at: i64,
    pub uptime_ms: u64,
    /// Addresses other devices can reach this one at.
    pub listen_addrs: Vec<String>,
    /// Trusted devices connected now.
    pub peers_connected: usize,
    /// How this device stands with the devices it syncs with.
    #[serde(default)]
    pub sync: SyncJson,
    /// When another device removed this one from the mesh (ms since the Unix epoch); absent
    /// while it is a member. A removed device no longer syncs with anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_from_mesh_at: Option<i64>,
    /// Reservations this device keeps on relays (`--relay-addr`), so that devices elsewhere
    /// reach it through them.
    #[serde(default)]
    pub reservations: Vec<ReservationJson>,
    /// This daemon's relay server, when it runs in relay mode (`--relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayServerJson>,
    /// Attachments stored here, and their transfers.
    #[serde(default)]
    pub attachments: AttachmentStatsJson,
}

/// A reservation on a relay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReservationJson {
    /// The relay's device id.
    pub relay: String,
    /// The relay's address, as configured.
    pub address: String,
    pub state: ReservationState,
    /// Addresses other devices reach this one at through the relay.
    pub relayed_addrs: Vec<String>,
    /// When the reservation was accepted (ms since the Unix epoch).
    pub since: Option<i64>,
    pub renewals: u64,
    /// The relay's limits per circuit: bytes (both ways) and seconds.
    pub circuit_bytes: Option<u64>,
    pub circuit_secs: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// A relay server's state and limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RelayServerJson {
    /// Devices holding a reservation now.
    pub reservations: usize,
    /// Circuits open now.
    pub circuits: usize,
    /// Connections of devices outside the roster using the relay now.
    pub clients: usize,
    /// Addresses given to devices that reserve.
    pub external_addrs: Vec<String>,
    /// Since the daemon started.
    pub reservations_accepted: u64,
    pub reservations_denied: u64,
    pub circuits_accepted: u64,
    pub circuits_denied: u64,
    pub max_reservations: usize,
    pub max_circuits: usize,
    pub max_circuit_bytes: u64,
    pub max_circuit_secs: u64,
    /// Devices allowed to use the relay; empty means any, within the limits.
    pub allow: Vec<String>,
}

/// Sync state over every connected device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncJson {
    pub state: SyncStatus,
    pub peers_connected: usize,
    pub peers_trusted: usize,
    /// Chats where some connected device has changes this one lacks.
    pub chats_behind: usize,
    /// Chats where some connected device lacks changes this one has.
    pub chats_ahead: usize,
    /// Sync sessions under way.
    pub sessions: usize,
    /// When a sync exchange with any device last completed (ms since the Unix epoch).
    pub last_sync: Option<i64>,
}

/// A trusted or connected device, as the network sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerJson {
    pub device: String,
    /// Its name in the roster.
    pub name: Option<String>,
    pub connected: bool,
    pub addresses: Vec<String>,
    pub transport: Option<Transport>,
    /// How the connection reaches the device.
    #[serde(default)]
    pub path: Option<ConnectionPath>,
    /// The relay's device id, when relayed.
    #[serde(default)]
    pub relay: Option<String>,
    /// The direct connection was opened by hole punching.
    #[serde(default)]
    pub hole_punched: bool,
    /// Live connections to the device.
    #[serde(default)]
    pub connections: usize,
    /// Hole punching attempts (from a relayed connection) that failed since the daemon
    /// started.
    #[serde(default)]
    pub hole_punch_failures: u32,
    pub direction: Option<Direction>,
    pub connected_since: Option<i64>,
    /// Latest ping round trip.
    pub rtt_ms: Option<f64>,
    /// When a sync exchange with it last completed.
    #[serde(default)]
    pub last_sync: Option<i64>,
    /// Chats where it has changes this device lacks (known while connected).
    #[serde(default)]
    pub chats_behind: Option<usize>,
    /// Chats where this device has changes it lacks (known while connected).
    #[serde(default)]
    pub chats_ahead: Option<usize>,
    /// Sync payload bytes sent to it since this daemon started.
    #[serde(default)]
    pub bytes_sent: u64,
    /// Sync payload bytes received from it since this daemon started.
    #[serde(default)]
    pub bytes_received: u64,
    /// Requests and answers from it this device refused without blame since it started
    /// (changes this device cannot prove yet, by devices it does not know yet, or too many at
    /// once). An honest mesh shows none after it settles.
    #[serde(default)]
    pub refusals: u64,
    /// Data from it that no honest device sends, since this device started.
    #[serde(default)]
    pub offences: u64,
    /// Until when it is refused for sending data no honest device sends, or flooding.
    #[serde(default)]
    pub suspended_until: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerListJson {
    pub peers: Vec<PeerJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatJson {
    pub id: String,
    pub title: String,
    pub created_at: i64,
    pub created_by: String,
    /// Messages in the chat, deleted ones included.
    pub messages: u64,
    pub last_activity: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatListJson {
    pub chats: Vec<ChatJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageJson {
    pub id: String,
    pub chat: String,
    /// Device id of the author.
    pub author: String,
    pub author_name: String,
    /// Author's clock when written, ms since the Unix epoch.
    pub ts: i64,
    pub text: String,
    pub reply_to: Option<String>,
    pub edited: bool,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// Reaction per device id.
    pub reactions: BTreeMap<String, String>,
    /// Files attached when it was posted (none once it is deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentJson>,
}

/// A file attached to a message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentJson {
    /// BLAKE3 hash of its bytes (64 hex digits): `GET /v1/blobs/{hash}` reads them.
    pub hash: String,
    pub size: u64,
    pub name: String,
    pub media_type: String,
    /// Whether its bytes are on this device.
    pub present: bool,
}

/// An attachment named in a post: a blob uploaded with `POST /v1/blobs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostAttachment {
    pub hash: String,
    /// File name (no path).
    pub name: String,
    /// Media type; `application/octet-stream` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

/// A blob stored on this device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobJson {
    pub hash: String,
    pub size: u64,
}

/// The attachments of one message, after a fetch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachmentListJson {
    pub attachments: Vec<AttachmentJson>,
}

/// An attachment download under way.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferJson {
    pub hash: String,
    pub size: u64,
    /// Bytes received and verified so far.
    pub have: u64,
    /// The device sending it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferListJson {
    pub transfers: Vec<TransferJson>,
}

/// The attachment store, in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentStatsJson {
    /// Attachments stored in full.
    pub blobs: u64,
    pub bytes: u64,
    /// Bytes of downloads under way.
    pub partial_bytes: u64,
    pub quota_bytes: u64,
    /// Downloads under way.
    pub transfers: usize,
    /// Attachment bytes sent to other devices, and received from them, since start.
    pub served_bytes: u64,
    pub fetched_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageListJson {
    pub messages: Vec<MessageJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadStateJson {
    pub chat: String,
    pub device: String,
    /// The last message this device has read.
    pub message: Option<String>,
    /// Messages from other devices after it (deleted ones not counted).
    pub unread: usize,
}

/// A device in the roster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceJson {
    pub id: String,
    pub name: String,
    /// Device that added it.
    pub added_by: Option<String>,
    pub added_at: Option<i64>,
    /// When it was removed; a removed device is never trusted again.
    pub removed_at: Option<i64>,
    /// May sync with this device (in the roster and not removed).
    pub trusted: bool,
    /// This is the device answering.
    pub this_device: bool,
    /// Where this device caught it signing two different changes with one sequence number
    /// (since chatsyncd started): no honest device does that; remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equivocated: Option<EquivocationJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EquivocationJson {
    pub chat: String,
    /// The sequence number it used twice.
    pub seq: u64,
    /// When this device noticed (ms since the Unix epoch).
    pub detected_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceListJson {
    pub devices: Vec<DeviceJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDeviceRequest {
    /// The device's id (`chatsync status` on that device shows it).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateChatRequest {
    pub title: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameChatRequest {
    pub title: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRequest {
    /// May be empty when the message has attachments.
    #[serde(default)]
    pub text: String,
    /// Id (or unambiguous id prefix) of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Files uploaded first with `POST /v1/blobs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<PostAttachment>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactRequest {
    pub reaction: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkReadRequest {
    /// The message to mark as read; the newest message when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MessagesQuery {
    /// How many messages (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Return the messages just before this one (id or prefix): for paging backwards.
    pub before: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Only events of this chat (id, title or id prefix).
    pub chat: Option<String>,
    /// Include `sync.progress` events (off by default: they come and go with the network).
    #[serde(default)]
    pub progress: bool,
}

/// One line of the event stream (`GET /v1/events`, NDJSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventJson {
    /// First line of every stream: the subscription is live from here on.
    #[serde(rename = "hello")]
    Hello { device_id: String, version: String },
    #[serde(rename = "chat.created")]
    ChatCreated { chat: ChatJson },
    #[serde(rename = "chat.updated")]
    ChatUpdated { chat: ChatJson },
    #[serde(rename = "message.created")]
    MessageCreated { message: MessageJson },
    #[serde(rename = "message.edited")]
    MessageEdited { message: MessageJson },
    #[serde(rename = "message.deleted")]
    MessageDeleted { message: MessageJson },
    #[serde(rename = "message.reaction")]
    MessageReaction { message: MessageJson },
    #[serde(rename = "read.updated")]
    ReadUpdated {
        chat: String,
        device: String,
        message: String,
    },
    #[serde(rename = "device.added")]
    DeviceAdded { device: DeviceJson },
    #[serde(rename = "device.removed")]
    DeviceRemoved { device: DeviceJson },
    #[serde(rename = "peer.up")]
    PeerUp { device: String },
    #[serde(rename = "peer.down")]
    PeerDown { device: String },
    /// A device joined the mesh with one of this device's invitations.
    #[serde(rename = "paired")]
    Paired {
        invite: String,
        device_id: String,
        name: String,
    },
    /// A device signed two different changes with one sequence number, found here or shown by
    /// another device (sent once per device and run): its changes from there on were dropped
    /// from the chat on every device the evidence reaches; remove it.
    #[serde(rename = "device.equivocated")]
    DeviceEquivocated {
        device: String,
        chat: String,
        seq: u64,
    },
    /// This device's sync state changed (at most four times a second).
    #[serde(rename = "sync.progress")]
    SyncProgress {
        state: SyncStatus,
        chats: usize,
        chats_behind: usize,
        chats_ahead: usize,
        peers_connected: usize,
    },
    /// How far a backup or a restore has got: `done` of `total` chats (with `progress=true`
    /// only; at most four times a second, and at the end).
    #[serde(rename = "backup.progress")]
    BackupProgress {
        /// `backup` or `restore`.
        operation: String,
        done: u64,
        total: u64,
    },
    /// An attachment's bytes are now on this device (uploaded here or fetched from another
    /// device): messages naming `hash` show it `present` from now on.
    #[serde(rename = "attachment.stored")]
    AttachmentStored { hash: String, size: u64 },
    /// The subscriber fell behind and `missed` events were dropped; re-read what matters.
    #[serde(rename = "lagged")]
    Lagged { missed: u64 },
    /// An event of a type this version does not know (from a newer daemon). The client's
    /// event stream skips it; the daemon never sends it.
    #[serde(other)]
    Unknown,
}

/// `POST /v1/invites`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInviteRequest {
    /// How long the ticket stays valid, in seconds (default 600, at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
}

/// An open invitation and its ticket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteJson {
    /// The ticket text for `chatsync join` (also shown as a QR code by `chatsync pair`).
    pub ticket: String,
    /// When the ticket expires (ms since the Unix epoch).
    pub expires_at: i64,
    /// The invitation's id, for `DELETE /v1/invites/{invite}` and `paired` events.
    pub invite: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteCancelledJson {
    pub invite: String,
    pub cancelled: bool,
}

/// `POST /v1/join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub ticket: String,
    /// What the inviting device calls this one (default: this device's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The device whose mesh this one joined.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinedJson {
    pub device_id: String,
    pub name: String,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorJson,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorJson {
    /// Stable, machine-readable code (see docs/api.md).
    pub code: crate::ErrorCode,
    pub message: String,
    /// For `ambiguous`: what the name could mean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}

// ----- backups -----

/// `POST /v1/backup`: set up backups to `target`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupInitRequest {
    /// A directory, `s3://bucket/prefix?endpoint=URL`, or `webdav+https://host/path`.
    pub target: String,
    /// Protects the repository's key in the repository (at least 8 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// Instead of a passphrase: make a recovery key, returned once.
    #[serde(default)]
    pub recovery_key: bool,
    /// Resolves a relative directory (the caller's working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Backups as set up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupInitJson {
    pub target: String,
    pub repository: String,
    /// The recovery key, when one was asked for: shown this once, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
}

/// `GET /v1/backup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupStatusJson {
    /// Where backups go; `null` when they are not set up.
    pub target: Option<String>,
    /// The newest backup that succeeded: when (ms) and its snapshot.
    #[serde(default)]
    pub last_backup_at: Option<i64>,
    #[serde(default)]
    pub last_snapshot: Option<String>,
    /// The newest failure since then (the daemon tries again by itself).
    #[serde(default)]
    pub failure: Option<BackupFailureJson>,
    /// When the daemon backs up next by itself (ms); `null` when it does not.
    #[serde(default)]
    pub next_at: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupFailureJson {
    pub at: i64,
    pub error: String,
}

/// What one backup did (`POST /v1/backup/snapshots`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupJson {
    pub snapshot: String,
    pub seq: u64,
    pub chats: u64,
    pub messages: u64,
    /// Attachments the snapshot holds.
    #[serde(default)]
    pub attachments: u64,
    pub bytes_written: u64,
    pub objects_written: u64,
    pub elapsed_ms: u64,
}

/// One snapshot (`GET /v1/backup/snapshots`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotJson {
    pub id: String,
    pub seq: u64,
    pub created_at: i64,
    pub device: String,
    pub chats: u64,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotListJson {
    pub snapshots: Vec<SnapshotJson>,
}

/// `POST /v1/backup/verify`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Only this snapshot (id or id prefix); every snapshot when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyJson {
    pub snapshots: u64,
    pub objects: u64,
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// `POST /v1/backup/restore`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// The recovery key shown at `init`, instead of a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
    /// This snapshot (id or id prefix) rather than the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `GET /v1/web`, and the answer to `POST /v1/web`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebStatusJson {
    pub enabled: bool,
    /// The address it listens on, when on.
    pub listen: Option<String>,
    /// The address to open in a browser, when on.
    pub url: Option<String>,
    pub allow_remote: bool,
    /// Browsers linked.
    pub sessions: usize,
}

/// `POST /v1/web`: turn the web client on (at `listen`, default as before) or off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettingsRequest {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Needed to listen on anything but loopback.
    #[serde(default)]
    pub allow_remote: bool,
}

/// `POST /v1/web/links`: a one-time link that logs a browser in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebLinkJson {
    pub url: String,
    pub expires_at: i64,
}

/// A linked browser.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebSessionJson {
    pub id: String,
    pub created_at: i64,
    pub last_seen: i64,
    pub user_agent: String,
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebSessionListJson {
    pub sessions: Vec<WebSessionJson>,
}

/// `DELETE /v1/web/sessions/{session}`: how many sessions ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WebRevokedJson {
    pub revoked: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestoreJson {
    pub snapshot: String,
    pub restored: u64,
    /// Chats this device had already; the backup's copy was merged into them.
    pub already_here: u64,
    /// Messages those merges added or changed.
    #[serde(default)]
    pub merged_messages: u64,
    /// Chats this device had whose copy could not be merged (the daemon's log says why).
    #[serde(default)]
    pub not_merged: u64,
    pub messages: u64,
    /// Attachments brought back, and those left in the backup for want of room (the quota,
    /// or the disk).
    #[serde(default)]
    pub attachments: u64,
    #[serde(default)]
    pub attachments_skipped: u64,
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_written_as_their_names() {
        fn same<T: Serialize + std::fmt::Display>(value: T) {
            assert_eq!(
                serde_json::to_string(&value).unwrap(),
                format!("\"{value}\"")
            );
        }
        same(StoreState::Full);
        same(SyncStatus::InSync);
        same(ConnectionPath::Relayed);
        same(Transport::Quic);
        same(Transport::Other);
        same(Direction::Outbound);
        same(ReservationState::Retrying);
        let newer: SyncStatus = serde_json::from_str("\"asleep\"").unwrap();
        assert_eq!(newer, SyncStatus::Unknown);
        let newer: EventJson =
            serde_json::from_str(r#"{"type": "chat.archived", "chat": "c"}"#).unwrap();
        assert!(matches!(newer, EventJson::Unknown));
    }
}
