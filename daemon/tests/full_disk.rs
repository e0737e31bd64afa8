//! A full disk never bricks a device: with the home on a small tmpfs, new writes are refused
//! (`storage_full`) before the disk is full while reads keep working, writing resumes by
//! itself when space comes back, and a start on a disk too full to open the store refuses
//! clearly and leaves the store openable once space is freed.
//!
//! Mounting a tmpfs needs root: without it (or without `mount`) the tests say so and pass.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use chatsync_api::wire::{ErrorBody, MessageListJson, StoreState};
use chatsync_daemon::{config::Config, store::free_bytes};
use chatsync_testkit::TestDaemon;
use reqwest::StatusCode;
use serde_json::json;
use tempfile::TempDir;

/// A tmpfs of a fixed size, mounted for the test and unmounted after it.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("csfull")
            .tempdir_in("/tmp")
            .unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: no `mount` command: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A home for a daemon on this disk.
    fn home(&self) -> Arc<TempDir> {
        Arc::new(tempfile::tempdir_in(self.path()).unwrap())
    }

    /// Fills the disk until `leave` bytes are free (0: until a write fails for want of space).
    fn fill(&self, leave: u64) -> PathBuf {
        let path = self
            .path()
            .join(format!("filler-{}", rand::random::<u32>()));
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        loop {
            let free = free_bytes(self.path()).unwrap();
            if free <= leave {
                break;
            }
            let n = (free - leave).min(block.len() as u64) as usize;
            if let Err(e) = file.write_all(&block[..n]) {
                assert_eq!(e.raw_os_error(), Some(libc_enospc()), "{e}");
                break;
            }
        }
        // Whatever could not be written stays unwritten: the disk is as full as asked.
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// ENOSPC.
fn libc_enospc() -> i32 {
    28
}

fn config(reserve_mb: u64) -> Config {
    let mut config = Config::default();
    config.store.reserve_mb = reserve_mb;
    config.store.cache_mb = 1;
    config
}

/// Waits out the interval at which free space is measured again.
async fn let_space_be_measured() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stop_at_the_reserve_and_resume_when_space_comes_back() {
    let Some(disk) = Tmpfs::mount(64) else {
        return;
    };
    let d = TestDaemon::try_start_in(disk.home(), config(8))
        .await
        .unwrap();
    let chat = d.create_chat("family").await.id;
    d.post_message(&chat, "before").await;
    assert_eq!(d.status().await.store_state, StoreState::Ok);

    let filler = disk.fill(4 * 1024 * 1024);
    let_space_be_measured().await;
    let refused = d
        .post(
            &format!("/chats/{chat}/messages"),
            json!({ "text": "refused" }),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{refused:?}"
    );
    let body: ErrorBody = refused.json(StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(body.error.code, chatsync_api::ErrorCode::StorageFull);
    let created = d.post("/chats", json!({ "title": "new" })).await;
    assert_eq!(created.status, StatusCode::INSUFFICIENT_STORAGE);
    // Reads work, and show nothing of what was refused.
    let texts: Vec<String> = d
        .get(&format!("/chats/{chat}/messages"))
        .await
        .json::<MessageListJson>(StatusCode::OK)
        .messages
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["before"]);
    let status = d.status().await;
    assert_eq!(status.store_state, StoreState::Full);
    assert!(status.store_free_bytes.unwrap() < 8 * 1024 * 1024);

    // Space comes back: writing resumes, with no restart.
    std::fs::remove_file(filler).unwrap();
    let_space_be_measured().await;
    d.post_message(&chat, "after").await;
    assert_eq!(d.status().await.store_state, StoreState::Ok);
    assert_eq!(d.chats().await.len(), 1);
    let home = d.shutdown().await;
    // And all of it is there after a restart.
    let d = TestDaemon::try_start_in(home, config(8)).await.unwrap();
    assert_eq!(d.chat(&chat).await.messages, 2);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_full_disk_never_leaves_the_store_unopenable() {
    let Some(disk) = Tmpfs::mount(64) else {
        return;
    };
    let d = TestDaemon::try_start_in(disk.home(), config(1))
        .await
        .unwrap();
    let chat = d.create_chat("family").await.id;
    for i in 0..20 {
        d.post_message(&chat, &format!("m{i}")).await;
    }
    let home = d.shutdown().await;
    let store = home.path().join("data").join("store");

    // Completely full: the store cannot even write its snapshot at start.
    let filler = disk.fill(0);
    for _ in 0..2 {
        match TestDaemon::try_start_in(home.clone(), config(1)).await {
            Err(why) => assert!(why.contains("is full"), "{why}"),
            Ok(d) => {
                // It opened after all: then it must refuse writes, not fail them.
                let status = d.status().await;
                assert_eq!(status.store_state, StoreState::Full, "{status:?}");
                d.shutdown().await;
            }
        }
        let unfinished: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".generating"))
            .collect();
        assert!(unfinished.is_empty(), "left behind: {unfinished:?}");
    }

    // Space freed: it starts, with everything it had.
    std::fs::remove_file(filler).unwrap();
    let d = TestDaemon::try_start_in(home, config(1)).await.unwrap();
    assert_eq!(d.chat(&chat).await.messages, 20);
    d.post_message(&chat, "after").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_under_a_store_without_reserve_recovers_once_space_is_freed() {
    let Some(disk) = Tmpfs::mount(64) else {
        return;
    };
    // No reserve: the disk fills under sled itself (as when the reserve is too small for what
    // another program writes meanwhile).
    let d = TestDaemon::try_start_in(disk.home(), config(0))
        .await
        .unwrap();
    let chat = d.create_chat("family").await.id;
    d.post_message(&chat, "before").await;
    let filler = disk.fill(0);
    let mut failed = Vec::new();
    for i in 0..50 {
        let text = format!("{i} {}", "x".repeat(60_000));
        let reply = d
            .post(&format!("/chats/{chat}/messages"), json!({ "text": text }))
            .await;
        if reply.status != StatusCode::CREATED {
            failed.push(text);
        }
    }
    eprintln!("{} of 50 posts failed on the full disk", failed.len());
    assert!(!failed.is_empty(), "the disk never filled");
    // An error means not stored: no read shows a post that was answered with one. (Once the
    // store has failed, what it holds is unknown until a restart; a read of the chat that
    // failed says so.)
    let read = d.get(&format!("/chats/{chat}/messages?limit=100")).await;
    if read.status == StatusCode::OK {
        let shown = read.json::<MessageListJson>(StatusCode::OK).messages;
        for post in &failed {
            assert!(
                !shown.iter().any(|m| &m.text == post),
                "a post answered with an error is shown: {}",
                &post[..8]
            );
        }
    } else {
        read.error(StatusCode::SERVICE_UNAVAILABLE, "storage");
    }
    // Stopping finishes (an error closing the store is said, not hung on).
    let (home, stopped) = d.shutdown_even_failed().await;
    eprintln!("stopped: {stopped:?}");
    // Starts on the still-full disk fail or refuse writes; none may leave the store broken.
    for _ in 0..2 {
        match TestDaemon::try_start_in(home.clone(), config(0)).await {
            Ok(d) => {
                let _ = d.shutdown_even_failed().await;
            }
            Err(why) => eprintln!("start on the full disk: {why}"),
        }
    }
    std::fs::remove_file(filler).unwrap();
    let d = TestDaemon::try_start_in(home, config(0)).await.unwrap();
    let texts: Vec<String> = d
        .get(&format!("/chats/{chat}/messages"))
        .await
        .json::<MessageListJson>(StatusCode::OK)
        .messages
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(texts.contains(&"before".to_string()), "{texts:?}");
    d.post_message(&chat, "after").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_short_of_space_still_answers_a_device_that_only_reads() {
    use chatsync_daemon::engine::EngineError;
    use chatsync_model::ChatId;
    use chatsync_testkit::engine::{close_engine, start_engine};
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_id) = start_engine(home_a.path(), "a", 0);
    let (b, b_id) = start_engine(home_b.path(), "b", 0);
    a.add_device(b_id.as_str(), None).await.unwrap();
    b.add_device(a_id.as_str(), None).await.unwrap();
    let chat = a.create_chat("family", None).await.unwrap().id;
    a.post(&chat, "first", None, None).await.unwrap();
    b.import_chat(&chat, &a.export_chat(&chat).await.unwrap())
        .await
        .unwrap();
    a.post(&chat, "second", None, None).await.unwrap();
    // A's disk is now too full for any write (a reserve larger than any disk).
    close_engine(a).await;
    let (a, _) = start_engine(home_a.path(), "a", u64::MAX);
    let a_dev = a_id.clone();
    let texts = |e: Arc<chatsync_daemon::engine::Engine>, chat: ChatId| async move {
        e.messages(&chat, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect::<Vec<_>>()
    };

    // B has nothing new: its messages carry no change, and A answers them with what B lacks.
    let refused = b_runs_a_session(&a, &b, &chat).await;
    assert!(
        refused.is_none(),
        "a device short of space refused a device that only reads: {refused:?}"
    );
    assert_eq!(texts(b.clone(), chat.clone()).await, ["first", "second"]);

    // What B writes cannot be stored on A: refused for want of space, and nothing of it shows.
    b.post(&chat, "third", None, None).await.unwrap();
    b.forget_sync(&a_dev, &chat);
    let refused = b_runs_a_session(&a, &b, &chat).await;
    assert!(
        matches!(refused, Some(EngineError::StorageFull(_))),
        "{refused:?}"
    );
    assert_eq!(texts(a, chat).await, ["first", "second"]);
}

/// B runs a sync session about `chat` with A, engine to engine; A's refusal, if it refused.
async fn b_runs_a_session(
    a: &chatsync_daemon::engine::Engine,
    b: &chatsync_daemon::engine::Engine,
    chat: &chatsync_model::ChatId,
) -> Option<chatsync_daemon::engine::EngineError> {
    use chatsync_daemon::engine::SyncRole;
    let (a_id, b_id) = (&a.device().id, &b.device().id);
    let mut to_a = b.sync_message(a_id, chat).await.unwrap().message;
    for _ in 0..10 {
        let message = to_a.take()?;
        let reply = match a
            .receive_sync(b_id, chat, SyncRole::Answering, &message)
            .await
        {
            Ok(reply) => reply.message?,
            Err(e) => return Some(e),
        };
        to_a = b
            .receive_sync(a_id, chat, SyncRole::Running, &reply)
            .await
            .unwrap()
            .message;
    }
    None
}
