//! One samod replica, run as its own process (the benchmark binary started again with
//! `--samod-peer`), so that its CPU time, resident memory and disk writes can be read from
//! `/proc` as a `chatsyncd`'s are.
//!
//! It keeps a samod `Repo` on `FilesystemStorage` in `--dir`. With `--listen` it accepts TCP
//! connections on an ephemeral loopback port (S); with `--dial PORT` it dials that port (A, B).
//! Every socket has TCP_NODELAY set, and a dialled socket counts the bytes it receives.
//!
//! It is driven over its standard input, one command a line, and answers each with one line
//! on its standard output, `ok ...` or `err why`; `seen ID` lines (messages that arrived in a
//! watched document) may come in between. It exits when its standard input closes, so that it
//! never outlives the benchmark.
//!
//! Commands: `create K` (K new chats; answers with their ids), `find ID...`,
//! `post DOC MSGID I`, `post_many DOC FROM TO`, `watch DOC`, `wait N ID...` (until each
//! has at least N messages), `count DOC`, `read_all ID...`, `bytes` (received on the dialled
//! socket since start), `stop` (waits for storage, answers with the bytes this process has
//! written to disk, `DiskWrites`, and exits).

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, transaction::Transactable};
use futures_util::{StreamExt, future::BoxFuture};
use samod::{
    BackoffConfig, DialError, Dialer, DocHandle, DocumentId, Repo, Transport, Url,
    storage::TokioFilesystemStorage,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

use crate::{common::text, measure::DiskWrites};

/// Who posts, in every message's `author` field: as long as a chatsync device id.
const AUTHOR: &str = "12D3KooWSamodBenchmarkAuthorAuthorAuthorAuthorAuthor";

/// Runs the replica described by `args` (those after `--samod-peer`) until told to stop.
pub fn main(args: &[String]) {
    let mut dir = None;
    let mut listen = false;
    let mut dial = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().cloned(),
            "--listen" => listen = true,
            "--dial" => dial = it.next().map(|p| p.parse::<u16>().expect("a port")),
            _ => {}
        }
    }
    let dir = dir.expect("--dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(dir, listen, dial));
    // The repo's tasks may still hold the runtime; the answers are out, so leave now.
    std::process::exit(0);
}

async fn run(dir: String, listen: bool, dial: Option<u16>) {
    let repo = Repo::build_tokio()
        .with_storage(TokioFilesystemStorage::new(&dir))
        .load()
        .await;
    let received = Arc::new(AtomicU64::new(0));
    let mut port = 0;
    if listen {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        port = listener.local_addr().unwrap().port();
        let url = Url::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let acceptor = repo.make_acceptor(url).unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                socket.set_nodelay(true).unwrap();
                if acceptor.accept_tokio_io(socket).is_err() {
                    break;
                }
            }
        });
    }
    if let Some(port) = dial {
        let dialer = CountingDialer {
            port,
            received: received.clone(),
        };
        let handle = repo
            .dial(BackoffConfig::default(), Arc::new(dialer))
            .unwrap();
        handle.established().await.expect("cannot reach the server");
    }
    println!("ready {port}");

    let mut docs: HashMap<String, DocHandle> = HashMap::new();
    // Standard input is read on a thread of its own (blocking reads); its end means the
    // benchmark is gone.
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&command, args)) = words.split_first() else {
            continue;
        };
        if command == "stop" {
            repo.stop().await;
            println!(
                "ok {}",
                DiskWrites::of_process(std::process::id()).to_line()
            );
            return;
        }
        match handle(&repo, &mut docs, &received, command, args).await {
            Ok(answer) if answer.is_empty() => println!("ok"),
            Ok(answer) => println!("ok {answer}"),
            Err(why) => println!("err {command}: {why}"),
        }
    }
}

