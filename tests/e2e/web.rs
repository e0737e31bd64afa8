//! The web client in a real browser (headless Chromium over WebDriver), as a person uses it:
//! link it with `chatsync web link`, see the chats, post, react, edit and delete from the page
//! and see it from another device, and see what another device posts appear without a reload.
//! And what must not work: no session, a revoked one, a wrong Host, a write from another site,
//! a message that looks like HTML.

use std::{
    io::{Read, Write},
    time::Duration,
};

use chatsync_testkit::browser::{Browser, Locator};
use serde_json::Value;

use crate::support::{Device, Pairing, eventually_blocking};

const WAIT: Duration = Duration::from_secs(20);

fn started() -> Device {
    let d = Device::new();
    d.start();
    d
}

fn log(dev: &Device, chat: &str) -> Vec<Value> {
    dev.ok_json(&["log", chat, "-n", "1000", "--json"])
}

/// A request to the web server at `port` straight over TCP (`head`: the request line and
/// headers, one per line): the status code and the whole answer.
fn request(port: u16, head: &str, body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = head.lines().collect::<Vec<_>>().join("\r\n");
    stream
        .write_all(
            format!(
                "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A script that returns the texts of the messages the page shows when they include `text`.
fn shows(text: &str) -> String {
    format!(
        "const t = [...document.querySelectorAll('#messages .msg .text')].map(e => e.textContent);\
         return t.includes({}) ? t : null;",
        serde_json::to_string(text).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_browser_reads_and_writes_the_chats_live() {
    let Some(browser) = Browser::start(1200, 800).await else {
        return;
    };
    let phone = started();
    let laptop = started();
    let mut pairing = Pairing::start(&phone, &[]);
    assert_eq!(laptop.run(&["join", &pairing.ticket]).code, 0);
    let (code, stderr) = pairing.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{stderr}");
    let family = phone.ok_json1(&["chat", "create", "family", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    phone.ok(&["post", &family, "hello from the phone"]);
    eventually_blocking("the laptop has the chat", WAIT, || {
        laptop.run(&["log", &family]).code == 0 && log(&laptop, &family).len() == 1
    });

    // Off until enabled; then a one-time link logs the browser in.
    let off = phone.run(&["web", "link"]);
    assert_ne!(off.code, 0);
    assert!(off.stderr.contains("off"), "{}", off.stderr);
    let on = phone.ok_json1(&["web", "enable", "--listen", "127.0.0.1:0", "--json"]);
    let url = on["url"].as_str().unwrap().to_string();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let link = phone.ok_json1(&["web", "link", "--json"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let c = &browser.client;
    c.goto(&url).await.unwrap();
    browser
        .until(
            "the page to say how to link",
            WAIT,
            "return !document.getElementById('unlinked').hidden;",
        )
        .await;
    browser.link(&link).await;
    browser
        .until(
            "the chat list",
            WAIT,
            "return [...document.querySelectorAll('#chat-list .title')]\
             .some(e => e.textContent === 'family');",
        )
        .await;
    browser
        .until(
            "the chat's last message in the list",
            WAIT,
            "return [...document.querySelectorAll('#chat-list .last')]\
             .some(e => e.textContent.endsWith('hello from the phone'));",
        )
        .await;
    // The link worked once: opened again, it logs nobody in.
    let (status, _) = request(
        port,
        &format!(
            "POST /link/{} HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: http://127.0.0.1:{port}",
            link.rsplit('/').next().unwrap()
        ),
        "",
    );
    assert_eq!(status, 410);

    // The chat, its message, and a post from the page that the other devices get.
    browser.click("#chat-list li").await;
    browser
        .until("the phone's message", WAIT, &shows("hello from the phone"))
        .await;
    let text = c.find(Locator::Css("#text")).await.unwrap();
    text.send_keys("written in the browser\u{E007}")
        .await
        .unwrap();
    eventually_blocking("the laptop has the browser's post", WAIT, || {
        log(&laptop, &family)
            .iter()
            .any(|m| m["text"] == "written in the browser")
    });
    assert!(
        log(&phone, &family)
            .iter()
            .any(|m| m["text"] == "written in the browser")
    );

    // What the laptop posts appears in the page with no reload, as text, never as HTML.
    let marker: Value = c
        .execute("window.__loaded = true; return true;", Vec::new())
        .await
        .unwrap();
    assert_eq!(marker, Value::Bool(true));
    laptop.ok(&["post", &family, "from the laptop"]);
    let hostile = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";
    laptop.ok(&["post", &family, hostile]);
    browser
        .until(
            "the laptop's post in the page",
            WAIT,
            &shows("from the laptop"),
        )
        .await;
    let shown = browser
        .until("the HTML-looking post in the page", WAIT, &shows(hostile))
        .await;
    assert!(shown.to_string().contains("onerror"), "{shown}");
    let inert: Value = c
        .execute(
            "return [window.__loaded === true, window.__pwned === undefined, \
             document.querySelector('#messages img, #messages script') === null];",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        inert,
        serde_json::json!([true, true, true]),
        "no reload, nothing ran"
    );

    // React, edit and delete from the page; the other devices see each.
    let react = "const m = [...document.querySelectorAll('#messages .msg')]\
                 .find(e => e.querySelector('.text').textContent === 'from the laptop');\
                 const b = [...m.querySelectorAll('.actions button')].find(b => b.textContent === '👍');\
                 b.click(); return true;";
    c.execute(react, Vec::new()).await.unwrap();
    eventually_blocking("the laptop sees the reaction", WAIT, || {
        log(&laptop, &family).iter().any(|m| {
            m["text"] == "from the laptop"
                && m["reactions"]
                    .as_object()
                    .is_some_and(|r| r.values().any(|v| v == "👍"))
        })
    });
    let edit = "const m = [...document.querySelectorAll('#messages .msg')]\
                .find(e => e.querySelector('.text').textContent === 'written in the browser');\
                [...m.querySelectorAll('.actions button')].find(b => b.textContent === 'Edit').click();\
                return true;";
    c.execute(edit, Vec::new()).await.unwrap();
    let edit_box = c.find(Locator::Css(".edit-box")).await.unwrap();
    edit_box.clear().await.unwrap();
    edit_box
        .send_keys("written in the browser, edited\u{E007}")
        .await
        .unwrap();
    eventually_blocking("the laptop sees the edit", WAIT, || {
        log(&laptop, &family)
            .iter()
            .any(|m| m["text"] == "written in the browser, edited" && m["edited"] == true)
    });
    let delete = "window.confirm = () => true;\
                  const m = [...document.querySelectorAll('#messages .msg')]\
                  .find(e => e.querySelector('.text').textContent === 'written in the browser, edited');\
                  [...m.querySelectorAll('.actions button')].find(b => b.textContent === 'Delete').click();\
                  return true;";
    c.execute(delete, Vec::new()).await.unwrap();
    eventually_blocking("the laptop sees the deletion", WAIT, || {
        log(&laptop, &family).iter().any(|m| m["deleted"] == true)
    });

    // The devices, each with whether it is in sync, and a pairing ticket with its QR code.
    browser.click("#show-devices").await;
    browser
        .until(
            "the laptop in sync in the device list",
            WAIT,
            "return [...document.querySelectorAll('#device-list li')]\
             .some(e => e.textContent.includes('connected; in sync'));",
        )
        .await;
    browser.click("#add-device").await;
    let ticket = browser
        .until(
            "a pairing ticket and its QR code",
            WAIT,
            "const qr = document.getElementById('invite-qr');\
             return qr.complete && qr.naturalWidth > 0 && qr.src.startsWith('blob:')\
             ? document.getElementById('invite-ticket').textContent : null;",
        )
        .await;
    assert!(ticket.as_str().unwrap().starts_with("cspair1_"), "{ticket}");
    browser.click("#devices-back").await;

    // A screenshot of the page, kept as the test's artifact.
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artifacts.join("web-client.png"), &png).unwrap();

    // The guard: no session, a wrong Host, a write from another site.
    let host = format!("Host: 127.0.0.1:{port}");
    let (status, body) = request(port, &format!("GET /v1/chats HTTP/1.1\n{host}"), "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    let (status, _) = request(
        port,
        &format!("GET / HTTP/1.1\nHost: rebound.example:{port}"),
        "",
    );
    assert_eq!(status, 421);
    let cookie: Value = c
        .get_named_cookie("chatsync_session")
        .await
        .map(|k| Value::String(k.value().to_string()))
        .unwrap();
    let cookie = cookie.as_str().unwrap();
    let key: Value = c
        .execute("return localStorage.getItem('chatsync_key');", Vec::new())
        .await
        .unwrap();
    let key = key.as_str().unwrap();
    assert_eq!(key.len(), 64);
    let session = format!("Cookie: chatsync_session={cookie}\nX-Chatsync-Key: {key}");
    let (status, _) = request(
        port,
        &format!(
            "POST /v1/chats HTTP/1.1\n{host}\n{session}\nOrigin: http://evil.example\n\
             Content-Type: application/json"
        ),
        r#"{"title":"x"}"#,
    );
    assert_eq!(status, 403);
    let (status, _) = request(
        port,
        &format!("GET /v1/chats HTTP/1.1\n{host}\n{session}"),
        "",
    );
    assert_eq!(status, 200);
    // The cookie alone (which any web server on this computer the browser visits gets) is not
    // enough: the page's key is needed too.
    let (status, _) = request(
        port,
        &format!("GET /v1/chats HTTP/1.1\n{host}\nCookie: chatsync_session={cookie}"),
        "",
    );
    assert_eq!(status, 401);
    // Nothing the local API keeps for itself is served to a browser.
    let (status, _) = request(
        port,
        &format!("POST /v1/shutdown HTTP/1.1\n{host}\n{session}\nOrigin: http://127.0.0.1:{port}"),
        "",
    );
    assert_eq!(status, 404);

    // Revoked: the browser is refused and the page says how to link again.
    let sessions = phone.ok_json(&["web", "sessions", "--json"]);
    assert_eq!(sessions.len(), 1);
    assert!(
        sessions[0]["user_agent"]
            .as_str()
            .unwrap()
            .contains("Chrome")
    );
    phone.ok(&["web", "revoke", "all"]);
    let (status, _) = request(
        port,
        &format!("GET /v1/chats HTTP/1.1\n{host}\n{session}"),
        "",
    );
    assert_eq!(status, 401);
    // The page's event stream ended with the session: it says so by itself, no reload.
    browser
        .until(
            "the page to say how to link",
            WAIT,
            "return !document.getElementById('unlinked').hidden;",
        )
        .await;
    browser.close().await;

    // A connection that never finishes its request does not hold the web client or the
    // daemon: turned off, the port is closed; stopped, the daemon stops at once.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(format!("GET / HTTP/1.1\r\n{host}\r\nX-Half: ").as_bytes())
        .unwrap();
    phone.ok(&["web", "disable"]);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    phone.ok_json1(&[
        "web",
        "enable",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--json",
    ]);
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(format!("GET / HTTP/1.1\r\n{host}\r\nX-Half: ").as_bytes())
        .unwrap();
    phone.stop();
    let logs = phone.daemon_logs();
    assert!(
        logs.contains("stopped") && !logs.contains("still in use"),
        "the daemon did not stop cleanly:\n{logs}"
    );
}

/// A 1 x 1 PNG.
const PIXEL_PNG: [u8; 67] = [
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_show_in_the_page_and_files_are_sent_from_it() {
    let Some(browser) = Browser::start(1200, 800).await else {
        return;
    };
    let phone = started();
    let album = phone.ok_json1(&["chat", "create", "album", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let png = phone.home().join("pixel.png");
    std::fs::write(&png, PIXEL_PNG).unwrap();
    phone.ok(&["post", &album, "a pixel", "--file", png.to_str().unwrap()]);
    let on = phone.ok_json1(&["web", "enable", "--listen", "127.0.0.1:0", "--json"]);
    let url = on["url"].as_str().unwrap().to_string();
    let link = phone.ok_json1(&["web", "link", "--json"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let c = &browser.client;
    c.goto(&url).await.unwrap();
    browser.link(&link).await;
    browser
        .until(
            "the chat list",
            WAIT,
            "return document.querySelector('#chat-list li') !== null;",
        )
        .await;
    browser.click("#chat-list li").await;
    // The image is in the message, decoded; the file has a button that saves it.
    browser
        .until(
            "the image in the message",
            WAIT,
            "const img = document.querySelector('#messages .attachments img.inline');\
             return img && img.complete && img.naturalWidth === 1 ? img.alt : null;",
        )
        .await;
    let saved: Value = c
        .execute(
            "return [...document.querySelectorAll('#messages button.file')]\
             .map(b => b.textContent);",
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(saved.to_string().contains("pixel.png"), "{saved}");

    // A file sent from the page reaches the device whole.
    let notes = phone.home().join("notes.txt");
    std::fs::write(&notes, "written on paper, sent from a browser\n").unwrap();
    let input = c.find(Locator::Css("#files")).await.unwrap();
    input.send_keys(notes.to_str().unwrap()).await.unwrap();
    let text = c.find(Locator::Css("#text")).await.unwrap();
    text.send_keys("the notes\u{E007}").await.unwrap();
    eventually_blocking("the device has the page's file", WAIT, || {
        log(&phone, &album).iter().any(|m| {
            m["text"] == "the notes"
                && m["attachments"][0]["name"] == "notes.txt"
                && m["attachments"][0]["present"] == true
        })
    });
    let id = log(&phone, &album)
        .iter()
        .find(|m| m["text"] == "the notes")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = phone.home().join("out");
    std::fs::create_dir_all(&out).unwrap();
    phone.ok(&[
        "attachment",
        "get",
        &album,
        &id,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "written on paper, sent from a browser\n"
    );
    browser.close().await;
    phone.stop();
}
