//! Attachment routes: uploads streamed into the blob store, downloads with ranges, fetches from
//! other devices, and the transfers under way.
//!
//! Uploads and downloads stream: neither side holds a file in memory. A post names blobs
//! uploaded before it, by hash; the daemon fills in their sizes from what it stored, so a post
//! never names bytes this device does not have.

use std::sync::Arc;

use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chatsync_api::ErrorCode;
use chatsync_model::{Attachment, BlobHash, attachment::check_media_type};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::{
    ApiError, AppState, convert,
    error::ApiPath,
    wire::{AttachmentListJson, BlobJson, PostAttachment, TransferListJson},
};
use crate::{
    blobs::{BlobError, pipe, thumbnail::ThumbnailError},
    net::blobs::{FetchError, Reach},
};

type AppResult<T> = Result<T, ApiError>;

/// Uploads at once, at most; each holds a blocking thread while it runs.
const MAX_UPLOADS: usize = 16;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS);
/// An upload that sends nothing for this long is cut.
const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(30);
/// What an upload refused part-way (over the quota, say) may still send, read and dropped before
/// the answer, at most: a connection closed on unread bytes reaches the sender as a broken pipe
/// while it writes, and it never reads why. Past these, the connection is closed all the same.
const REFUSED_DRAIN_BYTES: usize = 64 * 1024 * 1024;
const REFUSED_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);
type St = State<Arc<AppState>>;

/// Media types a browser may show inline; anything else downloads, so that a file from another
/// device (HTML, SVG, anything a page could run) never runs as a page of this origin.
const INLINE_TYPES: [&str; 5] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
];
const DEFAULT_MEDIA_TYPE: &str = "application/octet-stream";

/// `POST /v1/blobs`: stores the body as a blob.
pub async fn upload(State(st): St, headers: HeaderMap, body: Body) -> AppResult<Response> {
    let expected = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| invalid("Content-Length is not a number"))?,
        ),
        None => None,
    };
    let Ok(_turn) = UPLOADS.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Storage,
            format!("{MAX_UPLOADS} uploads are under way; try again when one ends"),
        ));
    };
    let (tx, rx) = mpsc::channel(pipe::QUEUE);
    let blobs = st.network.blobs.store().clone();
    let import =
        tokio::task::spawn_blocking(move || blobs.import(pipe::ChannelReader::new(rx), expected));
    let mut stream = body.into_data_stream();
    let mut cut = None;
    let mut refused = false;
    loop {
        let piece = tokio::select! {
            _ = st.shutdown.cancelled() => Some(Err("the daemon is shutting down".to_string())),
            next = tokio::time::timeout(UPLOAD_STALL, stream.next()) => match next {
                Ok(Some(Ok(piece))) => Some(Ok(piece)),
                Ok(Some(Err(e))) => Some(Err(e.to_string())),
                Ok(None) => None,
                Err(_) => Some(Err(format!("nothing arrived for {} s", UPLOAD_STALL.as_secs()))),
            },
        };
        match piece {
            Some(Ok(piece)) => {
                if tx.send(Ok(piece)).await.is_err() {
                    // The import stopped (its error is the answer).
                    refused = true;
                    break;
                }
            }
            Some(Err(why)) => {
                // The import fails rather than keep a short file.
                let _ = tx.send(Err(std::io::Error::other(why.clone()))).await;
                cut = Some(why);
                break;
            }
            None => break,
        }
    }
    drop(tx);
    if refused {
        drain(stream).await;
    }
    let imported = import.await.map_err(internal)?;
    if let Some(why) = cut {
        return Err(invalid(format!("the upload was cut: {why}")));
    }
    let (hash, size) = imported.map_err(blob_error)?;
    let _ = st
        .engine
        .event_sender()
        .send(crate::engine::Event::AttachmentStored { hash, size });
    Ok((
        StatusCode::CREATED,
        Json(BlobJson {
            hash: hash.to_hex(),
            size,
        }),
    )
        .into_response())
}

