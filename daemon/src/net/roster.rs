//! Replicating the roster: devices trade whole rosters when they connect and whenever one
//! changes, and merge them (removals are final, see `chatsync_model::RosterDoc`). A device just
//! removed is told before it is disconnected, so that it can tell its user; until then it gets
//! nothing else.

use std::time::{Duration, Instant};

use libp2p::PeerId;

use chatsync_model::sync::sessions::SLOW_DOWN_PAUSE;

use super::{
    links::{Purpose, ReplyTo},
    protocol::{SyncRequest, SyncResponse},
    sessions::Internal,
    task::NetworkTask,
};

/// How long a removed device stays connected to hear that it was removed.
const TELL_REMOVED: Duration = Duration::from_secs(3);

impl NetworkTask {
    /// Sends this device's roster to `peer`.
    pub(super) fn send_roster(&mut self, peer: PeerId) {
        self.send_roster_after(peer, Duration::ZERO);
    }

    /// Sends this device's roster to `peer` after `wait`.
    fn send_roster_after(&mut self, peer: PeerId, wait: Duration) {
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        self.tasks.spawn(async move {
            tokio::time::sleep(wait).await;
            let roster = engine.roster_bytes().await;
            let _ = internal.send(Internal::SendRoster(peer, roster)).await;
        });
    }

    /// Merges a roster `peer` sent (it is trusted), in a spawned task.
    pub(super) fn merge_roster(&mut self, peer: PeerId, theirs: Vec<u8>) {
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        self.tasks.spawn(async move {
            match engine.merge_roster(&theirs).await {
                Err(e) if e.is_misbehaviour() => {
                    let why = format!("its roster: {e}");
                    let _ = internal.send(Internal::Misbehaved(peer, why)).await;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "could not merge a roster from a device")
                }
                Ok(_) => {}
            }
        });
    }

    /// Answers a roster request with this device's roster.
    pub(super) fn on_roster_request(&mut self, peer: PeerId, trusted: bool, reply: ReplyTo) {
        let (engine, internal) = (self.engine.clone(), self.internal.clone());
        self.tasks.spawn(async move {
            let roster = engine.roster_bytes().await;
            let _ = internal
                .send(Internal::AnswerRoster(peer, reply, roster))
                .await;
        });
        if !trusted {
            self.removing.insert(peer, Instant::now());
        }
    }

    pub(super) fn on_roster_response(&mut self, peer: PeerId, response: SyncResponse) {
        self.sync.count_traffic(peer, 0, response.wire_len());
        if matches!(response, SyncResponse::SlowDown) {
            // Not told yet: asked again after the pause the other side asked for.
            self.send_roster_after(peer, SLOW_DOWN_PAUSE);
            return;
        }
        if let Some(deadline) = self.removing.get_mut(&peer) {
            // It has been told; it gets nothing more.
            *deadline = Instant::now();
            self.finish_removals(true);
            return;
        }
        match response {
            SyncResponse::Roster(theirs) => self.merge_roster(peer, theirs),
            other => tracing::debug!(%peer, ?other, "no roster in the answer"),
        }
    }

    /// `peer` was removed from the roster: tell it (if connected), then disconnect it.
    pub(super) fn begin_removal(&mut self, peer: PeerId) {
        let connected = self
            .book
            .peers
            .get(&peer)
            .is_some_and(|p| p.accepted && p.connected());
        if connected {
            tracing::info!(%peer, "device removed from the mesh; telling it before disconnecting");
            self.removing.insert(peer, Instant::now() + TELL_REMOVED);
            self.send_roster(peer);
        } else {
            self.swarm.behaviour_mut().gate.disallow_peer(peer);
        }
    }

    /// Disconnects removed devices whose time is up (all that were told, with `told`).
    pub(super) fn finish_removals(&mut self, told: bool) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .removing
            .iter()
            .filter(|(_, at)| told || **at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.removing.remove(&peer);
            if !self.allowed.contains(&peer) {
                // Also closes its connections.
                self.swarm.behaviour_mut().gate.disallow_peer(peer);
                tracing::info!(%peer, "device no longer trusted; disconnected");
            }
        }
    }

    /// Sends a roster request to `peer` (outside the sync core: a device being removed hears
    /// of it, and nothing else). Rosters go again at every summary exchange, so a lost one
    /// costs nothing but time.
    pub(super) fn roster_ready(&mut self, peer: PeerId, roster: Vec<u8>) {
        if !self.swarm.is_connected(&peer) {
            self.roster_failed(peer);
            return;
        }
        let request = SyncRequest::Roster(roster);
        self.sync.count_traffic(peer, request.wire_len(), 0);
        if self
            .links
            .send(peer, &request, Purpose::Roster, Instant::now())
            .is_err()
        {
            self.roster_failed(peer);
        }
    }

    /// A roster request was not answered: a device being removed is disconnected now.
    pub(super) fn roster_failed(&mut self, peer: PeerId) {
        if self.removing.contains_key(&peer) {
            self.finish_removals(true);
        }
    }
}