async fn handle(
    repo: &Repo,
    docs: &mut HashMap<String, DocHandle>,
    received: &AtomicU64,
    command: &str,
    args: &[&str],
) -> Result<String, String> {
    let arg = |i: usize| args.get(i).copied().ok_or("too few arguments");
    let number =
        |i: usize| -> Result<usize, String> { arg(i)?.parse::<usize>().map_err(|e| e.to_string()) };
    match command {
        "create" => {
            let mut ids = Vec::new();
            for _ in 0..number(0)? {
                let mut initial = Automerge::new();
                let mut tx = initial.transaction();
                tx.put_object(ROOT, "messages", ObjType::List)
                    .map_err(|e| e.to_string())?;
                tx.commit();
                let h = repo.create(initial).await.map_err(|e| e.to_string())?;
                let id = h.document_id().to_string();
                docs.insert(id.clone(), h);
                ids.push(id);
            }
            Ok(ids.join(" "))
        }
        "find" => {
            let finds = args.iter().map(|id| find(repo, id));
            for (id, found) in args.iter().zip(futures_util::future::join_all(finds).await) {
                docs.insert(id.to_string(), found?);
            }
            Ok(String::new())
        }
        "post" => {
            let h = doc(docs, arg(0)?)?;
            post(h, arg(1)?.to_string(), number(2)?).await?;
            Ok(String::new())
        }
        "post_many" => {
            let h = doc(docs, arg(0)?)?;
            for i in number(1)?..number(2)? {
                post(h, chatsync_daemon::engine::random_id(), i).await?;
            }
            Ok(String::new())
        }
        "watch" => {
            let h = doc(docs, arg(0)?)?.clone();
            watch(h);
            Ok(String::new())
        }
        "wait" => {
            let n = number(0)?;
            let handles = args
                .get(1..)
                .unwrap_or_default()
                .iter()
                .map(|id| doc(docs, id).cloned())
                .collect::<Result<Vec<_>, _>>()?;
            futures_util::future::join_all(handles.iter().map(|h| wait_for(h, n))).await;
            Ok(String::new())
        }
        "count" => Ok(count(doc(docs, arg(0)?)?).to_string()),
        "read_all" => {
            // One chat after another, each found (loaded from storage) and every message read.
            let mut messages = 0;
            for id in args {
                let h = find(repo, id).await?;
                messages += h.with_document(|d| {
                    let Some(list) = messages_list(d) else {
                        return 0;
                    };
                    let mut read = 0;
                    for i in 0..d.length(&list) {
                        if let Ok(Some((_, m))) = d.get(&list, i)
                            && let Ok(Some((v, _))) = d.get(&m, "text")
                            && v.as_str().is_some()
                        {
                            read += 1;
                        }
                    }
                    read
                });
                docs.insert(id.to_string(), h);
            }
            Ok(messages.to_string())
        }
        "bytes" => Ok(received.load(Ordering::Relaxed).to_string()),
        other => Err(format!("unknown command {other}")),
    }
}

fn doc<'a>(docs: &'a HashMap<String, DocHandle>, id: &str) -> Result<&'a DocHandle, String> {
    docs.get(id).ok_or_else(|| format!("no document {id} here"))
}

async fn find(repo: &Repo, id: &str) -> Result<DocHandle, String> {
    let id: DocumentId = id.parse().map_err(|e| format!("{e:?}"))?;
    match repo.find(id.clone()).await {
        Ok(Some(h)) => Ok(h),
        Ok(None) => Err(format!("document {id} not found")),
        Err(e) => Err(e.to_string()),
    }
}

fn messages_list(d: &Automerge) -> Option<ObjId> {
    match d.get(ROOT, "messages").ok()?? {
        (automerge::Value::Object(ObjType::List), id) => Some(id),
        _ => None,
    }
}

fn count(h: &DocHandle) -> usize {
    h.with_document(|d| messages_list(d).map_or(0, |l| d.length(&l)))
}

/// Appends message `i` to the chat's list, as one change: a map of id, author, text and time.
async fn post(h: &DocHandle, id: String, i: usize) -> Result<(), String> {
    h.with_document_async(move |d| {
        let list = messages_list(d).ok_or("the document has no message list")?;
        let mut tx = d.transaction();
        let at = tx.length(&list);
        let put = |tx: &mut automerge::transaction::Transaction<'_>| {
            let m = tx.insert_object(&list, at, ObjType::Map)?;
            tx.put(&m, "id", id)?;
            tx.put(&m, "author", AUTHOR)?;
            tx.put(&m, "text", text(i))?;
            tx.put(&m, "time", chatsync_daemon::engine::now_ms())
        };
        put(&mut tx).map_err(|e| e.to_string())?;
        tx.commit();
        Ok::<(), String>(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Prints `seen ID` for every message appended to the chat from now on.
fn watch(h: DocHandle) {
    let mut changes = h.changes();
    let mut known = count(&h);
    tokio::spawn(async move {
        while changes.next().await.is_some() {
            let ids = h.with_document(|d| {
                let Some(list) = messages_list(d) else {
                    return Vec::new();
                };
                let len = d.length(&list);
                let ids: Vec<String> = (known..len)
                    .filter_map(|i| {
                        let (_, m) = d.get(&list, i).ok()??;
                        let (v, _) = d.get(&m, "id").ok()??;
                        v.as_str().map(str::to_string)
                    })
                    .collect();
                known = len;
                ids
            });
            for id in ids {
                println!("seen {id}");
            }
        }
    });
}

async fn wait_for(h: &DocHandle, n: usize) {
    let mut changes = h.changes();
    while count(h) < n {
        if changes.next().await.is_none() {
            return;
        }
    }
}

/// Dials the server on loopback with TCP_NODELAY, counting the bytes received.
struct CountingDialer {
    port: u16,
    received: Arc<AtomicU64>,
}

impl Dialer for CountingDialer {
    type Error = Infallible;

    fn url(&self) -> Url {
        Url::parse(&format!("tcp://127.0.0.1:{}", self.port)).unwrap()
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let (port, received) = (self.port, self.received.clone());
        Box::pin(async move {
            let socket = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(DialError::transient)?;
            socket.set_nodelay(true).map_err(DialError::transient)?;
            Ok(Transport::from_tokio_io(Counted { socket, received }))
        })
    }
}

/// A socket that counts the bytes read from it: samod's length-delimited frames, all of them.
struct Counted {
    socket: TcpStream,
    received: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.socket).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            me.received.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}
