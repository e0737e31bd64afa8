//! Files on messages: `chatsync post --file` uploads them before it posts, and `chatsync
//! attachment get` fetches a message's files from the devices that have them and saves them.
//!
//! Both sides stream: no file is held in memory. The names of files saved come from other
//! devices, so they are checked here again (the daemon checks them too) and a file is never
//! written over: it is written under a temporary name in the directory, then linked in under the
//! first free name (`name.ext`, `name (1).ext`, ...).

use std::{
    collections::HashMap,
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use chatsync_api::{
    Client, ClientError,
    wire::{AttachmentJson, PostAttachment},
};
use chatsync_model::ModelError;
use futures_util::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    exit::{self, Failure},
    output,
};

/// Files up to this size are uploaded without a progress bar.
const BAR_FROM: u64 = 1024 * 1024;
/// Bytes read from a file at a time while uploading it.
const CHUNK: usize = 256 * 1024;
/// How often `attachment get` asks how far the transfers are.
const POLL: Duration = Duration::from_millis(200);
/// Longest file name, in bytes (what file systems take, and what the daemon accepts).
const MAX_NAME_BYTES: usize = 255;
/// The media type of files whose extension says nothing.
const OCTET_STREAM: &str = "application/octet-stream";

/// A file to attach, as the command line names it.
#[derive(Debug)]
pub struct Source {
    /// `None`: standard input.
    path: Option<PathBuf>,
    name: String,
    media_type: String,
}

/// The files of `post --file`, checked: at most one read from standard input (and then not the
/// text too), which needs `--name`; `--name` names that one, or the only file.
pub fn sources(
    files: Vec<PathBuf>,
    name: Option<String>,
    media_type: Option<String>,
    text_from_stdin: bool,
) -> anyhow::Result<Vec<Source>> {
    let from_stdin = files.iter().filter(|f| is_stdin(f)).count();
    if from_stdin > 1 {
        return Err(usage(
            "standard input can be read once: give `--file -` at most once",
        ));
    }
    if from_stdin == 1 && text_from_stdin {
        return Err(usage(
            "standard input cannot be both the text and a file: give the text as an argument",
        ));
    }
    if from_stdin == 1 && name.is_none() {
        return Err(usage(
            "`--file -` needs `--name NAME`: the name the file goes by",
        ));
    }
    if name.is_some() && from_stdin == 0 && files.len() > 1 {
        return Err(usage(
            "--name names the file read from standard input, or the only file attached: \
             rename the files instead",
        ));
    }
    let count = files.len();
    files
        .into_iter()
        .map(|path| {
            let stdin = is_stdin(&path);
            let own_name = match &name {
                Some(name) if stdin || count == 1 => name.clone(),
                _ => match path.file_name() {
                    Some(base) => base.to_string_lossy().into_owned(),
                    None => {
                        return Err(usage(format!(
                            "{}: not a file name (give the path of a file)",
                            path.display()
                        )));
                    }
                },
            };
            if let Err(why) = check_name(&own_name) {
                return Err(usage(format!(
                    "cannot attach a file named {}: a file name {why}{}",
                    output::visible_line(&own_name),
                    if name.is_some() {
                        ""
                    } else {
                        " (rename it, or use --name)"
                    }
                )));
            }
            let media_type = media_type
                .clone()
                .unwrap_or_else(|| guess_media_type(&own_name).to_string());
            // Checked before any bytes move: the daemon would refuse the post after the upload.
            match chatsync_model::attachment::check_media_type(&media_type) {
                Ok(()) => {}
                Err(ModelError::Invalid(why)) => return Err(usage(format!("--type: {why}"))),
                Err(e) => return Err(usage(format!("--type: {e}"))),
            }
            Ok(Source {
                path: (!stdin).then_some(path),
                name: own_name,
                media_type,
            })
        })
        .collect()
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::error(exit::USAGE, message)
}

