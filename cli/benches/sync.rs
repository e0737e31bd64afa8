//! Benchmarks of sync between two real daemons on loopback, beside the raw figures of the same
//! run: libp2p's ping round trip on the same connection, and Automerge's sync protocol between
//! two in-memory documents. Results: docs/benchmarks.md. Run with
//! `cargo bench -p chatsync --bench sync` (add `-- --quick` for a smaller run). With
//! `-- --relay`, the two daemons reach each other only through a third one in relay mode
//! (hole punching off, so that they stay relayed), for the same figures through a relay.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chatsync_api::wire::{ConnectionPath, EventJson, ReservationState};

mod common;
use chatsync_testkit::{TestDaemon, pair_by_address};
use common::{
    Home, home, start,
    sync::{bytes_received, post_many, raw_sync, wait_connected, wait_messages},
    text,
};

struct Settings {
    /// New chats timed across two hops.
    hop_chats: usize,
    /// Messages posted by three devices while apart, before they meet again.
    apart: usize,
    latency_posts: usize,
    catch_up: usize,
    catch_up_chats: usize,
    catch_up_per_chat: usize,
    burst: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let relay = std::env::args().any(|a| a == "--relay");
    let s = if quick {
        Settings {
            hop_chats: 10,
            apart: 1_000,
            latency_posts: 200,
            catch_up: 2_000,
            catch_up_chats: 10,
            catch_up_per_chat: 100,
            burst: 2_000,
        }
    } else {
        Settings {
            hop_chats: 30,
            apart: 10_000,
            latency_posts: 1_000,
            catch_up: 10_000,
            catch_up_chats: 100,
            catch_up_per_chat: 1_000,
            burst: 20_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## chatsync sync benchmark{}{}\n",
        if relay { ", through a relay" } else { "" },
        if quick { " (quick)" } else { "" }
    );
    rt.block_on(run(&s, relay));
    if !relay {
        rt.block_on(three_devices(&s));
    }
}

/// Three daemons: A and B each dial S, and never meet.
async fn three() -> (Vec<TestDaemon>, Vec<Home>, Vec<Vec<String>>, Vec<String>) {
    let homes: Vec<Home> = (0..3).map(|_| home()).collect();
    let (s, _) = start(&homes[0], &[]).await;
    let ss = s.client.status().await.unwrap();
    let s_addr = format!("{}/p2p/{}", ss.listen_addrs[0], ss.device_id);
    let flags = vec![
        Vec::new(),
        vec!["--peer".to_string(), s_addr.clone()],
        vec!["--peer".to_string(), s_addr],
    ];
    let mut daemons = vec![s];
    for i in 1..3 {
        daemons.push(start(&homes[i], &flags[i]).await.0);
    }
    let mut ids = Vec::new();
    for d in &daemons {
        ids.push(d.client.status().await.unwrap().device_id);
    }
    for (i, d) in daemons.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                d.client.add_device(id, None).await.unwrap();
            }
        }
    }
    for d in &daemons[1..] {
        wait_connected(&d.client, &ids[0]).await;
    }
    (daemons, homes, flags, ids)
}

