//! Writes that create something (a post, a chat) are sent with an idempotency key and retried,
//! with the same key, when the answer was lost: the daemon applies them once and answers a
//! retry with what the first attempt made (docs/api.md, `Idempotency-Key`). When no answer
//! comes at all, the user is told that the write may have been stored, and how to finish it
//! without a duplicate.

use std::{future::Future, time::Duration};

use chatsync_api::ClientError;

/// Waits before each retry of a write whose answer was lost.
const RETRY_AFTER: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// A fresh key for one command's write.
pub fn new_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Runs `attempt` with `key`, again (same key) while its answer is lost on the way; the
/// last error, if none gets through, says that the write may have been stored.
pub async fn with_key<T, F, Fut>(what: &str, key: &str, attempt: F) -> anyhow::Result<T>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    retry(what, key, &RETRY_AFTER, attempt).await
}

async fn retry<T, F, Fut>(
    what: &str,
    key: &str,
    waits: &[Duration],
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut waits = waits.iter();
    let mut lost = false;
    loop {
        let e = match attempt(key.to_string()).await {
            Err(e @ ClientError::Transport(_)) => e,
            // Once an answer was lost, a daemon gone meanwhile (restarting) is waited for too.
            Err(e @ ClientError::NotRunning { .. }) if lost => e,
            other => return Ok(other?),
        };
        lost = true;
        match waits.next() {
            Some(wait) => {
                eprintln!("warning: no answer from the daemon ({e}); trying again");
                tokio::time::sleep(*wait).await;
            }
            None => anyhow::bail!(
                "no answer from the daemon ({e}): the {what} may or may not have been stored. \
                 Run the same command again with --idempotency-key {key}: it is stored once, \
                 whatever happened"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn a_lost_answer_is_asked_again_with_the_same_key() {
        let keys = Mutex::new(Vec::new());
        let got = retry("post", "k1", &[Duration::ZERO; 3], |key| {
            let mut seen = keys.lock().unwrap_or_else(|p| p.into_inner());
            seen.push(key);
            let n = seen.len();
            async move {
                match n {
                    1 => Err(ClientError::Transport("connection reset".into())),
                    2 => Err(ClientError::NotRunning {
                        socket: "api.sock".into(),
                    }),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));
        assert_eq!(*keys.lock().unwrap_or_else(|p| p.into_inner()), ["k1"; 3]);
    }

    #[tokio::test]
    async fn no_answer_at_all_says_how_to_finish_without_a_duplicate() {
        let got: anyhow::Result<()> = retry("post", "k1", &[Duration::ZERO; 2], |_| async {
            Err(ClientError::Transport("timed out".into()))
        })
        .await;
        let why = format!("{:#}", got.err().map(|e| e.to_string()).unwrap_or_default());
        assert!(
            why.contains("may or may not") && why.contains("--idempotency-key k1"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_daemon_that_is_not_running_is_not_waited_for() {
        let got: anyhow::Result<()> = retry("post", "k1", &[Duration::from_secs(60)], |_| async {
            Err(ClientError::NotRunning {
                socket: "api.sock".into(),
            })
        })
        .await;
        assert!(got.is_err());
    }
}