/// A file opened to be uploaded.
#[derive(Debug)]
pub struct Opened {
    file: tokio::fs::File,
    /// Known for regular files; `None` for standard input, pipes and the like.
    len: Option<u64>,
    name: String,
    media_type: String,
}

/// Opens every file before anything is uploaded, so that a missing one stops the post before
/// any bytes move.
pub async fn open_all(sources: Vec<Source>) -> anyhow::Result<Vec<Opened>> {
    let mut opened = Vec::with_capacity(sources.len());
    for source in sources {
        let (file, len) = match &source.path {
            Some(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                let meta = file
                    .metadata()
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if meta.is_dir() {
                    bail!("{} is a directory: attach files", path.display());
                }
                (file, meta.is_file().then_some(meta.len()))
            }
            None => (stdin_file()?, None),
        };
        opened.push(Opened {
            file,
            len,
            name: source.name,
            media_type: source.media_type,
        });
    }
    Ok(opened)
}

/// Standard input as a file tokio reads on its blocking threads (a copy of the descriptor, so
/// that it works for pipes, files and terminals alike).
fn stdin_file() -> anyhow::Result<tokio::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot read standard input")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// Uploads one file as a blob, with a bar on a terminal once it is over [`BAR_FROM`]; answers
/// what the post names.
pub async fn upload(client: &Client, opened: Opened, json: bool) -> anyhow::Result<PostAttachment> {
    let show = !json && std::io::stderr().is_terminal();
    let bar = upload_bar(&opened.name, opened.len, show);
    let body = reqwest::Body::wrap_stream(read_chunks(opened.file, bar.clone(), show));
    let stored = client.upload_blob(body, opened.len).await;
    bar.finish_and_clear();
    let blob = stored.map_err(|e| about(&opened.name, e))?;
    if let Some(len) = opened.len
        && blob.size != len
    {
        bail!(
            "{}: {} bytes were stored of {len} (did the file change while it was read?)",
            output::visible_line(&opened.name),
            blob.size
        );
    }
    Ok(PostAttachment {
        hash: blob.hash,
        name: opened.name,
        media_type: Some(opened.media_type),
    })
}

/// A bar that stays hidden for files up to [`BAR_FROM`] (and until that many bytes were read,
/// when the size is not known up front).
fn upload_bar(name: &str, len: Option<u64>, show: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden())
        .with_message(format!("uploading {}", output::visible_line(name)));
    let template = match len {
        Some(_) => "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        None => "{spinner} {msg} {bytes} ({bytes_per_sec})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    if show && len.is_some_and(|len| len > BAR_FROM) {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar
}

/// The file's bytes as a stream of chunks, counted on `bar`.
fn read_chunks(
    file: tokio::fs::File,
    bar: ProgressBar,
    show: bool,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::try_unfold(file, move |mut file| {
        let bar = bar.clone();
        async move {
            let mut buf = BytesMut::with_capacity(CHUNK);
            if file.read_buf(&mut buf).await? == 0 {
                return Ok(None);
            }
            bar.inc(buf.len() as u64);
            if show && bar.is_hidden() && bar.position() > BAR_FROM {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            Ok(Some((buf.freeze(), file)))
        }
    })
}

/// A daemon's refusal about one file, with the file's name in front.
fn about(name: &str, e: ClientError) -> ClientError {
    match e {
        ClientError::Api {
            status,
            code,
            message,
            candidates,
        } => ClientError::Api {
            status,
            code,
            message: format!("{}: {message}", output::visible_line(name)),
            candidates,
        },
        other => other,
    }
}

/// The media type of a file, by its extension (the common kinds of files people send).
pub fn guess_media_type(name: &str) -> &'static str {
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return OCTET_STREAM;
    };
    if stem.is_empty() {
        // `.bashrc`: a name, not an extension.
        return OCTET_STREAM;
    }
    match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "json" => "application/json",
        "zip" => "application/zip",
        _ => OCTET_STREAM,
    }
}

