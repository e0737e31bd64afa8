//! Start-up and shutdown of `chatsyncd`.
//!
//! Start-up does the least it can: open the store, read the chat records (not the documents),
//! bind the socket. Shutdown (SIGINT, SIGTERM or `POST /v1/shutdown`) stops accepting requests,
//! ends event streams, lets open requests finish, flushes the store, and removes the socket.

use std::{os::unix::fs::PermissionsExt, process::ExitCode, sync::Arc, time::Instant};

use anyhow::Context;
use chatsync_model::{Device, limits::MAX_DEVICE_NAME_BYTES};
use clap::Parser;
use std::io::Write as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::{
    api::{self, AppState},
    config::{Config, DaemonArgs},
    engine::{Engine, EngineConfig, now_ms},
    identity::Identity,
    net::Network,
    paths::Paths,
    store::Store,
};

/// Entry point of the `chatsyncd` binary.
pub fn run() -> ExitCode {
    let args = DaemonArgs::parse();
    match run_with(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: it panics when stderr cannot be written (a full disk).
            let _ = writeln!(std::io::stderr(), "chatsyncd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run_with(args: DaemonArgs) -> anyhow::Result<()> {
    let paths = Paths::resolve(&args.paths)?;
    let config_file = args.config.clone().unwrap_or(paths.config_file.clone());
    let mut config = Config::load(&config_file)?;
    config.network = config.network.with_flags(&args);
    config.relay = config.relay.with_flags(&args);
    init_logging(args.log.as_deref().or(config.log.as_deref()))?;

    std::fs::create_dir_all(&paths.data_dir)
        .with_context(|| format!("cannot create {}", paths.data_dir.display()))?;
    std::fs::set_permissions(&paths.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let identity = Identity::load_or_create(&paths.identity_file())?;
    if let Some(name) = &args.name {
        config.name = Some(name.clone());
    }
    let name = device_name(config.name.as_deref());
    // A fresh actor for every run (see `chatsync_model::authorship`).
    let session: [u8; 8] = rand::random();
    let device = Device::with_session(identity.device_id.clone(), name, &session)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("chatsyncd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        serve(paths, config, identity, device, shutdown).await
    })
}

/// Runs the daemon until `shutdown` is cancelled (by a signal, the API, or the caller; tests run
/// it in-process this way).
pub async fn serve(
    paths: Paths,
    config: Config,
    identity: Identity,
    device: Device,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    config.relay.check()?;
    let store_dir = paths.store_dir();
    let cache_bytes = config.store.cache_mb * 1024 * 1024;
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir, cache_bytes))
        .await
        .context("store task failed")??;
    let engine = Engine::start(
        store,
        device.clone(),
        identity.keypair.clone(),
        EngineConfig {
            memory_budget_bytes: config.store.memory_budget_mb * 1024 * 1024,
            idle_unload: std::time::Duration::from_secs(config.store.idle_unload_secs.max(1)),
            name_configured: config.name.as_deref().is_some_and(|n| !n.trim().is_empty()),
            reserve_bytes: config.store.reserve_mb.saturating_mul(1024 * 1024),
        },
    )?;
    let backup_every = config
        .backup
        .interval()
        .context("invalid [backup] settings")?;
    let listener = api::bind(&paths.socket).await?;
    let mut network_config = config.network.clone();
    network_config.relay = config.relay.clone();
    let blob_dir = paths.data_dir.clone();
    let quota = config.attachments.quota_mib.saturating_mul(1024 * 1024);
    let reserve = config.store.reserve_mb.saturating_mul(1024 * 1024);
    let blob_store =
        tokio::task::spawn_blocking(move || crate::blobs::Blobs::open(&blob_dir, quota, reserve))
            .await
            .context("attachment store task failed")?
            .context("cannot open the attachment store")?;
    let (network, network_task) = Network::start(
        identity.keypair,
        network_config,
        engine.clone(),
        blob_store.clone(),
        crate::net::blobs::BlobPolicy {
            auto_fetch_max: config
                .attachments
                .auto_fetch_mib
                .saturating_mul(1024 * 1024),
            send_rate: config.attachments.send_kib_per_sec.saturating_mul(1024),
        },
        shutdown.clone(),
    )?;
    let backups = Arc::new(
        crate::backup::Backups::new(engine.clone(), &paths.data_dir)
            .with_object_bytes(config.backup.object_kib.max(1) as usize * 1024)
            .with_blobs(blob_store),
    );
    let schedule = backup_every.map(|every| {
        let retention = crate::backup::Retention {
            daily: config.backup.keep_daily,
            weekly: config.backup.keep_weekly,
            monthly: config.backup.keep_monthly,
        };
        tokio::spawn(
            backups
                .clone()
                .run_schedule(every, retention, shutdown.clone()),
        )
    });
    let web = Arc::new(crate::web::Web::new(&paths.data_dir, config.web.clone()));
    let state = Arc::new(AppState {
        engine: engine.clone(),
        backups,
        web: web.clone(),
        network,
        data_dir: paths.data_dir.clone(),
        socket: paths.socket.clone(),
        started_at: now_ms(),
        started,
        shutdown: shutdown.clone(),
    });
    api::metrics::serve_configured(&config.metrics, state.clone()).await?;
    tracing::info!(
        device_id = %device.id,
        name = %engine.device_name(),
        chats = engine.stats().chats,
        socket = %paths.socket.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "chatsyncd ready"
    );
    state.web.start_if_enabled(state.clone()).await;
    crate::service::ready(&format!("serving {}", paths.socket.display()));
    if let Some(period) = crate::service::watchdog_period() {
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "telling the service manager's watchdog we are alive"
        );
    }
    tokio::spawn(crate::service::keep_watchdog(
        state.network.clone(),
        shutdown.clone(),
    ));
    let served = api::serve(listener, state).await;
    crate::service::stopping();
    tracing::info!("shutting down");
    web.shut_down().await;
    if let Some(schedule) = schedule {
        // It stops at the cancellation, an interrupted backup leaving earlier snapshots whole.
        let _ = schedule.await;
    }
    if let Err(e) = network_task.await {
        tracing::error!(error = %e, "the network task failed");
    }
    let _ = std::fs::remove_file(&paths.socket);
    let closed = close_engine(engine).await;
    served?;
    closed?;
    tracing::info!("stopped");
    Ok(())
}