/// Reads and drops what is left of a refused upload, within [`REFUSED_DRAIN_BYTES`] and
/// [`REFUSED_DRAIN_TIME`], so that its sender finishes writing and reads the answer.
async fn drain(mut stream: axum::body::BodyDataStream) {
    let mut left = REFUSED_DRAIN_BYTES;
    let _ = tokio::time::timeout(REFUSED_DRAIN_TIME, async {
        while let Some(Ok(piece)) = stream.next().await {
            left = left.saturating_sub(piece.len());
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// The attachments a post names, described from the blobs this device stored.
pub fn described(st: &AppState, named: &[PostAttachment]) -> AppResult<Vec<Attachment>> {
    let blobs = st.network.blobs.store();
    named
        .iter()
        .map(|a| {
            let hash = BlobHash::from_hex(&a.hash).map_err(|e| invalid(e.to_string()))?;
            let size = blobs.len(&hash).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::AttachmentNotHere,
                    format!("no blob {hash} on this device: upload it first (POST /v1/blobs)"),
                )
            })?;
            let media_type = a.media_type.as_deref().unwrap_or(DEFAULT_MEDIA_TYPE);
            check_media_type(media_type).map_err(|e| invalid(e.to_string()))?;
            Ok(Attachment {
                hash,
                size,
                name: a.name.clone(),
                media_type: media_type.to_string(),
            })
        })
        .collect()
}

/// `POST /v1/chats/{chat}/messages/{message}/attachments/fetch`: brings a message's
/// attachments from other devices, answering once they are all here.
pub async fn fetch(
    State(st): St,
    ApiPath((chat, message)): ApiPath<(String, String)>,
) -> AppResult<Json<AttachmentListJson>> {
    let chat = st.engine.resolve_chat(&chat)?;
    let msg = st.engine.message(&chat.id, &message).await?;
    let blobs = st.network.blobs.store();
    for a in &msg.attachments {
        if !blobs.has(&a.hash) {
            st.network
                .blobs
                .fetch(a.hash, a.size, Reach::Any)
                .await
                .map_err(fetch_error)?;
        }
    }
    Ok(Json(AttachmentListJson {
        attachments: msg
            .attachments
            .into_iter()
            .map(|a| convert::attachment(a, blobs))
            .collect(),
    }))
}

/// `GET /v1/chats/{chat}/messages/{message}/attachments/{index}`: the attachment's bytes, with
/// its name and type (ranges allowed).
pub async fn download(
    State(st): St,
    ApiPath((chat, message, index)): ApiPath<(String, String, usize)>,
    request: Request,
) -> AppResult<Response> {
    let a = attachment_at(&st, &chat, &message, index).await?;
    let mut response = serve_blob(&st, &a.hash, request).await?;
    let inline = INLINE_TYPES.contains(&a.media_type.as_str());
    if response.status().is_success() {
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(if inline {
            &a.media_type
        } else {
            DEFAULT_MEDIA_TYPE
        }) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        let disposition = format!(
            "{}; filename*=UTF-8''{}",
            if inline { "inline" } else { "attachment" },
            percent_encode(&a.name)
        );
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(response)
}

/// Previews made at once, at most: each decodes a whole image.
static MAKING_THUMBNAILS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// `GET /v1/chats/{chat}/messages/{message}/attachments/{index}/thumbnail`: a small JPEG of an
/// image attachment, made on this device.
pub async fn thumbnail(
    State(st): St,
    ApiPath((chat, message, index)): ApiPath<(String, String, usize)>,
    request: Request,
) -> AppResult<Response> {
    let a = attachment_at(&st, &chat, &message, index).await?;
    if !a.media_type.starts_with("image/") {
        return Err(not_an_image(format!("{} is not an image", a.name)));
    }
    let blobs = st.network.blobs.store().clone();
    let hash = a.hash;
    let made = {
        let _turn = MAKING_THUMBNAILS.acquire().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal,
                e.to_string(),
            )
        })?;
        tokio::task::spawn_blocking(move || blobs.thumbnail(&hash))
            .await
            .map_err(internal)?
    };
    let path = match made {
        Ok(path) => path,
        Err(ThumbnailError::NotHere) => return Err(not_here(&hash)),
        Err(ThumbnailError::NotAnImage(why)) => return Err(not_an_image(why)),
        Err(ThumbnailError::Io(e)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Storage,
                e.to_string(),
            ));
        }
    };
    let mut response = serve_file(path, request).await?;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    Ok(response)
}

