//! Devices caught equivocating: signing two different changes with one actor and sequence
//! number, one for some devices and the other for the rest. No honest device does that (each
//! run writes under a fresh actor, `Device::with_session`), and Automerge cannot hold both
//! changes, so two honest devices that took one each can no longer exchange that chat's later
//! changes. The device that passed such a change on is not to blame (`sync::refusal`); the
//! device that signed both is reported here, on the event stream and in `GET /v1/devices`, so
//! that the user can remove it from the mesh.
//!
//! Reports live in memory: after a restart, the next sync that meets the clash finds it again.

use std::{collections::BTreeMap, sync::Mutex};

use chatsync_model::{ChatId, DeviceId};

/// Devices reported at most: reported devices are in the roster (their changes passed the
/// authorship check), so this is never reached in practice.
const MAX_REPORTED: usize = 1024;

/// Where a device was first caught equivocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    pub chat: ChatId,
    /// The sequence number it used twice.
    pub seq: u64,
    /// When this device noticed (ms since the epoch).
    pub detected_at: i64,
}

#[derive(Default)]
pub struct Equivocations {
    reported: Mutex<BTreeMap<DeviceId, Equivocation>>,
}

impl Equivocations {
    /// Notes that `device` equivocated. Returns whether this is news (the first report of the
    /// device), which is worth an event.
    pub fn note(&self, device: &DeviceId, chat: &ChatId, seq: u64, now: i64) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported.contains_key(device) || reported.len() >= MAX_REPORTED {
            return false;
        }
        reported.insert(
            device.clone(),
            Equivocation {
                chat: chat.clone(),
                seq,
                detected_at: now,
            },
        );
        true
    }

    /// Where `device` was caught equivocating, if it was.
    pub fn of(&self, device: &DeviceId) -> Option<Equivocation> {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_reported_once_where_it_was_first_caught() {
        let reports = Equivocations::default();
        let (x, chat, other) = (
            DeviceId::new("x").unwrap(),
            ChatId::new("c").unwrap(),
            ChatId::new("d").unwrap(),
        );
        assert_eq!(reports.of(&x), None);
        assert!(reports.note(&x, &chat, 3, 100));
        assert!(!reports.note(&x, &other, 7, 200));
        assert_eq!(
            reports.of(&x),
            Some(Equivocation {
                chat,
                seq: 3,
                detected_at: 100
            })
        );
    }
}
