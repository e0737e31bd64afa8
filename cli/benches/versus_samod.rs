//! chatsync beside samod 0.16 (the Rust port of automerge-repo, on the same Automerge 0.12),
//! on the same workloads in the same run, on loopback. Run with
//! `cargo bench -p chatsync --bench versus_samod` (add `-- --quick` for counts about ten
//! times smaller, `-- --only many,store` for some of the workloads: `live`, `catch-up`,
//! `many`, `store`, `mesh`).
//!
//! Both run three replicas, A, S and B, each its own process: A and B connect to S only, so
//! that every message takes two hops (A -> S -> B). chatsync: three real `chatsyncd`s (A and B
//! get `--peer` S; all three trust each other). samod: this binary started again with
//! `--samod-peer` (`versus_samod/peer.rs`), a `Repo` on `FilesystemStorage`, S accepting raw
//! TCP (samod's length-delimited framing) and A and B dialling it, TCP_NODELAY on every
//! socket. A samod chat is one document holding a list of messages; a post is one change
//! appending a map {id, author, text, time}.
//!
//! Where the two differ in what a figure includes, the tables say so: chatsync answers a post
//! once it is on disk (flushed); samod answers once the change is applied in memory, and its
//! `FilesystemStorage` writes the files afterwards and never syncs them. chatsync counts sync
//! payload bytes (without Noise and Yamux framing); samod's bytes are all that B read from its
//! socket.
//!
//! A last table, chatsync alone, measures a full mesh of 2 to 12 daemons.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chatsync_api::wire::EventJson;

mod common;
#[path = "versus_samod/chatsync.rs"]
mod cs;
#[path = "versus_samod/measure.rs"]
mod measure;
#[path = "versus_samod/mesh.rs"]
mod mesh;
#[path = "versus_samod/peer.rs"]
mod peer;
#[path = "versus_samod/raw.rs"]
mod raw;
#[path = "versus_samod/samod.rs"]
mod samod_side;
#[path = "versus_samod/store.rs"]
mod store;

use common::{CpuTime, status_kib};
use measure::{Latencies, Table, ms, quantile};

struct Settings {
    live_posts: usize,
    live_rate: u32,
    catch_up: usize,
    many_chats: usize,
    many_per_chat: usize,
    store_chats: usize,
    store_per_chat: usize,
    mesh_sizes: Vec<usize>,
    mesh_posts: usize,
    mesh_rate: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--samod-peer") {
        peer::main(&args[at + 1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            live_posts: 1_000,
            live_rate: 200,
            catch_up: 1_000,
            many_chats: 10,
            many_per_chat: 1_000,
            store_chats: 100,
            store_per_chat: 100,
            mesh_sizes: vec![2, 4, 8, 12],
            mesh_posts: 40,
            mesh_rate: 50,
        }
    } else {
        Settings {
            live_posts: 10_000,
            live_rate: 200,
            catch_up: 10_000,
            many_chats: 100,
            many_per_chat: 1_000,
            store_chats: 1_000,
            store_per_chat: 100,
            mesh_sizes: vec![2, 4, 8, 12],
            mesh_posts: 200,
            mesh_rate: 50,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## chatsync versus samod 0.16{}\n",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "`cargo bench -p chatsync --bench versus_samod{}`\n",
        if quick { " -- --quick" } else { "" }
    );
    // `--only live,catch-up,many,store,mesh` runs those workloads alone (to profile one).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .map(|at| args[at + 1].split(',').map(str::to_string).collect());
    let runs = |w: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == w));
    let started = Instant::now();
    rt.block_on(async {
        if runs("live") || runs("catch-up") || runs("many") {
            let mut cs = cs::Three::start().await;
            let mut sm = samod_side::Three::start().await;
            if runs("live") {
                live(&s, &cs, &mut sm).await;
            }
            if runs("catch-up") {
                let n = s.catch_up;
                let title =
                    format!("2. Catch-up, one chat: {n} messages posted on A while B was stopped");
                catch_up(&title, 1, n, &mut cs, &mut sm).await;
            }
            if runs("many") {
                let (k, n) = (s.many_chats, s.many_per_chat);
                let title = format!(
                    "3. Catch-up, many chats: {k} chats B knew, {n} messages posted into each on A while B was stopped"
                );
                catch_up(&title, k, n, &mut cs, &mut sm).await;
            }
            cs.shutdown().await;
            sm.shutdown().await;
        }
        if runs("store") {
            store::run(s.store_chats, s.store_per_chat).await;
        }
        if runs("mesh") {
            mesh::run(&s.mesh_sizes, s.mesh_posts, s.mesh_rate).await;
        }
    });
    println!("(whole run: {:.0} s)", started.elapsed().as_secs_f64());
}

