//! The web client: the chats in a browser, served by the daemon itself, off until the user
//! turns it on (`chatsync web enable`).
//!
//! The page (`assets/`, built into the binary) talks to the same routes as the local API
//! (`api::web_router`: the chat and message routes, devices, peers and pairing tickets; never
//! shutdown, backups, device removal or this module's own settings), so every write goes
//! through the engine and is answered once durable, exactly as for the CLI. What differs is who
//! may call them: a browser linked with a one-time link (`sessions.rs`), behind the checks of
//! `guard.rs` (Host, Origin, session, security headers).
//!
//! The server listens on loopback unless the user asks for more with `--allow-remote`: it
//! speaks plain HTTP, so on a network anyone on the path can read what it serves (see
//! docs/security.md).
//!
//! - `sessions.rs`: one-time links and the sessions they open.
//! - `guard.rs`: what every request passes.
//! - `pages.rs`: the app, the link pages, QR codes.
//! - `server.rs`: the HTTP server (timeouts, a cap on connections, ending them all at once).
//! - this file: turning the server on and off, and its settings (`web.json`).

mod guard;
mod pages;
mod server;
pub mod sessions;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{Router, extract::DefaultBodyLimit, routing::get};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use sessions::SessionInfo;
use sessions::Sessions;

use crate::{api::AppState, config::WebConfig};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "chatsync_session";

/// Why the web client could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    Invalid(String),
    /// The web client is off.
    #[error("the web client is off: turn it on with `chatsync web enable`")]
    Off,
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// What the web server's own handlers share.
pub struct WebState {
    pub sessions: Arc<Sessions>,
    /// The port it listens on (`Host` headers must name it).
    pub port: u16,
}

/// The settings `chatsync web enable` and `disable` keep (`web.json`); the config's `[web]`
/// gives them until then.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Settings {
    enabled: bool,
    listen: String,
    allow_remote: bool,
}

/// Where the web client stands.
#[derive(Clone, Debug)]
pub struct WebStatus {
    pub enabled: bool,
    /// The address it listens on, when on.
    pub listen: Option<SocketAddr>,
    /// The address to open in a browser, when on.
    pub url: Option<String>,
    pub allow_remote: bool,
    pub sessions: usize,
}

struct Running {
    /// The address asked for (port 0: any), and the one bound.
    requested: SocketAddr,
    address: SocketAddr,
    allow_remote: bool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The web client: its settings, its sessions, and its server while it runs.
pub struct Web {
    settings_file: PathBuf,
    defaults: WebConfig,
    sessions: Arc<Sessions>,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl Web {
    pub fn new(data_dir: &Path, defaults: WebConfig) -> Web {
        Web {
            settings_file: data_dir.join("web.json"),
            defaults,
            sessions: Arc::new(Sessions::load(data_dir)),
            running: tokio::sync::Mutex::new(None),
        }
    }

    fn settings(&self) -> Settings {
        std::fs::read(&self.settings_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| Settings {
                enabled: self.defaults.enabled,
                listen: self.defaults.listen.clone(),
                allow_remote: self.defaults.allow_remote,
            })
    }

    fn save(&self, settings: &Settings) -> Result<(), WebError> {
        let bytes = serde_json::to_vec_pretty(settings).unwrap_or_default();
        crate::files::write_private(&self.settings_file, &bytes)
            .map_err(|e| WebError::Invalid(format!("cannot keep the web settings: {e}")))
    }

    /// Starts the server at daemon start if the settings say it is on. A failure is logged:
    /// the daemon runs on without it.
    pub async fn start_if_enabled(&self, app: Arc<AppState>) {
        let settings = self.settings();
        if !settings.enabled {
            return;
        }
        let mut running = self.running.lock().await;
        if let Err(e) = self
            .start(&mut running, app, &settings.listen, settings.allow_remote)
            .await
        {
            tracing::error!(error = %e, "the web client could not start");
        }
    }

    /// Turns the web client on at `listen` (default: as before, or the config's), keeping
    /// that for the next starts. Listening on anything but loopback needs `allow_remote`.
    pub async fn enable(
        &self,
        app: Arc<AppState>,
        listen: Option<&str>,
        allow_remote: bool,
    ) -> Result<WebStatus, WebError> {
        // Held throughout, so that what is saved is what runs.
        let mut running = self.running.lock().await;
        let listen = listen.map_or_else(|| self.settings().listen, str::to_string);
        self.start(&mut running, app, &listen, allow_remote).await?;
        self.save(&Settings {
            enabled: true,
            listen,
            allow_remote,
        })?;
        drop(running);
        Ok(self.status().await)
    }

    /// Turns the web client off (sessions stay, for when it is turned on again).
    pub async fn disable(&self) -> Result<WebStatus, WebError> {
        let mut running = self.running.lock().await;
        if let Some(current) = running.take() {
            stop(current).await;
            tracing::info!("the web client is off");
        }
        self.sessions.close_links();
        let mut settings = self.settings();
        settings.enabled = false;
        self.save(&settings)?;
        drop(running);
        Ok(self.status().await)
    }

    /// Starts the server at `listen` in place of the one `running` (if any). A new address is
    /// bound before the old server stops, so that a failure leaves the old one serving.
    async fn start(
        &self,
        running: &mut Option<Running>,
        app: Arc<AppState>,
        listen: &str,
        allow_remote: bool,
    ) -> Result<(), WebError> {
        let address: SocketAddr = listen.parse().map_err(|_| {
            WebError::Invalid(format!(
                "{listen:?} is not an address and port like 127.0.0.1:7780"
            ))
        })?;
        if !address.ip().is_loopback() && !allow_remote {
            return Err(WebError::Invalid(format!(
                "{address} is reachable from other computers: the web client speaks plain \
                 HTTP, so anyone on the network path could read it. Add --allow-remote to do it \
                 all the same (see docs/security.md)"
            )));
        }
        if let Some(current) = running.as_mut() {
            let same_place =
                current.requested == address || (address.port() != 0 && current.address == address);
            if same_place {
                // Already there; only whether it may be reachable changes.
                current.allow_remote = allow_remote;
                return Ok(());
            }
        }
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            // The old server holds the port (moving from 127.0.0.1:7780 to 0.0.0.0:7780, say):
            // it stops first, and comes back if the new address cannot be had either.
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && running
                        .as_ref()
                        .is_some_and(|r| r.address.port() == address.port()) =>
            {
                let mut old = None;
                if let Some(current) = running.take() {
                    old = Some((current.requested.to_string(), current.allow_remote));
                    stop(current).await;
                }
                match tokio::net::TcpListener::bind(address).await {
                    Ok(listener) => listener,
                    Err(e) => {
                        if let Some((requested, old_remote)) = old {
                            let back =
                                Box::pin(self.start(running, app.clone(), &requested, old_remote));
                            if let Err(again) = back.await {
                                tracing::error!(error = %again, "the web client could not go back to its address");
                            }
                        }
                        return Err(WebError::Listen(address, e));
                    }
                }
            }
            Err(e) => return Err(WebError::Listen(address, e)),
        };
        let bound = listener
            .local_addr()
            .map_err(|e| WebError::Listen(address, e))?;
        if let Some(current) = running.take() {
            stop(current).await;
        }
        let web = Arc::new(WebState {
            sessions: self.sessions.clone(),
            port: bound.port(),
        });
        let stop_token = app.shutdown.child_token();
        let router = router(app, web);
        let task = tokio::spawn(server::serve(listener, router, stop_token.clone()));
        tracing::info!(address = %bound, "the web client is on");
        *running = Some(Running {
            requested: address,
            address: bound,
            allow_remote,
            stop: stop_token,
            task,
        });
        Ok(())
    }

