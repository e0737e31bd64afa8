//! Attachments as a person sends them: `chatsync post --file` on one device, `chatsync log`
//! and `chatsync attachment get` on another it is paired with (a real ticket, over loopback).
//! Small files arrive by themselves, larger ones when asked for; saved files equal the
//! originals byte for byte and never replace a file; a file that is missing, standard input
//! without a name, and a file whose only holder is offline each fail the way the README says.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::{Device, Pairing, eventually_blocking, random_u64};

/// Exit codes of cli/src/exit.rs.
const FAILURE: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 9;

/// What the file read from standard input holds, and its BLAKE3 hash (computed apart from
/// chatsync, with the `blake3` crate 1.8.7: the e2e tests do not depend on it).
const PIPED: &[u8] = b"packed: sunscreen, towels, the good book\n";
const PIPED_BLAKE3: &str = "c0531ee5bd665636281f4413a821550244f23eb4ddf062efb99e08e0cf347a36";

/// How long a message or a file takes to cross loopback, at most.
const ARRIVES: Duration = Duration::from_secs(20);

/// `len` bytes that never repeat a pattern (splitmix64 from a random seed), so that a file
/// put together from the wrong pieces cannot compare equal.
fn noise(len: usize) -> Vec<u8> {
    let mut state = random_u64();
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Two started devices, `b` paired to `a` with a ticket from `chatsync pair`; `b_config` is
/// added to b's configuration before it starts.
fn paired(b_config: &str) -> (Device, Device) {
    let a = Device::new();
    a.start();
    let b = Device::new();
    if !b_config.is_empty() {
        let path = b.home().join("config.toml");
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(b_config);
        std::fs::write(&path, config).unwrap();
    }
    b.start();
    let pairing = Pairing::start(&a, &[]);
    let join = b.run(&["join", &pairing.ticket]);
    assert_eq!(join.code, 0, "{}\n{}", join.stderr, b.daemon_logs());
    pairing.joined();
    (a, b)
}

/// `chatsync post ...`, which must succeed and print only the new message's id.
fn post(dev: &Device, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut all = vec!["post"];
    all.extend_from_slice(args);
    let run = match stdin {
        Some(input) => dev.run_with_stdin(&all, input),
        None => dev.run(&all),
    };
    assert_eq!(run.code, 0, "chatsync {all:?} failed: {}", run.stderr);
    let id = run.stdout.trim_end_matches('\n');
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "post should print only an id, printed {:?}",
        run.stdout
    );
    id.to_string()
}

/// The message `id` as `chatsync log --json` shows it on `dev`, once it is there.
fn logged(dev: &Device, chat: &str, id: &str) -> Option<Value> {
    let run = dev.run(&["--json", "log", chat, "-n", "1000"]);
    if run.code == 4 {
        // The chat has not arrived yet.
        return None;
    }
    assert_eq!(run.code, 0, "chatsync log failed: {}", run.stderr);
    run.json_lines().into_iter().find(|m| m["id"] == id)
}

fn wait_logged(dev: &Device, chat: &str, id: &str) -> Value {
    let mut found = None;
    eventually_blocking(
        &format!("message {id} shows on the other device"),
        ARRIVES,
        || {
            found = logged(dev, chat, id);
            found.is_some()
        },
    );
    found.unwrap()
}

/// The attachment named `name` of a logged message.
fn attachment<'a>(msg: &'a Value, name: &str) -> &'a Value {
    msg["attachments"]
        .as_array()
        .unwrap_or_else(|| panic!("no attachments: {msg}"))
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no attachment {name}: {msg}"))
}

fn present(dev: &Device, chat: &str, id: &str, name: &str) -> bool {
    logged(dev, chat, id).is_some_and(|m| attachment(&m, name)["present"] == true)
}