/// A new chat across two hops (A to B through S), and three devices that posted while apart
/// meeting again.
async fn three_devices(s: &Settings) {
    let (mut daemons, homes, flags, _ids) = three().await;
    println!(
        "### Three devices (loopback; A and B each connected to S only)
"
    );
    let mut hops = Vec::new();
    for i in 0..s.hop_chats {
        let started = Instant::now();
        let chat = daemons[1]
            .client
            .create_chat(&format!("hop {i}"))
            .await
            .unwrap()
            .id;
        loop {
            if daemons[2].client.chat(&chat).await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the chat never crossed"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        hops.push(started.elapsed());
    }
    hops.sort();
    println!(
        "A new chat made on A shows on B ({} chats, one after another): p50 {:.1} ms, max {:.1} ms.\n",
        hops.len(),
        ms(hops[hops.len() / 2]),
        ms(*hops.last().unwrap())
    );

    // Apart: each device posts a third while the other two are stopped.
    let chat = daemons[1].client.create_chat("apart").await.unwrap().id;
    for d in &daemons {
        wait_messages(&d.client, &chat, 0).await;
    }
    let mut stopped: Vec<Option<TestDaemon>> = daemons.drain(..).map(Some).collect();
    for d in stopped.iter_mut() {
        d.take().unwrap().shutdown().await;
    }
    let share = s.apart / 3;
    for (i, home) in homes.iter().enumerate() {
        let n = if i == 2 { s.apart - 2 * share } else { share };
        // Alone: no peers given, so it sees nobody.
        let (d, _) = start(home, &[]).await;
        post_many(&d.client, &chat, n, 8).await;
        d.shutdown().await;
    }
    let started = Instant::now();
    for (i, home) in homes.iter().enumerate() {
        daemons.push(start(home, &flags[i]).await.0);
    }
    for d in &daemons {
        wait_messages(&d.client, &chat, s.apart as u64).await;
    }
    let took = started.elapsed();
    let raw = raw_sync(s.apart);
    println!(
        "Apart, then together: {} messages posted a third on each device while the other two \
         were stopped, then all three started (each missed two thirds): every device had all \
         of them {:.0} ms after the first start (raw Automerge sync of as many in one go, in \
         memory: {:.0} ms; ratio {:.1}).\n",
        s.apart,
        ms(took),
        ms(raw.time),
        took.as_secs_f64() / raw.time.as_secs_f64()
    );
    for d in daemons {
        d.shutdown().await;
    }
}

struct Pair {
    a: TestDaemon,
    b: TestDaemon,
    /// The relay between them, with `--relay`.
    relay: Option<(TestDaemon, Home)>,
    _homes: (Home, Home),
    b_home: Home,
    b_flags: Vec<String>,
    a_id: String,
}

/// Two daemons that trust each other, `b` dialling `a` (through a relay with `relayed`).
async fn pair(relayed: bool) -> Pair {
    let (ha, hb) = (home(), home());
    let mut relay = None;
    let mut a_flags = Vec::new();
    if relayed {
        let hr = home();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let at = format!("/ip4/127.0.0.1/tcp/{port}");
        let flags = ["--relay", "--listen", &at, "--external-addr", &at].map(String::from);
        let (r, _) = start(&hr, &flags).await;
        let id = r.client.status().await.unwrap().device_id;
        a_flags = [
            "--no-hole-punching",
            "--relay-addr",
            &format!("{at}/p2p/{id}"),
        ]
        .map(String::from)
        .to_vec();
        relay = Some((r, hr));
    }
    let (a, _) = start(&ha, &a_flags).await;
    let mut sa = a.client.status().await.unwrap();
    let a_addr = if relayed {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = sa
                .reservations
                .iter()
                .find(|r| r.state == ReservationState::Reserved)
                .and_then(|r| r.relayed_addrs.first())
            {
                break addr.clone();
            }
            assert!(Instant::now() < deadline, "no reservation on the relay");
            tokio::time::sleep(Duration::from_millis(20)).await;
            sa = a.client.status().await.unwrap();
        }
    } else {
        format!("{}/p2p/{}", sa.listen_addrs[0], sa.device_id)
    };
    let mut b_flags = vec!["--peer".to_string(), a_addr];
    if relayed {
        b_flags.push("--no-hole-punching".into());
    }
    let (b, _) = start(&hb, &b_flags).await;
    pair_by_address(&a, &b).await;
    let path = b
        .client
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.device == sa.device_id)
        .and_then(|p| p.path);
    assert_eq!(
        path,
        Some(if relayed {
            ConnectionPath::Relayed
        } else {
            ConnectionPath::Lan
        }),
        "the devices are not connected the way this run measures"
    );
    let b_home = hb.clone();
    Pair {
        a,
        b,
        relay,
        _homes: (ha, hb),
        b_home,
        b_flags,
        a_id: sa.device_id,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run(s: &Settings, relayed: bool) {
    let p = pair(relayed).await;
    let over = if relayed {
        "through a relay, all on loopback"
    } else {
        "loopback"
    };

    // Post-to-visible latency, paced at 100 posts per second.
    let chat = p.a.client.create_chat("latency").await.unwrap().id;
    wait_messages(&p.b.client, &chat, 0).await;
    let mut events = p.b.client.events(Some(&chat)).await.unwrap();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let poster = {
        let (client, chat, sent, n) = (
            p.a.client.clone(),
            chat.clone(),
            sent.clone(),
            s.latency_posts,
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..n {
                tick.tick().await;
                let t = Instant::now();
                let m = client.post(&chat, &text(i), None).await.unwrap();
                sent.lock().unwrap().entry(m.id).or_insert(t);
            }
        })
    };
    let mut seen: HashMap<String, Instant> = HashMap::new();
    while seen.len() < s.latency_posts {
        match events.next().await.unwrap() {
            Some(EventJson::MessageCreated { message }) => {
                seen.insert(message.id, Instant::now());
            }
            Some(_) => {}
            None => panic!("event stream ended"),
        }
    }
    poster.await.unwrap();
    let mut lat: Vec<Duration> = {
        let sent = sent.lock().unwrap();
        seen.iter()
            .filter_map(|(id, at)| sent.get(id).map(|t| at.saturating_duration_since(*t)))
            .collect()
    };
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let ping = p.b.client.peers().await.unwrap();
    let rtt = ping
        .iter()
        .find(|x| x.device == p.a_id)
        .and_then(|x| x.rtt_ms)
        .unwrap_or(0.0);
    println!("### Post-to-visible latency (A's API to B's event stream, {over})\n");
    println!("| measure | value |\n|---|---:|");
    println!("| posts (paced at 100/s) | {} |", lat.len());
    println!("| p50 | {:.2} ms |", ms(pct(0.5)));
    println!("| p99 | {:.2} ms |", ms(pct(0.99)));
    println!("| max | {:.2} ms |", ms(*lat.last().unwrap()));
    println!("| libp2p ping round trip on the same connection | {rtt:.2} ms |\n");

    // Catch-up: B offline while A posts.
    println!("### Catch-up after time offline ({over})\n");
    println!(
        "| missed | B start to fully synced | raw Automerge sync, in memory | ratio | bytes B received | raw Automerge sync bytes | missed changes, compressed | bytes received / compressed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let one = p.a.client.create_chat("catch-up").await.unwrap().id;
    wait_messages(&p.b.client, &one, 0).await;
    let b = p.b;
    b.shutdown().await;
    post_many(&p.a.client, &one, s.catch_up, 8).await;
    let started = Instant::now();
    let (b, _) = start(&p.b_home, &p.b_flags).await;
    wait_messages(&b.client, &one, s.catch_up as u64).await;
    let took = started.elapsed();
    let received = bytes_received(&b.client, &p.a_id).await;
    eprintln!(
        "catch-up of {} messages in one chat ({over}): {:.0} ms, {received} bytes",
        s.catch_up,
        ms(took)
    );
    let raw = raw_sync(s.catch_up);
    println!(
        "| {} messages in one chat | {:.0} ms | {:.0} ms | {:.2} | {} | {} | {} | {:.2} |",
        s.catch_up,
        ms(took),
        ms(raw.time),
        took.as_secs_f64() / raw.time.as_secs_f64(),
        received,
        raw.bytes,
        raw.compressed,
        received as f64 / raw.compressed as f64
    );
    b.shutdown().await;
    let mut chats = Vec::new();
    for c in 0..s.catch_up_chats {
        let id =
            p.a.client
                .create_chat(&format!("away {c}"))
                .await
                .unwrap()
                .id;
        post_many(&p.a.client, &id, s.catch_up_per_chat, 8).await;
        chats.push(id);
    }
    let started = Instant::now();
    let (b, _) = start(&p.b_home, &p.b_flags).await;
    for id in &chats {
        wait_messages(&b.client, id, s.catch_up_per_chat as u64).await;
    }
    let took = started.elapsed();
    let received = bytes_received(&b.client, &p.a_id).await;
    let one = raw_sync(s.catch_up_per_chat);
    let chats = s.catch_up_chats as u64;
    let raw = one.time * s.catch_up_chats as u32;
    println!(
        "| {} chats x {} messages (new to B) | {:.0} ms | {:.0} ms | {:.2} | {} | {} | {} | {:.2} |\n",
        s.catch_up_chats,
        s.catch_up_per_chat,
        ms(took),
        ms(raw),
        took.as_secs_f64() / raw.as_secs_f64(),
        received,
        one.bytes * chats,
        one.compressed * chats,
        received as f64 / (one.compressed * chats) as f64
    );
    wait_connected(&b.client, &p.a_id).await;

    // Burst: A posts as fast as the API takes them; time until B has them all.
    let burst = p.a.client.create_chat("burst").await.unwrap().id;
    wait_messages(&b.client, &burst, 0).await;
    let started = Instant::now();
    post_many(&p.a.client, &burst, s.burst, 8).await;
    let posted = started.elapsed();
    wait_messages(&b.client, &burst, s.burst as u64).await;
    let took = started.elapsed();
    println!("### Burst\n");
    println!(
        "A posted {} messages in {:.0} ms (8 clients); B had them all {:.0} ms after the first post.\n",
        s.burst,
        ms(posted),
        ms(took)
    );
    p.a.shutdown().await;
    b.shutdown().await;
    if let Some((relay, _home)) = p.relay {
        relay.shutdown().await;
    }
}
