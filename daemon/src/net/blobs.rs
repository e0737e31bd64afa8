//! Attachments between devices: serving blobs to roster devices and fetching them from any
//! device that has them, over streams of their own on the existing connections.
//!
//! Why streams and not the sync protocol's requests: a blob may be gigabytes. It moves as one
//! stream per transfer (`/chatsync/blob/1`, libp2p-stream), outside the network task's event
//! loop, so a large transfer never delays chat sync. Each side does the verified streaming of
//! `blobs/transfer.rs` on a blocking thread, fed through a bounded channel by an async pump
//! that gives up on a stalled peer: at most [`PUMP_QUEUE`] pieces of [`PIECE_BYTES`] wait on
//! either side, whatever the blob's size.
//!
//! Who is asked: connected roster devices, those on the LAN or a direct path first, then those
//! behind a relay; a device that lacks the blob says so and the next one is asked, so any device
//! that has it serves it, not only its author. A transfer cut short resumes from the last
//! verified byte, with the same device or another. A device that sends bytes that do not match
//! the hash is reported as misbehaving (no honest device can: it checks what it sends).
//!
//! When: attachments up to `[attachments] auto_fetch_mib` are fetched when their message
//! arrives, if some device is reachable without a relay; anything else when asked for
//! (`chatsync attachment get`). Downloads left unfinished (by a cut, or a restart of either
//! side) are taken up again when a device connects.

use std::{
    collections::HashMap,
    io,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use chatsync_model::{BlobHash, ChatId, DeviceId};
use futures_util::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{Command, PeerInfo, relay::Path, sessions::Internal};
use crate::{
    blobs::{
        BlobStats, Blobs, Partial,
        pipe::{ChannelReader, ChannelWriter},
        sweep::{self, Swept},
        transfer::{self, REQUEST_BYTES, ReceiveError, Request, Status},
    },
    engine::{Engine, Event, MAX_PAGE, MessageEventKind},
};

pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/chatsync/blob/1");
/// Pieces a pump reads or writes at once.
const PIECE_BYTES: usize = crate::blobs::pipe::PIECE;
/// Pieces waiting between a pump and its blocking side.
const PUMP_QUEUE: usize = crate::blobs::pipe::QUEUE;
/// A peer that sends or takes nothing for this long has stalled: the transfer is cut.
const STALL: Duration = Duration::from_secs(30);
/// How long a stream may take to open and answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Blobs sent at once; a device asking for more is told this one is busy.
const MAX_SERVING: usize = 4;
/// Downloads at once.
const MAX_FETCHING: usize = 2;
/// Rounds over the connected devices before a fetch that keeps being cut gives up for now.
const ROUNDS: usize = 3;
/// Fetches nobody asked for, under way or waiting, at most.
const MAX_UNASKED: usize = 64;
/// Chats that arrived whole waiting to have their attachments looked at.
const SCAN_QUEUE: usize = 256;
/// A first sweep for attachments no message names, this long after start.
const SWEEP_AFTER_START: Duration = Duration::from_secs(300);
/// And then this often, and shortly after a message is deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(6 * 3600);
const SWEEP_DEBOUNCE: Duration = Duration::from_secs(3);
/// Sweeps are at least this many times as far apart as the last one took.
const SWEEP_SPACING: u32 = 20;
/// How often unfinished downloads are looked at again without a device connecting.
const RESUME_EVERY: Duration = Duration::from_secs(5);
/// A download tried again without success waits longer each time, up to this; a device
/// connecting ends every wait.
const LONGEST_RESUME_WAIT: Duration = Duration::from_secs(300);

/// Why a fetch did not bring the blob.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no connected device has this attachment; it is fetched when one that has it connects")]
    Unavailable,
    #[error("the transfer was cut ({0}); it resumes from where it stopped")]
    Interrupted(String),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the message says the attachment is {message} bytes; the file with its hash is {file}")]
    WrongSize { message: u64, file: u64 },
}

/// What the user configured (`[attachments]`).
#[derive(Clone, Copy, Debug)]
pub struct BlobPolicy {
    /// Attachments up to this many bytes are fetched when their message arrives.
    pub auto_fetch_max: u64,
    /// Bytes per second this device sends attachments at, at most (0: no limit).
    pub send_rate: u64,
}

