//! What applying one post from another replica costs as a chat grows, in Automerge alone: the
//! shape chats have (every message a map under one `messages` map, three operations a post)
//! beside the same messages spread over 256 bucket maps by the first byte of their id, and a
//! local post for reference. The measure behind the decision on the document's shape recorded
//! in docs/benchmarks.md. Then the same through the model ([`ChatDoc::apply_changes`]: the
//! apply, the permission check and the index), for a chat of schema 2 (one map) and one of
//! schema 3 (buckets). Run with `cargo bench -p chatsync-model --bench apply`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use automerge::{AutoCommit, ObjType, ROOT, ReadDoc, transaction::Transactable};
use chatsync_model::{ChatDoc, ChatId, Device, DeviceId, MessageId, schema};

/// Posts timed at each size.
const TIMED: u32 = 200;

/// A message id as the daemon makes them: 128 random-looking bits in hex.
fn id(i: usize) -> String {
    format!(
        "{:032x}",
        (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    )
}

/// One post: a map for the message, its header and its text; in one of `buckets` maps (none:
/// directly in `messages`).
fn post(doc: &mut AutoCommit, buckets: usize, i: usize) {
    let (_, messages) = doc.get(ROOT, "messages").unwrap().unwrap();
    let key = id(i);
    let parent = if buckets > 0 {
        let bucket = (u8::from_str_radix(&key[..2], 16).unwrap() as usize % buckets).to_string();
        match doc.get(&messages, &bucket).unwrap() {
            Some((_, bucket)) => bucket,
            None => doc.put_object(&messages, &bucket, ObjType::Map).unwrap(),
        }
    } else {
        messages
    };
    let message = doc.put_object(&parent, key, ObjType::Map).unwrap();
    doc.put(&message, "h", "author|name|1700000000000|1700000000000|")
        .unwrap();
    doc.put(
        &message,
        "text",
        format!("message number {i}: the quick brown fox jumps"),
    )
    .unwrap();
    doc.commit();
}

/// Per post, at `n` messages: a local post, and applying that post on a replica.
fn measure(buckets: usize, n: usize) -> (Duration, Duration) {
    let mut writer = AutoCommit::new();
    writer.put_object(ROOT, "messages", ObjType::Map).unwrap();
    writer.commit();
    for i in 0..n {
        post(&mut writer, buckets, i);
    }
    let mut reader = writer.fork();
    let started = Instant::now();
    let mut changes = Vec::new();
    for i in n..n + TIMED as usize {
        post(&mut writer, buckets, i);
        changes.push(writer.get_last_local_change().unwrap().raw_bytes().to_vec());
    }
    let local = started.elapsed() / TIMED;
    let started = Instant::now();
    for change in &changes {
        reader.load_incremental(change).unwrap();
    }
    (local, started.elapsed() / TIMED)
}

/// A new chat as this version creates it (buckets), or as schema 2 did (one map).
fn new_chat(buckets: bool, device: &Device) -> ChatDoc {
    let id = ChatId::new("chat").unwrap();
    if buckets {
        return ChatDoc::create(id, "bench", device, 1).unwrap();
    }
    let mut doc = AutoCommit::new();
    doc.put(ROOT, schema::SCHEMA, 2).unwrap();
    doc.put(ROOT, schema::ID, id.as_str()).unwrap();
    doc.put(ROOT, schema::TITLE, "bench").unwrap();
    doc.put_object(ROOT, schema::MESSAGES, ObjType::Map)
        .unwrap();
    doc.put_object(ROOT, schema::READ, ObjType::Map).unwrap();
    doc.commit();
    ChatDoc::from_doc(doc, device).unwrap()
}

/// Per post, at `n` messages, through the model: applying another replica's post.
fn measure_chat(buckets: bool, n: usize) -> Duration {
    let writer_device = Device::new(DeviceId::new("writer").unwrap(), "w").unwrap();
    let reader_device = Device::new(DeviceId::new("reader").unwrap(), "r").unwrap();
    let mut writer = new_chat(buckets, &writer_device);
    let text = |i: usize| format!("message number {i}: the quick brown fox jumps");
    let post = |writer: &mut ChatDoc, i: usize| {
        let at = 1_700_000_000_000 + i as i64;
        writer
            .post(
                &writer_device,
                MessageId::new(id(i)).unwrap(),
                &text(i),
                None,
                at,
            )
            .unwrap();
    };
    for i in 0..n {
        post(&mut writer, i);
    }
    let mut reader = ChatDoc::load(&writer.save(), &reader_device).unwrap();
    let mut changes = Vec::new();
    for i in n..n + TIMED as usize {
        let before = writer.heads();
        post(&mut writer, i);
        changes.push(writer.automerge_mut().get_changes(&before)[0].clone());
    }
    let started = Instant::now();
    for change in changes {
        reader.apply_changes(vec![change]).unwrap();
    }
    started.elapsed() / TIMED
}

/// A chat of `n` posts: its saved size, the time to load it (the model's load: Automerge's and
/// the index), and Automerge's part of it.
fn load_cost(buckets: bool, n: usize) -> (usize, Duration, Duration) {
    let device = Device::new(DeviceId::new("writer").unwrap(), "w").unwrap();
    let mut chat = new_chat(buckets, &device);
    for i in 0..n {
        let at = 1_700_000_000_000 + i as i64;
        let text = format!("message number {i}: the quick brown fox jumps");
        chat.post(&device, MessageId::new(id(i)).unwrap(), &text, None, at)
            .unwrap();
    }
    let saved = chat.save();
    const LOADS: u32 = 200;
    let started = Instant::now();
    for _ in 0..LOADS {
        std::hint::black_box(ChatDoc::load(&saved, &device).unwrap());
    }
    let model = started.elapsed() / LOADS;
    let started = Instant::now();
    for _ in 0..LOADS {
        std::hint::black_box(AutoCommit::load(&saved).unwrap());
    }
    (saved.len(), model, started.elapsed() / LOADS)
}

fn main() {
    println!("## Applying another replica's post as the chat grows (Automerge alone)\n");
    println!(
        "| messages in the chat | local post | applied, one `messages` map | 32 buckets | 64 buckets | 256 buckets |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    for n in [1_000, 5_000, 10_000, 20_000] {
        let (local, flat) = measure(0, n);
        let applied: Vec<String> = [32, 64, 256]
            .into_iter()
            .map(|b| us(measure(b, n).1))
            .collect();
        println!(
            "| {n} | {} | {} | {} |",
            us(local),
            us(flat),
            applied.join(" | ")
        );
    }
    println!("\n## What buckets cost a chat: 100 posts, saved and loaded\n");
    println!("| chat | saved bytes | load, per chat | of which Automerge |");
    println!("|---|---:|---:|---:|");
    for buckets in [false, true] {
        let (bytes, load, automerge) = load_cost(buckets, 100);
        let name = if buckets {
            "schema 3: 64 buckets"
        } else {
            "schema 2: one map"
        };
        println!("| {name} | {bytes} | {} | {} |", us(load), us(automerge));
    }
    println!("\n## The same through the model (apply, permission check, index)\n");
    println!(
        "| messages in the chat | schema 2: one map | schema 3: 64 buckets | one map / buckets |"
    );
    println!("|---:|---:|---:|---:|");
    for n in [1_000, 10_000, 20_000] {
        let flat = measure_chat(false, n);
        let bucketed = measure_chat(true, n);
        println!(
            "| {n} | {:.0} µs | {:.0} µs | {:.1} |",
            flat.as_secs_f64() * 1e6,
            bucketed.as_secs_f64() * 1e6,
            flat.as_secs_f64() / bucketed.as_secs_f64()
        );
    }
}
