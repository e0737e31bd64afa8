//! `chatsyncd`: the chatsync daemon. All of it lives in the `chatsync-daemon` library.

fn main() -> std::process::ExitCode {
    chatsync_daemon::run()
}
