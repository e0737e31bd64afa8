//! The joiner's proof that it holds a ticket's secret, and the invite id both sides derive
//! from it.
//!
//! The secret itself never crosses the network. The proof is
//! `HMAC-SHA256(secret, "chatsync-pair-v1" || inviter device id || joiner device id)`, so it is
//! bound to both ends of the Noise-authenticated connection it travels over: a device that
//! relays it to the inviter from its own connection has a different device id, and the
//! inviter's check fails. The invite id is a hash of the secret, so that the inviter can look
//! an invite up without the secret being sent, and nobody can work back from it.

use hmac::{Hmac, KeyInit, Mac};
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use super::ticket::SECRET_BYTES;

/// Domain separation: this HMAC means "pairing, version 1" and nothing else.
const DOMAIN: &[u8] = b"chatsync-pair-v1";
pub const INVITE_ID_BYTES: usize = 16;
pub const PROOF_BYTES: usize = 32;

pub type InviteId = [u8; INVITE_ID_BYTES];

/// The id of the invite a secret belongs to: the first 16 bytes of SHA-256 of the secret.
pub fn invite_id(secret: &[u8; SECRET_BYTES]) -> InviteId {
    let digest = Sha256::digest(secret);
    let mut id = [0u8; INVITE_ID_BYTES];
    id.copy_from_slice(&digest[..INVITE_ID_BYTES]);
    id
}

fn mac(secret: &[u8; SECRET_BYTES], inviter: &PeerId, joiner: &PeerId) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail; the fallback is never used.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(DOMAIN);
    // Length-prefixed, so that no two pairs of ids give the same input.
    for id in [inviter.to_bytes(), joiner.to_bytes()] {
        mac.update(&[id.len() as u8]);
        mac.update(&id);
    }
    mac
}

/// The joiner's proof for this pair of devices.
pub fn proof(secret: &[u8; SECRET_BYTES], inviter: &PeerId, joiner: &PeerId) -> [u8; PROOF_BYTES] {
    let tag = mac(secret, inviter, joiner).finalize().into_bytes();
    let mut out = [0u8; PROOF_BYTES];
    out.copy_from_slice(&tag);
    out
}

/// Whether `proof` is right for this secret and pair of devices, compared in constant time.
pub fn check(secret: &[u8; SECRET_BYTES], inviter: &PeerId, joiner: &PeerId, proof: &[u8]) -> bool {
    mac(secret, inviter, joiner).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn a_proof_checks_only_for_its_secret_and_both_devices() {
        let (inviter, joiner, other) = (peer(), peer(), peer());
        let secret = [3u8; SECRET_BYTES];
        let p = proof(&secret, &inviter, &joiner);
        assert!(check(&secret, &inviter, &joiner, &p));
        // Another secret, a relayed proof (another joiner), swapped roles.
        assert!(!check(&[4u8; SECRET_BYTES], &inviter, &joiner, &p));
        assert!(!check(&secret, &inviter, &other, &p));
        assert!(!check(&secret, &joiner, &inviter, &p));
        // Damaged or cut proofs.
        let mut bad = p;
        bad[31] ^= 1;
        assert!(!check(&secret, &inviter, &joiner, &bad));
        assert!(!check(&secret, &inviter, &joiner, &p[..31]));
        assert!(!check(&secret, &inviter, &joiner, &[]));
    }

    #[test]
    fn invite_ids_depend_on_the_secret() {
        assert_ne!(
            invite_id(&[1u8; SECRET_BYTES]),
            invite_id(&[2u8; SECRET_BYTES])
        );
        assert_eq!(
            invite_id(&[1u8; SECRET_BYTES]),
            invite_id(&[1u8; SECRET_BYTES])
        );
    }
}