/// What one side measured in the live workload.
struct Live {
    lat: Latencies,
    /// How long A took to answer each post (p50).
    answered: Duration,
    /// Bytes B received over the run.
    b_bytes: u64,
    s_cpu: CpuTime,
}

/// Workload 1: posts paced from A into one chat; post-to-visible on B, S's CPU.
async fn live(s: &Settings, cs: &cs::Three, sm: &mut samod_side::Three) {
    let c = live_chatsync(s, cs).await;
    let m = live_samod(s, sm).await;
    let mut t = Table::new(format!(
        "1. Live: {} posts paced at {}/s from A into one chat, visible on B (two hops)",
        s.live_posts, s.live_rate
    ));
    let row = |t: &mut Table, what: &str, a: Duration, b: Duration| {
        t.row(what, ms(a), ms(b), "ms", 2);
    };
    row(&mut t, "post-to-visible p50", c.lat.p50, m.lat.p50);
    row(&mut t, "p99", c.lat.p99, m.lat.p99);
    row(
        &mut t,
        "p50 of the first 10% of posts",
        c.lat.first,
        m.lat.first,
    );
    row(
        &mut t,
        "p50 of the last 10% of posts",
        c.lat.last,
        m.lat.last,
    );
    let growth = |l: &Latencies| l.last.as_secs_f64() / l.first.as_secs_f64();
    t.row(
        "last 10% / first 10%",
        growth(&c.lat),
        growth(&m.lat),
        "",
        2,
    );
    row(&mut t, "A answered the post, p50", c.answered, m.answered);
    let posts = s.live_posts as f64;
    t.row(
        "bytes B received per post",
        c.b_bytes as f64 / posts,
        m.b_bytes as f64 / posts,
        "",
        0,
    );
    let secs = |c: &CpuTime| c.user + c.system;
    t.row(
        "CPU used by S during the run (user + system)",
        secs(&c.s_cpu),
        secs(&m.s_cpu),
        "s",
        2,
    );
    t.row(
        "S's CPU per post",
        secs(&c.s_cpu) / posts * 1e6,
        secs(&m.s_cpu) / posts * 1e6,
        "µs",
        0,
    );
    t.text(
        "post answered",
        "once on disk (flushed)",
        "once applied in memory",
        "",
    );
    t.print();
    println!(
        "S's CPU by thread (user + system), chatsync: {}; samod: {}\n",
        by_thread(&c.s_cpu),
        by_thread(&m.s_cpu)
    );
}

/// The threads that used at least 10 ms, busiest first.
fn by_thread(cpu: &CpuTime) -> String {
    let mut threads: Vec<(&String, f64)> = cpu
        .threads
        .iter()
        .map(|(name, (u, s))| (name, u + s))
        .filter(|(_, t)| *t >= 0.01)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let named: Vec<String> = threads
        .iter()
        .map(|(name, t)| format!("{name} {t:.2} s"))
        .collect();
    named.join(", ")
}

