//! The chats held in memory, under a memory budget.
//!
//! Start-up loads no chat. A chat is loaded on first use and stays while it is used; the least
//! recently used chats are unloaded when the estimated total passes the budget, and any chat
//! idle for a while is unloaded too. Unloading loses nothing: every change is in the store
//! before it is acknowledged.
//!
//! There is never more than one live copy of a chat: two copies would hand out the same chunk
//! sequence numbers and Automerge sequence numbers, and the second write would destroy the
//! first. So a chat's entry is a slot that exactly one load fills (concurrent users wait for
//! it), and an entry is only removed when nobody but the cache holds it or waits on it. Both
//! are checked under the cache lock, where users also take their references, so no new user
//! can slip in between.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use chatsync_model::{ChatDoc, ChatId};

use super::EngineError;

/// A loaded chat and its bookkeeping for the store.
#[derive(Debug)]
pub struct LoadedChat {
    pub doc: ChatDoc,
    /// The attestations that vouch for each actor's changes, to send with them.
    pub proofs: chatsync_model::proofs::Proofs,
    /// Sequence number of the next chunk to write.
    pub next_seq: u64,
    pub base_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// A compaction task for this chat is queued or running.
    pub compacting: bool,
    /// How many times the chat was stored anew without changes an equivocation banned
    /// (`engine/equivocation.rs`): a compaction that began before must not write its base.
    pub rebuilds: u64,
    /// The newest write of this chat's changes still on its way to the disk, if any. Reads and
    /// sync messages made from the document wait for it before they answer, so that nobody is
    /// shown a change that is not durable: a chat's chunks become durable in the order they
    /// were submitted, and only ever fail all together (the store is then failed).
    pub last_write: Option<super::commit::Receipt>,
    /// While received changes wait for their dependencies: when what waits last made progress
    /// (began to wait, or had some of it applied), and how many had been applied by then
    /// (`ChatDoc::released_from_waiting`). See [`WAITING_EXPIRES_AFTER`].
    pub waiting_progress: Option<(Instant, u64)>,
}

/// How long received changes may wait for their dependencies with none of them applied before
/// they are dropped (`ChatDoc::drop_waiting`): well beyond any honest catch-up, where a change a
/// Bloom filter hid comes in the next round. Until then they count against their sender's
/// share of the bound on what waits, which a device that builds on changes it never sends
/// fills.
pub const WAITING_EXPIRES_AFTER: Duration = Duration::from_secs(10 * 60);

/// Chunk bytes below which a chat is not compacted while it is written to (see
/// [`LoadedChat::wants_compaction`]).
const COMPACT_FLOOR: u64 = 4 * 1024;

impl LoadedChat {
    /// Notes, after changes were received, whether some wait and whether what waits moved.
    pub fn note_waiting(&mut self, now: Instant) {
        if !self.doc.has_waiting_changes() {
            self.waiting_progress = None;
            return;
        }
        let released = self.doc.released_from_waiting();
        match self.waiting_progress {
            Some((_, before)) if before == released => {}
            _ => self.waiting_progress = Some((now, released)),
        }
    }

    /// Whether received changes have waited for their dependencies, with none applied, for
    /// longer than [`WAITING_EXPIRES_AFTER`].
    pub fn waited_too_long(&self, now: Instant) -> bool {
        self.waiting_progress
            .is_some_and(|(since, _)| now.saturating_duration_since(since) > WAITING_EXPIRES_AFTER)
    }

    /// The chat's newest write, unless it is known durable (then it is forgotten). A failed
    /// one stays: everything read from this copy must answer its error.
    pub fn unsettled_write(&mut self) -> Option<super::commit::Receipt> {
        if self.last_write.as_ref().is_some_and(|w| w.is_durable()) {
            self.last_write = None;
        }
        self.last_write.clone()
    }

    /// Rough memory use, from measurement (docs/benchmarks.md): a loaded chat of 1,000 short
    /// messages added about 1.4 MiB of resident memory (Automerge's op set plus the display
    /// index), while its save was only about 17 KiB; long texts weigh on top of that.
    pub fn estimated_bytes(&self) -> u64 {
        self.doc.len() as u64 * 1536 + (self.base_bytes + self.chunk_bytes) * 4 + 32 * 1024
    }

    /// Whether the chunks have grown enough to fold them into the base. Compacting when the
    /// chunks outweigh the base keeps the total work linear in the number of changes. The floor
    /// is low because a chunk is a change as Automerge writes it alone (a post is about 350
    /// bytes) while a base stores a message in about 40: a small chat left in chunks takes
    /// several times the room it needs.
    pub fn wants_compaction(&self) -> bool {
        !self.compacting
            && (self.chunks >= 4096 || self.chunk_bytes > self.base_bytes.max(COMPACT_FLOOR))
    }

