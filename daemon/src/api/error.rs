//! Errors as the API reports them: an HTTP status and `{"error":{"code","message"}}`, where
//! `code` is stable for programs to match on. Also the JSON and query extractors, so that a
//! malformed request gets the same error shape as everything else.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use chatsync_api::ErrorCode;
use serde::de::DeserializeOwned;

use super::wire::{ErrorBody, ErrorJson};
use crate::engine::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub candidates: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            candidates: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "API request failed");
        }
        let body = ErrorBody {
            error: ErrorJson {
                code: self.code,
                message: self.message,
                candidates: self.candidates,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
            }
            EngineError::Ambiguous { candidates, .. } => ApiError {
                candidates,
                ..ApiError::new(StatusCode::CONFLICT, ErrorCode::Ambiguous, message)
            },
            EngineError::Invalid(_) | EngineError::Misbehaviour(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Invalid, message)
            }
            EngineError::Forbidden(_) | EngineError::Equivocation(_) => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
            }
            EngineError::Gone(_) => ApiError::new(StatusCode::GONE, ErrorCode::Deleted, message),
            EngineError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyConflict,
                message,
            ),
            EngineError::StorageFull(_) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::StorageFull,
                message,
            ),
            EngineError::Storage(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Storage, message)
            }
            EngineError::Internal(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                message,
            ),
        }
    }
}

/// `axum::Json`, with rejections reported as [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        _ => ErrorCode::BadJson,
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body is larger than {} bytes",
            super::wire::MAX_BODY_BYTES
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "request body must be JSON (Content-Type: application/json)".to_string()
        }
        _ => r.body_text(),
    };
    // Unprocessable (valid JSON, wrong shape) is reported as a plain bad request.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, message)
}

/// `axum::extract::Query`, with rejections reported as [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadQuery,
                r.body_text(),
            )),
        }
    }
}

/// `axum::extract::Path`, with rejections reported as [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadPath,
                r.body_text(),
            )),
        }
    }
}
