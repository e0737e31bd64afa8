//! Telling a service manager how the daemon is doing (systemd's `Type=notify`, through
//! `sd-notify`): ready once it answers on its socket, alive at half the watchdog period for as
//! long as its network loop still answers, stopping when it shuts down. Started any other way
//! (no `NOTIFY_SOCKET` in its environment), every call here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::net::Network;

/// The daemon answers on its socket: `systemctl start` returns, units after it start.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The daemon is shutting down (flushing, closing the store).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// With a watchdog asked for (`WatchdogSec=` in the unit), tells the manager the daemon is
/// alive at half its period, as long as the network task answers within a quarter of it: a
/// daemon whose loop is stuck stops answering, and the manager restarts it.
pub async fn keep_watchdog(network: Network, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = tokio::time::timeout(period / 4, network.sync_state()).await;
        if answer.is_ok() {
            notify(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!(
                waited_ms = (period / 4).as_millis() as u64,
                "the network task did not answer; not telling the watchdog the daemon is alive"
            );
        }
    }
}

/// The watchdog period asked for, if any (for the log).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