async fn live_chatsync(s: &Settings, cs: &cs::Three) -> Live {
    let chat = cs.chats(1, "live").await.remove(0);
    let mut events = cs.b().client.events(Some(&chat)).await.unwrap();
    let cpu_before = common::cpu(&cs.s);
    let bytes_before = cs::bytes_received(&cs.b().client, &cs.s_id).await;
    // By message id: its number, when it was posted, how long A took to answer.
    type Sent = HashMap<String, (usize, Instant, Duration)>;
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let poster = {
        let (client, chat, sent, n) = (
            cs.a.client.clone(),
            chat.clone(),
            sent.clone(),
            s.live_posts,
        );
        let period = Duration::from_secs(1) / s.live_rate;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            for i in 0..n {
                tick.tick().await;
                let t = Instant::now();
                let m = client.post(&chat, &common::text(i), None).await.unwrap();
                sent.lock().unwrap().insert(m.id, (i, t, t.elapsed()));
            }
        })
    };
    let mut seen: HashMap<String, Instant> = HashMap::new();
    while seen.len() < s.live_posts {
        let next = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .unwrap_or_else(|_| panic!("B saw no new message for 60 s ({} seen)", seen.len()));
        match next.unwrap() {
            Some(EventJson::MessageCreated { message }) => {
                seen.insert(message.id, Instant::now());
            }
            Some(_) => {}
            None => panic!("B's event stream ended"),
        }
    }
    poster.await.unwrap();
    let s_cpu = common::cpu(&cs.s).since(&cpu_before);
    let b_bytes = cs::bytes_received(&cs.b().client, &cs.s_id).await - bytes_before;
    let sent = sent.lock().unwrap();
    let mut lat = vec![Duration::ZERO; s.live_posts];
    for (id, (i, t, _)) in sent.iter() {
        let at = seen.get(id).expect("a post B never saw");
        lat[*i] = at.saturating_duration_since(*t);
    }
    let answered: Vec<Duration> = sent.values().map(|(_, _, a)| *a).collect();
    Live {
        lat: Latencies::of(&lat),
        answered: quantile(&answered, 0.5),
        b_bytes,
        s_cpu,
    }
}

async fn live_samod(s: &Settings, sm: &mut samod_side::Three) -> Live {
    let doc = sm.chats(1).await.remove(0);
    sm.b().ask(&format!("watch {doc}"), secs(10)).await;
    let cpu_before = CpuTime::of_process(sm.s.pid);
    let bytes_before = sm.b().bytes_received().await;
    let mut sent = Vec::with_capacity(s.live_posts);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / s.live_rate);
    for i in 0..s.live_posts {
        tick.tick().await;
        let id = chatsync_daemon::engine::random_id();
        let t = Instant::now();
        sm.a.ask(&format!("post {doc} {id} {i}"), secs(30)).await;
        sent.push((id, t, t.elapsed()));
    }
    let b = sm.b();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    while seen.len() < s.live_posts {
        let (id, at) = tokio::time::timeout(secs(60), b.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("B saw no new message for 60 s ({} seen)", seen.len()))
            .expect("B's replica exited");
        seen.insert(id, at);
    }
    let s_cpu = CpuTime::of_process(sm.s.pid).since(&cpu_before);
    let b_bytes = sm.b().bytes_received().await - bytes_before;
    let lat: Vec<Duration> = sent
        .iter()
        .map(|(id, t, _)| {
            seen.get(id)
                .expect("a post B never saw")
                .saturating_duration_since(*t)
        })
        .collect();
    let answered: Vec<Duration> = sent.iter().map(|(_, _, a)| *a).collect();
    Live {
        lat: Latencies::of(&lat),
        answered: quantile(&answered, 0.5),
        b_bytes,
        s_cpu,
    }
}

/// What one side measured in a catch-up.
struct CatchUp {
    took: Duration,
    bytes: u64,
    /// B's peak resident memory since its start, KiB.
    hwm_kib: u64,
}

