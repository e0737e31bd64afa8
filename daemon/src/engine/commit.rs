//! Group commit: many operations, one store transaction, one flush.
//!
//! An operation changes its document in memory and submits the store writes that persist the
//! change ([`StoreWrite`]) with its events. The committer thread takes everything submitted so
//! far, makes its writes (every chunk and record of the group in one go, see
//! `Store::append_chunks`), flushes the store once, and only then publishes the events and
//! acknowledges each operation. While one group is written, new submissions queue up and share
//! the next one, so the cost of durability is spread over every operation that arrived
//! meanwhile.
//!
//! Writes are made, and events published, in submission order. Operations on one chat submit
//! while holding that chat's lock, so a chat's chunks are written, and its events come out, in
//! the order its changes were made, and a compaction is written after the chunks it folds.
//! A chat's writes may therefore still be queued here after its lock is released: code that
//! reads a chat back from the store while it is in memory waits for them first
//! ([`Queue::barrier`]).
//!
//! If a write or a flush fails, the store is marked failed: every waiting and later write is
//! refused, because nothing can be acknowledged as durable any more. (A failed compaction only
//! fails itself: the chunks it would have folded stay.)

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use std::collections::BTreeMap;

use chatsync_model::ChatId;
use tokio::sync::{broadcast, mpsc, watch};

use super::{EngineError, events::Event};
use crate::store::{ChatRecord, Space, Store, StoreError};

/// Every chat's record in memory, shared by the engine and the committer: the committer puts a
/// write's record there once the write is durable.
pub type Records = Arc<std::sync::RwLock<BTreeMap<ChatId, ChatRecord>>>;

/// Submissions waiting for a flush, at most. Writers wait (back-pressure) beyond it.
const QUEUE: usize = 8192;
/// Submissions acknowledged by one flush, at most.
const MAX_BATCH: usize = 8192;
/// Longest a flush waits for writes that have begun but not yet submitted.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_micros(500);

/// A store write the committer makes for an operation.
#[derive(Debug)]
pub enum StoreWrite {
    /// One chunk of a chat (the changes of one operation) and the chat's record as it is with
    /// the chunk.
    Chunk {
        chat: ChatId,
        seq: u64,
        bytes: Vec<u8>,
        record: ChatRecord,
    },
    /// A new chat: its document and its record, listed in memory once durable.
    NewChat {
        chat: ChatId,
        record: ChatRecord,
        bytes: Vec<u8>,
    },
    /// A compaction (`Store::compact`): `base` holds every change of the chunks up to `through`.
    Compact {
        chat: ChatId,
        base: Vec<u8>,
        through: u64,
    },
    /// Attestations (actor, sequence number) newer ones replaced, forgotten after every chunk
    /// submitted before (`chatsync_model::proofs::ProofWrites`).
    ForgetAttestations {
        chat: ChatId,
        stale: Vec<(Vec<u8>, u64)>,
    },
}

struct Pending {
    writes: Vec<StoreWrite>,
    events: Vec<Event>,
    done: watch::Sender<Outcome>,
    /// When it was submitted (for the durable-write latency, `crate::metrics`).
    submitted: std::time::Instant,
}

/// What became of a submitted write: `None` while it waits for a flush.
type Outcome = Option<Result<(), EngineError>>;

/// The committer thread and the queue to it. Submitting goes through the [`Queue`] (this
/// dereferences to it; clones of it can be handed to tasks).
pub struct Committer {
    queue: Queue,
    thread: std::thread::JoinHandle<()>,
}

/// Handle for submitting writes to the committer thread.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Pending>,
    failed: Arc<AtomicBool>,
    /// Free space on the store's disk: new writes begin only while the reserve is free.
    space: Arc<Space>,
    unsubmitted: Arc<Unsubmitted>,
}

/// Writes begun and not yet submitted (see [`Queue::begin`]), and how the last of them wakes
/// the committer when it waits for them: it parks rather than polls, and is woken once, by
/// whichever write brings the count to zero.
#[derive(Default)]
struct Unsubmitted {
    count: AtomicUsize,
    /// Whether the committer is (about to be) parked waiting for the count to reach zero.
    waiting: AtomicBool,
    committer: OnceLock<std::thread::Thread>,
}