    /// Whether a chat nobody has used for a while should fold its chunks now rather than wait
    /// for [`LoadedChat::wants_compaction`]: when they are worth an eighth of the base, so that a
    /// chat that has gone quiet is stored compactly without a large base being written again
    /// for a post or two.
    pub fn wants_settling(&self) -> bool {
        !self.compacting && self.chunks > 0 && self.chunk_bytes.saturating_mul(8) >= self.base_bytes
    }
}

pub type ChatHandle = Arc<tokio::sync::Mutex<LoadedChat>>;

/// A chat's place in the cache: filled by exactly one load.
type Slot = Arc<tokio::sync::OnceCell<ChatHandle>>;

struct Entry {
    slot: Slot,
    estimated_bytes: u64,
    last_used: Instant,
}

impl Entry {
    fn new(slot: Slot) -> Self {
        Entry {
            slot,
            estimated_bytes: 0,
            last_used: Instant::now(),
        }
    }

    /// Nobody but the cache holds this chat (or its pending load), and no write of it is on
    /// its way to the disk: unloading it is safe. (A copy loaded again from the store while a
    /// write is queued would miss it, or show it before it is durable.)
    fn unused(&self) -> bool {
        Arc::strong_count(&self.slot) == 1
            && self.slot.get().is_none_or(|handle| {
                Arc::strong_count(handle) == 1
                    && handle.try_lock().is_ok_and(|loaded| {
                        loaded.last_write.as_ref().is_none_or(|w| w.is_settled())
                    })
            })
    }
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
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

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

    /// The chat, loaded with `load` if it is not in memory. Concurrent callers share one load,
    /// and no chat is loaded while a copy of it is still in use, so there is only ever one live
    /// copy of a chat.
    pub async fn get_or_load<F, Fut>(&self, id: &ChatId, load: F) -> Result<ChatHandle, EngineError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<LoadedChat, EngineError>>,
    {
        let slot = {
            let mut inner = self.lock();
            let entry = inner
                .entries
                .entry(id.clone())
                .or_insert_with(|| Entry::new(Slot::default()));
            entry.last_used = Instant::now();
            entry.slot.clone()
        };
        let mut loaded_here = None;
        let handle = slot
            .get_or_try_init(|| async {
                let chat = load().await?;
                loaded_here = Some(chat.estimated_bytes());
                Ok::<_, EngineError>(Arc::new(tokio::sync::Mutex::new(chat)))
            })
            .await?
            .clone();
        drop(slot);
        if let Some(estimated_bytes) = loaded_here {
            self.update_estimate(id, estimated_bytes);
        }
        Ok(handle)
    }

    /// Adds a chat that was just created (so no other copy of it can exist). Should a copy be
    /// in the cache all the same, that one is kept and `None` returned: there is never a
    /// second, and the caller must not write its own.
    pub fn insert_new(&self, id: ChatId, chat: LoadedChat) -> Option<ChatHandle> {
        let estimated_bytes = chat.estimated_bytes();
        let handle = Arc::new(tokio::sync::Mutex::new(chat));
        let slot = Slot::new(tokio::sync::OnceCell::new_with(Some(handle.clone())));
        {
            let mut inner = self.lock();
            if inner
                .entries
                .get(&id)
                .is_some_and(|e| e.slot.get().is_some())
            {
                tracing::error!(chat = %id, "a new chat was already in memory; keeping that copy");
                return None;
            }
            inner.entries.insert(id.clone(), Entry::new(slot));
        }
        self.update_estimate(&id, estimated_bytes);
        Some(handle)
    }

    /// The chat, if it is in memory (never loads it).
    pub fn loaded(&self, id: &ChatId) -> Option<ChatHandle> {
        self.lock()
            .entries
            .get(id)
            .and_then(|e| e.slot.get().cloned())
    }

    /// Drops a copy nobody can reach any more (a chat whose creation failed, so that it is not
    /// listed).
    pub fn forget(&self, id: &ChatId) {
        self.lock().entries.remove(id);
    }

    /// Records a chat's new size estimate after it changed, and unloads others if the total
    /// is over budget.
    pub fn update_estimate(&self, id: &ChatId, estimated_bytes: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(id) {
            entry.estimated_bytes = estimated_bytes;
        }
        self.evict_over_budget(&mut inner, id);
    }

    /// The chats in memory that nobody has asked for in `quiet`.
    pub fn quiet(&self, quiet: Duration) -> Vec<(ChatId, ChatHandle)> {
        self.lock()
            .entries
            .iter()
            .filter(|(_, e)| e.last_used.elapsed() >= quiet)
            .filter_map(|(id, e)| Some((id.clone(), e.slot.get()?.clone())))
            .collect()
    }

