//! Daemon types to wire types: the one place that knows both. Handlers build their answers
//! here, so a change on either side shows up in this file alone (every match is exhaustive).

use chatsync_api::wire::{self, *};
use chatsync_model::{Attachment, ChatId, DeviceId, Message, RosterEntry};

use crate::{
    blobs::Blobs,
    engine::{
        ChatSummary, EngineStats, Event, MessageEventKind, SyncStatus, equivocation::Equivocation,
    },
    net::{
        PeerInfo, SyncState,
        blobs::TransferInfo,
        peers::Transport,
        relay::{Path, RelayServerInfo, RelayStatus, ReservationInfo, ReservationState},
    },
    store::ChatRecord,
};

/// A message; `blobs` says which of its attachments are on this device.
pub fn message(chat: &ChatId, m: Message, blobs: &Blobs) -> MessageJson {
    MessageJson {
        id: m.id.to_string(),
        chat: chat.to_string(),
        author: m.author.to_string(),
        author_name: m.author_name,
        ts: m.ts,
        text: m.text,
        reply_to: m.reply_to.map(|r| r.to_string()),
        edited: m.edited_at.is_some(),
        edited_at: m.edited_at,
        deleted: m.deleted,
        reactions: m
            .reactions
            .into_iter()
            .map(|(d, r)| (d.to_string(), r))
            .collect(),
        attachments: m
            .attachments
            .into_iter()
            .map(|a| attachment(a, blobs))
            .collect(),
    }
}

pub fn attachment(a: Attachment, blobs: &Blobs) -> AttachmentJson {
    AttachmentJson {
        present: blobs.has(&a.hash),
        hash: a.hash.to_hex(),
        size: a.size,
        name: a.name,
        media_type: a.media_type,
    }
}

pub fn transfer(t: TransferInfo) -> TransferJson {
    TransferJson {
        hash: t.hash.to_hex(),
        size: t.size,
        have: t.have,
        from: t.from.map(|d| d.to_string()),
    }
}

/// A roster entry, with where it was caught equivocating if it was.
pub fn device(
    e: RosterEntry,
    this_device: &DeviceId,
    equivocated: Option<Equivocation>,
) -> DeviceJson {
    DeviceJson {
        trusted: e.trusted(),
        this_device: &e.id == this_device,
        id: e.id.to_string(),
        name: e.name,
        added_by: e.added_by.map(|d| d.to_string()),
        added_at: e.added_at,
        removed_at: e.removed_at,
        equivocated: equivocated.map(|e| EquivocationJson {
            chat: e.chat.to_string(),
            seq: e.seq,
            detected_at: e.detected_at,
        }),
    }
}

pub fn chat_record(id: &ChatId, r: &ChatRecord) -> ChatJson {
    ChatJson {
        id: id.to_string(),
        title: r.title.clone(),
        created_at: r.created_at,
        created_by: r.created_by.clone(),
        messages: r.messages,
        last_activity: r.last_activity,
    }
}

pub fn chat(s: &ChatSummary) -> ChatJson {
    chat_record(&s.id, &s.record)
}

pub fn sync_status(s: SyncStatus) -> wire::SyncStatus {
    match s {
        SyncStatus::Offline => wire::SyncStatus::Offline,
        SyncStatus::Syncing => wire::SyncStatus::Syncing,
        SyncStatus::InSync => wire::SyncStatus::InSync,
    }
}

pub fn sync(s: &SyncState) -> SyncJson {
    SyncJson {
        state: sync_status(s.state),
        peers_connected: s.peers_connected,
        peers_trusted: s.peers_trusted,
        chats_behind: s.chats_behind,
        chats_ahead: s.chats_ahead,
        sessions: s.sessions,
        last_sync: s.last_sync,
    }
}

pub fn store_state(stats: &EngineStats) -> StoreState {
    if !stats.store_healthy {
        StoreState::Failed
    } else if stats.store_full {
        StoreState::Full
    } else {
        StoreState::Ok
    }
}

pub fn reservation(r: ReservationInfo) -> ReservationJson {
    ReservationJson {
        relay: r.relay,
        address: r.address,
        state: match r.state {
            ReservationState::Reserved => wire::ReservationState::Reserved,
            ReservationState::Connecting => wire::ReservationState::Connecting,
            ReservationState::Retrying => wire::ReservationState::Retrying,
        },
        relayed_addrs: r.relayed_addrs,
        since: r.since,
        renewals: r.renewals,
        circuit_bytes: r.circuit_bytes,
        circuit_secs: r.circuit_secs,
        error: r.error,
    }
}

