//! chatsync, the command-line client, as a library for the `chatsync` binary. It talks to the
//! daemon through `chatsync_api::Client`.
//!
//! Map: [`args`] (the command line), [`commands`] (one module per command group), [`output`]
//! (human and JSON output), [`exit`] (exit codes, one per kind of failure), [`retry`] (writes
//! retried with an idempotency key).

pub mod args;
pub mod commands;
pub mod exit;
pub mod output;
pub mod retry;
