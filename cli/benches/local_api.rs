//! Benchmarks of the local API and the store, against the raw Automerge work in the same run.
//! Results and how to read them: docs/benchmarks.md. Run with
//! `cargo bench -p chatsync --bench local_api` (add `-- --quick` for a smaller run).
//!
//! Figures are ratios where possible: this runs on shared, noisy machines, so an absolute
//! number means little on its own, but the daemon's cost relative to the bare document work
//! measured a moment earlier on the same machine does.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_daemon::{identity::Identity, store::Store};
use chatsync_model::{ChatDoc, ChatId, Device, MessageId};

mod common;
use chatsync_testkit::TestDaemon;
use common::{CpuTime, build_store, cpu, home, rss_kib, start, store_cache, text};

struct Settings {
    sequential_posts: usize,
    concurrent_posts: usize,
    clients: usize,
    startup_chats: usize,
    startup_messages: usize,
    startup_runs: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            sequential_posts: 500,
            concurrent_posts: 4000,
            clients: 8,
            startup_chats: 100,
            startup_messages: 100,
            startup_runs: 3,
        }
    } else {
        Settings {
            sequential_posts: 2000,
            concurrent_posts: 40000,
            clients: 8,
            startup_chats: 1000,
            startup_messages: 1000,
            startup_runs: 5,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## chatsync local API benchmark{}\n",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "machine: {} cores\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    rt.block_on(post_throughput(&s));
    startup(&s);
}

fn device() -> Device {
    Device::new(
        chatsync_model::DeviceId::new("12D3KooWBenchDevice").unwrap(),
        "bench",
    )
    .unwrap()
}

/// Posts one at a time into a bare document: the Automerge and model work alone, no IO.
fn raw_posts(n: usize) -> Duration {
    let dev = device();
    let mut doc = ChatDoc::create(ChatId::new("bench").unwrap(), "bench", &dev, 0).unwrap();
    let started = Instant::now();
    for i in 0..n {
        let id = MessageId::new(format!("{i:032x}")).unwrap();
        doc.post(&dev, id, &text(i), None, i as i64).unwrap();
        let chunk = doc.save_incremental();
        std::hint::black_box(chunk);
    }
    started.elapsed()
}

/// `clients` clients post `per_client` messages each, client `c` to `chats[c % chats.len()]`,
/// each waiting for its post's answer before the next. Returns the time it took and every
/// post's latency (request to durable answer).
async fn concurrent_posts(
    daemon: &TestDaemon,
    chats: &[String],
    clients: usize,
    per_client: usize,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = daemon.client.clone();
        let chat = chats[c % chats.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                client
                    .post(&chat, &text(c * per_client + i), None)
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(clients * per_client);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    (started.elapsed(), latencies)
}

/// [`raw_posts`] into `docs` documents of `per_doc` posts each, one after the other.
fn raw_posts_split(docs: usize, per_doc: usize) -> Duration {
    (0..docs).map(|_| raw_posts(per_doc)).sum()
}

async fn post_throughput(s: &Settings) {
    let dir = home();
    let (daemon, _) = start(&dir, &[]).await;
    let chat = daemon.client.create_chat("bench").await.unwrap().id;

    // Sequential: one client, one post at a time (each waits for its own flush).
    let raw_seq = raw_posts(s.sequential_posts);
    let started = Instant::now();
    for i in 0..s.sequential_posts {
        daemon.client.post(&chat, &text(i), None).await.unwrap();
    }
    let seq = started.elapsed();

    // Concurrent: several clients, each posting in a loop; durability work is grouped.
    let raw_conc = raw_posts(s.concurrent_posts);
    let chat2 = daemon
        .client
        .create_chat("bench-concurrent")
        .await
        .unwrap()
        .id;
    let per_client = s.concurrent_posts / s.clients;
    let cpu_before = cpu(&daemon);
    let client_cpu_before = CpuTime::of_process(std::process::id());
    let (conc, latencies) =
        concurrent_posts(&daemon, std::slice::from_ref(&chat2), s.clients, per_client).await;
    let daemon_cpu = cpu(&daemon).since(&cpu_before);
    let bench_cpu_before = CpuTime::of_process(std::process::id());
    let client_cpu = bench_cpu_before.since(&client_cpu_before);
    let engine_only = engine_posts(s.clients, per_client * s.clients).await;
    let engine_cpu = CpuTime::of_process(std::process::id()).since(&bench_cpu_before);
    let mut lat = latencies;
    lat.sort();

    // The same clients, each posting to a chat of its own: the chats' changes run side by side
    // (one chat's run one at a time, under its lock), and their durability work is still
    // grouped.
    let raw_split = raw_posts_split(s.clients, per_client);
    let mut own_chats = Vec::new();
    for c in 0..s.clients {
        let chat = daemon
            .client
            .create_chat(&format!("bench-client-{c}"))
            .await;
        own_chats.push(chat.unwrap().id);
    }
    let (split, _) = concurrent_posts(&daemon, &own_chats, s.clients, per_client).await;
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!("### Durable posts through the API\n");
    println!("| run | posts | daemon posts/s | bare Automerge posts/s | ratio (daemon / bare) |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| sequential, 1 client | {} | {:.0} | {:.0} | {:.3} |",
        s.sequential_posts,
        rate(s.sequential_posts, seq),
        rate(s.sequential_posts, raw_seq),
        raw_seq.as_secs_f64() / seq.as_secs_f64()
    );
    println!(
        "| concurrent, {} clients | {} | {:.0} | {:.0} | {:.3} |",
        s.clients,
        per_client * s.clients,
        rate(per_client * s.clients, conc),
        rate(s.concurrent_posts, raw_conc),
        raw_conc.as_secs_f64() / conc.as_secs_f64()
    );
    println!(
        "| concurrent, {} clients, a chat each | {} | {:.0} | {:.0} | {:.3} |",
        s.clients,
        per_client * s.clients,
        rate(per_client * s.clients, split),
        rate(per_client * s.clients, raw_split),
        raw_split.as_secs_f64() / split.as_secs_f64()
    );
    println!(
        "| in-process engine, {} tasks (no HTTP) | {} | {:.0} | {:.0} | {:.3} |",
        s.clients,
        per_client * s.clients,
        rate(per_client * s.clients, engine_only),
        rate(s.concurrent_posts, raw_conc),
        raw_conc.as_secs_f64() / engine_only.as_secs_f64()
    );
    println!(
        "\nconcurrent post latency (request to durable answer): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    let posts = (per_client * s.clients) as f64;
    println!("CPU per post, from /proc (µs; user + kernel):\n");
    print_cpu("daemon, concurrent run", &daemon_cpu, posts);
    print_cpu(
        "its API clients (the benchmark process)",
        &client_cpu,
        posts,
    );
    print_cpu(
        "benchmark process, in-process engine run",
        &engine_cpu,
        posts,
    );
    println!();
    daemon.shutdown().await;
}

/// Prints CPU time per post: in all, then by kind of thread (the ones that used any).
fn print_cpu(what: &str, cpu: &CpuTime, posts: f64) {
    let us = |secs: f64| secs * 1e6 / posts;
    let threads: Vec<String> = cpu
        .threads
        .iter()
        .filter(|(_, (u, s))| u + s > 0.0)
        .map(|(name, (u, s))| format!("{name} {:.0} + {:.0}", us(*u), us(*s)))
        .collect();
    println!(
        "- {what}: {:.0} ({:.0} + {:.0}); by thread: {}",
        us(cpu.user + cpu.system),
        us(cpu.user),
        us(cpu.system),
        threads.join(", ")
    );
}

/// The same concurrent posts through the engine in-process, durable as through the API: what
/// the daemon's own work costs without the HTTP layer and the client.
async fn engine_posts(tasks: usize, posts: usize) -> Duration {
    use chatsync_daemon::engine::{Engine, EngineConfig};
    let dir = home();
    let store = Store::open(dir.path(), 16 << 20).unwrap();
    let identity = Identity::load_or_create(&dir.path().join("identity.key")).unwrap();
    let engine = Engine::start(
        store,
        device(),
        identity.keypair,
        EngineConfig {
            memory_budget_bytes: 256 << 20,
            idle_unload: Duration::from_secs(600),
            name_configured: true,
            reserve_bytes: 64 << 20,
        },
    )
    .unwrap();
    let chat = engine.create_chat("bench", None).await.unwrap().id;
    let per_task = posts / tasks;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (engine, chat) = (engine.clone(), chat.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                engine
                    .post(&chat, &text(t * per_task + i), None, None)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.close().await.unwrap();
    }
    elapsed
}

fn startup(s: &Settings) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = store_cache(s.startup_chats, s.startup_messages);
    let built = Instant::now();
    if !cache.join("data").join("store").exists() {
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache).unwrap();
        build_store(&cache, s.startup_chats, s.startup_messages);
        println!(
            "(built a store of {} chats x {} messages in {:.1} s)\n",
            s.startup_chats,
            s.startup_messages,
            built.elapsed().as_secs_f64()
        );
    }
    // Each run starts from a copy, so that one run's writes never change the next.
    let mut times = Vec::new();
    let mut rss = Vec::new();
    let mut first_read = Vec::new();
    let mut rss_after_reads = 0;
    let store_bytes = dir_size(&cache.join("data").join("store"));
    for _ in 0..s.startup_runs {
        let dir = home();
        copy_dir(&cache, dir.path());
        rt.block_on(async {
            let (daemon, elapsed) = start(&dir, &[]).await;
            times.push(elapsed);
            rss.push(rss_kib(&daemon));
            let status = daemon.client.status().await.unwrap();
            assert_eq!(status.chats, s.startup_chats);
            let t = Instant::now();
            let page = daemon
                .client
                .messages(&format!("{:032x}", 0), 20, None)
                .await
                .unwrap();
            first_read.push(t.elapsed());
            assert_eq!(page.len(), 20.min(s.startup_messages));
            for c in 1..10 {
                daemon
                    .client
                    .messages(&format!("{c:032x}"), 20, None)
                    .await
                    .unwrap();
            }
            rss_after_reads = rss_kib(&daemon);
            daemon.shutdown().await;
        });
    }
    times.sort();
    rss.sort();
    first_read.sort();
    let median = |v: &Vec<Duration>| v[v.len() / 2];
    println!(
        "### Start-up with {} chats x {} messages on disk\n",
        s.startup_chats, s.startup_messages
    );
    println!(
        "| measure | median of {} runs | min | max |",
        s.startup_runs
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| start to first API answer | {:.1} ms | {:.1} ms | {:.1} ms |",
        median(&times).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "| resident memory after start | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        rss[rss.len() / 2] as f64 / 1024.0,
        rss[0] as f64 / 1024.0,
        *rss.last().unwrap() as f64 / 1024.0
    );
    println!(
        "| first read of one chat (loads it) | {:.1} ms | {:.1} ms | {:.1} ms |",
        median(&first_read).as_secs_f64() * 1e3,
        first_read[0].as_secs_f64() * 1e3,
        first_read.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "\nstore on disk: {:.1} MiB; resident memory after reading 10 chats (last run): {:.1} MiB",
        store_bytes as f64 / (1024.0 * 1024.0),
        rss_after_reads as f64 / 1024.0
    );
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
