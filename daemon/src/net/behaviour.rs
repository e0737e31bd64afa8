//! The libp2p behaviours chatsync runs, and how the swarm is built.

use std::time::Duration;

use libp2p::{
    Swarm, SwarmBuilder, connection_limits, dcutr, identify, identity::Keypair, mdns, noise, ping,
    relay, swarm::NetworkBehaviour, swarm::behaviour::toggle::Toggle, tcp, yamux,
};

use super::{
    gate::{Gate, Trusted, TrustedOnly},
    pair_protocol::{PairBehaviour, pair_behaviour},
};

/// Protocol version announced by identify; a peer with another major version is not chatsync.
pub const PROTOCOL_VERSION: &str = "/chatsync/1";
/// How often connections are pinged, and how long a ping may take before the link is dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC notices a dead link on its own after this long without packets.
const QUIC_IDLE_TIMEOUT_MS: u32 = 6_000;
/// Connections between devices are meant to stay up; liveness is ping's job, not idleness'.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Only roster devices (and, while pairing, a few others): see `gate.rs`.
    pub gate: Gate,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// The sync protocol's links (`links.rs`), on connections to roster devices only.
    pub sync: TrustedOnly<libp2p_stream::Behaviour>,
    pub pair: PairBehaviour,
    /// Relay mode (`chatsyncd --relay`): forwards circuits between other devices.
    pub relay: Toggle<relay::Behaviour>,
    /// Reservations on relays, and connections through them (`relay.rs`).
    pub relay_client: relay::client::Behaviour,
    /// Hole punching: turns a relayed connection into a direct one when the network allows.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// Streams of their own for attachments (`blobs.rs`), which checks who asks.
    pub streams: libp2p_stream::Behaviour,
}

pub fn build_swarm(
    keypair: Keypair,
    use_mdns: bool,
    relay_server: Option<relay::Config>,
    hole_punching: bool,
) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            // Nagle's algorithm alone would add tens of milliseconds to every small message.
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic_config(|mut c| {
            c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
            c.keep_alive_interval = Duration::from_secs(1);
            c
        })
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let trusted = Trusted::default();
            Ok(Behaviour {
                gate: Gate::new(trusted.clone()),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established_per_peer(Some(4))
                        .with_max_established(Some(256))
                        .with_max_pending_incoming(Some(32)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                        .with_agent_version(format!("chatsyncd/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(PING_INTERVAL)
                        .with_timeout(PING_TIMEOUT),
                ),
                mdns: Toggle::from(mdns),
                sync: TrustedOnly::new(libp2p_stream::Behaviour::new(), trusted),
                pair: pair_behaviour(),
                relay: Toggle::from(relay_server.map(|c| relay::Behaviour::new(peer_id, c))),
                relay_client,
                dcutr: Toggle::from(hole_punching.then(|| dcutr::Behaviour::new(peer_id))),
                streams: libp2p_stream::Behaviour::new(),
            })
        })?
        // Sync links and attachment transfers open streams of their own. With the default
        // negotiation the first bytes wait a round trip for the other side to confirm the
        // protocol; every device speaks the same protocols, so they go out with the proposal
        // instead (a protocol the other side lacks fails the stream, as a refusal would).
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}
