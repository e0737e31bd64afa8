//! Bytes from a paired device, mutated: every sealed sync message, sealed chat document and
//! roster a device can be sent is taken from a real exchange between two engines, then
//! damaged in seeded random ways (bits flipped, bytes replaced, cut short, spliced, stretched)
//! and fed to the receiving engine. Whatever Automerge makes of them, the receiver must answer
//! with a result (never panic or hang), store nothing it cannot prove, and stay whole: its chat
//! and roster afterwards are exactly what the undamaged exchanges made them.
//!
//! And a device that equivocates (signs two different changes with one sequence number, one
//! for each of two devices) must not make those two accuse each other, nor keep them apart:
//! they exchange the evidence, drop what it bans, and end with the same chat.
//!
//! A fixed budget runs in CI; `CHATSYNC_MUTATIONS=<n>` runs more, `CHATSYNC_MUTATION_SEED=<s>`
//! another seed.

use std::{sync::Arc, time::Duration};

use crate::craft;
use chatsync_daemon::{
    engine::{Engine, EngineConfig, SyncRole},
    identity::Identity,
    store::Store,
};
use chatsync_model::{ChatId, Device, DeviceId};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tempfile::TempDir;

/// Mutations of each kind of input in one run.
const DEFAULT_MUTATIONS: usize = 2_000;

struct Node {
    engine: Arc<Engine>,
    id: DeviceId,
    _home: TempDir,
}

fn node(name: &str) -> Node {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(&home.path().join("store"), 4 << 20).unwrap();
    let identity = Identity::load_or_create(&home.path().join("identity.key")).unwrap();
    let id = identity.device_id.clone();
    let device = Device::with_session(id.clone(), name, b"mutations").unwrap();
    let engine = Engine::start(
        store,
        device,
        identity.keypair,
        EngineConfig {
            memory_budget_bytes: 64 << 20,
            idle_unload: Duration::from_secs(600),
            name_configured: true,
            reserve_bytes: 0,
        },
    )
    .unwrap();
    Node {
        engine,
        id,
        _home: home,
    }
}

/// One damaged copy of `bytes`.
fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let edits = rng.random_range(1..=4);
    for _ in 0..edits {
        if out.is_empty() {
            out.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..6) {
            0 => out[at] ^= 1 << rng.random_range(0..8),
            1 => out[at] = rng.random(),
            2 => out.truncate(at),
            3 => {
                // A stretch of the input again, somewhere else.
                let len = rng.random_range(1..=64.min(out.len() - at));
                let piece = out[at..at + len].to_vec();
                let to = rng.random_range(0..=out.len());
                out.splice(to..to, piece);
            }
            4 => {
                let len = rng.random_range(1..=32);
                let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                out.splice(at..at, noise);
            }
            _ => {
                // A length or count made huge.
                let end = (at + 4).min(out.len());
                out[at..end].fill(0xff);
            }
        }
    }
    out
}

