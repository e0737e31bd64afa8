//! One handler per route. Handlers only translate: wire types in, engine call, wire types out.

use std::sync::Arc;

use chatsync_api::ErrorCode;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post, put},
};

use super::{
    ApiError, AppState, attachments, backup, convert,
    error::{ApiJson, ApiPath, ApiQuery},
    events::events,
    idempotency::IdempotencyKey,
    pairing, web,
    wire::*,
};
use crate::engine::{ChatSummary, MAX_PAGE};

type AppResult<T> = Result<T, ApiError>;
type St = State<Arc<AppState>>;

/// Messages returned when the request gives no limit.
const DEFAULT_PAGE: usize = 50;

pub fn routes() -> Router<Arc<AppState>> {
    // Everything the web client serves, and what only the local socket serves.
    web_routes()
        .route("/shutdown", post(shutdown))
        .route("/devices", post(add_device))
        .route("/devices/{device}", axum::routing::delete(remove_device))
        .route("/join", post(pairing::join))
        .route("/backup", get(backup::status).post(backup::init))
        .route(
            "/backup/snapshots",
            get(backup::snapshots).post(backup::now),
        )
        .route("/backup/verify", post(backup::verify))
        .route("/backup/restore", post(backup::restore))
        .route("/web", get(web::status).post(web::settings))
        .route("/web/links", post(web::new_link))
        .route("/web/sessions", get(web::sessions))
        .route(
            "/web/sessions/{session}",
            axum::routing::delete(web::revoke),
        )
}

/// The routes the web client may use (`crate::web`): the same handlers, for reading and
/// writing chats, seeing the devices and pairing new ones; never shutdown, backups, removing
/// or adding devices by hand, joining another mesh, or the web client's own settings.
pub fn web_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/status", get(status))
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
        .route(
            "/chats/{chat}/messages/{message}/attachments/fetch",
            post(attachments::fetch),
        )
        .route(
            "/chats/{chat}/messages/{message}/attachments/{index}",
            get(attachments::download),
        )
        .route(
            "/chats/{chat}/messages/{message}/attachments/{index}/thumbnail",
            get(attachments::thumbnail),
        )
        .route(
            "/blobs",
            post(attachments::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/blobs/{hash}", get(attachments::blob))
        .route("/transfers", get(attachments::transfers))
        .route("/devices", get(list_devices))
        .route("/peers", get(list_peers))
        .route("/invites", post(pairing::create_invite))
        .route(
            "/invites/{invite}",
            axum::routing::delete(pairing::cancel_invite),
        )
}

async fn status(State(st): St) -> Json<StatusJson> {
    let stats = st.engine.stats();
    let listen_addrs = st.network.listen_addrs().await;
    let sync = st.network.sync_state().await;
    let (reservations, relay) = convert::relay(st.network.relay_status().await);
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
        store_state: convert::store_state(&stats),
        store_free_bytes: stats.store_free_bytes,
        started_at: st.started_at,
        uptime_ms: st.started.elapsed().as_millis() as u64,
        listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
        peers_connected: sync.peers_connected,
        sync: convert::sync(&sync),
        removed_from_mesh_at: st.engine.removed_from_mesh().await,
        reservations,
        relay,
        attachments: attachment_stats(&st),
    })
}

fn attachment_stats(st: &AppState) -> AttachmentStatsJson {
    let blobs = st.network.blobs.store();
    let stats = blobs.stats();
    AttachmentStatsJson {
        blobs: stats.blobs,
        bytes: stats.bytes,
        partial_bytes: stats.partial_bytes,
        quota_bytes: blobs.quota(),
        transfers: st.network.blobs.transfers().len(),
        served_bytes: blobs
            .served_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        fetched_bytes: blobs
            .fetched_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
    }
}

async fn shutdown(State(st): St) -> StatusCode {
    tracing::info!("shutdown requested through the API");
    st.shutdown.cancel();
    StatusCode::ACCEPTED
}

async fn list_chats(State(st): St) -> Json<ChatListJson> {
    Json(ChatListJson {
        chats: st.engine.list_chats().iter().map(convert::chat).collect(),
    })
}

async fn create_chat(
    State(st): St,
    IdempotencyKey(key): IdempotencyKey,
    ApiJson(req): ApiJson<CreateChatRequest>,
) -> AppResult<(StatusCode, Json<ChatJson>)> {
    let chat = st.engine.create_chat(&req.title, key.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(convert::chat(&chat))))
}

async fn get_chat(State(st): St, ApiPath(chat): ApiPath<String>) -> AppResult<Json<ChatJson>> {
    Ok(Json(convert::chat(&st.engine.resolve_chat(&chat)?)))
}

