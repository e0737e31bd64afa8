//! [`TestDaemon`]: one daemon on a temporary home, in this process or as the real binary.

use std::{
    path::{Path, PathBuf},
    process::Child,
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_api::{
    Client, ClientError,
    wire::{ChatJson, DeviceJson, MessageJson, PeerJson, StatusJson},
};
use chatsync_daemon::{config::Config, daemon::serve, identity::Identity, paths::Paths};
use chatsync_model::Device;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    home::{self, loopback_network, temp_home, wait_store_released, wait_store_unlocked},
    raw::{EventStream, RawHttp, Reply},
};

/// Device name every daemon in this process runs under.
pub const DEVICE_NAME: &str = "test device";
/// How long a daemon may take to start answering, or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon on a temporary home, driven through the real client ([`TestDaemon::client`]).
/// Dropping it stops the daemon (a test that panicked leaves none behind).
pub struct TestDaemon {
    pub home: Arc<TempDir>,
    pub paths: Paths,
    pub config: Config,
    pub client: Client,
    /// HTTP below the client, for tests of the wire itself.
    pub raw: RawHttp,
    pub device_id: String,
    runner: Runner,
}

enum Runner {
    /// `serve` on this process's runtime.
    InProcess {
        token: CancellationToken,
        task: Option<JoinHandle<anyhow::Result<()>>>,
    },
    /// A `chatsyncd` process.
    Binary {
        child: Option<Child>,
        bin: PathBuf,
        flags: Vec<String>,
    },
}

impl TestDaemon {
    /// Starts a daemon in this process on a fresh home with the default config.
    pub async fn start() -> TestDaemon {
        Self::start_in(temp_home(), Config::default()).await
    }

    /// Starts a daemon in this process on a fresh home with `config`.
    pub async fn start_with(config: Config) -> TestDaemon {
        Self::start_in(temp_home(), config).await
    }

