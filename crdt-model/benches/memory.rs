//! What a loaded chat costs in memory: 100 chats of 2,000 messages held at once, as the bare
//! Automerge document and as a `ChatDoc` (the document plus its display-order index), loaded
//! from a save and built by applying the second half as received changes (a catch-up). Each
//! case runs in a process of its own (this binary started again), so that memory freed by one
//! case is not reused by the next; the figure is the growth of resident memory. Ids are the
//! daemon's shape: 32 hex digits for messages, a peer id for devices, a session in the actor.
//! Results: docs/benchmarks.md. Run with `cargo bench -p chatsync-model --bench memory`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use chatsync_model::{ChatDoc, ChatId, Device, DeviceId, MessageId};

const CHATS: usize = 100;
const HALF: usize = 1_000;

const CASES: [(&str, &str); 4] = [
    ("automerge-load", "Automerge, loaded from a save"),
    ("chatdoc-load", "ChatDoc, loaded from a save"),
    (
        "automerge-apply",
        "Automerge, second half applied as changes",
    ),
    ("chatdoc-apply", "ChatDoc, second half applied as changes"),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--case") {
        println!("{}", run_case(&args[at + 1]));
        return;
    }
    println!(
        "## A loaded chat's memory: {CHATS} chats x {} messages\n",
        2 * HALF
    );
    println!("| case | resident memory | per message | / Automerge's |");
    println!("|---|---:|---:|---:|");
    let exe = std::env::current_exe().unwrap();
    let kib: Vec<u64> = CASES
        .iter()
        .map(|(case, _)| {
            let out = std::process::Command::new(&exe)
                .args(["--case", case])
                .output()
                .unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    for (i, (_, what)) in CASES.iter().enumerate() {
        let floor = kib[i - i % 2];
        println!(
            "| {what} | {:.1} MiB | {} bytes | {:.2} |",
            kib[i] as f64 / 1024.0,
            kib[i] * 1024 / (CHATS * 2 * HALF) as u64,
            kib[i] as f64 / floor as f64,
        );
    }
}

/// Builds the chats of one case and answers the growth of resident memory, in KiB.
fn run_case(case: &str) -> u64 {
    let device = |id: &str, session: u8| {
        Device::with_session(DeviceId::new(id).unwrap(), "laptop", &[session; 8]).unwrap()
    };
    let a = device("12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo", 1);
    let b = device("12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq", 2);
    let post = |chat: &mut ChatDoc, first: u64| {
        for i in first..first + HALF as u64 {
            let id =
                MessageId::new(format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)).unwrap();
            chat.post(
                &a,
                id,
                "a short message, like most",
                None,
                1_700_000_000_000 + i as i64,
            )
            .unwrap();
        }
    };
    let mut chat = ChatDoc::create(ChatId::new("c").unwrap(), "t", &a, 1_700_000_000_000).unwrap();
    post(&mut chat, 0);
    let half = chat.save();
    let before = chat.heads();
    post(&mut chat, HALF as u64);
    let whole = chat.save();
    let changes = chat.automerge_mut().get_changes(&before);
    drop(chat);
    let start = resident_kib();
    let mut docs = Vec::new();
    let mut chats = Vec::new();
    for _ in 0..CHATS {
        match case {
            "automerge-load" => docs.push(automerge::AutoCommit::load(&whole).unwrap()),
            "chatdoc-load" => chats.push(ChatDoc::load(&whole, &b).unwrap()),
            "automerge-apply" => {
                let mut doc = automerge::AutoCommit::load(&half).unwrap();
                doc.apply_changes(changes.clone()).unwrap();
                docs.push(doc);
            }
            "chatdoc-apply" => {
                let mut chat = ChatDoc::load(&half, &b).unwrap();
                chat.apply_changes(changes.clone()).unwrap();
                chats.push(chat);
            }
            other => panic!("no case {other}"),
        }
    }
    resident_kib().saturating_sub(start)
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
