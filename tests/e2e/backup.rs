//! Backups as a user makes them: post, edit and react; back up to a folder; lose the home;
//! restore on a fresh device and see every chat exactly as it was; then pair with a device that
//! kept its chats and converge with nothing twice. A wrong passphrase and a damaged backup get
//! their own exit codes.

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
    assert_eq!(again["objects_written"], 1, "{again}");
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
