//! The local API: HTTP/JSON on a Unix socket, the only way into the daemon. The CLI uses it, and
//! so can any program (`curl --unix-socket`). Every route is documented in docs/api.md.
//!
//! Only the user who runs the daemon gets in: the socket lives in a directory only the owner can
//! enter (0700), is itself 0600, and every connection's user is checked as well; requests from
//! web pages are refused (`access.rs`). Requests are untrusted all the same: bodies are capped at
//! [`wire::MAX_BODY_BYTES`], every failure is a JSON error with a stable code, and a panic in a
//! handler becomes a 500 instead of taking the daemon down.

mod access;
mod attachments;
mod backup;
mod convert;
mod error;
mod events;
mod idempotency;
pub mod metrics;
mod pairing;
mod routes;
mod web;

use chatsync_api::wire;

use chatsync_api::ErrorCode;
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, bail};
use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::engine::Engine;

/// What the API handlers share.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub backups: Arc<crate::backup::Backups>,
    pub web: Arc<crate::web::Web>,
    pub network: crate::net::Network,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub started_at: i64,
    pub started: Instant,
    /// Cancelled to shut the daemon down (by a signal or `POST /v1/shutdown`).
    pub shutdown: CancellationToken,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .nest(wire::API_PREFIX, routes::routes())
        .route("/metrics", axum::routing::get(metrics::metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NoRoute,
                "no such API route",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(wire::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(access::refuse_browsers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// The API routes the web client serves (`routes::web_routes`), under the same prefix, for
/// `crate::web` to put behind its own guard.
pub fn web_router(state: Arc<AppState>) -> Router {
    Router::new()
        .nest(wire::API_PREFIX, routes::web_routes())
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("an API handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "internal error (see the daemon log)",
    )
    .into_response()
}

/// Creates the socket's directory (0700) and binds the socket (0600). A socket left behind by
/// a daemon that died is replaced; one that still answers means another daemon is running.
pub async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    let dir = socket.parent().context("socket path has no directory")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            bail!(
                "another chatsyncd is already serving {}; stop it first (chatsync daemon stop)",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", socket.display()))?;
    Ok(listener)
}

/// How long a shutdown waits for open requests (a download a reader stopped reading, say).
const REQUESTS_AFTER_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the API until `state.shutdown` is cancelled and open requests have finished (or
/// [`REQUESTS_AFTER_SHUTDOWN`] has passed: then they are dropped).
pub async fn serve(listener: UnixListener, state: Arc<AppState>) -> anyhow::Result<()> {
    let shutdown = state.shutdown.clone();
    let served = axum::serve(access::OwnerOnly::new(listener), router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = served => served.context("API server failed"),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(REQUESTS_AFTER_SHUTDOWN).await;
        } => {
            tracing::warn!("requests still open 10 s after shutdown; leaving them");
            Ok(())
        }
    }
}