    /// Stops the server as the daemon shuts down (the settings stay as they are).
    pub async fn shut_down(&self) {
        if let Some(current) = self.running.lock().await.take() {
            stop(current).await;
        }
    }

    pub async fn status(&self) -> WebStatus {
        let running = self.running.lock().await;
        WebStatus {
            enabled: running.is_some(),
            listen: running.as_ref().map(|r| r.address),
            url: running.as_ref().map(|r| url_of(r.address)),
            allow_remote: running.as_ref().is_some_and(|r| r.allow_remote),
            sessions: self.sessions.list().len(),
        }
    }

    /// A one-time link that logs a browser in: its URL and when it expires (ms).
    pub async fn new_link(&self) -> Result<(String, i64), WebError> {
        let address = self
            .running
            .lock()
            .await
            .as_ref()
            .map(|r| r.address)
            .ok_or(WebError::Off)?;
        let now = crate::engine::now_ms();
        let token = self.sessions.new_link(now);
        Ok((
            format!("{}/link/{token}", url_of(address)),
            now + sessions::LINK_VALID.as_millis() as i64,
        ))
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.list()
    }

    /// Ends the sessions whose id starts with `id` (all of them for `None`); returns how many.
    pub fn revoke(&self, id: Option<&str>) -> usize {
        self.sessions.revoke(id, crate::engine::now_ms())
    }
}

/// Stops a server: every connection ends (see `server.rs`).
async fn stop(running: Running) {
    running.stop.cancel();
    let _ = running.task.await;
}

fn router(app: Arc<AppState>, web: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/app.js", get(pages::script))
        .route("/app.css", get(pages::style))
        .route("/link/{token}", get(pages::link_page).post(pages::link))
        .route("/web/qr.svg", get(pages::qr))
        .with_state(web.clone())
        .merge(crate::api::web_router(app))
        .fallback(|| async {
            crate::api::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                chatsync_api::ErrorCode::NoRoute,
                "no such page",
            )
        })
        .layer(axum::middleware::from_fn_with_state(web, guard::guard))
        .layer(DefaultBodyLimit::max(chatsync_api::wire::MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
}

/// The address a browser opens for a server listening on `address`: for one listening on
/// every interface, this computer's first network address.
fn url_of(address: SocketAddr) -> String {
    let ip = if address.ip().is_unspecified() {
        first_network_address().unwrap_or(IpAddr::from([127, 0, 0, 1]))
    } else {
        address.ip()
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

/// This computer's first IPv4 address that is not loopback.
fn first_network_address() -> Option<IpAddr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|interface| {
        let ip = interface.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then_some(IpAddr::V4(ip))
    })
}
