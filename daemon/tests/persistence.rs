//! What survives a restart: chats, messages in their order, the device identity; and that
//! compaction loses and duplicates nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use chatsync_api::wire::{ChatJson, MessageJson};
use chatsync_daemon::{
    config::Config,
    store::{Store, Unsettled},
};
use chatsync_model::{ChatDoc, ChatId, Device, DeviceId, MessageId};
use chatsync_testkit::TestDaemon;
use reqwest::StatusCode;
use serde_json::json;

/// Posts `count` messages to `chat` from `tasks` concurrent tasks; returns what was posted,
/// keyed by text (texts are `{tag} {task}.{i}`), and the failures.
async fn try_post_concurrently(
    d: &TestDaemon,
    chat: &str,
    tag: &str,
    tasks: usize,
    count: usize,
) -> (BTreeMap<String, MessageJson>, Vec<String>) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let client = d.client.clone();
        let chat = chat.to_string();
        let tag = tag.to_string();
        let mine = count / tasks + usize::from(t < count % tasks);
        handles.push(tokio::spawn(async move {
            let mut posted = Vec::new();
            let mut failures = Vec::new();
            for i in 0..mine {
                match client.post(&chat, &format!("{tag} {t}.{i}"), None).await {
                    Ok(message) => posted.push(message),
                    Err(e) => failures.push(format!("POST {tag} {t}.{i}: {e}")),
                }
            }
            (posted, failures)
        }));
    }
    let mut all = BTreeMap::new();
    let mut all_failures = Vec::new();
    for handle in handles {
        let (posted, failures) = handle.await.unwrap();
        for m in posted {
            assert!(all.insert(m.text.clone(), m).is_none(), "duplicate text");
        }
        all_failures.extend(failures);
    }
    (all, all_failures)
}

/// [`try_post_concurrently`], asserting that every post succeeds.
async fn post_concurrently(
    d: &TestDaemon,
    chat: &str,
    tag: &str,
    tasks: usize,
    count: usize,
) -> BTreeMap<String, MessageJson> {
    let (posted, failures) = try_post_concurrently(d, chat, tag, tasks, count).await;
    assert!(failures.is_empty(), "posts failed: {failures:#?}");
    assert_eq!(posted.len(), count);
    posted
}

/// What is wrong with `listed` if it does not hold exactly the `posted` messages, each once.
fn check_same_messages(
    listed: &[MessageJson],
    posted: &BTreeMap<String, MessageJson>,
) -> Option<String> {
    let ids: BTreeSet<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    if ids.len() != listed.len() {
        return Some(format!(
            "{} messages are listed more than once",
            listed.len() - ids.len()
        ));
    }
    let missing: Vec<&String> = posted
        .keys()
        .filter(|text| !listed.iter().any(|m| &&m.text == text))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} of {} acknowledged messages are missing, e.g. {:?}",
            missing.len(),
            posted.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if listed.len() != posted.len() {
        return Some(format!(
            "{} messages listed, {} posted",
            listed.len(),
            posted.len()
        ));
    }
    listed
        .iter()
        .find(|m| posted.get(&m.text) != Some(*m))
        .map(|m| format!("message changed: {m:?}"))
}

