//! Attachments between real daemons on loopback, beside the raw figures of the same run: a file
//! of non-repeating bytes (1 GiB; `--quick`: 128 MiB) copied over a plain loopback TCP socket
//! from file to file, and hashed with BLAKE3 as b3sum does (memory-mapped, on every core), on
//! one thread, and by `b3sum` itself when it is installed. Measured against them: the upload
//! and post on device A, the transfer to a device B that fetches it when asked (with both
//! daemons' memory and CPU), and what a resume costs when A is killed halfway through a
//! transfer to a third device C and started again. Results: docs/benchmarks.md. Run with
//! `cargo bench -p chatsync --bench attachments` (add `-- --quick` for a smaller run).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use chatsync_api::wire::PostAttachment;
use chatsync_testkit::{TestDaemon, eventually, home::fixed_loopback_addr, pair_by_address};
use tokio::io::AsyncReadExt as _;

mod common;
use common::{CpuTime, Home, cpu, home, paths, rss_kib, start, status_kib};

const MIB: f64 = 1024.0 * 1024.0;
/// Reads and writes of the raw copy: the daemons move pieces of this size.
const PIECE: usize = 64 * 1024;
/// Reads of the uploaded file, as `chatsync post --file` makes them.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// The config of the devices that fetch: only when asked.
const FETCH_WHEN_ASKED: &str = "[attachments]\nauto_fetch_mib = 0\n";
/// The resident memory either daemon should stay under while it moves a file.
const MEMORY_AIM_MIB: f64 = 64.0;
/// Longest any step may take before the run is given up.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let size: u64 = if quick { 128 << 20 } else { 1 << 30 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "## chatsync attachments benchmark{}\n",
        if quick { " (quick)" } else { "" }
    );
    // Under /tmp, with the daemons' homes: the same disk.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.bin");
    let started = Instant::now();
    generate(&file, size);
    let made = started.elapsed();
    let copy = dir.path().join("copy.bin");
    let raw_before = raw_copy(&file, &copy);
    let hashes = Hashes::measure(&file);
    let run = rt.block_on(daemons(&file, size, &hashes.hash.to_hex()));
    // The baselines once more, after the daemons: the machine's load drifts.
    let raw_after = raw_copy(&file, &copy);
    let hashes_after = Hashes::measure(&file);
    report(
        size,
        made,
        [raw_before, raw_after],
        [hashes, hashes_after],
        &run,
    );
}

/// `size` bytes of xorshift64 output (period 2^64 - 1: no word repeats in a file this size),
/// synced so that its write-back does not fall into what is measured next.
fn generate(path: &Path, size: u64) {
    let mut out = File::create(path).unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.sync_all().unwrap();
}

/// A plain loopback TCP copy of a file into another on the same disk.
#[derive(Clone, Copy)]
struct RawCopy {
    /// Until the receiver had written the last byte.
    written: Duration,
    /// Until it had also synced the file (the daemons sync what they receive).
    synced: Duration,
}

/// One thread reads `src` and writes it to a loopback socket, another reads the socket and
/// writes `dst`, both in pieces of [`PIECE`]; `dst` is removed afterwards.
fn raw_copy(src: &Path, dst: &Path) -> RawCopy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let src = src.to_path_buf();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut file = File::open(&src).unwrap();
        let mut socket = TcpStream::connect(addr).unwrap();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            socket.write_all(&buf[..n]).unwrap();
        }
    });
    let (mut socket, _) = listener.accept().unwrap();
    let mut out = File::create(dst).unwrap();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = socket.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).unwrap();
    }
    let written = started.elapsed();
    out.sync_all().unwrap();
    let synced = started.elapsed();
    sender.join().unwrap();
    std::fs::remove_file(dst).unwrap();
    RawCopy { written, synced }
}

/// BLAKE3 of the file, three ways.
struct Hashes {
    hash: blake3::Hash,
    /// Memory-mapped and split over every core, as b3sum does (`update_mmap_rayon`).
    mmap_rayon: Duration,
    /// One thread reading the file (`update_reader`).
    one_thread: Duration,
    /// The `b3sum` binary, if one is on the PATH: its version and time.
    b3sum: Option<(String, Duration)>,
}

