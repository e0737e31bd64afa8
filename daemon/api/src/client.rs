//! A client of the daemon's local API: HTTP/JSON over its Unix socket.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{ErrorCode, wire::*};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};

/// Longest the client waits for an ordinary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the client waits for a backup, a verification or a restore.
const SLOW_REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Longest line accepted from the event stream.
const MAX_EVENT_LINE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the chatsync daemon is not running (no answer on {socket})")]
    NotRunning { socket: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        candidates: Vec<String>,
    },
    #[error("talking to the daemon failed: {0}")]
    Transport(String),
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
}

impl ClientError {
    /// The API's error code, if the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Client {
            http,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The URL of an API route, given its path segments after the version prefix. Each
    /// segment is percent-encoded (chat titles may contain anything, `/` included).
    fn url(segments: &[&str]) -> reqwest::Url {
        // The host is ignored on a Unix socket; the name reads well in logs.
        let mut url = reqwest::Url::parse("http://chatsyncd/").expect("a constant, valid URL");
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .push(API_PREFIX.trim_start_matches('/'))
            .extend(segments);
        url
    }

    fn map_transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() || (e.is_request() && !self.socket.exists()) {
            ClientError::NotRunning {
                socket: self.socket.display().to_string(),
            }
        } else {
            // reqwest's message names the request; what went wrong is further down the chain.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(": ");
                why.push_str(&cause.to_string());
                source = cause.source();
            }
            ClientError::Transport(why)
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&dyn erased::Body>,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, ClientError> {
        self.send_keyed(method, path, body, query, None).await
    }

