//! Two daemons in one mesh: by ticket, as a user pairs devices (`chatsync pair` / `join`), or
//! by address, for daemons that already dial each other (`network.peers`, `--peer`).

use std::time::Duration;

use crate::{TestDaemon, eventually};

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