    /// Unloads chats unused for `idle`. Returns how many were unloaded.
    pub fn evict_idle(&self, idle: Duration) -> usize {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner
            .entries
            .retain(|_, e| e.last_used.elapsed() < idle || !e.unused());
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
            .filter(|(id, e)| *id != keep && e.unused())
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
            proofs: Default::default(),
            next_seq: 0,
            base_bytes: bytes,
            chunks: 0,
            chunk_bytes: 0,
            compacting: false,
            rebuilds: 0,
            last_write: None,
            waiting_progress: None,
        }
    }

    async fn load(cache: &ChatCache, id: &ChatId, bytes: u64) -> ChatHandle {
        let name = id.to_string();
        cache
            .get_or_load(id, || async move { Ok(chat(&name, bytes)) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn evicts_least_recently_used_but_never_a_chat_in_use() {
        let one_chat = chat("x", 1000).estimated_bytes();
        let cache = ChatCache::new(one_chat * 2);
        let a = ChatId::new("a").unwrap();
        let b = ChatId::new("b").unwrap();
        let c = ChatId::new("c").unwrap();
        let held_a = load(&cache, &a, 1000).await;
        drop(load(&cache, &b, 1000).await);
        drop(load(&cache, &c, 1000).await);
        // Over budget: `b` is the least recently used chat nobody holds; `a` is held.
        let (count, _) = cache.stats();
        assert_eq!(count, 2);
        let reloaded_b = cache
            .get_or_load(&b, || async { Ok(chat("b", 1000)) })
            .await
            .unwrap();
        assert_eq!(reloaded_b.lock().await.base_bytes, 1000);
        assert!(Arc::ptr_eq(&held_a, &load(&cache, &a, 1).await));
    }

    #[test]
    fn changes_that_wait_with_no_progress_expire() {
        let device = Device::new(DeviceId::new("dev").unwrap(), "d").unwrap();
        let mut doc = ChatDoc::create(ChatId::new("a").unwrap(), "t", &device, 0).unwrap();
        let before = doc.heads();
        for (id, at) in [("m1", 1), ("m2", 2)] {
            let id = chatsync_model::MessageId::new(id).unwrap();
            doc.post(&device, id, "x", None, at).unwrap();
        }
        // The chat as it was, and the second post without the first: it waits.
        let second = doc.automerge_mut().get_changes(&before)[1]
            .raw_bytes()
            .to_vec();
        let mut bytes = doc.snapshot_at(&before).unwrap().save();
        bytes.extend_from_slice(&second);
        let mut loaded = chat("a", 1);
        loaded.doc = ChatDoc::load(&bytes, &device).unwrap();
        let t0 = Instant::now();
        loaded.note_waiting(t0);
        loaded.note_waiting(t0 + Duration::from_secs(60));
        assert!(!loaded.waited_too_long(t0 + WAITING_EXPIRES_AFTER));
        assert!(loaded.waited_too_long(t0 + WAITING_EXPIRES_AFTER + Duration::from_secs(1)));
        loaded.doc.drop_waiting().unwrap();
        loaded.note_waiting(t0 + WAITING_EXPIRES_AFTER * 2);
        assert_eq!(loaded.waiting_progress, None);
        assert!(!loaded.waited_too_long(t0 + WAITING_EXPIRES_AFTER * 3));
        assert_eq!(loaded.doc.len(), 0);
    }

    #[tokio::test]
    async fn idle_chats_are_unloaded_unless_held() {
        let cache = ChatCache::new(u64::MAX);
        let a = ChatId::new("a").unwrap();
        let b = ChatId::new("b").unwrap();
        let held = load(&cache, &a, 1).await;
        drop(load(&cache, &b, 1).await);
        assert_eq!(cache.evict_idle(Duration::ZERO), 1);
        assert_eq!(cache.stats().0, 1);
        assert!(Arc::ptr_eq(&held, &load(&cache, &a, 2).await));
    }

    #[tokio::test]
    async fn concurrent_users_share_one_load() {
        let cache = Arc::new(ChatCache::new(0));
        let a = ChatId::new("a").unwrap();
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, a, loads) = (cache.clone(), a.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(&a, || async {
                        loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(chat("a", 1))
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut handles = Vec::new();
        for t in tasks {
            handles.push(t.await.unwrap());
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(handles.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
    }

    #[tokio::test]
    async fn a_failed_load_is_retried() {
        let cache = ChatCache::new(u64::MAX);
        let a = ChatId::new("a").unwrap();
        let failed = cache
            .get_or_load(&a, || async { Err(EngineError::Storage("disk".into())) })
            .await;
        assert!(failed.is_err());
        assert!(
            cache
                .get_or_load(&a, || async { Ok(chat("a", 1)) })
                .await
                .is_ok()
        );
    }
}