/// The names in a directory, sorted (dot files included: a temporary file left behind shows).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts that the file at `path` holds `expected`, without printing megabytes when not.
fn assert_bytes(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got.len(), expected.len(), "{}: wrong size", path.display());
    if let Some(at) = got.iter().zip(expected).position(|(g, e)| g != e) {
        panic!("{}: differs from the original at byte {at}", path.display());
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn files_posted_on_one_device_are_saved_on_another_and_never_overwrite() {
    // b fetches by itself only files up to 1 MiB: the photo waits until it is asked for.
    let (a, b) = paired("\n[attachments]\nauto_fetch_mib = 1\n");
    let files = TempDir::new().unwrap();
    let photo_bytes = noise(3_000_007);
    let notes_bytes = b"passports\nchargers\nthe blue towel\n".to_vec();
    let photo = write(files.path(), "photo.jpg", &photo_bytes);
    let notes = write(files.path(), "notes.txt", &notes_bytes);

    // a: a chat, a message with two files, and a file from a pipe with no text.
    let chat = a.ok_json1(&["chat", "create", "trip"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let holiday = post(
        &a,
        &[
            &chat,
            "holiday",
            "--file",
            photo.to_str().unwrap(),
            "--file",
            notes.to_str().unwrap(),
        ],
        None,
    );
    let piped = post(
        &a,
        &[&chat, "--file", "-", "--name", "from-stdin.txt"],
        Some(PIPED),
    );

    // On a: the files as posted, all here.
    let on_a = logged(&a, &chat, &holiday).unwrap();
    assert_eq!(on_a["text"], "holiday");
    let listed: Vec<(&str, u64, &str, bool)> = on_a["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap(),
                x["size"].as_u64().unwrap(),
                x["media_type"].as_str().unwrap(),
                x["present"] == true,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("photo.jpg", 3_000_007, "image/jpeg", true),
            ("notes.txt", notes_bytes.len() as u64, "text/plain", true),
        ],
        "{on_a}"
    );
    let on_a_piped = logged(&a, &chat, &piped).unwrap();
    assert_eq!(on_a_piped["text"], "", "{on_a_piped}");
    let piped_on_a = attachment(&on_a_piped, "from-stdin.txt");
    assert_eq!(piped_on_a["size"], PIPED.len() as u64);
    assert_eq!(piped_on_a["media_type"], "text/plain");
    // The hash is BLAKE3 of the bytes.
    assert_eq!(piped_on_a["hash"], PIPED_BLAKE3, "{on_a_piped}");

    // b: both messages arrive; the small files follow by themselves.
    let on_b = wait_logged(&b, &chat, &holiday);
    assert_eq!(on_b["text"], "holiday");
    wait_logged(&b, &chat, &piped);
    eventually_blocking("notes.txt arrives on b by itself", ARRIVES, || {
        present(&b, &chat, &holiday, "notes.txt")
    });
    eventually_blocking("from-stdin.txt arrives on b by itself", ARRIVES, || {
        present(&b, &chat, &piped, "from-stdin.txt")
    });
    let on_b = logged(&b, &chat, &holiday).unwrap();
    assert_eq!(
        attachment(&on_b, "photo.jpg")["present"],
        false,
        "a 2.9 MiB file was fetched unasked with auto_fetch_mib = 1: {on_b}"
    );
    // Every device names the same bytes.
    for name in ["photo.jpg", "notes.txt"] {
        let (x, y) = (attachment(&on_a, name), attachment(&on_b, name));
        for key in ["hash", "size", "name", "media_type"] {
            assert_eq!(x[key], y[key], "{name}: {key} differs between a and b");
        }
    }
    let photo_hash = attachment(&on_a, "photo.jpg")["hash"].as_str().unwrap();
    let notes_hash = attachment(&on_a, "notes.txt")["hash"].as_str().unwrap();
    assert_eq!(photo_hash.len(), 64, "{photo_hash}");
    assert_ne!(photo_hash, notes_hash);

    // b's log, as a person reads it: the files under the text, the photo not here yet.
    let text = b.ok(&["log", &chat]);
    let lines: Vec<&str> = text.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with(&holiday[..8]))
        .unwrap_or_else(|| panic!("no line for {holiday}:\n{text}"));
    assert!(lines[head].ends_with("holiday"), "{text}");
    assert_eq!(
        lines[head + 1].trim(),
        "📎 photo.jpg (2.9 MiB, image/jpeg) — not on this device",
        "{text}"
    );
    assert_eq!(
        lines[head + 2].trim(),
        format!("📎 notes.txt ({} B, text/plain)", notes_bytes.len()),
        "{text}"
    );
    // A file without text takes the text's place.
    let stdin_line = lines
        .iter()
        .find(|l| l.starts_with(&piped[..8]))
        .unwrap_or_else(|| panic!("no line for {piped}:\n{text}"));
    assert!(
        stdin_line.ends_with(&format!(
            "📎 from-stdin.txt ({} B, text/plain)",
            PIPED.len()
        )),
        "{text}"
    );

    // b saves the message's files: the photo is fetched from a, then both are written.
    let out = TempDir::new().unwrap();
    let dir = out.path().to_str().unwrap();
    let saved = b.run(&["attachment", "get", &chat, &holiday[..8], "--out", dir]);
    assert_eq!(saved.code, 0, "{}\n{}", saved.stderr, b.daemon_logs());
    let (first_photo, first_notes) = (out.path().join("photo.jpg"), out.path().join("notes.txt"));
    assert_eq!(
        saved.stdout,
        format!("{}\n{}\n", first_photo.display(), first_notes.display())
    );
    assert_eq!(listing(out.path()), ["notes.txt", "photo.jpg"]);
    assert_bytes(&first_photo, &photo_bytes);
    assert_bytes(&first_notes, &notes_bytes);
    let on_b = logged(&b, &chat, &holiday).unwrap();
    assert_eq!(attachment(&on_b, "photo.jpg")["present"], true, "{on_b}");
    let text = b.ok(&["log", &chat]);
    assert!(!text.contains("not on this device"), "{text}");
    assert!(
        text.contains("📎 photo.jpg (2.9 MiB, image/jpeg)"),
        "{text}"
    );

    // Again: new names, and the files already saved are left alone.
    let before = std::fs::metadata(&first_photo).unwrap();
    let again = b.run(&["attachment", "get", &chat, &holiday, "--out", dir]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout,
        format!(
            "{}\n{}\n",
            out.path().join("photo (1).jpg").display(),
            out.path().join("notes (1).txt").display()
        )
    );
    assert_eq!(
        listing(out.path()),
        ["notes (1).txt", "notes.txt", "photo (1).jpg", "photo.jpg"]
    );
    assert_bytes(&out.path().join("photo (1).jpg"), &photo_bytes);
    assert_bytes(&out.path().join("notes (1).txt"), &notes_bytes);
    let after = std::fs::metadata(&first_photo).unwrap();
    assert_eq!(
        (
            before.ino(),
            before.mtime(),
            before.mtime_nsec(),
            before.len()
        ),
        (after.ino(), after.mtime(), after.mtime_nsec(), after.len()),
        "the first photo.jpg was touched"
    );
    assert_bytes(&first_photo, &photo_bytes);

    // One file by its place, as JSON: its path, hash and size.
    let one = b.ok_json1(&[
        "attachment",
        "get",
        &chat,
        &holiday,
        "--out",
        dir,
        "--index",
        "1",
    ]);
    assert_eq!(
        one,
        serde_json::json!({
            "path": out.path().join("notes (2).txt").to_str().unwrap(),
            "hash": notes_hash,
            "size": notes_bytes.len(),
        })
    );
    assert_bytes(&out.path().join("notes (2).txt"), &notes_bytes);

    // The piped file, saved with its hash.
    let piped_saved = b.ok_json1(&["attachment", "get", &chat, &piped, "--out", dir]);
    assert_eq!(piped_saved["hash"], PIPED_BLAKE3, "{piped_saved}");
    assert_eq!(piped_saved["size"], PIPED.len() as u64);
    assert_bytes(&out.path().join("from-stdin.txt"), PIPED);
    assert_eq!(listing(out.path()).len(), 6, "{:?}", listing(out.path()));
}

#[test]
fn bad_files_post_nothing_and_a_file_whose_only_holder_is_gone_cannot_be_fetched() {
    // b with the default configuration: files up to 16 MiB come by themselves.
    let (a, b) = paired("");
    let files = TempDir::new().unwrap();
    let photo_bytes = noise(3_000_007);
    let video_bytes = noise(17 * 1024 * 1024 + 5);
    let photo = write(files.path(), "photo.jpg", &photo_bytes);
    let video = write(files.path(), "video.mp4", &video_bytes);
    let chat = a.ok_json1(&["chat", "create", "clips"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = post(&a, &[&chat, "before anything went wrong"], None);
    let blobs_before = a.ok_json1(&["status"])["attachments"]["blobs"].clone();
    assert_eq!(blobs_before, 0, "{blobs_before}");

    // A file that does not exist: a clear message, and nothing posted or uploaded, not even
    // the file named before it.
    let fresh = write(files.path(), "fresh.txt", b"never uploaded");
    let missing = a.run(&[
        "post",
        &chat,
        "look",
        "--file",
        fresh.to_str().unwrap(),
        "--file",
        "/does/not/exist",
    ]);
    assert_eq!(missing.code, FAILURE, "{missing:?}");
    assert!(missing.stdout.is_empty(), "{missing:?}");
    assert!(
        missing.stderr.contains("/does/not/exist") && missing.stderr.contains("No such file"),
        "{}",
        missing.stderr
    );
    // Standard input without a name: a usage error.
    let unnamed = a.run_with_stdin(&["post", &chat, "--file", "-"], PIPED);
    assert_eq!(unnamed.code, USAGE, "{unnamed:?}");
    assert!(unnamed.stdout.is_empty(), "{unnamed:?}");
    assert!(unnamed.stderr.contains("--name"), "{}", unnamed.stderr);
    let ids: Vec<Value> = a
        .ok_json(&["log", &chat])
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [first.as_str()], "a failed post posted something");
    assert_eq!(
        a.ok_json1(&["status"])["attachments"]["blobs"],
        blobs_before,
        "a failed post uploaded a file"
    );

    // A 2.9 MiB photo comes to b by itself; a 17 MiB video does not.
    let clip = post(
        &a,
        &[
            &chat,
            "the clip",
            "--file",
            photo.to_str().unwrap(),
            "--file",
            video.to_str().unwrap(),
        ],
        None,
    );
    wait_logged(&b, &chat, &clip);
    eventually_blocking("photo.jpg arrives on b by itself", ARRIVES, || {
        present(&b, &chat, &clip, "photo.jpg")
    });
    let on_b = logged(&b, &chat, &clip).unwrap();
    assert_eq!(attachment(&on_b, "video.mp4")["present"], false, "{on_b}");
    let text = b.ok(&["log", &chat]);
    assert!(
        text.contains("📎 video.mp4 (17.0 MiB, video/mp4) — not on this device"),
        "{text}"
    );
    assert!(
        text.contains("📎 photo.jpg (2.9 MiB, image/jpeg)")
            && !text.contains("photo.jpg (2.9 MiB, image/jpeg) — not on this device"),
        "{text}"
    );

    // a, the only device with the video, stops.
    a.stop();
    eventually_blocking("b sees that a is gone", ARRIVES, || {
        b.ok_json(&["peers"]).iter().all(|p| p["connected"] != true)
    });
    let out = TempDir::new().unwrap();
    let dir = out.path().to_str().unwrap();
    let gone = b.run(&["attachment", "get", &chat, &clip, "--out", dir]);
    assert_eq!(gone.code, UNREACHABLE, "{gone:?}");
    assert!(gone.stdout.is_empty(), "{gone:?}");
    assert!(
        gone.stderr.contains("no connected device has it"),
        "{}",
        gone.stderr
    );
    assert!(
        listing(out.path()).is_empty(),
        "a failed get left files: {:?}",
        listing(out.path())
    );
    // What is here is saved without a's help.
    let here = b.run(&[
        "attachment",
        "get",
        &chat,
        &clip,
        "--out",
        dir,
        "--index",
        "0",
    ]);
    assert_eq!(here.code, 0, "{here:?}");
    assert_eq!(listing(out.path()), ["photo.jpg"]);
    assert_bytes(&out.path().join("photo.jpg"), &photo_bytes);

    // Once a is back, the video comes when asked.
    a.start();
    let mut last = None;
    eventually_blocking("b fetches the video once a is back", ARRIVES, || {
        let run = b.run(&[
            "attachment",
            "get",
            &chat,
            &clip,
            "--out",
            dir,
            "--index",
            "1",
        ]);
        let ok = run.code == 0;
        last = Some(run);
        ok
    });
    let fetched = last.unwrap();
    assert_eq!(
        fetched.stdout.trim_end(),
        out.path().join("video.mp4").to_str().unwrap(),
        "{fetched:?}"
    );
    assert_bytes(&out.path().join("video.mp4"), &video_bytes);
    assert_eq!(listing(out.path()), ["photo.jpg", "video.mp4"]);
}
