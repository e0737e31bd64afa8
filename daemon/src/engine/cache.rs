//! The chats held in memory, under a memory budget.
//!
//! Start-up loads no chat. A chat is loaded on first use and stays while it is used; the least
//! recently used chats are unloaded when the estimated total passes the budget, and any chat
//! idle for a while is unloaded too. Unloading loses nothing: every change is in the store
//! before it is acknowledged.
//!
//! A chat is only unloaded when nobody holds it (the cache's `Arc` is the only one). Handles
//! are cloned under the cache lock, so that check cannot race with a new user; this matters
//! because two live copies of one chat would hand out the same chunk sequence numbers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chatsync_model::{ChatDoc, ChatId};

/// A loaded chat and its bookkeeping for the store.
#[derive(Debug)]
pub struct LoadedChat {
    pub doc: ChatDoc,
    /// Sequence number of the next chunk to write.
    pub next_seq: u64,
    pub base_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// A compaction task for this chat is queued or running.
    pub compacting: bool,
}

impl LoadedChat {
    /// Rough memory use: Automerge's in-memory form is about an order of magnitude larger
    /// than its compressed save, plus a fixed overhead per chat.
    pub fn estimated_bytes(&self) -> u64 {
        (self.base_bytes + self.chunk_bytes) * 12 + 24 * 1024
    }

    /// Whether the chunks have grown enough to fold them into the base. Compacting when the
    /// chunks outweigh the base keeps the total work linear in the number of changes.
    pub fn wants_compaction(&self) -> bool {
        !self.compacting
            && (self.chunks >= 4096 || self.chunk_bytes > self.base_bytes.max(64 * 1024))
    }
}

pub type ChatHandle = Arc<tokio::sync::Mutex<LoadedChat>>;

struct Entry {
    chat: ChatHandle,
    estimated_bytes: u64,
    last_used: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ChatId, Entry>,
}

pub struct ChatCache {
    inner: Mutex<Inner>,
    budget_bytes: u64,
}

impl ChatCache {
    pub fn new(budget_bytes: u64) -> Self {
        ChatCache {
            inner: Mutex::new(Inner::default()),
            budget_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is a
        // single insert or remove), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &ChatId) -> Option<ChatHandle> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(id)?;
        entry.last_used = Instant::now();
        Some(entry.chat.clone())
    }

    /// Adds a freshly loaded chat, unless another task loaded it first (then theirs is
    /// returned and `chat` is dropped unused). Unloads others if over budget.
    pub fn insert(&self, id: ChatId, chat: LoadedChat) -> ChatHandle {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&id) {
            entry.last_used = Instant::now();
            return entry.chat.clone();
        }
        let estimated_bytes = chat.estimated_bytes();
        let handle = Arc::new(tokio::sync::Mutex::new(chat));
        inner.entries.insert(
            id.clone(),
            Entry {
                chat: handle.clone(),
                estimated_bytes,
                last_used: Instant::now(),
            },
        );
        self.evict_over_budget(&mut inner, &id);
        handle
    }

    /// Records a chat's new size estimate after it changed.
    pub fn update_estimate(&self, id: &ChatId, estimated_bytes: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(id) {
            entry.estimated_bytes = estimated_bytes;
        }
        self.evict_over_budget(&mut inner, id);
    }

    /// Forgets a chat so that the next use reloads it from the store.
    pub fn remove(&self, id: &ChatId) {
        self.lock().entries.remove(id);
    }

    /// Unloads chats unused for `idle`. Returns how many were unloaded.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner
            .entries
            .retain(|_, e| e.last_used.elapsed() < idle || Arc::strong_count(&e.chat) > 1);
        before - inner.entries.len()
    }

    pub fn stats(&self) -> (usize, u64) {
        let inner = self.lock();
        let total = inner.entries.values().map(|e| e.estimated_bytes).sum();
        (inner.entries.len(), total)
    }

    fn evict_over_budget(&self, inner: &mut Inner, keep: &ChatId) {
        let mut total: u64 = inner.entries.values().map(|e| e.estimated_bytes).sum();
        if total <= self.budget_bytes {
            return;
        }
        let mut candidates: Vec<(Instant, ChatId, u64)> = inner
            .entries
            .iter()
            .filter(|(id, e)| *id != keep && Arc::strong_count(&e.chat) == 1)
            .map(|(id, e)| (e.last_used, id.clone(), e.estimated_bytes))
            .collect();
        candidates.sort();
        for (_, id, bytes) in candidates {
            if total <= self.budget_bytes {
                break;
            }
            inner.entries.remove(&id);
            total -= bytes;
            tracing::debug!(chat = %id, "unloaded chat to stay within the memory budget");
        }
    }
}

#[cfg(test)]
mod tests {
    use chatsync_model::{Device, DeviceId};

    use super::*;

    fn chat(id: &str, bytes: u64) -> LoadedChat {
        let device = Device::new(DeviceId::new("dev").unwrap(), "d").unwrap();
        LoadedChat {
            doc: ChatDoc::create(ChatId::new(id).unwrap(), "t", &device, 0).unwrap(),
            next_seq: 0,
            base_bytes: bytes,
            chunks: 0,
            chunk_bytes: 0,
            compacting: false,
        }
    }

    #[test]
    fn evicts_least_recently_used_but_never_a_chat_in_use() {
        let one_chat = chat("x", 1000).estimated_bytes();
        let cache = ChatCache::new(one_chat * 2);
        let a = ChatId::new("a").unwrap();
        let b = ChatId::new("b").unwrap();
        let c = ChatId::new("c").unwrap();
        let held_a = cache.insert(a.clone(), chat("a", 1000));
        drop(cache.insert(b.clone(), chat("b", 1000)));
        drop(cache.insert(c.clone(), chat("c", 1000)));
        // Over budget: `b` is the least recently used chat nobody holds.
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&c).is_some());
        drop(held_a);
    }

    #[test]
    fn idle_chats_are_unloaded_unless_held() {
        let cache = ChatCache::new(u64::MAX);
        let a = ChatId::new("a").unwrap();
        let b = ChatId::new("b").unwrap();
        let held = cache.insert(a.clone(), chat("a", 1));
        drop(cache.insert(b.clone(), chat("b", 1)));
        assert_eq!(cache.evict_idle(Duration::ZERO), 1);
        assert!(cache.get(&a).is_some());
        assert!(cache.get(&b).is_none());
        drop(held);
    }

    #[test]
    fn a_second_insert_returns_the_first_copy() {
        let cache = ChatCache::new(u64::MAX);
        let a = ChatId::new("a").unwrap();
        let first = cache.insert(a.clone(), chat("a", 1));
        let second = cache.insert(a.clone(), chat("a", 1));
        assert!(Arc::ptr_eq(&first, &second));
    }
}