/// Asserts that `listed` holds exactly the `posted` messages (each once).
#[track_caller]
fn assert_same_messages(listed: &[MessageJson], posted: &BTreeMap<String, MessageJson>) {
    if let Some(problem) = check_same_messages(listed, posted) {
        panic!("{problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_messages_and_identity_survive_a_restart() {
    let d = TestDaemon::start().await;
    let device_id = d.status().await.device_id;
    let one = d.create_chat("one").await;
    let two = d.create_chat("two").await;
    let three = d.create_chat("three").await;

    // 100 one by one, then 400 from several tasks at once, across all three chats.
    let mut sequential = Vec::new();
    for i in 0..100 {
        sequential.push(d.post_message(&one.id, &format!("seq {i}")).await);
    }
    let (more_one, in_two, in_three) = tokio::join!(
        post_concurrently(&d, &one.id, "one", 2, 100),
        post_concurrently(&d, &two.id, "two", 4, 150),
        post_concurrently(&d, &three.id, "three", 3, 150),
    );
    // Some later changes, which must survive too.
    let edit = &in_two.values().next().unwrap().id.clone();
    d.patch(
        &format!("/chats/{}/messages/{edit}", two.id),
        json!({ "text": "edited" }),
    )
    .await
    .json::<MessageJson>(StatusCode::OK);
    let gone = &in_three.values().next().unwrap().id.clone();
    d.delete(&format!("/chats/{}/messages/{gone}", three.id))
        .await
        .json::<MessageJson>(StatusCode::OK);
    d.put(
        &format!("/chats/{}/messages/{}/reaction", one.id, sequential[0].id),
        json!({ "reaction": "🎉" }),
    )
    .await
    .json::<MessageJson>(StatusCode::OK);
    d.patch(&format!("/chats/{}", three.id), json!({ "title": "3" }))
        .await
        .json::<ChatJson>(StatusCode::OK);

    let mut before: BTreeMap<String, Vec<MessageJson>> = BTreeMap::new();
    for chat in [&one, &two, &three] {
        before.insert(chat.id.clone(), d.all_messages(&chat.id, 1000).await);
    }
    // Sequential posts keep their order; every post is there once.
    let listed_one = &before[&one.id];
    let seq_ids: Vec<&str> = sequential.iter().map(|m| m.id.as_str()).collect();
    let listed_seq: Vec<&str> = listed_one
        .iter()
        .filter(|m| m.text.starts_with("seq "))
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(listed_seq, seq_ids);
    let mut all_one: BTreeMap<String, MessageJson> = more_one;
    for m in &sequential {
        all_one.insert(m.text.clone(), m.clone());
    }
    assert_eq!(listed_one.len(), 200);
    assert_eq!(before[&two.id].len(), 150);
    assert_eq!(before[&three.id].len(), 150);
    let unchanged = |listed: &[MessageJson]| -> Vec<MessageJson> {
        listed
            .iter()
            .filter(|m| !m.edited && !m.deleted && m.reactions.is_empty())
            .cloned()
            .collect()
    };
    assert_eq!(unchanged(listed_one).len(), 199);
    assert_same_messages(
        &unchanged(listed_one),
        &all_one
            .into_iter()
            .filter(|(_, m)| m.id != sequential[0].id)
            .collect(),
    );
    assert_same_messages(
        &unchanged(&before[&two.id]),
        &in_two.into_iter().filter(|(_, m)| &m.id != edit).collect(),
    );
    assert_same_messages(
        &unchanged(&before[&three.id]),
        &in_three
            .into_iter()
            .filter(|(_, m)| &m.id != gone)
            .collect(),
    );
    let chats_before = d.chats().await;
    assert_eq!(
        chats_before
            .iter()
            .map(|c| (c.id.as_str(), c.title.as_str(), c.messages))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            (one.id.as_str(), "one", 200),
            (two.id.as_str(), "two", 150),
            (three.id.as_str(), "3", 150),
        ])
    );

    let d = d.restart().await;
    let status = d.status().await;
    assert_eq!(status.device_id, device_id, "the device keeps its id");
    assert_eq!(status.chats, 3);
    assert_eq!(status.loaded_chats, 0, "start-up loads no chat");
    assert_eq!(d.chats().await, chats_before);
    for chat in [&one, &two, &three] {
        let after = d.all_messages(&chat.id, 1000).await;
        assert_eq!(
            after, before[&chat.id],
            "chat {} differs after the restart",
            chat.title
        );
    }
    // And the chats are still writable, continuing where they were.
    let last = d.post_message(&two.id, "after restart").await;
    let listed = d.messages(&two.id, Some(2), None).await;
    assert_eq!(listed[1], last);
    assert_eq!(listed[0], *before[&two.id].last().unwrap());
    assert_eq!(d.chat(&two.id).await.messages, 151);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_message_exactly_once() {
    // Each post is one chunk of about 350 bytes, and chunks are folded once they outweigh the
    // base (and 4 KiB): this many compacts many times over. (3000 would take over 20 s in a
    // debug build.)
    const COUNT: usize = 1200;
    let d = TestDaemon::start().await;
    let chat = d.create_chat("big").await;
    let posted = post_concurrently(&d, &chat.id, "m", 8, COUNT).await;
    let before = d.all_messages(&chat.id, 1000).await;
    assert_same_messages(&before, &posted);
    assert_eq!(d.chat(&chat.id).await.messages, COUNT as u64);
    let home = d.shutdown().await;

    // Compaction ran: far fewer chunks are stored than operations were made.
    let stored = stored_chat(home.path(), &chat.id);
    assert!(
        stored.chunks < COUNT as u64 / 3,
        "{} chunks left for {COUNT} posts: compaction did not run",
        stored.chunks
    );
    assert!(stored.base_bytes > 0);
    assert_eq!(stored.next_seq, COUNT as u64, "one chunk per post");

    let d = TestDaemon::start_in(home, Config::default()).await;
    let after = d.all_messages(&chat.id, 1000).await;
    assert_same_messages(&after, &posted);
    assert_eq!(after, before, "same messages in the same order");
    assert_eq!(d.chat(&chat.id).await.messages, COUNT as u64);
    // Still writable after the reload: chunk numbering continues.
    let next = d.post_message(&chat.id, "one more").await;
    let d = d.restart().await;
    let tail = d.messages(&chat.id, Some(2), None).await;
    assert_eq!(tail, vec![before.last().unwrap().clone(), next]);
    assert_eq!(d.chat(&chat.id).await.messages, COUNT as u64 + 1);
    d.shutdown().await;
}

/// How `chat` is stored in the store of the stopped daemon at `home`.
fn stored_chat(home: &std::path::Path, chat: &str) -> chatsync_daemon::store::StoredDoc {
    let paths = chatsync_daemon::paths::Paths::resolve(&chatsync_daemon::paths::PathArgs {
        home: Some(home.to_path_buf()),
        socket: None,
    })
    .unwrap();
    let store = Store::open(&paths.store_dir(), 4 << 20).expect("cannot open the store");
    store
        .load_chat(&ChatId::new(chat.to_string()).unwrap())
        .unwrap()
        .expect("the chat is stored")
}

/// A chat that goes quiet is folded into its base even when its chunks are too few for a
/// compaction while it is written to: a small chat left in chunks takes several times the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_that_goes_quiet_is_folded_into_its_base() {
    let mut config = Config::default();
    // Quiet after a second, unloaded after two.
    config.store.idle_unload_secs = 2;
    let d = TestDaemon::start_in(chatsync_testkit::home::temp_home(), config.clone()).await;
    let chat = d.create_chat("small").await;
    let posted = post_concurrently(&d, &chat.id, "m", 1, 5).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let home = d.shutdown().await;
    let stored = stored_chat(home.path(), &chat.id);
    assert_eq!(stored.chunks, 0, "the quiet chat kept its chunks");
    let d = TestDaemon::start_in(home, config).await;
    let after = d.all_messages(&chat.id, 1000).await;
    assert_same_messages(&after, &posted);
    // Writable after a fold of every chunk: numbering goes on, nothing is overwritten.
    let next = d.post_message(&chat.id, "one more").await;
    let d = d.restart().await;
    let mut expected = after;
    expected.push(next);
    assert_eq!(d.all_messages(&chat.id, 1000).await, expected);
    d.shutdown().await;
}

