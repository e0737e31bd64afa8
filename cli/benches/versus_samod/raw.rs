//! The floor under a samod catch-up: Automerge's sync protocol between two documents in
//! memory in the shape the samod side writes, with nothing around it (no network, no storage).
//! chatsync's chat shape is measured by `common::sync::raw_sync`, as `sync.rs` measures it.

use automerge::{Automerge, ObjType, ROOT, ReadDoc, transaction::Transactable};

use crate::common::{
    sync::{RawSync, until_quiet},
    text,
};

/// Sync of the samod side's chat (a list of maps {id, author, text, time}, one change per
/// message) with `n` messages into a copy holding only the empty list.
pub fn message_list(n: usize) -> RawSync {
    let mut a = Automerge::new();
    let mut tx = a.transaction();
    let list = tx.put_object(ROOT, "messages", ObjType::List).unwrap();
    tx.commit();
    let mut b = Automerge::load(&a.save()).unwrap();
    for i in 0..n {
        let mut tx = a.transaction();
        let m = tx.insert_object(&list, i, ObjType::Map).unwrap();
        tx.put(&m, "id", chatsync_daemon::engine::random_id())
            .unwrap();
        tx.put(
            &m,
            "author",
            "12D3KooWSamodBenchmarkAuthorAuthorAuthorAuthorAuthor",
        )
        .unwrap();
        tx.put(&m, "text", text(i)).unwrap();
        tx.put(&m, "time", chatsync_daemon::engine::now_ms())
            .unwrap();
        tx.commit();
    }
    let compressed = (a.save().len() - b.save().len()) as u64;
    let (time, bytes) = until_quiet(&mut a, &mut b);
    assert_eq!(b.length(&list), n, "the raw sync did not converge");
    RawSync {
        time,
        bytes,
        compressed,
    }
}
