//! `chatsync log --follow`: live messages and changes, and its end when the daemon stops.

use std::{
    collections::HashSet,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{Device, LineReader};

/// Longest wait for one line of the follower.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// A `chatsync log --follow` child, killed when dropped.
struct Follower {
    child: Child,
    lines: LineReader,
}

impl Follower {
    fn spawn(dev: &Device, args: &[&str]) -> Follower {
        let mut child = dev
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run chatsync log --follow");
        let stdout = child.stdout.take().expect("stdout is piped");
        Follower {
            child,
            lines: LineReader::new(stdout),
        }
    }

    fn next_json(&self) -> Value {
        let line = self
            .lines
            .next(LINE_TIMEOUT)
            .unwrap_or_else(|| panic!("no line from the follower within {LINE_TIMEOUT:?}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// Waits for the child to exit by itself; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("cannot poll the follower") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(dev: &Device, chat: &str, text: &str) -> String {
    dev.ok(&["post", chat, text]).trim().to_string()
}

#[test]
fn follow_shows_new_messages_and_edits_in_order() {
    let dev = Device::new();
    dev.start();
    dev.ok(&["chat", "create", "live"]);
    let old = post(&dev, "live", "before following");

    let follower = Follower::spawn(&dev, &["--json", "log", "live", "-n", "0", "--follow"]);
    // With -n 0 nothing is printed until something happens, so there is no sign of when the
    // follower is subscribed: post pings until one shows up, then ignore the rest of them.
    let mut pings = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        pings.insert(post(&dev, "live", &format!("ping {}", pings.len())));
        if let Some(line) = follower.lines.next(Duration::from_millis(200)) {
            let m: Value = serde_json::from_str(&line).expect("JSON line");
            let id = m["id"].as_str().expect("id");
            assert_ne!(id, old, "-n 0 must not show older messages");
            assert!(pings.contains(id), "unexpected line {line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never showed a message"
        );
    }

    let posted: Vec<String> = (1..=3)
        .map(|i| post(&dev, "live", &format!("live message {i}")))
        .collect();
    let edited = dev.ok_json1(&["edit", "live", &posted[1], "live message 2, edited"]);
    assert_eq!(edited["edited"], true);
    dev.ok(&["react", "live", &posted[2], "👍"]);

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = follower.next_json();
        let id = m["id"].as_str().expect("id").to_string();
        assert_ne!(id, old, "-n 0 must not show older messages");
        if pings.contains(&id) {
            continue;
        }
        seen.push(m);
    }
    let seen_ids: Vec<&str> = seen.iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(
        seen_ids,
        [&posted[0], &posted[1], &posted[2], &posted[1], &posted[2]]
    );
    // Each line says what happened: a reaction is not a new post.
    let events: Vec<&str> = seen
        .iter()
        .map(|m| m["event"].as_str().expect("event"))
        .collect();
    assert_eq!(
        events,
        ["created", "created", "created", "edited", "reaction"]
    );
    for (m, i) in seen.iter().zip(1..=3) {
        assert_eq!(m["text"], format!("live message {i}"));
        assert_eq!(m["edited"], false);
    }
    assert_eq!(seen[3]["text"], "live message 2, edited");
    assert_eq!(seen[3]["edited"], true);
    for key in ["chat", "author", "author_name", "ts", "deleted"] {
        assert!(seen[3].get(key).is_some(), "live line lacks {key}");
    }
}

#[test]
fn follow_hands_over_from_the_listing_without_duplicates() {
    let dev = Device::new();
    dev.start();
    dev.ok(&["chat", "create", "handover"]);
    let first = post(&dev, "handover", "one");
    let second = post(&dev, "handover", "two");

    let follower = Follower::spawn(&dev, &["--json", "log", "handover", "-n", "1", "--follow"]);
    // The listing is printed after the subscription is live: once it shows, nothing is missed.
    assert_eq!(follower.next_json()["id"], second.as_str());
    let third = post(&dev, "handover", "three");
    let m = follower.next_json();
    assert_eq!(m["id"], third.as_str(), "expected the new message, got {m}");
    assert_ne!(m["id"], first.as_str());
    let deleted = dev.ok_json1(&["delete", "handover", &second]);
    assert_eq!(deleted["deleted"], true);
    let m = follower.next_json();
    assert_eq!(m["id"], second.as_str());
    assert_eq!(m["deleted"], true);
    assert!(
        follower.lines.next(Duration::from_millis(300)).is_none(),
        "nothing else happened"
    );
}

#[test]
fn follow_exits_with_code_3_when_the_daemon_stops() {
    let dev = Device::new();
    dev.start();
    dev.ok(&["chat", "create", "ending"]);
    let only = post(&dev, "ending", "last words");
    let mut follower = Follower::spawn(&dev, &["--json", "log", "ending", "--follow"]);
    assert_eq!(follower.next_json()["id"], only.as_str());
    assert_eq!(
        follower.wait_exit(Duration::from_millis(200)),
        None,
        "follow must keep going"
    );

    dev.stop();
    let code = follower.wait_exit(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(3),
        "follow should exit with 3 (not running) when the daemon stops"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        follower.child.stderr.as_mut().expect("stderr is piped"),
        &mut stderr,
    )
    .expect("stderr");
    assert!(stderr.contains("daemon stopped"), "{stderr:?}");
}
