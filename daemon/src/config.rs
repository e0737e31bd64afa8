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
        self
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mb: 16,
            memory_budget_mb: 256,
            idle_unload_secs: 600,
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
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("nmae = \"typo\"\n").is_err());
    }

    #[test]
    fn missing_file_means_defaults() {
        let c = Config::load(Path::new("/nonexistent/chatsync/config.toml")).unwrap();
        assert_eq!(c.store.memory_budget_mb, 256);
    }
}
