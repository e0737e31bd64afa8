//! The secrets of a backup repository and what they do to each object.
//!
//! A repository has a 32-byte master secret and a post-quantum age identity (`age::pq`), both
//! made at `backup init` and kept in two places only: on this device (`backup.json` in its
//! data directory, readable by its user alone) and in the repository's `config` object,
//! encrypted with the user's passphrase or recovery key (age's scrypt recipient). Nothing in
//! the repository is readable, or can be forged, without one of the two.
//!
//! - **Objects** are encrypted to the identity with age. Before that, each is padded (Padmé:
//!   at most 12% larger) so that sizes say little about what is inside.
//! - **Names** are an HMAC-SHA256 of the object's contents under the master secret: equal
//!   contents get one name (a chat that did not change is not written again), a name says
//!   nothing of its contents, and an object moved, swapped or replaced under a name is found
//!   out when read (its contents no longer give its name).
//! - **Manifests** carry an HMAC of their own under the master secret (see `repository.rs`).

use age::secrecy::{ExposeSecret, SecretString};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use super::BackupError;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Version of the `config` object and of the local copy of the secrets.
const KEYS_FORMAT: u32 = 1;
/// Bytes of a recovery key (shown as 64 hexadecimal digits).
pub const RECOVERY_KEY_BYTES: usize = 32;

/// A repository's secrets.
#[derive(Clone)]
pub struct RepositoryKeys {
    /// Random id of the repository (hex), written in every manifest.
    pub repository: String,
    master: [u8; 32],
    identity: std::sync::Arc<age::pq::Identity>,
    /// The identity's public half (deriving it takes a key generation's work: done once).
    recipient: std::sync::Arc<age::pq::Recipient>,
}

impl std::fmt::Debug for RepositoryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryKeys")
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// The secrets as they are written down (encrypted in `config`, or in the local file).
#[derive(Serialize, Deserialize)]
struct Written {
    format: u32,
    repository: String,
    master: String,
    identity: String,
}

impl RepositoryKeys {
    pub fn generate() -> RepositoryKeys {
        Self::with_identity(
            hex::encode(rand::random::<[u8; 16]>()),
            rand::random(),
            age::pq::Identity::generate(),
        )
    }

    fn with_identity(
        repository: String,
        master: [u8; 32],
        identity: age::pq::Identity,
    ) -> RepositoryKeys {
        RepositoryKeys {
            repository,
            master,
            recipient: std::sync::Arc::new(identity.to_public()),
            identity: std::sync::Arc::new(identity),
        }
    }

    fn written(&self) -> Written {
        Written {
            format: KEYS_FORMAT,
            repository: self.repository.clone(),
            master: hex::encode(self.master),
            identity: self.identity.to_string().expose_secret().to_string(),
        }
    }

    fn from_written(written: Written) -> Result<RepositoryKeys, BackupError> {
        let damaged = |what: &str| BackupError::Damaged(format!("the repository key: {what}"));
        if written.format != KEYS_FORMAT {
            return Err(damaged("written by another version"));
        }
        let master: [u8; 32] = hex::decode(&written.master)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| damaged("bad master secret"))?;
        let identity: age::pq::Identity = written
            .identity
            .parse()
            .map_err(|_| damaged("bad identity"))?;
        Ok(Self::with_identity(written.repository, master, identity))
    }

    /// The secrets for this device's own file (JSON; the file is the caller's to protect).
    pub fn to_local(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.written()).unwrap_or_default()
    }

    pub fn from_local(bytes: &[u8]) -> Result<RepositoryKeys, BackupError> {
        let written: Written = serde_json::from_slice(bytes)
            .map_err(|e| BackupError::Damaged(format!("the local backup settings: {e}")))?;
        Self::from_written(written)
    }

    /// The `config` object: the secrets encrypted with `passphrase` (age, scrypt).
    pub fn wrap(&self, passphrase: &SecretString) -> Result<Vec<u8>, BackupError> {
        let recipient = age::scrypt::Recipient::new(passphrase.clone());
        let plain = serde_json::to_vec(&self.written()).unwrap_or_default();
        age::encrypt(&recipient, &plain).map_err(|e| BackupError::Internal(e.to_string()))
    }

    /// The secrets from a `config` object. A passphrase that does not open it is
    /// [`BackupError::WrongKey`].
    pub fn unwrap(config: &[u8], passphrase: &SecretString) -> Result<RepositoryKeys, BackupError> {
        let mut identity = age::scrypt::Identity::new(passphrase.clone());
        // The work factor age::scrypt::Recipient writes; a config asking for more is refused
        // before the work is done.
        identity.set_max_work_factor(20);
        let plain = age::decrypt(&identity, config).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed => {
                BackupError::WrongKey
            }
            other => BackupError::Damaged(format!("the repository's config: {other}")),
        })?;
        let written: Written = serde_json::from_slice(&plain)
            .map_err(|e| BackupError::Damaged(format!("the repository's config: {e}")))?;
        Self::from_written(written)
    }

    /// HMAC-SHA256 under the master secret, domain-separated.
    pub fn mac(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.master)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The name of an object holding `payload`.
    pub fn object_name(&self, payload: &[u8]) -> String {
        hex::encode(self.mac("object", payload))
    }

    /// An object as it is written: `payload` padded, then encrypted.
    pub fn seal(&self, payload: &[u8]) -> Result<Vec<u8>, BackupError> {
        age::encrypt(self.recipient.as_ref(), &pad(payload))
            .map_err(|e| BackupError::Internal(e.to_string()))
    }

    /// An object's payload from what was read under `name`: decrypted, unpadded, and checked
    /// against its name.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, BackupError> {
        let payload = self.decrypt(&format!("object {name}"), sealed)?;
        if self.object_name(&payload) != name {
            return Err(BackupError::Damaged(format!(
                "object {name} holds something else than its name says (replaced or moved)"
            )));
        }
        Ok(payload)
    }

    /// What [`seal`](Self::seal) made, decrypted and unpadded, without the name check:
    /// manifests are named by their number and carry their own HMAC (`repository.rs`). `what`
    /// names it in errors.
    pub fn decrypt(&self, what: &str, sealed: &[u8]) -> Result<Vec<u8>, BackupError> {
        let padded = age::decrypt(self.identity.as_ref(), sealed)
            .map_err(|e| BackupError::Damaged(format!("{what} does not decrypt: {e}")))?;
        unpad(&padded).ok_or_else(|| BackupError::Damaged(format!("{what} is malformed")))
    }
}

