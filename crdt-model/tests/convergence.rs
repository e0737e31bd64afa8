//! Property tests: three replicas of one chat, each on its own device with a skewed and
//! misbehaving wall clock, make random changes and exchange them in random ways (whole-document
//! merges, full and partial change batches, out of causal order). After a final exchange in a
//! random order, every replica must show the same chat, in the same order, and that order must
//! respect causality.
//!
//! Besides comparing replicas with each other, the test keeps a sequential model of what each
//! device did (texts, edits, deletions, reactions, read markers) and checks the converged chat
//! against it, so that "all replicas agree" cannot hide "all replicas lost the same write".
//!
//! Every exchange also checks what the receiving replica reports as touched against an oracle
//! that diffs the document before and after (slow, and independent of how the model finds
//! them): the same messages, and for the sync protocol the same kinds.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::{ChangeHash, PatchAction, Prop, ReadDoc, ScalarValue, Value, sync::State};
use chatsync_model::{
    ChatDoc, ChatId, Clock, Device, DeviceId, Message, MessageId, ModelError, TouchKind, layout,
    schema,
};
use proptest::{prelude::*, sample::Index, test_runner::TestCaseError};

const N: usize = 3;
/// Replica index order differs from device id order, so that author tie-breaks are exercised
/// independently of replica numbering.
const DEVICE_IDS: [&str; N] = ["dev-m", "dev-a", "dev-z"];
const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 86_400_000;
const YEAR: i64 = 365 * DAY;
const REACTIONS: [&str; 5] = ["👍", "❤️", "😂", "+1", "ok"];
/// Wall clocks are kept within these bounds: far beyond anything a clock can carry
/// (`MAX_WALL_MS` is about 1.4e14) and far before 1970, but such that two change times never
/// differ by more than `i64::MAX`. Beyond that Automerge's change-time column overflows; that
/// case has its own test in `chat_rules.rs`
/// (`extreme_wall_clocks_on_two_devices_do_not_panic`).
const WALL_MIN: i64 = -(1 << 61);
const WALL_MAX: i64 = 1 << 62;

fn wall(now: i64) -> i64 {
    now.clamp(WALL_MIN, WALL_MAX)
}

#[derive(Debug, Clone)]
enum Kind {
    Post {
        reply: Option<Index>,
    },
    Edit {
        pick: Index,
    },
    Delete {
        pick: Index,
    },
    React {
        pick: Index,
        reaction: Option<usize>,
    },
    MarkRead {
        pick: Index,
    },
    Title,
}

#[derive(Debug, Clone)]
enum How {
    /// `ChatDoc::merge`.
    Merge,
    /// Every change the source has, via `get_changes(&[])`.
    AllChanges,
    /// Only the changes the target lacks, via `get_changes_added`.
    AddedChanges,
    /// A subset of the source's changes, possibly reversed: dependencies may be missing, so some
    /// changes wait in Automerge's queue until a later exchange brings what they need.
    Subset { keep: Vec<bool>, reverse: bool },
    /// Automerge's sync protocol until both are quiet (so the source also gets the target's
    /// changes).
    Protocol,
}

#[derive(Debug, Clone)]
enum Op {
    /// A local operation on replica `r`, whose wall clock first moves by `dt` (maybe backwards).
    Local { r: usize, dt: i64, kind: Kind },
    /// Replica `into` takes in changes from replica `from`.
    Sync { into: usize, from: usize, how: How },
    /// Replica `r`'s wall clock jumps (someone fixes, or breaks, the clock).
    Jump { r: usize, by: i64 },
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        5 => proptest::option::weighted(0.5, any::<Index>()).prop_map(|reply| Kind::Post { reply }),
        2 => any::<Index>().prop_map(|pick| Kind::Edit { pick }),
        2 => any::<Index>().prop_map(|pick| Kind::Delete { pick }),
        3 => (any::<Index>(), proptest::option::weighted(0.75, 0..REACTIONS.len()))
            .prop_map(|(pick, reaction)| Kind::React { pick, reaction }),
        2 => any::<Index>().prop_map(|pick| Kind::MarkRead { pick }),
        1 => Just(Kind::Title),
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        3 => Just(How::Merge),
        1 => Just(How::AllChanges),
        1 => Just(How::AddedChanges),
        2 => (proptest::collection::vec(any::<bool>(), 1..6), any::<bool>())
            .prop_map(|(keep, reverse)| How::Subset { keep, reverse }),
        2 => Just(How::Protocol),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let dt = prop_oneof![4 => 0i64..5_000, 1 => -120_000i64..0];
    let by = prop_oneof![
        -50 * YEAR..50 * YEAR,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(-T0),
    ];
    prop_oneof![
        10 => (0..N, dt, kind()).prop_map(|(r, dt, kind)| Op::Local { r, dt, kind }),
        5 => (0..N, 1..N, how()).prop_map(|(into, k, how)| Op::Sync { into, from: (into + k) % N, how }),
        1 => (0..N, by).prop_map(|(r, by)| Op::Jump { r, by }),
    ]
}

