//! The pairing routes: `POST /v1/invites` and `DELETE /v1/invites/{invite}` on the inviting
//! device, `POST /v1/join` on the device that joins. A join's failures have their own stable
//! codes (`ticket_invalid`, `ticket_expired`, `ticket_used`, `ticket_refused`,
//! `inviter_unreachable`), so that programs and the CLI can tell a person what to do next.

use chatsync_api::ErrorCode;
use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode};
use chatsync_model::limits::MAX_DEVICE_NAME_BYTES;

use super::{
    ApiError, AppState,
    error::{ApiJson, ApiPath},
    wire::{CreateInviteRequest, InviteCancelledJson, InviteJson, JoinRequest, JoinedJson},
};
use crate::{
    net::pairing::{InviteError, JoinError, parse_invite_id},
    pairing::{ticket::Ticket, unix_now},
};

/// Lifetime of an invitation when the request names none.
pub const DEFAULT_EXPIRES_SECS: u64 = 600;
/// Longest lifetime of an invitation.
pub const MAX_EXPIRES_SECS: u64 = 24 * 3600;

type St = State<Arc<AppState>>;

pub async fn create_invite(
    State(st): St,
    ApiJson(req): ApiJson<CreateInviteRequest>,
) -> Result<(StatusCode, Json<InviteJson>), ApiError> {
    let expires_secs = req.expires_secs.unwrap_or(DEFAULT_EXPIRES_SECS);
    if !(1..=MAX_EXPIRES_SECS).contains(&expires_secs) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("expires_secs must be between 1 and {MAX_EXPIRES_SECS}"),
        ));
    }
    let created = st.network.invite(expires_secs).await.map_err(|e| match e {
        InviteError::TooMany(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyInvites,
            e.to_string(),
        ),
        InviteError::NoAddress | InviteError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Network,
            e.to_string(),
        ),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(InviteJson {
            ticket: created.ticket.to_text(),
            expires_at: i64::try_from(created.ticket.expires_at)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            invite: hex::encode(created.invite),
        }),
    ))
}

pub async fn cancel_invite(
    State(st): St,
    ApiPath(invite): ApiPath<String>,
) -> Result<Json<InviteCancelledJson>, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no open invitation {invite:?}"),
        )
    };
    let id = parse_invite_id(&invite).ok_or_else(not_found)?;
    if !st.network.cancel_invite(id).await {
        return Err(not_found());
    }
    Ok(Json(InviteCancelledJson {
        invite,
        cancelled: true,
    }))
}

pub async fn join(
    State(st): St,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<JoinedJson>, ApiError> {
    let ticket = Ticket::from_text(&req.ticket).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::TicketInvalid,
            e.to_string(),
        )
    })?;
    // Checked here too, so that an expired ticket is refused without dialling anyone.
    if ticket.expired(unix_now()) {
        return Err(join_error(JoinError::Expired));
    }
    let name = match req.name.as_deref().map(str::trim) {
        Some(n) if n.is_empty() || n.len() > MAX_DEVICE_NAME_BYTES => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Invalid,
                format!("a device name must be 1 to {MAX_DEVICE_NAME_BYTES} bytes"),
            ));
        }
        Some(n) => n.to_string(),
        None => st.engine.device_name(),
    };
    let joined = st.network.join(ticket, name).await.map_err(join_error)?;
    Ok(Json(JoinedJson {
        device_id: joined.device.to_string(),
        name: joined.name,
    }))
}

fn join_error(e: JoinError) -> ApiError {
    let message = e.to_string();
    let (status, code) = match e {
        JoinError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::TicketInvalid),
        JoinError::Expired => (StatusCode::GONE, ErrorCode::TicketExpired),
        JoinError::Used => (StatusCode::GONE, ErrorCode::TicketUsed),
        JoinError::Refused(_) => (StatusCode::FORBIDDEN, ErrorCode::TicketRefused),
        JoinError::Unreachable(_) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::InviterUnreachable),
        JoinError::Failed(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::JoinFailed),
    };
    ApiError::new(status, code, message)
}
