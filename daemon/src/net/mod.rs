//! The network: one task owns the libp2p `Swarm`; everything else talks to it through a
//! bounded command channel ([`Network`]) and hears from it through the engine's events.
//!
//! What it does: listens (TCP and QUIC, Noise, Yamux), finds devices on the LAN with mDNS, keeps
//! connections to configured peers and to devices it remembers reaching (`remembered.rs`), and
//! lets only devices in the roster connect — anyone else is refused right after the encrypted
//! handshake, before any protocol runs (except, while an invitation is open, devices that come to
//! pair: see `gate.rs`). Liveness: ping every few seconds, a failed ping closes the connection,
//! and known devices are redialled with exponential backoff. Chat sync runs over these
//! connections (`sessions.rs`), within a budget per device (`conduct.rs`). Devices apart meet
//! through relays, and try to punch a hole to each other (`relay.rs`); a daemon can be a relay
//! itself.
//!
//! Why one task: the `Swarm` is not shareable, and a single owner makes every state change
//! (dials, trust updates, connection book-keeping) sequential and easy to reason about.

mod behaviour;
pub mod blobs;
mod conduct;
mod gate;
mod links;
mod pair_protocol;
pub mod pairing;
pub mod peers;
pub mod protocol;
pub mod relay;
mod remembered;
mod roster;
mod sessions;
mod task;

use chatsync_model::DeviceId;
use libp2p::{Multiaddr, identity::Keypair};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    config::NetworkConfig,
    engine::{Engine, SyncStatus},
};

pub use behaviour::PROTOCOL_VERSION;

/// Commands waiting for the network task, at most.
const COMMAND_QUEUE: usize = 64;

/// One device the network knows: trusted, or connected.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub device: DeviceId,
    /// Connected and accepted by the other side.
    pub connected: bool,
    /// Addresses it was reached at or can be dialled at.
    pub addresses: Vec<Multiaddr>,
    /// The transport of the connection shown (a direct one if any, else the oldest).
    pub transport: Option<peers::Transport>,
    /// How that connection reaches the device.
    pub path: Option<relay::Path>,
    /// The relay it goes through, when relayed.
    pub relay: Option<String>,
    /// Whether it was opened by hole punching from a relayed connection.
    pub hole_punched: bool,
    /// Live connections to the device (briefly two while a relayed one gives way).
    pub connections: usize,
    /// Hole punching attempts that failed since this daemon started.
    pub hole_punch_failures: u32,
    /// Whether this device dialled it (rather than being dialled).
    pub outbound: Option<bool>,
    /// When the current connection was established (ms since the Unix epoch).
    pub connected_since: Option<i64>,
    /// Latest ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// When a sync exchange with it last completed (ms since the Unix epoch).
    pub last_sync: Option<i64>,
    /// Chats where it has changes this device lacks (known while connected).
    pub chats_behind: Option<usize>,
    /// Chats where this device has changes it lacks (known while connected).
    pub chats_ahead: Option<usize>,
    /// Sync payload bytes sent to it and received from it since this daemon started.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Requests and answers from it this device refused without blame since it started, and
    /// data from it that no honest device sends (`conduct.rs`).
    pub refusals: u64,
    pub offences: u64,
    /// Until when it is refused for misconduct (ms since the Unix epoch): see `conduct.rs`.
    pub suspended_until: Option<i64>,
}

/// This device's sync state over all connected devices.
#[derive(Clone, Debug, Default)]
pub struct SyncState {
    pub state: SyncStatus,
    pub peers_connected: usize,
    pub peers_trusted: usize,
    /// Chats where some connected device has changes this one lacks.
    pub chats_behind: usize,
    /// Chats where some connected device lacks changes this one has.
    pub chats_ahead: usize,
    /// Sync sessions under way.
    pub sessions: usize,
    /// When a sync exchange with any device last completed (ms since the Unix epoch).
    pub last_sync: Option<i64>,
}

enum Command {
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    SyncState(oneshot::Sender<SyncState>),
    Pair(pairing::PairCommand),
    Relay(oneshot::Sender<relay::RelayStatus>),
}

/// Handle to the network task.
#[derive(Clone, Debug)]
pub struct Network {
    tx: mpsc::Sender<Command>,
    /// Attachment transfers (`blobs.rs`).
    pub blobs: blobs::BlobService,
}

impl Network {
    /// Builds the swarm, starts listening and spawns the network task, and the attachment
    /// transfers beside it. They run until `shutdown` is cancelled.
    pub fn start(
        keypair: Keypair,
        config: NetworkConfig,
        engine: std::sync::Arc<Engine>,
        blob_store: std::sync::Arc<crate::blobs::Blobs>,
        blob_policy: blobs::BlobPolicy,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Network, tokio::task::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let mut task = task::NetworkTask::new(keypair, config, engine.clone(), rx)?;
        let blobs = blobs::BlobService::new(
            task.swarm.behaviour().streams.new_control(),
            blob_store,
            engine,
            tx.clone(),
            task.internal.clone(),
            blob_policy,
            shutdown.clone(),
        );
        blobs.start()?;
        task.links.start()?;
        let handle = tokio::spawn(task.run(shutdown));
        Ok((Network { tx, blobs }, handle))
    }

    /// Every trusted or connected device.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        self.ask(Command::Peers).await.unwrap_or_default()
    }

    /// The addresses this device listens on.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// This device's sync state; `offline` if the network task is gone.
    pub async fn sync_state(&self) -> SyncState {
        self.ask(Command::SyncState).await.unwrap_or(SyncState {
            state: SyncStatus::Offline,
            ..SyncState::default()
        })
    }

    /// Reservations on relays, and relay mode's state.
    pub async fn relay_status(&self) -> relay::RelayStatus {
        self.ask(Command::Relay).await.unwrap_or_default()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }
}
