//! The daemon's settings: the config file (TOML), overridden by `chatsyncd` flags.
//! Every setting is documented in docs/configuration.md.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::paths::PathArgs;

/// Command-line flags of `chatsyncd`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "chatsyncd",
    version,
    about = "The chatsync daemon: keeps your chats and serves the local API (runs in the foreground)"
)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Config file (default: config.toml in the config directory, or under --home).
    #[arg(long, env = "CHATSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This device's display name (default: the config's `name`, else the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Log filter, in tracing's env-filter syntax (default: CHATSYNC_LOG, else `info`).
    #[arg(long, env = "CHATSYNC_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Address to listen on for other devices (repeatable; replaces the config's `listen`).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<libp2p::Multiaddr>,
    /// Do not look for devices on the LAN with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// A device to connect to, `/ip4/ADDR/tcp/PORT/p2p/DEVICE_ID` (repeatable; added to the
    /// config's `peers`).
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<libp2p::Multiaddr>,
    /// Serve as a circuit relay for devices that cannot reach each other (see the config's
    /// `[relay]` for its limits).
    #[arg(long)]
    pub relay: bool,
    /// An address other machines reach this relay at (repeatable; replaces the config's
    /// `relay.external_addrs`).
    #[arg(long = "external-addr", value_name = "MULTIADDR")]
    pub external_addrs: Vec<libp2p::Multiaddr>,
    /// A relay to keep a reservation on, `/ip4/ADDR/tcp/PORT/p2p/RELAY_ID` (repeatable; added
    /// to the config's `network.relays`).
    #[arg(long = "relay-addr", value_name = "MULTIADDR")]
    pub relay_addrs: Vec<libp2p::Multiaddr>,
    /// Stay on relayed connections: do not try to punch a hole to devices met through a relay.
    #[arg(long)]
    pub no_hole_punching: bool,
}

/// The config file. Unknown keys are an error, so that a typo does not pass silently.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This device's display name.
    pub name: Option<String>,
    /// Log filter (tracing env-filter syntax).
    pub log: Option<String>,
    pub store: StoreConfig,
    pub network: NetworkConfig,
    pub relay: RelayConfig,
    pub backup: BackupConfig,
    pub web: WebConfig,
    pub attachments: AttachmentsConfig,
    pub metrics: MetricsConfig,
}

/// Metrics for Prometheus: always at `GET /metrics` on the local socket; also on this TCP
/// address when set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address and port to serve `GET /metrics` on, like `127.0.0.1:9464`.
    pub listen: Option<String>,
    /// Listening on anything but loopback is refused unless this is set.
    pub allow_remote: bool,
}

/// Attachments: how much this device keeps, and what it fetches without being asked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Most bytes of attachments kept on this device (MiB).
    pub quota_mib: u64,
    /// Attachments up to this size (MiB) are fetched as soon as their message arrives, over a
    /// LAN or direct connection; larger ones, and any over a relay, when asked for.
    pub auto_fetch_mib: u64,
    /// Most KiB per second each attachment is sent to another device at (0: no limit).
    pub send_kib_per_sec: u64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            quota_mib: 32 * 1024,
            auto_fetch_mib: 16,
            send_kib_per_sec: 0,
        }
    }
}

/// The web client (`chatsync web enable` turns it on and keeps its own settings, which then
/// win over these).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// On from the daemon's start.
    pub enabled: bool,
    /// Address and port it listens on.
    pub listen: String,
    /// Listening on anything but loopback is refused unless this is set (see docs/security.md).
    pub allow_remote: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: false,
            listen: format!("127.0.0.1:{DEFAULT_WEB_PORT}"),
            allow_remote: false,
        }
    }
}

/// The web client's port unless configured otherwise.
pub const DEFAULT_WEB_PORT: u16 = 7780;

/// When the daemon backs up by itself, and which snapshots it keeps (once backups are set up
/// with `chatsync backup init`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// How often: `30m`, `6h`, `24h`, `7d`; `off` never (only `chatsync backup now`).
    pub every: String,
    /// Snapshots kept: the newest of each of the last this many days, weeks and months that
    /// have one (the newest snapshot is always kept).
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// Size of the objects a backup writes, about (KiB): the packs of many chats go in one
    /// object up to this size (one chat larger than it goes alone).
    pub object_kib: u32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            every: "24h".into(),
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 12,
            object_kib: 4096,
        }
    }
}

