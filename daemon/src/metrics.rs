//! The daemon's metrics, in the OpenMetrics text format that Prometheus scrapes
//! (`GET /metrics` on the local socket, and on a TCP address when `[metrics] listen` is set;
//! docs/api.md lists every metric).
//!
//! Two kinds: what happens (posts, durable-write and apply latencies, messages received) is
//! counted as it happens, by the engine and the committer, in [`Metrics`]; what is (chats,
//! memory, store, devices, connections, sync traffic, offences) is read at each scrape from the
//! same sources as `status` and `peers`, so the two can never disagree.

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{
    engine::EngineStats,
    net::{PeerInfo, SyncState, relay::Path},
};

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every metric's name starts with this.
const PREFIX: &str = "chatsync";

/// What this device wrote: `post`, `edit`, `delete` or `reaction`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteKind {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// Counters and histograms updated as the daemon works (cheap to clone: every clone counts
/// into the same metrics).
#[derive(Clone)]
pub struct Metrics {
    /// Messages written on this device, by kind.
    pub writes: Family<WriteKind, Counter>,
    /// From a write's submission to the committer until it is durable (flushed), in seconds.
    pub durable_write_seconds: Histogram,
    /// Messages that other devices' changes added or changed here.
    pub messages_received: Counter,
    /// Checking and applying one received sync message, in seconds.
    pub apply_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            writes: Family::default(),
            // 50 µs to about 1.6 s.
            durable_write_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            messages_received: Counter::default(),
            apply_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl Metrics {
    pub fn count_write(&self, kind: &'static str) {
        self.writes.get_or_create(&WriteKind { kind }).inc();
    }
}

/// What `status` and `peers` show, read for one scrape.
pub struct Snapshot {
    pub stats: EngineStats,
    pub memory_budget_bytes: u64,
    pub uptime_seconds: f64,
    pub sync: SyncState,
    pub peers: Vec<PeerInfo>,
}

/// One scrape: every metric, in the OpenMetrics text format.
pub fn render(metrics: &Metrics, snapshot: &Snapshot) -> String {
    let mut counted = Registry::with_prefix(PREFIX);
    counted.register(
        "writes",
        "Messages written on this device, by kind (post, edit, delete, reaction)",
        metrics.writes.clone(),
    );
    counted.register_with_unit(
        "durable_write",
        "From a write's submission until it is flushed to disk",
        Unit::Seconds,
        metrics.durable_write_seconds.clone(),
    );
    counted.register(
        "messages_received",
        "Messages other devices' changes added or changed on this device (all of a chat received whole)",
        metrics.messages_received.clone(),
    );
    counted.register_with_unit(
        "apply",
        "Checking and applying one sync message from another device",
        Unit::Seconds,
        metrics.apply_seconds.clone(),
    );
    let read = snapshot_registry(snapshot);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = text::encode_registry(&mut out, &counted)
        .and_then(|()| text::encode_registry(&mut out, &read))
        .and_then(|()| text::encode_eof(&mut out));
    out
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn snapshot_registry(s: &Snapshot) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let gauges = [
        ("chats", "Chats on this device", count(s.stats.chats)),
        (
            "chats_loaded",
            "Chats held in memory",
            count(s.stats.loaded_chats),
        ),
        (
            "chats_loaded_bytes",
            "Estimated memory of the chats held in memory",
            as_i64(s.stats.loaded_bytes_estimate),
        ),
        (
            "memory_budget_bytes",
            "Memory the chats held in memory may take before the least recently used are unloaded",
            as_i64(s.memory_budget_bytes),
        ),
        (
            "store_bytes",
            "Size of the store on disk",
            as_i64(s.stats.store_bytes),
        ),
        (
            "store_healthy",
            "1 while the store takes writes, 0 once a write failed",
            i64::from(s.stats.store_healthy),
        ),
        (
            "store_full",
            "1 while new writes are refused for want of disk space",
            i64::from(s.stats.store_full),
        ),
        (
            "uptime_seconds",
            "Seconds since the daemon started",
            s.uptime_seconds as i64,
        ),
        (
            "devices_trusted",
            "Devices in the roster besides this one",
            count(s.sync.peers_trusted),
        ),
        (
            "devices_connected",
            "Roster devices connected now",
            count(s.sync.peers_connected),
        ),
        (
            "sync_sessions",
            "Sync sessions under way",
            count(s.sync.sessions),
        ),
        (
            "chats_behind",
            "Chats another connected device has changes of that this one lacks",
            count(s.sync.chats_behind),
        ),
        (
            "chats_ahead",
            "Chats this device has changes of that a connected device lacks",
            count(s.sync.chats_ahead),
        ),
    ];
    for (name, help, value) in gauges {
        gauge(&mut r, name, help, value);
    }
    if let Some(free) = s.stats.store_free_bytes {
        gauge(
            &mut r,
            "store_free_bytes",
            "Free space on the store's disk",
            as_i64(free),
        );
    }

    let connections = Family::<PathLabel, Gauge>::default();
    for path in ["lan", "direct", "relayed"] {
        connections.get_or_create(&PathLabel { path }).set(0);
    }
    let (sent, received, refusals, offences) = (
        Family::<DeviceLabel, Counter>::default(),
        Family::<DeviceLabel, Counter>::default(),
        Family::<DeviceLabel, Counter>::default(),
        Family::<DeviceLabel, Counter>::default(),
    );
    let (connected, suspended) = (
        Family::<DeviceLabel, Gauge>::default(),
        Family::<DeviceLabel, Gauge>::default(),
    );
    for peer in &s.peers {
        let device = DeviceLabel {
            device: peer.device.to_string(),
        };
        if let Some(path) = peer.path {
            let path = match path {
                Path::Lan => "lan",
                Path::Direct => "direct",
                Path::Relayed => "relayed",
            };
            connections
                .get_or_create(&PathLabel { path })
                .inc_by(peer.connections as i64);
        }
        sent.get_or_create(&device).inc_by(peer.bytes_sent);
        received.get_or_create(&device).inc_by(peer.bytes_received);
        refusals.get_or_create(&device).inc_by(peer.refusals);
        offences.get_or_create(&device).inc_by(peer.offences);
        connected
            .get_or_create(&device)
            .set(i64::from(peer.connected));
        suspended
            .get_or_create(&device)
            .set(i64::from(peer.suspended_until.is_some()));
    }
    r.register(
        "connections",
        "Connections to roster devices, by path (lan, direct, relayed)",
        connections,
    );
    r.register_with_unit(
        "sync_sent",
        "Sync payload sent to each device since the daemon started",
        Unit::Bytes,
        sent,
    );
    r.register_with_unit(
        "sync_received",
        "Sync payload received from each device since the daemon started",
        Unit::Bytes,
        received,
    );
    r.register(
        "refusals",
        "Requests and answers from each device refused without blame since the daemon started",
        refusals,
    );
    r.register(
        "offences",
        "Data from each device that no honest device sends, since the daemon started",
        offences,
    );
    r.register(
        "device_connected",
        "1 while the device is connected",
        connected,
    );
    r.register(
        "device_suspended",
        "1 while the device is suspended for misconduct",
        suspended,
    );
    r
}
