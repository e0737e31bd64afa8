//! Keys of the `docs` tree. Chat ids never contain a NUL byte, so `chat id, 0` is a prefix that
//! selects exactly one chat; `B` sorts before `C`, so the base comes before the chunks, and
//! big-endian sequence numbers keep chunks in write order.

use chatsync_model::ChatId;

const BASE: u8 = b'B';
const CHUNK: u8 = b'C';

#[derive(Debug, PartialEq, Eq)]
pub enum DocKey {
    Base,
    Chunk(u64),
}

pub fn prefix(id: &ChatId) -> Vec<u8> {
    let mut k = id.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub fn base(id: &ChatId) -> Vec<u8> {
    let mut k = prefix(id);
    k.push(BASE);
    k
}

pub fn chunks_prefix(id: &ChatId) -> Vec<u8> {
    let mut k = prefix(id);
    k.push(CHUNK);
    k
}

pub fn chunk(id: &ChatId, seq: u64) -> Vec<u8> {
    let mut k = chunks_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse(id: &ChatId, key: &[u8]) -> Option<DocKey> {
    let rest = key.strip_prefix(prefix(id).as_slice())?;
    match rest.split_first()? {
        (&BASE, []) => Some(DocKey::Base),
        (&CHUNK, seq) => Some(DocKey::Chunk(u64::from_be_bytes(seq.try_into().ok()?))),
        _ => None,
    }
}

/// Key of an attestation in the `attestations.v2` tree: `chat id, 0, actor, seq` (big-endian).
/// The sequence number is the last 8 bytes, so the actor needs no length.
pub fn attestation(id: &ChatId, actor: &[u8], seq: u64) -> Vec<u8> {
    let mut k = prefix(id);
    k.extend_from_slice(actor);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The actor and sequence number of an [`attestation`] key of chat `id`.
pub fn parse_attestation(id: &ChatId, key: &[u8]) -> Option<(Vec<u8>, u64)> {
    let rest = key.strip_prefix(prefix(id).as_slice())?;
    let (actor, seq) = rest.split_last_chunk::<8>()?;
    (!actor.is_empty()).then(|| (actor.to_vec(), u64::from_be_bytes(*seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort() {
        let id = ChatId::new("abc").unwrap();
        assert_eq!(parse(&id, &base(&id)), Some(DocKey::Base));
        assert_eq!(parse(&id, &chunk(&id, 7)), Some(DocKey::Chunk(7)));
        assert!(base(&id) < chunk(&id, 0));
        assert!(chunk(&id, 255) < chunk(&id, 256));
        let other = ChatId::new("abcd").unwrap();
        assert_eq!(parse(&id, &chunk(&other, 1)), None);
        assert!(!chunk(&other, 1).starts_with(&prefix(&id)));
    }
}