/// A new recovery key: random, shown once as 64 hexadecimal digits in groups of four.
pub fn new_recovery_key() -> String {
    let bytes: [u8; RECOVERY_KEY_BYTES] = rand::random();
    let digits = hex::encode(bytes);
    digits
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A recovery key as typed (any case, with or without separators), as the passphrase it is.
pub fn recovery_passphrase(typed: &str) -> Result<SecretString, BackupError> {
    let digits: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if digits.len() != RECOVERY_KEY_BYTES * 2 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(BackupError::WrongKey);
    }
    Ok(SecretString::from(format!("chatsync-recovery-{digits}")))
}

/// `payload` with its length in front, padded to a Padmé length: sizes leak at most
/// O(log log n) bits, for at most 12% more bytes.
fn pad(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() + 8;
    let target = padme(len);
    let mut out = Vec::with_capacity(target);
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(target, 0);
    out
}

fn unpad(padded: &[u8]) -> Option<Vec<u8>> {
    let (len, rest) = padded.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_be_bytes(*len)).ok()?;
    (len <= rest.len()).then(|| rest[..len].to_vec())
}

fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros();
    let s = usize::BITS - e.leading_zeros();
    let last_bits = e.saturating_sub(s);
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trips_and_grows_at_most_twelve_percent() {
        for len in [0usize, 1, 7, 8, 100, 1000, 4097, 65_536, 1_000_003] {
            let payload = vec![7u8; len];
            let padded = pad(&payload);
            assert_eq!(unpad(&padded).unwrap(), payload);
            assert!(
                padded.len() as f64 <= (len + 8) as f64 * 1.12 + 1.0,
                "{len}"
            );
        }
        assert_eq!(unpad(&[0, 0, 0, 0, 0, 0, 0, 9, 1]), None);
    }

    #[test]
    fn objects_open_only_under_their_own_name_and_key() {
        let keys = RepositoryKeys::generate();
        let sealed = keys.seal(b"chat").unwrap();
        let name = keys.object_name(b"chat");
        assert_eq!(keys.open(&name, &sealed).unwrap(), b"chat");
        assert!(matches!(
            keys.open(&keys.object_name(b"other"), &sealed),
            Err(BackupError::Damaged(_))
        ));
        let mut flipped = sealed.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 1;
        assert!(keys.open(&name, &flipped).is_err());
        let other = RepositoryKeys::generate();
        assert!(other.open(&name, &sealed).is_err());
    }

    #[test]
    fn the_config_opens_with_its_passphrase_only() {
        let keys = RepositoryKeys::generate();
        let pass = SecretString::from("correct horse".to_string());
        let config = keys.wrap(&pass).unwrap();
        let opened = RepositoryKeys::unwrap(&config, &pass).unwrap();
        assert_eq!(opened.repository, keys.repository);
        assert_eq!(opened.mac("x", b"y"), keys.mac("x", b"y"));
        let wrong = SecretString::from("battery staple".to_string());
        assert!(matches!(
            RepositoryKeys::unwrap(&config, &wrong),
            Err(BackupError::WrongKey)
        ));
        let local = RepositoryKeys::from_local(&keys.to_local()).unwrap();
        assert_eq!(local.object_name(b"a"), keys.object_name(b"a"));
    }

    #[test]
    fn recovery_keys_read_back_however_they_are_typed() {
        let key = new_recovery_key();
        assert_eq!(key.len(), 64 + 15);
        let a = recovery_passphrase(&key).unwrap();
        let b = recovery_passphrase(&key.replace('-', " ").to_uppercase()).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert!(recovery_passphrase("abc").is_err());
    }
}
