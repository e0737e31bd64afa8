//! Group commit: many operations, one flush.
//!
//! An operation writes its chunk to the store (into sled's in-memory log) and then submits its
//! events here. The committer task takes everything submitted so far, flushes the store once,
//! and only then publishes the events and acknowledges each operation. While one flush runs,
//! new submissions queue up and share the next one, so the cost of durability is spread over
//! every operation that arrived during a flush.
//!
//! Events are published in submission order. Operations on one chat submit while holding that
//! chat's lock, so a chat's events come out in the order its changes were made.
//!
//! If a flush fails, the store is marked failed: every waiting and later write is refused,
//! because nothing can be acknowledged as durable any more.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::{EngineError, events::Event};
use crate::store::Store;

/// Submissions waiting for a flush, at most. Writers wait (back-pressure) beyond it.
const QUEUE: usize = 8192;
/// Submissions acknowledged by one flush, at most.
const MAX_BATCH: usize = 8192;
/// Longest a flush waits for writes that have begun but not yet submitted.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_micros(500);
/// How often it looks for them meanwhile.
const POLL: std::time::Duration = std::time::Duration::from_micros(20);

struct Pending {
    events: Vec<Event>,
    done: oneshot::Sender<Result<(), EngineError>>,
}

/// Handle for submitting writes to the committer task.
pub struct Committer {
    tx: mpsc::Sender<Pending>,
    failed: Arc<AtomicBool>,
    /// Writes begun and not yet answered (see [`Committer::begin`]).
    writers: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// Resolves when a submitted write is durable.
pub struct Receipt(oneshot::Receiver<Result<(), EngineError>>);

impl Receipt {
    pub async fn durable(self) -> Result<(), EngineError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(EngineError::Storage("the daemon is shutting down".into())))
    }
}

impl Committer {
    /// Starts the committer task.
    pub fn start(store: Store, events: broadcast::Sender<Event>) -> std::io::Result<Committer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let writers = Arc::new(AtomicUsize::new(0));
        let (thread_failed, thread_writers) = (failed.clone(), writers.clone());
        let thread = std::thread::Builder::new()
            .name("chatsyncd-commit".into())
            .spawn(move || run(store, rx, events, thread_failed, thread_writers))?;
        Ok(Committer {
            tx,
            failed,
            writers,
            thread,
        })
    }

    /// Stops the task after it has flushed and answered everything already submitted.
    pub async fn close(self) {
        drop(self.tx);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("the committer thread failed"),
        }
    }

    /// Refuses writes once a flush has failed.
    pub fn check_healthy(&self) -> Result<(), EngineError> {
        if self.failed.load(Ordering::Acquire) {
            Err(EngineError::Storage(
                "the store failed to write earlier; restart chatsyncd (see its log)".into(),
            ))
        } else {
            Ok(())
        }
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
        self.writers.fetch_add(1, Ordering::AcqRel);
        Write {
            committer: self,
            submitted: false,
        }
    }
}

/// A write in progress; see [`Committer::begin`]. Dropping it unsubmitted withdraws it.
pub struct Write<'a> {
    committer: &'a Committer,
    submitted: bool,
}

impl Write<'_> {
    /// Queues the events of a write that is already in the store; they are published, and
    /// the receipt resolves, once a flush has made the write durable.
    pub async fn submit(mut self, events: Vec<Event>) -> Result<Receipt, EngineError> {
        let (done, rx) = oneshot::channel();
        self.committer
            .tx
            .send(Pending { events, done })
            .await
            .map_err(|_| EngineError::Storage("the daemon is shutting down".into()))?;
        // From here on the committer counts this write as answered when it answers it.
        self.submitted = true;
        Ok(Receipt(rx))
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        if !self.submitted {
            self.committer.writers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The committer loop. It runs on its own thread, not the async runtime: a flush blocks, and
/// handing each one to a blocking-pool thread cost more in thread wake-ups than the flush.
fn run(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    events: broadcast::Sender<Event>,
    failed: Arc<AtomicBool>,
    writers: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        // Writes already under way will submit within moments: wait for them (briefly) so
        // they share this flush instead of each paying for one.
        let deadline = std::time::Instant::now() + MAX_WAIT;
        loop {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if batch.len() >= writers.load(Ordering::Acquire).min(MAX_BATCH)
                || std::time::Instant::now() >= deadline
            {
                break;
            }
            std::thread::sleep(POLL);
        }
        let started = std::time::Instant::now();
        let result = if failed.load(Ordering::Acquire) {
            Err(EngineError::Storage(
                "the store failed to write earlier".into(),
            ))
        } else {
            store.flush().map_err(EngineError::from)
        };
        tracing::trace!(
            batch = batch.len(),
            flush_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        if let Err(e) = &result
            && !failed.swap(true, Ordering::AcqRel)
        {
            tracing::error!(error = %e, "store flush failed; refusing further writes");
        }
        writers.fetch_sub(batch.len(), Ordering::AcqRel);
        for pending in batch.drain(..) {
            match &result {
                Ok(()) => {
                    for event in pending.events {
                        // No subscribers is fine.
                        let _ = events.send(event);
                    }
                    let _ = pending.done.send(Ok(()));
                }
                Err(e) => {
                    let _ = pending.done.send(Err(EngineError::Storage(e.to_string())));
                }
            }
        }
    }
}
