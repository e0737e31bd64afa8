//! Test support: runs chatsyncd in-process on a temporary home and talks to it over its Unix
//! socket, the way the CLI does.
//!
//! Every test file includes this module and uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

pub mod craft;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use chatsync_api::wire::{ChatJson, ChatListJson, MessageJson, MessageListJson, StatusJson};
use chatsync_daemon::{
    config::Config,
    daemon::serve,
    identity::Identity,
    paths::{PathArgs, Paths},
    store::{Store, StoreError},
};
use chatsync_model::Device;
use reqwest::{Method, RequestBuilder, StatusCode, header::CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Device name every test daemon runs under.
pub const DEVICE_NAME: &str = "test device";
/// How long a daemon may take to start answering, or to stop.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits for one event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary home directory. Short, under /tmp: socket paths are limited to 107 bytes.
pub fn temp_home() -> Arc<TempDir> {
    Arc::new(
        tempfile::Builder::new()
            .prefix("cs")
            .tempdir_in("/tmp")
            .expect("cannot create a temporary home"),
    )
}

/// Waits until the store under `paths` can be opened again. `serve` returns a moment before
/// the store is closed (see `serve_closes_the_store_before_returning` in persistence.rs);
/// without this, a restart right after a shutdown fails with "already using the store".
pub async fn wait_store_released(paths: &Paths) {
    if let Err(e) = wait_store_unlocked(paths).await {
        panic!("the store is still in use after the daemon stopped: {e}");
    }
}

/// Waits until no daemon holds the store's lock; then whether the store opens (it may not for
/// another reason than the lock: a full disk, say).
pub async fn wait_store_unlocked(paths: &Paths) -> Result<(), StoreError> {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        let dir = paths.store_dir();
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir, 1 << 20))
            .await
            .unwrap();
        match opened {
            Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(StoreError::Locked(e)) => panic!("the store is still in use: {e}"),
            other => return other.map(drop),
        }
    }
}

/// Network settings for tests: loopback only, no mDNS, no peers.
pub fn loopback_network() -> chatsync_daemon::config::NetworkConfig {
    chatsync_daemon::config::NetworkConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        peers: Vec::new(),
        ..Default::default()
    }
}

/// A loopback TCP address with a port that was free a moment ago, for a daemon that must be
/// found at the same address after a restart.
pub fn fixed_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    format!("/ip4/127.0.0.1/tcp/{port}")
}

/// A daemon running in this process.
pub struct TestDaemon {
    pub home: Arc<TempDir>,
    pub paths: Paths,
    pub config: Config,
    pub client: reqwest::Client,
    pub device_id: String,
    token: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestDaemon {
    /// Starts a daemon on a fresh home with the default config.
    pub async fn start() -> TestDaemon {
        Self::start_in(temp_home(), Config::default()).await
    }

    /// Starts a daemon on a fresh home with `config`.
    pub async fn start_with(config: Config) -> TestDaemon {
        Self::start_in(temp_home(), config).await
    }

    /// Starts a daemon on `home` (which may hold an earlier daemon's data).
    pub async fn start_in(home: Arc<TempDir>, config: Config) -> TestDaemon {
        match Self::try_start_in(home, config).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("the daemon stopped while starting: {e}"),
        }
    }

    /// Like [`Self::start_in`], but a daemon that stops while starting is an `Err` with why.
    pub async fn try_start_in(home: Arc<TempDir>, config: Config) -> Result<TestDaemon, String> {
        let paths = Paths::resolve(&PathArgs {
            home: Some(home.path().to_path_buf()),
            socket: None,
        })
        .unwrap();
        std::fs::create_dir_all(&paths.data_dir).unwrap();
        let identity = Identity::load_or_create(&paths.identity_file()).unwrap();
        let session: [u8; 8] = rand::random();
        let device =
            Device::with_session(identity.device_id.clone(), DEVICE_NAME, &session).unwrap();
        let device_id = identity.device_id.to_string();
        let token = CancellationToken::new();
        // Tests stay on loopback: no mDNS (it would multicast on the machine's real network),
        // and only loopback listen addresses (a test may choose its port).
        let mut run_config = config.clone();
        let loopback_only = config
            .network
            .listen
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/"));
        run_config.network = chatsync_daemon::config::NetworkConfig {
            peers: config.network.peers.clone(),
            listen: if loopback_only && !config.network.listen.is_empty() {
                config.network.listen.clone()
            } else {
                loopback_network().listen
            },
            mdns: false,
            ..Default::default()
        };
        let task = tokio::spawn(serve(
            paths.clone(),
            run_config,
            identity,
            device,
            token.clone(),
        ));
        let client = reqwest::Client::builder()
            .unix_socket(paths.socket.clone())
            .build()
            .unwrap();
        let mut daemon = TestDaemon {
            home,
            paths,
            config,
            client,
            device_id,
            token,
            task: Some(task),
        };
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.task.take().unwrap().await;
                return Err(match result {
                    Ok(Err(e)) => format!("{e:#}"),
                    other => format!("{other:?}"),
                });
            }
            if let Ok(resp) = self.client.get(self.url("/status")).send().await
                && resp.status() == StatusCode::OK
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer GET /v1/status within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels the daemon and waits (at most [`STOP_TIMEOUT`]) for `serve` to return `Ok`.
    /// Returns the home, for a restart.
    pub async fn shutdown(self) -> Arc<TempDir> {
        self.token.cancel();
        self.wait_stopped().await
    }

