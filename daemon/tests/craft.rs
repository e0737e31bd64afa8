//! What a paired device sends, made by hand: for the tests that play a device gone bad.

use automerge::sync::SyncDoc;
use chatsync_model::{
    ChatDoc, ChatId, Device,
    authorship::{self, Attestation},
};
use libp2p::identity::Keypair;

/// The sealed sync message that brings what `doc` wrote as `author` to a device holding exactly
/// `known` (a saved document), with an attestation of `author`'s newest change signed by
/// `signer`. Automerge's protocol runs against a copy of `known` in memory, and the message
/// that carries the new change is kept: the receiver has exactly that copy.
pub fn carrying(
    chat: &ChatId,
    known: &[u8],
    doc: &mut ChatDoc,
    author: &Device,
    signer: &Keypair,
) -> Vec<u8> {
    let mut mirror = automerge::AutoCommit::load(known).unwrap();
    let (mut mine, mut theirs) = (automerge::sync::State::new(), automerge::sync::State::new());
    let target = doc.heads();
    for _ in 0..8 {
        if let Some(bytes) = doc.generate_sync_message(&mut mine) {
            let message = automerge::sync::Message::decode(&bytes).unwrap();
            mirror
                .sync()
                .receive_sync_message(&mut theirs, message)
                .unwrap();
            if mirror.get_heads() == target {
                let (_, newest) = doc.newest_change_of(&author.actor).unwrap();
                let attestation = Attestation {
                    hash: newest,
                    signature: signer.sign(&authorship::statement(chat, &newest)).unwrap(),
                };
                return authorship::seal(&[attestation], &bytes);
            }
        }
        if let Some(message) = mirror.sync().generate_sync_message(&mut theirs) {
            doc.automerge_mut()
                .sync()
                .receive_sync_message(&mut mine, message)
                .unwrap();
        }
    }
    panic!("the protocol never carried the change");
}
