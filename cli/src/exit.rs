//! Exit codes. Each kind of failure has its own, so scripts can tell them apart
//! (documented in the README and docs/cli.md).

use std::process::ExitCode;

use crate::client::ClientError;

pub const OK: u8 = 0;
/// Anything not covered below.
pub const FAILURE: u8 = 1;
/// Bad command line (clap's own code).
pub const USAGE: u8 = 2;
/// The daemon is not running (or its socket does not answer).
pub const NOT_RUNNING: u8 = 3;
/// The chat or message does not exist.
pub const NOT_FOUND: u8 = 4;
/// A name matched several chats or messages.
pub const AMBIGUOUS: u8 = 5;
/// The daemon refused the request (invalid input, not allowed, deleted message).
pub const REFUSED: u8 = 6;
/// The daemon could not store the change.
pub const STORAGE: u8 = 7;

/// Prints an error the way every command does, and returns its exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let code = match err.downcast_ref::<ClientError>() {
        Some(ClientError::NotRunning { socket }) => {
            eprintln!("error: the chatsync daemon is not running (no answer on {socket})");
            eprintln!("hint: start it with `chatsync daemon start`");
            NOT_RUNNING
        }
        Some(ClientError::Api {
            code,
            message,
            candidates,
            ..
        }) => {
            eprintln!("error: {message}");
            for c in candidates {
                eprintln!("  {c}");
            }
            match code.as_str() {
                "not_found" => NOT_FOUND,
                "ambiguous" => AMBIGUOUS,
                "storage" => STORAGE,
                "invalid" | "forbidden" | "deleted" | "too_large" | "bad_json" => REFUSED,
                _ => FAILURE,
            }
        }
        _ => {
            eprintln!("error: {err:#}");
            FAILURE
        }
    };
    ExitCode::from(code)
}
