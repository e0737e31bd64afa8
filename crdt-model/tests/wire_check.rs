//! The checks on peer bytes in `wire_check`: everything real sync sessions and saves produce
//! passes; crafted attacks are refused quickly and without allocating; mutated messages that
//! pass never hurt the receiver.
//!
//! Tests that hand peer bytes to Automerge run in a child process under an address-space limit
//! (`ulimit -v`), so that an allocation of 256 MiB or more aborts the child and fails the test
//! instead of passing unnoticed. The workspace forbids `unsafe`, which rules out a counting
//! global allocator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::OnceLock,
    time::{Duration, Instant},
};

use automerge::sync::{Message as SyncMessage, State, SyncDoc};
use chatsync_model::{
    ChatDoc, ChatId, Device, DeviceId, MessageId,
    wire_check::{
        ChunksShape, WireError, WireLimits, check_chunks, check_sync_message, chunks_shape,
    },
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers: chats, sessions, encoders.

fn dev(id: &str) -> Device {
    Device::new(DeviceId::new(id).unwrap(), id).unwrap()
}

fn new_chat(device: &Device) -> ChatDoc {
    ChatDoc::create(ChatId::new("chat").unwrap(), "title", device, 1_000).unwrap()
}

/// Posts `n` messages, with some replies, edits, reactions, deletions and read markers so
/// that every kind of column shows up.
fn activity(doc: &mut ChatDoc, device: &Device, prefix: &str, n: usize, t0: i64) {
    let mut last: Option<MessageId> = None;
    for i in 0..n {
        let id = MessageId::new(format!("{prefix}{i}")).unwrap();
        let text = if i % 7 == 3 {
            "long ".repeat(200)
        } else {
            format!("message {i} from {prefix}")
        };
        doc.post(device, id.clone(), &text, last.as_ref(), t0 + i as i64)
            .unwrap();
        if i % 3 == 1 {
            doc.react(device, &id, Some("👍"), t0 + i as i64).unwrap();
        }
        if i % 5 == 2 {
            doc.edit(device, &id, "edited", t0 + i as i64).unwrap();
        }
        if i % 11 == 4 {
            doc.delete(device, &id, t0 + i as i64).unwrap();
        }
        if i % 4 == 0 {
            doc.mark_read(device, &id, t0 + i as i64).unwrap();
        }
        last = Some(id);
    }
}

/// Runs the protocol until both sides are quiet, returning every message sent.
fn session(a: &mut ChatDoc, sa: &mut State, b: &mut ChatDoc, sb: &mut State) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for _ in 0..40 {
        let to_b = a.generate_sync_message(sa);
        let to_a = b.generate_sync_message(sb);
        if to_b.is_none() && to_a.is_none() {
            return sent;
        }
        if let Some(m) = to_b {
            support::receive(b, sb, &m).unwrap();
            sent.push(m);
        }
        if let Some(m) = to_a {
            support::receive(a, sa, &m).unwrap();
            sent.push(m);
        }
    }
    panic!("sync did not settle");
}

fn uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(mut v: i64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// A chunk with a correct header and checksum around `body`.
fn chunk(chunk_type: u8, body: &[u8]) -> Vec<u8> {
    let mut len = Vec::new();
    uleb(body.len() as u64, &mut len);
    let mut hasher = Sha256::new();
    hasher.update([chunk_type]);
    hasher.update(&len);
    hasher.update(body);
    let hash = hasher.finalize();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&hash[..4]);
    out.push(chunk_type);
    out.extend(len);
    out.extend_from_slice(body);
    out
}

