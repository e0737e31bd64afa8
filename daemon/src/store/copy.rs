//! A chat's document exactly as the store keeps it, for backups: copying the stored bytes is
//! far cheaper than loading the document and saving it again, and the chunk numbers let a
//! backup take only the chunks written since the last one.

use chatsync_model::ChatId;

use super::{Store, StoreError, keys, unframe};

/// Reads of a chat that a compaction keeps cutting short, at most, before giving up.
const MAX_COPY_ATTEMPTS: usize = 16;

/// A chat's stored document: loadable in one call as `base` followed by every chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatCopy {
    pub base: Vec<u8>,
    /// The chunks after the base, by sequence number, in order.
    pub chunks: Vec<(u64, Vec<u8>)>,
}

impl ChatCopy {
    /// The whole document: the base followed by every chunk.
    pub fn document(&self) -> Vec<u8> {
        let len = self.base.len() + self.chunks.iter().map(|(_, c)| c.len()).sum::<usize>();
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&self.base);
        for (_, chunk) in &self.chunks {
            bytes.extend_from_slice(chunk);
        }
        bytes
    }
}

impl Store {
    /// The chat's base and chunks as one consistent copy (`None`: no such chat).
    ///
    /// sled reads keys one by one, and a compaction meanwhile replaces the base and removes
    /// the chunks it folded in one batch, base first (it sorts first). So the base is read
    /// before and after the chunks: if it is the same both times, no compaction came between,
    /// and the chunks read belong to it (chunks written meanwhile only come after them).
    pub fn chat_copy(&self, id: &ChatId) -> Result<Option<ChatCopy>, StoreError> {
        let base_key = keys::base(id);
        for _ in 0..MAX_COPY_ATTEMPTS {
            let Some(before) = self.docs.get(&base_key)? else {
                return Ok(None);
            };
            let mut chunks = Vec::new();
            for item in self.docs.scan_prefix(keys::chunks_prefix(id)) {
                let (key, value) = item?;
                match keys::parse(id, &key) {
                    Some(keys::DocKey::Chunk(seq)) => chunks.push((seq, unframe(&value)?.to_vec())),
                    _ => {
                        return Err(StoreError::Corrupt(format!(
                            "unexpected key in document {id}: {key:?}"
                        )));
                    }
                }
            }
            if self.docs.get(&base_key)?.as_ref() == Some(&before) {
                return Ok(Some(ChatCopy {
                    base: unframe(&before)?.to_vec(),
                    chunks,
                }));
            }
        }
        Err(StoreError::Busy(format!(
            "chat {id} kept being compacted while it was copied"
        )))
    }
}