/// Workloads 2 and 3: B stopped while A posts `n` messages into each of `k` chats B knew; B's
/// start until it has them all, with the raw Automerge floor of the same.
async fn catch_up(title: &str, k: usize, n: usize, cs: &mut cs::Three, sm: &mut samod_side::Three) {
    let c = {
        let chats = cs.chats(k, "away").await;
        cs.stop_b().await;
        for chat in &chats {
            cs::post_many(&cs.a.client, chat, n, 8).await;
        }
        for chat in &chats {
            cs::wait_messages(&cs.s.client, chat, n as u64).await;
        }
        let started = Instant::now();
        cs.start_b().await;
        for chat in &chats {
            cs::wait_messages(&cs.b().client, chat, n as u64).await;
        }
        let took = started.elapsed();
        let bytes = cs::bytes_received(&cs.b().client, &cs.s_id).await;
        let hwm_kib = status_kib(cs.b().pid().unwrap(), "VmHWM:");
        CatchUp {
            took,
            bytes,
            hwm_kib,
        }
    };
    let m = {
        let docs = sm.chats(k).await;
        let all = docs.join(" ");
        sm.stop_b().await;
        for doc in &docs {
            sm.a.ask(&format!("post_many {doc} 0 {n}"), secs(600)).await;
        }
        sm.s.ask(&format!("wait {n} {all}"), secs(600)).await;
        let started = Instant::now();
        sm.start_b().await;
        sm.b().ask(&format!("find {all}"), secs(600)).await;
        sm.b().ask(&format!("wait {n} {all}"), secs(600)).await;
        let took = started.elapsed();
        let bytes = sm.b().bytes_received().await;
        let hwm_kib = status_kib(sm.b().pid, "VmHWM:");
        CatchUp {
            took,
            bytes,
            hwm_kib,
        }
    };
    let (raw_cs, raw_sm) = (common::sync::raw_sync(n), raw::message_list(n));
    let mut t = Table::new(title.to_string());
    let k32 = k as u32;
    catch_up_rows(
        &mut t,
        &c,
        &m,
        raw_cs.time * k32,
        raw_sm.time * k32,
        raw_cs.bytes * k as u64,
        raw_sm.bytes * k as u64,
    );
    t.print();
}

fn catch_up_rows(
    t: &mut Table,
    c: &CatchUp,
    m: &CatchUp,
    raw_cs: Duration,
    raw_sm: Duration,
    raw_cs_bytes: u64,
    raw_sm_bytes: u64,
) {
    t.row(
        "B's start until B has them all",
        ms(c.took),
        ms(m.took),
        "ms",
        0,
    );
    t.row(
        "raw Automerge sync of the same, in memory (each side's document shape)",
        ms(raw_cs),
        ms(raw_sm),
        "ms",
        0,
    );
    t.row(
        "time / raw Automerge",
        c.took.as_secs_f64() / raw_cs.as_secs_f64(),
        m.took.as_secs_f64() / raw_sm.as_secs_f64(),
        "",
        2,
    );
    t.row(
        "time / raw Automerge of chatsync's shape (one floor for both)",
        c.took.as_secs_f64() / raw_cs.as_secs_f64(),
        m.took.as_secs_f64() / raw_cs.as_secs_f64(),
        "",
        2,
    );
    t.row("bytes B received", c.bytes as f64, m.bytes as f64, "", 0);
    t.row(
        "raw Automerge sync bytes (both directions)",
        raw_cs_bytes as f64,
        raw_sm_bytes as f64,
        "",
        0,
    );
    t.row(
        "B's peak resident memory (VmHWM)",
        c.hwm_kib as f64 / 1024.0,
        m.hwm_kib as f64 / 1024.0,
        "MiB",
        1,
    );
    t.text(
        "bytes counted",
        "sync payload (no Noise, Yamux)",
        "all read from the socket",
        "",
    );
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
