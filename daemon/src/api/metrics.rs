//! `GET /metrics`: the daemon's metrics for Prometheus (`crate::metrics`), on the local socket
//! like the rest of the API, and on a TCP address of its own when `[metrics] listen` is set,
//! where nothing else is served.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use axum::{
    Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use super::AppState;
use crate::{
    config::MetricsConfig,
    metrics::{CONTENT_TYPE, Snapshot, render},
};

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let snapshot = Snapshot {
        stats: st.engine.stats(),
        memory_budget_bytes: st.engine.memory_budget_bytes(),
        uptime_seconds: st.started.elapsed().as_secs_f64(),
        sync: st.network.sync_state().await,
        peers: st.network.peers().await,
    };
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(st.engine.metrics(), &snapshot),
    )
        .into_response()
}

/// Binds the address `[metrics] listen` names (if any), and serves `GET /metrics` there until
/// the daemon shuts down. An address that cannot be had, or one reachable from other computers
/// without `allow_remote`, stops the daemon from starting: it was asked for.
pub async fn serve_configured(config: &MetricsConfig, state: Arc<AppState>) -> anyhow::Result<()> {
    let Some(listen) = &config.listen else {
        return Ok(());
    };
    let address: SocketAddr = listen.parse().with_context(|| {
        format!("[metrics] listen: {listen:?} is not an address and port like 127.0.0.1:9464")
    })?;
    if !address.ip().is_loopback() && !config.allow_remote {
        bail!(
            "[metrics] listen: {address} is reachable from other computers, and the metrics name \
             this device's devices and traffic over plain HTTP; set [metrics] allow_remote = \
             true to do it all the same"
        );
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for metrics on {address}"))?;
    let bound = listener.local_addr().unwrap_or(address);
    tracing::info!(address = %bound, "serving metrics");
    let shutdown = state.shutdown.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}