impl Unsubmitted {
    fn begin(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// A begun write was submitted or withdrawn.
    fn end(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1
            && self.waiting.load(Ordering::SeqCst)
            && let Some(committer) = self.committer.get()
        {
            committer.unpark();
        }
    }

    /// Waits until no write is begun and unsubmitted, or until `deadline`. Returns whether
    /// none is.
    fn wait_for_none(&self, deadline: std::time::Instant) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        let none = loop {
            // Checked after announcing the wait: a write ending after this sees the
            // announcement and unparks (an unpark before the park makes it return at once).
            if self.count.load(Ordering::SeqCst) == 0 {
                break true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                break false;
            }
            std::thread::park_timeout(deadline - now);
        };
        self.waiting.store(false, Ordering::SeqCst);
        none
    }
}

impl std::ops::Deref for Committer {
    type Target = Queue;

    fn deref(&self) -> &Queue {
        &self.queue
    }
}

/// Resolves when a submitted write is durable. Clones wait for the same write: a chat keeps
/// the receipt of its newest write so that reads can wait for it (`LoadedChat::last_write`).
#[derive(Clone, Debug)]
pub struct Receipt(watch::Receiver<Outcome>);

impl Receipt {
    /// Whether the write is known to be durable now.
    pub fn is_durable(&self) -> bool {
        matches!(*self.0.borrow(), Some(Ok(())))
    }

    /// Whether the write is done with, durable or failed.
    pub fn is_settled(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// A receipt for a write that failed before it reached the committer: what waits for it
    /// gets `error`.
    pub fn failed(error: EngineError) -> Receipt {
        let (_, rx) = watch::channel(Some(Err(error)));
        Receipt(rx)
    }

    pub async fn durable(mut self) -> Result<(), EngineError> {
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
            Err(_) => Err(EngineError::Storage("the daemon is shutting down".into())),
        }
    }
}

impl Committer {
    /// Starts the committer task.
    pub fn start(
        store: Store,
        events: broadcast::Sender<Event>,
        space: Arc<Space>,
        records: Records,
        durable_write_seconds: prometheus_client::metrics::histogram::Histogram,
    ) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let unsubmitted = Arc::new(Unsubmitted::default());
        let (thread_failed, thread_unsubmitted) = (failed.clone(), unsubmitted.clone());
        let thread = std::thread::Builder::new()
            .name("chatsyncd-commit".into())
            .spawn(move || {
                run(
                    store,
                    rx,
                    events,
                    records,
                    thread_failed,
                    thread_unsubmitted,
                    durable_write_seconds,
                )
            })?;
        // Until this is set, a wait for writes ends only at its deadline.
        let _ = unsubmitted.committer.set(thread.thread().clone());
        Ok(Committer {
            queue: Queue {
                tx,
                failed,
                space,
                unsubmitted,
            },
            thread,
        })
    }

    /// Stops the thread after it has written, flushed and answered everything already
    /// submitted. Clones of the queue must be gone (the thread runs while any is left).
    pub async fn close(self) {
        drop(self.queue);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the committer thread failed"),
        }
    }
}

impl Queue {
    /// Whether a new write may begin: refused once a flush has failed, and while the disk has
    /// less than the reserve free (until space comes back). Every write checks this before it
    /// changes anything, so that a refused write leaves nothing behind.
    pub fn check_healthy(&self) -> Result<(), EngineError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(EngineError::Storage(
                "the store failed to write earlier; restart chatsyncd (see its log)".into(),
            ));
        }
        self.space.room().map_err(|free| {
            EngineError::StorageFull(format!(
                "the disk holding the store is nearly full ({free} bytes free, {} kept in \
                 reserve): nothing was written; free some space and try again",
                self.space.reserve()
            ))
        })
    }

    /// [`Self::check_healthy`] for a write of about `bytes`: also refused when it would take
    /// the disk below its reserve (`Space::room_for`).
    pub fn check_room_for(&self, bytes: usize) -> Result<(), EngineError> {
        self.check_healthy()?;
        self.space.room_for(bytes as u64).map_err(|free| {
            EngineError::StorageFull(format!(
                "the disk holding the store has {free} bytes free: too little for {bytes} more \
                 bytes and the {} kept in reserve; nothing was written",
                self.space.reserve()
            ))
        })
    }

    /// The store's disk: free space and whether writes are refused for want of it.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Marks the store failed after a write error outside the committer.
    pub fn fail(&self, why: &str) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %why, "store write failed; refusing further writes");
        }
    }

    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    /// Announces a write about to happen. The committer waits briefly for announced writes
    /// before flushing, so that writes arriving together share one flush.
    pub fn begin(&self) -> Write<'_> {
        self.unsubmitted.begin();
        Write {
            queue: self,
            submitted: false,
        }
    }

    /// Waits until everything submitted before is written and durable.
    pub async fn barrier(&self) -> Result<(), EngineError> {
        self.begin()
            .submit(Vec::new(), Vec::new())
            .await?
            .durable()
            .await
    }
}

