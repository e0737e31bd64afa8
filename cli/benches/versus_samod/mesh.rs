//! chatsync alone: what a full mesh costs. N daemons, each dialling every one started before
//! it and trusting all the others; one chat; posts paced from one device. Per message and per
//! connection: sync payload bytes (as `chatsync peers` counts them) and CPU time of all the
//! daemons; and how long a post takes to show on the others, each one hop away.

use std::time::{Duration, Instant};

use chatsync_api::wire::EventJson;
use chatsync_testkit::TestDaemon;

use crate::{
    common::{self, CpuTime, Home, home, start},
    cs::{wait_connected, wait_messages},
    measure::{ms, quantile},
};

struct Mesh {
    size: usize,
    bytes_per_message_connection: f64,
    cpu_per_message_connection: f64,
    cpu_per_message: f64,
    /// CPU time all the daemons used per second while idle, before the posts.
    idle_cpu_per_second: f64,
    p50: Duration,
    p50_last: Duration,
}

pub async fn run(sizes: &[usize], posts: usize, rate: u32) {
    let mut rows = Vec::new();
    for &n in sizes {
        rows.push(mesh(n, posts, rate).await);
    }
    println!(
        "### 6. Mesh (chatsync only): N daemons all connected to each other, one chat, {posts} \
         posts paced at {rate}/s from one of them\n"
    );
    println!(
        "| daemons | connections | sync bytes per message per connection | CPU per message per \
         connection | CPU per message, all daemons | CPU of all daemons while idle | \
         post-to-visible p50 (each other daemon) | p50 until the last one has it |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.0} ms/s | {:.2} ms | {:.2} ms |",
            m.size,
            m.size * (m.size - 1) / 2,
            m.bytes_per_message_connection,
            m.cpu_per_message_connection * 1e6,
            m.cpu_per_message * 1e6,
            m.idle_cpu_per_second * 1e3,
            ms(m.p50),
            ms(m.p50_last)
        );
    }
    println!(
        "\nBytes: all the daemons received from each other over the posts, divided by posts \
         and connections (a connection carries both directions). CPU: user + system time of \
         all the daemons over the posts.\n"
    );
}

async fn mesh(n: usize, posts: usize, rate: u32) -> Mesh {
    let homes: Vec<Home> = (0..n).map(|_| home()).collect();
    let mut daemons: Vec<TestDaemon> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for h in &homes {
        let flags: Vec<String> = addrs
            .iter()
            .flat_map(|a| ["--peer".to_string(), a.clone()])
            .collect();
        let (d, _) = start(h, &flags).await;
        addrs.push(d.dial_address().await);
        daemons.push(d);
    }
    for d in &daemons {
        for other in &daemons {
            if d.device_id != other.device_id {
                d.trust(&other.device_id).await;
            }
        }
    }
    for d in &daemons {
        for other in &daemons {
            if d.device_id != other.device_id {
                wait_connected(&d.client, &other.device_id).await;
            }
        }
    }
    let chat = daemons[0].create_chat("mesh").await.id;
    for d in &daemons {
        wait_messages(&d.client, &chat, 0).await;
    }
    // Let the chat's creation settle everywhere, then measure what the mesh costs idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_before: Vec<CpuTime> = daemons.iter().map(common::cpu).collect();
    let idle = Duration::from_secs(2);
    tokio::time::sleep(idle).await;
    let idle_cpu = cpu_since(&daemons, &idle_before);

    let mut watchers = Vec::new();
    for d in &daemons[1..] {
        let mut events = d.client.events(Some(&chat)).await.unwrap();
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < posts {
                let next = tokio::time::timeout(Duration::from_secs(60), events.next())
                    .await
                    .expect("a daemon saw no new message for 60 s");
                match next.unwrap() {
                    Some(EventJson::MessageCreated { message }) => {
                        seen.push((message.id, Instant::now()));
                    }
                    Some(_) => {}
                    None => panic!("event stream ended"),
                }
            }
            seen
        }));
    }
    let bytes_before = received(&daemons).await;
    let cpu_before: Vec<CpuTime> = daemons.iter().map(common::cpu).collect();
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    for i in 0..posts {
        tick.tick().await;
        let t = Instant::now();
        let m = daemons[0]
            .client
            .post(&chat, &common::text(i), None)
            .await
            .unwrap();
        sent.push((m.id, t));
    }
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.unwrap());
    }
    for d in &daemons {
        wait_messages(&d.client, &chat, posts as u64).await;
    }
    // Sessions end with an exchange of heads after the last change: let it finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_since(&daemons, &cpu_before);
    let bytes = received(&daemons).await - bytes_before;
    let mut all = Vec::new();
    let mut last = Vec::new();
    for (id, t) in &sent {
        let mut latest = Duration::ZERO;
        for receiver in &seen {
            let at = receiver
                .iter()
                .find(|(seen_id, _)| seen_id == id)
                .map(|(_, at)| at.saturating_duration_since(*t))
                .expect("a post a daemon never saw");
            all.push(at);
            latest = latest.max(at);
        }
        last.push(latest);
    }
    for d in daemons {
        d.shutdown().await;
    }
    let connections = (n * (n - 1) / 2) as f64;
    let per = posts as f64 * connections;
    Mesh {
        size: n,
        bytes_per_message_connection: bytes as f64 / per,
        cpu_per_message_connection: cpu / per,
        cpu_per_message: cpu / posts as f64,
        idle_cpu_per_second: idle_cpu / idle.as_secs_f64(),
        p50: quantile(&all, 0.5),
        p50_last: quantile(&last, 0.5),
    }
}

/// CPU seconds (user + system) all the daemons used since `before`.
fn cpu_since(daemons: &[TestDaemon], before: &[CpuTime]) -> f64 {
    daemons
        .iter()
        .zip(before)
        .map(|(d, before)| {
            let c = common::cpu(d).since(before);
            c.user + c.system
        })
        .sum()
}

/// Sync payload bytes every daemon has received from every other, in all.
async fn received(daemons: &[TestDaemon]) -> u64 {
    let mut total = 0;
    for d in daemons {
        total += d
            .client
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| p.bytes_received)
            .sum::<u64>();
    }
    total
}