/// Wall-clock offsets from T0: right, 1970, before 1970, a year behind, a day ahead, a century
/// ahead, and beyond what a clock can carry.
fn skew() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(-T0),
        Just(-T0 - 10 * DAY),
        Just(-YEAR),
        Just(DAY),
        Just(100 * YEAR),
        Just(i64::MAX - T0),
    ]
}

/// The six ordered pairs (into, from), for the final exchange.
const PAIRS: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)];

struct Replica {
    doc: ChatDoc,
    dev: Device,
    now: i64,
}

/// What the model knows about one message: what its author did to it, in order.
#[derive(Debug)]
struct Posted {
    author: usize,
    reply_to: Option<MessageId>,
    /// Every message the author's replica had in its index when posting.
    seen: Vec<MessageId>,
    ts: i64,
    text: String,
    edited_at: Option<i64>,
    deleted: bool,
}

#[derive(Default)]
struct Model {
    posts: BTreeMap<MessageId, Posted>,
    /// Last reaction each replica's device set on each message (cleared ones removed).
    reactions: BTreeMap<(MessageId, usize), String>,
    markers: [Option<MessageId>; N],
    counter: usize,
}

fn pair(reps: &mut [Replica], into: usize, from: usize) -> (&mut Replica, &mut Replica) {
    assert_ne!(into, from);
    if into < from {
        let (lo, hi) = reps.split_at_mut(from);
        (&mut lo[into], &mut hi[0])
    } else {
        let (lo, hi) = reps.split_at_mut(into);
        (&mut hi[0], &mut lo[from])
    }
}

fn known(doc: &ChatDoc) -> Vec<MessageId> {
    doc.message_ids().cloned().collect()
}

