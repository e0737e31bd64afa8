//! Backups of the 1,000 chats x 1,000 messages store (the one `local_api` builds), against the
//! raw cost of encrypting the same bytes with age in the same run: a full backup, incremental
//! ones after 1,000 new posts (in ten chats, and spread over every chat), a restore onto a
//! new device, and the first read of every chat it restored (when each is checked). Results: docs/benchmarks.md. Run with `cargo bench -p chatsync --bench backup`
//! (`-- --quick`: 100 chats x 100 messages).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use age::secrecy::SecretString;
use chatsync_daemon::backup::{Backups, Secret};
use chatsync_testkit::engine::{close_engine, start_engine};

mod common;
use common::{build_store, paths, store_cache};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (chats, messages) = if quick { (100, 100) } else { (1000, 1000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## chatsync backup benchmark{}\n",
        if quick { " (quick)" } else { "" }
    );
    let cache = store_cache(chats, messages);
    if !cache.join("data").join("store").exists() {
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache).unwrap();
        let built = Instant::now();
        build_store(&cache, chats, messages);
        println!(
            "(built the store in {:.1} s)\n",
            built.elapsed().as_secs_f64()
        );
    }
    rt.block_on(run(&cache, chats, messages));
}

async fn run(cache: &Path, chats: usize, messages: usize) {
    let home = tempfile::tempdir().unwrap();
    copy_dir(cache, home.path());
    let data = paths(home.path()).data_dir;
    let (engine, _) = start_engine(&data, "bench", 0);
    let target = tempfile::tempdir().unwrap();
    let target_dir = target.path().join("repo");
    let backups = Backups::new(engine.clone(), &data);
    let passphrase = || Secret::Passphrase(SecretString::from("bench passphrase".to_string()));

    // The raw work: each chat's stored document (what a backup holds) encrypted with age.
    let ids: Vec<_> = engine.list_chats().into_iter().map(|c| c.id).collect();
    let started = Instant::now();
    let mut exported = Vec::with_capacity(ids.len());
    for id in &ids {
        exported.push(engine.copy_chat(id).await.unwrap().document.document());
    }
    let export_time = started.elapsed();
    let total: usize = exported.iter().map(Vec::len).sum();
    let identity = age::pq::Identity::generate();
    let recipient = identity.to_public();
    let started = Instant::now();
    let mut encrypted = 0;
    for bytes in &exported {
        encrypted += age::encrypt(&recipient, bytes).unwrap().len();
    }
    let encrypt_time = started.elapsed();
    drop(exported);

    backups
        .init(target_dir.to_str().unwrap(), None, passphrase())
        .await
        .unwrap();
    let full = backups.now().await.unwrap();
    let full_time = Duration::from_millis(full.elapsed_ms);

    // 1,000 new posts in ten chats, then 1,000 spread over every chat.
    let mut incremental = Vec::new();
    for (label, spread) in [
        ("1,000 posts in 10 chats", 10),
        ("1,000 posts in every chat", ids.len()),
    ] {
        for n in 0..1000 {
            let chat = &ids[n % spread.min(ids.len())];
            engine
                .post(chat, &format!("new post {n}"), None, None)
                .await
                .unwrap();
        }
        let report = backups.now().await.unwrap();
        incremental.push((label, report));
    }

    // A new device restores the newest snapshot.
    let fresh = tempfile::tempdir().unwrap();
    let (restored, _) = start_engine(fresh.path(), "restored", 0);
    let restored_backups = Backups::new(restored.clone(), fresh.path());
    let started = Instant::now();
    let report = restored_backups
        .restore(target_dir.to_str().unwrap(), None, passphrase(), None)
        .await
        .unwrap();
    let restore_time = started.elapsed();
    assert_eq!(report.restored, ids.len());
    // Each restored chat is checked as it is first loaded: that work, measured apart.
    let started = Instant::now();
    for id in &ids {
        restored.messages(id, None, 1).await.unwrap();
    }
    let first_reads = started.elapsed();
    // The same reads on the original store, whose chats load without those checks.
    let plain_home = tempfile::tempdir().unwrap();
    copy_dir(cache, plain_home.path());
    let (plain, _) = start_engine(&paths(plain_home.path()).data_dir, "plain", 0);
    let started = Instant::now();
    for id in &ids {
        plain.messages(id, None, 1).await.unwrap();
    }
    let plain_reads = started.elapsed();
    let unlock = {
        // The passphrase's scrypt work, part of every restore: measured alone.
        let config = std::fs::read(target_dir.join("config")).unwrap();
        let started = Instant::now();
        let identity =
            age::scrypt::Identity::new(SecretString::from("bench passphrase".to_string()));
        age::decrypt(&identity, &config).unwrap();
        started.elapsed()
    };

    println!(
        "store: {chats} chats x {messages} messages; {} MiB as backed up\n",
        total >> 20
    );
    println!("| measure | value | ratio |");
    println!("|---|---|---|");
    println!(
        "| read every chat's stored document | {:.2} s | |",
        export_time.as_secs_f64()
    );
    println!(
        "| raw age encryption of the same bytes | {:.2} s ({} MiB) | 1.00 |",
        encrypt_time.as_secs_f64(),
        encrypted >> 20
    );
    println!(
        "| full backup (read, encrypt, write) | {:.2} s, {} MiB written | {:.2}x raw encryption, {:.2}x read + encryption |",
        full_time.as_secs_f64(),
        full.bytes_written >> 20,
        full_time.as_secs_f64() / encrypt_time.as_secs_f64(),
        full_time.as_secs_f64() / (export_time + encrypt_time).as_secs_f64()
    );
    for (label, report) in &incremental {
        println!(
            "| incremental after {label} | {} ms, {} KiB in {} objects | {:.2}% of the full backup's bytes |",
            report.elapsed_ms,
            report.bytes_written >> 10,
            report.objects_written,
            report.bytes_written as f64 * 100.0 / full.bytes_written as f64
        );
    }
    println!(
        "| restore onto a new device | {:.2} s ({} messages) | of which {:.2} s unlocking (scrypt) |",
        restore_time.as_secs_f64(),
        report.messages,
        unlock.as_secs_f64()
    );
    println!(
        "| then the first read of every restored chat (each checked as it loads) | {:.2} s | {:.2}x the first reads of the original store ({:.2} s) |",
        first_reads.as_secs_f64(),
        first_reads.as_secs_f64() / plain_reads.as_secs_f64(),
        plain_reads.as_secs_f64()
    );
    drop(backups);
    drop(restored_backups);
    close_engine(engine).await;
    close_engine(restored).await;
    close_engine(plain).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
