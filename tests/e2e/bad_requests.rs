//! Hostile and broken requests on the raw socket: each gets a JSON error with a stable code,
//! and none hurts the daemon.

use std::{
    io::Write,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    time::Duration,
};

use crate::support::{Device, HttpResponse, http, http_with_headers, raw_exchange, status_pid};

const JSON: Option<&str> = Some("application/json");

fn request(dev: &Device, method: &str, path: &str, ct: Option<&str>, body: &[u8]) -> HttpResponse {
    http(&dev.socket(), method, path, ct, body)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"))
}

fn assert_error(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(
        resp.status,
        status,
        "{resp:?}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        resp.error_code(),
        code,
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "error without a JSON content type: {resp:?}"
    );
}

/// A daemon with one chat; returns the chat's id.
fn daemon_with_chat(dev: &mut Device) -> String {
    dev.spawn_daemon();
    let resp = request(dev, "POST", "/v1/chats", JSON, br#"{"title":"target"}"#);
    assert_eq!(resp.status, 201, "{resp:?}");
    resp.json()["id"].as_str().expect("chat id").to_string()
}

#[test]
fn malformed_requests_get_json_errors() {
    let mut dev = Device::new();
    let chat = daemon_with_chat(&mut dev);
    let messages = format!("/v1/chats/{chat}/messages");

    // A good request, so that the failures below are the requests' fault.
    let ok = request(&dev, "POST", &messages, JSON, br#"{"text":"fine"}"#);
    assert_eq!(ok.status, 201, "{ok:?}");
    assert_eq!(ok.json()["text"], "fine");

    let resp = request(&dev, "POST", &messages, JSON, br#"{"text": "unterminated"#);
    assert_error(&resp, 400, "bad_json");
    let resp = request(&dev, "POST", &messages, JSON, b"\xff\xfe not json");
    assert_error(&resp, 400, "bad_json");
    // Valid JSON of the wrong shape (unknown field, wrong type) is a bad request too.
    let resp = request(&dev, "POST", &messages, JSON, br#"{"text":"x","bogus":1}"#);
    assert_error(&resp, 400, "bad_json");
    let resp = request(&dev, "POST", &messages, JSON, br#"{"text":42}"#);
    assert_error(&resp, 400, "bad_json");

    let resp = request(
        &dev,
        "POST",
        &messages,
        Some("text/plain"),
        br#"{"text":"x"}"#,
    );
    assert_error(&resp, 415, "unsupported_media_type");
    let resp = request(&dev, "POST", &messages, None, br#"{"text":"x"}"#);
    assert_error(&resp, 415, "unsupported_media_type");

    let mut huge = br#"{"text":""#.to_vec();
    huge.resize(256 * 1024 + 100, b'a');
    huge.extend_from_slice(br#""}"#);
    let resp = request(&dev, "POST", &messages, JSON, &huge);
    assert_error(&resp, 413, "too_large");

    // Without a Content-Length the limit must hold all the same.
    let mut chunked = format!(
        "POST {messages} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let mut body = br#"{"text":""#.to_vec();
    body.resize(300 * 1024, b'a');
    for piece in body.chunks(16 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(&dev.socket(), chunked).expect("no answer to a chunked body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");

    let over = format!(r#"{{"text":"{}"}}"#, "b".repeat(64 * 1024 + 1));
    let resp = request(&dev, "POST", &messages, JSON, over.as_bytes());
    assert_error(&resp, 400, "invalid");
    let exactly = format!(r#"{{"text":"{}"}}"#, "c".repeat(64 * 1024));
    let resp = request(&dev, "POST", &messages, JSON, exactly.as_bytes());
    assert_eq!(resp.status, 201, "64 KiB exactly is allowed: {resp:?}");

    let resp = request(&dev, "GET", &format!("{messages}?limit=abc"), None, b"");
    assert_error(&resp, 400, "bad_query");
    let resp = request(&dev, "GET", &format!("{messages}?limit=1001"), None, b"");
    assert_error(&resp, 400, "invalid");
    let resp = request(&dev, "GET", &format!("{messages}?limit=1"), None, b"");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["messages"].as_array().map(Vec::len), Some(1));

    for path in [
        "/v1/nope",
        "/nope",
        "/",
        "/v2/status",
        "/v1/chats/x/y/z/w/v",
    ] {
        let resp = request(&dev, "GET", path, None, b"");
        assert_error(&resp, 404, "no_route");
    }
    let resp = request(&dev, "GET", "/v1/chats/no-such-chat", None, b"");
    assert_error(&resp, 404, "not_found");

    let resp = request(&dev, "GET", "/v1/events?chat=no-such-chat", None, b"");
    assert_error(&resp, 404, "not_found");
    let resp = request(&dev, "GET", "/v1/chats/%FF%FE", None, b"");
    assert_error(&resp, 400, "bad_path");

    for (method, path) in [
        ("DELETE", "/v1/status".to_string()),
        ("GET", "/v1/shutdown".to_string()),
        ("PUT", messages.clone()),
    ] {
        let resp = request(&dev, method, &path, JSON, b"{}");
        assert_error(&resp, 405, "method_not_allowed");
    }

    // Still alive and well, and nothing bad was stored.
    assert!(status_pid(&dev.socket()).is_some());
    let resp = request(&dev, "GET", &messages, None, b"");
    let texts: Vec<usize> = resp.json()["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").len())
        .collect();
    assert_eq!(texts, [4, 64 * 1024]);
}

#[test]
fn garbage_on_the_socket_does_not_kill_the_daemon() {
    let mut dev = Device::new();
    dev.spawn_daemon();
    let socket = dev.socket();

    // Not HTTP at all.
    let answer = raw_exchange(&socket, b"\x00\x01\x02garbage\xff\xfe\r\n\r\n".to_vec());
    if let Ok(answer) = answer {
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Random bytes, many of them, without ever ending a header.
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x = crate::support::random_u64() | 1;
    while noise.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let _ = raw_exchange(&socket, noise);
    // A header that never ends, and a body shorter than announced, then hanging up.
    for bytes in [
        &b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Long: "[..],
        b"POST /v1/chats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"title\":",
        b"GET /v1/status HTTP/9.9\r\n\r\n",
        b"\r\n\r\n\r\n",
    ] {
        let mut s = UnixStream::connect(&socket).expect("connect");
        let _ = s.write_all(bytes);
        drop(s);
    }
    // Many connections opened and dropped at once.
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    drop(idle);
    // An event stream whose reader goes away.
    let mut s = UnixStream::connect(&socket).expect("connect");
    s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(50));
    drop(s);

    assert!(
        dev.child()
            .expect("daemon child")
            .try_wait()
            .expect("poll")
            .is_none(),
        "the daemon died:\n{}",
        dev.daemon_logs()
    );
    assert!(status_pid(&socket).is_some(), "status no longer answers");
    let resp = request(
        &dev,
        "POST",
        "/v1/chats",
        JSON,
        br#"{"title":"still here"}"#,
    );
    assert_eq!(resp.status, 201, "{resp:?}");
}

#[test]
fn socket_is_private() {
    let mut dev = Device::new();
    dev.spawn_daemon();
    let socket = dev.socket();
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir = socket.parent().expect("socket dir");
    let mode = std::fs::metadata(dir)
        .expect("socket dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "socket directory mode {mode:o}");
    let data = dev.home().join("data");
    let mode = std::fs::metadata(&data)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "data directory mode {mode:o}");
}

#[test]
fn requests_from_web_pages_are_refused() {
    let mut dev = Device::new();
    let chat = daemon_with_chat(&mut dev);
    let socket = dev.socket();
    for header in ["Origin", "Referer"] {
        let resp = http_with_headers(
            &socket,
            "POST",
            &format!("/v1/chats/{chat}/messages"),
            &[
                ("Content-Type", "application/json"),
                (header, "https://evil.example"),
            ],
            br#"{"text":"from a web page"}"#,
        )
        .expect("an answer");
        assert_error(&resp, 403, "browser_refused");
        let resp = http_with_headers(&socket, "GET", "/v1/status", &[(header, "null")], b"")
            .expect("an answer");
        assert_error(&resp, 403, "browser_refused");
    }
    let log = dev.ok_json(&["log", &chat]);
    assert!(log.is_empty(), "a refused post was stored: {log:?}");
}

#[test]
fn other_users_are_refused_even_when_the_socket_is_opened_up() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: acting as another user needs root");
        return;
    }
    let mut dev = Device::new();
    dev.spawn_daemon();
    // A permissions mistake: the home, the socket's directory and the socket opened to all.
    let socket = dev.socket();
    let mut dir = socket.parent().expect("socket dir").to_path_buf();
    loop {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if dir == dev.home() || !dir.pop() {
            break;
        }
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // The connection itself works for anyone now; the daemon must close it unread.
    let as_nobody = dev
        .command(&["--json", "status"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("cannot run chatsync as nobody");
    assert_ne!(
        as_nobody.status.code(),
        Some(0),
        "another user got an answer: {}",
        String::from_utf8_lossy(&as_nobody.stdout)
    );
    assert!(
        as_nobody.stdout.is_empty(),
        "another user got an answer: {}",
        String::from_utf8_lossy(&as_nobody.stdout)
    );
    // The owner still gets in.
    assert!(dev.ok_json1(&["status"])["device_id"].is_string());
    let log = dev.daemon_logs();
    assert!(
        log.contains("refused an API connection from another user"),
        "the refusal is not in the daemon log:\n{log}"
    );
}
