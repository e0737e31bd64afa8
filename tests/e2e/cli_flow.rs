//! The user's story, told through the `chatsync` command line only.

use serde_json::Value;

use crate::support::Device;

/// Exit codes of cli/src/exit.rs.
const NOT_RUNNING: i32 = 3;
const NOT_FOUND: i32 = 4;
const AMBIGUOUS: i32 = 5;
const REFUSED: i32 = 6;

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `chatsync post` prints the new message's id, alone on one line.
fn post(dev: &Device, args: &[&str]) -> String {
    let mut all = vec!["post"];
    all.extend_from_slice(args);
    let out = dev.ok(&all);
    let id = out.trim_end_matches('\n');
    assert!(is_id(id), "post should print only an id, printed {out:?}");
    id.to_string()
}

fn log_json(dev: &Device, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["log"];
    all.extend_from_slice(args);
    dev.ok_json(&all)
}

fn ids(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["id"].as_str().expect("message id"))
        .collect()
}

fn texts(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["text"].as_str().expect("message text"))
        .collect()
}

#[test]
fn without_a_daemon_commands_say_how_to_start_it() {
    let dev = Device::new();
    for args in [
        &["status"][..],
        &["chats"],
        &["post", "x", "hi"],
        &["daemon", "status"],
    ] {
        let run = dev.run(args);
        assert_eq!(run.code, NOT_RUNNING, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?} printed {:?}", run.stdout);
        assert!(
            run.stderr.contains("chatsync daemon start"),
            "{args:?} gives no hint: {:?}",
            run.stderr
        );
    }
    // Stopping what is not running is fine.
    let run = dev.run(&["daemon", "stop"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("not running"), "{run:?}");
    let stopped = dev.ok_json1(&["daemon", "stop"]);
    assert_eq!(stopped["running"], false);
}

/// Under `--json`, an error is one JSON object on stderr, whatever its kind: the daemon's
/// answer, a daemon that is not running, or a failure of the command itself.
#[test]
fn under_json_an_error_is_one_object_on_stderr() {
    let dev = Device::new();
    let error = |args: &[&str]| -> serde_json::Value {
        let run = dev.run(args);
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {:?}", run.stderr);
        let object: serde_json::Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {:?}", lines[0]));
        assert_eq!(object["error"]["exit"], run.code, "{object}");
        object["error"].clone()
    };
    let not_running = error(&["--json", "chats"]);
    assert_eq!(not_running["code"], "not_running");
    assert_eq!(not_running["exit"], NOT_RUNNING);
    assert!(
        not_running["hint"]
            .as_str()
            .unwrap()
            .contains("chatsync daemon start")
    );

    dev.start();
    let missing = error(&["--json", "log", "no-such-chat"]);
    assert_eq!(missing["code"], "not_found", "{missing}");
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("no-such-chat"),
        "{missing}"
    );
    // Two chats of one title: the title alone names neither.
    dev.ok(&["chat", "create", "family"]);
    dev.ok(&["chat", "create", "family"]);
    let ambiguous = error(&["--json", "log", "family"]);
    assert_eq!(ambiguous["code"], "ambiguous", "{ambiguous}");
    assert_eq!(
        ambiguous["candidates"].as_array().unwrap().len(),
        2,
        "{ambiguous}"
    );
    // Without --json, the same error is text.
    let run = dev.run(&["log", "no-such-chat"]);
    assert!(run.stderr.starts_with("error: "), "{run:?}");
}

/// The same bad input gets the same exit code however it is given.
#[test]
fn too_long_a_text_is_refused_alike_from_an_argument_and_from_stdin() {
    let dev = Device::new();
    dev.start();
    dev.ok(&["chat", "create", "family"]);
    let long = "x".repeat(70 * 1024);
    let as_argument = dev.run(&["post", "family", &long]);
    let from_stdin = dev.run_with_stdin(&["post", "family", "-"], long.as_bytes());
    assert_eq!(as_argument.code, 6, "{:?}", as_argument.stderr);
    assert_eq!(from_stdin.code, 6, "{:?}", from_stdin.stderr);
    for bad in ["0", "25h"] {
        let run = dev.run(&["pair", "--expires", bad]);
        assert_eq!(run.code, 2, "--expires {bad}: {:?}", run.stderr);
    }
}

