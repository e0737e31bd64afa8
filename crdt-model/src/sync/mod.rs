//! The sync protocol between devices, as a state machine with no IO: no network, no tasks, no
//! clock (every input carries `now`), no randomness.
//!
//! [`SyncCore`] decides what to send to whom and what to do with what arrives: summaries on
//! connect and every 30 s, sync sessions per device and chat, whole-chat fetches, large payloads
//! pulled in parts and resumed across connections, slow-down pauses, early re-checks and the
//! restart of stalled sessions. Its inputs are method calls (a device came or went, a request
//! or an answer arrived, document work finished, a timer tick); its outputs ([`Output`]) are
//! requests and answers to put on the wire and document work to do ([`Work`]), whose results
//! come back as inputs.
//!
//! Why: everything here used to live in the daemon's network task, bound to the libp2p swarm,
//! spawned tasks and the wall clock, and every timing bug in it was found by running real
//! daemons. Now the daemon (`daemon/src/net/sessions.rs`) is a thin driver of this core, and
//! the simulator (`crdt-model/tests/simulator`) drives the very same core over a simulated
//! network with virtual time, crashes and partitions, for thousands of seeds.
//!
//! Map:
//! - [`wire`]: the protocol's messages and limits.
//! - [`sessions`]: [`SyncCore`], inputs and outputs.
//! - [`running`]: sessions under way with each device (a cap per device, the rest in line).
//! - [`outbound`]: requests on their way (a cap per device, queues, slow-down pauses).
//! - [`transfers`]: large payloads announced and pulled in parts.
//! - [`resume`]: pulls cut with their connection, kept to go on later.
//! - [`progress`]: how far each device is from this one (for status, and to find stalls).

pub mod outbound;
pub mod progress;
pub mod resume;
pub mod running;
pub mod sessions;
pub mod transfers;
pub mod wire;

use std::{fmt, hash::Hash};

pub use outbound::{Request, Token};
pub use progress::Comparison;
pub use sessions::{Failure, Output, Response, SyncCore, Work};

/// Devices tracked at most by the core's per-device state.
pub const MAX_PEERS: usize = 1024;

/// What names a device to the core: a libp2p peer id in the daemon, an index in the simulator.
pub trait PeerKey: Copy + Eq + Hash + Ord + fmt::Debug + fmt::Display {}

impl<T: Copy + Eq + Hash + Ord + fmt::Debug + fmt::Display> PeerKey for T {}
