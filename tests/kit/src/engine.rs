//! An engine alone, without the network or the API: for tests of what the engine decides with
//! bytes from another device, handed to it directly.

use std::{path::Path, sync::Arc, time::Duration};

use chatsync_daemon::{
    engine::{Engine, EngineConfig},
    identity::Identity,
    store::Store,
};
use chatsync_model::{Device, DeviceId};

/// An engine on the store in `home` (made if new), under the device key there, writing under a
/// fresh actor, and keeping `reserve_bytes` free on the disk.
pub fn start_engine(home: &Path, name: &str, reserve_bytes: u64) -> (Arc<Engine>, DeviceId) {
    let store = Store::open(&home.join("store"), 4 << 20).expect("cannot open the store");
    let identity =
        Identity::load_or_create(&home.join("identity.key")).expect("cannot make an identity");
    let id = identity.device_id.clone();
    let session: [u8; 8] = rand::random();
    let device = Device::with_session(id.clone(), name, &session).unwrap();
    let config = EngineConfig {
        memory_budget_bytes: 64 << 20,
        idle_unload: Duration::from_secs(600),
        name_configured: true,
        reserve_bytes,
    };
    let engine = Engine::start(store, device, identity.keypair, config).unwrap();
    (engine, id)
}

/// Closes an engine nobody else holds (its store is released when this returns).
pub async fn close_engine(engine: Arc<Engine>) {
    let Ok(engine) = Arc::try_unwrap(engine) else {
        panic!("the engine is still shared");
    };
    engine
        .close()
        .await
        .expect("the engine did not close cleanly");
}
