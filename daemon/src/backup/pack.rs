//! What a chat's objects in a repository hold. A chat's *pack* is part of its document as the
//! store kept it (a whole copy, or the chunks written since the last backup, to append to it),
//! with the attestations that prove its changes and any evidence of an equivocation. Packs
//! travel in *bundles*: one object holds the packs of many chats, so that a backup writes (and
//! encrypts, and syncs to the disk) a few large objects rather than one per chat, and a chat's
//! entry names its packs by bundle and place.
//!
//! ```text
//! bundle: "CSb1", u32 n, then n times: u32 length, pack
//!
//! pack:
//! "CSk1"
//! u32 n, then n times: u16 actor length, actor, u64 seq, 32-byte hash, u16 length, signature
//! u32 n, then n times: u16 actor length, actor, u32 length, evidence
//! the document bytes (the rest)
//! ```
//!
//! Integers are big-endian. A pack is read only after its object was authenticated, but it is
//! still read with every length checked against its bounds.

use automerge::ChangeHash;
use chatsync_model::{
    authorship::{Attestation, MAX_ATTESTATIONS},
    equivocation::{MAX_BANS, MAX_EVIDENCE_BYTES},
};

use super::BackupError;
use crate::engine::{KeptAttestation, KeptEvidence};

const MAGIC: &[u8; 4] = b"CSk1";
const BUNDLE_MAGIC: &[u8; 4] = b"CSb1";
/// Most packs a bundle read may hold.
const MAX_BUNDLE_PACKS: usize = 1 << 20;
/// Longest actor id read (device ids are about 60 bytes).
const MAX_ACTOR_BYTES: usize = 1024;
/// Longest signature read (Ed25519's are 64 bytes).
const MAX_SIGNATURE_BYTES: usize = 1024;

/// A chat's pack, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pack {
    pub document: Vec<u8>,
    pub attestations: Vec<KeptAttestation>,
    pub evidence: Vec<KeptEvidence>,
}

pub fn encode(
    document: &[u8],
    attestations: &[KeptAttestation],
    evidence: &[KeptEvidence],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(document.len() + 256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(attestations.len() as u32).to_be_bytes());
    for kept in attestations {
        put_short(&mut out, &kept.actor);
        out.extend_from_slice(&kept.seq.to_be_bytes());
        out.extend_from_slice(&kept.attestation.hash.0);
        put_short(&mut out, &kept.attestation.signature);
    }
    out.extend_from_slice(&(evidence.len() as u32).to_be_bytes());
    for (actor, bytes) in evidence {
        put_short(&mut out, actor);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(document);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Pack, BackupError> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(damaged("not a chat's object"));
    }
    let count = r.u32()? as usize;
    if count > MAX_ATTESTATIONS {
        return Err(damaged("too many attestations"));
    }
    let mut attestations = Vec::with_capacity(count);
    for _ in 0..count {
        let actor = r.short(MAX_ACTOR_BYTES)?.to_vec();
        let seq = r.u64()?;
        let hash: [u8; 32] = r.take(32)?.try_into().map_err(|_| damaged("truncated"))?;
        let signature = r.short(MAX_SIGNATURE_BYTES)?.to_vec();
        attestations.push(KeptAttestation {
            actor,
            seq,
            attestation: Attestation {
                hash: ChangeHash(hash),
                signature,
            },
        });
    }
    let count = r.u32()? as usize;
    if count > MAX_BANS {
        return Err(damaged("too much evidence"));
    }
    let mut evidence = Vec::with_capacity(count);
    for _ in 0..count {
        let actor = r.short(MAX_ACTOR_BYTES)?.to_vec();
        let len = r.u32()? as usize;
        if len > MAX_EVIDENCE_BYTES {
            return Err(damaged("evidence too large"));
        }
        evidence.push((actor, r.take(len)?.to_vec()));
    }
    Ok(Pack {
        document: r.0.to_vec(),
        attestations,
        evidence,
    })
}

/// Packs gathered into one bundle.
#[derive(Debug, Default)]
pub struct Bundle {
    packs: Vec<Vec<u8>>,
    bytes: usize,
}