/// Why a name (from another device) is not one to save a file under, if it is not: it must be
/// a plain name in the directory, nothing that reaches out of it or hides in it.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("must not be empty")
    } else if name.len() > MAX_NAME_BYTES {
        Err("must be at most 255 bytes")
    } else if name == "." || name == ".." {
        Err("must not be `.` or `..`")
    } else if name.contains(['/', '\\']) {
        Err("must not contain `/` or `\\`")
    } else if name.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else {
        Ok(())
    }
}

/// The `n`th name to try for `name`: itself, then `stem (1).ext`, `stem (2).ext`, ... (the
/// extension is what follows the last dot, unless the name starts with its only dot).
pub fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

/// The first of [`numbered_name`]'s names that `taken` says is free in `dir`.
pub fn free_name(dir: &Path, name: &str, taken: impl Fn(&Path) -> bool) -> PathBuf {
    let mut n = 0;
    loop {
        let path = dir.join(numbered_name(name, n));
        if !taken(&path) {
            return path;
        }
        n += 1;
    }
}

/// A file `attachment get` wrote, with `--json`.
#[derive(Serialize)]
struct Saved<'a> {
    path: &'a str,
    hash: &'a str,
    size: u64,
}

/// `chatsync attachment get`.
pub async fn get(
    client: &Client,
    chat: &str,
    message: &str,
    out: Option<PathBuf>,
    index: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    // No directory: files go in the current one, printed as plain names.
    let dir = out.unwrap_or_default();
    let look = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &dir
    };
    let meta = tokio::fs::metadata(look)
        .await
        .with_context(|| format!("cannot save in {}", look.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", look.display());
    }
    // Resolved once: the fetch and the downloads name the same message.
    let msg = client.message(chat, message).await?;
    let count = msg.attachments.len();
    let wanted: Vec<usize> = match index {
        _ if count == 0 => {
            return Err(Failure::error(
                exit::NOT_FOUND,
                format!("message {} has no attachments", output::short(&msg.id)),
            ));
        }
        None => (0..count).collect(),
        Some(i) if i < count => vec![i],
        Some(i) => {
            return Err(Failure::error(
                exit::NOT_FOUND,
                format!(
                    "message {} has {count} attachment(s): --index {i} is not one of 0 to {}",
                    output::short(&msg.id),
                    count - 1
                ),
            ));
        }
    };
    let mut skipped = 0;
    let wanted: Vec<usize> = wanted
        .into_iter()
        .filter(|&i| {
            let name = &msg.attachments[i].name;
            match check_name(name) {
                Ok(()) => true,
                Err(why) => {
                    eprintln!(
                        "error: attachment {i} skipped: it is named {}, and a file name {why}",
                        output::visible_line(name)
                    );
                    skipped += 1;
                    false
                }
            }
        })
        .collect();
    let mut attachments = msg.attachments.clone();
    let missing: Vec<&AttachmentJson> = wanted
        .iter()
        .map(|&i| &attachments[i])
        .filter(|a| !a.present)
        .collect();
    if !missing.is_empty() {
        attachments = fetch(client, &msg.chat, &msg.id, &missing, json).await?;
    }
    for i in wanted {
        let Some(attachment) = attachments.get(i) else {
            bail!("message {} was deleted meanwhile", output::short(&msg.id));
        };
        let path = download(client, &msg.chat, &msg.id, i, attachment, &dir).await?;
        if json {
            output::json_line(&Saved {
                path: &path.to_string_lossy(),
                hash: &attachment.hash,
                size: attachment.size,
            })?;
        } else {
            println!("{}", output::visible_line(&path.display().to_string()));
        }
    }
    if skipped > 0 {
        return Err(Failure::error(
            exit::REFUSED,
            format!("{skipped} attachment(s) not saved: their names are not safe file names"),
        ));
    }
    Ok(())
}