impl Hashes {
    fn measure(path: &Path) -> Hashes {
        let started = Instant::now();
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(path).unwrap();
        let hash = hasher.finalize();
        let mmap_rayon = started.elapsed();

        let started = Instant::now();
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(File::open(path).unwrap()).unwrap();
        let one = hasher.finalize();
        let one_thread = started.elapsed();
        assert_eq!(hash, one);

        let b3sum = Command::new("b3sum")
            .arg("--version")
            .output()
            .ok()
            .map(|v| {
                let version = String::from_utf8_lossy(&v.stdout).trim().to_string();
                let started = Instant::now();
                let out = Command::new("b3sum")
                    .arg("--no-names")
                    .arg(path)
                    .output()
                    .unwrap();
                let took = started.elapsed();
                assert!(out.status.success(), "b3sum failed");
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    hash.to_hex().as_str()
                );
                (version, took)
            });
        Hashes {
            hash,
            mmap_rayon,
            one_thread,
            b3sum,
        }
    }
}

/// What the daemons did.
struct DaemonRun {
    upload: Duration,
    post: Duration,
    upload_hwm_kib: u64,
    upload_cpu: CpuTime,
    transfer: Duration,
    /// Highest resident memory sampled every 100 ms during the transfer: A, B.
    peak_rss_kib: [u64; 2],
    /// VmHWM over the transfer alone (reset before it): A, B.
    hwm_kib: [u64; 2],
    transfer_cpu: [CpuTime; 2],
    /// Bytes A sent and B received for the whole file: the file and its tree's hashes.
    served: u64,
    fetched: u64,
    resume: Resume,
}

/// The transfer to C, cut by killing A and resumed once A is back.
struct Resume {
    /// From C's fetch to the poll that saw more than half verified, then the kill.
    before_kill: Duration,
    /// What that last poll of `transfers()` said C had verified.
    have_at_kill: u64,
    /// Where C's download stood once the cut was noticed (its checkpoint).
    resumed_from: u64,
    /// From A's new start until C saw it connected, and until C had the whole file.
    reconnected: Duration,
    completed: Duration,
    /// Bytes the new A process sent.
    sent_after: u64,
    /// Bytes C received in all, from both A processes.
    fetched_total: u64,
}