impl Bundle {
    /// Adds a pack; returns its place in the bundle.
    pub fn add(&mut self, pack: Vec<u8>) -> u32 {
        self.bytes += pack.len() + 4;
        self.packs.push(pack);
        (self.packs.len() - 1) as u32
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes + 8);
        out.extend_from_slice(BUNDLE_MAGIC);
        out.extend_from_slice(&(self.packs.len() as u32).to_be_bytes());
        for pack in &self.packs {
            out.extend_from_slice(&(pack.len() as u32).to_be_bytes());
            out.extend_from_slice(pack);
        }
        out
    }
}

/// The packs of a bundle, as written (each still to [`decode`]).
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Vec<u8>>, BackupError> {
    let mut r = Reader(bytes);
    if r.take(BUNDLE_MAGIC.len())? != BUNDLE_MAGIC {
        return Err(damaged("not a bundle of chats"));
    }
    let count = r.u32()? as usize;
    if count > MAX_BUNDLE_PACKS {
        return Err(damaged("too many chats in a bundle"));
    }
    let mut packs = Vec::with_capacity(count.min(r.0.len() / 4));
    for _ in 0..count {
        let len = r.u32()? as usize;
        packs.push(r.take(len)?.to_vec());
    }
    if !r.0.is_empty() {
        return Err(damaged("a bundle runs on past its last chat"));
    }
    Ok(packs)
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn damaged(why: &str) -> BackupError {
    BackupError::Damaged(format!("a chat's object: {why}"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BackupError> {
        if self.0.len() < n {
            return Err(damaged("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(
            bytes.try_into().map_err(|_| damaged("truncated"))?,
        ))
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(
            bytes.try_into().map_err(|_| damaged("truncated"))?,
        ))
    }

    fn short(&mut self, max: usize) -> Result<&'a [u8], BackupError> {
        let bytes = self.take(2)?;
        let len = u16::from_be_bytes(bytes.try_into().map_err(|_| damaged("truncated"))?) as usize;
        if len > max {
            return Err(damaged("a field is too long"));
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Pack {
        Pack {
            document: b"document bytes".to_vec(),
            attestations: vec![KeptAttestation {
                actor: b"device/1234".to_vec(),
                seq: 7,
                attestation: Attestation {
                    hash: ChangeHash([9; 32]),
                    signature: vec![1; 64],
                },
            }],
            evidence: vec![(b"device/5678".to_vec(), b"evidence".to_vec())],
        }
    }

    #[test]
    fn a_pack_reads_back_as_written() {
        let pack = sample();
        let bytes = encode(&pack.document, &pack.attestations, &pack.evidence);
        assert_eq!(decode(&bytes).unwrap(), pack);
        let empty = encode(b"", &[], &[]);
        assert_eq!(decode(&empty).unwrap().document, b"");
    }

    #[test]
    fn a_bundle_reads_back_as_written_and_every_cut_is_refused() {
        let mut bundle = Bundle::default();
        assert_eq!(bundle.add(b"first".to_vec()), 0);
        assert_eq!(bundle.add(Vec::new()), 1);
        assert_eq!(bundle.add(b"third".to_vec()), 2);
        let bytes = bundle.encode();
        assert_eq!(
            decode_bundle(&bytes).unwrap(),
            vec![b"first".to_vec(), Vec::new(), b"third".to_vec()]
        );
        for cut in 0..bytes.len() {
            assert!(decode_bundle(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_bundle(&longer).is_err());
        let mut many = bytes;
        many[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_bundle(&many).is_err());
    }

    #[test]
    fn every_cut_and_bad_count_is_refused() {
        let pack = sample();
        let bytes = encode(&pack.document, &pack.attestations, &pack.evidence);
        // Cut anywhere before the document: refused (after it, it is a shorter document).
        let header = bytes.len() - pack.document.len();
        for cut in 0..header {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut many = bytes.clone();
        many[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&many), Err(BackupError::Damaged(_))));
        let mut other = bytes;
        other[0] = b'X';
        assert!(decode(&other).is_err());
    }
}
