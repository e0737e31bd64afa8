//! What chatsync's tests and benchmarks share, so that none of them defines its own:
//!
//! - [`TestDaemon`]: one daemon on a temporary home, run in this process (`serve`, for tests
//!   that look inside or restart it quickly) or as the real `chatsyncd` binary (for tests and
//!   benchmarks that kill it or measure it). Either way it is driven through the real client,
//!   `chatsync_api::Client`.
//! - [`binary`]: the one way to start the real `chatsyncd` as a child process.
//! - [`engine`]: an engine alone, for bytes handed to it directly.
//! - [`home`]: temporary homes and loopback-only network settings.
//! - [`eventually`] and [`eventually_blocking`]: the one way to wait for something.
//! - [`pair_by_ticket`], [`pair_by_address`], [`pair_through_relay`]: two daemons in one mesh,
//!   as a user pairs them, by address, or through a relay ([`start_relay`]).
//! - [`raw`]: HTTP below the client, for tests of the wire itself (bad requests, exact JSON,
//!   the event stream's lines).
//! - [`openmetrics`]: a metrics scrape read and checked as a scraper reads it.
//! - [`rclone`]: S3 and WebDAV servers on loopback, for backups.
//! - [`browser`]: headless Chromium driven over WebDriver, for the web client.
#![allow(clippy::unwrap_used)]

pub mod binary;
pub mod browser;
mod daemon;
pub mod engine;
pub mod home;
pub mod openmetrics;
mod pair;
pub mod raw;
pub mod rclone;
mod wait;

pub use daemon::{DEVICE_NAME, TestDaemon};
pub use pair::{pair_by_address, pair_by_ticket, pair_through_relay, start_relay, wait_connected};
pub use wait::{eventually, eventually_blocking};

/// Milliseconds since the Unix epoch, like the daemon's clock.
pub fn now_ms() -> i64 {
    chatsync_daemon::engine::now_ms()
}

/// Whether `s` looks like an id the daemon makes: 32 lowercase hex digits.
pub fn is_daemon_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
