//! Where chatsync keeps its files.
//!
//! With a home directory (`--home DIR` or `CHATSYNC_HOME`), everything lives under it, which lets
//! several devices run side by side on one machine (tests do exactly that). Without one, the
//! platform's directories are used (XDG on Linux). The CLI and the daemon resolve paths with the
//! same code so that they always agree on where the socket is.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Path overrides, as given by flags or environment variables.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PathArgs {
    /// Keep config, data, logs and the API socket under DIR (for several devices on one machine).
    #[arg(long, env = "CHATSYNC_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Path of the local API socket.
    #[arg(long, env = "CHATSYNC_SOCKET", global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Resolved locations of every file chatsync uses.
#[derive(Clone, Debug)]
pub struct Paths {
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub socket: PathBuf,
}

impl Paths {
    pub fn resolve(args: &PathArgs) -> anyhow::Result<Paths> {
        let mut paths = match &args.home {
            Some(home) => {
                let home = absolute(home)?;
                Paths {
                    config_file: home.join("config.toml"),
                    data_dir: home.join("data"),
                    runtime_dir: home.join("run"),
                    socket: home.join("run").join("api.sock"),
                }
            }
            None => {
                let dirs = directories::ProjectDirs::from("", "", "chatsync")
                    .context("cannot find a home directory; pass --home DIR")?;
                let runtime_dir = dirs
                    .runtime_dir()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| dirs.data_dir().join("run"));
                Paths {
                    config_file: dirs.config_dir().join("config.toml"),
                    data_dir: dirs.data_dir().to_path_buf(),
                    socket: runtime_dir.join("api.sock"),
                    runtime_dir,
                }
            }
        };
        if let Some(socket) = &args.socket {
            let socket = absolute(socket)?;
            paths.runtime_dir = socket
                .parent()
                .map(Path::to_path_buf)
                .context("socket path has no parent directory")?;
            paths.socket = socket;
        }
        if paths.socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is longer than the {MAX_SOCKET_PATH} bytes Unix sockets allow; \
                 pass a shorter --socket or --home",
                paths.socket.display()
            );
        }
        Ok(paths)
    }

    /// The sled database directory.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// The device's private key.
    pub fn identity_file(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }

    /// Log file written by `chatsync daemon start`.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join("chatsyncd.log")
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve path {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_puts_everything_under_it() {
        let args = PathArgs {
            home: Some(PathBuf::from("/tmp/h")),
            socket: None,
        };
        let p = Paths::resolve(&args).unwrap();
        assert_eq!(p.socket, PathBuf::from("/tmp/h/run/api.sock"));
        assert_eq!(p.store_dir(), PathBuf::from("/tmp/h/data/store"));
        assert_eq!(p.config_file, PathBuf::from("/tmp/h/config.toml"));
    }

    #[test]
    fn socket_override_wins() {
        let args = PathArgs {
            home: Some(PathBuf::from("/tmp/h")),
            socket: Some(PathBuf::from("/tmp/s/x.sock")),
        };
        let p = Paths::resolve(&args).unwrap();
        assert_eq!(p.socket, PathBuf::from("/tmp/s/x.sock"));
        assert_eq!(p.runtime_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let args = PathArgs {
            home: Some(PathBuf::from(format!("/tmp/{}", "x".repeat(120)))),
            socket: None,
        };
        let err = Paths::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
    }
}