fn raw_text(doc: &mut ChatDoc, id: &MessageId) -> Option<String> {
    let am = doc.automerge_mut();
    let messages = layout::entry_map(am, id.as_str())?;
    let (_, msg) = am.get(&messages, id.as_str()).ok()??;
    match am.get(&msg, schema::TEXT).ok()?? {
        (Value::Scalar(v), _) => v.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Checks that the index of one replica is consistent with its document.
fn check_index(rep: &mut Replica) -> Result<(), TestCaseError> {
    let shown: Vec<Message> = rep.doc.messages().collect();
    prop_assert_eq!(
        shown.len(),
        rep.doc.len(),
        "an indexed message cannot be read"
    );
    // Sorted by the order key read back from the document (not the cached one).
    for w in shown.windows(2) {
        prop_assert!(
            w[0].order_key() < w[1].order_key(),
            "out of order: {:?} then {:?}",
            w[0].order_key(),
            w[1].order_key()
        );
    }
    // (d) the incrementally maintained index equals a from-scratch rebuild.
    let reloaded = ChatDoc::load(&rep.doc.save(), &rep.dev).unwrap();
    let fresh: Vec<Message> = reloaded.messages().collect();
    prop_assert_eq!(
        &fresh,
        &shown,
        "index differs from a reload of the saved document"
    );
    prop_assert_eq!(reloaded.read_markers(), rep.doc.read_markers());
    Ok(())
}

fn local(
    reps: &mut [Replica],
    model: &mut Model,
    r: usize,
    dt: i64,
    kind: &Kind,
) -> Result<(), TestCaseError> {
    let rep = &mut reps[r];
    rep.now = wall(rep.now.saturating_add(dt));
    let now = rep.now;
    let ids = known(&rep.doc);
    let pick = |i: &Index| (!ids.is_empty()).then(|| ids[i.index(ids.len())].clone());
    model.counter += 1;
    let n = model.counter;
    match kind {
        Kind::Post { reply } => {
            let reply_to = reply.as_ref().and_then(pick);
            let id = MessageId::new(format!("r{r}-{n}")).unwrap();
            let text = format!("message {n} from replica {r}");
            let max_seen = rep.doc.messages().map(|m| m.clock).max();
            let m = rep
                .doc
                .post(&rep.dev, id.clone(), &text, reply_to.as_ref(), now)
                .unwrap();
            prop_assert_eq!(&m.author, &rep.dev.id);
            prop_assert_eq!(&m.reply_to, &reply_to);
            prop_assert_eq!(m.ts, now);
            prop_assert_eq!(&m.text, &text);
            if let Some(max) = max_seen {
                prop_assert!(m.clock > max, "{:?} not after {:?}", m.clock, max);
            }
            prop_assert_eq!(
                rep.doc.message_ids().last(),
                Some(&id),
                "a new post sorts last"
            );
            model.posts.insert(
                id,
                Posted {
                    author: r,
                    reply_to,
                    seen: ids,
                    ts: now,
                    text,
                    edited_at: None,
                    deleted: false,
                },
            );
        }
        Kind::Edit { pick: p } => {
            let Some(id) = pick(p) else { return Ok(()) };
            let post = model.posts.get_mut(&id).unwrap();
            let text = format!("edit {n}");
            let res = rep.doc.edit(&rep.dev, &id, &text, now);
            if post.author != r {
                prop_assert!(matches!(res, Err(ModelError::Forbidden(_))), "{:?}", res);
            } else if post.deleted {
                prop_assert!(matches!(res, Err(ModelError::Deleted(_))), "{:?}", res);
            } else {
                let m = res.unwrap();
                prop_assert_eq!(&m.text, &text);
                prop_assert_eq!(m.edited_at, Some(now));
                post.text = text;
                post.edited_at = Some(now);
            }
        }
        Kind::Delete { pick: p } => {
            let Some(id) = pick(p) else { return Ok(()) };
            let post = model.posts.get_mut(&id).unwrap();
            let seen_deleted = rep.doc.message(&id).unwrap().deleted;
            let res = rep.doc.delete(&rep.dev, &id, now);
            if post.author == r {
                prop_assert_eq!(
                    seen_deleted,
                    post.deleted,
                    "the author knows its own deletions"
                );
                let m = res.unwrap();
                prop_assert!(m.deleted);
                prop_assert_eq!(m.text.as_str(), "");
                prop_assert!(m.reactions.is_empty());
                post.deleted = true;
            } else if seen_deleted {
                // Deleting a deleted message is a no-op, whoever asks.
                prop_assert!(res.is_ok(), "{:?}", res);
            } else {
                prop_assert!(matches!(res, Err(ModelError::Forbidden(_))), "{:?}", res);
                prop_assert!(!rep.doc.message(&id).unwrap().deleted);
            }
        }
        Kind::React { pick: p, reaction } => {
            let Some(id) = pick(p) else { return Ok(()) };
            let reaction = reaction.map(|i| REACTIONS[i]);
            let seen_deleted = rep.doc.message(&id).unwrap().deleted;
            let res = rep.doc.react(&rep.dev, &id, reaction, now);
            if seen_deleted {
                prop_assert!(matches!(res, Err(ModelError::Deleted(_))), "{:?}", res);
            } else {
                let m = res.unwrap();
                prop_assert_eq!(m.reactions.get(&rep.dev.id).map(String::as_str), reaction);
                match reaction {
                    Some(x) => model.reactions.insert((id, r), x.to_string()),
                    None => model.reactions.remove(&(id, r)),
                };
            }
        }
        Kind::MarkRead { pick: p } => {
            let Some(id) = pick(p) else { return Ok(()) };
            let pos = |m: &MessageId| ids.iter().position(|x| x == m);
            let current = rep.doc.read_marker(&rep.dev.id);
            prop_assert_eq!(&current, &model.markers[r]);
            let expect_move = match &current {
                None => true,
                Some(c) => pos(c).unwrap() < pos(&id).unwrap(),
            };
            let moved = rep.doc.mark_read(&rep.dev, &id, now).unwrap();
            prop_assert_eq!(moved, expect_move);
            if moved {
                model.markers[r] = Some(id);
            }
            prop_assert_eq!(rep.doc.read_marker(&rep.dev.id), model.markers[r].clone());
        }
        Kind::Title => {
            rep.doc.set_title(&format!("title {n}"), now).unwrap();
        }
    }
    Ok(())
}

/// Where a diff patch says a change landed: the message whose entry or own map it changes, and
/// what kind of change that is; `None` for anything else.
fn patch_target(
    patch: &automerge::Patch,
    entry_maps: &[automerge::ObjId],
) -> Option<(String, TouchKind)> {
    let key = match &patch.action {
        PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key.as_str()),
        _ => None,
    };
    if entry_maps.contains(&patch.obj) {
        return Some((key?.to_string(), TouchKind::Other));
    }
    // The step of the path from a map of entries into a message.
    let (depth, id) = patch
        .path
        .iter()
        .enumerate()
        .find_map(|(depth, step)| match step {
            (parent, Prop::Map(id)) if entry_maps.contains(parent) => Some((depth, id)),
            _ => None,
        })?;
    let set_deleted = matches!(
        &patch.action,
        PatchAction::PutMap { value: (Value::Scalar(v), _), .. }
            if v.as_ref() == &ScalarValue::Boolean(true)
    );
    let kind = match key {
        _ if patch.path.len() != depth + 1 => TouchKind::Other,
        Some(schema::DELETED) if set_deleted => TouchKind::Deleted,
        Some(schema::TEXT | schema::EDITED_AT) => TouchKind::Edited,
        Some(k) if k.starts_with(schema::REACTION_PREFIX) => TouchKind::Reaction,
        _ => TouchKind::Other,
    };
    Some((id.clone(), kind))
}

fn significance(kind: TouchKind) -> usize {
    [
        TouchKind::Other,
        TouchKind::Reaction,
        TouchKind::Edited,
        TouchKind::Deleted,
        TouchKind::Created,
    ]
    .iter()
    .position(|k| *k == kind)
    .unwrap()
}

/// Oracle: the messages that changed between `before` and now according to Automerge's diff,
/// with what happened to each, limited to indexed ones. `indexed_before` is the index before.
fn diff_touched(
    doc: &mut ChatDoc,
    before: &[ChangeHash],
    indexed_before: &HashSet<MessageId>,
) -> BTreeMap<MessageId, TouchKind> {
    let after = doc.heads();
    let indexed: HashSet<MessageId> = known(doc).into_iter().collect();
    let am = doc.automerge_mut();
    let entry_maps = layout::entry_maps(am);
    let mut touched: BTreeMap<MessageId, TouchKind> = BTreeMap::new();
    for patch in am.diff(before, &after) {
        let Some((key, kind)) = patch_target(&patch, &entry_maps) else {
            continue;
        };
        let Ok(id) = MessageId::new(key) else {
            continue;
        };
        if !indexed.contains(&id) {
            continue;
        }
        let kind = if indexed_before.contains(&id) {
            kind
        } else {
            TouchKind::Created
        };
        let entry = touched.entry(id).or_insert(kind);
        if significance(kind) > significance(*entry) {
            *entry = kind;
        }
    }
    touched
}

/// `rep` receives one sync message; what it reports must match the diff oracle.
fn receive_checked(
    rep: &mut Replica,
    state: &mut State,
    message: &[u8],
) -> Result<(), TestCaseError> {
    let heads = rep.doc.heads();
    let before: HashSet<MessageId> = known(&rep.doc).into_iter().collect();
    let received = support::receive(&mut rep.doc, state, message).unwrap();
    let reported: BTreeMap<MessageId, TouchKind> = received
        .touched
        .iter()
        .map(|t| (t.id.clone(), t.kind))
        .collect();
    prop_assert_eq!(
        reported.len(),
        received.touched.len(),
        "a message is reported twice"
    );
    for t in &received.touched {
        prop_assert_eq!(t.kind == TouchKind::Created, !before.contains(&t.id));
        if t.kind == TouchKind::Deleted {
            prop_assert!(rep.doc.message(&t.id).unwrap().deleted);
        }
    }
    let want = diff_touched(&mut rep.doc, &heads, &before);
    prop_assert_eq!(
        reported,
        want,
        "reported touched messages differ from the diff's"
    );
    Ok(())
}

/// Replicas `a` and `b` run the sync protocol until neither has anything to send.
fn protocol(reps: &mut [Replica], a: usize, b: usize) -> Result<(), TestCaseError> {
    let (x, y) = pair(reps, a, b);
    let (mut sx, mut sy) = (State::new(), State::new());
    for _ in 0..20 {
        let to_y = x.doc.generate_sync_message(&mut sx);
        let to_x = y.doc.generate_sync_message(&mut sy);
        if to_y.is_none() && to_x.is_none() {
            prop_assert_eq!(x.doc.heads(), y.doc.heads());
            check_index(x)?;
            return check_index(y);
        }
        if let Some(m) = to_y {
            receive_checked(y, &mut sy, &m)?;
        }
        if let Some(m) = to_x {
            receive_checked(x, &mut sx, &m)?;
        }
    }
    Err(TestCaseError::fail("the sync protocol did not settle"))
}

fn sync(reps: &mut [Replica], into: usize, from: usize, how: &How) -> Result<(), TestCaseError> {
    if matches!(how, How::Protocol) {
        return protocol(reps, into, from);
    }
    let (dst, src) = pair(reps, into, from);
    let heads = dst.doc.heads();
    let before: HashSet<MessageId> = known(&dst.doc).into_iter().collect();
    let before_view: HashMap<MessageId, Message> =
        dst.doc.messages().map(|m| (m.id.clone(), m)).collect();
    let touched = match how {
        How::Merge => dst.doc.merge(&mut src.doc).unwrap(),
        How::AllChanges => {
            let changes = src.doc.automerge_mut().get_changes(&[]);
            dst.doc.apply_changes(changes).unwrap()
        }
        How::AddedChanges => {
            let changes = dst
                .doc
                .automerge_mut()
                .get_changes_added(src.doc.automerge_mut());
            dst.doc.apply_changes(changes).unwrap()
        }
        How::Subset { keep, reverse } => {
            let mut changes: Vec<_> = src
                .doc
                .automerge_mut()
                .get_changes(&[])
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep[i % keep.len()])
                .map(|(_, c)| c)
                .collect();
            if *reverse {
                changes.reverse();
            }
            dst.doc.apply_changes(changes).unwrap()
        }
        How::Protocol => unreachable!("handled above"),
    };
    let mut reported: Vec<MessageId> = touched.clone();
    reported.sort();
    reported.dedup();
    prop_assert_eq!(reported.len(), touched.len(), "a message is reported twice");
    let want: Vec<MessageId> = diff_touched(&mut dst.doc, &heads, &before)
        .into_keys()
        .collect();
    prop_assert_eq!(
        reported,
        want,
        "reported touched messages differ from the diff's"
    );
    let after: HashSet<MessageId> = known(&dst.doc).into_iter().collect();
    prop_assert!(before.is_subset(&after), "a sync lost messages");
    for id in &touched {
        prop_assert!(after.contains(id), "touched {} is not in the chat", id);
    }
    // Every message that is new or shows differently must be reported as touched.
    for m in dst.doc.messages() {
        if before_view.get(&m.id) != Some(&m) {
            prop_assert!(
                touched.contains(&m.id),
                "changed message {} not reported",
                m.id
            );
        }
    }
    if !matches!(how, How::Subset { .. }) {
        for id in known(&src.doc) {
            prop_assert!(after.contains(&id), "a full sync missed {}", id);
        }
    }
    check_index(dst)
}