/// A crash can keep a group's chunks and lose the records written after them (the store writes
/// them in that order, not atomically). Here the store is left as such a crash leaves it: a
/// chunk past the chat's record, and the note of the chats being written. The next start
/// rebuilds the record, and chunk numbering goes on after that chunk (reusing its number would
/// overwrite it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_a_crash_left_behind_its_chunks_is_rebuilt_at_start() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("crash").await;
    for i in 0..3 {
        d.post_message(&chat.id, &format!("before {i}")).await;
    }
    let paths = d.paths.clone();
    let home = d.shutdown().await;

    {
        let store = Store::open(&paths.store_dir(), 4 << 20).unwrap();
        let id = ChatId::new(chat.id.clone()).unwrap();
        assert_eq!(store.unsettled().unwrap(), None, "a clean stop settles");
        let record = store
            .chat_records()
            .unwrap()
            .into_iter()
            .find(|(c, _)| *c == id)
            .unwrap()
            .1;
        assert_eq!((record.messages, record.next_seq), (3, 3));
        let stored = store.load_chat(&id).unwrap().unwrap();
        let writer = Device::new(DeviceId::new("writer").unwrap(), "writer").unwrap();
        let mut doc = ChatDoc::load(&stored.bytes, &writer).unwrap();
        let message = MessageId::new("lost-record").unwrap();
        doc.post(
            &writer,
            message,
            "after the crash",
            None,
            chatsync_testkit::now_ms(),
        )
        .unwrap();
        let chunk = doc.take_local_changes();
        // The chunk and the note, without the record.
        store.append_chunks(&[(&id, 3, &chunk)], &[]).unwrap();
        store.flush().unwrap();
        assert_eq!(
            store.unsettled().unwrap(),
            Some(Unsettled::Chats(vec![id.clone()]))
        );
    }

    let d = TestDaemon::start_in(home, Config::default()).await;
    let listed = d.chat(&chat.id).await;
    assert_eq!(listed.messages, 4, "the record counts the chunk again");
    let texts = d.texts(&chat.id).await;
    assert_eq!(texts.last().unwrap(), "after the crash");
    d.post_message(&chat.id, "after the restart").await;
    let d = d.restart().await;
    let texts = d.texts(&chat.id).await;
    assert_eq!(texts.len(), 5, "no chunk was overwritten: {texts:?}");
    assert!(texts.contains(&"after the crash".to_string()));
    assert!(texts.contains(&"after the restart".to_string()));
    assert_eq!(d.chat(&chat.id).await.messages, 5);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_home_is_refused() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("mine").await;
    let paths = d.paths.clone();
    let identity =
        chatsync_daemon::identity::Identity::load_or_create(&paths.identity_file()).unwrap();
    let device =
        chatsync_model::Device::with_session(identity.device_id.clone(), "second", b"second")
            .unwrap();
    let config = Config {
        network: chatsync_testkit::home::loopback_network(),
        ..Config::default()
    };
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        chatsync_daemon::daemon::serve(
            paths,
            config,
            identity,
            device,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("the second daemon should fail at once, not run");
    assert!(second.is_err(), "a second daemon started on the same home");
    // The first one is unharmed.
    assert_eq!(d.chat(&chat.id).await, chat);
    d.post_message(&chat.id, "still here").await;
    d.shutdown().await;
}

