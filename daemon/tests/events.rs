//! `GET /v1/events`: the NDJSON event stream.

use std::time::{Duration, Instant};

use chatsync_api::wire::{ChatJson, MessageJson};
use chatsync_testkit::TestDaemon;
use reqwest::StatusCode;
use serde_json::{Value, json};

const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long to listen for events that must not come.
const QUIET: Duration = Duration::from_millis(300);

fn message_of(event: &Value) -> MessageJson {
    serde_json::from_value(event["message"].clone())
        .unwrap_or_else(|e| panic!("bad message in {event}: {e}"))
}

fn chat_of(event: &Value) -> ChatJson {
    serde_json::from_value(event["chat"].clone())
        .unwrap_or_else(|e| panic!("bad chat in {event}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_reported_in_order() {
    let d = TestDaemon::start().await;
    // `events` asserts the first line is a `hello` with this device's id and version.
    let mut events = d.events("").await;

    let chat = d.create_chat("news").await;
    let created = events.expect("chat.created").await;
    assert_eq!(chat_of(&created), chat);

    let m = d.post_message(&chat.id, "first").await;
    let other = d.post_message(&chat.id, "second").await;
    let path = format!("/chats/{}/messages/{}", chat.id, m.id);
    let edited: MessageJson = d
        .patch(&path, json!({ "text": "first, edited" }))
        .await
        .json(StatusCode::OK);
    let reacted: MessageJson = d
        .put(&format!("{path}/reaction"), json!({ "reaction": "👍" }))
        .await
        .json(StatusCode::OK);
    let unreacted: MessageJson = d
        .delete(&format!("{path}/reaction"))
        .await
        .json(StatusCode::OK);
    let deleted: MessageJson = d.delete(&path).await.json(StatusCode::OK);
    let renamed: ChatJson = d
        .patch(&format!("/chats/{}", chat.id), json!({ "title": "olds" }))
        .await
        .json(StatusCode::OK);
    d.post(&format!("/chats/{}/read", chat.id), json!({}))
        .await
        .json::<Value>(StatusCode::OK);

    let expected = [
        ("message.created", Some(&m)),
        ("message.created", Some(&other)),
        ("message.edited", Some(&edited)),
        ("message.reaction", Some(&reacted)),
        ("message.reaction", Some(&unreacted)),
        ("message.deleted", Some(&deleted)),
    ];
    for (kind, message) in expected {
        let event = events.expect(kind).await;
        assert_eq!(message_of(&event), *message.unwrap(), "{kind}");
    }
    let updated = events.expect("chat.updated").await;
    let updated = chat_of(&updated);
    assert_eq!(updated.id, chat.id);
    assert_eq!(updated.title, "olds");
    assert_eq!(updated.title, renamed.title);
    let read = events.expect("read.updated").await;
    assert_eq!(read["chat"], chat.id.as_str());
    assert_eq!(read["device"], d.device_id.as_str());
    assert_eq!(read["message"], other.id.as_str());

    // Failed and no-op requests announce nothing.
    d.patch(&path, json!({ "text": "again" }))
        .await
        .error(StatusCode::GONE, "deleted");
    d.post(&format!("/chats/{}/read", chat.id), json!({}))
        .await
        .json::<Value>(StatusCode::OK);
    d.post("/chats", json!({ "title": "" }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid");
    events.expect_quiet(QUIET).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_chats_are_announced() {
    let d = TestDaemon::start().await;
    let mut events = d.events("").await;
    let mut chats = Vec::new();
    for title in ["a", "b", "c"] {
        chats.push(d.create_chat(title).await);
    }
    for chat in &chats {
        let event = events.expect("chat.created").await;
        assert_eq!(chat_of(&event), *chat);
    }
    events.expect_quiet(QUIET).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_filter_only_gets_that_chat() {
    let d = TestDaemon::start().await;
    let alpha = d.create_chat("alpha").await;
    let beta = d.create_chat("beta").await;
    let mut everything = d.events("").await;
    let mut by_title = d.events("chat=alpha").await;
    let mut by_prefix = d.events(&format!("chat={}", &beta.id[..6])).await;

    let mut posted = Vec::new();
    for (i, chat) in [&beta, &alpha, &beta, &alpha, &beta]
        .into_iter()
        .enumerate()
    {
        posted.push(d.post_message(&chat.id, &format!("m{i}")).await);
    }
    let gamma = d.create_chat("gamma").await;
    d.post_message(&gamma.id, "elsewhere").await;

    for m in &posted {
        assert_eq!(message_of(&everything.expect("message.created").await), *m);
    }
    assert_eq!(chat_of(&everything.expect("chat.created").await), gamma);
    everything.expect("message.created").await;

    for m in posted.iter().filter(|m| m.chat == alpha.id) {
        assert_eq!(message_of(&by_title.expect("message.created").await), *m);
    }
    by_title.expect_quiet(QUIET).await;
    for m in posted.iter().filter(|m| m.chat == beta.id) {
        assert_eq!(message_of(&by_prefix.expect("message.created").await), *m);
    }
    by_prefix.expect_quiet(Duration::from_millis(50)).await;

    // Unknown and ambiguous filters are refused like any other chat name.
    d.get("/events?chat=nope-nope")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.create_chat("alpha").await;
    d.get("/events?chat=alpha")
        .await
        .error(StatusCode::CONFLICT, "ambiguous");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_are_announced_in_display_order() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("busy").await;
    let mut events = d.events("chat=busy").await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let client = d.client.clone();
        let chat = chat.id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let text = format!("task {t} message {i}");
                client.post(&chat, &text, None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut announced = Vec::new();
    for _ in 0..60 {
        announced.push(message_of(&events.expect("message.created").await));
    }
    events.expect_quiet(QUIET).await;
    let listed = d.messages("busy", Some(1000), None).await;
    assert_eq!(listed.len(), 60);
    assert_eq!(
        announced, listed,
        "a chat's events come in the order of its messages"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let d = TestDaemon::start().await;
    d.create_chat("open").await;
    let mut all = d.events("").await;
    let mut filtered = d.events("chat=open").await;
    let mut idle = d.events("").await;
    d.post_message("open", "before shutdown").await;
    all.expect("message.created").await;

    // Nobody reads the streams while the daemon stops.
    let started = Instant::now();
    d.shutdown().await;
    assert!(
        started.elapsed() < STOP_TIMEOUT,
        "shutdown took {:?}",
        started.elapsed()
    );

    // Each stream delivers what it had, then ends cleanly.
    assert_eq!(
        all.next_within(Duration::from_secs(3)).await.unwrap(),
        None,
        "the stream must end"
    );
    filtered.expect("message.created").await;
    assert_eq!(
        filtered.next_within(Duration::from_secs(3)).await.unwrap(),
        None
    );
    idle.expect("message.created").await;
    assert_eq!(
        idle.next_within(Duration::from_secs(3)).await.unwrap(),
        None
    );
}
