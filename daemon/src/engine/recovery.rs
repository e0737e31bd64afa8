//! Chat records brought back in line with their chunks after an unclean stop.
//!
//! The store writes a group's chunks before the chats' records and not atomically (see "Crash
//! consistency" in `store`), so a crash can keep chunks whose record update was lost. Such a
//! chat would be listed with too few messages, and with old heads, so that a device comparing
//! heads would not see that this one has changes to offer. At start, before anything reads the
//! records, each chat the store notes as unsettled is checked for chunks past its record, and if
//! it has any, it is loaded and its record rebuilt from the document. Only the chats of the last
//! group written before the crash are checked, so this costs nothing after a clean stop.

use std::collections::BTreeMap;

use chatsync_model::{ChatId, Device};

use super::{EngineError, heads_hex, load_chat};
use crate::store::{ChatRecord, Store, Unsettled};

/// Rebuilds the records (in `records` and in the store) of unsettled chats that lag behind
/// their chunks, then clears the note. Returns how many records were rebuilt. A chat that
/// cannot be loaded is left as it is, with a warning: it fails when used, as it would have.
pub(super) fn settle_records(
    store: &Store,
    records: &mut BTreeMap<ChatId, ChatRecord>,
    device: &Device,
) -> Result<usize, EngineError> {
    let Some(unsettled) = store.unsettled()? else {
        return Ok(0);
    };
    let chats: Vec<ChatId> = match unsettled {
        Unsettled::Chats(chats) => chats,
        Unsettled::All => records.keys().cloned().collect(),
    };
    let mut rebuilt = 0;
    for chat in chats {
        let Some(record) = records.get_mut(&chat) else {
            continue;
        };
        if !store.has_chunks_from(&chat, record.next_seq)? {
            continue;
        }
        let mut loaded = match load_chat(store, &chat, device, record.next_seq) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(%chat, error = %e, "cannot load a chat to rebuild its record");
                continue;
            }
        };
        let doc = &mut loaded.doc;
        let info = doc.info();
        let newest = doc
            .message_ids()
            .last()
            .and_then(|id| doc.message(id))
            .map_or(0, |m| m.ts);
        record.title = info.title;
        record.messages = info.messages as u64;
        record.last_activity = record.last_activity.max(newest);
        record.heads = heads_hex(doc);
        // Written to after it was restored, so it was loaded, and checked, before.
        record.unchecked = false;
        record.own_newest = Some(crate::store::OwnNewest::of(doc, &device.id));
        record.next_seq = loaded.next_seq;
        store.put_chat_record(&chat, record)?;
        tracing::warn!(
            %chat,
            messages = record.messages,
            "rebuilt the chat's record: the daemon stopped before writing it"
        );
        rebuilt += 1;
    }
    store.settle()?;
    store.flush()?;
    Ok(rebuilt)
}