/// With the smallest memory budget every chat nobody is using is unloaded at once, so chats
/// are loaded again and again while others write to them. Every acknowledged post must still
/// be there, before and after a restart.
///
/// Fails: `Engine::chat` loads a chat from the store outside any lock and then inserts it into
/// the cache. If, meanwhile, another copy of the chat was loaded, written to and unloaded, the
/// stale copy is inserted: it lacks the newer messages and reuses their chunk sequence numbers,
/// so its next write overwrites an acknowledged chunk in the store. (Also seen with a 1 MiB
/// budget, less often.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_posts_survive_a_tiny_memory_budget() {
    let mut config = Config::default();
    config.store.memory_budget_mb = 0;
    let d = TestDaemon::start_with(config).await;
    let mut chats = Vec::new();
    for title in ["a", "b", "c", "d"] {
        chats.push(d.create_chat(title).await);
    }
    // Readers keep loading the chats while the writers write.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2 {
        let client = d.client.clone();
        let ids: Vec<String> = chats.iter().map(|c| c.id.clone()).collect();
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = client.messages(&ids[i % ids.len()], 1, None).await {
                    failures.push(format!("GET: {e}"));
                }
                i += 1;
            }
            failures
        }));
    }
    let posted = tokio::join!(
        try_post_concurrently(&d, &chats[0].id, "a", 2, 80),
        try_post_concurrently(&d, &chats[1].id, "b", 2, 80),
        try_post_concurrently(&d, &chats[2].id, "c", 2, 80),
        try_post_concurrently(&d, &chats[3].id, "d", 2, 80),
    );
    stop.store(true, Ordering::Relaxed);
    // Problems are collected, not asserted at once, so that the daemon is always stopped.
    let mut problems = Vec::new();
    for reader in readers {
        problems.extend(reader.await.unwrap());
    }
    let mut acknowledged = Vec::new();
    for (posted, failures) in [posted.0, posted.1, posted.2, posted.3] {
        problems.extend(failures);
        acknowledged.push(posted);
    }
    for (chat, posted) in chats.iter().zip(&acknowledged) {
        match d.try_all_messages(&chat.id, 1000).await {
            Ok(listed) => problems.extend(
                check_same_messages(&listed, posted).map(|p| format!("chat {}: {p}", chat.title)),
            ),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let d = d.restart().await;
    for (chat, posted) in chats.iter().zip(&acknowledged) {
        match d.try_all_messages(&chat.id, 1000).await {
            Ok(listed) => problems.extend(
                check_same_messages(&listed, posted)
                    .map(|p| format!("after restart, chat {}: {p}", chat.title)),
            ),
            Err(e) => problems.push(format!("after restart: {e}")),
        }
    }
    d.shutdown().await;
    assert!(
        problems.is_empty(),
        "{} problems, the first ones: {:#?}",
        problems.len(),
        &problems[..problems.len().min(8)]
    );
}

/// `serve` runs the whole daemon in-process; once it has returned, the store must be closed,
/// so that a daemon can start again on the same home at once.
///
/// Fails: the engine's committer task (which holds the store) outlives `serve`, so right
/// after `serve` returns the store is still locked ("another chatsyncd is already using the
/// store"). It is released a few milliseconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_the_store_before_returning() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("quick").await;
    d.post_message(&chat.id, "hi").await;
    let paths = d.paths.clone();
    let home = d.shutdown_without_waiting_for_the_store().await;
    let reopened = Store::open(&paths.store_dir(), 1 << 20).map(drop);
    // Let the old store close before the home is removed, whatever the outcome.
    chatsync_testkit::home::wait_store_released(&paths).await;
    drop(home);
    assert!(
        reopened.is_ok(),
        "the store is still open after serve returned: {:?}",
        reopened.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_whose_request_went_away_is_finished_not_made_twice() {
    use chatsync_testkit::engine::{close_engine, start_engine};
    use futures_util::FutureExt;
    let home = tempfile::tempdir().unwrap();
    let (engine, _) = start_engine(home.path(), "d", 0);
    // The first attempt goes away while its write is on its way to the disk (polled once:
    // everything up to the wait for the flush, then dropped). Should a flush be that quick,
    // another key is tried.
    let key = (0..50)
        .map(|i| format!("k{i}"))
        .find(|key| {
            engine
                .create_chat("family", Some(key))
                .now_or_never()
                .is_none()
        })
        .expect("every creation was durable at once");
    // The retry with the same key answers with that chat, and the chat takes posts.
    let chat = engine.create_chat("family", Some(&key)).await.unwrap();
    engine.post(&chat.id, "hello", None, None).await.unwrap();
    assert!(engine.list_chats().iter().any(|c| c.id == chat.id));
    close_engine(engine).await;
    // What is on disk is the chat the posts were made in.
    let (engine, _) = start_engine(home.path(), "d", 0);
    let shown: Vec<String> = engine
        .messages(&chat.id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(shown, ["hello"]);
    close_engine(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_reversed_before_the_first_is_durable_is_announced_both_times() {
    use chatsync_daemon::engine::Event;
    use chatsync_testkit::engine::{close_engine, start_engine};
    use futures_util::FutureExt;
    let home = tempfile::tempdir().unwrap();
    let (engine, _) = start_engine(home.path(), "d", 0);
    let chat = engine.create_chat("a", None).await.unwrap().id;
    let mut events = engine.subscribe();
    // The first rename is still on its way to the disk (its request went away) when the
    // second one reverses it. Should a flush be that quick, it is tried again.
    let mut expected = Vec::new();
    for _ in 0..50 {
        let pending = engine.rename_chat(&chat, "b").now_or_never().is_none();
        expected.push("b");
        engine.rename_chat(&chat, "a").await.unwrap();
        expected.push("a");
        if pending {
            break;
        }
    }
    let mut titles = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::ChatUpdated { record, .. } = event {
            titles.push(record.title);
        }
    }
    assert_eq!(titles, expected);
    close_engine(engine).await;
}