/// Asks the daemon to fetch the message's attachments, with a bar of the bytes of `missing`
/// received so far on a terminal; answers the message's attachments once they are all here.
async fn fetch(
    client: &Client,
    chat: &str,
    msg: &str,
    missing: &[&AttachmentJson],
    json: bool,
) -> Result<Vec<AttachmentJson>, ClientError> {
    if json || !std::io::stderr().is_terminal() {
        return client.fetch_attachments(chat, msg).await;
    }
    // By hash: one file attached twice comes once.
    let sizes: HashMap<String, u64> = missing.iter().map(|a| (a.hash.clone(), a.size)).collect();
    let bar = ProgressBar::new(sizes.values().sum()).with_message("fetching");
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let watcher = tokio::spawn({
        let client = client.clone();
        let bar = bar.clone();
        async move {
            // What each has received: a transfer that ended keeps its last count.
            let mut have: HashMap<String, u64> = HashMap::new();
            loop {
                if let Ok(transfers) = client.transfers().await {
                    for t in transfers {
                        if let Some(&size) = sizes.get(&t.hash) {
                            let seen = have.entry(t.hash).or_default();
                            *seen = (*seen).max(t.have.min(size));
                        }
                    }
                    bar.set_position(have.values().sum());
                }
                tokio::time::sleep(POLL).await;
            }
        }
    });
    let fetched = client.fetch_attachments(chat, msg).await;
    watcher.abort();
    bar.finish_and_clear();
    fetched
}

