//! A real browser for tests of the web client: headless Chromium, driven over WebDriver by
//! `chromedriver` on a loopback port, with a profile of its own, both gone when dropped.
//! `.ci/run` installs Debian's `chromium` and `chromium-driver` (and sets
//! `CHATSYNC_REQUIRE_BROWSER`, so that a missing browser fails there rather than skips).

use std::{process::Child, time::Duration};

pub use fantoccini::{Client, Locator};

/// Where Debian puts them.
const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of `width` x `height`; `None`
    /// (saying why) when they are not installed.
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        let installed = std::process::Command::new(CHROMEDRIVER)
            .arg("--version")
            .output()
            .is_ok()
            && std::path::Path::new(CHROMIUM).exists();
        if !installed {
            assert!(
                std::env::var_os("CHATSYNC_REQUIRE_BROWSER").is_none(),
                "a browser is required here (CHATSYNC_REQUIRE_BROWSER) but chromium or \
                 chromedriver is not installed"
            );
            eprintln!("skipped: chromium and chromium-driver are not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connected = fantoccini::ClientBuilder::rustls()
                .unwrap()
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match connected {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "cannot start a browser session: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Ends the session (the browser quits), then the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Clicks the element `css` selects, waiting for it to be there.
    pub async fn click(&self, css: &str) {
        self.client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} in the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Opens a one-time link of the web client (`chatsync web link`) and links this browser
    /// with its button.
    pub async fn link(&self, url: &str) {
        self.client.goto(url).await.unwrap();
        self.click("#link").await;
    }

    /// Waits (at most `timeout`) until `script` (a function body returning a value) returns
    /// something truthy in the page; returns that value.
    pub async fn until(&self, what: &str, timeout: Duration, script: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let value = self
                .client
                .execute(script, Vec::new())
                .await
                .unwrap_or(serde_json::Value::Null);
            let truthy = match &value {
                serde_json::Value::Null | serde_json::Value::Bool(false) => false,
                serde_json::Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's browser goes with its driver.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
