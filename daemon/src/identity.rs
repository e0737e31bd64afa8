//! The device identity: an Ed25519 key pair created on first start and kept in the data
//! directory (mode 0600). Its public key, in libp2p's peer-id text form, is the device id, so the
//! same id names the device in chats, in the roster and on the network.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context, bail};
use chatsync_model::DeviceId;
use libp2p::identity::Keypair;

pub struct Identity {
    pub keypair: Keypair,
    pub device_id: DeviceId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the key from `path`, creating it (atomically, mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Identity> {
        match fs::read(path) {
            Ok(bytes) => {
                let mode = fs::metadata(path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bail!(
                        "{} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    );
                }
                let keypair = Keypair::from_protobuf_encoding(&bytes)
                    .with_context(|| format!("{} is not a valid device key", path.display()))?;
                Self::from_keypair(keypair)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn create(path: &Path) -> anyhow::Result<Identity> {
        let keypair = Keypair::generate_ed25519();
        let bytes = keypair
            .to_protobuf_encoding()
            .context("cannot encode the device key")?;
        let tmp = path.with_extension("key.tmp");
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Self::from_keypair(keypair)
    }

    fn from_keypair(keypair: Keypair) -> anyhow::Result<Identity> {
        let device_id = DeviceId::new(keypair.public().to_peer_id().to_base58())?;
        Ok(Identity { keypair, device_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reloads_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.device_id, b.device_id);
        assert!(a.device_id.as_str().starts_with("12D3KooW"));
    }

    #[test]
    fn refuses_a_world_readable_or_corrupt_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Identity::load_or_create(&path).is_err());
        fs::write(&path, b"garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Identity::load_or_create(&path).is_err());
    }
}
