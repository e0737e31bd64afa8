//! Who may use the web client: one-time links, and the sessions they open.
//!
//! `chatsync web link` asks for a link: a random token, valid once and for a few minutes, kept
//! in memory only. Opening it shows a page whose button spends it, and the browser gets a
//! session in two halves, both needed on every request: a random token in an `HttpOnly`,
//! `SameSite=Strict` cookie, which the page's scripts cannot read; and a random key the page
//! keeps in its own storage and sends as a header (`X-Chatsync-Key`). Cookies are shared by
//! every port of a host, so another web server on this computer that the browser visits gets
//! the cookie; it never gets the key, which the browser keeps per origin. The daemon keeps only
//! SHA-256 hashes of both (in `web-sessions.json`, readable by its user alone), so the file
//! cannot be replayed. A session unused for [`SESSION_IDLE`] expires; `chatsync web revoke`
//! ends one at once, and with it the event streams it has open.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// How long a link stays valid.
pub const LINK_VALID: Duration = Duration::from_secs(10 * 60);
/// A session unused this long expires.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Open links at most (the oldest goes first).
const MAX_LINKS: usize = 8;
/// Sessions at most (the one unused longest goes first).
const MAX_SESSIONS: usize = 32;
/// Longest user agent kept.
const MAX_AGENT_CHARS: usize = 200;
/// Last-seen times are written to the file at most this often.
const SAVE_EVERY_MS: i64 = 60_000;

/// One session, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// A short id for `chatsync web revoke` (the start of the token's hash).
    pub id: String,
    pub created_at: i64,
    pub last_seen: i64,
    /// The browser's `User-Agent`, shortened.
    pub user_agent: String,
    /// Where it last connected from.
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSession {
    /// SHA-256 of the cookie's token (hex).
    hash: String,
    /// SHA-256 of the page's key (hex).
    key_hash: String,
    #[serde(flatten)]
    info: SessionInfo,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    sessions: Vec<StoredSession>,
}

struct Session {
    info: SessionInfo,
    key_hash: String,
    /// Cancelled when the session ends: its event streams close.
    ended: CancellationToken,
}

#[derive(Default)]
struct Book {
    /// Token hash -> expiry (ms).
    links: HashMap<String, i64>,
    /// Token hash -> session.
    sessions: HashMap<String, Session>,
    saved_at: i64,
}

/// The links and sessions of the web client.
pub struct Sessions {
    file: PathBuf,
    book: Mutex<Book>,
    /// Held while the file is written.
    writing: Mutex<()>,
}

impl Sessions {
    /// The sessions kept in `data_dir` (none if the file is missing or unreadable).
    pub fn load(data_dir: &Path) -> Sessions {
        let file = data_dir.join("web-sessions.json");
        let stored: File = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "web sessions file unreadable; every browser must link again");
                File::default()
            }),
            Err(_) => File::default(),
        };
        let sessions = stored
            .sessions
            .into_iter()
            .take(MAX_SESSIONS)
            .map(|s| {
                (
                    s.hash,
                    Session {
                        info: s.info,
                        key_hash: s.key_hash,
                        ended: CancellationToken::new(),
                    },
                )
            })
            .collect();
        Sessions {
            file,
            book: Mutex::new(Book {
                sessions,
                ..Book::default()
            }),
            writing: Mutex::new(()),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new link's token, valid for [`LINK_VALID`] from `now` (ms).
    pub fn new_link(&self, now: i64) -> String {
        let token = new_token();
        let mut book = self.book();
        book.links.retain(|_, expires| *expires > now);
        if book.links.len() >= MAX_LINKS
            && let Some(oldest) = book
                .links
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(hash, _)| hash.clone())
        {
            book.links.remove(&oldest);
        }
        book.links
            .insert(hash(&token), now + LINK_VALID.as_millis() as i64);
        token
    }

    /// Whether `token` is a link still open (it is not spent).
    pub fn link_open(&self, token: &str, now: i64) -> bool {
        self.book()
            .links
            .get(&hash(token))
            .is_some_and(|expires| *expires > now)
    }

    /// Spends the link `token` and opens a session for the browser: returns the session's
    /// cookie token and page key, or `None` if the link was spent, expired or never made.
    pub fn spend_link(
        &self,
        token: &str,
        now: i64,
        user_agent: &str,
        address: &str,
    ) -> Option<(String, String)> {
        let mut book = self.book();
        let expires = book.links.remove(&hash(token))?;
        if expires <= now {
            return None;
        }
        if book.sessions.len() >= MAX_SESSIONS
            && let Some(idlest) = book
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.info.last_seen)
                .map(|(hash, _)| hash.clone())
            && let Some(gone) = book.sessions.remove(&idlest)
        {
            gone.ended.cancel();
        }
        let (session, key) = (new_token(), new_token());
        let hashed = hash(&session);
        let info = SessionInfo {
            id: hashed[..12].to_string(),
            created_at: now,
            last_seen: now,
            user_agent: user_agent.chars().take(MAX_AGENT_CHARS).collect(),
            address: address.to_string(),
        };
        book.sessions.insert(
            hashed,
            Session {
                info,
                key_hash: hash(&key),
                ended: CancellationToken::new(),
            },
        );
        drop(book);
        self.persist(now);
        Some((session, key))
    }

    /// The session whose cookie token is `token` and page key `key`, if it is open: notes it
    /// as seen now from `address`, and returns what is cancelled when it ends. An expired one
    /// is removed.
    pub fn check(
        &self,
        token: &str,
        key: &str,
        now: i64,
        address: &str,
    ) -> Option<CancellationToken> {
        let hashed = hash(token);
        let mut book = self.book();
        let session = book.sessions.get_mut(&hashed)?;
        if session.key_hash != hash(key) {
            return None;
        }
        let ended = session.ended.clone();
        let expired = now - session.info.last_seen > SESSION_IDLE.as_millis() as i64;
        if expired {
            book.sessions.remove(&hashed);
            ended.cancel();
        } else {
            session.info.last_seen = now;
            if session.info.address != address {
                session.info.address = address.to_string();
            }
        }
        let save = expired || now - book.saved_at > SAVE_EVERY_MS;
        if save {
            // The requests that come meanwhile leave the writing to this one.
            book.saved_at = now;
        }
        drop(book);
        if save {
            self.persist(now);
        }
        (!expired).then_some(ended)
    }

    /// The open sessions, most recently seen first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .book()
            .sessions
            .values()
            .map(|s| s.info.clone())
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
        out
    }

    /// Ends the sessions whose id starts with `id` (every one for `None`); returns how many.
    pub fn revoke(&self, id: Option<&str>, now: i64) -> usize {
        let mut book = self.book();
        let ending: Vec<String> = book
            .sessions
            .iter()
            .filter(|(_, s)| id.is_none_or(|id| !id.is_empty() && s.info.id.starts_with(id)))
            .map(|(hash, _)| hash.clone())
            .collect();
        for hash in &ending {
            if let Some(gone) = book.sessions.remove(hash) {
                gone.ended.cancel();
            }
        }
        drop(book);
        if !ending.is_empty() {
            self.persist(now);
        }
        ending.len()
    }

    /// Forgets every open link (the web client was turned off).
    pub fn close_links(&self) {
        self.book().links.clear();
    }

    /// Writes the sessions to the file. Writers take turns, each writing the sessions as they
    /// are when its turn comes, so the file never goes back to an older state; requests only
    /// wait for the book while it is copied, never for the disk.
    fn persist(&self, now: i64) {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let file = {
            let mut book = self.book();
            book.saved_at = now;
            File {
                sessions: book
                    .sessions
                    .iter()
                    .map(|(hash, s)| StoredSession {
                        hash: hash.clone(),
                        key_hash: s.key_hash.clone(),
                        info: s.info.clone(),
                    })
                    .collect(),
            }
        };
        let written = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::files::write_private(&self.file, &bytes));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot keep the web sessions");
        }
    }
}

