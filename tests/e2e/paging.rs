//! Chats longer than one API page (1000 messages): `chatsync log -n N` pages backwards and
//! still shows exactly the last N, oldest first.

use std::collections::HashSet;

use futures_util::StreamExt;

use crate::support::Device;

const MESSAGES: usize = 1100;

#[tokio::test(flavor = "current_thread")]
async fn log_pages_through_long_chats() {
    let mut dev = Device::new();
    dev.spawn_daemon();
    let client = dev.client();
    let chat = client.create_chat("long").await.expect("create").id;
    let posted: Vec<String> = futures_util::stream::iter(0..MESSAGES)
        .map(|i| {
            let client = client.clone();
            let chat = chat.clone();
            async move {
                client
                    .post(&chat, &format!("message {i:04}"), None)
                    .await
                    .expect("post")
                    .id
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(posted.iter().collect::<HashSet<_>>().len(), MESSAGES);

    // The reference order: the API, paged by hand.
    let newest = client.messages(&chat, 1000, None).await.expect("page");
    let oldest = client
        .messages(&chat, 1000, Some(&newest[0].id))
        .await
        .expect("page");
    assert_eq!(newest.len(), 1000);
    assert_eq!(oldest.len(), MESSAGES - 1000);
    let all: Vec<&str> = oldest
        .iter()
        .chain(&newest)
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        MESSAGES,
        "pages overlap"
    );
    let timestamps: Vec<i64> = oldest.iter().chain(&newest).map(|m| m.ts).collect();
    assert!(timestamps.is_sorted(), "not oldest first");

    let run = |n: usize| -> Vec<String> {
        dev.ok_json(&["log", "long", "-n", &n.to_string()])
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(run(1050), all[MESSAGES - 1050..]);
    assert_eq!(
        run(5000),
        all,
        "asking for more than there is gives everything"
    );
    assert_eq!(run(1000), all[MESSAGES - 1000..]);
    let default = dev.ok(&["log", "long"]);
    assert_eq!(default.lines().count(), 20, "log shows 20 by default");
    assert!(default.contains(&all[MESSAGES - 1][..8]), "{default}");
    assert_eq!(dev.ok_json1(&["status"])["chats"], 1);
    let listed = client.chat(&chat).await.expect("chat");
    assert_eq!(listed.messages, MESSAGES as u64);
}