async fn texts(engine: &Engine, chat: &ChatId) -> Vec<String> {
    engine
        .messages(chat, None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_input_from_a_paired_device_never_breaks_the_receiver() {
    let count: usize = std::env::var("CHATSYNC_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_MUTATIONS);
    let seed: u64 = std::env::var("CHATSYNC_MUTATION_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7);
    eprintln!("{count} mutations of each input, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (a, b) = (node("a"), node("b"));
    a.engine.add_device(b.id.as_str(), Some("b")).await.unwrap();
    b.engine.add_device(a.id.as_str(), Some("a")).await.unwrap();

    // The undamaged exchanges: B makes a chat and A imports it; B posts more and A takes the
    // sync message that carries it.
    let chat = b.engine.create_chat("family", None).await.unwrap().id;
    for i in 0..5 {
        b.engine
            .post(&chat, &format!("first {i}"), None, None)
            .await
            .unwrap();
    }
    let document = b.engine.export_chat(&chat).await.unwrap();
    for i in 0..5 {
        b.engine
            .post(&chat, &format!("then {i}"), None, None)
            .await
            .unwrap();
    }
    let roster = b.engine.roster_bytes().await;
    let message = b.engine.sync_message(&a.id, &chat).await.unwrap().message;
    let message = message.expect("B has changes for A");

    // A fetches the chat whole from damaged documents first (a chat it lacks), then from the
    // real one.
    let mut imported = 0;
    for _ in 0..count {
        let damaged = mutate(&mut rng, &document);
        if a.engine.import_chat(&chat, &damaged).await.is_ok() {
            imported += 1;
            break;
        }
    }
    if imported == 0 {
        a.engine.import_chat(&chat, &document).await.unwrap();
    }
    let before = texts(&a.engine, &chat).await;
    assert!(
        before.iter().all(|t| t.starts_with("first ")),
        "an import brought what B never sent: {before:?}"
    );

    // Damaged sync messages: each in a fresh conversation, as after a reconnect.
    let mut taken = 0;
    for _ in 0..count {
        a.engine.forget_sync(&b.id, &chat);
        let damaged = mutate(&mut rng, &message);
        if a.engine
            .receive_sync(&b.id, &chat, SyncRole::Answering, &damaged)
            .await
            .is_ok()
        {
            taken += 1;
        }
    }
    // Damaged rosters.
    for _ in 0..count {
        let damaged = mutate(&mut rng, &roster);
        let _ = a.engine.merge_roster(&damaged).await;
    }
    eprintln!("{imported} damaged document(s) imported, {taken} damaged message(s) taken");

    // A is whole: what it shows is a prefix-free subset of what B wrote, it still takes the
    // real message, and then it shows exactly B's chat.
    let shown = texts(&a.engine, &chat).await;
    let written = texts(&b.engine, &chat).await;
    assert!(
        shown.iter().all(|t| written.contains(t)),
        "A shows what B never wrote: {shown:?}"
    );
    a.engine.forget_sync(&b.id, &chat);
    let mut reply = a
        .engine
        .receive_sync(&b.id, &chat, SyncRole::Answering, &message)
        .await
        .unwrap()
        .message;
    // Finish the conversation, as the devices would.
    for _ in 0..10 {
        let Some(to_b) = reply else { break };
        let back = b
            .engine
            .receive_sync(&a.id, &chat, SyncRole::Running, &to_b)
            .await
            .unwrap();
        let Some(to_a) = back.message else { break };
        reply = a
            .engine
            .receive_sync(&b.id, &chat, SyncRole::Answering, &to_a)
            .await
            .unwrap()
            .message;
    }
    assert_eq!(texts(&a.engine, &chat).await, written);
    let devices: Vec<String> = a
        .engine
        .devices()
        .await
        .into_iter()
        .map(|d| d.id.to_string())
        .collect();
    assert_eq!(devices.len(), 2, "the roster changed: {devices:?}");
    assert!(a.engine.stats().store_healthy);
}

/// One conversation about `chat`, `from` running it, as the network task runs it: a refusal
/// that carries evidence of an equivocation is shown to the other side, which takes it. Returns
/// the refusals met.
async fn converse(
    from: &Node,
    to: &Node,
    chat: &ChatId,
) -> Vec<chatsync_daemon::engine::EngineError> {
    use chatsync_daemon::engine::EngineError;
    let mut refused = Vec::new();
    let mut to_b = from
        .engine
        .sync_message(&to.id, chat)
        .await
        .unwrap()
        .message;
    for _ in 0..20 {
        let Some(m) = to_b.take() else { break };
        let back = match to
            .engine
            .receive_sync(&from.id, chat, SyncRole::Answering, &m)
            .await
        {
            Ok(step) => step.message,
            Err(e) => {
                if let EngineError::Equivocation(evidence) = &e {
                    from.engine
                        .take_evidence(&to.id, chat, evidence)
                        .await
                        .unwrap();
                }
                from.engine.forget_sync(&to.id, chat);
                refused.push(e);
                break;
            }
        };
        let Some(back) = back else { break };
        match from
            .engine
            .receive_sync(&to.id, chat, SyncRole::Running, &back)
            .await
        {
            Ok(next) => to_b = next.message,
            Err(e) => {
                if let EngineError::Equivocation(evidence) = &e {
                    to.engine
                        .take_evidence(&from.id, chat, evidence)
                        .await
                        .unwrap();
                }
                to.engine.forget_sync(&from.id, chat);
                refused.push(e);
            }
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_equivocates_cannot_split_honest_devices() {
    let (a, b) = (node("a"), node("b"));
    let mut events = [a.engine.subscribe(), b.engine.subscribe()];
    let x_home = tempfile::tempdir().unwrap();
    let x = Identity::load_or_create(&x_home.path().join("identity.key")).unwrap();
    for (on, others) in [(&a, [&b.id, &x.device_id]), (&b, [&a.id, &x.device_id])] {
        for id in others {
            on.engine.add_device(id.as_str(), None).await.unwrap();
        }
    }
    let chat = a.engine.create_chat("family", None).await.unwrap().id;
    a.engine.post(&chat, "from a", None, None).await.unwrap();
    let sealed = a.engine.export_chat(&chat).await.unwrap();
    b.engine.import_chat(&chat, &sealed).await.unwrap();
    let (_, known) = chatsync_model::authorship::open(&sealed).unwrap();

    // X signs two different changes under one actor and sequence number, one for each device.
    let me = Device::with_session(x.device_id.clone(), "x", b"twice").unwrap();
    let mut messages = Vec::new();
    for (n, text) in ["one", "two"].into_iter().enumerate() {
        let mut doc = chatsync_model::ChatDoc::load(known, &me).unwrap();
        let id = chatsync_model::MessageId::new(format!("x{n}")).unwrap();
        doc.post(&me, id, text, None, 10).unwrap();
        messages.push(craft::carrying(&chat, known, &mut doc, &me, &x.keypair));
    }
    a.engine
        .receive_sync(&x.device_id, &chat, SyncRole::Answering, &messages[0])
        .await
        .unwrap();
    b.engine
        .receive_sync(&x.device_id, &chat, SyncRole::Answering, &messages[1])
        .await
        .unwrap();
    // Each honest device builds on what it took: a post, a reply to X's post, a reaction, an
    // edit, a rename.
    let a_post = a
        .engine
        .post(&chat, "a after one", None, None)
        .await
        .unwrap();
    a.engine.react(&chat, "x0", Some("👀")).await.unwrap();
    b.engine
        .post(&chat, "b after two", Some("x1"), None)
        .await
        .unwrap();
    b.engine.rename_chat(&chat, "renamed by b").await.unwrap();
    a.engine
        .edit(&chat, a_post.id.as_str(), "a after one, edited")
        .await
        .unwrap();

    // A and B sync: what A passes on from X clashes with what B took from X. Neither is to
    // blame; the evidence goes across, and both drop X's clashing changes and what was built
    // on them, then write their own again.
    let mut refused = Vec::new();
    for round in 0..6 {
        refused.extend(converse(&a, &b, &chat).await);
        refused.extend(converse(&b, &a, &chat).await);
        if round > 0 && texts(&a.engine, &chat).await == texts(&b.engine, &chat).await {
            break;
        }
    }
    assert!(!refused.is_empty(), "the clash went unnoticed");
    for e in &refused {
        assert!(
            !e.is_misbehaviour(),
            "an honest device was blamed for another's equivocation: {e}"
        );
    }
    let expected = vec![
        "from a".to_string(),
        "a after one, edited".to_string(),
        "b after two".to_string(),
    ];
    for node in [&a, &b] {
        assert_eq!(texts(&node.engine, &chat).await, expected);
        let info = node.engine.resolve_chat(chat.as_str()).unwrap();
        assert_eq!(info.record.title, "renamed by b");
        assert!(node.engine.stats().store_healthy);
    }
    // Both report the device that signed both, once, and nobody else.
    for (node, events) in [&a, &b].into_iter().zip(&mut events) {
        let found = node.engine.equivocation(&x.device_id).expect("X reported");
        assert_eq!(found.chat, chat);
        for honest in [&a.id, &b.id] {
            assert_eq!(node.engine.equivocation(honest), None);
        }
        let mut equivocators = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let chatsync_daemon::engine::Event::Equivocation { device, .. } = event {
                equivocators.push(device);
            }
        }
        assert_eq!(
            equivocators,
            vec![x.device_id.clone()],
            "one event for each report"
        );
    }
    // X gets nothing more in under that actor: a later post of its, built on "one", is refused
    // with the evidence, without blame for the sender.
    let mut doc = chatsync_model::ChatDoc::load(known, &me).unwrap();
    doc.post(
        &me,
        chatsync_model::MessageId::new("x0").unwrap(),
        "one",
        None,
        10,
    )
    .unwrap();
    doc.post(
        &me,
        chatsync_model::MessageId::new("x2").unwrap(),
        "late",
        None,
        20,
    )
    .unwrap();
    let late = craft::carrying(&chat, known, &mut doc, &me, &x.keypair);
    a.engine.forget_sync(&x.device_id, &chat);
    let refused = a
        .engine
        .receive_sync(&x.device_id, &chat, SyncRole::Answering, &late)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            chatsync_daemon::engine::EngineError::Equivocation(_)
        ),
        "{refused}"
    );
    assert_eq!(texts(&a.engine, &chat).await, expected);
}