async fn rename_chat(
    State(st): St,
    ApiPath(chat): ApiPath<String>,
    ApiJson(req): ApiJson<RenameChatRequest>,
) -> AppResult<Json<ChatJson>> {
    let chat = resolve(&st, &chat)?;
    let renamed = st.engine.rename_chat(&chat.id, &req.title).await?;
    Ok(Json(convert::chat(&renamed)))
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
            ErrorCode::Invalid,
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
            .map(|m| convert::message(&chat.id, m, st.network.blobs.store()))
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
    let attachments = attachments::described(&st, &req.attachments)?;
    let msg = st
        .engine
        .post_with_attachments(
            &chat.id,
            &req.text,
            req.reply_to.as_deref(),
            &attachments,
            key.as_deref(),
        )
        .await?;
    st.network
        .blobs
        .store()
        .claim(attachments.iter().map(|a| a.hash));
    Ok((
        StatusCode::CREATED,
        Json(convert::message(&chat.id, msg, st.network.blobs.store())),
    ))
}

async fn get_message(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.message(&chat.id, &message).await?;
    Ok(Json(convert::message(
        &chat.id,
        msg,
        st.network.blobs.store(),
    )))
}

async fn edit_message(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<EditRequest>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.edit(&chat.id, &message, &req.text).await?;
    Ok(Json(convert::message(
        &chat.id,
        msg,
        st.network.blobs.store(),
    )))
}

async fn delete_message(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.delete(&chat.id, &message).await?;
    Ok(Json(convert::message(
        &chat.id,
        msg,
        st.network.blobs.store(),
    )))
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
    Ok(Json(convert::message(
        &chat.id,
        msg,
        st.network.blobs.store(),
    )))
}

async fn clear_reaction(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<MessageJson>> {
    let chat = resolve(&st, &chat)?;
    let msg = st.engine.react(&chat.id, &message, None).await?;
    Ok(Json(convert::message(
        &chat.id,
        msg,
        st.network.blobs.store(),
    )))
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
                convert::device(e, me, found)
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
        Json(convert::device(entry, &st.engine.device().id, None)),
    ))
}

async fn remove_device(
    State(st): St,
    ApiPath(device): ApiPath<String>,
) -> AppResult<Json<DeviceJson>> {
    let entry = st.engine.remove_device(&device).await?;
    Ok(Json(convert::device(entry, &st.engine.device().id, None)))
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
            .map(|p| {
                let name = names.get(&p.device).cloned();
                convert::peer(p, name)
            })
            .collect(),
    })
}

fn resolve(st: &AppState, chat: &str) -> AppResult<ChatSummary> {
    Ok(st.engine.resolve_chat(chat)?)
}

#[cfg(test)]
mod tests {
    /// The routes served, as (method, path) pairs, read from the `.route(...)` calls of this
    /// file (under `/v1`) and of the router in `mod.rs` (outside it).
    fn served() -> Vec<(String, String)> {
        let body = |source: &'static str, function: &str| -> &'static str {
            let start = &source[source.find(function).unwrap()..];
            &start[..start.find("\n}\n").unwrap()]
        };
        let source = include_str!("routes.rs");
        // The local API's routes: the web client's, and those of `routes()` added to them.
        let versioned = [
            body(source, "pub fn routes()"),
            body(source, "pub fn web_routes()"),
        ]
        .concat();
        let mut routes = routes_in(&versioned, "/v1");
        routes.extend(routes_in(
            body(include_str!("mod.rs"), "pub fn router("),
            "",
        ));
        routes
    }

    fn routes_in(router: &str, prefix: &str) -> Vec<(String, String)> {
        let mut routes = Vec::new();
        for call in router.split(".route(").skip(1) {
            let path = call.split('"').nth(1).unwrap();
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = format!("{method}(");
                if call
                    .match_indices(&called)
                    .any(|(i, _)| !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
                {
                    routes.push((method.to_uppercase(), format!("{prefix}{path}")));
                }
            }
        }
        routes
    }

    /// docs/api.md's headings name every method and route: `### \`GET /v1/chats\`, …`; a
    /// heading's `METHOD …` stands for the heading's first path.
    fn documented() -> Vec<(String, String)> {
        let mut routes = Vec::new();
        for heading in include_str!("../../../docs/api.md")
            .lines()
            .filter(|l| l.starts_with("### `"))
        {
            let mut first_path = None;
            for item in heading.split('`').skip(1).step_by(2) {
                let Some((method, path)) = item.split_once(' ') else {
                    continue;
                };
                let path = path.split('?').next().unwrap().to_string();
                let path = if path == "…" {
                    first_path.clone().unwrap()
                } else {
                    first_path.get_or_insert(path.clone());
                    path
                };
                routes.push((method.to_string(), path));
            }
        }
        routes
    }

    #[test]
    fn every_route_served_is_documented_and_nothing_else() {
        let served = served();
        assert!(served.len() >= 20, "routes not read: {served:?}");
        let documented = documented();
        for route in &served {
            assert!(
                documented.contains(route),
                "{} {} is served but docs/api.md has no heading for it",
                route.0,
                route.1
            );
        }
        for route in &documented {
            assert!(
                served.contains(route),
                "docs/api.md documents {} {}, which is not served",
                route.0,
                route.1
            );
        }
    }
}
