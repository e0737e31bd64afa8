//! The chatsync side: three real `chatsyncd` processes (A and B each dial S; all three trust
//! each other), and the waits the workloads share.

use chatsync_testkit::TestDaemon;

pub use crate::common::sync::{bytes_received, post_many, wait_connected, wait_messages};
use crate::common::{Home, home, start};

pub struct Three {
    pub s: TestDaemon,
    pub a: TestDaemon,
    /// None while B is stopped.
    b: Option<TestDaemon>,
    b_home: Home,
    b_flags: Vec<String>,
    pub s_id: String,
    _homes: Vec<Home>,
}

impl Three {
    /// S first; then A and B, each with `--peer` S; every daemon adds the other two to its
    /// roster; returns once A and B are connected to S.
    pub async fn start() -> Three {
        let homes: Vec<Home> = (0..3).map(|_| home()).collect();
        let (s, _) = start(&homes[0], &[]).await;
        let s_addr = s.dial_address().await;
        let flags = vec!["--peer".to_string(), s_addr];
        let (a, _) = start(&homes[1], &flags).await;
        let (b, _) = start(&homes[2], &flags).await;
        let daemons = [&s, &a, &b];
        for d in daemons {
            for other in daemons {
                if d.device_id != other.device_id {
                    d.trust(&other.device_id).await;
                }
            }
        }
        for d in [&a, &b] {
            wait_connected(&d.client, &s.device_id).await;
        }
        Three {
            s_id: s.device_id.clone(),
            b_home: homes[2].clone(),
            b_flags: flags,
            s,
            a,
            b: Some(b),
            _homes: homes,
        }
    }

    pub fn b(&self) -> &TestDaemon {
        self.b.as_ref().expect("B is stopped")
    }

    pub async fn stop_b(&mut self) {
        self.b.take().expect("B is stopped").shutdown().await;
    }

    /// Starts B again on its home (it dials S); returns once its API answers.
    pub async fn start_b(&mut self) {
        assert!(self.b.is_none(), "B is running");
        let (b, _) = start(&self.b_home, &self.b_flags).await;
        self.b = Some(b);
    }

    /// `k` chats made on A, once S and B have each of them.
    pub async fn chats(&self, k: usize, title: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for c in 0..k {
            let chat = self.a.create_chat(&format!("{title} {c}")).await.id;
            ids.push(chat);
        }
        for chat in &ids {
            wait_messages(&self.s.client, chat, 0).await;
            wait_messages(&self.b().client, chat, 0).await;
        }
        ids
    }

    pub async fn shutdown(self) {
        if let Some(b) = self.b {
            b.shutdown().await;
        }
        self.a.shutdown().await;
        self.s.shutdown().await;
    }
}
