//! `/v1/devices`: the roster over the API, its events, and its errors.

use chatsync_api::wire::DeviceJson;
use chatsync_testkit::TestDaemon;
use reqwest::StatusCode;
use serde_json::json;

/// A valid device id that is not this daemon's.
fn other_device_id() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_base58()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_routes_events_and_errors() {
    let d = TestDaemon::start().await;
    let me = d.status().await.device_id;
    let mut events = d.events("").await;

    let list: serde_json::Value = d.get("/devices").await.json(StatusCode::OK);
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    assert_eq!(list["devices"][0]["id"], me.as_str());
    assert_eq!(list["devices"][0]["this_device"], true);

    let other = other_device_id();
    let added: DeviceJson = d
        .post("/devices", json!({"id": other, "name": "laptop"}))
        .await
        .json(StatusCode::CREATED);
    assert_eq!(added.name, "laptop");
    assert!(added.trusted && !added.this_device);
    assert_eq!(added.added_by.as_deref(), Some(me.as_str()));
    let event = events.expect("device.added").await;
    assert_eq!(event["device"]["id"], other.as_str());

    // Adding again with the same name changes nothing and announces nothing.
    let same: DeviceJson = d
        .post("/devices", json!({"id": other, "name": "laptop"}))
        .await
        .json(StatusCode::CREATED);
    assert_eq!(same, added);

    // Without a name, the device is named after the end of its id.
    let third = other_device_id();
    let unnamed: DeviceJson = d
        .post("/devices", json!({"id": third}))
        .await
        .json(StatusCode::CREATED);
    assert!(third.ends_with(unnamed.name.trim_start_matches("device ")));
    events.expect("device.added").await;

    d.post("/devices", json!({"id": "12D3KooWnope"}))
        .await
        .error(StatusCode::BAD_REQUEST, "invalid");
    d.post("/devices", json!({"id": other, "extra": 1}))
        .await
        .error(StatusCode::BAD_REQUEST, "bad_json");

    let removed: DeviceJson = d
        .delete(&format!("/devices/{other}"))
        .await
        .json(StatusCode::OK);
    assert!(!removed.trusted && removed.removed_at.is_some());
    let event = events.expect("device.removed").await;
    assert_eq!(event["device"]["trusted"], false);
    d.post("/devices", json!({"id": other}))
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");
    d.delete(&format!("/devices/{me}"))
        .await
        .error(StatusCode::FORBIDDEN, "forbidden");
    d.delete("/devices/nobody")
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // The roster survives a restart.
    let d = d.restart().await;
    let list: serde_json::Value = d.get("/devices").await.json(StatusCode::OK);
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3);
    let other_entry = devices.iter().find(|x| x["id"] == other.as_str()).unwrap();
    assert_eq!(other_entry["trusted"], false);
    d.shutdown().await;
}
