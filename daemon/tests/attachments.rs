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

/// Starts `on` fetching a message's attachments in the background, and waits until a third of
/// `size` has arrived; the fetch's answer comes from the task.
async fn fetch_a_third(
    on: &TestDaemon,
    chat: &str,
    msg: &str,
    size: u64,
) -> tokio::task::JoinHandle<Result<Vec<AttachmentJson>, chatsync_api::ClientError>> {
    let fetch = {
        let client = on.client.clone();
        let (chat, msg) = (chat.to_string(), msg.to_string());
        tokio::spawn(async move { client.fetch_attachments(&chat, &msg).await })
    };
    eventually("a third has arrived", WAIT, || async {
        on.client
            .transfers()
            .await
            .unwrap()
            .iter()
            .any(|t| t.have > size / 3)
    })
    .await;
    fetch
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
    let data = file_bytes(50 * MIB, 2);
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
    let fetch = fetch_a_third(&b, &chat.id, &msg, size).await;
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
    let fetch = fetch_a_third(&c, &chat.id, &msg, size).await;
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

/// A paired device gone bad that answers every attachment request with `stream`.
mod liar {
    use std::time::Duration;

    use chatsync_daemon::net::{PROTOCOL_VERSION, blobs::BLOB_PROTOCOL};
    use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
    use libp2p::{
        Multiaddr, SwarmBuilder, identify, identity::Keypair, noise, ping, swarm::NetworkBehaviour,
        tcp, yamux,
    };

    #[derive(NetworkBehaviour)]
    struct Behaviour {
        identify: identify::Behaviour,
        ping: ping::Behaviour,
        streams: libp2p_stream::Behaviour,
    }

    /// Connects to `daemon` as `keypair`'s device and answers attachment requests with `stream`
    /// until the returned task is aborted.
    pub fn serve(
        keypair: Keypair,
        daemon: Multiaddr,
        stream: Vec<u8>,
    ) -> tokio::task::JoinHandle<()> {
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    PROTOCOL_VERSION.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                streams: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let mut incoming = swarm
            .behaviour()
            .streams
            .new_control()
            .accept(BLOB_PROTOCOL)
            .unwrap();
        swarm.dial(daemon).unwrap();
        let answer = async move {
            while let Some((_, mut s)) = incoming.next().await {
                let mut request = [0u8; 52];
                if s.read_exact(&mut request).await.is_err() {
                    continue;
                }
                let _ = s.write_all(&[0]).await;
                let _ = s.write_all(&stream).await;
                let _ = s.close().await;
            }
        };
        let drive = async move {
            loop {
                swarm.select_next_some().await;
            }
        };
        tokio::spawn(async move {
            tokio::join!(answer, drive);
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_sends_wrong_bytes_is_caught_at_the_first_bad_group_and_counted() {
    let mut b_config = Config::default();
    b_config.attachments.auto_fetch_mib = 0;
    let (a, b) = two(b_config).await;
    let chat = a.create_chat("evidence").await;
    let data = file_bytes(4 * MIB, 5);
    let size = data.len() as u64;
    let (msg, _) = post_file(&a, &chat.id, "scan.pdf", data.clone()).await;
    eventually("b has the message", WAIT, || async {
        attachment_on(&b, &chat.id, &msg).await.is_some()
    })
    .await;
    // The verified stream of the file as an honest device sends it, one byte flipped past the
    // middle.
    let scratch = tempfile::tempdir().unwrap();
    let store = chatsync_daemon::blobs::Blobs::open(scratch.path(), u64::MAX, 0).unwrap();
    let (hash, _) = store.import(&data[..], None).unwrap();
    let mut stream = Vec::new();
    chatsync_daemon::blobs::transfer::send(
        &store.open_blob(&hash).unwrap().unwrap(),
        0,
        &mut stream,
    )
    .unwrap();
    let flipped = stream.len() * 3 / 5;
    stream[flipped] ^= 0x40;
    let a_home = a.shutdown().await;

    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let liar_id = keypair.public().to_peer_id().to_base58();
    b.trust(&liar_id).await;
    let liar = liar::serve(keypair, b.dial_address().await.parse().unwrap(), stream);
    eventually("the liar is connected", WAIT, || async {
        b.peer(&liar_id).await.is_some_and(|p| p.connected)
    })
    .await;
    let err = b
        .client
        .fetch_attachments(&chat.id, &msg)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(chatsync_api::ErrorCode::AttachmentUnavailable),
        "{err}"
    );
    let peer = b.peer(&liar_id).await.unwrap();
    assert!(peer.offences >= 1, "{peer:?}");
    // What came before the bad group was checked and kept.
    let kept = b.status().await.attachments.partial_bytes;
    assert!(kept > size / 3, "{kept} of {size} bytes kept");
    liar.abort();

    // The honest author comes back and sends only the rest.
    let a = TestDaemon::start_in(a_home, Config::default()).await;
    wait_connected(&a, &b).await;
    let fetched = b.client.fetch_attachments(&chat.id, &msg).await.unwrap();
    assert!(fetched[0].present);
    assert_eq!(bytes_of(&b, &chat.id, &msg).await, data);
    let sent = a.status().await.attachments.served_bytes;
    assert!(
        sent < size - size / 3 + size / 20,
        "{sent} bytes sent again"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_a_relay_whose_circuits_end_before_it_does() {
    // Each circuit carries at most 2 MiB: the 6 MiB file needs several, one after another.
    let at = chatsync_testkit::home::fixed_loopback_addr();
    let mut config = Config::default();
    config.network.listen = vec![at.parse().unwrap()];
    config.relay.enabled = true;
    config.relay.external_addrs = vec![at.parse().unwrap()];
    config.relay.max_circuit_bytes = 2 * MIB as u64;
    let relay = TestDaemon::start_with(config).await;
    let relay_addr = format!("{at}/p2p/{}", relay.device_id);
    let (a, b) = chatsync_testkit::pair_through_relay(&relay_addr).await;
    let chat = a.create_chat("far away").await;
    let data = file_bytes(6 * MIB, 6);
    let (msg, _) = post_file(&a, &chat.id, "far.bin", data.clone()).await;
    eventually("b has the message", WAIT, || async {
        attachment_on(&b, &chat.id, &msg).await.is_some()
    })
    .await;
    // Relayed: not fetched unasked, however small.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!attachment_on(&b, &chat.id, &msg).await.unwrap().present);
    // Asked for: each cut circuit is followed by a new one, and the download resumes on it.
    let _ = b.client.fetch_attachments(&chat.id, &msg).await;
    eventually("b has the whole file", Duration::from_secs(120), || async {
        attachment_on(&b, &chat.id, &msg)
            .await
            .is_some_and(|a| a.present)
    })
    .await;
    assert_eq!(bytes_of(&b, &chat.id, &msg).await, data);
    let sent = a.status().await.attachments.served_bytes;
    assert!(sent < data.len() as u64 * 3 / 2, "{sent} bytes sent");
    b.shutdown().await;
    a.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_freed_on_every_device_once_no_message_names_it() {
    let (a, b) = two(Config::default()).await;
    let chat = a.create_chat("tidy").await;
    let data = file_bytes(2 * MIB, 7);
    let (first, _) = post_file(&a, &chat.id, "twice.bin", data.clone()).await;
    // The same bytes again: stored once, named twice.
    let (second, _) = post_file(&a, &chat.id, "again.bin", data.clone()).await;
    assert_eq!(a.status().await.attachments.blobs, 1);
    for msg in [&first, &second] {
        eventually("b has the attachment", WAIT, || async {
            attachment_on(&b, &chat.id, msg)
                .await
                .is_some_and(|a| a.present)
        })
        .await;
    }
    a.client.delete(&chat.id, &first).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for on in [&a, &b] {
        assert_eq!(on.status().await.attachments.blobs, 1, "freed while named");
    }
    a.client.delete(&chat.id, &second).await.unwrap();
    for on in [&a, &b] {
        eventually("the file is freed", WAIT, || async {
            let stats = on.status().await.attachments;
            stats.blobs == 0 && stats.bytes == 0
        })
        .await;
    }
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_backed_up_once_and_come_back_with_their_chats() {
    use chatsync_api::wire::{BackupInitRequest, RestoreRequest};
    let a = TestDaemon::start().await;
    let repo = tempfile::tempdir().unwrap();
    let target = repo.path().join("backup").to_str().unwrap().to_string();
    a.client
        .backup_init(&BackupInitRequest {
            target: target.clone(),
            passphrase: Some("correct horse battery".into()),
            recovery_key: false,
            cwd: None,
        })
        .await
        .unwrap();
    let chat = a.create_chat("kept").await;
    let photo = file_bytes(5 * MIB + 3, 8);
    let (msg, _) = post_file(&a, &chat.id, "photo.jpg", photo.clone()).await;
    let first = a.client.backup_now().await.unwrap();
    assert_eq!(first.attachments, 1);
    assert!(first.bytes_written > photo.len() as u64, "{first:?}");
    // Unchanged: the attachment is not written again.
    let second = a.client.backup_now().await.unwrap();
    assert_eq!(second.attachments, 1);
    assert!(
        second.bytes_written < 256 * 1024,
        "{} bytes written for a backup with nothing new",
        second.bytes_written
    );
    let verified = a.client.backup_verify(None).await.unwrap();
    assert!(verified.bytes >= photo.len() as u64, "{verified:?}");
    // Nothing in the repository holds the bytes in the clear.
    let needle = &photo[1000..1064];
    for entry in walk(repo.path()) {
        let stored = std::fs::read(&entry).unwrap();
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "{} holds the photo's bytes",
            entry.display()
        );
    }
    a.shutdown().await;

    // A new device restores: the chat, and the photo with it.
    let b = TestDaemon::start().await;
    let restored = b
        .client
        .backup_restore(&RestoreRequest {
            target,
            passphrase: Some("correct horse battery".into()),
            recovery_key: None,
            snapshot: None,
            cwd: None,
        })
        .await
        .unwrap();
    assert_eq!(restored.attachments, 1, "{restored:?}");
    let there = attachment_on(&b, &chat.id, &msg).await.unwrap();
    assert!(there.present);
    assert_eq!(bytes_of(&b, &chat.id, &msg).await, photo);
    b.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
