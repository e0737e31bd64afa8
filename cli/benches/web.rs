//! The web client in a real browser (headless Chromium), against the local event stream in the
//! same run: how long a post on another device takes to appear in the page's DOM (measured in
//! the browser), next to its arrival on this device's event stream; and how long a chat of
//! 10,000 messages takes to open. Results: docs/benchmarks.md. Run with
//! `cargo bench -p chatsync --bench web` (`-- --quick`: fewer posts, a 1,000-message chat).
//! Needs Debian's `chromium` and `chromium-driver`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chatsync_api::wire::{EventJson, WebSettingsRequest};
use chatsync_testkit::{browser::Browser, pair_by_address};

mod common;
use common::{home, start, text};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (posts, big_chat) = if quick { (50, 1_000) } else { (300, 10_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## chatsync web client benchmark{}\n",
        if quick { " (quick)" } else { "" }
    );
    rt.block_on(run(posts, big_chat));
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(posts: usize, big_chat: usize) {
    let Some(browser) = Browser::start(1200, 800).await else {
        println!("no browser: install chromium and chromium-driver");
        return;
    };
    let (ha, hb) = (home(), home());
    let (a, _) = start(&ha, &[]).await;
    let sa = a.client.status().await.unwrap();
    let a_addr = format!("{}/p2p/{}", sa.listen_addrs[0], sa.device_id);
    let (b, _) = start(&hb, &["--peer".to_string(), a_addr]).await;
    pair_by_address(&a, &b).await;

    let on = a
        .client
        .web_settings(&WebSettingsRequest {
            enabled: true,
            listen: Some("127.0.0.1:0".into()),
            allow_remote: false,
        })
        .await
        .unwrap();
    let link = a.client.web_link().await.unwrap();
    let c = &browser.client;
    browser.link(&link.url).await;
    browser
        .until(
            "the app",
            Duration::from_secs(20),
            "return !document.getElementById('app').hidden;",
        )
        .await;

    // A chat both devices have, open in the page.
    let chat = a.client.create_chat("latency").await.unwrap().id;
    chatsync_testkit::eventually("the chat on b", Duration::from_secs(20), || async {
        b.client.chat(&chat).await.is_ok()
    })
    .await;
    c.execute(
        &format!("return openChat({chat:?}).then(() => true);"),
        Vec::new(),
    )
    .await
    .unwrap();

    // Posts on b: when each reaches a's event stream (here) and the page's DOM (there).
    let arrivals: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let mut events = a.client.events(Some(&chat)).await.unwrap();
    let seen = arrivals.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(event)) = events.next().await {
            if let EventJson::MessageCreated { message } = event {
                seen.lock().unwrap().insert(message.text, now_ms());
            }
        }
    });
    let mut sent = Vec::with_capacity(posts);
    for i in 0..posts {
        let body = format!("latency {i}");
        let at = now_ms();
        b.client.post(&chat, &body, None).await.unwrap();
        sent.push((body, at));
        // One at a time, as a conversation goes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = sent.last().unwrap().0.clone();
    browser
        .until(
            "the last post in the page",
            Duration::from_secs(30),
            &format!(
                "return [...document.querySelectorAll('#messages .msg .text')]\
                 .some(e => e.textContent === {last:?});"
            ),
        )
        .await;
    let shown: serde_json::Value = c
        .execute(
            "return Object.fromEntries([...document.querySelectorAll('#messages .msg')]\
             .filter(e => e.dataset.shownAt)\
             .map(e => [e.querySelector('.text').textContent, Number(e.dataset.shownAt)]));",
            Vec::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.abort();
    let arrivals = arrivals.lock().unwrap().clone();
    let (mut to_event, mut to_dom, mut dom_after_event) = (Vec::new(), Vec::new(), Vec::new());
    for (body, at) in &sent {
        let (Some(event), Some(dom)) = (arrivals.get(body), shown[body].as_f64()) else {
            continue;
        };
        to_event.push(event - at);
        to_dom.push(dom - at);
        dom_after_event.push(dom - event);
    }
    for v in [&mut to_event, &mut to_dom, &mut dom_after_event] {
        v.sort_by(f64::total_cmp);
    }

    // A chat of `big_chat` messages, opened in the page.
    let big = a.client.create_chat("ten thousand").await.unwrap().id;
    for i in 0..big_chat {
        a.client.post(&big, &text(i), None).await.unwrap();
    }
    let mut opens = Vec::new();
    for _ in 0..5 {
        c.execute(
            &format!("return openChat({chat:?}).then(() => true);"),
            Vec::new(),
        )
        .await
        .unwrap();
        let ms = c
            .execute(
                &format!(
                    "const t0 = performance.now();\
                     return openChat({big:?}).then(() => performance.now() - t0);"
                ),
                Vec::new(),
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        opens.push(ms);
    }
    opens.sort_by(f64::total_cmp);
    let scroll_back = c
        .execute(
            "const t0 = performance.now(); return loadOlder().then(() => performance.now() - t0);",
            Vec::new(),
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap();

    println!(
        "web client at {}; {} posts timed ({} seen in both)\n",
        on.url.unwrap_or_default(),
        sent.len(),
        to_dom.len()
    );
    println!("| measure | p50 | p99 |");
    println!("|---|---|---|");
    for (label, v) in [
        ("post on b -> a's event stream", &to_event),
        ("post on b -> the page's DOM on a", &to_dom),
        (
            "event stream -> DOM (the web client's own cost)",
            &dom_after_event,
        ),
    ] {
        println!(
            "| {label} | {:.1} ms | {:.1} ms |",
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    println!(
        "| open a chat of {big_chat} messages (first page rendered) | {:.1} ms | max {:.1} ms |",
        percentile(&opens, 0.5),
        opens.last().unwrap()
    );
    println!("| scroll back one page in it | {scroll_back:.1} ms | |");
    browser.close().await;
}