/// A write in progress; see [`Committer::begin`]. Dropping it unsubmitted withdraws it.
pub struct Write<'a> {
    queue: &'a Queue,
    submitted: bool,
}

impl<'a> Write<'a> {
    /// Takes the write's place in the queue (waiting while it is full), so that it can then be
    /// submitted without waiting. Taken before a change is made in memory, it leaves no point
    /// between the change and its submission where a caller that goes away (a request whose
    /// client hung up) could leave the change in memory but never written.
    pub async fn reserve(self) -> Result<Reserved<'a>, EngineError> {
        let permit = self
            .queue
            .tx
            .reserve()
            .await
            .map_err(|_| EngineError::Storage("the daemon is shutting down".into()))?;
        Ok(Reserved {
            write: self,
            permit,
        })
    }

    /// Queues a write's store writes and events; the writes are made in submission order, and
    /// the events published and the receipt resolved once a flush has made them durable.
    pub async fn submit(
        mut self,
        writes: Vec<StoreWrite>,
        events: Vec<Event>,
    ) -> Result<Receipt, EngineError> {
        let (done, rx) = watch::channel(None);
        self.queue
            .tx
            .send(Pending {
                writes,
                events,
                done,
                submitted: std::time::Instant::now(),
            })
            .await
            .map_err(|_| EngineError::Storage("the daemon is shutting down".into()))?;
        self.submitted = true;
        self.queue.unsubmitted.end();
        Ok(Receipt(rx))
    }
}

/// A write with its place in the queue: see [`Write::reserve`].
pub struct Reserved<'a> {
    write: Write<'a>,
    permit: mpsc::Permit<'a, Pending>,
}

impl Reserved<'_> {
    /// [`Write::submit`], at once.
    pub fn submit(mut self, writes: Vec<StoreWrite>, events: Vec<Event>) -> Receipt {
        let (done, rx) = watch::channel(None);
        self.permit.send(Pending {
            writes,
            events,
            done,
            submitted: std::time::Instant::now(),
        });
        self.write.submitted = true;
        self.write.queue.unsubmitted.end();
        Receipt(rx)
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if !self.submitted {
            self.queue.unsubmitted.end();
        }
    }
}

/// The committer loop. It runs on its own thread, not the async runtime: a flush blocks, and
/// handing each one to a blocking-pool thread cost more in thread wake-ups than the flush.
fn run(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    events: broadcast::Sender<Event>,
    records: Records,
    failed: Arc<AtomicBool>,
    unsubmitted: Arc<Unsubmitted>,
    durable_write_seconds: prometheus_client::metrics::histogram::Histogram,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        // Writes already under way will submit within moments: wait for them (briefly) so
        // they share this flush instead of each paying for one.
        take_submitted(&mut rx, &mut batch);
        if batch.len() < MAX_BATCH
            && unsubmitted.wait_for_none(std::time::Instant::now() + MAX_WAIT)
        {
            take_submitted(&mut rx, &mut batch);
        }
        let started = std::time::Instant::now();
        let mut refused: Vec<Option<StoreError>> = batch.iter().map(|_| None).collect();
        let result = if failed.load(Ordering::Acquire) {
            Err(EngineError::Storage(
                "the store failed to write earlier".into(),
            ))
        } else {
            write_batch(&store, &batch, &mut refused)
                .and_then(|()| store.flush())
                .map_err(EngineError::from)
        };
        tracing::trace!(
            batch = batch.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        if let Err(e) = &result
            && !failed.swap(true, Ordering::AcqRel)
        {
            tracing::error!(error = %e, "store write failed; refusing further writes");
        }
        for (pending, refused) in batch.drain(..).zip(refused) {
            match (&result, refused) {
                (Ok(()), Some(e)) => {
                    pending.done.send_replace(Some(Err(EngineError::from(e))));
                }
                (Ok(()), None) => {
                    records_made_durable(&records, &pending.writes);
                    for event in pending.events {
                        // No subscribers is fine.
                        let _ = events.send(event);
                    }
                    durable_write_seconds.observe(pending.submitted.elapsed().as_secs_f64());
                    pending.done.send_replace(Some(Ok(())));
                }
                (Err(e), _) => {
                    pending.done.send_replace(Some(Err(e.clone())));
                }
            }
        }
    }
}

