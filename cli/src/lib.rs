//! chatsync, the command-line client, as a library: the local API client ([`client`]) is shared
//! by the `chatsync` binary, the end-to-end tests and the benchmarks.
//!
//! Map: [`args`] (the command line), [`client`] (HTTP over the daemon's Unix socket),
//! [`commands`] (one module per command group), [`output`] (human and JSON output),
//! [`exit`] (exit codes, one per kind of failure).

pub mod args;
pub mod client;
pub mod commands;
pub mod exit;
pub mod output;
pub mod retry;
