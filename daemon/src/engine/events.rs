//! What the engine tells the rest of the daemon (and, through the API, programs) after a change
//! is durable.

use chatsync_model::{ChatId, DeviceId, Message, MessageId, RosterEntry};

use crate::store::ChatRecord;

/// How many events a slow subscriber may fall behind before it is told it lagged. The buffer
/// keeps the last this-many events alive whatever the subscribers do, so it is also a bound on
/// memory: with messages of at most 64 KiB, 64 MiB at worst, and far less in practice.
pub const EVENT_BUFFER: usize = 1024;

#[derive(Clone, Debug)]
pub enum Event {
    ChatCreated {
        chat: ChatId,
        record: ChatRecord,
    },
    ChatUpdated {
        chat: ChatId,
        record: ChatRecord,
    },
    Message {
        kind: MessageEventKind,
        chat: ChatId,
        message: Message,
    },
    ReadMarker {
        chat: ChatId,
        device: DeviceId,
        message: MessageId,
    },
    DeviceAdded {
        entry: RosterEntry,
    },
    DeviceRemoved {
        entry: RosterEntry,
    },
    /// A trusted device connected (not a durable change: sent by the network task).
    PeerUp {
        device: DeviceId,
    },
    /// A device's last connection closed.
    PeerDown {
        device: DeviceId,
    },
    /// A device joined the mesh with an invitation of this device (sent by the network task,
    /// after the device is durably in the roster).
    Paired {
        /// The invitation's id (hex), as `POST /v1/invites` returned it.
        invite: String,
        device: DeviceId,
        name: String,
    },
    /// A device was caught signing two different changes with one sequence number
    /// ([`super::equivocation`]); sent once per device and run, when first noticed.
    Equivocation {
        device: DeviceId,
        chat: ChatId,
        seq: u64,
    },
    /// How far a backup or a restore has got (`crate::backup`; at most four times a second,
    /// and at the end): `done` of `total` chats.
    BackupProgress {
        restoring: bool,
        done: usize,
        total: usize,
    },
    /// An attachment's bytes are now on this device (uploaded, or fetched from another
    /// device: sent by the attachment transfers).
    AttachmentStored {
        hash: chatsync_model::BlobHash,
        size: u64,
    },
    /// This device's sync state changed (sent by the network task, at most four times a
    /// second): for progress bars while a new device catches up, and for status displays.
    SyncProgress {
        state: SyncStatus,
        /// Chats on this device.
        chats: usize,
        chats_behind: usize,
        chats_ahead: usize,
        peers_connected: usize,
    },
}

impl Event {
    /// The chat the event is about, if it is about one.
    pub fn chat(&self) -> Option<&ChatId> {
        match self {
            Event::ChatCreated { chat, .. }
            | Event::ChatUpdated { chat, .. }
            | Event::Message { chat, .. }
            | Event::ReadMarker { chat, .. }
            | Event::Equivocation { chat, .. } => Some(chat),
            Event::DeviceAdded { .. }
            | Event::DeviceRemoved { .. }
            | Event::PeerUp { .. }
            | Event::PeerDown { .. }
            | Event::Paired { .. }
            | Event::BackupProgress { .. }
            | Event::AttachmentStored { .. }
            | Event::SyncProgress { .. } => None,
        }
    }
}

/// How this device stands with the devices it syncs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SyncStatus {
    /// No trusted device is connected.
    #[default]
    Offline,
    /// Some connected device has changes this one lacks, or lacks some of this one's, or a
    /// session is under way.
    Syncing,
    /// Every connected device has exactly this device's changes.
    InSync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageEventKind {
    Created,
    Edited,
    Deleted,
    Reaction,
}
