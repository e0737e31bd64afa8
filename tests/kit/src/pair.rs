//! Two daemons in one mesh: by ticket, as a user pairs devices (`chatsync pair` / `join`); by
//! address, for daemons that already dial each other (`network.peers`, `--peer`); or through a
//! relay, for daemons that cannot reach each other directly.

use std::time::Duration;

use chatsync_api::wire::ReservationState;
use chatsync_daemon::config::Config;

use crate::{TestDaemon, eventually, home::fixed_loopback_addr};

/// How long two daemons may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `joiner` joins `inviter`'s mesh with a fresh ticket, under `name`; returns once the join is
/// answered (the joiner is then in the inviter's roster, and connected).
pub async fn pair_by_ticket(inviter: &TestDaemon, joiner: &TestDaemon, name: &str) {
    let invite = inviter
        .client
        .create_invite(600)
        .await
        .unwrap_or_else(|e| panic!("opening an invitation failed: {e}"));
    joiner
        .client
        .join(&invite.ticket, Some(name))
        .await
        .unwrap_or_else(|e| panic!("joining with the ticket failed: {e}"));
}

/// Each daemon trusts the other (both rosters name both), and then they are waited for to
/// connect: for daemons configured to dial each other.
pub async fn pair_by_address(a: &TestDaemon, b: &TestDaemon) {
    a.trust(&b.device_id).await;
    b.trust(&a.device_id).await;
    wait_connected(a, b).await;
}

/// Waits until each daemon sees the other connected.
pub async fn wait_connected(a: &TestDaemon, b: &TestDaemon) {
    eventually("the two daemons are connected", CONNECT_TIMEOUT, || async {
        a.peer(&b.device_id).await.is_some_and(|p| p.connected)
            && b.peer(&a.device_id).await.is_some_and(|p| p.connected)
    })
    .await;
}

/// A daemon in relay mode on loopback, and the address devices reserve on it at.
pub async fn start_relay() -> (TestDaemon, String) {
    let at = fixed_loopback_addr();
    let mut config = Config::default();
    config.network.listen = vec![at.parse().unwrap()];
    config.relay.enabled = true;
    config.relay.external_addrs = vec![at.parse().unwrap()];
    let relay = TestDaemon::start_with(config).await;
    let addr = format!("{at}/p2p/{}", relay.device_id);
    (relay, addr)
}

/// Two daemons that reach each other only through the relay at `relay_addr`, with hole
/// punching off: `a` keeps a reservation there, `b` dials `a`'s relayed address, and both
/// trust each other. Returns them once connected.
pub async fn pair_through_relay(relay_addr: &str) -> (TestDaemon, TestDaemon) {
    let mut a_config = Config::default();
    a_config.network.relays = vec![relay_addr.parse().unwrap()];
    a_config.network.hole_punching = false;
    let a = TestDaemon::start_with(a_config).await;
    eventually(
        "a holds a reservation on the relay",
        CONNECT_TIMEOUT,
        || async { relayed_addr(&a).await.is_some() },
    )
    .await;
    let relayed = relayed_addr(&a).await.unwrap();
    let mut b_config = Config::default();
    b_config.network.peers = vec![relayed.parse().unwrap()];
    b_config.network.hole_punching = false;
    let b = TestDaemon::start_with(b_config).await;
    pair_by_address(&a, &b).await;
    (a, b)
}

/// The first address at which `daemon` is reached through a relay it holds a reservation on.
async fn relayed_addr(daemon: &TestDaemon) -> Option<String> {
    daemon
        .status()
        .await
        .reservations
        .into_iter()
        .filter(|r| r.state == ReservationState::Reserved)
        .find_map(|r| r.relayed_addrs.into_iter().next())
}
