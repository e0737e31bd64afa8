//! The API's error codes: the stable, machine-readable `code` of every error answer
//! (`{"error":{"code","message"}}`), with the HTTP status each comes with. docs/api.md lists
//! them for everyone else.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 404: no such chat, message or device.
    NotFound,
    /// 409: a name matched several chats or messages (`candidates` lists them).
    Ambiguous,
    /// 400: the request is not valid.
    Invalid,
    /// 403: not allowed (another device's message, say).
    Forbidden,
    /// 410: the message is deleted.
    Deleted,
    /// 409: an `Idempotency-Key` already used for a different request.
    IdempotencyConflict,
    /// 507: the store's disk is below its reserve; nothing was changed.
    StorageFull,
    /// 503: the store could not write; writes are refused until chatsyncd restarts.
    Storage,
    /// 500.
    Internal,
    /// 413: the request body is too large.
    TooLarge,
    /// 415: the request body is not JSON.
    UnsupportedMediaType,
    /// 400: the body is not JSON of the right shape.
    BadJson,
    /// 400: the query string is not valid.
    BadQuery,
    /// 400: a path segment is not valid.
    BadPath,
    /// 404: no such route.
    NoRoute,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 403: the request came from a web page.
    BrowserRefused,
    /// 429: too many invitations open.
    TooManyInvites,
    /// 503: the network is not running or listens nowhere.
    Network,
    /// 400: the ticket is damaged or not a ticket.
    TicketInvalid,
    /// 410: the ticket expired.
    TicketExpired,
    /// 410: the ticket was used already.
    TicketUsed,
    /// 403: the inviting device refused the ticket.
    TicketRefused,
    /// 504: the inviting device did not answer.
    InviterUnreachable,
    /// 503: the join could not be recorded.
    JoinFailed,
    /// 401: the passphrase or recovery key does not open the backup.
    BackupWrongKey,
    /// 422: the backup is damaged: an object altered, truncated, swapped, missing or rolled back.
    BackupDamaged,
    /// 502: the backup target cannot be read or written.
    BackupUnreachable,
    /// 401 (web client): this browser is not linked, or its session ended.
    Unauthorized,
    /// 421 (web client): the `Host` header names no address of this server.
    WrongHost,
    /// 403 (web client): a write from a page that is not this server's.
    CrossOrigin,
    /// 409: the web client is off (`chatsync web enable`).
    WebOff,
    /// 409: the web client cannot listen where asked (the address is in use, say).
    WebListen,
    /// 404: the attachment's bytes are not on this device (fetch them first).
    AttachmentNotHere,
    /// 503: no connected device has the attachment; it is fetched when one that has it connects.
    AttachmentUnavailable,
    /// 503: the attachment's transfer was cut; it resumes from where it stopped.
    TransferInterrupted,
    /// 507: the attachment would not fit in this device's attachment quota.
    QuotaExceeded,
    /// A code this version does not know (from a newer daemon), or an answer that was not an
    /// API error at all.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Deleted => "deleted",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Storage => "storage",
            ErrorCode::Internal => "internal",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadQuery => "bad_query",
            ErrorCode::BadPath => "bad_path",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BrowserRefused => "browser_refused",
            ErrorCode::TooManyInvites => "too_many_invites",
            ErrorCode::Network => "network",
            ErrorCode::TicketInvalid => "ticket_invalid",
            ErrorCode::TicketExpired => "ticket_expired",
            ErrorCode::TicketUsed => "ticket_used",
            ErrorCode::TicketRefused => "ticket_refused",
            ErrorCode::InviterUnreachable => "inviter_unreachable",
            ErrorCode::JoinFailed => "join_failed",
            ErrorCode::BackupWrongKey => "backup_wrong_key",
            ErrorCode::BackupDamaged => "backup_damaged",
            ErrorCode::BackupUnreachable => "backup_unreachable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::WrongHost => "wrong_host",
            ErrorCode::CrossOrigin => "cross_origin",
            ErrorCode::WebOff => "web_off",
            ErrorCode::WebListen => "web_listen",
            ErrorCode::AttachmentNotHere => "attachment_not_here",
            ErrorCode::AttachmentUnavailable => "attachment_unavailable",
            ErrorCode::TransferInterrupted => "transfer_interrupted",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_written_as_it_is_named() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::IdempotencyConflict,
            ErrorCode::StorageFull,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::TicketRefused,
            ErrorCode::InviterUnreachable,
            ErrorCode::BackupWrongKey,
            ErrorCode::BackupDamaged,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(),
            ErrorCode::Unknown
        );
    }
}
