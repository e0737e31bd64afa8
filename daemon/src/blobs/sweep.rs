//! Freeing attachments no message names any more.
//!
//! A blob is kept while some message in some chat on this device names it: several messages may
//! share one (the same photo sent twice is stored once). Deleting a message removes its
//! attachment list from the document; a sweep then reads every chat's messages, and removes the
//! blobs and unfinished downloads none of them names. A blob uploaded moments ago is left alone
//! until the post that will name it has had its chance ([`UPLOAD_GRACE`]).
//!
//! Why a sweep and not reference counts: messages are deleted on any device and arrive by sync,
//! restores and whole-chat fetches; counting every way a reference comes and goes would be one
//! more piece of state to keep right across crashes, where the documents already say it all.
//! A chat that cannot be read stops the sweep before anything is removed.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_model::BlobHash;

use super::Blobs;
use crate::engine::{Engine, EngineError};

/// How long an upload no post has named yet is kept.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub blobs: usize,
    pub bytes: u64,
    pub downloads: usize,
}

/// Removes the blobs and downloads no message names.
///
/// A blob installed or named by a post after the sweep began is left: the chat that names it
/// may have been read before (`Blobs::kept_from_sweep`).
pub async fn sweep(engine: &Engine, blobs: &Arc<Blobs>) -> Result<Swept, EngineError> {
    let started = Instant::now();
    let mut named: HashSet<BlobHash> = HashSet::new();
    for chat in engine.list_chats() {
        for a in engine.attachments_of(&chat.id).await? {
            named.insert(a.hash);
        }
    }
    let blobs = blobs.clone();
    tokio::task::spawn_blocking(move || {
        let mut swept = Swept::default();
        for hash in blobs.list()? {
            if named.contains(&hash) {
                continue;
            }
            if let Some(len) = blobs.remove_unless_kept(&hash, started, UPLOAD_GRACE)? {
                swept.blobs += 1;
                swept.bytes += len;
            }
        }
        for hash in blobs.partial_hashes() {
            if !named.contains(&hash) && blobs.discard_download(hash)? {
                swept.downloads += 1;
            }
        }
        blobs.forget_before(started, UPLOAD_GRACE);
        Ok::<_, std::io::Error>(swept)
    })
    .await
    .map_err(|e| EngineError::Internal(e.to_string()))?
    .map_err(|e| EngineError::Internal(format!("attachment store: {e}")))
}
