//! `GET /v1/events`: the live event stream, one JSON object per line (NDJSON).
//!
//! The first line is a `hello`: once a client has read it, no later change will be missed
//! (a client that also lists messages should subscribe first, then list). A subscriber that
//! falls more than [`EVENT_BUFFER`](crate::engine::events::EVENT_BUFFER) events behind gets a
//! `lagged` line and carries on; the daemon never buffers without bound for a slow reader.
//! Streams end when the daemon shuts down.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use chatsync_model::{ChatId, DeviceId};
use futures_util::stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::{
    ApiError, AppState,
    error::ApiQuery,
    wire::{EventJson, EventsQuery},
};
use crate::engine::Event;

struct Subscription {
    rx: broadcast::Receiver<Event>,
    device: DeviceId,
    /// Says which attachments are on this device.
    blobs: Arc<crate::blobs::Blobs>,
    chat: Option<ChatId>,
    /// Whether `sync.progress` events are wanted.
    progress: bool,
    shutdown: CancellationToken,
    /// Lines sent before any event: `hello`, then the sync state now if progress is wanted.
    first: std::collections::VecDeque<EventJson>,
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let chat = match &query.chat {
        Some(r) => Some(state.engine.resolve_chat(r)?.id),
        None => None,
    };
    let mut subscription = Subscription {
        rx: state.engine.subscribe(),
        device: state.engine.device().id.clone(),
        blobs: state.network.blobs.store().clone(),
        chat,
        progress: query.progress,
        shutdown: state.shutdown.clone(),
        first: [EventJson::Hello {
            device_id: state.engine.device().id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }]
        .into(),
    };
    if query.progress {
        // Where things stand, so that a progress display need not wait for a change.
        let sync = state.network.sync_state().await;
        subscription.first.push_back(EventJson::SyncProgress {
            state: super::convert::sync_status(sync.state),
            chats: state.engine.stats().chats,
            chats_behind: sync.chats_behind,
            chats_ahead: sync.chats_ahead,
            peers_connected: sync.peers_connected,
        });
    }
    let lines = stream::unfold(subscription, |mut sub| async move {
        let event = next_event(&mut sub).await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), sub))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn next_event(sub: &mut Subscription) -> Option<EventJson> {
    if let Some(line) = sub.first.pop_front() {
        return Some(line);
    }
    loop {
        let received = tokio::select! {
            _ = sub.shutdown.cancelled() => return None,
            r = sub.rx.recv() => r,
        };
        match received {
            Ok(Event::SyncProgress { .. } | Event::BackupProgress { .. }) if !sub.progress => {}
            Ok(event) => {
                if sub.chat.is_none() || sub.chat.as_ref() == event.chat() {
                    return Some(super::convert::event(event, &sub.device, &sub.blobs));
                }
            }
            Err(RecvError::Lagged(missed)) => return Some(EventJson::Lagged { missed }),
            Err(RecvError::Closed) => return None,
        }
    }
}
