//! The web client's routes on the local API: turn it on and off, make links, list and revoke
//! the browsers linked (`crate::web`). Only here, never on the web server itself: a browser
//! cannot link more browsers or open the server to the network.

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use chatsync_api::ErrorCode;

use super::{
    ApiError, AppState,
    error::{ApiJson, ApiPath},
    wire::*,
};
use crate::web::{WebError, WebStatus};

type St = State<Arc<AppState>>;

impl From<WebError> for ApiError {
    fn from(e: WebError) -> Self {
        let (status, code) = match &e {
            WebError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            WebError::Off => (StatusCode::CONFLICT, ErrorCode::WebOff),
            WebError::Listen(..) => (StatusCode::CONFLICT, ErrorCode::WebListen),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn status_json(status: WebStatus) -> WebStatusJson {
    WebStatusJson {
        enabled: status.enabled,
        listen: status.listen.map(|a| a.to_string()),
        url: status.url,
        allow_remote: status.allow_remote,
        sessions: status.sessions,
    }
}

pub async fn status(State(st): St) -> Json<WebStatusJson> {
    Json(status_json(st.web.status().await))
}

pub async fn settings(
    State(st): St,
    ApiJson(req): ApiJson<WebSettingsRequest>,
) -> Result<Json<WebStatusJson>, ApiError> {
    let status = if req.enabled {
        st.web
            .enable(st.clone(), req.listen.as_deref(), req.allow_remote)
            .await?
    } else {
        st.web.disable().await?
    };
    Ok(Json(status_json(status)))
}

pub async fn new_link(State(st): St) -> Result<(StatusCode, Json<WebLinkJson>), ApiError> {
    let (url, expires_at) = st.web.new_link().await?;
    Ok((StatusCode::CREATED, Json(WebLinkJson { url, expires_at })))
}

pub async fn sessions(State(st): St) -> Json<WebSessionListJson> {
    Json(WebSessionListJson {
        sessions: st
            .web
            .sessions()
            .into_iter()
            .map(|s| WebSessionJson {
                id: s.id,
                created_at: s.created_at,
                last_seen: s.last_seen,
                user_agent: s.user_agent,
                address: s.address,
            })
            .collect(),
    })
}

/// Ends the sessions whose id starts with `{session}`, or every one for `all`.
pub async fn revoke(
    State(st): St,
    ApiPath(session): ApiPath<String>,
) -> Result<Json<WebRevokedJson>, ApiError> {
    let id = (session != "all").then_some(session.as_str());
    let revoked = st.web.revoke(id);
    if revoked == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no linked browser {session}"),
        ));
    }
    Ok(Json(WebRevokedJson { revoked }))
}