impl BackupConfig {
    /// The interval of `every`; `None` for `off`.
    pub fn interval(&self) -> anyhow::Result<Option<std::time::Duration>> {
        let text = self.every.trim();
        if text == "off" {
            return Ok(None);
        }
        let (number, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len()),
        );
        let n: u64 = number
            .parse()
            .with_context(|| format!("backup.every = {text:?}: not a duration like 24h"))?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" | "" => n * 3600,
            "d" => n * 86_400,
            _ => anyhow::bail!("backup.every = {text:?}: use s, m, h or d"),
        };
        if secs < 60 {
            anyhow::bail!("backup.every = {text:?}: at least one minute");
        }
        Ok(Some(std::time::Duration::from_secs(secs)))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Addresses to listen on for other devices.
    pub listen: Vec<libp2p::Multiaddr>,
    /// Find devices on the LAN with mDNS.
    pub mdns: bool,
    /// Devices to connect to and keep connected (`/ip4/.../tcp/.../p2p/DEVICE_ID`).
    pub peers: Vec<libp2p::Multiaddr>,
    /// Relays to keep a reservation on, so that devices elsewhere can reach this one
    /// (`/ip4/.../tcp/.../p2p/RELAY_ID`).
    pub relays: Vec<libp2p::Multiaddr>,
    /// Try to turn relayed connections into direct ones (DCUtR hole punching).
    pub hole_punching: bool,
    /// The relay server's settings (`[relay]`), copied here by [`Config::network_config`].
    #[serde(skip)]
    pub relay: RelayConfig,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .expect("a valid literal address"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("a valid literal address"),
            ],
            mdns: true,
            peers: Vec::new(),
            relays: Vec::new(),
            hole_punching: true,
            relay: RelayConfig::default(),
        }
    }
}

impl NetworkConfig {
    /// The config's network settings with the daemon's flags applied.
    pub fn with_flags(mut self, args: &DaemonArgs) -> Self {
        if !args.listen.is_empty() {
            self.listen = args.listen.clone();
        }
        if args.no_mdns {
            self.mdns = false;
        }
        self.peers.extend(args.peers.iter().cloned());
        self.relays.extend(args.relay_addrs.iter().cloned());
        if args.no_hole_punching {
            self.hole_punching = false;
        }
        self
    }
}

/// Relay mode: this daemon forwards encrypted bytes between devices that cannot reach each
/// other (circuit relay v2). Every limit bounds what strangers can make it do; see
/// docs/security.md ("Relays").
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Serve as a relay.
    pub enabled: bool,
    /// Addresses other machines reach this one at (a relay gives them to the devices that
    /// reserve on it). Without any, its own listen addresses other than loopback are used.
    pub external_addrs: Vec<libp2p::Multiaddr>,
    /// Devices that may reserve and open circuits; empty means any device (within the limits).
    pub allow: Vec<String>,
    /// Reservations held at once, over all devices.
    pub max_reservations: usize,
    /// Reservations held at once by one device.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the device must renew it, in seconds.
    pub reservation_secs: u64,
    /// Circuits open at once, over all devices.
    pub max_circuits: usize,
    /// Circuits open at once to or from one device.
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry (both ways together) before the relay closes it.
    pub max_circuit_bytes: u64,
    /// How long one circuit may stay open, in seconds.
    pub max_circuit_secs: u64,
    /// Circuits one device may open per minute (a burst of this many, then one a minute...).
    pub circuits_per_minute: u32,
    /// Reservations one device may make per minute, likewise.
    pub reservations_per_minute: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: false,
            external_addrs: Vec::new(),
            allow: Vec::new(),
            max_reservations: 128,
            max_reservations_per_peer: 2,
            reservation_secs: 3600,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_bytes: 64 * 1024 * 1024,
            max_circuit_secs: 30 * 60,
            circuits_per_minute: 30,
            reservations_per_minute: 10,
        }
    }
}

impl RelayConfig {
    /// The config's relay settings with the daemon's flags applied.
    pub fn with_flags(mut self, args: &DaemonArgs) -> Self {
        if args.relay {
            self.enabled = true;
        }
        if !args.external_addrs.is_empty() {
            self.external_addrs = args.external_addrs.clone();
        }
        self
    }

    /// Refuses settings that would make the relay useless or unbounded.
    pub fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("max_reservations", self.max_reservations as u64),
            (
                "max_reservations_per_peer",
                self.max_reservations_per_peer as u64,
            ),
            ("reservation_secs", self.reservation_secs),
            ("max_circuits", self.max_circuits as u64),
            ("max_circuits_per_peer", self.max_circuits_per_peer as u64),
            ("max_circuit_bytes", self.max_circuit_bytes),
            ("max_circuit_secs", self.max_circuit_secs),
            ("circuits_per_minute", u64::from(self.circuits_per_minute)),
            (
                "reservations_per_minute",
                u64::from(self.reservations_per_minute),
            ),
        ];
        for (name, value) in positive {
            anyhow::ensure!(
                value > 0,
                "relay.{name} must be above 0 (a limit of 0 would mean no limit)"
            );
        }
        anyhow::ensure!(
            self.max_circuit_secs <= u64::from(u32::MAX),
            "relay.max_circuit_secs is too large"
        );
        anyhow::ensure!(
            self.reservation_secs <= 7 * 24 * 3600,
            "relay.reservation_secs may be at most a week"
        );
        anyhow::ensure!(
            self.allow.len() <= 4096,
            "relay.allow may list at most 4096 devices"
        );
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Memory the store may use for its page cache, in MiB.
    pub cache_mb: u64,
    /// Memory budget for chats held in memory, in MiB; the least recently used are unloaded.
    pub memory_budget_mb: u64,
    /// Chats unused for this many seconds are unloaded from memory.
    pub idle_unload_secs: u64,
    /// Space kept free on the store's disk, in MiB: new writes are refused (`storage_full`)
    /// while less is free, and resume by themselves once there is more.
    pub reserve_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mb: 16,
            memory_budget_mb: 256,
            idle_unload_secs: 600,
            reserve_mb: 64,
        }
    }
}