/// Saves attachment `index` in `dir` under the first free name; answers its path.
async fn download(
    client: &Client,
    chat: &str,
    msg: &str,
    index: usize,
    attachment: &AttachmentJson,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    // Listening for Ctrl-C from before the temporary file exists, so that none is left behind.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let response = client
        .attachment(chat, msg, index)
        .await
        .map_err(|e| about(&attachment.name, e))?;
    let temp = dir.join(format!(
        ".chatsync-{}.part",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let written = tokio::select! {
        written = write_temp(response, &temp) => written,
        _ = interrupt.recv() => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(Failure::error(exit::INTERRUPTED, "interrupted"));
        }
    };
    let outcome = match written {
        Ok(n) if n == attachment.size => place(&temp, dir, &attachment.name),
        Ok(n) => Err(anyhow::anyhow!(
            "{}: received {n} bytes of {}; run the command again",
            output::visible_line(&attachment.name),
            attachment.size
        )),
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&temp).await;
    outcome
}

/// Writes the response's bytes to a new file at `temp`; answers how many.
async fn write_temp(mut response: reqwest::Response, temp: &Path) -> anyhow::Result<u64> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .await
        .with_context(|| format!("cannot create {}", temp.display()))?;
    let mut written = 0u64;
    let copied: anyhow::Result<()> = async {
        while let Some(chunk) = response
            .chunk()
            .await
            .context("the download from the daemon was cut")?
        {
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        file.flush().await?;
        file.sync_all().await?;
        Ok(())
    }
    .await;
    copied.with_context(|| format!("cannot write {}", temp.display()))?;
    Ok(written)
}

/// Links the finished file in under the first free name (a name that another program takes
/// meanwhile is skipped, never written over); the caller removes `temp`.
fn place(temp: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    for n in 0.. {
        let path = dir.join(numbered_name(name, n));
        match std::fs::hard_link(temp, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) => break,
        }
    }
    // No hard links here (the file systems of some USB sticks): a rename, which would replace
    // a file that took the name between the look and the rename.
    let path = free_name(dir, name, |p| p.symlink_metadata().is_ok());
    std::fs::rename(temp, &path).with_context(|| format!("cannot save {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn media_types_are_guessed_from_the_extension() {
        assert_eq!(guess_media_type("beach.jpg"), "image/jpeg");
        assert_eq!(guess_media_type("BEACH.JPEG"), "image/jpeg");
        assert_eq!(guess_media_type("a.b.png"), "image/png");
        assert_eq!(guess_media_type("clip.MOV"), "video/quicktime");
        assert_eq!(guess_media_type("song.mp3"), "audio/mpeg");
        assert_eq!(guess_media_type("voice.m4a"), "audio/mp4");
        assert_eq!(guess_media_type("notes.md"), "text/markdown");
        assert_eq!(guess_media_type("data.json"), "application/json");
        assert_eq!(guess_media_type("all.zip"), "application/zip");
        for other in ["README", "archive.tar.gz", ".jpg", "x.", "photo.jpg.exe"] {
            assert_eq!(guess_media_type(other), OCTET_STREAM, "{other}");
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "/abs",
            "a\\b",
            "..\\x",
            "bell\x07",
            "new\nline",
            "esc\x1b[2J",
            "c1\u{9b}",
            "nul\0",
            "del\x7f",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        for good in [
            "beach.jpg",
            "a b ünïcode (1).txt",
            ".hidden",
            "...",
            "..x",
            "x..",
            "photo 🎉.png",
            &"x".repeat(255),
        ] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn names_are_numbered_before_the_extension() {
        assert_eq!(numbered_name("beach.jpg", 0), "beach.jpg");
        assert_eq!(numbered_name("beach.jpg", 1), "beach (1).jpg");
        assert_eq!(numbered_name("beach.jpg", 12), "beach (12).jpg");
        assert_eq!(numbered_name("a.tar.gz", 2), "a.tar (2).gz");
        assert_eq!(numbered_name("README", 1), "README (1)");
        assert_eq!(numbered_name(".bashrc", 1), ".bashrc (1)");
    }

    #[test]
    fn the_first_free_name_is_chosen() {
        let dir = Path::new("/d");
        let taken: HashSet<PathBuf> = ["beach.jpg", "beach (1).jpg", "beach (3).jpg"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
        let free = |name| free_name(dir, name, |p| taken.contains(p));
        assert_eq!(free("beach.jpg"), dir.join("beach (2).jpg"));
        assert_eq!(free("other.jpg"), dir.join("other.jpg"));
    }

    #[test]
    fn files_are_saved_under_a_free_name_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("a.txt");
        std::fs::write(&existing, "mine").unwrap();
        for (n, expect) in [(1, "a (1).txt"), (2, "a (2).txt")] {
            let temp = dir.path().join(format!(".part{n}"));
            std::fs::write(&temp, format!("theirs {n}")).unwrap();
            let path = place(&temp, dir.path(), "a.txt").unwrap();
            std::fs::remove_file(&temp).unwrap();
            assert_eq!(path, dir.path().join(expect));
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("theirs {n}")
            );
        }
        assert_eq!(std::fs::read_to_string(&existing).unwrap(), "mine");
    }

    #[test]
    fn the_file_from_standard_input_needs_a_name() {
        let paths = |p: &[&str]| p.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert!(sources(paths(&["-"]), None, None, false).is_err());
        assert!(sources(paths(&["-", "-"]), Some("x".into()), None, false).is_err());
        assert!(sources(paths(&["-"]), Some("x.png".into()), None, true).is_err());
        assert!(
            sources(
                paths(&["a.jpg", "b.jpg"]),
                Some("c.jpg".into()),
                None,
                false
            )
            .is_err()
        );
        assert!(sources(paths(&["-"]), Some("../x".into()), None, false).is_err());
        assert!(sources(paths(&["a.jpg"]), None, Some("jpeg".into()), false).is_err());

        let got = sources(
            paths(&["dir/a.jpg", "-"]),
            Some("x.png".into()),
            None,
            false,
        )
        .unwrap();
        let got: Vec<(&str, &str, bool)> = got
            .iter()
            .map(|s| (s.name.as_str(), s.media_type.as_str(), s.path.is_none()))
            .collect();
        assert_eq!(
            got,
            [("a.jpg", "image/jpeg", false), ("x.png", "image/png", true)]
        );

        let got = sources(
            paths(&["dir/a.jpg"]),
            Some("b.bin".into()),
            Some("image/avif".into()),
            false,
        )
        .unwrap();
        assert_eq!(
            (got[0].name.as_str(), got[0].media_type.as_str()),
            ("b.bin", "image/avif")
        );
    }
}
