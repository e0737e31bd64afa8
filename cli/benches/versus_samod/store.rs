//! Workload 4: a store written one post at a time, its size on disk and the bytes written for
//! it, and the time to read it all back after a restart.

use std::time::{Duration, Instant};

use crate::{
    common::{self, home, start, status_kib},
    measure::{DiskUse, DiskWrites, Table, disk_use, mib, ms},
    samod_side, secs,
};

/// What one side measured writing and reopening a store.
struct Store {
    write_time: Duration,
    disk: DiskUse,
    written: DiskWrites,
    reopen: Duration,
    messages_read: u64,
    rss_kib: u64,
}

/// Workload 4: `k` chats x `n` messages written one post at a time on A alone (each post
/// awaited); the store on disk; A stopped and started again, and every chat read once.
pub async fn run(k: usize, n: usize) {
    let c = store_chatsync(k, n).await;
    let m = store_samod(k, n).await;
    let posts = (k * n) as f64;
    let mut t = Table::new(format!(
        "4. Store: {k} chats x {n} messages written on A alone, one post at a time"
    ));
    t.row(
        "writing them (posts/s, each awaited)",
        posts / c.write_time.as_secs_f64(),
        posts / m.write_time.as_secs_f64(),
        "",
        0,
    );
    t.row(
        "store on disk, allocated (du)",
        mib(c.disk.allocated),
        mib(m.disk.allocated),
        "MiB",
        1,
    );
    t.row(
        "store on disk, apparent size (du --apparent-size)",
        mib(c.disk.apparent),
        mib(m.disk.apparent),
        "MiB",
        1,
    );
    t.row(
        "files in the store",
        c.disk.files as f64,
        m.disk.files as f64,
        "",
        0,
    );
    t.row(
        "bytes written per post (write_bytes)",
        c.written.gross as f64 / posts,
        m.written.gross as f64 / posts,
        "",
        0,
    );
    t.row(
        "... less files deleted before written back (cancelled_write_bytes)",
        c.written.net() as f64 / posts,
        m.written.net() as f64 / posts,
        "",
        0,
    );
    t.row(
        "start again until every chat was read once",
        ms(c.reopen),
        ms(m.reopen),
        "ms",
        0,
    );
    t.row(
        "resident memory after",
        c.rss_kib as f64 / 1024.0,
        m.rss_kib as f64 / 1024.0,
        "MiB",
        1,
    );
    t.text(
        "messages read back",
        &c.messages_read.to_string(),
        &m.messages_read.to_string(),
        "",
    );
    t.text(
        "post answered",
        "once on disk (flushed)",
        "once applied in memory; files never synced",
        "",
    );
    t.print();
}

async fn store_chatsync(k: usize, n: usize) -> Store {
    let h = home();
    let (a, _) = start(&h, &[]).await;
    let pid = a.pid().unwrap();
    let before = DiskWrites::of_process(pid);
    let started = Instant::now();
    for c in 0..k {
        let chat = a.create_chat(&format!("store {c}")).await.id;
        for i in 0..n {
            a.client.post(&chat, &common::text(i), None).await.unwrap();
        }
    }
    let write_time = started.elapsed();
    let written = DiskWrites::of_process(pid).since(before);
    a.shutdown().await;
    let disk = disk_use(&common::paths(h.path()).data_dir);
    let started = Instant::now();
    let (a, _) = start(&h, &[]).await;
    let mut messages_read = 0;
    let chats = a.client.chats().await.unwrap();
    assert_eq!(chats.len(), k, "chats lost across the restart");
    for chat in &chats {
        messages_read += a.client.messages(&chat.id, n, None).await.unwrap().len() as u64;
    }
    let reopen = started.elapsed();
    let rss_kib = common::rss_kib(&a);
    a.shutdown().await;
    Store {
        write_time,
        disk,
        written,
        reopen,
        messages_read,
        rss_kib,
    }
}

async fn store_samod(k: usize, n: usize) -> Store {
    let dir = tempfile::Builder::new().prefix("samod").tempdir().unwrap();
    let (mut a, _) = samod_side::Peer::start("A", dir.path(), false, None).await;
    let before = DiskWrites::of_process(a.pid);
    let started = Instant::now();
    let mut docs = Vec::new();
    for _ in 0..k {
        let doc = a.ask("create 1", secs(30)).await;
        a.ask(&format!("post_many {doc} 0 {n}"), secs(60)).await;
        docs.push(doc);
    }
    let write_time = started.elapsed();
    // Stopping waits for the storage writes still under way; the replica then reads its own
    // counter.
    let written = a.stop().await.since(before);
    let disk = disk_use(dir.path());
    let started = Instant::now();
    let (mut a, _) = samod_side::Peer::start("A", dir.path(), false, None).await;
    let messages_read: u64 = a
        .ask(&format!("read_all {}", docs.join(" ")), secs(600))
        .await
        .parse()
        .unwrap();
    let reopen = started.elapsed();
    let rss_kib = status_kib(a.pid, "VmRSS:");
    a.stop().await;
    Store {
        write_time,
        disk,
        written,
        reopen,
        messages_read,
        rss_kib,
    }
}
