//! The JSON of every route, compared with a recording (`recorded_api.json`): a change to the
//! wire format shows here first. Values that differ from run to run (ids, times, sizes, paths,
//! the text of messages from the daemon) are replaced by their kind before comparing; names,
//! shapes, statuses, codes and states are compared as they are.
//!
//! After a deliberate change to the API, record again with `CHATSYNC_RECORD=1` and document
//! the change in docs/api.md. `CHATSYNC_RECORDED_BIN=/path/to/chatsyncd` runs the same
//! requests against that binary instead of the daemon in this process: how an older build is
//! shown to answer alike.

use std::collections::BTreeMap;

use chatsync_testkit::TestDaemon;
use reqwest::Method;
use serde_json::{Value, json};

const RECORDING: &str = "tests/recorded_api.json";

/// Keys whose values change from run to run.
const VOLATILE: &[&str] = &[
    "id",
    "chat",
    "device_id",
    "device",
    "created_by",
    "author",
    "added_by",
    "created_at",
    "last_activity",
    "ts",
    "edited_at",
    "added_at",
    "removed_at",
    "pid",
    "data_dir",
    "socket",
    "started_at",
    "uptime_ms",
    "store_bytes",
    "store_free_bytes",
    "loaded_bytes_estimate",
    "listen_addrs",
    "version",
    "ticket",
    "expires_at",
    "invite",
    "reply_to",
    "message",
    "loaded_chats",
    "detected_at",
    "target",
    "repository",
    "snapshot",
    "last_snapshot",
    "last_backup_at",
    "next_at",
    "bytes_written",
    "bytes",
    "elapsed_ms",
    "url",
    "listen",
];