/// Closes the engine once the API has let go of it, so that the store is closed (and its lock
/// released) when `serve` returns.
async fn close_engine(mut engine: Arc<Engine>) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(engine) {
            Ok(engine) => return engine.close().await.context("closing the store failed"),
            Err(shared) if Instant::now() < deadline => {
                engine = shared;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(_) => anyhow::bail!("the engine is still in use 10 s after shutdown"),
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon through the API");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

fn init_logging(filter: Option<&str>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter.unwrap_or("info"))
        .context("invalid log filter (see docs/configuration.md)")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (the log's disk is full) is lost, quietly: the
        // subscriber would otherwise report it with `eprintln!`, which panics when stderr
        // cannot be written either, taking down whatever task was logging (an API request
        // was cut off without an answer on a full disk).
        .log_internal_errors(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

/// The configured name, or the host name, cut to the model's limit.
fn device_name(configured: Option<&str>) -> String {
    let raw = match configured {
        Some(n) if !n.trim().is_empty() => n.trim().to_string(),
        _ => gethostname::gethostname().to_string_lossy().into_owned(),
    };
    let mut name: String = raw.chars().filter(|c| !c.is_control()).collect();
    while name.len() > MAX_DEVICE_NAME_BYTES {
        name.pop();
    }
    if name.trim().is_empty() {
        name = "chatsync device".to_string();
    }
    name
}
