//! `Idempotency-Key`: a client-chosen key on a write that creates something (a post, a chat),
//! so that a request retried after a lost answer is applied once and answered with the same
//! result. The key decides the new message's or chat's id (`engine::keyed_id`), so a retry
//! finds what the first attempt made, across restarts too, with nothing to remember.

use axum::{
    extract::FromRequestParts,
    http::{StatusCode, request::Parts},
};
use chatsync_api::ErrorCode;

use super::error::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Longest key accepted.
const MAX_KEY_BYTES: usize = 64;

/// The request's idempotency key, if it has one.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(IdempotencyKey(None));
        };
        let key = value.to_str().ok().filter(|k| valid(k)).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Invalid,
                format!(
                    "an Idempotency-Key is 1 to {MAX_KEY_BYTES} letters, digits, '-', '_', \
                         '.' or ':'"
                ),
            )
        })?;
        Ok(IdempotencyKey(Some(key.to_string())))
    }
}

fn valid(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_plain_text() {
        assert!(valid("3f2a-retry:1"));
        assert!(!valid(""));
        assert!(!valid(&"a".repeat(65)));
        assert!(!valid("with space"));
        assert!(!valid("ünï"));
    }
}
