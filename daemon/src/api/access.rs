//! Who may use the API: the user who runs the daemon, from a program rather than a web page.
//!
//! The socket's directory (0700) and the socket (0600) already keep other users out, but file
//! modes are easy to loosen by mistake (a shared home, a `chmod -R`, a container mount), so
//! every connection is also checked with the kernel's word for who is on the other end
//! (`SO_PEERCRED`): a connection from any other user is closed before a byte is read.
//!
//! A web page cannot open a Unix socket itself, but a local proxy or a browser extension can
//! forward its requests; those carry `Origin` or `Referer`. No client of this API is a web page,
//! so any request with either header is refused.

use axum::{
    extract::Request,
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use chatsync_api::ErrorCode;
use tokio::net::{UnixListener, UnixStream, unix::SocketAddr};

use super::ApiError;

/// A Unix listener that hands on only connections from the user the daemon runs as.
pub struct OwnerOnly {
    inner: UnixListener,
    owner: u32,
}

impl OwnerOnly {
    pub fn new(inner: UnixListener) -> OwnerOnly {
        OwnerOnly {
            inner,
            owner: nix::unistd::geteuid().as_raw(),
        }
    }
}

impl axum::serve::Listener for OwnerOnly {
    type Io = UnixStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (UnixStream, SocketAddr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == self.owner => return (stream, addr),
                Ok(cred) => tracing::warn!(
                    uid = cred.uid(),
                    pid = cred.pid(),
                    owner = self.owner,
                    "refused an API connection from another user"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "refused an API connection: cannot tell who is calling")
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Refuses requests that carry `Origin` or `Referer`, which only browsers send.
pub async fn refuse_browsers(request: Request, next: Next) -> Response {
    if from_a_browser(request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::BrowserRefused,
            "requests from web pages are refused (the request has an Origin or Referer header)",
        )
        .into_response();
    }
    next.run(request).await
}

fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) || headers.contains_key(header::REFERER)
}
