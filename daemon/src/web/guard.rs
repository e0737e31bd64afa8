//! What every request to the web client passes before it reaches a page or a route.
//!
//! - **Host**: an IP address or `localhost`, with the server's port. A name that resolves to
//!   this machine (DNS rebinding: a site whose name points at 127.0.0.1 after the browser
//!   loaded it) is refused, so no other site's pages can talk to the server as same-origin.
//! - **Origin** on every write (any method but GET and HEAD): present and this server's own.
//!   With `SameSite=Strict` cookies this keeps other sites from making the browser write
//!   (CSRF).
//! - **Session**: everything but the page itself, its script and style, and the link pages
//!   needs the session: its cookie and the page's key header (`sessions.rs`). A session's event
//!   streams end when it does.
//! - **Headers** on every answer: a strict Content-Security-Policy (scripts and styles from this
//!   server only, no inline code, no frames), `nosniff`, no referrer to other sites (a
//!   same-origin one keeps `Origin` on writes), no caching.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use chatsync_api::ErrorCode;
use futures_util::StreamExt;

use super::{SESSION_COOKIE, WebState};
use crate::api::ApiError;

/// The header that carries the page's half of the session (`sessions.rs`).
const KEY_HEADER: &str = "x-chatsync-key";

/// The Content-Security-Policy of every answer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Paths served without a session.
fn public(path: &str) -> bool {
    matches!(path, "/" | "/app.js" | "/app.css") || path.starts_with("/link/")
}

pub async fn guard(
    State(web): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match check(&web, peer, &request) {
        Err(refusal) => refusal.into_response(),
        Ok(session_end) => {
            let response = next.run(request).await;
            match session_end {
                // Streams (the event stream) close when the session ends.
                Some(ended) => {
                    let (parts, body) = response.into_parts();
                    let stream = body.into_data_stream().take_until(ended.cancelled_owned());
                    Response::from_parts(parts, Body::from_stream(stream))
                }
                None => response,
            }
        }
    };
    secure_headers(response.headers_mut());
    response
}

/// `Ok` with what ends the request's session (none for public paths), or the refusal.
fn check(
    web: &WebState,
    peer: SocketAddr,
    request: &Request,
) -> Result<Option<tokio_util::sync::CancellationToken>, ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, web.port) {
        return Err(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::WrongHost,
            "this server answers only to an IP address or localhost",
        ));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if origin != Some(format!("http://{host}").as_str()) || host.is_empty() {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::CrossOrigin,
                "writes are taken only from this server's own pages",
            ));
        }
    }
    let path = request.uri().path();
    if public(path) {
        return Ok(None);
    }
    let now = crate::engine::now_ms();
    let key = headers
        .get(KEY_HEADER)
        .and_then(|k| k.to_str().ok())
        .unwrap_or("");
    let session = session_token(headers)
        .and_then(|token| web.sessions.check(&token, key, now, &peer.ip().to_string()));
    match session {
        Some(ended) => Ok(Some(ended)),
        None => Err(refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this browser is not linked: run `chatsync web link` and open the link",
        )),
    }
}

/// Whether `host` (a `Host` header) names this server: an IP address or `localhost`, with
/// its port.
pub fn host_allowed(host: &str, port: u16) -> bool {
    // Browsers leave out port 80, the default.
    let (name, given_port) = match host.rsplit_once(':') {
        Some((name, given)) if !given.ends_with(']') => (name, given.parse::<u16>().ok()),
        _ => (host, Some(80)),
    };
    if given_port != Some(port) {
        return false;
    }
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|token| token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn secure_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "same-origin");
    set(headers, "x-frame-options", "DENY");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    set(headers, "cache-control", "no-store");
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> ApiError {
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_with_the_port_are_hosts() {
        for good in [
            "127.0.0.1:7780",
            "localhost:7780",
            "[::1]:7780",
            "192.168.1.9:7780",
        ] {
            assert!(host_allowed(good, 7780), "{good}");
        }
        assert!(host_allowed("127.0.0.1", 80) && host_allowed("[::1]", 80));
        for bad in [
            "127.0.0.1:80",
            "127.0.0.1",
            "evil.example:7780",
            "localhost.evil.example:7780",
            "",
            "[::1]",
            "::1",
        ] {
            assert!(!host_allowed(bad, 7780), "{bad}");
        }
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let token = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {SESSION_COOKIE}={token}; x=1")).unwrap(),
        );
        assert_eq!(session_token(&headers), Some(token));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{SESSION_COOKIE}=short")).unwrap(),
        );
        assert_eq!(session_token(&headers), None);
    }
}
