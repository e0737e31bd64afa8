//! The chatsync daemon's local API, for both of its sides: every wire type ([`wire`]), the
//! error codes ([`ErrorCode`]), and a [`Client`] with its event stream. The daemon serves these
//! types; the CLI, the tests, the benchmarks and any Rust program talk to it through the
//! client. docs/api.md is the reference for the format.
//!
//! No libp2p, no store, and no runtime of its own: the client runs on the caller's tokio.

pub mod client;
mod error;
pub mod wire;

pub use client::{Client, ClientError, EventStream};
pub use error::ErrorCode;
