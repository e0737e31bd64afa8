//! Attachments between daemons on loopback: a file posted on one device arrives whole on
//! another (by itself when small, when asked when large), a device that did not post it serves
//! it to a third, transfers cut by a restart of either side resume where they stopped, and a
//! paired device that sends bytes that do not match the hash is caught at the first bad group
//! and counted as misbehaving.

use std::time::Duration;

use chatsync_api::wire::{AttachmentJson, PostAttachment};
use chatsync_daemon::config::Config;
use chatsync_testkit::{TestDaemon, eventually, pair_by_address, wait_connected};
use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

/// Bytes that differ everywhere (a repeated pattern would hide misplaced groups).
fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Uploads `bytes` and posts them as `name` in `chat`; returns the message id and the hash.
async fn post_file(on: &TestDaemon, chat: &str, name: &str, bytes: Vec<u8>) -> (String, String) {
    let len = bytes.len() as u64;
    let blob = on.client.upload_blob(bytes, Some(len)).await.unwrap();
    let attachment = PostAttachment {
        hash: blob.hash.clone(),
        name: name.into(),
        media_type: Some("application/octet-stream".into()),
    };
    let msg = on
        .client
        .post_with_attachments(chat, "a file", None, vec![attachment], None)
        .await
        .unwrap();
    assert_eq!(msg.attachments.len(), 1);
    assert!(msg.attachments[0].present);
    (msg.id, blob.hash)
}

async fn attachment_on(on: &TestDaemon, chat: &str, msg: &str) -> Option<AttachmentJson> {
    let m = on.client.message(chat, msg).await.ok()?;
    m.attachments.into_iter().next()
}

async fn bytes_of(on: &TestDaemon, chat: &str, msg: &str) -> Vec<u8> {
    let resp = on.client.attachment(chat, msg, 0).await.unwrap();
    resp.bytes().await.unwrap().to_vec()
}