    /// Waits (at most [`STOP_TIMEOUT`]) for `serve` to return `Ok` without cancelling it (after
    /// `POST /v1/shutdown`, say), then for the store to be released.
    pub async fn wait_stopped(mut self) -> Arc<TempDir> {
        self.join().await;
        wait_store_released(&self.paths).await;
        self.home.clone()
    }

    /// Like [`Self::shutdown`], but returns as soon as `serve` has returned.
    pub async fn shutdown_without_waiting_for_the_store(mut self) -> Arc<TempDir> {
        self.token.cancel();
        self.join().await;
        self.home.clone()
    }

    async fn join(&mut self) {
        if let Err(e) = self.try_join().await {
            panic!("the daemon stopped with an error: {e}");
        }
    }

    /// Waits (at most [`STOP_TIMEOUT`]) for `serve` to return; `Err` with its error.
    async fn try_join(&mut self) -> Result<(), String> {
        let task = self.task.take().expect("the daemon was already stopped");
        let joined = tokio::time::timeout(STOP_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("the daemon did not stop within {STOP_TIMEOUT:?}"));
        let served = joined.expect("the daemon task panicked");
        served.map_err(|e| format!("{e:#}"))
    }

    /// Cancels the daemon and waits for it to stop and release the store, whether `serve`
    /// returned `Ok` or not (a store that failed to write may fail to close); returns the home
    /// and what `serve` returned.
    pub async fn shutdown_even_failed(mut self) -> (Arc<TempDir>, Result<(), String>) {
        self.token.cancel();
        let served = self.try_join().await;
        // Unlocked is enough: on a full disk the store may not open until space is freed.
        let _ = wait_store_unlocked(&self.paths).await;
        (self.home.clone(), served)
    }

    /// Stops the daemon and starts a new one on the same home and config.
    pub async fn restart(self) -> TestDaemon {
        let config = self.config.clone();
        let home = self.shutdown().await;
        TestDaemon::start_in(home, config).await
    }

    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    /// URL of an API route (`path` without the `/v1` prefix).
    pub fn url(&self, path: &str) -> String {
        format!("http://chatsyncd/v1{path}")
    }

    /// A request to an API route, ready to be completed and sent with [`Self::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn send(&self, request: RequestBuilder) -> Reply {
        let resp = request.send().await.expect("request failed");
        Reply::read(resp).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.request(Method::POST, path).json(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(self.request(Method::PATCH, path).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(self.request(Method::PUT, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(Method::DELETE, path)).await
    }

    pub async fn status(&self) -> StatusJson {
        self.get("/status").await.json(StatusCode::OK)
    }

    pub async fn create_chat(&self, title: &str) -> ChatJson {
        self.post("/chats", json!({ "title": title }))
            .await
            .json(StatusCode::CREATED)
    }

    pub async fn chats(&self) -> Vec<ChatJson> {
        self.get("/chats")
            .await
            .json::<ChatListJson>(StatusCode::OK)
            .chats
    }

    pub async fn chat(&self, chat: &str) -> ChatJson {
        self.get(&format!("/chats/{chat}"))
            .await
            .json(StatusCode::OK)
    }

    pub async fn post_message(&self, chat: &str, text: &str) -> MessageJson {
        self.post(&format!("/chats/{chat}/messages"), json!({ "text": text }))
            .await
            .json(StatusCode::CREATED)
    }

    /// One page of messages.
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
    ) -> Result<Vec<MessageJson>, String> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        let request = self
            .request(Method::GET, &format!("/chats/{chat}/messages"))
            .query(&query);
        let reply = self.send(request).await;
        if reply.status != StatusCode::OK {
            return Err(format!(
                "listing messages of {chat} failed: {} {}",
                reply.status, reply.text
            ));
        }
        Ok(reply.json::<MessageListJson>(StatusCode::OK).messages)
    }