/// 32 random bytes, hex.
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_opens_one_session_once() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::load(dir.path());
        let link = sessions.new_link(1_000);
        assert!(sessions.link_open(&link, 1_000));
        let (token, key) = sessions
            .spend_link(&link, 2_000, "Firefox", "127.0.0.1")
            .unwrap();
        assert!(!sessions.link_open(&link, 2_000));
        let again = sessions.spend_link(&link, 2_000, "Firefox", "127.0.0.1");
        assert!(again.is_none());
        assert!(sessions.check(&token, &key, 3_000, "127.0.0.1").is_some());
        assert!(sessions.check(&link, &key, 3_000, "127.0.0.1").is_none());
        // Both halves are needed: the cookie alone (what another port's server could get) is
        // refused.
        assert!(sessions.check(&token, "", 3_000, "127.0.0.1").is_none());
        assert!(sessions.check(&token, &token, 3_000, "127.0.0.1").is_none());
        // Kept across a restart, as hashes only.
        let reloaded = Sessions::load(dir.path());
        assert!(reloaded.check(&token, &key, 4_000, "127.0.0.1").is_some());
        let file = std::fs::read_to_string(dir.path().join("web-sessions.json")).unwrap();
        assert!(!file.contains(&token) && !file.contains(&key));
    }

    #[test]
    fn links_and_sessions_expire_and_sessions_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::load(dir.path());
        let late = sessions.new_link(0);
        let too_late = LINK_VALID.as_millis() as i64 + 1;
        assert!(sessions.spend_link(&late, too_late, "", "").is_none());
        let link = sessions.new_link(0);
        let (token, key) = sessions.spend_link(&link, 1, "", "").unwrap();
        let idle = SESSION_IDLE.as_millis() as i64;
        let ended = sessions.check(&token, &key, idle, "").unwrap();
        assert!(!ended.is_cancelled());
        assert!(sessions.check(&token, &key, 2 * idle + 1, "").is_none());
        assert!(ended.is_cancelled(), "an expired session's streams end");
        let link = sessions.new_link(0);
        let (token, key) = sessions.spend_link(&link, 1, "", "").unwrap();
        let ended = sessions.check(&token, &key, 2, "").unwrap();
        let id = sessions.list()[0].id.clone();
        assert_eq!(sessions.revoke(Some(""), 3), 0, "an empty id names nothing");
        assert_eq!(sessions.revoke(Some(&id[..6]), 3), 1);
        assert!(ended.is_cancelled());
        assert!(sessions.check(&token, &key, 4, "").is_none());
    }

    #[test]
    fn open_links_and_sessions_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::load(dir.path());
        let links: Vec<String> = (0..MAX_LINKS + 3)
            .map(|n| sessions.new_link(n as i64))
            .collect();
        assert!(!sessions.link_open(&links[0], 100));
        assert!(sessions.link_open(&links[MAX_LINKS + 2], 100));
        for n in 0..MAX_SESSIONS + 5 {
            let link = sessions.new_link(n as i64);
            sessions.spend_link(&link, n as i64, "", "").unwrap();
        }
        assert_eq!(sessions.list().len(), MAX_SESSIONS);
    }
}