fn not_an_image(why: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Invalid,
        format!("no preview: {why}"),
    )
}

/// `GET /v1/blobs/{hash}`: a blob's bytes (ranges allowed).
pub async fn blob(
    State(st): St,
    ApiPath(hash): ApiPath<String>,
    request: Request,
) -> AppResult<Response> {
    let hash = BlobHash::from_hex(&hash).map_err(|e| invalid(e.to_string()))?;
    let mut response = serve_blob(&st, &hash, request).await?;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(DEFAULT_MEDIA_TYPE),
    );
    Ok(response)
}

/// Attachment number `index` of a message, as the route names them.
async fn attachment_at(
    st: &AppState,
    chat: &str,
    message: &str,
    index: usize,
) -> AppResult<Attachment> {
    let chat = st.engine.resolve_chat(chat)?;
    let mut msg = st.engine.message(&chat.id, message).await?;
    let count = msg.attachments.len();
    if index >= count {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!(
                "message {} has {count} attachment(s); there is no number {index}",
                msg.id
            ),
        ));
    }
    Ok(msg.attachments.swap_remove(index))
}

fn not_here(hash: &BlobHash) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::AttachmentNotHere,
        format!(
            "attachment {hash} is not on this device yet (POST \
             /v1/chats/{{chat}}/messages/{{message}}/attachments/fetch brings it)"
        ),
    )
}

async fn serve_blob(st: &AppState, hash: &BlobHash, request: Request) -> AppResult<Response> {
    let blobs = st.network.blobs.store();
    if !blobs.has(hash) {
        return Err(not_here(hash));
    }
    serve_file(blobs.path(hash), request).await
}

/// A file on this device, with ranges, and the headers that keep it from running as a page.
async fn serve_file(path: std::path::PathBuf, request: Request) -> AppResult<Response> {
    let served = tower_http::services::ServeFile::new(path)
        .oneshot(request)
        .await
        .map_err(internal)?;
    let mut response = served.map(Body::new);
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Whatever the bytes are, they run nothing as a page of this origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(response)
}

/// `GET /v1/transfers`: attachment downloads under way.
pub async fn transfers(State(st): St) -> Json<TransferListJson> {
    Json(TransferListJson {
        transfers: st
            .network
            .blobs
            .transfers()
            .into_iter()
            .map(convert::transfer)
            .collect(),
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        e.to_string(),
    )
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Invalid, message)
}

fn blob_error(e: BlobError) -> ApiError {
    let message = e.to_string();
    match e {
        BlobError::Quota { .. } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::QuotaExceeded,
            message,
        ),
        BlobError::DiskFull { .. } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::StorageFull,
            message,
        ),
        BlobError::TooLarge(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message)
        }
        BlobError::WrongLength { .. } | BlobError::WrongHash { .. } => invalid(message),
        BlobError::Io(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Storage, message)
        }
    }
}

fn fetch_error(e: FetchError) -> ApiError {
    let message = e.to_string();
    match e {
        FetchError::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AttachmentUnavailable,
            message,
        ),
        FetchError::Interrupted(_) | FetchError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TransferInterrupted,
            message,
        ),
        FetchError::Blob(e) => blob_error(e),
        FetchError::WrongSize { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Invalid,
            message,
        ),
    }
}

/// RFC 5987 encoding of a file name for `Content-Disposition`.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
