//! chatsyncd, the chatsync daemon, as a library: the `chatsyncd` binary is a thin wrapper
//! around [`run`], and tests and benchmarks start it in-process or as a real process.
//!
//! Map of the crate (each module's docs say why it is built the way it is):
//! - [`paths`]: where files live (platform directories, or everything under `--home`).
//! - [`config`]: the config file and `chatsyncd` flags.
//! - [`identity`]: the device key; its public key is the device id.
//! - [`store`]: sled, the only module that knows it; chat documents as a base plus chunks.
//! - [`engine`]: the chats, the rules of changing them, group commit, the memory budget.
//! - [`net`]: the network task that owns the libp2p swarm: connections to trusted devices.
//! - [`pairing`]: one-time pairing tickets, the proof of holding one, open invitations.
//! - [`backup`]: encrypted backups to a directory, S3 or WebDAV, and restores from them.
//! - [`web`]: the web client: its pages, the browsers linked to it, and the guard in front.
//! - [`files`]: small private files beside the store (settings, secrets).
//! - [`metrics`]: the daemon's metrics in the format Prometheus scrapes.
//! - [`api`]: the local HTTP/JSON API on a Unix socket; the only module that knows the wire
//!   format ([`api::wire`], shared with the CLI).
//! - [`daemon`]: start-up, signal handling and graceful shutdown.
//! - [`service`]: readiness and watchdog for a service manager (systemd `Type=notify`).

pub mod api;
pub mod backup;
pub mod blobs;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod files;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod pairing;
pub mod paths;
pub mod service;
pub mod store;
pub mod web;

pub use daemon::run;