/// How a fetch may reach devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Asked for: any connected device, relayed ones last.
    Any,
    /// Fetched unasked: only over the LAN or a direct path.
    DirectOnly,
}

/// A download under way, for `status`.
#[derive(Clone, Debug)]
pub struct TransferInfo {
    pub hash: BlobHash,
    pub size: u64,
    /// Bytes verified so far.
    pub have: u64,
    /// The device sending it now, if any.
    pub from: Option<DeviceId>,
}

struct Active {
    /// Which fetch this is (a newer fetch of the same blob replaces a finished one).
    id: u64,
    size: u64,
    have: Arc<AtomicU64>,
    from: Arc<Mutex<Option<DeviceId>>>,
    /// `Some` once finished.
    done: watch::Receiver<Option<Outcome>>,
}

/// How a fetch ended, for everyone waiting on it.
#[derive(Clone, Debug)]
enum Outcome {
    Stored,
    Unavailable,
    Failed(String),
}

struct Inner {
    control: Mutex<libp2p_stream::Control>,
    blobs: Arc<Blobs>,
    engine: Arc<Engine>,
    commands: mpsc::Sender<Command>,
    internal: mpsc::Sender<Internal>,
    policy: BlobPolicy,
    active: Mutex<HashMap<BlobHash, Active>>,
    next_id: AtomicU64,
    /// When each unfinished download may be tried again, and the wait after that.
    resume_waits: Mutex<HashMap<BlobHash, (Instant, Duration)>>,
    /// Ends transfers under way, and the fetches waiting for their turn.
    shutdown: CancellationToken,
    fetching: Semaphore,
    serving: Arc<Semaphore>,
}

/// Handle to the attachment transfers (cheap to clone).
#[derive(Clone)]
pub struct BlobService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobService").finish_non_exhaustive()
    }
}

impl BlobService {
    pub(super) fn new(
        control: libp2p_stream::Control,
        blobs: Arc<Blobs>,
        engine: Arc<Engine>,
        commands: mpsc::Sender<Command>,
        internal: mpsc::Sender<Internal>,
        policy: BlobPolicy,
        shutdown: CancellationToken,
    ) -> BlobService {
        BlobService {
            inner: Arc::new(Inner {
                control: Mutex::new(control),
                blobs,
                engine,
                commands,
                internal,
                policy,
                active: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                resume_waits: Mutex::new(HashMap::new()),
                shutdown,
                fetching: Semaphore::new(MAX_FETCHING),
                serving: Arc::new(Semaphore::new(MAX_SERVING)),
            }),
        }
    }

    pub fn store(&self) -> &Arc<Blobs> {
        &self.inner.blobs
    }