/// A file's worth of attachment moved between real daemons: upload and post on A, a fetch by
/// B, and a fetch by C cut by killing A, then resumed.
async fn daemons(file: &Path, size: u64, hash: &str) -> DaemonRun {
    // A listens on a fixed port too, to be found there after its restart.
    let a_at = fixed_loopback_addr();
    let a_flags = vec!["--listen".to_string(), a_at.clone()];
    let ha = home();
    let (mut a, _) = start(&ha, &a_flags).await;
    let a_addr = format!("{a_at}/p2p/{}", a.device_id);
    let chat = a.client.create_chat("attachments").await.unwrap().id;

    // Upload and post.
    let a_pid = a.pid().unwrap();
    reset_hwm(a_pid);
    let cpu_before = cpu(&a);
    let started = Instant::now();
    let body = reqwest::Body::wrap_stream(read_chunks(tokio::fs::File::open(file).await.unwrap()));
    let blob = a.client.upload_blob(body, Some(size)).await.unwrap();
    let upload = started.elapsed();
    assert_eq!((blob.hash.as_str(), blob.size), (hash, size));
    let attachment = PostAttachment {
        hash: blob.hash.clone(),
        name: "file.bin".into(),
        media_type: None,
    };
    let posted = Instant::now();
    let msg = a
        .client
        .post_with_attachments(&chat, "a file", None, vec![attachment], None)
        .await
        .unwrap()
        .id;
    let post = posted.elapsed();
    let upload_cpu = cpu(&a).since(&cpu_before);
    let upload_hwm_kib = status_kib(a_pid, "VmHWM:");

    // B fetches it when asked.
    let hb = fetching_home();
    let (b, _) = start(&hb, &["--peer".to_string(), a_addr.clone()]).await;
    pair_by_address(&a, &b).await;
    wait_message(&b, &chat, &msg).await;
    let b_pid = b.pid().unwrap();
    reset_hwm(a_pid);
    reset_hwm(b_pid);
    let cpu_before = [cpu(&a), cpu(&b)];
    let started = Instant::now();
    let mut peak_rss_kib = [0u64; 2];
    let fetched = {
        let fetch = b.client.fetch_attachments(&chat, &msg);
        tokio::pin!(fetch);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = &mut fetch => break done.unwrap(),
                _ = tick.tick() => {
                    peak_rss_kib[0] = peak_rss_kib[0].max(rss_kib(&a));
                    peak_rss_kib[1] = peak_rss_kib[1].max(rss_kib(&b));
                }
            }
        }
    };
    let transfer = started.elapsed();
    assert!(fetched.iter().all(|f| f.present), "{fetched:?}");
    let transfer_cpu = [cpu(&a).since(&cpu_before[0]), cpu(&b).since(&cpu_before[1])];
    let hwm_kib = [status_kib(a_pid, "VmHWM:"), status_kib(b_pid, "VmHWM:")];
    let served = a.client.status().await.unwrap().attachments.served_bytes;
    let fetched = b.client.status().await.unwrap().attachments.fetched_bytes;
    // B stops: C must fetch from A alone.
    b.shutdown().await;

    // C fetches it; A is killed halfway and started again.
    let hc = fetching_home();
    let (c, _) = start(&hc, &["--peer".to_string(), a_addr]).await;
    pair_by_address(&a, &c).await;
    wait_message(&c, &chat, &msg).await;
    let started = Instant::now();
    let first = {
        let (client, chat, msg) = (c.client.clone(), chat.clone(), msg.clone());
        tokio::spawn(async move { client.fetch_attachments(&chat, &msg).await })
    };
    let have_at_kill = loop {
        let transfers = c.client.transfers().await.unwrap();
        if let Some(t) = transfers.first()
            && t.have > size / 2
        {
            break t.have;
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "the transfer to C stalled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    a.kill();
    let before_kill = started.elapsed();
    let cut = tokio::time::timeout(STEP_TIMEOUT, first)
        .await
        .unwrap()
        .unwrap();
    assert!(
        cut.is_err(),
        "the fetch finished although its sender was killed"
    );
    let resumed_from = checkpoint(&hc, hash);
    drop(a);
    let restarted = Instant::now();
    let (a, _) = start(&ha, &a_flags).await;
    eventually("C reconnects to A", STEP_TIMEOUT, || async {
        c.peer(&a.device_id).await.is_some_and(|p| p.connected)
    })
    .await;
    let reconnected = restarted.elapsed();
    // C takes the download up again by itself when A connects; this joins it (or starts it).
    loop {
        match c.client.fetch_attachments(&chat, &msg).await {
            Ok(list) if list.iter().all(|f| f.present) => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(restarted.elapsed() < STEP_TIMEOUT, "C never finished");
    }
    let completed = restarted.elapsed();
    let sent_after = a.client.status().await.unwrap().attachments.served_bytes;
    let fetched_total = c.client.status().await.unwrap().attachments.fetched_bytes;
    c.shutdown().await;
    a.shutdown().await;
    DaemonRun {
        upload,
        post,
        upload_hwm_kib,
        upload_cpu,
        transfer,
        peak_rss_kib,
        hwm_kib,
        transfer_cpu,
        served,
        fetched,
        resume: Resume {
            before_kill,
            have_at_kill,
            resumed_from,
            reconnected,
            completed,
            sent_after,
            fetched_total,
        },
    }
}

/// A home whose daemon fetches attachments only when asked (`config.toml` under `--home`).
fn fetching_home() -> Home {
    let h = home();
    std::fs::write(h.path().join("config.toml"), FETCH_WHEN_ASKED).unwrap();
    h
}

/// The file in pieces of [`UPLOAD_CHUNK`], as a request body.
fn read_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = BytesMut::with_capacity(UPLOAD_CHUNK);
        if file.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        Ok(Some((buf.freeze(), file)))
    })
}

