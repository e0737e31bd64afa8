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
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::{EngineError, events::Event};
use crate::store::Store;

/// Submissions waiting for a flush, at most. Writers wait (back-pressure) beyond it.
const QUEUE: usize = 8192;
/// Submissions acknowledged by one flush, at most.
const MAX_BATCH: usize = 8192;

struct Pending {
    events: Vec<Event>,
    done: oneshot::Sender<Result<(), EngineError>>,
}

/// Handle for submitting writes to the committer task.
pub struct Committer {
    tx: mpsc::Sender<Pending>,
    failed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
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
    pub fn start(store: Store, events: broadcast::Sender<Event>) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(store, rx, events, failed.clone()));
        Committer { tx, failed, task }
    }

    /// Stops the task after it has flushed and answered everything already submitted.
    pub async fn close(self) {
        drop(self.tx);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the committer task failed");
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

    /// Queues events of a write that is already in the store; they are published, and the
    /// receipt resolves, once a flush has made the write durable.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Receipt, EngineError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Pending { events, done })
            .await
            .map_err(|_| EngineError::Storage("the daemon is shutting down".into()))?;
        Ok(Receipt(rx))
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    events: broadcast::Sender<Event>,
    failed: Arc<AtomicBool>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let result = if failed.load(Ordering::Acquire) {
            Err(EngineError::Storage(
                "the store failed to write earlier".into(),
            ))
        } else {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(EngineError::from(e)),
                Err(e) => Err(EngineError::Storage(format!("flush task failed: {e}"))),
            }
        };
        if let Err(e) = &result
            && !failed.swap(true, Ordering::AcqRel)
        {
            tracing::error!(error = %e, "store flush failed; refusing further writes");
        }
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
