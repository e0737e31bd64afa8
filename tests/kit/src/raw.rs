//! HTTP below the client, for tests of the wire itself: exact statuses, content types and JSON,
//! malformed requests, and the event stream's lines. Everything else goes through
//! `chatsync_api::Client`.

use std::{path::Path, time::Duration};

use reqwest::{Method, RequestBuilder, StatusCode, header::CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// How long a test waits for one event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests to one daemon's socket, answered as [`Reply`]s.
#[derive(Clone, Debug)]
pub struct RawHttp {
    client: reqwest::Client,
}

impl RawHttp {
    pub fn new(socket: &Path) -> RawHttp {
        RawHttp {
            client: reqwest::Client::builder()
                .unix_socket(socket)
                // A daemon that hangs fails the test instead of hanging it (an event stream
                // held by a test lasts seconds).
                .timeout(Duration::from_secs(120))
                .build()
                .expect("cannot build an HTTP client"),
        }
    }

    /// URL of an API route (`path` without the `/v1` prefix, query string and all).
    pub fn url(&self, path: &str) -> String {
        format!("http://chatsyncd/v1{path}")
    }

    /// A request to an API route, ready to be completed and sent with [`Self::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request to any URL on the socket (an unversioned route, say).
    pub fn request_url(&self, method: Method, url: &str) -> RequestBuilder {
        self.client.request(method, url)
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

    /// Subscribes to `GET /v1/events` (`query` is the query string, without `?`) and reads the
    /// `hello` line, which must name `device_id`.
    pub async fn events(&self, query: &str, device_id: &str) -> EventStream {
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
        assert_eq!(hello["device_id"], device_id);
        stream
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

/// Requests written byte by byte on the socket, for what no HTTP client would send.
pub mod blocking {
    use std::{
        io::{Read, Write},
        os::unix::net::UnixStream,
        path::Path,
        sync::mpsc,
        thread,
        time::Duration,
    };

    use serde_json::Value;

    /// A response read off the raw socket.
    #[derive(Debug)]
    pub struct HttpResponse {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl HttpResponse {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!(
                    "body of the {} response is not JSON ({e}): {:?}",
                    self.status,
                    String::from_utf8_lossy(&self.body)
                )
            })
        }

        /// The `error.code` of a JSON error body.
        pub fn error_code(&self) -> String {
            let body = self.json();
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or_else(|| panic!("not an error body: {body}"));
            assert!(
                body["error"]["message"].is_string(),
                "error without a message: {body}"
            );
            code.to_string()
        }
    }

    /// Sends one HTTP/1.1 request over the Unix socket (with `Connection: close`) and reads the
    /// whole response. The body is written from another thread, so that a server that answers
    /// before reading all of it (a body over the limit) cannot deadlock the test.
    pub fn http(
        socket: &Path,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("Content-Type", ct))
            .into_iter()
            .collect();
        http_with_headers(socket, method, path, &headers, body)
    }

    /// Like [`http`], with any extra headers.
    pub fn http_with_headers(
        socket: &Path,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: chatsyncd\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let raw = raw_exchange(socket, request)?;
        parse_response(&raw)
            .ok_or_else(|| std::io::Error::other(format!("unparsable response: {raw:?}")))
    }

    /// Writes `bytes` to the socket (from another thread, ignoring write errors) and reads until
    /// the server closes the connection (at most 10 s).
    pub fn raw_exchange(socket: &Path, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut writer = stream.try_clone()?;
        let (done_tx, done_rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            let _ = writer.write_all(&bytes);
            let _ = writer.flush();
            let _ = done_tx.send(());
        });
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        // Unblock the writer if the server stopped reading.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        let _ = handle.join();
        match read {
            Ok(_) => Ok(raw),
            // A reset after the answer arrived still leaves a usable answer.
            Err(_) if !raw.is_empty() => Ok(raw),
            Err(e) => Err(e),
        }
    }

    fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..split]).ok()?;
        let mut rest = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked {
            rest = dechunk(&rest)?;
        }
        Some(HttpResponse {
            status,
            headers,
            body: rest,
        })
    }

    fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let eol = data.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&data[..eol]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            data = &data[eol + 2..];
            if size == 0 {
                return Some(out);
            }
            out.extend_from_slice(data.get(..size)?);
            data = data.get(size + 2..)?;
        }
    }
}
