//! Where a catch-up's time goes in the model: one chat of 10,000 messages arriving whole in a
//! sync message, received by a replica that has none of them, through `ChatDoc` (every check)
//! and, in the same run, straight into Automerge (the floor). Results and how to read them:
//! docs/benchmarks.md. Run with `cargo bench -p chatsync-model --bench catch_up`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use automerge::sync::{Message, State, SyncDoc};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId,
    authorship::{self, Attestation, Provenance, Standing},
    wire_check::{WireLimits, check_sync_message},
};

const MESSAGES: usize = 10_000;
const RUNS: usize = 5;

fn main() {
    let writer = Device::new(DeviceId::new("dev-a").unwrap(), "a").unwrap();
    let reader = Device::new(DeviceId::new("dev-b").unwrap(), "b").unwrap();
    let mut a = ChatDoc::create(ChatId::new("c").unwrap(), "t", &writer, 1).unwrap();
    let empty = a.save();
    for i in 0..MESSAGES {
        let text = format!("message number {i}, with a few words like a real one");
        a.post(
            &writer,
            MessageId::new(format!("m{i:05}")).unwrap(),
            &text,
            None,
            1_000 + i as i64,
        )
        .unwrap();
    }
    // The replica's first message says what it has; the answer carries the whole chat.
    let mut b = ChatDoc::load(&empty, &reader).unwrap();
    let (mut sa, mut sb) = (State::new(), State::new());
    let hello = b.generate_sync_message(&mut sb).unwrap();
    a.automerge_mut()
        .sync()
        .receive_sync_message(&mut sa, Message::decode(&hello).unwrap())
        .unwrap();
    let message = a.generate_sync_message(&mut sa).unwrap();
    let actor = a.actor().clone();
    let (_, newest) = a.newest_change_of(&actor).unwrap();
    let attestations = [Attestation {
        hash: newest,
        signature: vec![0; authorship::SIGNATURE_BYTES],
    }];
    let chat = a.id().clone();
    let verify = |_: &DeviceId, _: &[u8], _: &[u8]| true;
    let standing = |_: &DeviceId| Standing::Trusted;
    let proof = Provenance {
        chat: &chat,
        attestations: &attestations,
        verify: &verify,
        standing: &standing,
    };

    let mut rows: Vec<(&str, Vec<Duration>)> = vec![
        ("Automerge's own receive (floor)", Vec::new()),
        ("wire check", Vec::new()),
        ("list the changes (authorship check input)", Vec::new()),
        (
            "read every change back (permission check input)",
            Vec::new(),
        ),
        (
            "ChatDoc::receive_sync_message, every check and the index",
            Vec::new(),
        ),
    ];
    for _ in 0..RUNS {
        let mut raw = automerge::AutoCommit::load(&empty).unwrap();
        let started = Instant::now();
        raw.sync()
            .receive_sync_message(&mut State::new(), Message::decode(&message).unwrap())
            .unwrap();
        rows[0].1.push(started.elapsed());

        let started = Instant::now();
        check_sync_message(&message, &WireLimits::default()).unwrap();
        rows[1].1.push(started.elapsed());

        let started = Instant::now();
        let listed =
            authorship::changes_of_sync_message(&Message::decode(&message).unwrap()).unwrap();
        rows[2].1.push(started.elapsed());
        assert_eq!(listed.len(), MESSAGES + 1);

        let started = Instant::now();
        let changes = raw.get_changes(&[]);
        rows[3].1.push(started.elapsed());
        assert_eq!(changes.len(), MESSAGES + 1);

        let mut replica = ChatDoc::load(&empty, &reader).unwrap();
        let started = Instant::now();
        replica
            .receive_sync_message(&mut State::new(), &message, &proof)
            .unwrap();
        rows[4].1.push(started.elapsed());
        assert_eq!(replica.len(), MESSAGES);
    }

    println!("## chatsync model catch-up benchmark\n");
    println!(
        "One chat of {MESSAGES} messages arriving whole ({} bytes), median of {RUNS} runs.\n",
        message.len()
    );
    println!("| step | median | of the floor |");
    println!("|---|---:|---:|");
    let floor = median(&rows[0].1);
    for (what, times) in &rows {
        let m = median(times);
        println!(
            "| {what} | {:.1} ms | {:.2} |",
            m.as_secs_f64() * 1000.0,
            m.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}