/// Splits a chunk stream into (type, body) pairs. Only for bytes known to be valid.
fn split_chunks(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let chunk_type = bytes[8];
        let (mut len, mut shift, mut i) = (0u64, 0, 9);
        loop {
            let b = bytes[i];
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = i + len as usize;
        out.push((chunk_type, bytes[i..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

/// A v1 sync message (no flags section) with the given parts.
fn sync_message(heads: u64, blooms: &[&[u8]], changes: &[&[u8]]) -> Vec<u8> {
    let mut m = vec![0x42];
    uleb(heads, &mut m);
    m.extend(std::iter::repeat_n(7u8, heads as usize * 32));
    uleb(0, &mut m); // need
    uleb(blooms.len() as u64, &mut m);
    for bloom in blooms {
        uleb(0, &mut m); // last sync
        uleb(bloom.len() as u64, &mut m);
        m.extend_from_slice(bloom);
    }
    uleb(changes.len() as u64, &mut m);
    for change in changes {
        uleb(change.len() as u64, &mut m);
        m.extend_from_slice(change);
    }
    m
}

fn bloom(entries: u64, bits_per_entry: u64, probes: u64, bit_bytes: usize) -> Vec<u8> {
    let mut b = Vec::new();
    uleb(entries, &mut b);
    uleb(bits_per_entry, &mut b);
    uleb(probes, &mut b);
    b.extend(std::iter::repeat_n(0xa5u8, bit_bytes));
    b
}

/// A raw deflate stream (one fixed-Huffman block) that inflates to `1 + 258 * pairs` zero
/// bytes: a literal zero, then "copy 258 bytes from distance 1" `pairs` times.
fn deflate_zeros(pairs: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn value(&mut self, v: u32, len: u32) {
            self.acc |= v << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let reversed = code.reverse_bits() >> (32 - len);
            self.value(reversed, len);
        }
    }
    let mut bits = Bits {
        out: Vec::with_capacity(pairs * 13 / 8 + 16),
        acc: 0,
        n: 0,
    };
    bits.value(1, 1); // final block
    bits.value(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..pairs {
        bits.code(0xc5, 8); // length 258
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    bits.value(0, 7); // flush
    bits.out
}

/// Runs `f`, returning how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// A memory figure of this process from /proc (Linux), in MiB; 0 elsewhere.
fn status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

const GUARD_ENV: &str = "WIRE_CHECK_GUARDED_TEST";
/// Address space for a guarded child, in KiB. The test binary starts with about 80 MiB of it
/// and these tests peak below 150 MiB; a single allocation of 256 MiB does not fit.
const GUARD_KIB: u64 = 320 * 1024;

/// Runs `body` in a child process (this test binary, filtered to `name`) whose address space
/// is limited; in that child, runs `body` itself.
fn guarded(name: &str, body: impl FnOnce()) {
    if std::env::var(GUARD_ENV).as_deref() == Ok(name) {
        eprintln!(
            "{name}: address space at start {} MiB",
            status_mib("VmSize:")
        );
        // The guard is in force.
        assert!(
            Vec::<u8>::new().try_reserve_exact(256 << 20).is_err(),
            "the address-space limit is not in force"
        );
        body();
        eprintln!(
            "{name}: peak RSS {} MiB, peak address space {} MiB",
            status_mib("VmHWM:"),
            status_mib("VmPeak:")
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {GUARD_KIB} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args([
            "--exact",
            name,
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(GUARD_ENV, name)
        .env("MALLOC_ARENA_MAX", "2")
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{name}: cannot start a guarded child ({e}); running unguarded");
            body();
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "guarded child for {name} failed ({:?}):\n{stdout}\n{stderr}",
        output.status
    );
}

// ---------------------------------------------------------------------------------------------
// Everything real passes.

struct Corpus {
    /// Every message of several real sessions.
    messages: Vec<Vec<u8>>,
    /// A save of the receiver's side before the sessions, to rebuild a receiver from.
    receiver_base: Vec<u8>,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let (da, db) = (dev("dev-a"), dev("dev-b"));
        let mut a = new_chat(&da);
        let genesis = a.save();
        let mut b = ChatDoc::load(&genesis, &db).unwrap();
        let receiver_base = b.save();
        let mut messages = Vec::new();
        // Fresh states, both sides with news.
        activity(&mut a, &da, "a", 6, 2_000);
        activity(&mut b, &db, "b", 4, 2_000);
        let (mut sa, mut sb) = (State::new(), State::new());
        messages.extend(session(&mut a, &mut sa, &mut b, &mut sb));
        // Kept states, a little news each.
        activity(&mut a, &da, "a2-", 3, 3_000);
        activity(&mut b, &db, "b2-", 2, 3_000);
        messages.extend(session(&mut a, &mut sa, &mut b, &mut sb));
        // A peer that has only the genesis: automerge sends the whole document.
        let mut c = ChatDoc::load(&genesis, &dev("dev-c")).unwrap();
        let mut sc = State::new();
        let mut sa2 = State::new();
        messages.extend(session(&mut a, &mut sa2, &mut c, &mut sc));
        Corpus {
            messages,
            receiver_base,
        }
    })
}

#[test]
fn messages_of_real_sessions_pass() {
    let limits = WireLimits::default();
    let (da, db) = (dev("dev-a"), dev("dev-b"));
    let mut a = new_chat(&da);
    let genesis = a.save();
    let mut b = ChatDoc::load(&genesis, &db).unwrap();
    let mut all = Vec::new();

    // Fresh states: small news on both sides.
    activity(&mut a, &da, "a", 5, 2_000);
    activity(&mut b, &db, "b", 5, 2_000);
    let (mut sa, mut sb) = (State::new(), State::new());
    all.extend(session(&mut a, &mut sa, &mut b, &mut sb));
    // Kept states: a little more news, then one new post each.
    activity(&mut a, &da, "a2-", 3, 3_000);
    all.extend(session(&mut a, &mut sa, &mut b, &mut sb));
    activity(&mut b, &db, "b2-", 1, 4_000);
    all.extend(session(&mut a, &mut sa, &mut b, &mut sb));
    // Kept states after a long separation: most changes missing on one side.
    activity(&mut a, &da, "a3-", 120, 5_000);
    all.extend(session(&mut a, &mut sa, &mut b, &mut sb));
    // Fresh states, a peer that has only the genesis: automerge ships the whole document.
    let dc = dev("dev-c");
    let mut c = ChatDoc::load(&genesis, &dc).unwrap();
    all.extend(session(
        &mut a,
        &mut State::new(),
        &mut c,
        &mut State::new(),
    ));
    // Fresh states, a peer that misses most of the chat but has changes of its own.
    let mut d = ChatDoc::load(&b.save(), &dev("dev-d")).unwrap();
    activity(&mut a, &da, "a4-", 200, 6_000);
    activity(&mut d, &dev("dev-d"), "d", 2, 6_000);
    all.extend(session(
        &mut a,
        &mut State::new(),
        &mut d,
        &mut State::new(),
    ));

    let mut documents = 0;
    let mut v2 = 0;
    for m in &all {
        let shape = check_sync_message(m, &limits)
            .unwrap_or_else(|e| panic!("a real message was refused: {e}"));
        let decoded = SyncMessage::decode(m).unwrap();
        assert_eq!(shape.heads, decoded.heads.len());
        assert_eq!(shape.need, decoded.need.len());
        assert_eq!(shape.have, decoded.have.len());
        assert_eq!(shape.change_entries, decoded.changes.len());
        documents += shape.chunks.documents;
        v2 += u64::from(shape.version == 2);
        // Changes sent one by one: the op count is exact.
        if shape.chunks.documents == 0 {
            let ops: usize = decoded
                .changes
                .iter()
                .flat_map(split_chunks)
                .map(|(t, body)| {
                    automerge::Change::from_bytes(chunk(t, &body))
                        .unwrap()
                        .len()
                })
                .sum();
            assert_eq!(shape.chunks.ops, ops as u64);
        }
    }
    assert!(documents >= 2, "no whole-document catch-up was exercised");
    assert!(v2 > 0, "no v2 message was exercised");
    eprintln!(
        "{} real messages passed, {documents} carrying whole documents",
        all.len()
    );
}

#[test]
fn real_saves_and_change_chunks_pass() {
    let limits = WireLimits::default();
    let da = dev("dev-a");
    let mut a = new_chat(&da);
    let genesis = a.save();
    activity(&mut a, &da, "a", 60, 2_000);
    let local = a.take_local_changes();
    let full = a.save();
    activity(&mut a, &da, "b", 9, 3_000);
    let incremental = a.save_incremental();
    let snapshot = a.snapshot().save();

    for (what, bytes) in [
        ("genesis", genesis.clone()),
        ("local changes", local.clone()),
        ("full save", full.clone()),
        ("incremental save", incremental.clone()),
        ("snapshot", snapshot.clone()),
        (
            "save then incremental",
            [full.clone(), incremental.clone()].concat(),
        ),
        (
            "genesis then local changes",
            [genesis.clone(), local.clone()].concat(),
        ),
    ] {
        check_chunks(&bytes, &limits).unwrap_or_else(|e| panic!("{what} was refused: {e}"));
        // Whole chats also load the checked way.
        if !what.ends_with("changes") && !what.starts_with("incremental") {
            let chat = a.id().clone();
            let attestations = support::attest_all(&mut ChatDoc::load(&bytes, &da).unwrap());
            ChatDoc::load_untrusted(&bytes, &da, &support::proof(&chat, &attestations))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }

    // Counts match automerge's own: changes and ops of a whole document...
    let doc = a.automerge_mut();
    let changes = doc.get_changes(&[]);
    // A document stores deletions as successors of what they delete, not as ops.
    let ops: usize = changes
        .iter()
        .flat_map(|c| c.decode().operations)
        .filter(|op| !matches!(op.action, automerge::legacy::OpType::Delete))
        .count();
    let shape = chunks_shape(&snapshot, &limits).unwrap();
    assert_eq!(
        shape,
        ChunksShape {
            documents: 1,
            changes: changes.len() as u64,
            ops: ops as u64,
            decoded_bytes: shape.decoded_bytes,
            ..ChunksShape::default()
        }
    );
    assert!(shape.decoded_bytes >= snapshot.len() as u64);
    // ... and of every change, plain and compressed (`Change::bytes`, deflated above 256 bytes).
    let mut compressed = 0;
    for mut change in doc.get_changes(&[]) {
        let plain = chunks_shape(change.raw_bytes(), &limits).unwrap();
        assert_eq!((plain.changes, plain.ops), (1, change.len() as u64));
        let stored = change.bytes().into_owned();
        let shape = chunks_shape(&stored, &limits).unwrap();
        assert_eq!((shape.changes, shape.ops), (1, change.len() as u64));
        compressed += shape.compressed_changes;
    }
    assert!(compressed > 0, "no compressed change was exercised");
}

// ---------------------------------------------------------------------------------------------
// Crafted attacks.

/// The attack automerge cannot survive: a Bloom filter with zero bits per entry passes
/// automerge's decoder and then panics the next `generate_sync_message`. The check refuses it.
#[test]
fn zero_bits_per_entry_would_panic_automerge_and_is_refused() {
    let da = dev("dev-a");
    let mut a = new_chat(&da);
    activity(&mut a, &da, "a", 3, 2_000);
    let evil = sync_message(0, &[&bloom(1, 0, 7, 0)], &[]);

    // Straight into automerge: decoding and receiving succeed, generating panics.
    let mut state = State::new();
    let decoded = SyncMessage::decode(&evil).expect("automerge decodes it");
    a.automerge_mut()
        .sync()
        .receive_sync_message(&mut state, decoded)
        .expect("automerge accepts it");
    let generated = catch_unwind(AssertUnwindSafe(|| a.generate_sync_message(&mut state)));
    assert!(
        generated.is_err(),
        "expected automerge to panic on a Bloom filter without bits"
    );

    // Through the model: refused, and the replica keeps working.
    let mut b = new_chat(&da);
    let mut state = State::new();
    let err = support::receive(&mut b, &mut state, &evil).unwrap_err();
    assert!(err.to_string().contains("Bloom filter"), "{err}");
    assert!(b.generate_sync_message(&mut state).is_some());
    assert!(matches!(
        check_sync_message(&evil, &WireLimits::default()),
        Err(WireError::BloomParams {
            bits_per_entry: 0,
            ..
        })
    ));
}

/// A crafted input, and how it must be refused.
type Case = (&'static str, Vec<u8>, fn(&WireError) -> bool);

#[test]
fn crafted_messages_are_refused_quickly() {
    guarded("crafted_messages_are_refused_quickly", || {
        let limits = WireLimits::default();
        let valid_change = {
            let d = dev("dev-a");
            let mut c = new_chat(&d);
            c.automerge_mut().get_changes(&[])[0].raw_bytes().to_vec()
        };
        let change_body = split_chunks(&valid_change).remove(0).1;

        let mut cases: Vec<Case> = vec![
            (
                "zero bits per entry",
                sync_message(0, &[&bloom(1, 0, 7, 0)], &[]),
                |e| matches!(e, WireError::BloomParams { .. }),
            ),
            (
                "probe count 2^32-1",
                sync_message(0, &[&bloom(1, 10, u64::from(u32::MAX), 2)], &[]),
                |e| matches!(e, WireError::BloomParams { .. }),
            ),
            (
                "four billion Bloom entries in 2 bytes",
                sync_message(0, &[&bloom(4_000_000_000, 10, 7, 2)], &[]),
                |e| matches!(e, WireError::BloomParams { .. }),
            ),
            (
                "Bloom bits shorter than the parameters say",
                sync_message(0, &[&bloom(1000, 10, 7, 2)], &[]),
                |e| matches!(e, WireError::BloomLength { .. }),
            ),
            (
                "Bloom bits longer than the parameters say",
                sync_message(0, &[&bloom(1, 10, 7, 3)], &[]),
                |e| matches!(e, WireError::BloomLength { .. }),
            ),
            (
                "2^40 heads",
                {
                    let mut m = vec![0x42];
                    uleb(1 << 40, &mut m);
                    m
                },
                |e| matches!(e, WireError::TooMany { .. }),
            ),
            (
                "1000 heads in 32 bytes",
                {
                    let mut m = vec![0x42];
                    uleb(1000, &mut m);
                    m.extend([0; 32]);
                    m
                },
                |e| matches!(e, WireError::Truncated(_)),
            ),
            (
                "a Bloom filter of 8 GiB",
                {
                    let mut m = vec![0x42, 0, 0, 1, 0];
                    uleb(8 << 30, &mut m);
                    m
                },
                |e| matches!(e, WireError::Truncated(_)),
            ),
            (
                "a change entry of 16 GiB",
                {
                    let mut m = vec![0x42, 0, 0, 0, 1];
                    uleb(16 << 30, &mut m);
                    m.extend(&valid_change);
                    m
                },
                |e| matches!(e, WireError::Truncated(_)),
            ),
            (
                "2^60 change entries",
                {
                    let mut m = vec![0x42, 0, 0, 0];
                    uleb(1 << 60, &mut m);
                    m
                },
                |e| matches!(e, WireError::TooMany { .. }),
            ),
            (
                "a chunk claiming 32 GiB",
                {
                    let mut c = MAGIC.to_vec();
                    c.extend([0, 0, 0, 0, 0]);
                    uleb(32 << 30, &mut c);
                    c.extend([0; 64]);
                    sync_message(0, &[], &[&c])
                },
                |e| matches!(e, WireError::Truncated(_)),
            ),
            (
                "a change chunk of 2 MiB",
                {
                    let mut c = MAGIC.to_vec();
                    c.extend([0, 0, 0, 0, 1]);
                    uleb(2 << 20, &mut c);
                    c.extend(vec![0; 2 << 20]);
                    sync_message(0, &[], &[&c])
                },
                |e| matches!(e, WireError::TooLarge { .. }),
            ),
            (
                "an 11-byte LEB128",
                {
                    let mut m = vec![0x42];
                    m.extend([0xff; 10]);
                    m.push(0x01);
                    m
                },
                |e| matches!(e, WireError::BadNumber(_)),
            ),
            ("an overlong LEB128", vec![0x42, 0x80, 0x00], |e| {
                matches!(e, WireError::BadNumber(_))
            }),
            ("wrong message type", vec![0x44, 0, 0, 0, 0], |e| {
                matches!(e, WireError::NotSyncMessage(0x44))
            }),
            (
                "bytes after the flags",
                {
                    let mut m = sync_message(0, &[], &[&valid_change]);
                    m.extend([2, 2, 0x84, 0xff]);
                    m
                },
                |e| matches!(e, WireError::Trailing { .. }),
            ),
            (
                "wrong magic",
                {
                    let mut c = valid_change.clone();
                    c[0] ^= 1;
                    sync_message(0, &[], &[&c])
                },
                |e| matches!(e, WireError::BadMagic),
            ),
            (
                "bundle chunk",
                sync_message(0, &[], &[&chunk(3, &change_body)]),
                |e| matches!(e, WireError::ChunkType(3)),
            ),
            (
                "unknown chunk type",
                sync_message(0, &[], &[&chunk(9, &change_body)]),
                |e| matches!(e, WireError::ChunkType(9)),
            ),
            (
                "bad checksum",
                {
                    let mut c = valid_change.clone();
                    let last = c.len() - 1;
                    c[last] ^= 0x40;
                    sync_message(0, &[], &[&c])
                },
                |e| matches!(e, WireError::BadChecksum),
            ),
            ("an empty change entry", sync_message(0, &[], &[&[]]), |e| {
                matches!(e, WireError::Malformed { .. })
            }),
        ];

        // A change of a few bytes that says "ten million ops": one action column with one run.
        let ten_million_ops = {
            let mut body = vec![0]; // no deps
            body.extend([1, b'a']); // actor
            body.extend([1, 1]); // seq, start op
            body.extend([0, 0, 0]); // time, message, other actors
            let mut col = Vec::new();
            sleb(10_000_000, &mut col);
            uleb(2, &mut col); // action: set
            body.push(1); // one column
            uleb((4 << 4) | 2, &mut body); // action, integer
            uleb(col.len() as u64, &mut body);
            body.extend(col);
            chunk(1, &body)
        };
        assert!(ten_million_ops.len() < 40);
        cases.push((
            "a change of 10^7 ops in 30 bytes",
            sync_message(0, &[], &[&ten_million_ops]),
            |e| matches!(e, WireError::TooMany { .. }),
        ));

        // A document claiming 2^40 ops in one run, and one whose succ counts claim 2^40
        // successors.
        let document = |spec: u32, col: Vec<u8>| {
            let mut body = vec![1, 1, b'a', 0, 0]; // one actor, no heads, no change columns
            body.push(1);
            uleb(u64::from(spec), &mut body);
            uleb(col.len() as u64, &mut body);
            body.extend(col);
            chunk(0, &body)
        };
        let mut col = Vec::new();
        sleb(1 << 40, &mut col);
        uleb(0, &mut col);
        cases.push((
            "a document of 2^40 ops",
            sync_message(0, &[], &[&document((2 << 4) | 1, col)]),
            |e| matches!(e, WireError::TooMany { .. }),
        ));
        let mut col = Vec::new();
        sleb(1000, &mut col);
        uleb(1 << 40, &mut col);
        cases.push((
            "a document claiming 2^50 successors",
            sync_message(0, &[], &[&document(8 << 4, col)]),
            |e| matches!(e, WireError::TooMany { .. }),
        ));
        let mut col = Vec::new();
        sleb(3, &mut col);
        uleb(5, &mut col);
        cases.push((
            "an actor index past the actor table",
            sync_message(0, &[], &[&document((2 << 4) | 1, col)]),
            |e| matches!(e, WireError::Malformed { .. }),
        ));
        let value_mismatch = {
            // Value metadata says one 5-byte string; the value column has 3 bytes.
            let mut meta = Vec::new();
            sleb(1, &mut meta);
            uleb((5 << 4) | 6, &mut meta);
            let mut body = vec![1, 1, b'a', 0, 0, 2];
            uleb((5 << 4) | 6, &mut body);
            uleb(meta.len() as u64, &mut body);
            uleb((5 << 4) | 7, &mut body);
            uleb(3, &mut body);
            body.extend(meta);
            body.extend(b"abc");
            chunk(0, &body)
        };
        cases.push((
            "value bytes shorter than their metadata says",
            sync_message(0, &[], &[&value_mismatch]),
            |e| {
                matches!(
                    e,
                    WireError::Malformed {
                        what: "value column",
                        ..
                    }
                )
            },
        ));
        let mut col = Vec::new();
        for _ in 0..100_000 {
            col.extend([0, 0]);
        }
        cases.push((
            "100 000 empty null runs",
            sync_message(0, &[], &[&document((2 << 4) | 1, col)]),
            |e| matches!(e, WireError::Malformed { .. }),
        ));

        for (what, bytes, expected) in &cases {
            let (result, took) = timed(|| check_sync_message(bytes, &limits));
            let err = result.expect_err(what);
            eprintln!("{what}: refused in {took:?} ({err})");
            assert!(expected(&err), "{what}: unexpected error {err:?}");
            assert!(took < Duration::from_millis(500), "{what} took {took:?}");
        }
    });
}

#[test]
fn deflate_bombs_are_refused_at_the_cap() {
    guarded("deflate_bombs_are_refused_at_the_cap", || {
        let limits = WireLimits::default();

        // A compressed change chunk whose deflate stream inflates to 64 MiB of zeros. Its
        // checksum cannot be right without inflating it; the cap comes first.
        let stream = deflate_zeros((64 << 20) / 258);
        let mut bomb = MAGIC.to_vec();
        bomb.extend([0, 0, 0, 0, 2]);
        uleb(stream.len() as u64, &mut bomb);
        bomb.extend(&stream);
        let (result, took) = timed(|| check_chunks(&bomb, &limits));
        let err = result.unwrap_err();
        eprintln!(
            "compressed change of {} KiB inflating to 64 MiB: refused in {took:?} ({err})",
            bomb.len() >> 10
        );
        assert!(
            matches!(err, WireError::TooLarge { limit, .. } if limit == 1 << 20),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        let message = sync_message(0, &[], &[&bomb]);
        assert!(check_sync_message(&message, &limits).is_err());

        // A document with one deflated value column inflating to 1 GiB, with a correct
        // checksum: inflation (into a 32 KiB window, discarded) stops at the per-input cap of
        // 512 MiB.
        let stream = deflate_zeros((1 << 30) / 258);
        let mut body = vec![0, 0, 0]; // no actors, no heads, no change columns
        body.push(1);
        uleb((5 << 4) | 0b1000 | 7, &mut body); // value column, deflated
        uleb(stream.len() as u64, &mut body);
        body.extend(&stream);
        let document = chunk(0, &body);
        let (result, took) = timed(|| check_chunks(&document, &limits));
        let err = result.unwrap_err();
        eprintln!(
            "document of {} KiB inflating to 1 GiB: refused in {took:?} ({err})",
            document.len() >> 10
        );
        assert!(
            matches!(err, WireError::TooLarge { size, limit, .. } if size > limit && limit == 512 << 20),
            "{err:?}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
    });
}

#[test]
fn every_truncation_of_a_real_message_is_refused() {
    let limits = WireLimits::default();
    let corpus = corpus();
    let (mut checked, mut documents) = (0, 0);
    for m in corpus.messages.iter().filter(|m| m.len() < 8192) {
        let full = check_sync_message(m, &limits).unwrap();
        documents += full.chunks.documents;
        for cut in 0..m.len() {
            match check_sync_message(&m[..cut], &limits) {
                Err(_) => {}
                // Cutting exactly the optional flags section leaves a valid message.
                Ok(shape) => {
                    assert!(full.flags.is_some() && shape.flags.is_none());
                    assert_eq!(m.len() - cut, 3, "cut at {cut} of {} passed", m.len());
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 1000);
    assert!(
        documents > 0,
        "no message carrying a document was truncated"
    );
}

// ---------------------------------------------------------------------------------------------
// Mutated messages.

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        at: usize,
    },
    /// Copies a slice of another message over this one.
    Splice {
        from: usize,
        start: usize,
        len: usize,
        at: usize,
    },
    /// Writes a LEB128 number (often huge) at a position.
    Number {
        at: usize,
        value: u64,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    prop_oneof![
        4 => (pos, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => pos.prop_map(|at| Mutation::Truncate { at }),
        2 => (any::<usize>(), any::<usize>(), 1usize..64, pos)
            .prop_map(|(from, start, len, at)| Mutation::Splice { from, start, len, at }),
        2 => (pos, prop_oneof![Just(0u64), 1u64..300, Just(u64::from(u32::MAX)),
            Just(1 << 40), any::<u64>()])
            .prop_map(|(at, value)| Mutation::Number { at, value }),
        1 => (pos, proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (pos, 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
    ]
}

fn mutate(base: &[u8], others: &[Vec<u8>], mutations: &[Mutation]) -> Vec<u8> {
    let mut m = base.to_vec();
    for mutation in mutations {
        if m.is_empty() {
            break;
        }
        let n = m.len();
        match mutation {
            Mutation::Flip { at, bit } => m[at % n] ^= 1 << bit,
            Mutation::Truncate { at } => m.truncate(at % n),
            Mutation::Splice {
                from,
                start,
                len,
                at,
            } => {
                let src = &others[from % others.len()];
                let start = start % src.len();
                let end = (start + len).min(src.len());
                let at = at % n;
                let end_at = (at + end - start).min(n);
                m.splice(at..end_at, src[start..end].iter().copied());
            }
            Mutation::Number { at, value } => {
                let mut bytes = Vec::new();
                uleb(*value, &mut bytes);
                let at = at % n;
                let end = (at + bytes.len()).min(n);
                m.splice(at..end, bytes);
            }
            Mutation::Insert { at, bytes } => {
                let at = at % (n + 1);
                m.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(n);
                m.drain(at..end);
            }
        }
    }
    m
}

/// Hands an accepted message to a fresh receiver and generates its answer, both inside
/// `catch_unwind`. Returns whether anything panicked.
fn receive_contained(bytes: &[u8]) -> (bool, Duration) {
    let corpus = corpus();
    let device = dev("dev-b");
    let start = Instant::now();
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let mut doc = ChatDoc::load(&corpus.receiver_base, &device).unwrap();
        let mut state = State::new();
        let _ = support::receive(&mut doc, &mut state, bytes);
        let _ = doc.generate_sync_message(&mut state);
        let _ = doc.automerge_mut().get_heads();
    }))
    .is_err();
    (panicked, start.elapsed())
}

const TIME_BOUND: Duration = Duration::from_secs(5);

/// Whole messages mutated byte by byte (checksums left as they are): the check never panics,
/// and what it accepts never panics the receiver, within a time bound and the memory guard.
#[test]
fn mutated_messages_never_hurt_the_receiver() {
    guarded("mutated_messages_never_hurt_the_receiver", || {
        let corpus = corpus();
        let limits = WireLimits::default();
        let accepted = std::cell::Cell::new(0u32);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (
            0..corpus.messages.len(),
            proptest::collection::vec(mutation(), 1..4),
        );
        let started = Instant::now();
        runner
            .run(&strategy, |(index, mutations)| {
                let m = mutate(&corpus.messages[index], &corpus.messages, &mutations);
                if check_sync_message(&m, &limits).is_ok() {
                    accepted.set(accepted.get() + 1);
                    let (panicked, took) = receive_contained(&m);
                    prop_assert!(!panicked, "an accepted message panicked the receiver");
                    prop_assert!(took < TIME_BOUND, "receiving took {:?}", took);
                }
                Ok(())
            })
            .unwrap();
        eprintln!(
            "3000 mutated messages, {} accepted, in {:?}",
            accepted.get(),
            started.elapsed()
        );
    });
}

/// Chunks mutated inside and given a correct checksum again, as a peer that means harm would:
/// the check never panics, and what it accepts is received within the time bound and the
/// memory guard. Automerge itself may still panic on some of them (its column decoders trust
/// values this module does not interpret): those panics are contained and counted.
#[test]
fn rechecksummed_chunks_are_contained() {
    guarded("rechecksummed_chunks_are_contained", || {
        let corpus = corpus();
        let limits = WireLimits::default();
        let chunks: Vec<(u8, Vec<u8>)> = corpus
            .messages
            .iter()
            .flat_map(|m| {
                SyncMessage::decode(m)
                    .unwrap()
                    .changes
                    .iter()
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .flat_map(|entry| split_chunks(&entry))
            .filter(|(_, body)| body.len() < 16 * 1024)
            .collect();
        let bodies: Vec<Vec<u8>> = chunks.iter().map(|(_, b)| b.clone()).collect();
        let (accepted, panics) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        // Count panic sites instead of printing each one.
        static SITES: std::sync::Mutex<std::collections::BTreeMap<String, u32>> =
            std::sync::Mutex::new(std::collections::BTreeMap::new());
        std::panic::set_hook(Box::new(|info| {
            let site = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let message: String = message.chars().take(100).collect();
            *SITES
                .lock()
                .unwrap()
                .entry(format!("{site}: {message}"))
                .or_default() += 1;
        }));
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let strategy = (0..chunks.len(), proptest::collection::vec(mutation(), 1..3));
        let started = Instant::now();
        runner
            .run(&strategy, |(index, mutations)| {
                let (chunk_type, body) = &chunks[index];
                let body = mutate(body, &bodies, &mutations);
                let m = sync_message(0, &[], &[&chunk(*chunk_type, &body)]);
                if check_sync_message(&m, &limits).is_ok() {
                    accepted.set(accepted.get() + 1);
                    let (panicked, took) = receive_contained(&m);
                    panics.set(panics.get() + u32::from(panicked));
                    prop_assert!(took < TIME_BOUND, "receiving took {:?}", took);
                }
                Ok(())
            })
            .unwrap();
        eprintln!(
            "2000 re-checksummed mutated chunks: {} accepted, {} of those panicked \
             inside automerge (contained), in {:?}",
            accepted.get(),
            panics.get(),
            started.elapsed()
        );
        let _ = std::panic::take_hook();
        for (site, count) in SITES.lock().unwrap().iter() {
            eprintln!("  {count:5} x {site}");
        }
    });
}
