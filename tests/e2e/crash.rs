//! Durability under SIGKILL: a post whose id the daemon returned survives a kill -9 at any
//! moment, and nothing comes back twice.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chatsync_api::client::{Client, ClientError};
use chatsync_api::wire::MessageJson;
use tokio::sync::Notify;

use crate::support::{Device, random_u64};

const ROUNDS: usize = 6;
const WRITERS: usize = 8;

/// One acknowledged post.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    text: String,
    writer: usize,
}

/// Every message of a chat, oldest first, paging backwards 1000 at a time.
async fn all_messages(client: &Client, chat: &str) -> Vec<MessageJson> {
    let mut out: Vec<MessageJson> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut page = client
            .messages(chat, 1000, before.as_deref())
            .await
            .expect("cannot list messages");
        let full = page.len() == 1000;
        let Some(first) = page.first() else { break };
        before = Some(first.id.clone());
        page.append(&mut out);
        out = page;
        if !full {
            break;
        }
    }
    out
}

/// Posts until the daemon stops answering; returns the error that ended it.
async fn writer(
    client: Client,
    chat: String,
    round: usize,
    writer: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
    first_ack: Arc<Notify>,
) -> ClientError {
    for i in 0.. {
        let text = format!("round {round} writer {writer} post {i}");
        match client.post(&chat, &text, None).await {
            Ok(m) => {
                assert_eq!(m.text, text, "the daemon stored another text");
                acked.lock().expect("lock").push(Acked {
                    id: m.id,
                    text,
                    writer,
                });
                first_ack.notify_one();
            }
            Err(e) => return e,
        }
    }
    unreachable!()
}

/// Posts from [`WRITERS`] concurrent writers until the daemon child is SIGKILLed, 20 to 200 ms
/// after the first acknowledgement (so that every round has something to lose). Returns the
/// acknowledged posts, and the most messages the chat was seen to have meanwhile (the API shows
/// only what is durable, so no crash may take the count below it).
async fn post_until_killed(dev: &mut Device, chat: &str, round: usize) -> (Vec<Acked>, u64) {
    let client = dev.client();
    let watcher = {
        let (client, chat) = (client.clone(), chat.to_string());
        tokio::spawn(async move {
            let mut most = 0;
            while let Ok(c) = client.chat(&chat).await {
                most = most.max(c.messages);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let first_ack = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                client.clone(),
                chat.to_string(),
                round,
                w,
                acked.clone(),
                first_ack.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), first_ack.notified())
        .await
        .unwrap_or_else(|_| panic!("round {round}: no post acknowledged within 30 s"));
    let delay = Duration::from_millis(20 + random_u64() % 181);
    tokio::time::sleep(delay).await;
    dev.kill_daemon();
    for task in tasks {
        let err = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap_or_else(|_| panic!("round {round}: a writer hung after the kill"))
            .expect("writer task panicked");
        // The daemon died mid-request: the connection failed, it did not answer an error.
        assert!(
            matches!(
                err,
                ClientError::NotRunning { .. } | ClientError::Transport(_)
            ),
            "round {round}: a post failed with an API error before the kill: {err:?}\n{}",
            dev.daemon_logs()
        );
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(!acked.is_empty(), "round {round}: nothing acknowledged");
    eprintln!(
        "round {round}: {} posts acknowledged, killed after {delay:?}",
        acked.len()
    );
    let seen = tokio::time::timeout(Duration::from_secs(20), watcher)
        .await
        .unwrap_or_else(|_| panic!("round {round}: the watcher hung after the kill"))
        .expect("watcher task panicked");
    (acked, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_posts_survive_sigkill() {
    let mut dev = Device::new();
    dev.spawn_daemon();
    let chat = dev
        .client()
        .create_chat("crash")
        .await
        .expect("cannot create the chat")
        .id;

    let mut all_acked: Vec<Acked> = Vec::new();
    for round in 0..ROUNDS {
        let (acked, seen) = post_until_killed(&mut dev, &chat, round).await;
        all_acked.extend(acked);

        dev.spawn_daemon();
        let client = dev.client();
        let messages = all_messages(&client, &chat).await;
        assert!(
            messages.len() as u64 >= seen,
            "round {round}: the chat was seen with {seen} messages before the kill, {} after",
            messages.len()
        );
        let by_id: HashMap<&str, &MessageJson> =
            messages.iter().map(|m| (m.id.as_str(), m)).collect();
        assert_eq!(
            by_id.len(),
            messages.len(),
            "round {round}: an id is listed twice"
        );
        let mut texts = HashSet::new();
        for m in &messages {
            assert!(
                texts.insert(m.text.as_str()),
                "round {round}: {:?} is in the chat twice",
                m.text
            );
            assert!(!m.deleted && !m.edited, "round {round}: {m:?}");
        }
        let lost: Vec<&Acked> = all_acked
            .iter()
            .filter(|a| by_id.get(a.id.as_str()).is_none_or(|m| m.text != a.text))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged posts are missing or changed after kill -9, \
             e.g. {:?}\n{}",
            lost.len(),
            all_acked.len(),
            lost.first(),
            dev.daemon_logs()
        );
        // Each writer posted one after another: its posts keep their order.
        let position: HashMap<&str, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i))
            .collect();
        for w in 0..WRITERS {
            let order: Vec<usize> = all_acked
                .iter()
                .filter(|a| a.writer == w)
                .map(|a| position[a.id.as_str()])
                .collect();
            assert!(
                order.is_sorted(),
                "round {round}: writer {w}'s posts are out of order: {order:?}"
            );
        }
        // The chat still takes posts after the crash.
        let m = client
            .post(&chat, &format!("round {round} after restart"), None)
            .await
            .expect("posting after a restart");
        all_acked.push(Acked {
            id: m.id,
            text: m.text,
            writer: usize::MAX,
        });
        assert_eq!(
            client.chat(&chat).await.expect("chat").messages,
            messages.len() as u64 + 1,
            "round {round}: the chat's message count disagrees with its messages"
        );
    }
    dev.kill_daemon();
}

/// The chat record (title, message count, last activity: what `chatsync chats` shows) must
/// agree with the chat's messages after a kill -9, before anything else is written: the store
/// writes a post's chunk and the record update in one transaction. The window a non-atomic
/// write would leave is small, so this runs many short kill rounds under CPU pressure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_record_agrees_with_messages_after_sigkill() {
    // CPU pressure widens the window (the daemon is preempted between the two writes).
    let _hogs = CpuHogs::start(4);
    let mut dev = Device::new();
    dev.spawn_daemon();
    let chat = dev.client().create_chat("counts").await.expect("create").id;
    for round in 0..40 {
        let (_, seen) = post_until_killed(&mut dev, &chat, round).await;
        dev.spawn_daemon();
        let client = dev.client();
        let messages = all_messages(&client, &chat).await;
        let record = client.chat(&chat).await.expect("chat");
        assert!(
            record.messages >= seen,
            "round {round}: the count went back from {seen} to {} across the kill",
            record.messages
        );
        assert_eq!(
            record.messages,
            messages.len() as u64,
            "round {round}: `chatsync chats` would show {} messages; the chat has {}",
            record.messages,
            messages.len()
        );
        let newest = messages.iter().map(|m| m.ts).max().unwrap_or(0);
        assert!(
            record.last_activity >= newest,
            "round {round}: last activity {} is older than the newest message {newest}",
            record.last_activity
        );
    }
    dev.kill_daemon();
}

/// Threads that keep the CPUs busy until dropped.
struct CpuHogs {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    fn start(n: usize) -> CpuHogs {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