/// Two daemons on loopback, `b` dialling `a`, paired, with `b`'s config.
async fn two(b_config: Config) -> (TestDaemon, TestDaemon) {
    let a = TestDaemon::start().await;
    let a_addr = a.dial_address().await;
    let mut config = b_config;
    config.network.peers = vec![a_addr.parse().unwrap()];
    let b = TestDaemon::start_with(config).await;
    pair_by_address(&a, &b).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_arrives_by_itself_and_a_device_that_did_not_post_it_serves_it_on() {
    let (a, b) = two(Config::default()).await;
    let chat = a.create_chat("photos").await;
    let data = file_bytes(3 * MIB + 17, 1);
    let (msg, hash) = post_file(&a, &chat.id, "beach.jpg", data.clone()).await;
    assert_eq!(hash, blake3::hash(&data).to_hex().as_str());

    eventually("b has the attachment", WAIT, || async {
        attachment_on(&b, &chat.id, &msg)
            .await
            .is_some_and(|a| a.present)
    })
    .await;
    assert_eq!(bytes_of(&b, &chat.id, &msg).await, data);
    let a_home = a.shutdown().await;

    // A third device that only ever meets b gets the file from b.
    let b_addr = b.dial_address().await;
    let mut config = Config::default();
    config.network.peers = vec![b_addr.parse().unwrap()];
    let c = TestDaemon::start_with(config).await;
    pair_by_address(&b, &c).await;
    eventually("c has the attachment", WAIT, || async {
        attachment_on(&c, &chat.id, &msg)
            .await
            .is_some_and(|a| a.present)
    })
    .await;
    let on_c = bytes_of(&c, &chat.id, &msg).await;
    assert_eq!(blake3::hash(&on_c).to_hex().as_str(), hash);
    assert!(b.status().await.attachments.served_bytes >= data.len() as u64);
    // Ranges work on the attachment route.
    let ranged = c
        .request(
            reqwest::Method::GET,
            &format!("/chats/{}/messages/{msg}/attachments/0", chat.id),
        )
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap(), data[100..200]);
    drop(a_home);
    c.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_comes_when_asked_and_a_cut_transfer_resumes_after_restarts() {
    let mut b_config = Config::default();
    b_config.attachments.auto_fetch_mib = 1;
    let (a, b) = two(b_config).await;
    let chat = a.create_chat("videos").await;
    let data = file_bytes(24 * MIB, 2);
    let size = data.len() as u64;
    let (msg, hash) = post_file(&a, &chat.id, "clip.mp4", data.clone()).await;
    eventually("b has the message", WAIT, || async {
        attachment_on(&b, &chat.id, &msg).await.is_some()
    })
    .await;
    // Over the limit: not fetched unasked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let there = attachment_on(&b, &chat.id, &msg).await.unwrap();
    assert!(!there.present);
    assert_eq!(there.size, size);
    let missing = b.get(&format!("/blobs/{hash}")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // a sends slowly, so that the transfer can be cut half way: restart a.
    let a_home = a.shutdown().await;
    let mut a_config = Config::default();
    a_config.attachments.send_kib_per_sec = 8 * 1024;
    let a = TestDaemon::start_in(a_home, a_config).await;
    wait_connected(&a, &b).await;
    let fetch = {
        let client = b.client.clone();
        let (chat, msg) = (chat.id.clone(), msg.clone());
        tokio::spawn(async move { client.fetch_attachments(&chat, &msg).await })
    };
    eventually("a third has arrived", WAIT, || async {
        b.client
            .transfers()
            .await
            .unwrap()
            .iter()
            .any(|t| t.have > size / 3)
    })
    .await;
    let a_home = a.shutdown().await;
    let cut = fetch.await.unwrap();
    assert!(cut.is_err(), "the fetch survived its sender stopping");
    let kept = b.status().await.attachments.partial_bytes;
    assert!(kept > size / 4, "{kept} bytes kept of {size}");

    // a comes back; b resumes by itself, asking only for what it lacks.
    let a = TestDaemon::start_in(a_home, Config::default()).await;
    eventually("b finishes the download", WAIT, || async {
        attachment_on(&b, &chat.id, &msg)
            .await
            .is_some_and(|a| a.present)
    })
    .await;
    let resent = a.status().await.attachments.served_bytes;
    assert!(
        resent < size - size / 4 + size / 50,
        "{resent} bytes sent again for a {size}-byte file of which b kept over a quarter"
    );
    assert_eq!(bytes_of(&b, &chat.id, &msg).await, data);

    // Now the receiver stops half way: c fetches from b, which sends slowly.
    let b_home = b.shutdown().await;
    let mut b_config = Config::default();
    b_config.attachments.send_kib_per_sec = 8 * 1024;
    let b = TestDaemon::start_in(b_home, b_config).await;
    let b_addr = b.dial_address().await;
    let mut c_config = Config::default();
    c_config.network.peers = vec![b_addr.parse().unwrap()];
    c_config.attachments.auto_fetch_mib = 0;
    let c = TestDaemon::start_with(c_config.clone()).await;
    pair_by_address(&b, &c).await;
    a.shutdown().await;
    eventually("c has the message", WAIT, || async {
        attachment_on(&c, &chat.id, &msg).await.is_some()
    })
    .await;
    let fetch = {
        let client = c.client.clone();
        let (chat, msg) = (chat.id.clone(), msg.clone());
        tokio::spawn(async move { client.fetch_attachments(&chat, &msg).await })
    };
    eventually("c has a third", WAIT, || async {
        c.client
            .transfers()
            .await
            .unwrap()
            .iter()
            .any(|t| t.have > size / 3)
    })
    .await;
    let c_home = c.shutdown().await;
    let _ = fetch.await;
    let c = TestDaemon::start_in(c_home, c_config).await;
    eventually(
        "c finishes the download after its restart",
        WAIT,
        || async {
            attachment_on(&c, &chat.id, &msg)
                .await
                .is_some_and(|a| a.present)
        },
    )
    .await;
    let sent = b.status().await.attachments.served_bytes;
    assert!(
        sent < size + size / 10,
        "b sent {sent} bytes for a {size}-byte file: the download started over"
    );
    assert_eq!(bytes_of(&c, &chat.id, &msg).await, data);
    c.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_name_only_blobs_this_device_has_and_uploads_keep_the_quota() {
    let mut config = Config::default();
    config.attachments.quota_mib = 2;
    let a = TestDaemon::start_with(config).await;
    let chat = a.create_chat("files").await;
    let unknown = PostAttachment {
        hash: "ab".repeat(32),
        name: "ghost.bin".into(),
        media_type: None,
    };
    let err = a
        .client
        .post_with_attachments(&chat.id, "", None, vec![unknown], None)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(chatsync_api::ErrorCode::AttachmentNotHere),
        "{err}"
    );
    let err = a
        .client
        .upload_blob(file_bytes(3 * MIB, 3), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(chatsync_api::ErrorCode::QuotaExceeded),
        "{err}"
    );
    let blob = a
        .client
        .upload_blob(file_bytes(MIB, 4), Some(MIB as u64))
        .await
        .unwrap();
    let bad_name = PostAttachment {
        hash: blob.hash.clone(),
        name: "../../.ssh/authorized_keys".into(),
        media_type: None,
    };
    let err = a
        .client
        .post_with_attachments(&chat.id, "", None, vec![bad_name], None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(chatsync_api::ErrorCode::Invalid), "{err}");
    // A file from another device never runs as a page.
    let html = a
        .client
        .upload_blob(b"<script>alert(1)</script>".to_vec(), None)
        .await
        .unwrap();
    let page = PostAttachment {
        hash: html.hash,
        name: "page.html".into(),
        media_type: Some("text/html".into()),
    };
    let msg = a
        .client
        .post_with_attachments(&chat.id, "", None, vec![page], None)
        .await
        .unwrap();
    let served = a
        .request(
            reqwest::Method::GET,
            &format!("/chats/{}/messages/{}/attachments/0", chat.id, msg.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let header = |name: &str| served.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "application/octet-stream");
    assert!(header("content-disposition").starts_with("attachment;"));
    assert!(header("content-security-policy").contains("sandbox"));
    let status = a.status().await.attachments;
    assert_eq!(status.blobs, 2);
    a.shutdown().await;
}
