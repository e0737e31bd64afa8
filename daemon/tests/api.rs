//! The local API, route by route: status codes, bodies, and the error shape.

use std::time::Duration;

use chatsync_api::wire::{ChatJson, MessageJson, ReadStateJson, StatusJson};
use chatsync_testkit::{DEVICE_NAME, TestDaemon, is_daemon_id, now_ms, raw::seg};
use reqwest::{Method, StatusCode, header::CONTENT_TYPE};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_the_daemon() {
    let before = now_ms();
    let d = TestDaemon::start().await;
    let s: StatusJson = d.status().await;
    assert_eq!(s.device_id, d.device_id);
    assert!(s.device_id.starts_with("12D3KooW"), "{}", s.device_id);
    assert_eq!(s.name, DEVICE_NAME);
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.pid, std::process::id());
    assert_eq!(s.data_dir, d.paths.data_dir.display().to_string());
    assert_eq!(s.socket, d.paths.socket.display().to_string());
    assert_eq!(s.chats, 0);
    assert_eq!(s.loaded_chats, 0);
    assert!(s.store_healthy);
    assert!(
        s.started_at >= before - 1000 && s.started_at <= now_ms(),
        "started_at {} is not the start time",
        s.started_at
    );

    d.create_chat("one").await;
    d.create_chat("two").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let later = d.status().await;
    assert_eq!(later.chats, 2);
    assert_eq!(later.loaded_chats, 2, "created chats stay loaded");
    assert!(later.loaded_bytes_estimate > 0);
    assert!(later.store_bytes > 0);
    assert_eq!(later.started_at, s.started_at);
    assert!(
        later.uptime_ms >= s.uptime_ms + 30,
        "uptime went from {} to {} over 30 ms",
        s.uptime_ms,
        later.uptime_ms
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_are_created_listed_found_and_renamed() {
    let d = TestDaemon::start().await;
    let t0 = now_ms();
    let reply = d.post("/chats", json!({ "title": "my family" })).await;
    let t1 = now_ms();
    let chat: ChatJson = reply.json(StatusCode::CREATED);
    assert!(is_daemon_id(&chat.id), "chat id {}", chat.id);
    assert_eq!(chat.title, "my family");
    assert_eq!(chat.created_by, d.device_id);
    assert_eq!(chat.messages, 0);
    assert!((t0..=t1).contains(&chat.created_at), "{chat:?}");
    assert_eq!(chat.last_activity, chat.created_at);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let work = d.create_chat("work").await;
    assert_ne!(work.id, chat.id);

    // Listed, most recently active first.
    assert_eq!(d.chats().await, vec![work.clone(), chat.clone()]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    d.post_message(&chat.id, "hi").await;
    let listed = d.chats().await;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [chat.id.as_str(), work.id.as_str()],
        "the chat with the newest activity comes first"
    );
    let chat = d.chat(&chat.id).await;
    assert_eq!(chat.messages, 1);
    assert!(chat.last_activity > chat.created_at);
    assert_eq!(listed[0], chat);

    // By id, title (percent-encoded) and id prefix.
    assert_eq!(d.chat("my family").await, chat);
    assert_eq!(d.chat(&chat.id[..4]).await, chat);
    assert_eq!(d.chat(&chat.id[..12]).await, chat);
    assert_eq!(d.chat("work").await, work);
    // A prefix under four characters is not a prefix; an unknown name is not found.
    d.get(&format!("/chats/{}", &chat.id[..3]))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.get("/chats/no-such-chat")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Rename.
    let renamed: ChatJson = d
        .patch(
            &format!("/chats/{}", seg("my family")),
            json!({ "title": "kin" }),
        )
        .await
        .json(StatusCode::OK);
    assert_eq!(renamed.id, chat.id);
    assert_eq!(renamed.title, "kin");
    assert_eq!(renamed.created_at, chat.created_at);
    assert_eq!(renamed.messages, 1);
    assert_eq!(d.chat("kin").await, renamed);
    assert_eq!(d.chat(&chat.id).await.title, "kin");
    d.get(&format!("/chats/{}", seg("my family")))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.patch("/chats/nope-nope", json!({ "title": "x" }))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Invalid titles; a title written as a chat id (it would hide the chat whose id it is).
    let id_like = chat.id.to_uppercase();
    for title in ["", "   ", &"t".repeat(257), &chat.id, &id_like] {
        d.post("/chats", json!({ "title": title }))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid");
        d.patch("/chats/kin", json!({ "title": title }))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid");
    }
    assert_eq!(d.chat("kin").await.title, "kin");
    assert_eq!(d.chats().await.len(), 2);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_title_is_a_conflict_listing_candidates() {
    let d = TestDaemon::start().await;
    let a = d.create_chat("twins").await;
    let b = d.create_chat("twins").await;
    let reply = d.get("/chats/twins").await;
    let error = reply.error(StatusCode::CONFLICT, "ambiguous");
    let candidates: Vec<&str> = error["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("no candidates in {}", reply.text))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(candidates.len(), 2, "{candidates:?}");
    for id in [&a.id, &b.id] {
        assert!(
            candidates.iter().any(|c| c.contains(id.as_str())),
            "{id} missing from {candidates:?}"
        );
    }
    // Every route that takes a chat name refuses it the same way; ids still work.
    d.post("/chats/twins/messages", json!({ "text": "hi" }))
        .await
        .error(StatusCode::CONFLICT, "ambiguous");
    d.get("/chats/twins/messages")
        .await
        .error(StatusCode::CONFLICT, "ambiguous");
    assert_eq!(d.chat(&a.id).await, a);
    assert_eq!(d.chat(&b.id).await, b);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_posted_and_found_by_id_and_prefix() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("talk").await;
    let other = d.create_chat("other").await;
    let t0 = now_ms();
    let reply = d
        .post("/chats/talk/messages", json!({ "text": "hello, world" }))
        .await;
    let t1 = now_ms();
    let m: MessageJson = reply.json(StatusCode::CREATED);
    assert!(is_daemon_id(&m.id), "message id {}", m.id);
    assert_eq!(m.chat, chat.id);
    assert_eq!(m.author, d.device_id);
    assert_eq!(m.author_name, DEVICE_NAME);
    assert!((t0..=t1).contains(&m.ts), "{m:?}");
    assert_eq!(m.text, "hello, world");
    assert_eq!(m.reply_to, None);
    assert!(!m.edited);
    assert_eq!(m.edited_at, None);
    assert!(!m.deleted);
    assert!(m.reactions.is_empty());
    // The raw body carries every field, nulls included.
    for key in [
        "id",
        "chat",
        "author",
        "author_name",
        "ts",
        "text",
        "reply_to",
        "edited",
        "edited_at",
        "deleted",
        "reactions",
    ] {
        assert!(
            reply.body.get(key).is_some(),
            "{key} missing: {}",
            reply.text
        );
    }

    let path = |r: &str| format!("/chats/{}/messages/{r}", chat.id);
    for reference in [&m.id[..], &m.id[..4], &m.id[..10]] {
        let got: MessageJson = d.get(&path(reference)).await.json(StatusCode::OK);
        assert_eq!(got, m, "GET by {reference}");
    }
    d.get(&path(&m.id[..3]))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.get(&path("zzzz"))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.get(&format!("/chats/other/messages/{}", m.id))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.get(&format!("/chats/nope-nope/messages/{}", m.id))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Replies name their parent by id or prefix; the reply carries the full id.
    let reply: MessageJson = d
        .post(
            "/chats/talk/messages",
            json!({ "text": "re", "reply_to": &m.id[..8] }),
        )
        .await
        .json(StatusCode::CREATED);
    assert_eq!(reply.reply_to.as_deref(), Some(m.id.as_str()));
    d.post(
        "/chats/talk/messages",
        json!({ "text": "re", "reply_to": "zzzz" }),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");
    let elsewhere = d.post_message(&other.id, "elsewhere").await;
    d.post(
        "/chats/talk/messages",
        json!({ "text": "re", "reply_to": elsewhere.id }),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");

    // Invalid texts.
    for text in ["", "  \n ", "nul\0byte", &"a".repeat(64 * 1024 + 1)] {
        d.post("/chats/talk/messages", json!({ "text": text }))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid");
    }
    // The largest text is fine.
    let big = d.post_message("talk", &"a".repeat(64 * 1024)).await;
    assert_eq!(big.text.len(), 64 * 1024);
    d.post("/chats/nope-nope/messages", json!({ "text": "hi" }))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Failed posts left nothing behind.
    assert_eq!(d.chat("talk").await.messages, 3);
    let listed = d.messages("talk", None, None).await;
    assert_eq!(
        listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [m.id.as_str(), reply.id.as_str(), big.id.as_str()]
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_pages_go_backwards_in_display_order() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("log").await;
    let mut posted = Vec::new();
    for i in 0..30 {
        posted.push(d.post_message(&chat.id, &format!("message {i}")).await);
    }
    let ids = |ms: &[MessageJson]| ms.iter().map(|m| m.id.clone()).collect::<Vec<_>>();

    // Without a limit: the default page (50) holds them all, oldest first.
    assert_eq!(d.messages("log", None, None).await, posted);
    assert_eq!(d.messages("log", Some(1000), None).await, posted);

    // Pages of 10, backwards.
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = d.messages("log", Some(10), before.as_deref()).await;
        if page.is_empty() {
            break;
        }
        assert!(pages.len() < 3, "more than three pages of ten");
        before = Some(page[0].id[..8].to_string());
        pages.push(page);
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(ids(&pages[0]), ids(&posted[20..]));
    assert_eq!(ids(&pages[1]), ids(&posted[10..20]));
    assert_eq!(ids(&pages[2]), ids(&posted[..10]));
    let all: Vec<MessageJson> = pages.into_iter().rev().flatten().collect();
    assert_eq!(all, posted, "every message exactly once, in order");
    assert_eq!(d.all_messages("log", 7).await, posted);

    // Just before a message in the middle.
    let page = d.messages("log", Some(3), Some(&posted[5].id)).await;
    assert_eq!(ids(&page), ids(&posted[2..5]));
    let page = d.messages("log", Some(3), Some(&posted[1].id)).await;
    assert_eq!(ids(&page), ids(&posted[..1]));
    assert!(
        d.messages("log", Some(3), Some(&posted[0].id))
            .await
            .is_empty()
    );

    // Bad limits and cursors.
    for (query, status, code) in [
        ("limit=1001", StatusCode::BAD_REQUEST, "invalid"),
        ("limit=abc", StatusCode::BAD_REQUEST, "bad_query"),
        ("limit=-1", StatusCode::BAD_REQUEST, "bad_query"),
        ("before=zzzz", StatusCode::NOT_FOUND, "not_found"),
    ] {
        d.get(&format!("/chats/log/messages?{query}"))
            .await
            .error(status, code);
    }
    d.get("/chats/nope-nope/messages")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_edited_reacted_to_and_deleted() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("edits").await;
    let m = d.post_message(&chat.id, "first draft").await;
    let after = d.post_message(&chat.id, "after").await;
    let path = format!("/chats/{}/messages/{}", chat.id, m.id);
    let prefix_path = format!("/chats/edits/messages/{}", &m.id[..6]);

    // Edit.
    let edited: MessageJson = d
        .patch(&prefix_path, json!({ "text": "final" }))
        .await
        .json(StatusCode::OK);
    assert_eq!(edited.id, m.id);
    assert_eq!(edited.text, "final");
    assert!(edited.edited);
    let edited_at = edited.edited_at.expect("edited_at is set");
    assert!(edited_at >= m.ts, "{edited:?}");
    assert_eq!(edited.ts, m.ts);
    assert_eq!(
        d.get(&path).await.json::<MessageJson>(StatusCode::OK),
        edited
    );
    // The same text again changes nothing.
    let again: MessageJson = d
        .patch(&path, json!({ "text": "final" }))
        .await
        .json(StatusCode::OK);
    assert_eq!(again, edited);
    d.patch(&path, json!({ "text": "" }))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid");
    d.patch("/chats/edits/messages/zzzz", json!({ "text": "x" }))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Reactions.
    let reaction = format!("{path}/reaction");
    let reacted: MessageJson = d
        .put(&reaction, json!({ "reaction": "👍" }))
        .await
        .json(StatusCode::OK);
    assert_eq!(
        reacted.reactions.into_iter().collect::<Vec<_>>(),
        [(d.device_id.clone(), "👍".to_string())]
    );
    let replaced: MessageJson = d
        .put(&reaction, json!({ "reaction": "🎉" }))
        .await
        .json(StatusCode::OK);
    assert_eq!(replaced.reactions.get(&d.device_id).unwrap(), "🎉");
    assert_eq!(replaced.reactions.len(), 1);
    for bad in ["thumbs up", "", "\t", &"x".repeat(33)] {
        d.put(&reaction, json!({ "reaction": bad }))
            .await
            .error(StatusCode::BAD_REQUEST, "invalid");
    }
    let got: MessageJson = d.get(&path).await.json(StatusCode::OK);
    assert_eq!(got.reactions.get(&d.device_id).unwrap(), "🎉");
    let cleared: MessageJson = d.delete(&reaction).await.json(StatusCode::OK);
    assert!(cleared.reactions.is_empty(), "{cleared:?}");
    let cleared_again: MessageJson = d.delete(&reaction).await.json(StatusCode::OK);
    assert!(cleared_again.reactions.is_empty());
    d.put(
        "/chats/edits/messages/zzzz/reaction",
        json!({ "reaction": "👍" }),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");

    // Delete: text and reactions go, the place stays.
    d.put(&reaction, json!({ "reaction": "👍" }))
        .await
        .json::<MessageJson>(StatusCode::OK);
    let deleted: MessageJson = d.delete(&prefix_path).await.json(StatusCode::OK);
    assert_eq!(deleted.id, m.id);
    assert!(deleted.deleted);
    assert_eq!(deleted.text, "");
    assert!(deleted.reactions.is_empty());
    assert_eq!(deleted.ts, m.ts);
    let listed = d.messages("edits", None, None).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], deleted);
    assert_eq!(listed[1], after);
    assert_eq!(d.chat("edits").await.messages, 2);
    assert_eq!(
        d.get(&path).await.json::<MessageJson>(StatusCode::OK),
        deleted
    );

    // A deleted message cannot be edited or reacted to; deleting it again is fine.
    d.patch(&path, json!({ "text": "back" }))
        .await
        .error(StatusCode::GONE, "deleted");
    d.put(&reaction, json!({ "reaction": "👍" }))
        .await
        .error(StatusCode::GONE, "deleted");
    let twice: MessageJson = d.delete(&path).await.json(StatusCode::OK);
    assert_eq!(twice, deleted);
    d.delete("/chats/edits/messages/zzzz")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_markers_move_forward_only() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("reading").await;
    let read = |r: ReadStateJson| (r.chat, r.device, r.message, r.unread);
    let state: ReadStateJson = d.get("/chats/reading/read").await.json(StatusCode::OK);
    assert_eq!(read(state), (chat.id.clone(), d.device_id.clone(), None, 0));
    // Nothing to mark in an empty chat.
    let state: ReadStateJson = d
        .post("/chats/reading/read", json!({}))
        .await
        .json(StatusCode::OK);
    assert_eq!(state.message, None);

    let m1 = d.post_message(&chat.id, "one").await;
    let m2 = d.post_message(&chat.id, "two").await;
    let m3 = d.post_message(&chat.id, "three").await;
    // This device's own messages are never unread.
    let state: ReadStateJson = d.get("/chats/reading/read").await.json(StatusCode::OK);
    assert_eq!((state.message, state.unread), (None, 0));

    let state: ReadStateJson = d
        .post("/chats/reading/read", json!({ "message": &m2.id[..6] }))
        .await
        .json(StatusCode::OK);
    assert_eq!(state.message.as_deref(), Some(m2.id.as_str()));
    assert_eq!(state.chat, chat.id);
    assert_eq!(state.device, d.device_id);
    // Backwards is ignored.
    let state: ReadStateJson = d
        .post("/chats/reading/read", json!({ "message": m1.id }))
        .await
        .json(StatusCode::OK);
    assert_eq!(state.message.as_deref(), Some(m2.id.as_str()));
    // No message: the newest.
    let state: ReadStateJson = d
        .post("/chats/reading/read", json!({}))
        .await
        .json(StatusCode::OK);
    assert_eq!(state.message.as_deref(), Some(m3.id.as_str()));
    let state: ReadStateJson = d
        .get(&format!("/chats/{}/read", chat.id))
        .await
        .json(StatusCode::OK);
    assert_eq!(state.message.as_deref(), Some(m3.id.as_str()));
    assert_eq!(state.unread, 0);

    d.post("/chats/reading/read", json!({ "message": "zzzz" }))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.get("/chats/nope-nope/read")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors() {
    let d = TestDaemon::start().await;
    let chat = d.create_chat("errors").await;
    let m = d.post_message(&chat.id, "x").await;
    let raw = |body: &str| {
        d.request(Method::POST, "/chats")
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
    };

    // Malformed or mis-shaped JSON.
    for body in [
        "{bad",
        "",
        "[]",
        "{}",
        r#"{"title": 5}"#,
        r#"{"title": "x", "extra": 1}"#,
    ] {
        let reply = d.send(raw(body)).await;
        reply.error(StatusCode::BAD_REQUEST, "bad_json");
    }
    d.post(
        "/chats/errors/messages",
        json!({ "text": "x", "reply": m.id }),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "bad_json");
    d.put(
        &format!("/chats/errors/messages/{}/reaction", m.id),
        json!({ "reaction": "👍", "emoji": true }),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "bad_json");

    // Not JSON at all.
    let no_type = d.request(Method::POST, "/chats").body(r#"{"title": "x"}"#);
    d.send(no_type)
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let text_plain = d
        .request(Method::POST, "/chats")
        .header(CONTENT_TYPE, "text/plain")
        .body(r#"{"title": "x"}"#);
    d.send(text_plain)
        .await
        .error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    // Too large: over 256 KiB, even though it is well-formed.
    let huge = json!({ "text": "a".repeat(256 * 1024) });
    let reply = d.post("/chats/errors/messages", huge).await;
    reply.error(StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    // No such route, no such method.
    for path in ["/nope", "/chats/errors/messages/x/y/z", "/"] {
        d.get(path).await.error(StatusCode::NOT_FOUND, "no_route");
    }
    for url in ["http://chatsyncd/v2/status", "http://chatsyncd/status"] {
        d.send(d.raw.request_url(Method::GET, url))
            .await
            .error(StatusCode::NOT_FOUND, "no_route");
    }
    let m_path = format!("/chats/errors/messages/{}", m.id);
    for (method, path) in [
        (Method::DELETE, "/status".to_string()),
        (Method::GET, "/shutdown".to_string()),
        (Method::POST, "/events".to_string()),
        (Method::PUT, "/chats".to_string()),
        (Method::POST, "/chats/errors".to_string()),
        (Method::PUT, "/chats/errors/messages".to_string()),
        (Method::POST, m_path.clone()),
        (Method::GET, format!("{m_path}/reaction")),
        (Method::DELETE, "/chats/errors/read".to_string()),
    ] {
        let reply = d
            .send(d.request(method.clone(), &path).json(&json!({})))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            reply.text
        );
        reply.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }

    // None of that changed anything.
    assert_eq!(d.chats().await.len(), 1);
    assert_eq!(d.chat("errors").await.messages, 1);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_route_stops_the_daemon() {
    let d = TestDaemon::start().await;
    let socket = d.socket().to_path_buf();
    let reply = d.send(d.request(Method::POST, "/shutdown")).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let client = d.client.clone();
    d.wait_stopped().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
    let after = client.status().await;
    assert!(after.is_err(), "the daemon still answers: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_with_its_idempotency_key_is_applied_once() {
    let d = TestDaemon::start().await;
    let keyed = |method: Method, path: &str, key: &str, body: serde_json::Value| {
        d.request(method, path)
            .header("Idempotency-Key", key)
            .json(&body)
    };
    // A chat created twice with one key is one chat, answered the same both times.
    let first: ChatJson = d
        .send(keyed(
            Method::POST,
            "/chats",
            "chat-1",
            json!({"title": "family"}),
        ))
        .await
        .json(StatusCode::CREATED);
    let again: ChatJson = d
        .send(keyed(
            Method::POST,
            "/chats",
            "chat-1",
            json!({"title": "family"}),
        ))
        .await
        .json(StatusCode::CREATED);
    assert_eq!(first.id, again.id);
    assert_eq!(d.chats().await.len(), 1);

    // A post retried with its key: one message, the same answer.
    let path = format!("/chats/{}/messages", first.id);
    let posted: MessageJson = d
        .send(keyed(Method::POST, &path, "post-1", json!({"text": "hi"})))
        .await
        .json(StatusCode::CREATED);
    let retried: MessageJson = d
        .send(keyed(Method::POST, &path, "post-1", json!({"text": "hi"})))
        .await
        .json(StatusCode::CREATED);
    assert_eq!(posted, retried);
    // Another key is another message; the same key for other content is a conflict.
    d.send(keyed(Method::POST, &path, "post-2", json!({"text": "hi"})))
        .await
        .json::<MessageJson>(StatusCode::CREATED);
    let reused = d
        .send(keyed(
            Method::POST,
            &path,
            "post-1",
            json!({"text": "other"}),
        ))
        .await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{:?}", reused.body);
    assert_eq!(reused.body["error"]["code"], "idempotency_conflict");
    let bad = d
        .send(keyed(
            Method::POST,
            &path,
            "not a key!",
            json!({"text": "x"}),
        ))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(d.messages(&first.id, None, None).await.len(), 2);

    // Across a restart too: the key finds what the first attempt stored.
    let d = d.restart().await;
    let after_restart: MessageJson = d
        .send(
            d.request(Method::POST, &path)
                .header("Idempotency-Key", "post-1")
                .json(&json!({"text": "hi"})),
        )
        .await
        .json(StatusCode::CREATED);
    assert_eq!(after_restart.id, posted.id);
    assert_eq!(d.messages(&first.id, None, None).await.len(), 2);
}
