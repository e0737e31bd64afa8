//! One handler per route. Handlers only translate: wire types in, engine call, wire types out.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post, put},
};

use super::{
    ApiError, AppState,
    error::{ApiJson, ApiPath, ApiQuery},
    events::events,
    idempotency::IdempotencyKey,
    pairing,
    wire::*,
};
use crate::engine::{ChatSummary, MAX_PAGE};

type AppResult<T> = Result<T, ApiError>;
type St = State<Arc<AppState>>;

/// Messages returned when the request gives no limit.
const DEFAULT_PAGE: usize = 50;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/status", get(status))
        .route("/shutdown", post(shutdown))
        .route("/events", get(events))
        .route("/chats", get(list_chats).post(create_chat))
        .route("/chats/{chat}", get(get_chat).patch(rename_chat))
        .route(
            "/chats/{chat}/messages",
            get(list_messages).post(post_message),
        )
        .route(
            "/chats/{chat}/messages/{message}",
            get(get_message).patch(edit_message).delete(delete_message),
        )
        .route(
            "/chats/{chat}/messages/{message}/reaction",
            put(set_reaction).delete(clear_reaction),
        )
        .route("/chats/{chat}/read", get(read_state).post(mark_read))
        .route("/devices", get(list_devices).post(add_device))
        .route("/peers", get(list_peers))
        .route("/devices/{device}", axum::routing::delete(remove_device))
        .route("/invites", post(pairing::create_invite))
        .route(
            "/invites/{invite}",
            axum::routing::delete(pairing::cancel_invite),
        )
        .route("/join", post(pairing::join))
}

async fn status(State(st): St) -> Json<StatusJson> {
    let stats = st.engine.stats();
    let listen_addrs = st.network.listen_addrs().await;
    let sync = st.network.sync_state().await;
    let relay = st.network.relay_status().await;
    let device = st.engine.device();
    Json(StatusJson {
        device_id: device.id.to_string(),
        name: st.engine.device_name(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        data_dir: st.data_dir.display().to_string(),
        socket: st.socket.display().to_string(),
        chats: stats.chats,
        loaded_chats: stats.loaded_chats,
        loaded_bytes_estimate: stats.loaded_bytes_estimate,
        store_bytes: stats.store_bytes,
        store_healthy: stats.store_healthy,
        store_state: if !stats.store_healthy {
            "failed"
        } else if stats.store_full {
            "full"
        } else {
            "ok"
        }
        .to_string(),
        store_free_bytes: stats.store_free_bytes,
        started_at: st.started_at,
        uptime_ms: st.started.elapsed().as_millis() as u64,
        listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
        peers_connected: sync.peers_connected,
        sync: SyncJson {
            state: sync.state.to_string(),
            peers_connected: sync.peers_connected,
            peers_trusted: sync.peers_trusted,
            chats_behind: sync.chats_behind,
            chats_ahead: sync.chats_ahead,
            sessions: sync.sessions,
            last_sync: sync.last_sync,
        },
        removed_from_mesh_at: st.engine.removed_from_mesh().await,
        reservations: relay
            .reservations
            .into_iter()
            .map(|r| ReservationJson {
                relay: r.relay,
                address: r.address,
                state: r.state.to_string(),
                relayed_addrs: r.relayed_addrs,
                since: r.since,
                renewals: r.renewals,
                circuit_bytes: r.circuit_bytes,
                circuit_secs: r.circuit_secs,
                error: r.error,
            })
            .collect(),
        relay: relay.server.map(|s| RelayServerJson {
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
        }),
    })
}

async fn shutdown(State(st): St) -> StatusCode {
    tracing::info!("shutdown requested through the API");
    st.shutdown.cancel();
    StatusCode::ACCEPTED
}

async fn list_chats(State(st): St) -> Json<ChatListJson> {
    Json(ChatListJson {
        chats: st
            .engine
            .list_chats()
            .iter()
            .map(ChatJson::from_summary)
            .collect(),
    })
}

async fn create_chat(
    State(st): St,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(req): ApiJson<CreateChatRequest>,
) -> AppResult<(StatusCode, Json<ChatJson>)> {
    let chat = st.engine.create_chat(&req.title, key.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(ChatJson::from_summary(&chat))))
}

async fn get_chat(State(st): St, ApiPath(chat): ApiPath<String>) -> AppResult<Json<ChatJson>> {
    Ok(Json(ChatJson::from_summary(
        &st.engine.resolve_chat(&chat)?,
    )))
}

async fn rename_chat(
    State(st): St,
    ApiPath(chat): ApiPath<String>,
    ApiJson(req): ApiJson<RenameChatRequest>,
) -> AppResult<Json<ChatJson>> {
    let chat = resolve(&st, &chat)?;
    let renamed = st.engine.rename_chat(&chat.id, &req.title).await?;
    Ok(Json(ChatJson::from_summary(&renamed)))
}

