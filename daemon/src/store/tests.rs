use super::*;

/// Opens the store in `dir`. A store dropped a moment ago may still hold its lock while sled's
/// background thread lets go of the files: that is waited out.
fn open(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir, 1 << 20) {
            Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.unwrap(),
        }
    }
}

fn record(title: &str) -> ChatRecord {
    ChatRecord {
        title: title.into(),
        created_at: 1,
        created_by: "dev".into(),
        messages: 0,
        last_activity: 1,
        heads: Vec::new(),
        next_seq: 0,
        own_newest: None,
        unchecked: false,
    }
}

#[test]
fn chunks_load_in_order_after_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = ChatId::new("c1").unwrap();
    store.create_chat(&id, &record("t"), b"base").unwrap();
    for seq in 0..300u64 {
        store
            .append_chunk(&id, seq, &[seq as u8], &record("t"))
            .unwrap();
    }
    let loaded = store.load_chat(&id).unwrap().unwrap();
    assert_eq!(&loaded.bytes[..4], b"base");
    assert_eq!(loaded.bytes.len(), 4 + 300);
    assert_eq!(loaded.bytes[4 + 256], 0, "seq 256 comes after seq 255");
    assert_eq!(loaded.next_seq, 300);
    assert_eq!(loaded.chunks, 300);
    assert!(
        store
            .load_chat(&ChatId::new("other").unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn chunks_of_several_chats_and_their_records_are_written_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (ChatId::new("a").unwrap(), ChatId::new("b").unwrap());
    store.create_chat(&a, &record("a"), b"A").unwrap();
    store.create_chat(&b, &record("b"), b"B").unwrap();
    let (ra, rb) = (
        ChatRecord {
            messages: 2,
            ..record("a2")
        },
        ChatRecord {
            messages: 1,
            ..record("b2")
        },
    );
    store
        .append_chunks(
            &[(&a, 0, b"1"), (&b, 0, b"x"), (&a, 1, b"2")],
            &[(&a, &ra), (&b, &rb)],
        )
        .unwrap();
    assert_eq!(store.load_chat(&a).unwrap().unwrap().bytes, b"A12");
    assert_eq!(store.load_chat(&b).unwrap().unwrap().bytes, b"Bx");
    let mut records = store.chat_records().unwrap();
    records.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(records, vec![(a, ra), (b, rb)]);
}

#[test]
fn compaction_replaces_base_and_drops_only_covered_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = ChatId::new("c1").unwrap();
    store.create_chat(&id, &record("t"), b"b0").unwrap();
    for seq in 0..5u64 {
        store.append_chunk(&id, seq, b"x", &record("t")).unwrap();
    }
    store.compact(&id, b"b1", 2).unwrap();
    let loaded = store.load_chat(&id).unwrap().unwrap();
    assert_eq!(loaded.bytes, b"b1xx");
    assert_eq!(loaded.chunks, 2);
    assert_eq!(loaded.next_seq, 5);
}

#[test]
fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store
            .put_chat_record(&ChatId::new("c1").unwrap(), &record("family"))
            .unwrap();
        store.flush().unwrap();
    }
    let store = open(dir.path());
    let records = store.chat_records().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.title, "family");
}

#[test]
fn values_in_an_unknown_format_are_errors() {
    assert!(unframe(&[]).is_err());
    assert!(unframe(&[9, 1]).is_err());
    assert_eq!(unframe(&[FORMAT, 1]).unwrap(), &[1]);
}

#[test]
fn chunk_writes_note_their_chats_until_settled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (ChatId::new("a").unwrap(), ChatId::new("b").unwrap());
    store.create_chat(&a, &record("a"), b"A").unwrap();
    store.create_chat(&b, &record("b"), b"B").unwrap();
    assert_eq!(store.unsettled().unwrap(), None);
    store
        .append_chunks(&[(&b, 0, b"x"), (&a, 4, b"1"), (&b, 1, b"y")], &[])
        .unwrap();
    assert_eq!(
        store.unsettled().unwrap(),
        Some(Unsettled::Chats(vec![a.clone(), b.clone()]))
    );
    assert!(store.has_chunks_from(&a, 4).unwrap());
    assert!(!store.has_chunks_from(&a, 5).unwrap());
    assert!(store.has_chunks_from(&b, 1).unwrap());
    assert!(!store.has_chunks_from(&b, 2).unwrap());
    assert!(
        !store
            .has_chunks_from(&ChatId::new("c").unwrap(), 0)
            .unwrap()
    );
    store.settle().unwrap();
    assert_eq!(store.unsettled().unwrap(), None);

    let many: Vec<ChatId> = (0..=MAX_UNSETTLED_CHATS)
        .map(|i| ChatId::new(format!("chat{i}")).unwrap())
        .collect();
    let chunks: Vec<(&ChatId, u64, &[u8])> = many.iter().map(|id| (id, 0, &b"z"[..])).collect();
    store.append_chunks(&chunks, &[]).unwrap();
    assert_eq!(store.unsettled().unwrap(), Some(Unsettled::All));
}

#[test]
fn a_snapshot_left_unfinished_by_a_full_disk_does_not_make_the_store_unopenable() {
    let dir = tempfile::tempdir().unwrap();
    let id = ChatId::new("c1").unwrap();
    {
        let store = open(dir.path());
        store.create_chat(&id, &record("t"), b"base").unwrap();
        store.flush().unwrap();
    }
    // What a start on a full disk leaves behind: sled began its snapshot, could not write it,
    // and its next open takes the empty file for the newest snapshot ("corrupted data").
    // (Named for a later log position than any snapshot sled wrote, as a start after more
    // writes names it.)
    let unfinished = dir
        .path()
        .join(format!("snap.{:016X}.generating", 1u64 << 40));
    std::fs::write(&unfinished, b"").unwrap();
    let store = open(dir.path());
    assert!(store.load_chat(&id).unwrap().is_some());
    assert!(!unfinished.exists());
}
