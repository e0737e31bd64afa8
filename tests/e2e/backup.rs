//! Backups as a user makes them: post, edit and react; back up to a folder; lose the home;
//! restore on a fresh device and see every chat exactly as it was; then pair with a device that
//! kept its chats and converge with nothing twice. A wrong passphrase and a damaged backup get
//! their own exit codes. A daemon killed during a backup or a restore finishes it on the next
//! run.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Device, Pairing, eventually_blocking};

/// Exit codes of cli/src/exit.rs.
const WRONG_KEY: i32 = 12;
const DAMAGED: i32 = 13;
const PASSPHRASE: &[u8] = b"correct horse battery\n";

fn started() -> Device {
    let d = Device::new();
    d.start();
    d
}

fn chat_id(dev: &Device, title: &str) -> String {
    dev.ok_json1(&["chat", "create", title, "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn logs(dev: &Device, chats: &[String]) -> Vec<Vec<Value>> {
    chats
        .iter()
        .map(|c| dev.ok_json(&["log", c, "-n", "1000", "--json"]))
        .collect()
}

#[test]
fn a_lost_device_comes_back_from_its_backup_and_pairs_again() {
    let phone = started();
    let family = chat_id(&phone, "family");
    let work = chat_id(&phone, "work");
    let mut work_posts = Vec::new();
    for n in 0..5 {
        phone.ok(&["post", &family, &format!("family {n}")]);
        work_posts.push(
            phone
                .ok(&["post", &work, &format!("work {n}")])
                .trim()
                .to_string(),
        );
    }
    let first = phone.ok(&["post", &family, "typo"]).trim().to_string();
    phone.ok(&["edit", &family, &first, "no typo"]);
    phone.ok(&["react", &work, &work_posts[1], "👍"]);
    let chats = vec![family.clone(), work.clone()];

    // Backups to a folder: the folder holds nothing readable.
    let folder = tempfile::tempdir().unwrap();
    let target = folder.path().join("chatsync");
    let target = target.to_str().unwrap();
    let init = phone.run_with_stdin(
        &["backup", "init", "--to", target, "--passphrase-stdin"],
        PASSPHRASE,
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let made = phone.ok_json1(&["backup", "now", "--json"]);
    assert_eq!(made["seq"], 1);
    assert_eq!(made["chats"], 2);
    assert_eq!(made["messages"], 11);
    // A few posts later, only what changed is written.
    phone.ok(&["post", &work, "work 5"]);
    let again = phone.ok_json1(&["backup", "now", "--json"]);
    assert_eq!(
        again["objects_written"], 2,
        "the new post's chunk and its chat's index page: {again}"
    );
    assert!(again["bytes_written"].as_u64() < made["bytes_written"].as_u64());
    let listed = phone.ok_json(&["backup", "list", "--json"]);
    assert_eq!(listed.len(), 2);
    let before = logs(&phone, &chats);

    // A new device (the phone's home is gone as far as it knows): a wrong passphrase is refused
    // with its own exit code; the right one brings every chat back, identical.
    let new_phone = started();
    let wrong = new_phone.run_with_stdin(
        &["backup", "restore", target, "--passphrase-stdin"],
        b"battery horse staple\n",
    );
    assert_eq!(wrong.code, WRONG_KEY, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("wrong passphrase"),
        "{}",
        wrong.stderr
    );
    let restored = new_phone.run_with_stdin(
        &["--json", "backup", "restore", target, "--passphrase-stdin"],
        PASSPHRASE,
    );
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert_eq!(restored.json_lines()[0]["restored"], 2);
    assert_eq!(logs(&new_phone, &chats), before);
    assert_ne!(
        new_phone.ok_json1(&["status", "--json"])["device_id"],
        phone.ok_json1(&["status", "--json"])["device_id"],
        "a restored device keeps its own identity"
    );
    // It goes on backing up to the same repository, and verifies it.
    assert_eq!(new_phone.ok_json1(&["backup", "now", "--json"])["seq"], 3);
    let verified = new_phone.ok_json1(&["backup", "verify", "--json"]);
    assert_eq!(verified["snapshots"], 3);

    // Paired with the phone that kept its chats, they converge: nothing twice.
    let mut pairing = Pairing::start(&phone, &[]);
    let join = new_phone.run(&["join", &pairing.ticket]);
    assert_eq!(join.code, 0, "{}", join.stderr);
    let (code, stderr) = pairing.wait(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    phone.ok(&["post", &family, "after the restore"]);
    new_phone.ok(&["post", &work, "from the new phone"]);
    eventually_blocking(
        "both devices hold the same chats",
        Duration::from_secs(20),
        || {
            let (a, b) = (logs(&phone, &chats), logs(&new_phone, &chats));
            a == b && a[0].len() == 7 && a[1].len() == 7
        },
    );

    // A damaged object is found by a verification, with its own exit code.
    let objects = target.to_string() + "/objects";
    let mut files: Vec<_> = walk(std::path::Path::new(&objects));
    files.sort();
    let victim = &files[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(victim, bytes).unwrap();
    let damaged = new_phone.run(&["backup", "verify"]);
    assert_eq!(damaged.code, DAMAGED, "{}", damaged.stderr);
    assert!(damaged.stderr.contains("damaged"), "{}", damaged.stderr);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_backup_to_an_s3_compatible_store_restores_on_a_new_device() {
    let (key, secret) = (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    );
    let auth = format!("{key},{secret}");
    let Some(server) =
        chatsync_testkit::rclone::Rclone::serve("s3", &["--auth-key", &auth], &["chats"])
    else {
        return;
    };
    let target = format!(
        "s3://{key}:{secret}@chats/phone?endpoint=http://127.0.0.1:{}",
        server.port
    );
    let phone = started();
    let family = chat_id(&phone, "family");
    for n in 0..3 {
        phone.ok(&["post", &family, &format!("family {n}")]);
    }
    let init = phone.run_with_stdin(
        &["backup", "init", "--to", &target, "--passphrase-stdin"],
        PASSPHRASE,
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    // The credentials stay on the device: nothing the CLI prints shows the secret.
    assert!(!init.stdout.contains(secret), "{}", init.stdout);
    assert!(!phone.ok(&["status"]).contains(secret));
    assert_eq!(phone.ok_json1(&["backup", "now", "--json"])["chats"], 1);

    let new_phone = started();
    let restored = new_phone.run_with_stdin(
        &["--json", "backup", "restore", &target, "--passphrase-stdin"],
        PASSPHRASE,
    );
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    let chats = vec![family];
    assert_eq!(logs(&new_phone, &chats), logs(&phone, &chats));
}

/// Objects in a folder repository.
fn object_count(target: &std::path::Path) -> usize {
    walk(&target.join("objects")).len()
}

/// Waits (at most a minute) until `done` holds, checking every few milliseconds; returns
/// whether it did before `finished` did.
fn before_it_ends(done: impl Fn() -> bool, finished: &mut std::process::Child) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        if finished.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn a_backup_and_a_restore_killed_part_way_are_finished_by_the_next_run() {
    const CHATS: usize = 60;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Each chat's data in an object of its own, so that there is a middle to kill in.
    let mut phone = Device::new();
    std::fs::write(
        phone.home().join("config.toml"),
        "[backup]\nobject_kib = 1\n",
    )
    .unwrap();
    phone.spawn_daemon();
    let client = phone.client();
    let chats: Vec<String> = rt.block_on(async {
        let mut chats = Vec::new();
        for c in 0..CHATS {
            let chat = client.create_chat(&format!("chat {c}")).await.unwrap().id;
            for n in 0..5 {
                client
                    .post(&chat, &format!("post {n}"), None)
                    .await
                    .unwrap();
            }
            chats.push(chat);
        }
        chats
    });
    let folder = tempfile::tempdir().unwrap();
    let target = folder.path().join("chatsync");
    let target_text = target.to_str().unwrap();
    let init = phone.run_with_stdin(
        &["backup", "init", "--to", target_text, "--passphrase-stdin"],
        PASSPHRASE,
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    phone.ok(&["backup", "now"]);
    rt.block_on(async {
        for chat in &chats {
            client
                .post(chat, "after the first backup", None)
                .await
                .unwrap();
        }
    });

    // The daemon is killed while `backup now` is writing: the first snapshot stays whole,
    // and the next backup writes only what the killed one did not.
    let written = object_count(&target);
    let mut backing_up = phone
        .command(&["backup", "now"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        before_it_ends(|| object_count(&target) > written + 1, &mut backing_up),
        "the backup ended before it could be killed"
    );
    phone.kill_daemon();
    assert!(!backing_up.wait().unwrap().success());
    phone.spawn_daemon();
    assert_eq!(phone.ok_json(&["backup", "list", "--json"]).len(), 1);
    let next = phone.ok_json1(&["backup", "now", "--json"]);
    assert_eq!(next["seq"], 2);
    assert!(
        next["objects_written"].as_u64().unwrap() < CHATS as u64,
        "{next}"
    );
    assert_eq!(
        phone.ok_json1(&["backup", "verify", "--json"])["snapshots"],
        2
    );

    // A new device's daemon is killed during the restore: the next restore brings the rest,
    // and every chat is as it was.
    let mut new_phone = Device::new();
    new_phone.spawn_daemon();
    let mut restoring = new_phone
        .command(&["backup", "restore", target_text, "--passphrase-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = restoring.stdin.take().unwrap();
        stdin.write_all(PASSPHRASE).unwrap();
    }
    let new_client = new_phone.client();
    let some_restored = || {
        rt.block_on(new_client.chats())
            .is_ok_and(|chats| !chats.is_empty())
    };
    assert!(
        before_it_ends(some_restored, &mut restoring),
        "the restore ended before it could be killed"
    );
    new_phone.kill_daemon();
    assert!(!restoring.wait().unwrap().success());
    new_phone.spawn_daemon();
    let partial = new_phone.ok_json(&["chats", "--json"]).len();
    assert!(
        partial > 0 && partial < CHATS,
        "{partial} chats after the kill"
    );
    let finished = new_phone.run_with_stdin(
        &[
            "--json",
            "backup",
            "restore",
            target_text,
            "--passphrase-stdin",
        ],
        PASSPHRASE,
    );
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let report = &finished.json_lines()[0];
    assert_eq!(
        report["restored"].as_u64().unwrap(),
        (CHATS - partial) as u64
    );
    assert_eq!(report["already_here"].as_u64().unwrap(), partial as u64);
    assert_eq!(logs(&new_phone, &chats), logs(&phone, &chats));
}
