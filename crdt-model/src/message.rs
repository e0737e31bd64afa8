//! The read-only view of one message, as every replica shows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Attachment, Clock, DeviceId, MessageId};

/// One message in display form. Deleted messages keep their place (id, author, clock, time)
/// with their text and reactions gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    /// Device that wrote the message.
    pub author: DeviceId,
    /// Display name of that device when it wrote the message.
    pub author_name: String,
    /// Author's wall clock when it wrote the message (ms since the Unix epoch). For display only.
    pub ts: i64,
    /// Position in the display order (see [`crate::clock`]).
    pub clock: Clock,
    pub text: String,
    /// Message this one answers, if any.
    pub reply_to: Option<MessageId>,
    /// Author's wall clock at the last edit (ms), if edited.
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// Reactions, one per device.
    pub reactions: BTreeMap<DeviceId, String>,
    /// Files attached when it was posted (gone once it is deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl Message {
    pub fn edited(&self) -> bool {
        self.edited_at.is_some()
    }

    /// The key that sorts messages for display, identical on every replica.
    pub fn order_key(&self) -> OrderKey {
        OrderKey {
            clock: self.clock,
            author: self.author.clone(),
            id: self.id.clone(),
        }
    }
}

/// Display order: clock, then author device id, then message id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub clock: Clock,
    pub author: DeviceId,
    pub id: MessageId,
}