impl Config {
    /// Reads the config file; a missing file means defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_settings() {
        let c: Config = toml::from_str("[backup]\nevery = \"6h\"\nkeep_daily = 3\n").unwrap();
        assert_eq!(
            c.backup.interval().unwrap(),
            Some(std::time::Duration::from_secs(6 * 3600))
        );
        assert_eq!((c.backup.keep_daily, c.backup.keep_weekly), (3, 4));
        assert_eq!(
            Config::default().backup.interval().unwrap(),
            Some(std::time::Duration::from_secs(86_400))
        );
        let off: Config = toml::from_str("[backup]\nevery = \"off\"\n").unwrap();
        assert_eq!(off.backup.interval().unwrap(), None);
        for bad in ["soon", "10x", "5s"] {
            let c: Config = toml::from_str(&format!("[backup]\nevery = {bad:?}\n")).unwrap();
            assert!(c.backup.interval().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_a_full_config() {
        let c: Config = toml::from_str(
            "name = \"laptop\"\nlog = \"debug\"\n[store]\ncache_mb = 8\nmemory_budget_mb = 64\nidle_unload_secs = 5\n",
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("laptop"));
        assert_eq!(c.store.memory_budget_mb, 64);
        assert_eq!(c.store.idle_unload_secs, 5);
    }

    #[test]
    fn network_settings_and_flags() {
        let c: Config = toml::from_str(
            "[network]\nlisten = [\"/ip4/127.0.0.1/tcp/4100\"]\nmdns = false\npeers = [\"/ip4/10.0.0.2/tcp/4100\"]\n",
        )
        .unwrap();
        assert!(!c.network.mdns);
        assert_eq!(c.network.listen.len(), 1);
        assert!(toml::from_str::<Config>("[network]\nlisten = [\"not an address\"]\n").is_err());
        let args = <DaemonArgs as clap::Parser>::parse_from([
            "chatsyncd",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--peer",
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWEvAfV87EuuHwweiPtEs6xdfvGkNJertKqSFytK2ZcTiJ",
        ]);
        let merged = Config::default().network.with_flags(&args);
        assert!(!merged.mdns);
        assert_eq!(merged.listen, args.listen);
        assert_eq!(merged.peers.len(), 1);
        assert!(Config::default().network.mdns);
    }

    #[test]
    fn relay_settings_and_flags() {
        let c: Config = toml::from_str(
            "[network]\nrelays = [\"/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWEvAfV87EuuHwweiPtEs6xdfvGkNJertKqSFytK2ZcTiJ\"]\n\
             [relay]\nenabled = true\nmax_circuit_bytes = 262144\nmax_circuit_secs = 60\n",
        )
        .unwrap();
        assert!(c.relay.enabled);
        assert_eq!(c.relay.max_circuit_bytes, 262_144);
        assert_eq!(c.network.relays.len(), 1);
        c.relay.check().unwrap();
        assert!(!Config::default().relay.enabled);
        Config::default().relay.check().unwrap();
        let zero: Config = toml::from_str("[relay]\nmax_circuits = 0\n").unwrap();
        assert!(
            zero.relay.check().is_err(),
            "a zero limit is refused, not read as none"
        );
        let args = <DaemonArgs as clap::Parser>::parse_from([
            "chatsyncd",
            "--relay",
            "--external-addr",
            "/ip4/192.0.2.1/tcp/4001",
            "--relay-addr",
            "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWEvAfV87EuuHwweiPtEs6xdfvGkNJertKqSFytK2ZcTiJ",
        ]);
        let relay = RelayConfig::default().with_flags(&args);
        assert!(relay.enabled);
        assert_eq!(relay.external_addrs.len(), 1);
        assert_eq!(Config::default().network.with_flags(&args).relays.len(), 1);
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("nmae = \"typo\"\n").is_err());
    }

    #[test]
    fn missing_file_means_defaults() {
        let c = Config::load(Path::new("/nonexistent/chatsync/config.toml")).unwrap();
        assert_eq!(c.store.memory_budget_mb, 256);
    }
}
