//! Temporary homes, and the network settings that keep test daemons on loopback.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_daemon::{
    config::NetworkConfig,
    paths::{PathArgs, Paths},
    store::{Store, StoreError},
};
use tempfile::TempDir;

/// How long a stopped daemon may take to release its store.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// A temporary home directory. Short, under /tmp: socket paths are limited to 107 bytes.
pub fn temp_home() -> Arc<TempDir> {
    Arc::new(
        tempfile::Builder::new()
            .prefix("cs")
            .tempdir_in("/tmp")
            .expect("cannot create a temporary home"),
    )
}

/// The paths of a daemon whose home is `home`.
pub fn paths(home: &std::path::Path) -> Paths {
    Paths::resolve(&PathArgs {
        home: Some(home.to_path_buf()),
        socket: None,
    })
    .expect("cannot resolve the paths of a temporary home")
}

/// Network settings for tests: loopback only, no mDNS, no peers.
pub fn loopback_network() -> NetworkConfig {
    NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        peers: Vec::new(),
        ..Default::default()
    }
}

/// A loopback TCP address with a port that was free a moment ago, for a daemon that must be
/// found at the same address after a restart.
pub fn fixed_loopback_addr() -> String {
    format!("/ip4/127.0.0.1/tcp/{}", free_loopback_port())
}

/// A TCP port on loopback that was free a moment ago (for a listener a test configures).
pub fn free_loopback_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until the store under `paths` can be opened again: after a daemon that was killed, or
/// one whose store failed to close (`serve` waits for the lock to be released only when the
/// store closes cleanly); without this, a restart right after fails with "already using the
/// store".
pub async fn wait_store_released(paths: &Paths) {
    if let Err(e) = wait_store_unlocked(paths).await {
        panic!("the store is still in use after the daemon stopped: {e}");
    }
}

/// Waits until no daemon holds the store's lock; then whether the store opens (it may not for
/// another reason than the lock: a full disk, say).
pub async fn wait_store_unlocked(paths: &Paths) -> Result<(), StoreError> {
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    loop {
        let dir = paths.store_dir();
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir, 1 << 20))
            .await
            .unwrap();
        match opened {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(StoreError::Locked(e)) => panic!("the store is still in use: {e}"),
            other => return other.map(drop),
        }
    }
}