/// Puts the records of durable chunk writes and new chats in memory, in submission order (a
/// chat's writes are submitted in chunk order, so the last one stays). The chunk number went up already, when the
/// write was made (`Engine::chunk_write`), and never goes back.
fn records_made_durable(records: &Records, writes: &[StoreWrite]) {
    let mut records = records.write().unwrap_or_else(|p| p.into_inner());
    for write in writes {
        match write {
            StoreWrite::Chunk { chat, record, .. } => {
                if let Some(current) = records.get_mut(chat) {
                    let next_seq = current.next_seq.max(record.next_seq);
                    *current = record.clone();
                    current.next_seq = next_seq;
                }
            }
            StoreWrite::NewChat { chat, record, .. } => {
                records.insert(chat.clone(), record.clone());
            }
            StoreWrite::Compact { .. } | StoreWrite::ForgetAttestations { .. } => {}
        }
    }
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`].
fn take_submitted(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

/// Makes a group's store writes in submission order: each run of chunks in one
/// `Store::append_chunks`, with each chat's newest record; compactions between them alone. A
/// failed compaction is put in `refused` at its submission's place; any other failure fails the
/// whole group.
fn write_batch(
    store: &Store,
    batch: &[Pending],
    refused: &mut [Option<StoreError>],
) -> Result<(), StoreError> {
    let mut chunks: Vec<(&ChatId, u64, &[u8])> = Vec::new();
    let mut records: BTreeMap<&ChatId, &ChatRecord> = BTreeMap::new();
    let append = |chunks: &mut Vec<_>, records: &mut BTreeMap<_, _>| {
        if chunks.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = std::mem::take(records).into_iter().collect();
        store.append_chunks(chunks, &records)?;
        chunks.clear();
        Ok::<_, StoreError>(())
    };
    for (pending, refused) in batch.iter().zip(refused.iter_mut()) {
        for write in &pending.writes {
            match write {
                StoreWrite::Chunk {
                    chat,
                    seq,
                    bytes,
                    record,
                } => {
                    chunks.push((chat, *seq, bytes.as_slice()));
                    // A later record of the same chat includes this chunk.
                    records.insert(chat, record);
                }
                StoreWrite::Compact {
                    chat,
                    base,
                    through,
                } => {
                    append(&mut chunks, &mut records)?;
                    if let Err(e) = store.compact(chat, base, *through) {
                        *refused = Some(e);
                    }
                }
                StoreWrite::NewChat {
                    chat,
                    record,
                    bytes,
                } => {
                    append(&mut chunks, &mut records)?;
                    store.create_chat(chat, record, bytes)?;
                }
                StoreWrite::ForgetAttestations { chat, stale } => {
                    append(&mut chunks, &mut records)?;
                    store.remove_attestations(chat, stale)?;
                }
            }
        }
    }
    append(&mut chunks, &mut records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn unsubmitted_for_this_thread() -> Arc<Unsubmitted> {
        let unsubmitted = Arc::new(Unsubmitted::default());
        let _ = unsubmitted.committer.set(std::thread::current());
        unsubmitted
    }

    #[test]
    fn no_write_under_way_means_no_wait() {
        let unsubmitted = unsubmitted_for_this_thread();
        assert!(unsubmitted.wait_for_none(Instant::now() + Duration::from_secs(60)));
    }

    #[test]
    fn a_write_never_submitted_ends_the_wait_at_its_deadline() {
        let unsubmitted = unsubmitted_for_this_thread();
        unsubmitted.begin();
        assert!(!unsubmitted.wait_for_none(Instant::now() + Duration::from_millis(20)));
    }

    #[test]
    fn the_last_write_to_submit_wakes_the_waiting_committer() {
        let unsubmitted = unsubmitted_for_this_thread();
        unsubmitted.begin();
        unsubmitted.begin();
        let writers = unsubmitted.clone();
        let ending = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writers.end();
            std::thread::sleep(Duration::from_millis(20));
            writers.end();
        });
        let started = Instant::now();
        let deadline = Duration::from_secs(30);
        assert!(unsubmitted.wait_for_none(started + deadline));
        assert_eq!(unsubmitted.count.load(Ordering::SeqCst), 0);
        // Woken by the second end, not by the deadline.
        assert!(started.elapsed() < deadline);
        ending.join().unwrap();
    }
}
