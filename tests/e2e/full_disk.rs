//! A full disk, as a user meets it: the home on a small tmpfs (mounted for the test; without
//! root the tests say so and pass). Writes are refused with their own exit code and resume
//! when space is freed; with the reserve turned off, the disk fills under the store itself,
//! and `chatsync daemon stop` still stops the daemon, which starts again with everything once
//! space is freed.

use std::{io::Write, path::Path, process::Command, time::Duration};

use crate::support::{Device, alive};

/// The CLI's exit codes (cli/src/exit.rs).
const STORAGE: i32 = 7;
const STORAGE_FULL: i32 = 11;

/// A tmpfs mounted over an (empty) directory for the test, unmounted after it.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn over(dir: &Path, mib: u64) -> Option<Mounted> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Mounted(dir.to_path_buf())),
            other => {
                eprintln!("skipped: cannot mount a tmpfs (needs root): {other:?}");
                None
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// A device whose home is a tmpfs of `mib` MiB, keeping `reserve_mb` free.
fn device_on_tmpfs(mib: u64, reserve_mb: u64) -> Option<(Device, Mounted)> {
    let dev = Device::new();
    let mounted = Mounted::over(dev.home(), mib)?;
    // The mount hides the config `Device::new` wrote: write it again, with the reserve.
    let config = format!(
        "[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmdns = false\n\n[store]\ncache_mb = 1\nreserve_mb = {reserve_mb}\n"
    );
    std::fs::write(dev.home().join("config.toml"), config).unwrap();
    Some((dev, mounted))
}

/// Fills the disk of `dir` until at most `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a_u8; 64 * 1024];
    loop {
        let st = nix::sys::statvfs::statvfs(dir).unwrap();
        #[allow(clippy::useless_conversion)]
        let free = u64::from(st.blocks_available()) * u64::from(st.fragment_size());
        if free <= leave {
            break;
        }
        let n = (free - leave).min(block.len() as u64) as usize;
        if file.write_all(&block[..n]).is_err() {
            break;
        }
    }
    path
}

fn chat_id(dev: &Device) -> String {
    dev.ok_json1(&["chat", "create", "family", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_nearly_full_disk_refuses_writes_with_its_own_code_until_space_is_freed() {
    let Some((dev, _mounted)) = device_on_tmpfs(64, 8) else {
        return;
    };
    dev.start();
    let chat = chat_id(&dev);
    dev.ok(&["post", &chat, "before"]);
    let filler = fill(dev.home(), 4 << 20);
    std::thread::sleep(Duration::from_millis(300));
    let refused = dev.run(&["post", &chat, "refused"]);
    assert_eq!(refused.code, STORAGE_FULL, "{refused:?}");
    assert!(refused.stderr.contains("nearly full"), "{refused:?}");
    let status = dev.ok(&["status"]);
    assert!(status.contains("DISK FULL"), "{status}");
    // Reads work.
    assert!(dev.ok(&["log", &chat]).contains("before"));
    std::fs::remove_file(filler).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    dev.ok(&["post", &chat, "after"]);
    let log = dev.ok(&["log", &chat]);
    assert!(log.contains("after") && !log.contains("refused"), "{log}");
    dev.stop();
}

#[test]
fn stop_finishes_on_a_disk_filled_under_the_store_and_nothing_is_lost() {
    let Some((dev, _mounted)) = device_on_tmpfs(64, 0) else {
        return;
    };
    let pid = dev.start();
    let chat = chat_id(&dev);
    dev.ok(&["post", &chat, "before"]);
    let filler = fill(dev.home(), 0);
    let big = "x".repeat(60_000);
    let mut failed = 0;
    for _ in 0..20 {
        let run = dev.run(&["post", &chat, &big]);
        if run.code != 0 && !alive(pid as u32) {
            panic!(
                "the daemon died on a full disk: {run:?}\n{}",
                dev.daemon_logs()
            );
        }
        if run.code != 0 {
            assert!(
                [STORAGE, STORAGE_FULL].contains(&run.code),
                "a write on a full disk failed otherwise: {run:?}\n{}",
                dev.daemon_logs()
            );
            failed += 1;
        }
    }
    assert!(failed > 0, "the disk never filled");
    // Stop finishes, whatever closing the store says.
    let stopped = std::time::Instant::now();
    let run = dev.run(&["daemon", "stop"]);
    eprintln!("stop on a full disk: {run:?} after {:?}", stopped.elapsed());
    crate::support::eventually_blocking("the daemon to exit", Duration::from_secs(20), || {
        !alive(pid as u32)
    });
    std::fs::remove_file(filler).unwrap();
    dev.start();
    let log = dev.ok(&["log", &chat]);
    assert!(log.contains("before"), "{log}\n{}", dev.daemon_logs());
    dev.ok(&["post", &chat, "after"]);
    dev.stop();
}