fn run(skews: [i64; N], ops: Vec<Op>, finale: Vec<(usize, u8)>) -> Result<(), TestCaseError> {
    let devices: Vec<Device> = DEVICE_IDS
        .iter()
        .map(|id| Device::new(DeviceId::new(*id).unwrap(), format!("{id} phone")).unwrap())
        .collect();
    let nows: Vec<i64> = skews.iter().map(|s| wall(T0.saturating_add(*s))).collect();
    let chat = ChatId::new("chat-prop").unwrap();
    let mut genesis = ChatDoc::create(chat, "Genesis", &devices[0], nows[0]).unwrap();
    let bytes = genesis.save();
    let mut reps: Vec<Replica> = vec![Replica {
        doc: genesis,
        dev: devices[0].clone(),
        now: nows[0],
    }];
    for i in 1..N {
        reps.push(Replica {
            doc: ChatDoc::load(&bytes, &devices[i]).unwrap(),
            dev: devices[i].clone(),
            now: nows[i],
        });
    }
    let mut model = Model::default();

    for op in &ops {
        match op {
            Op::Local { r, dt, kind } => local(&mut reps, &mut model, *r, *dt, kind)?,
            Op::Sync { into, from, how } => sync(&mut reps, *into, *from, how)?,
            Op::Jump { r, by } => reps[*r].now = wall(reps[*r].now.saturating_add(*by)),
        }
    }

    // Final exchange: every ordered pair once, in a random order, by a random complete method.
    // Each replica receives directly from every other, so all end with every change.
    for (p, m) in finale {
        let (into, from) = PAIRS[p];
        let how = match m % 4 {
            0 => How::Merge,
            1 => How::AllChanges,
            2 => How::AddedChanges,
            _ => How::Protocol,
        };
        sync(&mut reps, into, from, &how)?;
    }

    check_converged(&mut reps, &model)
}