/// `value` with every volatile value replaced by its kind.
fn normalized(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) {
                        kind(v)
                    } else if k == "reactions" {
                        // Keyed by device id.
                        Value::Object(
                            v.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(_, r)| ("<device>".to_string(), normalized(r)))
                                .collect(),
                        )
                    } else {
                        normalized(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            // Lists whose order follows random ids (devices) are compared as sets; order is
            // checked by the tests of each route.
            let mut items: Vec<Value> = items.iter().map(normalized).collect();
            items.sort_by_key(|v| v.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

fn kind(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Bool(_) => json!("<bool>"),
        Value::Number(_) => json!("<number>"),
        Value::String(_) => json!("<string>"),
        Value::Array(items) => Value::Array(items.iter().map(kind).collect()),
        Value::Object(_) => normalized(value),
    }
}

/// A daemon in this process, or the binary `CHATSYNC_RECORDED_BIN` names.
async fn daemon() -> TestDaemon {
    match std::env::var_os("CHATSYNC_RECORDED_BIN") {
        Some(bin) => {
            let name = [
                "--name".to_string(),
                chatsync_testkit::DEVICE_NAME.to_string(),
            ];
            let home = chatsync_testkit::home::temp_home();
            TestDaemon::start_binary(std::path::Path::new(&bin), home, &name)
                .await
                .0
        }
        None => TestDaemon::start().await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_recorded() {
    let (d, other) = (daemon().await, daemon().await);
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    let mut record = |what: &str, status: reqwest::StatusCode, body: &Value| {
        answers.insert(
            what.to_string(),
            json!({ "status": status.as_u16(), "body": normalized(body) }),
        );
    };
    macro_rules! call {
        ($what:expr, $method:expr, $path:expr, $body:expr) => {{
            let request = d.request($method, &$path);
            let request = match $body {
                Some(body) => request.json(&body),
                None => request,
            };
            let reply = d.send(request).await;
            record($what, reply.status, &reply.body);
            reply.body
        }};
    }
    let none: Option<Value> = None;
    call!("GET /status", Method::GET, "/status", none.clone());
    let chat = call!(
        "POST /chats",
        Method::POST,
        "/chats",
        Some(json!({"title": "family"}))
    );
    let chat = chat["id"].as_str().unwrap().to_string();
    call!("GET /chats", Method::GET, "/chats", none.clone());
    call!(
        "GET /chats/{chat}",
        Method::GET,
        format!("/chats/{chat}"),
        none.clone()
    );
    call!(
        "PATCH /chats/{chat}",
        Method::PATCH,
        format!("/chats/{chat}"),
        Some(json!({"title": "home"}))
    );
    let first = call!(
        "POST /chats/{chat}/messages",
        Method::POST,
        format!("/chats/{chat}/messages"),
        Some(json!({"text": "dinner at 7"}))
    );
    let first = first["id"].as_str().unwrap().to_string();
    call!(
        "POST /chats/{chat}/messages (reply)",
        Method::POST,
        format!("/chats/{chat}/messages"),
        Some(json!({"text": "yes", "reply_to": first}))
    );
    call!(
        "GET /chats/{chat}/messages",
        Method::GET,
        format!("/chats/{chat}/messages?limit=10"),
        none.clone()
    );
    let message = format!("/chats/{chat}/messages/{first}");
    call!(
        "GET /chats/{chat}/messages/{message}",
        Method::GET,
        message,
        none.clone()
    );
    call!(
        "PATCH /chats/{chat}/messages/{message}",
        Method::PATCH,
        message,
        Some(json!({"text": "dinner at 8"}))
    );
    call!(
        "PUT /chats/{chat}/messages/{message}/reaction",
        Method::PUT,
        format!("{message}/reaction"),
        Some(json!({"reaction": "👍"}))
    );
    call!(
        "DELETE /chats/{chat}/messages/{message}/reaction",
        Method::DELETE,
        format!("{message}/reaction"),
        none.clone()
    );
    call!(
        "POST /chats/{chat}/read",
        Method::POST,
        format!("/chats/{chat}/read"),
        Some(json!({}))
    );
    call!(
        "GET /chats/{chat}/read",
        Method::GET,
        format!("/chats/{chat}/read"),
        none.clone()
    );
    call!(
        "DELETE /chats/{chat}/messages/{message}",
        Method::DELETE,
        message,
        none.clone()
    );
    call!(
        "POST /devices",
        Method::POST,
        "/devices",
        Some(json!({"id": other.device_id, "name": "laptop"}))
    );
    call!("GET /devices", Method::GET, "/devices", none.clone());
    call!("GET /peers", Method::GET, "/peers", none.clone());
    call!(
        "DELETE /devices/{device}",
        Method::DELETE,
        format!("/devices/{}", other.device_id),
        none.clone()
    );
    let invite = call!("POST /invites", Method::POST, "/invites", Some(json!({})));
    let invite = invite["invite"].as_str().unwrap().to_string();
    call!(
        "DELETE /invites/{invite}",
        Method::DELETE,
        format!("/invites/{invite}"),
        none.clone()
    );
    call!(
        "POST /join (a damaged ticket)",
        Method::POST,
        "/join",
        Some(json!({"ticket": "not a ticket"}))
    );
    call!(
        "GET /chats/{chat} (no such chat)",
        Method::GET,
        "/chats/nope",
        none.clone()
    );
    call!(
        "POST /chats (bad JSON)",
        Method::POST,
        "/chats",
        Some(json!({"name": "x"}))
    );
    // Backups, to a folder.
    let folder = tempfile::tempdir().unwrap();
    let target = folder.path().join("backup").display().to_string();
    call!(
        "GET /backup (not set up)",
        Method::GET,
        "/backup",
        none.clone()
    );
    call!(
        "POST /backup",
        Method::POST,
        "/backup",
        Some(json!({"target": target, "passphrase": "correct horse battery"}))
    );
    call!(
        "POST /backup/snapshots",
        Method::POST,
        "/backup/snapshots",
        none.clone()
    );
    call!(
        "GET /backup/snapshots",
        Method::GET,
        "/backup/snapshots",
        none.clone()
    );
    call!("GET /backup", Method::GET, "/backup", none.clone());
    call!(
        "POST /backup/verify",
        Method::POST,
        "/backup/verify",
        Some(json!({}))
    );
    call!(
        "POST /backup/restore (wrong passphrase)",
        Method::POST,
        "/backup/restore",
        Some(json!({"target": target, "passphrase": "battery horse correct"}))
    );
    call!(
        "POST /backup/restore",
        Method::POST,
        "/backup/restore",
        Some(json!({"target": target, "passphrase": "correct horse battery"}))
    );
    // The web client.
    call!("GET /web (off)", Method::GET, "/web", none.clone());
    call!(
        "POST /web/links (off)",
        Method::POST,
        "/web/links",
        none.clone()
    );
    call!(
        "POST /web (on)",
        Method::POST,
        "/web",
        Some(json!({"enabled": true, "listen": "127.0.0.1:0"}))
    );
    call!(
        "POST /web (reachable, not allowed)",
        Method::POST,
        "/web",
        Some(json!({"enabled": true, "listen": "0.0.0.0:0"}))
    );
    call!("POST /web/links", Method::POST, "/web/links", none.clone());
    call!(
        "GET /web/sessions",
        Method::GET,
        "/web/sessions",
        none.clone()
    );
    call!(
        "DELETE /web/sessions/{session} (none)",
        Method::DELETE,
        "/web/sessions/all",
        none.clone()
    );
    call!(
        "POST /web (off)",
        Method::POST,
        "/web",
        Some(json!({"enabled": false}))
    );
    // Attachments.
    let upload = d.request(Method::POST, "/blobs").body("a small file\n");
    let uploaded = d.send(upload).await;
    record("POST /blobs", uploaded.status, &uploaded.body);
    let hash = uploaded.body["hash"].as_str().unwrap().to_string();
    let with_file = call!(
        "POST /chats/{chat}/messages (attachments)",
        Method::POST,
        format!("/chats/{chat}/messages"),
        Some(json!({"text": "", "attachments": [
            {"hash": hash, "name": "notes.txt", "media_type": "text/plain"}
        ]}))
    );
    let with_file = with_file["id"].as_str().unwrap().to_string();
    call!(
        "POST /chats/{chat}/messages (attachment not here)",
        Method::POST,
        format!("/chats/{chat}/messages"),
        Some(json!({"text": "", "attachments": [{"hash": "ab".repeat(32), "name": "x"}]}))
    );
    call!(
        "POST /chats/{chat}/messages/{message}/attachments/fetch",
        Method::POST,
        format!("/chats/{chat}/messages/{with_file}/attachments/fetch"),
        none.clone()
    );
    let bytes = d
        .request(
            Method::GET,
            &format!("/chats/{chat}/messages/{with_file}/attachments/0"),
        )
        .send()
        .await
        .unwrap();
    record(
        "GET /chats/{chat}/messages/{message}/attachments/{index}",
        bytes.status(),
        &json!({
            "content_type": bytes.headers()["content-type"].to_str().unwrap(),
            "content_disposition": bytes.headers()["content-disposition"].to_str().unwrap(),
            "body": bytes.text().await.unwrap(),
        }),
    );
    call!(
        "GET /blobs/{hash} (not here)",
        Method::GET,
        format!("/blobs/{}", "cd".repeat(32)),
        none.clone()
    );
    call!("GET /transfers", Method::GET, "/transfers", none.clone());
    // The event stream's lines, for the writes above.
    let mut events = d.events(&format!("chat={chat}&progress=true")).await;
    let progress = events.expect("sync.progress").await;
    d.post_message(&chat, "one more").await;
    let created = events.expect("message.created").await;
    record(
        "GET /events: sync.progress",
        reqwest::StatusCode::OK,
        &progress,
    );
    record(
        "GET /events: message.created",
        reqwest::StatusCode::OK,
        &created,
    );
    drop(events);
    let stopped = call!("POST /shutdown", Method::POST, "/shutdown", none.clone());
    assert!(stopped.is_null());
    d.wait_stopped().await;
    other.shutdown().await;

    let now = serde_json::to_string_pretty(&answers).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(RECORDING);
    if std::env::var_os("CHATSYNC_RECORD").is_some() {
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let recorded = std::fs::read_to_string(&path).unwrap_or_default();
    let recorded: BTreeMap<String, Value> = serde_json::from_str(&recorded).unwrap_or_default();
    for (what, answer) in &answers {
        assert_eq!(
            recorded.get(what),
            Some(answer),
            "{what} answers differently from {RECORDING}; if the change is meant, record \
             again with CHATSYNC_RECORD=1 and document it in docs/api.md"
        );
    }
    assert_eq!(
        recorded.len(),
        answers.len(),
        "routes were added or dropped"
    );
}