pub fn relay_server(s: RelayServerInfo) -> RelayServerJson {
    RelayServerJson {
        reservations: s.reservations,
        circuits: s.circuits,
        clients: s.clients,
        external_addrs: s.external_addrs,
        reservations_accepted: s.reservations_accepted,
        reservations_denied: s.reservations_denied,
        circuits_accepted: s.circuits_accepted,
        circuits_denied: s.circuits_denied,
        max_reservations: s.max_reservations,
        max_circuits: s.max_circuits,
        max_circuit_bytes: s.max_circuit_bytes,
        max_circuit_secs: s.max_circuit_secs,
        allow: s.allow,
    }
}

/// Both sides of relaying: the reservations this device keeps, and its relay server.
pub fn relay(r: RelayStatus) -> (Vec<ReservationJson>, Option<RelayServerJson>) {
    (
        r.reservations.into_iter().map(reservation).collect(),
        r.server.map(relay_server),
    )
}

/// A device as the network sees it, with its name in the roster.
pub fn peer(p: PeerInfo, name: Option<String>) -> PeerJson {
    PeerJson {
        name,
        device: p.device.to_string(),
        connected: p.connected,
        addresses: p.addresses.iter().map(ToString::to_string).collect(),
        transport: p.transport.map(|t| match t {
            Transport::Tcp => wire::Transport::Tcp,
            Transport::Quic => wire::Transport::Quic,
            Transport::Other => wire::Transport::Other,
        }),
        path: p.path.map(|path| match path {
            Path::Lan => ConnectionPath::Lan,
            Path::Direct => ConnectionPath::Direct,
            Path::Relayed => ConnectionPath::Relayed,
        }),
        relay: p.relay,
        hole_punched: p.hole_punched,
        connections: p.connections,
        hole_punch_failures: p.hole_punch_failures,
        direction: p.outbound.map(|outbound| {
            if outbound {
                Direction::Outbound
            } else {
                Direction::Inbound
            }
        }),
        connected_since: p.connected_since,
        rtt_ms: p.rtt_ms,
        last_sync: p.last_sync,
        chats_behind: p.chats_behind,
        chats_ahead: p.chats_ahead,
        bytes_sent: p.bytes_sent,
        bytes_received: p.bytes_received,
        refusals: p.refusals,
        offences: p.offences,
        suspended_until: p.suspended_until,
    }
}

pub fn event(event: Event, this_device: &DeviceId, blobs: &Blobs) -> EventJson {
    match event {
        Event::PeerUp { device } => EventJson::PeerUp {
            device: device.to_string(),
        },
        Event::PeerDown { device } => EventJson::PeerDown {
            device: device.to_string(),
        },
        Event::BackupProgress {
            restoring,
            done,
            total,
        } => EventJson::BackupProgress {
            operation: if restoring { "restore" } else { "backup" }.into(),
            done: done as u64,
            total: total as u64,
        },
        Event::AttachmentStored { hash, size } => EventJson::AttachmentStored {
            hash: hash.to_hex(),
            size,
        },
        Event::Equivocation { device, chat, seq } => EventJson::DeviceEquivocated {
            device: device.to_string(),
            chat: chat.to_string(),
            seq,
        },
        Event::Paired {
            invite,
            device,
            name,
        } => EventJson::Paired {
            invite,
            device_id: device.to_string(),
            name,
        },
        Event::SyncProgress {
            state,
            chats,
            chats_behind,
            chats_ahead,
            peers_connected,
        } => EventJson::SyncProgress {
            state: sync_status(state),
            chats,
            chats_behind,
            chats_ahead,
            peers_connected,
        },
        Event::DeviceAdded { entry } => EventJson::DeviceAdded {
            device: self::device(entry, this_device, None),
        },
        Event::DeviceRemoved { entry } => EventJson::DeviceRemoved {
            device: self::device(entry, this_device, None),
        },
        Event::ChatCreated { chat, record } => EventJson::ChatCreated {
            chat: chat_record(&chat, &record),
        },
        Event::ChatUpdated { chat, record } => EventJson::ChatUpdated {
            chat: chat_record(&chat, &record),
        },
        Event::Message {
            kind,
            chat,
            message,
        } => {
            let message = self::message(&chat, message, blobs);
            match kind {
                MessageEventKind::Created => EventJson::MessageCreated { message },
                MessageEventKind::Edited => EventJson::MessageEdited { message },
                MessageEventKind::Deleted => EventJson::MessageDeleted { message },
                MessageEventKind::Reaction => EventJson::MessageReaction { message },
            }
        }
        Event::ReadMarker {
            chat,
            device,
            message,
        } => EventJson::ReadUpdated {
            chat: chat.to_string(),
            device: device.to_string(),
            message: message.to_string(),
        },
    }
}
