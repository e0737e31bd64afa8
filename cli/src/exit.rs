//! Exit codes. Each kind of failure has its own, so scripts can tell them apart
//! (documented in the README, and in `chatsync --help`).

use std::process::ExitCode;

use chatsync_api::{ClientError, ErrorCode};

pub const OK: u8 = 0;
/// Anything not covered below.
pub const FAILURE: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
/// The daemon is not running (or its socket does not answer).
pub const NOT_RUNNING: u8 = 3;
/// The chat or message does not exist (or the attachment is not on this device).
pub const NOT_FOUND: u8 = 4;
/// A name matched several chats or messages.
pub const AMBIGUOUS: u8 = 5;
/// The daemon refused the request (invalid input, not allowed, deleted message).
pub const REFUSED: u8 = 6;
/// The daemon could not store the change.
pub const STORAGE: u8 = 7;
/// The daemon refused the change because its disk is nearly full, or an attachment would not
/// fit in its attachment quota (nothing was stored; the same command succeeds once space is
/// freed).
pub const STORAGE_FULL: u8 = 11;
/// `join`: the ticket is not valid (damaged, expired, already used, or refused by the
/// inviting device).
pub const TICKET: u8 = 8;
/// `join`: the inviting device could not be reached; `attachment get`: no connected device has
/// the attachment, or its transfer was cut.
pub const UNREACHABLE: u8 = 9;
/// `pair`: the ticket expired before a device joined; `join`: the chats had not all arrived
/// when it stopped waiting (they keep arriving in the background).
pub const TIMED_OUT: u8 = 10;
/// `backup`: the passphrase or recovery key does not open the backup.
pub const WRONG_KEY: u8 = 12;
/// `backup`: the backup is damaged (an object altered, truncated, swapped, missing, or rolled
/// back); nothing was restored from the damaged part.
pub const DAMAGED: u8 = 13;
/// `backup`: the backup target cannot be reached.
pub const TARGET_UNREACHABLE: u8 = 14;
/// Interrupted (Ctrl-C); `pair` cancels its ticket first.
pub const INTERRUPTED: u8 = 130;

/// A failure that carries its own exit code (for outcomes that are not API errors).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn error(code: u8, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
        })
    }
}

/// An error as reported: its exit code, a name for it (the API's error code when the daemon
/// answered one), what went wrong, and what to do.
struct Reported {
    exit: u8,
    code: &'static str,
    message: String,
    candidates: Vec<String>,
    hint: Option<String>,
}

/// Prints an error the way every command does, and returns its exit code: `error: ...` lines
/// on stderr, or with `--json` one object, `{"error": {"code", "message", "exit", ...}}`.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let reported = describe(err);
    if json {
        let object = serde_json::json!({
            "error": {
                "code": reported.code,
                "message": reported.message,
                "exit": reported.exit,
                "candidates": reported.candidates,
                "hint": reported.hint,
            }
        });
        eprintln!("{object}");
    } else {
        eprintln!("error: {}", reported.message);
        for c in &reported.candidates {
            eprintln!("  {c}");
        }
        if let Some(hint) = &reported.hint {
            eprintln!("hint: {hint}");
        }
    }
    ExitCode::from(reported.exit)
}

/// A name for an exit code, for errors that are not the daemon's answers.
fn code_name(exit: u8) -> &'static str {
    match exit {
        USAGE => "usage",
        NOT_RUNNING => "not_running",
        NOT_FOUND => "not_found",
        AMBIGUOUS => "ambiguous",
        REFUSED => "refused",
        STORAGE => "storage",
        STORAGE_FULL => "storage_full",
        TICKET => "ticket",
        UNREACHABLE => "unreachable",
        TIMED_OUT => "timed_out",
        WRONG_KEY => "backup_wrong_key",
        DAMAGED => "backup_damaged",
        TARGET_UNREACHABLE => "backup_unreachable",
        INTERRUPTED => "interrupted",
        _ => "failure",
    }
}

fn describe(err: &anyhow::Error) -> Reported {
    if let Some(f) = err.downcast_ref::<Failure>() {
        return Reported {
            exit: f.code,
            code: code_name(f.code),
            message: f.message.clone(),
            candidates: Vec::new(),
            hint: None,
        };
    }
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::NotRunning { socket }) => Reported {
            exit: NOT_RUNNING,
            code: code_name(NOT_RUNNING),
            message: format!("the chatsync daemon is not running (no answer on {socket})"),
            candidates: Vec::new(),
            hint: Some("start it with `chatsync daemon start`".into()),
        },
        Some(ClientError::Api {
            code,
            message,
            candidates,
            ..
        }) => Reported {
            exit: exit_code(*code),
            code: code.as_str(),
            message: message.clone(),
            candidates: candidates.clone(),
            hint: hint(*code).map(str::to_string),
        },
        _ => Reported {
            exit: FAILURE,
            code: code_name(FAILURE),
            message: format!("{err:#}"),
            candidates: Vec::new(),
            hint: None,
        },
    }
}

/// The exit code of an error the daemon answered.
fn exit_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::NotFound | ErrorCode::AttachmentNotHere => NOT_FOUND,
        ErrorCode::Ambiguous => AMBIGUOUS,
        ErrorCode::Storage => STORAGE,
        ErrorCode::StorageFull | ErrorCode::QuotaExceeded => STORAGE_FULL,
        ErrorCode::Invalid
        | ErrorCode::Forbidden
        | ErrorCode::Deleted
        | ErrorCode::TooLarge
        | ErrorCode::BadJson
        | ErrorCode::IdempotencyConflict
        | ErrorCode::TooManyInvites
        | ErrorCode::WebOff
        | ErrorCode::WebListen => REFUSED,
        ErrorCode::TicketInvalid
        | ErrorCode::TicketExpired
        | ErrorCode::TicketUsed
        | ErrorCode::TicketRefused => TICKET,
        ErrorCode::InviterUnreachable
        | ErrorCode::AttachmentUnavailable
        | ErrorCode::TransferInterrupted => UNREACHABLE,
        ErrorCode::BackupWrongKey => WRONG_KEY,
        ErrorCode::BackupDamaged => DAMAGED,
        ErrorCode::BackupUnreachable => TARGET_UNREACHABLE,
        ErrorCode::Internal
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::BadQuery
        | ErrorCode::BadPath
        | ErrorCode::NoRoute
        | ErrorCode::MethodNotAllowed
        | ErrorCode::BrowserRefused
        | ErrorCode::Unauthorized
        | ErrorCode::WrongHost
        | ErrorCode::CrossOrigin
        | ErrorCode::Network
        | ErrorCode::JoinFailed
        | ErrorCode::Unknown => FAILURE,
    }
}

/// What to do about an error the daemon answered, when there is something to say.
fn hint(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::AttachmentUnavailable => {
            Some("no connected device has it; try again when the device that posted it is online")
        }
        ErrorCode::TransferInterrupted => {
            Some("run the same command again: the transfer resumes where it stopped")
        }
        ErrorCode::QuotaExceeded => Some(
            "free some space for attachments, or raise `quota_mib` under [attachments] in the \
             daemon's configuration",
        ),
        _ => None,
    }
}