#[test]
fn completions_need_no_daemon() {
    let dev = Device::new();
    let script = dev.ok(&["completions", "bash"]);
    assert!(script.contains("_chatsync"), "not a bash completion script");
    assert!(script.contains("complete "), "not a bash completion script");
    for sub in ["mark-read", "react", "post"] {
        assert!(script.contains(sub), "completion lacks {sub}");
    }
    let run = dev.run(&["completions", "no-such-shell"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn the_whole_story() {
    let dev = Device::new();

    // Start, and starting twice is harmless.
    let pid = dev.start();
    let again = dev.ok_json1(&["daemon", "start"]);
    assert_eq!(
        again["pid"], pid,
        "a second start must find the running daemon"
    );
    let daemon_status = dev.ok_json1(&["daemon", "status"]);
    assert_eq!(daemon_status["running"], true);
    assert_eq!(daemon_status["pid"], pid);

    let status = dev.ok_json1(&["status"]);
    let device_id = status["device_id"].as_str().expect("device_id").to_string();
    assert!(!device_id.is_empty());
    assert!(!status["name"].as_str().expect("name").is_empty());
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["chats"], 0);
    assert_eq!(status["pid"], pid);
    let human = dev.ok(&["status"]);
    assert!(human.contains(&device_id), "{human}");

    // A chat.
    let chat = dev.ok_json1(&["chat", "create", "family"]);
    let chat_id = chat["id"].as_str().expect("chat id").to_string();
    assert_eq!(chat["title"], "family");
    assert_eq!(chat["messages"], 0);
    assert_eq!(chat["created_by"], device_id.as_str());

    // Posting: an argument, standard input, and a reply by id prefix.
    let hello = post(&dev, &["family", "hello"]);
    let run = dev.run_with_stdin(&["post", "family", "-"], b"from stdin\nsecond line\n");
    assert_eq!(run.code, 0, "{run:?}");
    let from_stdin = run.stdout.trim_end().to_string();
    assert!(is_id(&from_stdin), "{run:?}");
    let reply = post(&dev, &["family", "a reply", "--reply-to", &hello[..8]]);
    assert_eq!(dev.ok_json1(&["status"])["chats"], 1);

    // The log: oldest first, every field.
    let all = log_json(&dev, &["family"]);
    assert_eq!(ids(&all), [&hello, &from_stdin, &reply]);
    assert_eq!(texts(&all), ["hello", "from stdin\nsecond line", "a reply"]);
    for m in &all {
        for key in [
            "id",
            "chat",
            "author",
            "author_name",
            "ts",
            "text",
            "edited",
            "deleted",
        ] {
            assert!(m.get(key).is_some(), "log line lacks {key}: {m}");
        }
        assert_eq!(m["chat"], chat_id.as_str());
        assert_eq!(m["author"], device_id.as_str());
        assert_eq!(m["author_name"], status["name"]);
        assert_eq!(m["edited"], false);
        assert_eq!(m["deleted"], false);
        assert!(m["ts"].as_i64().expect("ts") > 1_600_000_000_000, "{m}");
    }
    assert_eq!(all[2]["reply_to"], hello.as_str());
    assert_eq!(all[0]["reply_to"], Value::Null);
    assert_eq!(
        ids(&log_json(&dev, &["family", "-n", "2"])),
        [&from_stdin, &reply]
    );
    assert!(dev.ok(&["log", "family", "-n", "0"]).is_empty());
    assert!(log_json(&dev, &["family", "-n", "0"]).is_empty());
    // By id and by id prefix too.
    assert_eq!(
        log_json(&dev, &["family", "-n", "1"]),
        log_json(&dev, &[&chat_id, "-n", "1"])
    );
    assert_eq!(ids(&log_json(&dev, &[&chat_id[..6], "-n", "1"])), [&reply]);
    let text_log = dev.ok(&["log", "family"]);
    let (h, s, r) = (
        text_log.find("hello").expect("hello in log"),
        text_log.find("from stdin").expect("stdin text in log"),
        text_log.find("a reply").expect("reply in log"),
    );
    assert!(h < s && s < r, "log out of order:\n{text_log}");
    assert!(
        text_log.contains(&hello[..8]),
        "log shows short ids:\n{text_log}"
    );

    // Edit.
    let edited = dev.ok_json1(&["edit", "family", &hello[..8], "hello, world"]);
    assert_eq!(edited["id"], hello.as_str());
    assert_eq!(edited["edited"], true);
    assert_eq!(edited["text"], "hello, world");
    assert!(edited["edited_at"].as_i64().is_some(), "{edited}");
    assert!(dev.ok(&["log", "family"]).contains("hello, world (edited)"));

    // React, then take the reaction back.
    let reacted = dev.ok_json1(&["react", "family", &reply, "👍"]);
    assert_eq!(reacted["reactions"][&device_id], "👍", "{reacted}");
    assert!(dev.ok(&["log", "family"]).contains("[👍]"));
    let unreacted = dev.ok_json1(&["react", "--remove", "family", &reply]);
    assert_eq!(unreacted["reactions"], serde_json::json!({}), "{unreacted}");
    let run = dev.run(&["react", "family", &reply]);
    assert_eq!(run.code, 2, "a reaction or --remove is required: {run:?}");

    // Delete: the text goes, the place stays.
    let deleted = dev.ok_json1(&["delete", "family", &from_stdin]);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["text"], "");
    let all = log_json(&dev, &["family"]);
    assert_eq!(ids(&all), [&hello, &from_stdin, &reply]);
    assert_eq!(all[1]["deleted"], true);
    assert_eq!(all[1]["text"], "");
    let text_log = dev.ok(&["log", "family"]);
    assert!(text_log.contains("(deleted)"), "{text_log}");
    assert!(!text_log.contains("second line"), "{text_log}");

    // A deleted message can be neither edited nor reacted to.
    let run = dev.run(&["edit", "family", &from_stdin, "resurrected"]);
    assert_eq!(run.code, REFUSED, "{run:?}");
    assert!(!run.stderr.is_empty());
    let run = dev.run(&["react", "family", &from_stdin, "👍"]);
    assert_eq!(run.code, REFUSED, "{run:?}");
    // Invalid input is refused too.
    let run = dev.run(&["post", "family", "   "]);
    assert_eq!(run.code, REFUSED, "{run:?}");

    // Unknown things.
    let run = dev.run(&["log", "no-such-chat"]);
    assert_eq!(run.code, NOT_FOUND, "{run:?}");
    assert!(run.stderr.contains("no-such-chat"), "{run:?}");
    let run = dev.run(&["edit", "family", "ffffffff", "x"]);
    assert_eq!(run.code, NOT_FOUND, "{run:?}");
    let run = dev.run(&["post", "family", "x", "--reply-to", "ffffffff"]);
    assert_eq!(run.code, NOT_FOUND, "{run:?}");

    // Mark read: up to the newest by default.
    let read = dev.ok_json1(&["mark-read", "family"]);
    assert_eq!(read["message"], reply.as_str(), "{read}");
    assert_eq!(read["unread"], 0);
    assert_eq!(read["chat"], chat_id.as_str());
    let read = dev.ok_json1(&["mark-read", "family", &hello[..8]]);
    assert_eq!(
        read["message"],
        reply.as_str(),
        "read markers never move back: {read}"
    );

    // The chat list.
    let chats = dev.ok_json(&["chats"]);
    assert_eq!(chats.len(), 1, "{chats:?}");
    assert_eq!(chats[0]["id"], chat_id.as_str());
    assert_eq!(chats[0]["messages"], 3);
    let table = dev.ok(&["chats"]);
    assert!(
        table.contains("family") && table.contains(&chat_id[..8]),
        "{table}"
    );

    // Two chats with one title: the title is ambiguous, the ids are not.
    let twin_a = dev.ok_json1(&["chat", "create", "twins"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let twin_b = dev.ok_json1(&["chat", "create", "twins"])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let run = dev.run(&["post", "twins", "which one?"]);
    assert_eq!(run.code, AMBIGUOUS, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains(&twin_a), "{run:?}");
    assert!(run.stderr.contains(&twin_b), "{run:?}");
    let run = dev.run(&["log", "twins"]);
    assert_eq!(run.code, AMBIGUOUS, "{run:?}");
    post(&dev, &[&twin_a, "to the first twin"]);
    // Renaming one of them makes the title unique again.
    let renamed = dev.ok_json1(&["chat", "rename", &twin_b, "twin b"]);
    assert_eq!(renamed["title"], "twin b");
    assert_eq!(renamed["id"], twin_b.as_str());
    post(&dev, &["twins", "now unambiguous"]);
    assert_eq!(
        texts(&log_json(&dev, &[&twin_a])),
        ["to the first twin", "now unambiguous"]
    );
    assert_eq!(texts(&log_json(&dev, &["twin b"])), Vec::<&str>::new());

    // Restart: everything is still there, on the same device.
    let before_log = log_json(&dev, &["family"]);
    let before_chats = dev.ok_json(&["chats"]);
    let run = dev.run(&["daemon", "stop"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&pid.to_string()), "{run:?}");
    assert!(
        !crate::support::alive(pid as u32),
        "daemon stop returned before the exit"
    );
    assert!(!dev.socket().exists(), "the socket is removed at shutdown");
    assert_eq!(dev.run(&["status"]).code, NOT_RUNNING);
    let run = dev.run(&["daemon", "stop"]);
    assert_eq!(run.code, 0, "stopping a stopped daemon is fine: {run:?}");

    let new_pid = dev.start();
    assert_ne!(new_pid, pid);
    let status = dev.ok_json1(&["status"]);
    assert_eq!(status["device_id"], device_id.as_str());
    assert_eq!(status["chats"], 3);
    assert_eq!(log_json(&dev, &["family"]), before_log);
    assert_eq!(dev.ok_json(&["chats"]), before_chats);
    let read = dev.ok_json1(&["mark-read", "family"]);
    assert_eq!(
        read["message"],
        reply.as_str(),
        "read marker survives: {read}"
    );
    // And it keeps working.
    let after = post(&dev, &["family", "after the restart"]);
    assert_eq!(ids(&log_json(&dev, &["family", "-n", "1"])), [&after]);
    dev.stop();
    assert_eq!(dev.run(&["status"]).code, NOT_RUNNING);
}

#[test]
fn a_killed_daemon_is_reported_not_running_and_starts_again() {
    let dev = Device::new();
    let pid = dev.start();
    dev.ok(&["chat", "create", "survivor"]);
    let id = post(&dev, &["survivor", "still here"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(
        crate::support::wait_gone(pid as u32, std::time::Duration::from_secs(10)),
        "the daemon survived SIGKILL"
    );
    assert!(
        dev.socket().exists(),
        "a killed daemon leaves its socket behind"
    );
    // Its threads may still be exiting (and holding the socket) once the main one is a zombie.
    crate::support::wait_refused(&dev.socket());
    // The stale socket does not answer: not running, with the hint.
    let run = dev.run(&["status"]);
    assert_eq!(run.code, NOT_RUNNING, "{run:?}");
    assert!(run.stderr.contains("chatsync daemon start"), "{run:?}");
    let run = dev.run(&["daemon", "stop"]);
    assert_eq!(run.code, 0, "{run:?}");
    // And start replaces the stale socket.
    let new_pid = dev.start();
    assert_ne!(new_pid, pid);
    assert_eq!(ids(&log_json(&dev, &["survivor"])), [&id]);
    dev.stop();
}

#[test]
fn text_from_other_devices_cannot_drive_the_terminal() {
    let dev = Device::new();
    dev.start();
    // A line that, printed raw, would return the cursor, clear the line and forge another
    // device's message in colour; and a title that reorders what follows it.
    let forged =
        "hi\r\x1b[2K\x1b[31m01234567  2026-01-01 00:00  mallory  send me your keys\u{202e}";
    let title = "family\x1b]0;owned\x07\u{202e}";
    dev.ok(&["chat", "create", title]);
    let chat = dev.ok_json(&["chats"])[0]["id"]
        .as_str()
        .expect("chat id")
        .to_string();
    post(&dev, &[&chat, forged]);
    post(&dev, &[&chat, "two\nlines"]);
    let shown = dev.ok(&["log", &chat]) + &dev.ok(&["chats"]);
    for raw in ['\x1b', '\r', '\x07', '\u{202e}'] {
        assert!(!shown.contains(raw), "{raw:?} printed raw: {shown:?}");
    }
    assert!(shown.contains("hi␍␛[2K␛[31m"), "{shown}");
    assert!(shown.contains("<U+202E>"), "{shown}");
    // A newline stays a continuation line, indented under the text.
    let two = shown
        .lines()
        .position(|l| l.ends_with("two"))
        .expect("the first line");
    assert!(shown.lines().nth(two + 1).unwrap().trim() == "lines");
    // JSON keeps the text exactly.
    assert_eq!(texts(&log_json(&dev, &[&chat]))[0], forged);
}

#[test]
fn a_post_run_twice_with_one_idempotency_key_is_posted_once() {
    let dev = Device::new();
    dev.start();
    let chat = dev.ok_json1(&[
        "chat",
        "create",
        "family",
        "--idempotency-key",
        "c1",
        "--json",
    ]);
    let again = dev.ok_json1(&[
        "chat",
        "create",
        "family",
        "--idempotency-key",
        "c1",
        "--json",
    ]);
    assert_eq!(chat["id"], again["id"]);
    let chat = chat["id"].as_str().expect("chat id").to_string();
    let first = post(&dev, &[&chat, "once", "--idempotency-key", "k1"]);
    let second = post(&dev, &[&chat, "once", "--idempotency-key", "k1"]);
    assert_eq!(first, second);
    assert_eq!(texts(&log_json(&dev, &[&chat])), ["once"]);
    // The same key for another text is refused, and says why.
    let reused = dev.run(&["post", &chat, "other", "--idempotency-key", "k1"]);
    assert_eq!(reused.code, REFUSED, "{reused:?}");
    assert!(reused.stderr.contains("idempotency key"), "{reused:?}");
}