    /// Starts serving blobs and fetching by policy; everything stops at the shutdown: fetches
    /// waiting for their turn give up, transfers under way are cut (and resume next time).
    pub(super) fn start(&self) -> anyhow::Result<()> {
        let incoming = self
            .control()
            .accept(BLOB_PROTOCOL)
            .map_err(|e| anyhow::anyhow!("cannot accept attachment streams: {e}"))?;
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(self.clone().serve_incoming(incoming, shutdown.clone()));
        tokio::spawn(self.clone().fetch_by_policy(shutdown.clone()));
        let inner = self.inner.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            inner.fetching.close();
        });
        Ok(())
    }

    fn control(&self) -> libp2p_stream::Control {
        self.inner
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Downloads under way.
    pub fn transfers(&self) -> Vec<TransferInfo> {
        let active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<TransferInfo> = active
            .iter()
            .filter(|(_, a)| a.done.borrow().is_none())
            .map(|(hash, a)| TransferInfo {
                hash: *hash,
                size: a.size,
                have: a.have.load(Ordering::Relaxed),
                from: a.from.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect();
        list.sort_by_key(|t| t.hash);
        list
    }

    /// Fetches a blob of `size` bytes from the devices connected now (or joins the fetch of it
    /// under way), returning once it is stored here.
    pub async fn fetch(&self, hash: BlobHash, size: u64, reach: Reach) -> Result<(), FetchError> {
        match self.inner.blobs.len(&hash) {
            Some(len) if len == size => return Ok(()),
            // What is here hashes to the name: the message's size is wrong.
            Some(len) => {
                return Err(FetchError::WrongSize {
                    message: size,
                    file: len,
                });
            }
            None => {}
        }
        if size == 0 {
            // Nothing to fetch: the empty blob is made here (and only the empty hash has
            // size 0: `Attachment::check`).
            let blobs = self.inner.blobs.clone();
            tokio::task::spawn_blocking(move || blobs.import_checked(&[][..], Some(0), Some(hash)))
                .await
                .map_err(|_| FetchError::ShuttingDown)??;
            return Ok(());
        }
        let mut done = {
            let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
            match active.get(&hash) {
                Some(a) if a.done.borrow().is_none() => a.done.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    let have = Arc::new(AtomicU64::new(0));
                    let from = Arc::new(Mutex::new(None));
                    let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                    active.insert(
                        hash,
                        Active {
                            id,
                            size,
                            have: have.clone(),
                            from: from.clone(),
                            done: rx.clone(),
                        },
                    );
                    let service = self.clone();
                    tokio::spawn(async move {
                        let outcome = match service.run_fetch(hash, size, reach, have, from).await {
                            Ok(()) => Outcome::Stored,
                            Err(FetchError::Unavailable) => Outcome::Unavailable,
                            Err(e) => Outcome::Failed(e.to_string()),
                        };
                        let _ = tx.send(Some(outcome));
                        let mut active = service
                            .inner
                            .active
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        // Only its own entry: a newer fetch of the blob may have taken its place.
                        if active.get(&hash).is_some_and(|a| a.id == id) {
                            active.remove(&hash);
                        }
                    });
                    rx
                }
            }
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| FetchError::ShuttingDown)?
            .clone();
        match outcome {
            Some(Outcome::Stored) => Ok(()),
            _ if self.inner.blobs.has(&hash) => Ok(()),
            Some(Outcome::Unavailable) => Err(FetchError::Unavailable),
            Some(Outcome::Failed(why)) => Err(FetchError::Interrupted(why)),
            None => Err(FetchError::ShuttingDown),
        }
    }

    async fn run_fetch(
        &self,
        hash: BlobHash,
        size: u64,
        reach: Reach,
        have: Arc<AtomicU64>,
        from: Arc<Mutex<Option<DeviceId>>>,
    ) -> Result<(), FetchError> {
        let _permit = self
            .inner
            .fetching
            .acquire()
            .await
            .map_err(|_| FetchError::ShuttingDown)?;
        let blobs = self.inner.blobs.clone();
        let asked = reach == Reach::Any;
        let opened = tokio::task::spawn_blocking(move || blobs.start_download(hash, size, asked))
            .await
            .map_err(|_| FetchError::ShuttingDown)??;
        // Another fetch of it is writing: this one has nothing to do.
        let Some(mut partial) = opened else {
            return Err(FetchError::Interrupted("fetched by another request".into()));
        };
        have.store(partial.have(), Ordering::Relaxed);
        let mut last_cut = None;
        for _ in 0..ROUNDS {
            let candidates = self.candidates(reach).await;
            if candidates.is_empty() {
                break;
            }
            let mut any_sending = false;
            for peer in candidates {
                *from.lock().unwrap_or_else(|e| e.into_inner()) =
                    DeviceId::new(peer.to_base58()).ok();
                let (back, outcome) = self.attempt(peer, partial, have.clone()).await;
                partial = back;
                match outcome {
                    Attempt::Done => {
                        let finished = tokio::task::spawn_blocking(move || partial.finish())
                            .await
                            .map_err(|_| FetchError::ShuttingDown)?;
                        finished.map_err(crate::blobs::BlobError::Io)?;
                        tracing::info!(%hash, size, %peer, "attachment fetched");
                        let _ = self
                            .inner
                            .engine
                            .event_sender()
                            .send(Event::AttachmentStored { hash, size });
                        return Ok(());
                    }
                    Attempt::NotThere => {}
                    Attempt::Cut(why) => {
                        any_sending = true;
                        tracing::debug!(%hash, %peer, %why, have = partial.have(), "attachment transfer cut");
                        last_cut = Some(why);
                    }
                    Attempt::Lied(why) => {
                        tracing::warn!(%hash, %peer, %why, "a device sent a corrupt attachment");
                        let _ = self
                            .inner
                            .internal
                            .send(Internal::Misbehaved(
                                peer,
                                format!("attachment {hash}: {why}"),
                            ))
                            .await;
                    }
                    Attempt::Local(e) => return Err(FetchError::Blob(e.into())),
                }
            }
            if !any_sending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        *from.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Err(match last_cut {
            Some(why) => FetchError::Interrupted(why),
            None => FetchError::Unavailable,
        })
    }

    /// Connected roster devices to ask, the closest first.
    async fn candidates(&self, reach: Reach) -> Vec<PeerId> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Peers(reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let peers: Vec<PeerInfo> = rx.await.unwrap_or_default();
        let trust = self.inner.engine.trust().borrow().clone();
        let mut usable: Vec<(u8, PeerId)> = peers
            .into_iter()
            .filter(|p| p.connected && p.suspended_until.is_none())
            .filter(|p| trust.trusted.contains(&p.device))
            .filter_map(|p| {
                let rank = match p.path {
                    Some(Path::Lan) => 0,
                    Some(Path::Direct) => 1,
                    Some(Path::Relayed) if reach == Reach::Any => 2,
                    _ => return None,
                };
                Some((rank, PeerId::from_str(p.device.as_str()).ok()?))
            })
            .collect();
        usable.sort();
        usable.into_iter().map(|(_, p)| p).collect()
    }

    /// One request to one device; gives the download back with what came of it.
    async fn attempt(
        &self,
        peer: PeerId,
        mut partial: Partial,
        have: Arc<AtomicU64>,
    ) -> (Partial, Attempt) {
        let request = Request {
            hash: partial.hash,
            size: partial.size,
            from: partial.have(),
        };
        let mut control = self.control();
        let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
            let mut stream = control
                .open_stream(peer, BLOB_PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .write_all(&request.encode())
                .await
                .map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            let mut status = [0u8];
            stream
                .read_exact(&mut status)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((stream, Status::of(status[0])))
        })
        .await;
        let mut stream = match opened {
            Ok(Ok((stream, Some(Status::Sending)))) => stream,
            Ok(Ok((_, Some(Status::NotHere | Status::Busy)))) => {
                return (partial, Attempt::NotThere);
            }
            Ok(Ok((_, Some(Status::BadRequest) | None))) => {
                return (
                    partial,
                    Attempt::Cut("the device did not understand the request".into()),
                );
            }
            Ok(Err(why)) => return (partial, Attempt::Cut(why)),
            Err(_) => return (partial, Attempt::Cut("no answer".into())),
        };
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PUMP_QUEUE);
        let fetched = &self.inner.blobs.fetched_bytes;
        let shutdown = &self.inner.shutdown;
        let pump = async move {
            loop {
                let mut piece = BytesMut::zeroed(PIECE_BYTES);
                let read = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    read = tokio::time::timeout(STALL, stream.read(&mut piece)) => read,
                };
                let n = match read {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                    Err(_) => {
                        let stalled = io::Error::new(io::ErrorKind::TimedOut, "stalled");
                        let _ = tx.send(Err(stalled)).await;
                        break;
                    }
                };
                piece.truncate(n);
                fetched.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send(Ok(piece.freeze())).await.is_err() {
                    break;
                }
            }
        };
        let decode = tokio::task::spawn_blocking(move || {
            // Bytes from another device go through bao-tree's decoder: should it ever panic on
            // them, the download stops here (at its last checkpoint) and the daemon goes on.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                transfer::receive(&mut partial, ChannelReader::new(rx), |n| {
                    have.store(n, Ordering::Relaxed)
                })
            }))
            .unwrap_or_else(|_| {
                Err(ReceiveError::Local(io::Error::other(
                    "the download stopped on an internal error",
                )))
            });
            (partial, result)
        });
        let ((), decoded) = tokio::join!(pump, decode);
        match decoded {
            Ok((partial, Ok(()))) => (partial, Attempt::Done),
            Ok((partial, Err(ReceiveError::Cut(e)))) => (partial, Attempt::Cut(e.to_string())),
            Ok((partial, Err(ReceiveError::Corrupt(why)))) => (partial, Attempt::Lied(why)),
            Ok((partial, Err(ReceiveError::Local(e)))) => (partial, Attempt::Local(e)),
            // A blocking task that started is never cancelled, and panics are caught in it.
            Err(e) => panic_dropped(e),
        }
    }

    async fn serve_incoming(
        self,
        mut incoming: libp2p_stream::IncomingStreams,
        shutdown: CancellationToken,
    ) {
        loop {
            let (peer, stream) = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = incoming.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            let trusted = DeviceId::new(peer.to_base58())
                .is_ok_and(|d| self.inner.engine.trust().borrow().trusted.contains(&d));
            if !trusted {
                tracing::debug!(%peer, "refused an attachment request from outside the roster");
                continue;
            }
            let permit = self.inner.serving.clone().try_acquire_owned().ok();
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(e) = service.serve(peer, stream, permit).await {
                    tracing::debug!(%peer, error = %e, "attachment not sent");
                }
            });
        }
    }

    async fn serve(
        &self,
        peer: PeerId,
        mut stream: libp2p::Stream,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> io::Result<()> {
        let mut raw = [0u8; REQUEST_BYTES];
        tokio::time::timeout(OPEN_TIMEOUT, stream.read_exact(&mut raw))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
        let Some(request) = Request::decode(&raw) else {
            stream.write_all(&[Status::BadRequest as u8]).await?;
            return stream.close().await;
        };
        if permit.is_none() {
            stream.write_all(&[Status::Busy as u8]).await?;
            return stream.close().await;
        }
        let blobs = self.inner.blobs.clone();
        let blob = tokio::task::spawn_blocking(move || blobs.open_blob(&request.hash))
            .await
            .map_err(io::Error::other)??;
        let Some(blob) = blob.filter(|b| b.size == request.size) else {
            stream.write_all(&[Status::NotHere as u8]).await?;
            return stream.close().await;
        };
        stream.write_all(&[Status::Sending as u8]).await?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(PUMP_QUEUE);
        let encode = tokio::task::spawn_blocking(move || {
            transfer::send(&blob, request.from, ChannelWriter::new(tx))
        });
        let served = &self.inner.blobs.served_bytes;
        let (started, mut sent_here) = (tokio::time::Instant::now(), 0u64);
        let mut failed = None;
        while let Some(piece) = rx.recv().await {
            let written = tokio::select! {
                _ = self.inner.shutdown.cancelled() => {
                    failed = Some(io::Error::other("the daemon is shutting down"));
                    break;
                }
                written = tokio::time::timeout(STALL, stream.write_all(&piece)) => written,
            };
            match written {
                Ok(Ok(())) => {
                    served.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    sent_here += piece.len() as u64;
                    let rate = self.inner.policy.send_rate;
                    if rate > 0 {
                        let due = Duration::from_secs_f64(sent_here as f64 / rate as f64);
                        tokio::select! {
                            _ = self.inner.shutdown.cancelled() => {}
                            _ = tokio::time::sleep_until(started + due) => {}
                        }
                    }
                }
                Ok(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                Err(_) => {
                    failed = Some(io::Error::new(io::ErrorKind::TimedOut, "stalled"));
                    break;
                }
            }
        }
        drop(rx);
        let sent = encode.await.map_err(io::Error::other)?;
        if let Some(e) = failed {
            return Err(e);
        }
        let sent = sent?;
        stream.close().await?;
        tracing::debug!(%peer, hash = %request.hash, from = request.from, bytes = sent, "attachment sent");
        Ok(())
    }

    /// Fetches attachments of arriving messages within the policy, and takes up unfinished
    /// downloads when a device connects.
    async fn fetch_by_policy(self, shutdown: CancellationToken) {
        let mut events = self.inner.engine.event_sender().subscribe();
        let mut resume = tokio::time::interval(RESUME_EVERY);
        let me = self.inner.engine.device().id.clone();
        let (scan, mut to_scan) = mpsc::channel::<ChatId>(SCAN_QUEUE);
        let mut next_sweep = Instant::now() + SWEEP_AFTER_START;
        // Sweeps read every chat: spaced by a multiple of what the last one took.
        let mut earliest_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = resume.tick() => self.resume_downloads(),
                _ = tokio::time::sleep_until(next_sweep) => {
                    let started = Instant::now();
                    self.sweep().await;
                    earliest_sweep = Instant::now() + started.elapsed() * SWEEP_SPACING;
                    next_sweep = Instant::now() + SWEEP_EVERY;
                }

                Some(chat) = to_scan.recv() => self.scan_new_chat(&chat).await,
                event = events.recv() => match event {
                    Ok(Event::Message { kind: MessageEventKind::Created, message, .. })
                        if message.author != me =>
                    {
                        self.fetch_unasked(message.attachments);
                    }
                    // A chat that arrived whole (from another device, or a backup) brings
                    // its messages without an event each.
                    Ok(Event::ChatCreated { chat, record }) if record.messages > 0 => {
                        let _ = scan.try_send(chat);
                    }
                    // A deleted message may have been the last to name an attachment.
                    Ok(Event::Message { kind: MessageEventKind::Deleted, .. }) => {
                        next_sweep = next_sweep
                            .min((Instant::now() + SWEEP_DEBOUNCE).max(earliest_sweep));
                    }
                    Ok(Event::PeerUp { .. }) => {
                        self.inner
                            .resume_waits
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clear();
                        self.resume_downloads();
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }

    /// Frees the attachments no message names any more (`blobs/sweep.rs`).
    async fn sweep(&self) {
        if self.inner.blobs.stats() == BlobStats::default() {
            return;
        }
        match sweep::sweep(&self.inner.engine, &self.inner.blobs).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(
                blobs = swept.blobs,
                bytes = swept.bytes,
                downloads = swept.downloads,
                "freed attachments no message names"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "attachments not swept"),
        }
    }

    /// Fetches, in the background, the attachments within the size fetched unasked.
    fn fetch_unasked(&self, attachments: Vec<chatsync_model::Attachment>) {
        for a in attachments {
            if a.size <= self.inner.policy.auto_fetch_max
                && !self.inner.blobs.has(&a.hash)
                && self.room_for_unasked()
            {
                let service = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = service.fetch(a.hash, a.size, Reach::DirectOnly).await {
                        tracing::debug!(hash = %a.hash, error = %e, "attachment not fetched yet");
                    }
                });
            }
        }
    }

    /// Whether another fetch nobody asked for may start: they wait for their turn in memory,
    /// so their number is bounded (more are left for when they are asked for).
    fn room_for_unasked(&self) -> bool {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            < MAX_UNASKED
    }

    /// The attachments of a chat's latest messages, for a chat that arrived whole.
    async fn scan_new_chat(&self, chat: &ChatId) {
        if self.inner.policy.auto_fetch_max == 0 {
            return;
        }
        match self.inner.engine.messages(chat, None, MAX_PAGE).await {
            Ok(messages) => {
                for m in messages {
                    self.fetch_unasked(m.attachments);
                }
            }
            Err(e) => tracing::debug!(%chat, error = %e, "cannot read a new chat's attachments"),
        }
    }

    /// Starts again every unfinished download that is not under way.
    fn resume_downloads(&self) {
        let unfinished = self.inner.blobs.partial_downloads();
        let now = Instant::now();
        let mut waits = self
            .inner
            .resume_waits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        waits.retain(|hash, _| unfinished.iter().any(|(h, _)| h == hash));
        for (hash, progress) in unfinished {
            let busy = self
                .inner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&hash);
            let due = waits.get(&hash).is_none_or(|(at, _)| *at <= now);
            if !busy && due && self.room_for_unasked() {
                let gap = waits
                    .get(&hash)
                    .map_or(RESUME_EVERY, |(_, gap)| (*gap * 2).min(LONGEST_RESUME_WAIT));
                waits.insert(hash, (now + gap, gap));
                // One the policy fetched unasked goes on as it began: never over a relay.
                let reach = if progress.asked {
                    Reach::Any
                } else {
                    Reach::DirectOnly
                };
                let size = progress.size;
                let service = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = service.fetch(hash, size, reach).await {
                        tracing::debug!(%hash, error = %e, "unfinished attachment not resumed yet");
                    }
                });
            }
        }
    }
}

enum Attempt {
    Done,
    /// The device lacks the blob or is busy.
    NotThere,
    Cut(String),
    /// It sent bytes that do not match the hash.
    Lied(String),
    /// This device could not write.
    Local(io::Error),
}

fn panic_dropped(e: tokio::task::JoinError) -> ! {
    std::panic::resume_unwind(e.into_panic())
}
