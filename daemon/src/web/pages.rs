//! The web client's own pages: the app (built into the binary from `assets/`), the link pages
//! that turn a one-time link into a session, and QR codes for pairing tickets.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{SESSION_COOKIE, WebState};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");
/// The session cookie's lifetime in the browser: 400 days, the most browsers keep one.
const COOKIE_MAX_AGE: u64 = 400 * 24 * 3600;
/// Longest text made into a QR code (pairing tickets are about 200 characters).
const MAX_QR_TEXT: usize = 1024;

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// A link's page: a button that spends it (a link opened by a preview or a prefetch is not
/// spent), or word that it was spent or has expired.
pub async fn link_page(State(web): State<Arc<WebState>>, Path(token): Path<String>) -> Response {
    if !token_shaped(&token) || !web.sessions.link_open(&token, crate::engine::now_ms()) {
        return spent();
    }
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>Link this browser - chatsync</title><link rel=\"stylesheet\" href=\"/app.css\">\
         </head><body><section class=\"panel\"><h1>chatsync</h1>\
         <p>Link this browser to chatsync on this computer? It will see and write every chat \
         until you revoke it (<code>chatsync web revoke</code>).</p>\
         <form method=\"post\" action=\"/link/{token}\">\
         <button type=\"submit\" id=\"link\">Link this browser</button></form>\
         </section></body></html>"
    );
    Html(body).into_response()
}

/// Spends a link: the browser gets a session cookie and goes to the app.
pub async fn link(
    State(web): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !token_shaped(&token) {
        return spent();
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("");
    let now = crate::engine::now_ms();
    let Some((session, key)) = web
        .sessions
        .spend_link(&token, now, agent, &peer.ip().to_string())
    else {
        return spent();
    };
    tracing::info!(address = %peer.ip(), "a browser was linked to the web client");
    // The server ends sessions left unused (`SESSION_IDLE`); the cookie itself lasts as long
    // as browsers let one, so that a session in use never lapses.
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={COOKIE_MAX_AGE}"
    );
    // The key goes in the fragment, which the browser never sends anywhere: the page keeps it.
    let mut response = Redirect::to(&format!("/#key={key}")).into_response();
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn spent() -> Response {
    (
        StatusCode::GONE,
        Html(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"color-scheme\" content=\"light dark\">\
             <title>chatsync</title><link rel=\"stylesheet\" href=\"/app.css\"></head><body>\
             <section class=\"panel\"><h1>chatsync</h1><p>This link was used already, or it \
             has expired. For a new one, run <code>chatsync web link</code>.</p></section>\
             </body></html>",
        ),
    )
        .into_response()
}

fn token_shaped(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Deserialize)]
pub struct QrQuery {
    text: String,
}

/// `text` as a QR code (SVG), for pairing tickets shown in the page.
pub async fn qr(Query(query): Query<QrQuery>) -> Response {
    if query.text.len() > MAX_QR_TEXT {
        return (StatusCode::BAD_REQUEST, "text too long for a QR code").into_response();
    }
    match qrcode::QrCode::new(query.text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build();
            ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