async fn wait_message(d: &TestDaemon, chat: &str, msg: &str) {
    eventually("the message arrives", STEP_TIMEOUT, || async {
        d.client
            .message(chat, msg)
            .await
            .is_ok_and(|m| !m.attachments.is_empty())
    })
    .await;
}

/// Where an unfinished download stands on disk: the bytes its `.have` file records as verified
/// and synced (`data/blobs/partial/<hash>.have`: "size have").
fn checkpoint(home: &Home, hash: &str) -> u64 {
    let path = paths(home.path())
        .data_dir
        .join("blobs")
        .join("partial")
        .join(format!("{hash}.have"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sets the process's VmHWM back to its resident memory now (Linux 4.0 and later), so that the
/// next reading is the peak of what follows.
fn reset_hwm(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn rate(bytes: u64, d: Duration) -> f64 {
    mib(bytes) / d.as_secs_f64()
}

fn cpu_text(c: &CpuTime) -> String {
    format!(
        "{:.2} s ({:.2} user + {:.2} system)",
        c.user + c.system,
        c.user,
        c.system
    )
}

fn report(size: u64, made: Duration, raw: [RawCopy; 2], hashes: [Hashes; 2], run: &DaemonRun) {
    let secs = |d: Duration| d.as_secs_f64();
    // Ratios are against the faster of the two runs of each baseline.
    let raw_synced = raw[0].synced.min(raw[1].synced);
    let mmap_rayon = hashes[0].mmap_rayon.min(hashes[1].mmap_rayon);
    let one_thread = hashes[0].one_thread.min(hashes[1].one_thread);
    println!(
        "file: {:.0} MiB of xorshift64 output (made and synced in {:.1} s), in a temporary \
         directory on the same disk as the daemons' homes. Baselines were measured before and \
         after the daemons' runs (both shown); ratios are against the faster of the two.\n",
        mib(size),
        secs(made)
    );
    println!("| measure | value | ratio |");
    println!("|---|---|---|");
    println!(
        "| raw loopback TCP copy, file to socket to file (64 KiB reads and writes), synced | \
         {:.2} s / {:.2} s, {:.0} MiB/s (written {:.2} s / {:.2} s, before the sync) | 1.00 |",
        secs(raw[0].synced),
        secs(raw[1].synced),
        rate(size, raw_synced),
        secs(raw[0].written),
        secs(raw[1].written)
    );
    println!(
        "| BLAKE3, memory-mapped on every core (b3sum's way, `update_mmap_rayon`) | \
         {:.2} s / {:.2} s, {:.0} MiB/s | 1.00 |",
        secs(hashes[0].mmap_rayon),
        secs(hashes[1].mmap_rayon),
        rate(size, mmap_rayon)
    );
    println!(
        "| BLAKE3 on one thread (`update_reader`) | {:.2} s / {:.2} s, {:.0} MiB/s | |",
        secs(hashes[0].one_thread),
        secs(hashes[1].one_thread),
        rate(size, one_thread)
    );
    if let (Some((version, before)), Some((_, after))) = (&hashes[0].b3sum, &hashes[1].b3sum) {
        println!(
            "| `{version}` | {:.2} s / {:.2} s | {:.2}x b3sum's way |",
            secs(*before),
            secs(*after),
            secs(*before.min(after)) / secs(mmap_rayon)
        );
    }
    let to_post = run.upload + run.post;
    println!(
        "| time to post: upload to A (`POST /v1/blobs`, streamed from the file) and post | \
         {:.2} s ({:.2} s the upload, {:.1} ms the post) | {:.2}x b3sum's way; {:.2}x one \
         thread's hashing; {:.2}x the raw copy's time |",
        secs(to_post),
        secs(run.upload),
        secs(run.post) * 1e3,
        secs(to_post) / secs(mmap_rayon),
        secs(to_post) / secs(one_thread),
        secs(to_post) / secs(raw_synced)
    );
    println!(
        "| A during the upload: peak resident memory (VmHWM), CPU | {:.1} MiB, {} | |",
        run.upload_hwm_kib as f64 / 1024.0,
        cpu_text(&run.upload_cpu)
    );
    println!(
        "| transfer A to B (`fetch_attachments` on B; auto-fetch off) | {:.2} s, {:.0} MiB/s | \
         {:.2}x the raw copy's time ({:.0}% of its rate) |",
        secs(run.transfer),
        rate(size, run.transfer),
        secs(run.transfer) / secs(raw_synced),
        100.0 * secs(raw_synced) / secs(run.transfer)
    );
    println!(
        "| bytes A sent / B received for it (`served_bytes` / `fetched_bytes`) | {} / {} | \
         {:+.2}% over the file (the tree's hashes) |",
        run.served,
        run.fetched,
        100.0 * (run.served as f64 / size as f64 - 1.0)
    );
    let memory = |kib: [u64; 2]| {
        let (a, b) = (kib[0] as f64 / 1024.0, kib[1] as f64 / 1024.0);
        let met = a < MEMORY_AIM_MIB && b < MEMORY_AIM_MIB;
        (a, b, if met { "met" } else { "not met" })
    };
    let (a, b, met) = memory(run.peak_rss_kib);
    println!(
        "| resident memory during the transfer, highest of samples every 100 ms: A / B | \
         {a:.1} / {b:.1} MiB | aim under {MEMORY_AIM_MIB:.0} MiB: {met} |"
    );
    let (a, b, met) = memory(run.hwm_kib);
    println!(
        "| peak resident memory over the transfer (VmHWM, reset before it): A / B | \
         {a:.1} / {b:.1} MiB | aim under {MEMORY_AIM_MIB:.0} MiB: {met} |"
    );
    let [cpu_a, cpu_b] = &run.transfer_cpu;
    println!(
        "| CPU during the transfer: A / B | {} / {} | {:.0}% / {:.0}% of one core |",
        cpu_text(cpu_a),
        cpu_text(cpu_b),
        100.0 * (cpu_a.user + cpu_a.system) / secs(run.transfer),
        100.0 * (cpu_b.user + cpu_b.system) / secs(run.transfer)
    );
    let r = &run.resume;
    let rest = size - r.resumed_from;
    // The hashes that come with the rest, at the rate the whole file's transfer measured.
    let rest_encoded = rest as f64 * run.served as f64 / size as f64;
    let excess = r.sent_after as i64 - (size - r.have_at_kill) as i64;
    println!(
        "| transfer A to C until A was killed (over half verified) | {:.2} s, {:.0} MiB/s | \
         {:.2}x the raw copy's rate |",
        secs(r.before_kill),
        rate(r.have_at_kill, r.before_kill),
        rate(r.have_at_kill, r.before_kill) / rate(size, raw_synced)
    );
    println!(
        "| verified on C when A was killed (its last `transfers()` reading) | {} ({:.1} MiB) | |",
        r.have_at_kill,
        mib(r.have_at_kill)
    );
    println!(
        "| where C's download stood once the cut was noticed (its `.have` checkpoint) | {} \
         ({:+} KiB on the reading) | |",
        r.resumed_from,
        (r.resumed_from as i64 - r.have_at_kill as i64) / 1024
    );
    println!(
        "| A started again: until C reconnected / until C had the whole file | {:.2} s / {:.2} s \
         | |",
        secs(r.reconnected),
        secs(r.completed)
    );
    println!(
        "| bytes the new A process sent (`served_bytes`) | {} ({:.1} MiB) | |",
        r.sent_after,
        mib(r.sent_after)
    );
    println!(
        "| excess: sent after the restart - (size - verified at the kill) | {} bytes ({:+.2} \
         MiB) | aim under 4 MiB plus what was in flight: {} |",
        excess,
        excess as f64 / MIB,
        if (excess as f64) < 4.0 * MIB {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "| what the new A sent beyond the rest of the file: the tree's hashes for the rest; \
         anything else (sent twice) | {:.0} KiB; {:+.0} KiB | |",
        (rest_encoded - rest as f64) / 1024.0,
        (r.sent_after as f64 - rest_encoded) / 1024.0
    );
    println!(
        "| bytes C received in all, from both A processes | {} | {:+.2}% over the file |",
        r.fetched_total,
        100.0 * (r.fetched_total as f64 / size as f64 - 1.0)
    );
}