fn check_converged(reps: &mut [Replica], model: &Model) -> Result<(), TestCaseError> {
    let views: Vec<Vec<Message>> = reps.iter().map(|r| r.doc.messages().collect()).collect();
    // (a) same messages, same order, same read markers, same title everywhere.
    for i in 1..N {
        prop_assert_eq!(&views[i], &views[0], "replicas 0 and {} differ", i);
        prop_assert_eq!(reps[i].doc.read_markers(), reps[0].doc.read_markers());
        prop_assert_eq!(reps[i].doc.title(), reps[0].doc.title());
        prop_assert_eq!(reps[i].doc.heads(), reps[0].doc.heads());
    }
    let view = &views[0];
    let pos: HashMap<&MessageId, usize> =
        view.iter().enumerate().map(|(i, m)| (&m.id, i)).collect();

    // Everything that was posted is there, exactly as its author and the reactors left it.
    let shown: Vec<&MessageId> = view.iter().map(|m| &m.id).collect();
    let mut expected: Vec<&MessageId> = model.posts.keys().collect();
    let mut sorted_shown = shown.clone();
    sorted_shown.sort();
    expected.sort();
    prop_assert_eq!(sorted_shown, expected);
    for m in view {
        let p = &model.posts[&m.id];
        let author = &reps[p.author].dev;
        prop_assert_eq!(&m.author, &author.id);
        prop_assert_eq!(&m.author_name, &author.name);
        prop_assert_eq!(m.ts, p.ts);
        prop_assert_eq!(&m.reply_to, &p.reply_to);
        prop_assert_eq!(m.deleted, p.deleted);
        prop_assert_eq!(m.edited_at, p.edited_at);
        if p.deleted {
            // (e) a deleted message is empty on every replica, in the document as well.
            for rep in reps.iter_mut() {
                let mm = rep.doc.message(&m.id).unwrap();
                prop_assert_eq!(mm.text.as_str(), "");
                prop_assert!(mm.reactions.is_empty());
                let raw = raw_text(&mut rep.doc, &m.id);
                prop_assert_eq!(raw.as_deref(), Some(""));
            }
        } else {
            prop_assert_eq!(&m.text, &p.text);
            let want: BTreeMap<DeviceId, String> = model
                .reactions
                .iter()
                .filter(|((id, _), _)| id == &m.id)
                .map(|((_, r), x)| (reps[*r].dev.id.clone(), x.clone()))
                .collect();
            prop_assert_eq!(&m.reactions, &want, "reactions on {}", m.id);
        }

        // (b) a reply sorts after the message it answers.
        if let Some(parent) = &p.reply_to {
            prop_assert!(
                pos[parent] < pos[&m.id],
                "reply {} sorts before its parent {}",
                m.id,
                parent
            );
        }
        // (c) a message sorts after everything its author had seen.
        for s in &p.seen {
            prop_assert!(
                pos[s] < pos[&m.id],
                "{} sorts before {}, which its author had seen",
                m.id,
                s
            );
        }
    }

    // Read markers: each device's last successful mark_read.
    let markers = reps[0].doc.read_markers();
    for (r, rep) in reps.iter().enumerate() {
        prop_assert_eq!(markers.get(&rep.dev.id), model.markers[r].as_ref());
    }
    prop_assert_eq!(markers.len(), model.markers.iter().flatten().count());

    // unread_count agrees with its definition on the converged order.
    for rep in reps.iter() {
        let start = match &model.markers[DEVICE_IDS
            .iter()
            .position(|d| *d == rep.dev.id.as_str())
            .unwrap()]
        {
            Some(m) => pos[m] + 1,
            None => 0,
        };
        let naive = view[start..]
            .iter()
            .filter(|m| m.author != rep.dev.id && !m.deleted)
            .count();
        prop_assert_eq!(reps[0].doc.unread_count(&rep.dev.id), naive);
    }

    // Clocks: strictly increasing per author along the order (each device ticks forward).
    let mut last: HashMap<&DeviceId, Clock> = HashMap::new();
    for m in view {
        if let Some(prev) = last.insert(&m.author, m.clock) {
            prop_assert!(prev < m.clock);
        }
    }

    // (d) every replica's index equals a from-scratch load of its saved document.
    for rep in reps.iter_mut() {
        check_index(rep)?;
    }
    // And a new device loading any save sees the same chat.
    let stranger = Device::new(DeviceId::new("dev-new").unwrap(), "new").unwrap();
    let fresh = ChatDoc::load(&reps[2].doc.save(), &stranger).unwrap();
    prop_assert_eq!(&fresh.messages().collect::<Vec<_>>(), view);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Failures are reported with their shrunk input; no regression file is written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_in_causal_order(
        skews in [skew(), skew(), skew()],
        ops in proptest::collection::vec(op(), 0..40),
        perm in Just((0..PAIRS.len()).collect::<Vec<_>>()).prop_shuffle(),
        methods in proptest::collection::vec(any::<u8>(), PAIRS.len()),
    ) {
        let finale = perm.into_iter().zip(methods).collect();
        run(skews, ops, finale)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Many posts and few exchanges: long concurrent histories with skewed clocks.
    #[test]
    fn concurrent_bursts_converge(
        skews in [skew(), skew(), skew()],
        bursts in proptest::collection::vec((0..N, 1usize..6, proptest::option::of(any::<Index>()), -100_000i64..100_000), 1..8),
        perm in Just((0..PAIRS.len()).collect::<Vec<_>>()).prop_shuffle(),
        methods in proptest::collection::vec(any::<u8>(), PAIRS.len()),
    ) {
        let mut ops = Vec::new();
        for (i, (r, count, reply, dt)) in bursts.into_iter().enumerate() {
            for _ in 0..count {
                ops.push(Op::Local { r, dt, kind: Kind::Post { reply } });
            }
            // An occasional one-way exchange between bursts.
            if i % 3 == 2 {
                ops.push(Op::Sync { into: (r + 1) % N, from: r, how: How::Merge });
            }
        }
        let finale = perm.into_iter().zip(methods).collect();
        run(skews, ops, finale)?;
    }
}