async fn list_messages(
    State(st): St,
    ApiPath(chat): ApiPath<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> AppResult<Json<MessageListJson>> {
    let chat = resolve(&st, &chat)?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("limit may be at most {MAX_PAGE}; page with `before`"),
        ));
    }
    let messages = st
        .engine
        .messages(&chat.id, q.before.as_deref(), limit)
        .await?;
    Ok(Json(MessageListJson {
        messages: messages
            .into_iter()
            .map(|m| MessageJson::from_model(&chat.id, m))
            .collect(),
    }))
}

async fn post_message(
    State(st): St,
    ApiPath(chat): ApiPath<String>,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(req): ApiJson<PostRequest>,
) -> AppResult<(StatusCode, Json<MessageJson>)> {
    let chat = resolve(&st, &chat)?;
    let msg = st
        .engine
        .post(&chat.id, &req.text, req.reply_to.as_deref(), key.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(MessageJson::from_model(&chat.id, msg)),
    ))
}

async fn get_message(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.message(&chat.id, &message).await?;
    Ok(Json(MessageJson::from_model(&chat.id, msg)))
}

async fn edit_message(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<EditRequest>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.edit(&chat.id, &message, &req.text).await?;
    Ok(Json(MessageJson::from_model(&chat.id, msg)))
}

async fn delete_message(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.delete(&chat.id, &message).await?;
    Ok(Json(MessageJson::from_model(&chat.id, msg)))
}

async fn set_reaction(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<ReactRequest>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st
        .engine
        .react(&chat.id, &message, Some(&req.reaction))
        .await?;
    Ok(Json(MessageJson::from_model(&chat.id, msg)))
}

async fn clear_reaction(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.react(&chat.id, &message, None).await?;
    Ok(Json(MessageJson::from_model(&chat.id, msg)))
}

async fn read_state(
    State(st): St,
    ApiPath(chat): ApiPath<String>,
) -> AppResult<Json<ReadStateJson>> {
    let chat = resolve(&st, &chat)?;
    read_state_json(&st, &chat).await
}

async fn mark_read(
    State(st): St,
    ApiPath(chat): ApiPath<String>,
    ApiJson(req): ApiJson<MarkReadRequest>,
) -> AppResult<Json<ReadStateJson>> {
    let chat = resolve(&st, &chat)?;
    st.engine
        .mark_read(&chat.id, req.message.as_deref())
        .await?;
    read_state_json(&st, &chat).await
}

async fn read_state_json(st: &AppState, chat: &ChatSummary) -> AppResult<Json<ReadStateJson>> {
    let (message, unread) = st.engine.read_state(&chat.id).await?;
    Ok(Json(ReadStateJson {
        chat: chat.id.to_string(),
        device: st.engine.device().id.to_string(),
        message: message.map(|m| m.to_string()),
        unread,
    }))
}

async fn list_devices(State(st): St) -> Json<DeviceListJson> {
    let me = &st.engine.device().id;
    Json(DeviceListJson {
        devices: st
            .engine
            .devices()
            .await
            .into_iter()
            .map(|e| {
                let found = st.engine.equivocation(&e.id);
                DeviceJson::from_entry(e, me).with_equivocation(found)
            })
            .collect(),
    })
}

async fn add_device(
    State(st): St,
    ApiJson(req): ApiJson<AddDeviceRequest>,
) -> AppResult<(StatusCode, Json<DeviceJson>)> {
    let entry = st.engine.add_device(&req.id, req.name.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(DeviceJson::from_entry(entry, &st.engine.device().id)),
    ))
}

async fn remove_device(
    State(st): St,
    ApiPath(device): ApiPath<String>,
) -> AppResult<Json<DeviceJson>> {
    let entry = st.engine.remove_device(&device).await?;
    Ok(Json(DeviceJson::from_entry(entry, &st.engine.device().id)))
}

async fn list_peers(State(st): St) -> Json<PeerListJson> {
    let names: std::collections::HashMap<_, _> = st
        .engine
        .devices()
        .await
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect();
    Json(PeerListJson {
        peers: st
            .network
            .peers()
            .await
            .into_iter()
            .map(|p| PeerJson {
                name: names.get(&p.device).cloned(),
                device: p.device.to_string(),
                connected: p.connected,
                addresses: p.addresses.iter().map(ToString::to_string).collect(),
                transport: p.transport,
                path: p.path,
                relay: p.relay,
                hole_punched: p.hole_punched,
                connections: p.connections,
                hole_punch_failures: p.hole_punch_failures,
                direction: p.direction,
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
            })
            .collect(),
    })
}

fn resolve(st: &AppState, chat: &str) -> AppResult<ChatSummary> {
    Ok(st.engine.resolve_chat(chat)?)
}