    /// [`Self::send`] with an `Idempotency-Key` (docs/api.md).
    async fn send_keyed(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&dyn erased::Body>,
        query: &[(&str, String)],
        key: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_with(method, path, body, query, key, REQUEST_TIMEOUT)
            .await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&dyn erased::Body>,
        query: &[(&str, String)],
        key: Option<&str>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, Self::url(path)).timeout(timeout);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_json());
        }
        let resp = req.send().await.map_err(|e| self.map_transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.map_transport(e))?;
        Err(api_error(status, &bytes))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&dyn erased::Body>,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.json_keyed(method, path, body, query, None).await
    }

    async fn json_keyed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&dyn erased::Body>,
        query: &[(&str, String)],
        key: Option<&str>,
    ) -> Result<T, ClientError> {
        let resp = self.send_keyed(method, path, body, query, key).await?;
        let bytes = resp.bytes().await.map_err(|e| self.map_transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// [`Self::json`] for work that takes as long as the data it moves (backups, restores).
    async fn json_slow<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&dyn erased::Body>,
    ) -> Result<T, ClientError> {
        let resp = self
            .send_with(method, path, body, &[], None, SLOW_REQUEST_TIMEOUT)
            .await?;
        let bytes = resp.bytes().await.map_err(|e| self.map_transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn status(&self) -> Result<StatusJson, ClientError> {
        self.json(Method::GET, &["status"], None, &[]).await
    }

    /// Asks the daemon to shut down; returns once it has accepted.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.send(Method::POST, &["shutdown"], None, &[]).await?;
        Ok(())
    }

    pub async fn chats(&self) -> Result<Vec<ChatJson>, ClientError> {
        let list: ChatListJson = self.json(Method::GET, &["chats"], None, &[]).await?;
        Ok(list.chats)
    }

    pub async fn create_chat(&self, title: &str) -> Result<ChatJson, ClientError> {
        self.create_chat_keyed(title, None).await
    }

    /// Creates a chat; with `key`, a retry with the same key answers with the same chat.
    pub async fn create_chat_keyed(
        &self,
        title: &str,
        key: Option<&str>,
    ) -> Result<ChatJson, ClientError> {
        let body = CreateChatRequest {
            title: title.into(),
        };
        self.json_keyed(Method::POST, &["chats"], Some(&body), &[], key)
            .await
    }

    pub async fn chat(&self, chat: &str) -> Result<ChatJson, ClientError> {
        self.json(Method::GET, &["chats", chat], None, &[]).await
    }

    pub async fn rename_chat(&self, chat: &str, title: &str) -> Result<ChatJson, ClientError> {
        let body = RenameChatRequest {
            title: title.into(),
        };
        self.json(Method::PATCH, &["chats", chat], Some(&body), &[])
            .await
    }

    /// The last `limit` messages (or the `limit` before `before`), oldest first.
    pub async fn messages(
        &self,
        chat: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<MessageJson>, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(b) = before {
            query.push(("before", b.to_string()));
        }
        let list: MessageListJson = self
            .json(Method::GET, &["chats", chat, "messages"], None, &query)
            .await?;
        Ok(list.messages)
    }

    pub async fn post(
        &self,
        chat: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<MessageJson, ClientError> {
        self.post_keyed(chat, text, reply_to, None).await
    }

    /// Posts a message; with `key`, a retry with the same key answers with the same message.
    pub async fn post_keyed(
        &self,
        chat: &str,
        text: &str,
        reply_to: Option<&str>,
        key: Option<&str>,
    ) -> Result<MessageJson, ClientError> {
        self.post_with_attachments(chat, text, reply_to, Vec::new(), key)
            .await
    }

    /// Posts a message with attachments uploaded first ([`Self::upload_blob`]).
    pub async fn post_with_attachments(
        &self,
        chat: &str,
        text: &str,
        reply_to: Option<&str>,
        attachments: Vec<PostAttachment>,
        key: Option<&str>,
    ) -> Result<MessageJson, ClientError> {
        let body = PostRequest {
            text: text.into(),
            reply_to: reply_to.map(Into::into),
            attachments,
        };
        let path = ["chats", chat, "messages"];
        self.json_keyed(Method::POST, &path, Some(&body), &[], key)
            .await
    }

    /// Stores bytes as a blob (streamed; `len` when known up front), to attach to a post.
    pub async fn upload_blob(
        &self,
        body: impl Into<reqwest::Body>,
        len: Option<u64>,
    ) -> Result<BlobJson, ClientError> {
        let mut req = self
            .http
            .post(Self::url(&["blobs"]))
            .timeout(SLOW_REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
        if let Some(len) = len {
            req = req.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| self.map_transport(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.map_transport(e))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Fetches a message's attachments from other devices, returning once all are here.
    pub async fn fetch_attachments(
        &self,
        chat: &str,
        msg: &str,
    ) -> Result<Vec<AttachmentJson>, ClientError> {
        let path = ["chats", chat, "messages", msg, "attachments", "fetch"];
        let list: AttachmentListJson = self.json_slow(Method::POST, &path, None).await?;
        Ok(list.attachments)
    }

    /// The bytes of a message's attachment (`index` in its list), as a response to stream.
    pub async fn attachment(
        &self,
        chat: &str,
        msg: &str,
        index: usize,
    ) -> Result<reqwest::Response, ClientError> {
        let index = index.to_string();
        let path = [
            "chats",
            chat,
            "messages",
            msg,
            "attachments",
            index.as_str(),
        ];
        self.send_with(Method::GET, &path, None, &[], None, SLOW_REQUEST_TIMEOUT)
            .await
    }

    /// Attachment downloads under way.
    pub async fn transfers(&self) -> Result<Vec<TransferJson>, ClientError> {
        let list: TransferListJson = self.json(Method::GET, &["transfers"], None, &[]).await?;
        Ok(list.transfers)
    }

    pub async fn message(&self, chat: &str, msg: &str) -> Result<MessageJson, ClientError> {
        self.json(Method::GET, &["chats", chat, "messages", msg], None, &[])
            .await
    }

    pub async fn edit(
        &self,
        chat: &str,
        msg: &str,
        text: &str,
    ) -> Result<MessageJson, ClientError> {
        let body = EditRequest { text: text.into() };
        self.json(
            Method::PATCH,
            &["chats", chat, "messages", msg],
            Some(&body),
            &[],
        )
        .await
    }

    pub async fn delete(&self, chat: &str, msg: &str) -> Result<MessageJson, ClientError> {
        self.json(Method::DELETE, &["chats", chat, "messages", msg], None, &[])
            .await
    }

    pub async fn react(
        &self,
        chat: &str,
        msg: &str,
        reaction: Option<&str>,
    ) -> Result<MessageJson, ClientError> {
        let path = ["chats", chat, "messages", msg, "reaction"];
        match reaction {
            Some(r) => {
                let body = ReactRequest { reaction: r.into() };
                self.json(Method::PUT, &path, Some(&body), &[]).await
            }
            None => self.json(Method::DELETE, &path, None, &[]).await,
        }
    }

    pub async fn mark_read(
        &self,
        chat: &str,
        message: Option<&str>,
    ) -> Result<ReadStateJson, ClientError> {
        let body = MarkReadRequest {
            message: message.map(Into::into),
        };
        self.json(Method::POST, &["chats", chat, "read"], Some(&body), &[])
            .await
    }

    pub async fn peers(&self) -> Result<Vec<PeerJson>, ClientError> {
        let list: PeerListJson = self.json(Method::GET, &["peers"], None, &[]).await?;
        Ok(list.peers)
    }

    pub async fn devices(&self) -> Result<Vec<DeviceJson>, ClientError> {
        let list: DeviceListJson = self.json(Method::GET, &["devices"], None, &[]).await?;
        Ok(list.devices)
    }

    pub async fn add_device(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<DeviceJson, ClientError> {
        let body = AddDeviceRequest {
            id: id.into(),
            name: name.map(Into::into),
        };
        self.json(Method::POST, &["devices"], Some(&body), &[])
            .await
    }

    pub async fn remove_device(&self, device: &str) -> Result<DeviceJson, ClientError> {
        self.json(Method::DELETE, &["devices", device], None, &[])
            .await
    }

    /// Sets up backups (`chatsync backup init`).
    pub async fn backup_init(
        &self,
        request: &BackupInitRequest,
    ) -> Result<BackupInitJson, ClientError> {
        self.json_slow(Method::POST, &["backup"], Some(request))
            .await
    }

    /// Where backups go, if they are set up.
    pub async fn backup_status(&self) -> Result<BackupStatusJson, ClientError> {
        self.json(Method::GET, &["backup"], None, &[]).await
    }

    /// Backs up now (`chatsync backup now`).
    pub async fn backup_now(&self) -> Result<BackupJson, ClientError> {
        self.json_slow(Method::POST, &["backup", "snapshots"], None)
            .await
    }

    pub async fn backup_snapshots(&self) -> Result<Vec<SnapshotJson>, ClientError> {
        let list: SnapshotListJson = self
            .json(Method::GET, &["backup", "snapshots"], None, &[])
            .await?;
        Ok(list.snapshots)
    }

    pub async fn backup_verify(&self, snapshot: Option<&str>) -> Result<VerifyJson, ClientError> {
        let body = VerifyRequest {
            snapshot: snapshot.map(Into::into),
        };
        self.json_slow(Method::POST, &["backup", "verify"], Some(&body))
            .await
    }

    /// Restores from a backup (`chatsync backup restore`).
    pub async fn backup_restore(
        &self,
        request: &RestoreRequest,
    ) -> Result<RestoreJson, ClientError> {
        self.json_slow(Method::POST, &["backup", "restore"], Some(request))
            .await
    }

    /// Where the web client stands (`chatsync web`).
    pub async fn web_status(&self) -> Result<WebStatusJson, ClientError> {
        self.json(Method::GET, &["web"], None, &[]).await
    }

    /// Turns the web client on or off (`chatsync web enable` / `disable`).
    pub async fn web_settings(
        &self,
        request: &WebSettingsRequest,
    ) -> Result<WebStatusJson, ClientError> {
        self.json(Method::POST, &["web"], Some(request), &[]).await
    }

    /// A one-time link that logs a browser in (`chatsync web link`).
    pub async fn web_link(&self) -> Result<WebLinkJson, ClientError> {
        self.json(Method::POST, &["web", "links"], None, &[]).await
    }

    /// The browsers linked (`chatsync web sessions`).
    pub async fn web_sessions(&self) -> Result<Vec<WebSessionJson>, ClientError> {
        let list: WebSessionListJson = self
            .json(Method::GET, &["web", "sessions"], None, &[])
            .await?;
        Ok(list.sessions)
    }

    /// Ends the sessions whose id starts with `session` (`all`: every one).
    pub async fn web_revoke(&self, session: &str) -> Result<WebRevokedJson, ClientError> {
        self.json(Method::DELETE, &["web", "sessions", session], None, &[])
            .await
    }

    /// Opens an invitation (`chatsync pair`) valid for `expires_secs` seconds.
    pub async fn create_invite(&self, expires_secs: u64) -> Result<InviteJson, ClientError> {
        let body = CreateInviteRequest {
            expires_secs: Some(expires_secs),
        };
        self.json(Method::POST, &["invites"], Some(&body), &[])
            .await
    }

    pub async fn cancel_invite(&self, invite: &str) -> Result<InviteCancelledJson, ClientError> {
        self.json(Method::DELETE, &["invites", invite], None, &[])
            .await
    }

    /// Joins the mesh of the device that made `ticket`.
    pub async fn join(&self, ticket: &str, name: Option<&str>) -> Result<JoinedJson, ClientError> {
        let body = JoinRequest {
            ticket: ticket.into(),
            name: name.map(Into::into),
        };
        self.json(Method::POST, &["join"], Some(&body), &[]).await
    }

    /// Opens the event stream (optionally for one chat) and waits for its `hello` line, after
    /// which no change is missed.
    pub async fn events(&self, chat: Option<&str>) -> Result<EventStream, ClientError> {
        self.events_with(chat, false).await
    }

    /// [`Self::events`], with the progress events (`sync.progress`, `backup.progress`) too.
    pub async fn progress_events(&self) -> Result<EventStream, ClientError> {
        self.events_with(None, true).await
    }

    async fn events_with(
        &self,
        chat: Option<&str>,
        progress: bool,
    ) -> Result<EventStream, ClientError> {
        let mut query: Vec<(&str, String)> =
            chat.map(|c| ("chat", c.to_string())).into_iter().collect();
        if progress {
            query.push(("progress", "true".into()));
        }
        let mut req = self.http.get(Self::url(&["events"]));
        if !query.is_empty() {
            req = req.query(&query);
        }
        let resp = req.send().await.map_err(|e| self.map_transport(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        let mut stream = EventStream {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        };
        match stream.next().await? {
            Some(EventJson::Hello { .. }) => Ok(stream),
            Some(other) => Err(ClientError::Decode(format!(
                "event stream began with {other:?} instead of hello"
            ))),
            None => Err(ClientError::Decode("event stream ended at once".into())),
        }
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            candidates: body.error.candidates,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: ErrorCode::Unknown,
            message: format!("the daemon answered {status}"),
            candidates: Vec::new(),
        },
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// The daemon's live event stream, one event at a time.
pub struct EventStream {
    body: ByteStream,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event, or `None` when the daemon closed the stream (it is shutting down).
    pub async fn next(&mut self) -> Result<Option<EventJson>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice(line) {
                    // A newer daemon's event: nothing this client can act on.
                    Ok(EventJson::Unknown) => continue,
                    Ok(event) => return Ok(Some(event)),
                    Err(e) => return Err(ClientError::Decode(format!("bad event line: {e}"))),
                }
            }
            if self.buf.len() > MAX_EVENT_LINE {
                return Err(ClientError::Decode("event line too long".into()));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                None => return Ok(None),
            }
        }
    }
}

/// Request bodies, type-erased so that one `send` serves every request type.
mod erased {
    pub trait Body: Sync {
        fn to_json(&self) -> Vec<u8>;
    }

    impl<T: super::Serialize + Sync> Body for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}
