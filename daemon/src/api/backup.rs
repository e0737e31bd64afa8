//! The backup routes: set up, back up now, list, verify, restore (`crate::backup`).

use std::{path::Path, sync::Arc};

use age::secrecy::SecretString;
use axum::{Json, extract::State, http::StatusCode};
use chatsync_api::ErrorCode;

use super::{ApiError, AppState, error::ApiJson, wire::*};
use crate::backup::{BackupError, Secret};

type St = State<Arc<AppState>>;

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        let (status, code) = match &e {
            BackupError::WrongKey => (StatusCode::UNAUTHORIZED, ErrorCode::BackupWrongKey),
            BackupError::Damaged(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::BackupDamaged),
            BackupError::Unreachable(_) => (StatusCode::BAD_GATEWAY, ErrorCode::BackupUnreachable),
            BackupError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            BackupError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            BackupError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        ApiError::new(status, code, e.to_string())
    }
}

pub async fn status(State(st): St) -> Json<BackupStatusJson> {
    let status = st.backups.status();
    Json(BackupStatusJson {
        target: status.target,
        last_backup_at: status.last.as_ref().map(|l| l.at),
        last_snapshot: status.last.map(|l| l.snapshot),
        failure: status
            .failure
            .map(|(at, error)| BackupFailureJson { at, error }),
        next_at: status.next_at,
    })
}

pub async fn init(
    State(st): St,
    ApiJson(req): ApiJson<BackupInitRequest>,
) -> Result<(StatusCode, Json<BackupInitJson>), ApiError> {
    let secret = match (req.passphrase, req.recovery_key) {
        (Some(_), true) => {
            return Err(BackupError::Invalid(
                "give a passphrase or ask for a recovery key, not both".into(),
            )
            .into());
        }
        (Some(p), false) => Secret::Passphrase(SecretString::from(p)),
        (None, true) => Secret::NewRecoveryKey,
        (None, false) => {
            return Err(
                BackupError::Invalid("a passphrase or a recovery key is needed".into()).into(),
            );
        }
    };
    let cwd = req.cwd.as_deref().map(Path::new);
    let done = st.backups.init(&req.target, cwd, secret).await?;
    Ok((
        StatusCode::CREATED,
        Json(BackupInitJson {
            target: done.target,
            repository: done.repository,
            recovery_key: done.recovery_key,
        }),
    ))
}

pub async fn now(State(st): St) -> Result<(StatusCode, Json<BackupJson>), ApiError> {
    let report = st.backups.now().await?;
    Ok((
        StatusCode::CREATED,
        Json(BackupJson {
            snapshot: report.snapshot,
            seq: report.seq,
            chats: report.chats as u64,
            messages: report.messages,
            attachments: report.attachments,
            bytes_written: report.bytes_written,
            objects_written: report.objects_written as u64,
            elapsed_ms: report.elapsed_ms,
        }),
    ))
}

pub async fn snapshots(State(st): St) -> Result<Json<SnapshotListJson>, ApiError> {
    let snapshots = st.backups.snapshots().await?;
    Ok(Json(SnapshotListJson {
        snapshots: snapshots
            .into_iter()
            .map(|s| SnapshotJson {
                id: s.id,
                seq: s.seq,
                created_at: s.created_at,
                device: s.device,
                chats: s.chats as u64,
                messages: s.messages,
                bytes: s.bytes,
            })
            .collect(),
    }))
}

pub async fn verify(
    State(st): St,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<VerifyJson>, ApiError> {
    let report = st.backups.verify(req.snapshot.as_deref()).await?;
    Ok(Json(VerifyJson {
        snapshots: report.snapshots as u64,
        objects: report.objects as u64,
        bytes: report.bytes,
        elapsed_ms: report.elapsed_ms,
    }))
}

pub async fn restore(
    State(st): St,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<Json<RestoreJson>, ApiError> {
    let secret = match (req.passphrase, req.recovery_key) {
        (Some(p), None) => Secret::Passphrase(SecretString::from(p)),
        (None, Some(key)) => Secret::RecoveryKey(key),
        _ => {
            return Err(BackupError::Invalid(
                "give either the passphrase or the recovery key".into(),
            )
            .into());
        }
    };
    let cwd = req.cwd.as_deref().map(Path::new);
    let report = st
        .backups
        .restore(&req.target, cwd, secret, req.snapshot.as_deref())
        .await?;
    Ok(Json(RestoreJson {
        snapshot: report.snapshot,
        restored: report.restored as u64,
        already_here: report.already_here as u64,
        merged_messages: report.merged_messages as u64,
        not_merged: report.not_merged as u64,
        messages: report.messages,
        attachments: report.attachments as u64,
        attachments_skipped: report.attachments_skipped as u64,
        elapsed_ms: report.elapsed_ms,
    }))
}
