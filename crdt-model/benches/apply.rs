//! What applying one post from another replica costs as a chat grows, in Automerge alone: the
//! shape chats have (every message a map under one `messages` map, three operations a post)
//! beside the same messages spread over 256 bucket maps by the first byte of their id, and a
//! local post for reference. The measure behind the decision on the document's shape recorded
//! in docs/benchmarks.md. Run with `cargo bench -p chatsync-model --bench apply`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use automerge::{AutoCommit, ObjType, ROOT, ReadDoc, transaction::Transactable};

/// Posts timed at each size.
const TIMED: u32 = 200;

/// A message id as the daemon makes them: 128 random-looking bits in hex.
fn id(i: usize) -> String {
    format!(
        "{:032x}",
        (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    )
}

/// One post: a map for the message, its header and its text.
fn post(doc: &mut AutoCommit, buckets: bool, i: usize) {
    let (_, messages) = doc.get(ROOT, "messages").unwrap().unwrap();
    let key = id(i);
    let parent = if buckets {
        match doc.get(&messages, &key[..2]).unwrap() {
            Some((_, bucket)) => bucket,
            None => doc.put_object(&messages, &key[..2], ObjType::Map).unwrap(),
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
fn measure(buckets: bool, n: usize) -> (Duration, Duration) {
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

fn main() {
    println!("## Applying another replica's post as the chat grows (Automerge alone)\n");
    println!(
        "| messages in the chat | local post | applied, one `messages` map | applied, 256 buckets | one map / buckets |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1_000, 5_000, 10_000, 20_000] {
        let (local, flat) = measure(false, n);
        let (_, bucketed) = measure(true, n);
        println!(
            "| {n} | {:.0} µs | {:.0} µs | {:.0} µs | {:.1} |",
            local.as_secs_f64() * 1e6,
            flat.as_secs_f64() * 1e6,
            bucketed.as_secs_f64() * 1e6,
            flat.as_secs_f64() / bucketed.as_secs_f64()
        );
    }
}