    /// Starts a daemon in this process on `home` (which may hold an earlier daemon's data).
    pub async fn start_in(home: Arc<TempDir>, config: Config) -> TestDaemon {
        match Self::try_start_in(home, config).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("the daemon stopped while starting: {e}"),
        }
    }

    /// Like [`Self::start_in`], but a daemon that stops while starting is an `Err` with why.
    /// It listens on loopback only, without mDNS, whatever `config` says (a loopback address
    /// in it is kept: a test may choose its port).
    pub async fn try_start_in(home: Arc<TempDir>, config: Config) -> Result<TestDaemon, String> {
        let paths = home::paths(home.path());
        std::fs::create_dir_all(&paths.data_dir).unwrap();
        let identity = Identity::load_or_create(&paths.identity_file()).unwrap();
        let session: [u8; 8] = rand::random();
        let device =
            Device::with_session(identity.device_id.clone(), DEVICE_NAME, &session).unwrap();
        let device_id = identity.device_id.to_string();
        let token = CancellationToken::new();
        let mut run_config = config.clone();
        let loopback_only = config
            .network
            .listen
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/"));
        if !loopback_only || config.network.listen.is_empty() {
            run_config.network.listen = loopback_network().listen;
        }
        run_config.network.mdns = false;
        let task = tokio::spawn(serve(
            paths.clone(),
            run_config,
            identity,
            device,
            token.clone(),
        ));
        let mut daemon = TestDaemon::new(
            home,
            paths,
            config,
            device_id,
            Runner::InProcess {
                token,
                task: Some(task),
            },
        );
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    /// Starts the real `chatsyncd` (`bin`) on `home` with `flags` after the ones that keep it
    /// on loopback (`--no-mdns --listen /ip4/127.0.0.1/tcp/0`, logging at `warn`). Returns it
    /// with the time until its API first answered.
    pub async fn start_binary(
        bin: &Path,
        home: Arc<TempDir>,
        flags: &[String],
    ) -> (TestDaemon, Duration) {
        let paths = home::paths(home.path());
        let started = Instant::now();
        let child = spawn_binary(bin, home.path(), flags);
        let mut daemon = TestDaemon::new(
            home,
            paths,
            Config::default(),
            String::new(),
            Runner::Binary {
                child: Some(child),
                bin: bin.to_path_buf(),
                flags: flags.to_vec(),
            },
        );
        if let Err(e) = daemon.wait_ready().await {
            panic!("chatsyncd stopped while starting: {e}");
        }
        let elapsed = started.elapsed();
        daemon.device_id = daemon.status().await.device_id;
        (daemon, elapsed)
    }

    fn new(
        home: Arc<TempDir>,
        paths: Paths,
        config: Config,
        device_id: String,
        runner: Runner,
    ) -> TestDaemon {
        let client = Client::new(&paths.socket).expect("cannot build a client");
        let raw = RawHttp::new(&paths.socket);
        TestDaemon {
            home,
            paths,
            config,
            client,
            raw,
            device_id,
            runner,
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(why) = self.stopped_while_starting().await {
                return Err(why);
            }
            if self.client.status().await.is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer GET /v1/status within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// Why the daemon stopped, if it has.
    async fn stopped_while_starting(&mut self) -> Option<String> {
        match &mut self.runner {
            Runner::InProcess { task, .. } => {
                if !task.as_ref().is_some_and(|t| t.is_finished()) {
                    return None;
                }
                let result = task.take()?.await;
                Some(match result {
                    Ok(Err(e)) => format!("{e:#}"),
                    other => format!("{other:?}"),
                })
            }
            Runner::Binary { child, .. } => {
                let status = child.as_mut()?.try_wait().ok()??;
                Some(format!("chatsyncd exited: {status}"))
            }
        }
    }

    /// Stops the daemon (cancels it, or asks it through the API) and waits for it to stop and
    /// release the store. Returns the home, for a restart.
    pub async fn shutdown(mut self) -> Arc<TempDir> {
        self.ask_to_stop().await;
        self.wait_stopped_inner().await;
        self.home.clone()
    }

    /// Waits for a daemon told to stop some other way (`POST /v1/shutdown`, a signal) to
    /// stop with success, then for the store to be released.
    pub async fn wait_stopped(mut self) -> Arc<TempDir> {
        self.wait_stopped_inner().await;
        self.home.clone()
    }

    /// Cancels a daemon in this process; asks a `chatsyncd` process through the API.
    async fn ask_to_stop(&self) {
        match &self.runner {
            Runner::InProcess { token, .. } => token.cancel(),
            Runner::Binary { .. } => self.client.shutdown().await.expect("shutdown refused"),
        }
    }

    async fn wait_stopped_inner(&mut self) {
        if let Err(e) = self.try_join().await {
            panic!("the daemon stopped with an error: {e}");
        }
        wait_store_released(&self.paths).await;
    }

    /// Like [`Self::shutdown`], but returns as soon as the daemon has stopped.
    pub async fn shutdown_without_waiting_for_the_store(mut self) -> Arc<TempDir> {
        self.ask_to_stop().await;
        if let Err(e) = self.try_join().await {
            panic!("the daemon stopped with an error: {e}");
        }
        self.home.clone()
    }

    /// Stops the daemon and waits for it to release the store, whether it stopped cleanly or
    /// not (a store that failed to write may fail to close); returns the home and how it
    /// stopped.
    pub async fn shutdown_even_failed(mut self) -> (Arc<TempDir>, Result<(), String>) {
        let served = match &self.runner {
            Runner::InProcess { token, .. } => {
                token.cancel();
                self.try_join().await
            }
            Runner::Binary { .. } => match self.client.shutdown().await {
                Ok(()) => self.try_join().await,
                Err(e) => {
                    self.kill();
                    Err(format!("shutdown refused: {e}"))
                }
            },
        };
        // Unlocked is enough: on a full disk the store may not open until space is freed.
        let _ = wait_store_unlocked(&self.paths).await;
        (self.home.clone(), served)
    }

    /// Waits (at most [`STOP_TIMEOUT`]) for the daemon to stop; `Err` with why it failed.
    async fn try_join(&mut self) -> Result<(), String> {
        match &mut self.runner {
            Runner::InProcess { task, .. } => {
                let task = task.take().expect("the daemon was already stopped");
                let joined = tokio::time::timeout(STOP_TIMEOUT, task)
                    .await
                    .unwrap_or_else(|_| panic!("the daemon did not stop within {STOP_TIMEOUT:?}"));
                let served = joined.expect("the daemon task panicked");
                served.map_err(|e| format!("{e:#}"))
            }
            Runner::Binary { child: slot, .. } => {
                // The child stays in its slot until reaped: should this wait be cancelled or
                // fail, dropping the daemon still kills it.
                let deadline = Instant::now() + STOP_TIMEOUT;
                loop {
                    let child = slot.as_mut().expect("the daemon was already stopped");
                    if let Some(status) = child.try_wait().unwrap_or(None) {
                        *slot = None;
                        return if status.success() {
                            Ok(())
                        } else {
                            Err(format!("chatsyncd exited: {status}"))
                        };
                    }
                    assert!(
                        Instant::now() < deadline,
                        "chatsyncd did not stop within {STOP_TIMEOUT:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Kills a `chatsyncd` process at once (SIGKILL); for a daemon in this process, cancels it.
    pub fn kill(&mut self) {
        match &mut self.runner {
            Runner::InProcess { token, .. } => token.cancel(),
            Runner::Binary { child, .. } => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Stops the daemon and starts a new one the same way on the same home.
    pub async fn restart(self) -> TestDaemon {
        let config = self.config.clone();
        let binary = match &self.runner {
            Runner::Binary { bin, flags, .. } => Some((bin.clone(), flags.clone())),
            Runner::InProcess { .. } => None,
        };
        let home = self.shutdown().await;
        match binary {
            Some((bin, flags)) => TestDaemon::start_binary(&bin, home, &flags).await.0,
            None => TestDaemon::start_in(home, config).await,
        }
    }

    /// The process id of a `chatsyncd` process (none for a daemon in this process).
    pub fn pid(&self) -> Option<u32> {
        match &self.runner {
            Runner::Binary { child, .. } => child.as_ref().map(Child::id),
            Runner::InProcess { .. } => None,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    /// `/p2p` address other daemons dial this one at (its first listen address).
    pub async fn dial_address(&self) -> String {
        let status = self.status().await;
        let addr = status
            .listen_addrs
            .first()
            .expect("the daemon listens nowhere");
        format!("{addr}/p2p/{}", status.device_id)
    }

    // Raw HTTP, for tests of the wire itself (see [`RawHttp`]).

    pub fn url(&self, path: &str) -> String {
        self.raw.url(path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.raw.request(method, path)
    }

    pub async fn send(&self, request: RequestBuilder) -> Reply {
        self.raw.send(request).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.raw.get(path).await
    }

    /// `GET` of a route outside the versioned API (`/metrics`, say).
    pub async fn get_unversioned(&self, path: &str) -> Reply {
        let request = self
            .raw
            .request_url(Method::GET, &format!("http://chatsyncd{path}"));
        self.raw.send(request).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw.post(path, body).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.raw.patch(path, body).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.raw.put(path, body).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.raw.delete(path).await
    }

    /// The raw event stream (`query` without `?`), after its `hello` line.
    pub async fn events(&self, query: &str) -> EventStream {
        self.raw.events(query, &self.device_id).await
    }

    // The real client, with failures failing the test.

    pub async fn status(&self) -> StatusJson {
        expect(self.client.status().await, "GET /v1/status")
    }

    pub async fn create_chat(&self, title: &str) -> ChatJson {
        expect(self.client.create_chat(title).await, "creating a chat")
    }

    pub async fn chats(&self) -> Vec<ChatJson> {
        expect(self.client.chats().await, "listing chats")
    }

    pub async fn chat(&self, chat: &str) -> ChatJson {
        expect(self.client.chat(chat).await, "reading a chat")
    }

    pub async fn post_message(&self, chat: &str, text: &str) -> MessageJson {
        expect(self.client.post(chat, text, None).await, "posting")
    }

    pub async fn peers(&self) -> Vec<PeerJson> {
        expect(self.client.peers().await, "listing peers")
    }

    /// The device `device` as this daemon's network sees it, if it does.
    pub async fn peer(&self, device: &str) -> Option<PeerJson> {
        self.peers().await.into_iter().find(|p| p.device == device)
    }

    pub async fn devices(&self) -> Vec<DeviceJson> {
        expect(self.client.devices().await, "listing devices")
    }

    /// Adds `device` to this daemon's roster.
    pub async fn trust(&self, device: &str) -> DeviceJson {
        expect(
            self.client.add_device(device, None).await,
            "adding a device",
        )
    }

    /// Removes `device` from the mesh.
    pub async fn remove(&self, device: &str) -> DeviceJson {
        expect(self.client.remove_device(device).await, "removing a device")
    }

    /// One page of messages (the last `limit`, default 50, or those before `before`).
    pub async fn messages(
        &self,
        chat: &str,
        limit: Option<usize>,
        before: Option<&str>,
    ) -> Vec<MessageJson> {
        self.try_messages(chat, limit, before)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One page of messages, or why it could not be read.
    pub async fn try_messages(
        &self,
        chat: &str,
        limit: Option<usize>,
        before: Option<&str>,
    ) -> Result<Vec<MessageJson>, ClientError> {
        self.client
            .messages(chat, limit.unwrap_or(50), before)
            .await
    }

    /// Every message of a chat in display order, read backwards in pages of `page`.
    pub async fn all_messages(&self, chat: &str, page: usize) -> Vec<MessageJson> {
        self.try_all_messages(chat, page)
            .await
            .unwrap_or_else(|e| panic!("reading the messages of {chat}: {e}"))
    }

    /// Every message of a chat in display order, or why they could not be read.
    pub async fn try_all_messages(
        &self,
        chat: &str,
        page: usize,
    ) -> Result<Vec<MessageJson>, ClientError> {
        let mut all: Vec<MessageJson> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut batch = self.client.messages(chat, page, before.as_deref()).await?;
            assert!(batch.len() <= page, "a page holds more than its limit");
            let Some(first) = batch.first() else { break };
            before = Some(first.id.clone());
            let short = batch.len() < page;
            batch.append(&mut all);
            all = batch;
            if short {
                break;
            }
        }
        Ok(all)
    }

    /// The texts of `chat`, in display order; none while the chat has not arrived.
    pub async fn texts(&self, chat: &str) -> Vec<String> {
        self.try_all_messages(chat, 100)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.text)
            .collect()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

#[track_caller]
fn expect<T>(result: Result<T, ClientError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn spawn_binary(bin: &Path, home: &Path, flags: &[String]) -> Child {
    crate::binary::Chatsyncd::new(bin, home)
        .args(["--log", "warn"])
        .loopback_only()
        .args(flags.iter().cloned())
        .spawn()
}