    /// Every message of a chat in display order, read backwards in pages of `page`.
    pub async fn all_messages(&self, chat: &str, page: usize) -> Vec<MessageJson> {
        self.try_all_messages(chat, page)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every message of a chat in display order, or why they could not be read.
    pub async fn try_all_messages(
        &self,
        chat: &str,
        page: usize,
    ) -> Result<Vec<MessageJson>, String> {
        let mut all: Vec<MessageJson> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut batch = self
                .try_messages(chat, Some(page), before.as_deref())
                .await?;
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

    /// Subscribes to `GET /v1/events` (`query` is the query string, without `?`) and reads the
    /// `hello` line.
    pub async fn events(&self, query: &str) -> EventStream {
        let mut url = self.url("/events");
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let resp = self.client.get(url).send().await.expect("request failed");
        assert_eq!(resp.status(), StatusCode::OK, "GET /v1/events failed");
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(content_type, "application/x-ndjson");
        let mut stream = EventStream {
            resp,
            buf: Vec::new(),
        };
        let hello = stream.next().await.expect("the stream ended before hello");
        assert_eq!(hello["type"], "hello", "first line: {hello}");
        assert_eq!(hello["device_id"], self.device_id.as_str());
        assert_eq!(hello["version"], env!("CARGO_PKG_VERSION"));
        stream
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // A test that panicked leaves its daemon running; stop it with the test.
        self.token.cancel();
    }
}

/// A response: status, content type, body (as JSON when it is JSON, `Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub text: String,
    pub body: Value,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.expect("cannot read the response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Reply {
            status,
            content_type,
            text,
            body,
        }
    }

    /// Asserts the status and a JSON body, and decodes the body.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self, status: StatusCode) -> T {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "body: {}",
            self.text
        );
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("cannot decode {}: {e}", self.text))
    }

    /// Asserts an error: this status, this code, and the standard shape
    /// `{"error":{"code","message"[,"candidates"]}}`. Returns the error object.
    #[track_caller]
    pub fn error(&self, status: StatusCode, code: &str) -> &serde_json::Map<String, Value> {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {:?}",
            self.text
        );
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "an error must be JSON; body: {:?}",
            self.text
        );
        let outer = self
            .body
            .as_object()
            .unwrap_or_else(|| panic!("error body is not a JSON object: {:?}", self.text));
        assert_eq!(
            outer.keys().collect::<Vec<_>>(),
            ["error"],
            "error body must hold only `error`: {}",
            self.text
        );
        let error = outer["error"]
            .as_object()
            .unwrap_or_else(|| panic!("`error` is not an object: {}", self.text));
        assert_eq!(error.get("code"), Some(&json!(code)), "body: {}", self.text);
        let message = error.get("message").and_then(Value::as_str);
        assert!(
            message.is_some_and(|m| !m.trim().is_empty()),
            "`error.message` must be a non-empty string: {}",
            self.text
        );
        for key in error.keys() {
            assert!(
                ["code", "message", "candidates"].contains(&key.as_str()),
                "unexpected field {key} in {}",
                self.text
            );
        }
        error
    }
}

/// An open `GET /v1/events` stream, read line by line.
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event, or `None` when the stream has ended cleanly. Fails the test when no
    /// event comes within [`EVENT_TIMEOUT`] or the stream breaks.
    pub async fn next(&mut self) -> Option<Value> {
        match self.next_within(EVENT_TIMEOUT).await {
            Ok(event) => event,
            Err(_) => panic!("no event within {EVENT_TIMEOUT:?}"),
        }
    }

    /// The next event, `Ok(None)` at the end of the stream, `Err` when none came within
    /// `wait`.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, self.read_line()).await
    }

    /// Asserts that no event arrives within `wait`.
    pub async fn expect_quiet(&mut self, wait: Duration) {
        if let Ok(event) = self.next_within(wait).await {
            panic!("expected no event, got {event:?}");
        }
    }

    /// The next event, asserted to be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let event = self
            .next()
            .await
            .unwrap_or_else(|| panic!("the stream ended; expected {kind}"));
        assert_eq!(event["type"], kind, "unexpected event {event}");
        event
    }

    async fn read_line(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = &line[..line.len() - 1];
                return Some(serde_json::from_slice(line).unwrap_or_else(|e| {
                    panic!(
                        "event line is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(line)
                    )
                }));
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => {
                    assert!(
                        self.buf.is_empty(),
                        "the stream ended inside a line: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
                Err(e) => panic!("the event stream broke instead of ending: {e:?}"),
            }
        }
    }
}

/// Percent-encodes `s` for use as one URL path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Milliseconds since the Unix epoch, like the daemon's clock.
pub fn now_ms() -> i64 {
    chatsync_daemon::engine::now_ms()
}

/// Whether `s` looks like an id the daemon makes: 32 lowercase hex digits.
pub fn is_daemon_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Polls `check` every 100 ms until it holds, for at most 30 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The texts of `chat` on `daemon`; none while the chat has not arrived.
pub async fn texts(daemon: &TestDaemon, chat: &str) -> Vec<String> {
    daemon
        .try_all_messages(chat, 100)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m: MessageJson| m.text)
        .collect()
}
