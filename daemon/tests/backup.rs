//! Backups at the engine: a device backs up, a new device restores, and what the repository
//! holds cannot be read, altered, swapped, truncated or rolled back unnoticed.

use std::{path::Path, sync::Arc};

use age::secrecy::SecretString;
use chatsync_daemon::{
    backup::{BackupError, Backups, Secret},
    engine::Engine,
};
use chatsync_model::ChatId;
use chatsync_testkit::{engine::start_engine, rclone::Rclone};

fn passphrase() -> Secret {
    Secret::Passphrase(SecretString::from("correct horse battery".to_string()))
}

async fn texts(engine: &Engine, chat: &ChatId) -> Vec<String> {
    engine
        .messages(chat, None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| format!("{} {} {:?}", m.author_name, m.text, m.reactions))
        .collect()
}

/// A device with two chats that saw posts, an edit and a reaction.
async fn device_with_chats(home: &Path) -> (Arc<Engine>, Vec<ChatId>) {
    let (engine, _) = start_engine(home, "phone", 0);
    let mut chats = Vec::new();
    for title in ["family", "work"] {
        let chat = engine.create_chat(title, None).await.unwrap().id;
        for n in 0..5 {
            engine
                .post(&chat, &format!("{title} {n}"), None, None)
                .await
                .unwrap();
        }
        chats.push(chat);
    }
    let first = engine.messages(&chats[0], None, 1).await.unwrap().remove(0);
    engine
        .edit(&chats[0], first.id.as_str(), "family 4, edited")
        .await
        .unwrap();
    engine.react(&chats[1], "work", Some("👍")).await.ok();
    (engine, chats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_restores_every_chat_with_its_authorship() {
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (engine, chats) = device_with_chats(home.path()).await;
    let backups = Backups::new(engine.clone(), home.path());
    let init = backups
        .init(target.path().to_str().unwrap(), None, passphrase())
        .await
        .unwrap();
    assert!(init.recovery_key.is_none());
    let mut events = engine.subscribe();
    let first = backups.now().await.unwrap();
    assert_eq!(last_progress(&mut events), Some((false, 2, 2)));
    assert_eq!((first.seq, first.chats, first.messages), (1, 2, 10));
    assert_eq!(
        first.objects_written, 3,
        "the two chats in one object, the roster and the index page"
    );

    // Nothing changed: only a manifest is written. One post: that post's chunk, and the page
    // listing its chat.
    let again = backups.now().await.unwrap();
    assert_eq!(again.objects_written, 0);
    engine.post(&chats[1], "work 5", None, None).await.unwrap();
    let third = backups.now().await.unwrap();
    assert_eq!(third.objects_written, 2);
    assert!(third.bytes_written < first.bytes_written);
    let listed = backups.snapshots().await.unwrap();
    assert_eq!(listed.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(listed[2].messages, 11);

    // Nothing in the repository names a chat, its title or a message.
    for entry in walk(target.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in ["family", "work 5", chats[0].as_str()] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
                    && !entry.to_string_lossy().contains(secret),
                "{} shows {secret}",
                entry.display()
            );
        }
    }

    // A new device, a new identity: every chat comes back, as it was.
    let fresh = tempfile::tempdir().unwrap();
    let (restored, restored_id) = start_engine(fresh.path(), "new phone", 0);
    assert_ne!(restored_id, engine.device().id);
    let backups_there = Backups::new(restored.clone(), fresh.path());
    let wrong = Secret::Passphrase(SecretString::from("battery horse correct".to_string()));
    let refused = backups_there
        .restore(target.path().to_str().unwrap(), None, wrong, None)
        .await
        .unwrap_err();
    assert!(matches!(refused, BackupError::WrongKey), "{refused}");
    let mut events = restored.subscribe();
    let report = backups_there
        .restore(target.path().to_str().unwrap(), None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!((report.restored, report.already_here), (2, 0));
    assert_eq!(last_progress(&mut events), Some((true, 2, 2)));
    for chat in &chats {
        assert_eq!(texts(&restored, chat).await, texts(&engine, chat).await);
    }
    // The restored device proves every message's author to a device that never saw the old
    // one: a third device takes each chat from it through every check.
    let third_home = tempfile::tempdir().unwrap();
    let (third_device, _) = start_engine(third_home.path(), "laptop", 0);
    third_device
        .merge_roster(&restored.roster_bytes().await)
        .await
        .unwrap();
    for chat in &chats {
        let sent = restored.export_chat(chat).await.unwrap();
        third_device.import_chat(chat, &sent).await.unwrap();
        assert_eq!(texts(&third_device, chat).await, texts(&engine, chat).await);
    }
    // Running it again changes nothing; the new device goes on backing up to the repository.
    let twice = backups_there
        .restore(target.path().to_str().unwrap(), None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!((twice.restored, twice.already_here), (0, 2));
    assert_eq!((twice.merged_messages, twice.not_merged), (0, 0));
    let from_new = backups_there.now().await.unwrap();
    assert_eq!(from_new.seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_swapped_truncated_or_rolled_back_repository_is_refused() {
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (engine, chats) = device_with_chats(home.path()).await;
    let backups = Backups::new(engine.clone(), home.path());
    let init = backups
        .init(
            target.path().to_str().unwrap(),
            None,
            Secret::NewRecoveryKey,
        )
        .await
        .unwrap();
    let recovery = init.recovery_key.expect("a recovery key is shown");
    backups.now().await.unwrap();
    engine.post(&chats[0], "later", None, None).await.unwrap();
    backups.now().await.unwrap();

    let restore = |damage: &'static str| {
        let target = target.path().to_path_buf();
        let recovery = recovery.clone();
        async move {
            let fresh = tempfile::tempdir().unwrap();
            let (engine, _) = start_engine(fresh.path(), "new", 0);
            let result = Backups::new(engine, fresh.path())
                .restore(
                    target.to_str().unwrap(),
                    None,
                    Secret::RecoveryKey(recovery),
                    None,
                )
                .await;
            (damage, result)
        }
    };
    let (_, fine) = restore("none").await;
    assert!(fine.is_ok(), "{fine:?}");

    let objects: Vec<_> = walk(&target.path().join("objects"));
    let snapshots: Vec<_> = walk(&target.path().join("snapshots"));
    assert_eq!(snapshots.len(), 2);
    let keep = |path: &Path| std::fs::read(path).unwrap();

    assert_eq!(backups.verify(None).await.unwrap().objects, objects.len());
    // Altered: one byte of any object, found by a verification; of every object, by a restore.
    for object in &objects {
        let original = keep(object);
        let mut altered = original.clone();
        let at = altered.len() / 2;
        altered[at] ^= 0x40;
        std::fs::write(object, &altered).unwrap();
        let result = backups.verify(None).await;
        std::fs::write(object, &original).unwrap();
        assert!(matches!(result, Err(BackupError::Damaged(_))), "{result:?}");
    }
    for object in &objects {
        let mut altered = keep(object);
        let at = altered.len() / 2;
        altered[at] ^= 0x40;
        std::fs::write(object, &altered).unwrap();
    }
    let (_, result) = restore("altered").await;
    assert!(matches!(result, Err(BackupError::Damaged(_))), "{result:?}");
    for object in &objects {
        let mut fixed = keep(object);
        let at = fixed.len() / 2;
        fixed[at] ^= 0x40;
        std::fs::write(object, &fixed).unwrap();
    }
    // Swapped: two objects under each other's names.
    let (a, b) = (keep(&objects[0]), keep(&objects[1]));
    std::fs::write(&objects[0], &b).unwrap();
    std::fs::write(&objects[1], &a).unwrap();
    let result = backups.verify(None).await;
    std::fs::write(&objects[0], &a).unwrap();
    std::fs::write(&objects[1], &b).unwrap();
    assert!(
        matches!(&result, Err(BackupError::Damaged(why)) if why.contains("something else")),
        "{result:?}"
    );
    // Truncated.
    let original = keep(&objects[0]);
    std::fs::write(&objects[0], &original[..original.len() / 3]).unwrap();
    let result = backups.verify(None).await;
    std::fs::write(&objects[0], &original).unwrap();
    assert!(matches!(result, Err(BackupError::Damaged(_))), "{result:?}");
    // Missing.
    std::fs::remove_file(&objects[0]).unwrap();
    let result = backups.verify(None).await;
    std::fs::write(&objects[0], &original).unwrap();
    assert!(
        matches!(&result, Err(BackupError::Damaged(why)) if why.contains("missing")),
        "{result:?}"
    );
    assert!(backups.verify(None).await.is_ok());
    // Rolled back: the newest manifest replaced by the older one.
    let (older, newer) = (keep(&snapshots[0]), keep(&snapshots[1]));
    std::fs::write(&snapshots[1], &older).unwrap();
    std::fs::write(&snapshots[0], &newer).unwrap();
    let (_, result) = restore("rolled back").await;
    assert!(
        matches!(&result, Err(BackupError::Damaged(why)) if why.contains("moved")),
        "{result:?}"
    );
    std::fs::write(&snapshots[0], &older).unwrap();
    std::fs::write(&snapshots[1], &newer).unwrap();
    // A wrong recovery key.
    let fresh = tempfile::tempdir().unwrap();
    let (other, _) = start_engine(fresh.path(), "new", 0);
    let wrong = chatsync_daemon::backup::new_recovery_key();
    let result = Backups::new(other, fresh.path())
        .restore(
            target.path().to_str().unwrap(),
            None,
            Secret::RecoveryKey(wrong),
            None,
        )
        .await;
    assert!(matches!(result, Err(BackupError::WrongKey)), "{result:?}");
}

/// Returns once `done` holds (checked every few milliseconds).
async fn wait_for(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// The newest backup progress event received: (restoring, done, total).
fn last_progress(
    events: &mut tokio::sync::broadcast::Receiver<chatsync_daemon::engine::Event>,
) -> Option<(bool, usize, usize)> {
    let mut last = None;
    while let Ok(event) = events.try_recv() {
        if let chatsync_daemon::engine::Event::BackupProgress {
            restoring,
            done,
            total,
        } = event
        {
            last = Some((restoring, done, total));
        }
    }
    last
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Backs up to `target` and restores onto a new device from it, through the real storage.
async fn round_trip(target: &str) {
    let home = tempfile::tempdir().unwrap();
    let (engine, chats) = device_with_chats(home.path()).await;
    let backups = Backups::new(engine.clone(), home.path());
    backups.init(target, None, passphrase()).await.unwrap();
    let made = backups.now().await.unwrap();
    assert_eq!((made.chats, made.messages), (2, 10));
    engine
        .post(&chats[0], "one more", None, None)
        .await
        .unwrap();
    assert_eq!(
        backups.now().await.unwrap().objects_written,
        2,
        "the new chunk and its chat's page"
    );
    assert_eq!(backups.verify(None).await.unwrap().snapshots, 2);
    let fresh = tempfile::tempdir().unwrap();
    let (restored, _) = start_engine(fresh.path(), "new phone", 0);
    let report = Backups::new(restored.clone(), fresh.path())
        .restore(target, None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!(report.restored, 2);
    for chat in &chats {
        assert_eq!(texts(&restored, chat).await, texts(&engine, chat).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_an_s3_compatible_store() {
    let (key, secret) = (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    );
    let auth = format!("{key},{secret}");
    let Some(server) = Rclone::serve("s3", &["--auth-key", &auth], &["chats"]) else {
        return;
    };
    let target = format!(
        "s3://{key}:{secret}@chats/phone?endpoint=http://127.0.0.1:{}",
        server.port
    );
    round_trip(&target).await;
    // Wrong credentials: the store cannot be reached, with its own error.
    let home = tempfile::tempdir().unwrap();
    let (engine, _) = start_engine(home.path(), "phone", 0);
    let wrong = format!(
        "s3://{key}:not-the-secret@chats/other?endpoint=http://127.0.0.1:{}",
        server.port
    );
    let refused = Backups::new(engine, home.path())
        .init(&wrong, None, passphrase())
        .await
        .unwrap_err();
    assert!(matches!(refused, BackupError::Unreachable(_)), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_webdav() {
    let Some(server) = Rclone::serve("webdav", &["--user", "ana", "--pass", "s3cret-pass"], &[])
    else {
        return;
    };
    round_trip(&format!(
        "webdav+http://ana:s3cret-pass@127.0.0.1:{}/chatsync",
        server.port
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_snapshots_and_what_only_they_used_are_removed() {
    use chatsync_daemon::backup::Retention;
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (engine, chats) = device_with_chats(home.path()).await;
    // An attachment, in every snapshot: pruning must keep its pieces.
    let blobs = chatsync_daemon::blobs::Blobs::open(home.path(), u64::MAX, 0).unwrap();
    let photo: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let (hash, size) = blobs.import(&photo[..], None).unwrap();
    let attachment = chatsync_model::Attachment {
        hash,
        size,
        name: "photo.jpg".into(),
        media_type: "image/jpeg".into(),
    };
    engine
        .post_with_attachments(&chats[1], "", None, &[attachment], None)
        .await
        .unwrap();
    let backups = Backups::new(engine.clone(), home.path()).with_blobs(blobs);
    backups
        .init(target.path().to_str().unwrap(), None, passphrase())
        .await
        .unwrap();
    for n in 0..3 {
        engine
            .post(&chats[0], &format!("round {n}"), None, None)
            .await
            .unwrap();
        backups.now().await.unwrap();
    }
    let objects_before = walk(&target.path().join("objects")).len();
    // What a write cut off part-way left beside the repository goes too.
    let partial = target.path().join(".partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("cut-off"), b"half an object").unwrap();
    let nothing_old = Retention {
        daily: 0,
        weekly: 0,
        monthly: 0,
    };
    let pruned = backups
        .prune(nothing_old, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned.snapshots, 2);
    assert!(!partial.join("cut-off").exists());
    // The two older index pages went; the objects of the newest snapshot stay (the chat that
    // changed is its first copy and the chunks added since, all still named).
    assert_eq!(pruned.objects, 3, "two pages and the cut-off write");
    assert_eq!(
        walk(&target.path().join("objects")).len(),
        objects_before - 2
    );
    assert_eq!(backups.snapshots().await.unwrap().len(), 1);
    assert!(backups.verify(None).await.is_ok());
    // Within the grace period nothing is removed.
    engine.post(&chats[0], "later", None, None).await.unwrap();
    backups.now().await.unwrap();
    let kept = backups
        .prune(nothing_old, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((kept.snapshots, kept.objects), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_backs_up_by_itself_and_reports_failures() {
    use chatsync_daemon::backup::Retention;
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (engine, chats) = device_with_chats(home.path()).await;
    let backups = Arc::new(Backups::new(engine.clone(), home.path()));
    assert!(backups.status().target.is_none());
    let folder = target.path().join("chatsync");
    backups
        .init(folder.to_str().unwrap(), None, passphrase())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let keep = Retention {
        daily: 7,
        weekly: 4,
        monthly: 12,
    };
    let task = tokio::spawn(backups.clone().run_schedule(
        std::time::Duration::from_millis(300),
        keep,
        stop.clone(),
    ));
    chatsync_testkit::eventually(
        "two scheduled backups",
        std::time::Duration::from_secs(20),
        || {
            let backups = backups.clone();
            async move {
                backups
                    .snapshots()
                    .await
                    .map(|s| s.len() >= 2)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let status = backups.status();
    assert!(
        status.last.is_some() && status.failure.is_none(),
        "{status:?}"
    );
    assert!(status.next_at.is_some());
    // The target goes away: the failure shows, and nothing is lost here.
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::write(&folder, b"not a directory").unwrap();
    engine
        .post(&chats[0], "while the target is gone", None, None)
        .await
        .unwrap();
    assert!(matches!(
        backups.now().await,
        Err(BackupError::Unreachable(_))
    ));
    let status = backups.status();
    assert!(status.failure.is_some(), "{status:?}");
    assert!(status.last.is_some());
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backup_or_restore_is_finished_by_the_next_run() {
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (engine, _) = start_engine(home.path(), "phone", 0);
    let mut chats = Vec::new();
    for c in 0..40 {
        let chat = engine
            .create_chat(&format!("chat {c}"), None)
            .await
            .unwrap()
            .id;
        for n in 0..20 {
            engine
                .post(&chat, &format!("post {n}"), None, None)
                .await
                .unwrap();
        }
        chats.push(chat);
    }
    // Each chat's data in an object of its own, so that there is a middle to cut at.
    let backups = Backups::new(engine.clone(), home.path()).with_object_bytes(1);
    backups
        .init(target.path().to_str().unwrap(), None, passphrase())
        .await
        .unwrap();
    backups.now().await.unwrap();
    for chat in &chats {
        engine
            .post(chat, "after the first snapshot", None, None)
            .await
            .unwrap();
    }
    // A second backup cut off part-way, as by a kill: the first snapshot is whole, and the next
    // run writes only what the cut one did not.
    let objects = target.path().join("objects");
    let written = walk(&objects).len();
    let cut = tokio::select! {
        done = backups.now() => Some(done),
        () = wait_for(|| walk(&objects).len() > written + 1) => None,
    };
    assert!(cut.is_none(), "the backup finished before it could be cut");
    assert_eq!(backups.snapshots().await.unwrap().len(), 1);
    let left_by_the_cut = walk(&objects).len() - written;
    let next = backups.now().await.unwrap();
    // A whole backup would write the 40 chats' new chunks and the 4 index pages.
    assert!(
        next.objects_written <= chats.len() + 4 - left_by_the_cut,
        "{left_by_the_cut} objects left by the cut backup, then {next:?}"
    );
    assert_eq!(backups.verify(None).await.unwrap().snapshots, 2);

    // A restore cut off part-way: running it again brings the rest.
    let fresh = tempfile::tempdir().unwrap();
    let (restored, _) = start_engine(fresh.path(), "new phone", 0);
    let there = Backups::new(restored.clone(), fresh.path());
    let target_text = target.path().to_str().unwrap().to_string();
    let cut = tokio::select! {
        done = there.restore(&target_text, None, passphrase(), None) => Some(done),
        () = wait_for(|| !restored.list_chats().is_empty()) => None,
    };
    assert!(cut.is_none(), "the restore finished before it could be cut");
    let partial = restored.list_chats().len();
    assert!(partial < chats.len());
    let finished = there
        .restore(&target_text, None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!(finished.restored + finished.already_here, chats.len());
    assert_eq!(finished.already_here, partial);
    for chat in &chats {
        assert_eq!(texts(&restored, chat).await, texts(&engine, chat).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_into_a_device_that_has_the_chats_merges_them() {
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (engine, chats) = device_with_chats(home.path()).await;
    let target_text = target.path().to_str().unwrap().to_string();
    let backups = Backups::new(engine.clone(), home.path());
    backups
        .init(&target_text, None, passphrase())
        .await
        .unwrap();
    backups.now().await.unwrap();
    // A second device restores that snapshot, and both go on writing apart.
    let other_home = tempfile::tempdir().unwrap();
    let (other, _) = start_engine(other_home.path(), "tablet", 0);
    let there = Backups::new(other.clone(), other_home.path());
    there
        .restore(&target_text, None, passphrase(), None)
        .await
        .unwrap();
    other
        .post(&chats[0], "written on the tablet", None, None)
        .await
        .unwrap();
    for n in 0..3 {
        engine
            .post(&chats[0], &format!("written on the phone {n}"), None, None)
            .await
            .unwrap();
    }
    engine
        .rename_chat(&chats[1], "work, renamed")
        .await
        .unwrap();
    backups.now().await.unwrap();
    // Restoring the newer snapshot merges it in: the phone's posts and rename arrive, the
    // tablet's post stays, nothing twice; again, it brings nothing.
    let mut events = other.subscribe();
    let merged = there
        .restore(&target_text, None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!(
        (merged.restored, merged.already_here, merged.not_merged),
        (0, 2, 0)
    );
    assert_eq!(merged.merged_messages, 3);
    let mut created = 0;
    while let Ok(event) = events.try_recv() {
        if let chatsync_daemon::engine::Event::Message {
            kind: chatsync_daemon::engine::MessageEventKind::Created,
            ..
        } = event
        {
            created += 1;
        }
    }
    assert_eq!(created, 3, "an event for each message that arrived");
    let mut expected = texts(&engine, &chats[0]).await;
    expected.push("tablet written on the tablet {}".into());
    let mut got = texts(&other, &chats[0]).await;
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(
        other.resolve_chat(chats[1].as_str()).unwrap().record.title,
        "work, renamed"
    );
    let again = there
        .restore(&target_text, None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!((again.already_here, again.merged_messages), (2, 0));
    // What the merge wrote is stored: it survives a restart.
    drop(there);
    chatsync_testkit::engine::close_engine(other).await;
    let (reopened, _) = start_engine(other_home.path(), "tablet", 0);
    let mut after = texts(&reopened, &chats[0]).await;
    after.sort();
    assert_eq!(after, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_chat_that_fails_the_checks_is_kept_but_not_shown() {
    use chatsync_daemon::store::{ChatRecord, Store};
    use chatsync_model::{ChatDoc, Device, DeviceId, MessageId};
    // A device's store holds a chat written by a device nobody knows, with no proof of who
    // wrote it: what a device that went bad could put in a backup it makes.
    let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let forged = ChatId::new("0123456789abcdef0123456789abcdef").unwrap();
    {
        let store = Store::open(&home.path().join("store"), 4 << 20).unwrap();
        let stranger = Device::new(
            DeviceId::new("12D3KooWStrangerStrangerStrangerStrangerStrangerStr").unwrap(),
            "stranger",
        )
        .unwrap();
        let mut doc = ChatDoc::create(forged.clone(), "forged", &stranger, 1).unwrap();
        doc.post(
            &stranger,
            MessageId::new("m1").unwrap(),
            "not proven",
            None,
            2,
        )
        .unwrap();
        let record = ChatRecord {
            title: "forged".into(),
            created_at: 1,
            created_by: stranger.id.to_string(),
            messages: 1,
            last_activity: 2,
            heads: Vec::new(),
            next_seq: 0,
            own_newest: None,
            unchecked: false,
        };
        store.create_chat(&forged, &record, &doc.save()).unwrap();
        store.flush().unwrap();
    }
    let (engine, chats) = device_with_chats(home.path()).await;
    let backups = Backups::new(engine.clone(), home.path());
    backups
        .init(target.path().to_str().unwrap(), None, passphrase())
        .await
        .unwrap();
    assert_eq!(backups.now().await.unwrap().chats, 3);

    let fresh = tempfile::tempdir().unwrap();
    let (restored, _) = start_engine(fresh.path(), "new phone", 0);
    let report = Backups::new(restored.clone(), fresh.path())
        .restore(target.path().to_str().unwrap(), None, passphrase(), None)
        .await
        .unwrap();
    assert_eq!(report.restored, 3);
    for chat in &chats {
        assert_eq!(texts(&restored, chat).await, texts(&engine, chat).await);
    }
    let refused = restored.messages(&forged, None, 10).await.unwrap_err();
    assert!(
        refused.to_string().contains("fails the checks"),
        "{refused}"
    );
    // Kept: still listed, and refused again after a restart.
    drop(report);
    chatsync_testkit::engine::close_engine(restored).await;
    let (reopened, _) = start_engine(fresh.path(), "new phone", 0);
    assert!(reopened.has_chat(&forged));
    assert!(reopened.messages(&forged, None, 10).await.is_err());
}
