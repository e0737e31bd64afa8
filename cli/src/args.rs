//! The command line of `chatsync`.

use std::path::PathBuf;

use chatsync_daemon::paths::PathArgs;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatsync",
    version,
    about = "Keep your chats in sync across your devices, with no server",
    after_help = "Start with `chatsync daemon start`, then `chatsync chat create NAME` and \
                  `chatsync post NAME TEXT`. `--help` shows examples and exit codes.",
    after_long_help = LONG_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Print JSON instead of text: one object per line.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start, stop or check the background daemon (chatsyncd).
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Show this device and the daemon's state.
    Status,
    /// Create or rename a chat.
    #[command(subcommand)]
    Chat(ChatCommand),
    /// List chats, most recently active first.
    Chats,
    /// Show the devices this one is connected to (and trusted ones it is not).
    Peers,
    /// Check what makes this device sync, one line per check, each problem with the command
    /// that fixes it; exits 0 only when no check failed.
    Doctor,
    /// List, add or remove the devices that may sync with this one.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
    },
    /// Encrypted backups of every chat: set up, back up now, list, verify, restore.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// The web client: the chats in a browser, served by the daemon (off until enabled).
    Web {
        #[command(subcommand)]
        command: Option<WebCommand>,
    },
    /// Invite a new device: show a one-time ticket (and its QR code) and wait until it joins.
    Pair {
        /// How long the ticket stays valid, e.g. 90s, 10m, 2h (at most 24h).
        #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_ticket_lifetime)]
        expires: u64,
    },
    /// Join the mesh of another device with a ticket from `chatsync pair` on it, and wait
    /// until every chat has arrived.
    Join {
        /// The ticket (`cspair1_...`).
        ticket: String,
        /// What the other devices call this one (default: this device's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Post a message, with files attached if you like; prints its id once it is safely
    /// stored.
    Post {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// Message text; `-` reads it from standard input. May be left out with --file.
        #[arg(required_unless_present = "files")]
        text: Option<String>,
        /// Attach this file (repeat for several); `-` reads one from standard input (then
        /// --name is needed).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// The name the file goes by (default: its own name): for the file read from standard
        /// input, or for the one file attached.
        #[arg(long, value_name = "NAME", requires = "files")]
        name: Option<String>,
        /// The media type of every file attached, e.g. image/png (default: guessed from each
        /// name's extension).
        #[arg(long = "type", value_name = "MEDIA", requires = "files")]
        media_type: Option<String>,
        /// Answer this message (id or id prefix).
        #[arg(long, value_name = "MSG")]
        reply_to: Option<String>,
        /// Post at most once under this key, however often the command runs (a lost answer is
        /// retried with a fresh key otherwise chosen per run; see docs/api.md).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Save the files attached to a message.
    #[command(subcommand)]
    Attachment(AttachmentCommand),
    /// Show the latest messages of a chat, oldest first.
    Log {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// How many messages to show (0: none, useful with --follow).
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        count: usize,
        /// Keep showing new messages and changes as they happen, until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// Message id or id prefix.
        message: String,
        /// New text; `-` reads it from standard input.
        text: String,
    },
    /// Delete one of your messages (its place in the chat stays, marked deleted).
    Delete {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// Message id or id prefix.
        message: String,
    },
    /// React to a message (one reaction per device; a new one replaces the old).
    React {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// Message id or id prefix.
        message: String,
        /// The reaction, e.g. 👍. Omit with --remove.
        #[arg(required_unless_present = "remove")]
        reaction: Option<String>,
        /// Remove your reaction.
        #[arg(long, conflicts_with = "reaction")]
        remove: bool,
    },
    /// Mark a chat as read up to a message (default: the newest).
    MarkRead {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// Message id or id prefix (default: the newest message).
        message: Option<String>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start chatsyncd in the background and wait until it answers.
    Start {
        /// The chatsyncd binary (default: next to this one, else on PATH).
        #[arg(long, env = "CHATSYNCD_BIN", value_name = "PATH")]
        bin: Option<PathBuf>,
    },
    /// Stop chatsyncd gracefully and wait until it has exited.
    Stop,
    /// Tell whether chatsyncd is running.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum AttachmentCommand {
    /// Fetch a message's attachments from the devices that have them (if they are not here
    /// yet) and save them in a directory; prints the path of each file written. An existing
    /// file is never overwritten: `name (1).ext` is used instead.
    Get {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// Message id or id prefix.
        message: String,
        /// The directory to save them in (default: the current one).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Only this attachment, by its place in the message's list (0 for the first).
        #[arg(long, value_name = "N")]
        index: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Create a chat.
    Create {
        /// The chat's title.
        name: String,
        /// Create at most one chat under this key, however often the command runs.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Rename a chat.
    Rename {
        /// Chat id, unique title, or id prefix.
        chat: String,
        /// The new title.
        title: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List the devices in the roster (the default).
    List,
    /// Trust a device: add it to the roster by its id (`chatsync status` on it shows the id).
    Add {
        /// The device's id (`chatsync status` on it shows it).
        device_id: String,
        /// A name to show for it.
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove (revoke) a device from the mesh for good, by id or name: every device drops it,
    /// and it is never trusted again.
    #[command(visible_alias = "revoke")]
    Remove {
        /// The device's id, or its name in the roster.
        device: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebCommand {
    /// Where the web client stands: on or off, its address, the browsers linked (the default).
    Status,
    /// Turn the web client on (it stays on across restarts).
    Enable {
        /// Address and port to listen on (default 127.0.0.1:7780, or as before).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        /// Allow an address other computers can reach. The web client speaks plain HTTP:
        /// anyone on the network path can read it (see docs/security.md).
        #[arg(long)]
        allow_remote: bool,
    },
    /// Turn the web client off.
    Disable,
    /// Print a one-time link (and its QR code) that links a browser to this device's chats.
    Link,
    /// List the linked browsers.
    Sessions,
    /// Unlink a browser (by the id `chatsync web sessions` shows, or `all`).
    Revoke {
        /// The session's id or an id prefix (`chatsync web sessions` lists them), or `all`.
        session: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Set up backups to TARGET: a directory (a USB stick, or a folder your cloud drive
    /// syncs), `s3://bucket/prefix?endpoint=URL`, or `webdav+https://host/path`. Asks for a
    /// passphrase that protects the backup.
    Init {
        #[arg(long = "to", value_name = "TARGET")]
        target: String,
        /// Read the passphrase from standard input (one line) instead of asking.
        #[arg(long, conflicts_with = "recovery_key")]
        passphrase_stdin: bool,
        /// Instead of a passphrase, make a random recovery key and show it once (with a QR
        /// code): keep it somewhere safe, it is the only way to restore.
        #[arg(long)]
        recovery_key: bool,
    },
    /// Back up every chat now; prints the snapshot, the bytes written and the time taken.
    Now,
    /// List the snapshots: time, chats, messages, size.
    List,
    /// Read back and check every object of every snapshot (or of SNAPSHOT).
    Verify {
        /// This snapshot (id or id prefix) rather than the newest.
        snapshot: Option<String>,
    },
    /// Restore every chat from the backup at TARGET onto this device (chats it has already are
    /// kept). Asks for the passphrase.
    Restore {
        /// Where the backup is: a directory, `s3://bucket/prefix?endpoint=URL`, or
        /// `webdav+https://host/path` (as for `backup init --to`).
        target: String,
        /// This snapshot (id or id prefix) rather than the newest.
        #[arg(long)]
        snapshot: Option<String>,
        /// Read the passphrase from standard input (one line) instead of asking.
        #[arg(long, conflicts_with = "recovery_key_stdin")]
        passphrase_stdin: bool,
        /// Read the recovery key from standard input (one line).
        #[arg(long)]
        recovery_key_stdin: bool,
    },
}

/// How long a ticket may stay valid, at most: the daemon refuses longer (`POST /v1/invites`).
pub const MAX_TICKET_SECS: u64 = 24 * 3600;

/// A ticket's lifetime: a duration (see [`parse_duration`]) of at most 24 hours, checked here
/// so that every bad value is a bad command line (exit 2), too short or too long alike.
pub fn parse_ticket_lifetime(text: &str) -> Result<u64, String> {
    let secs = parse_duration(text)?;
    if secs > MAX_TICKET_SECS {
        return Err(format!("{text:?}: a ticket stays valid for at most 24h"));
    }
    Ok(secs)
}

/// A duration in whole seconds: `90`, `90s`, `10m`, `2h` or `1d`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: use a number with s, m, h or d, e.g. 10m"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?}: use a positive number with s, m, h or d, e.g. 10m"))
}

/// The end of `chatsync --help`: examples, and what each exit code means (`exit.rs`).
const LONG_HELP: &str = "\
Examples:
  chatsync daemon start                 start the background daemon
  chatsync chat create family           make a chat
  chatsync post family 'hello'          post to it (by title or id prefix)
  chatsync log family --follow          show it, and what arrives
  chatsync pair                         show a ticket (and QR code) for another device
  chatsync join TICKET --name laptop    on the other device: join with it
  chatsync status --json                where things stand, as JSON

Exit codes:
  0    success
  1    any other failure
  2    bad command line
  3    the daemon is not running
  4    no such chat or message (or the attachment is not on this device)
  5    a name matched several chats or messages
  6    refused: invalid input, not allowed, or a deleted message
  7    the daemon could not store the change
  8    join: the ticket is not valid (damaged, expired, used, or refused)
  9    join: the inviting device could not be reached; attachment get: no connected device
       has the attachment, or its transfer was cut
  10   timed out (pair: the ticket expired with nobody joining; join: the chats stopped
       arriving for a minute, they go on in the background)
  11   the disk is nearly full, or the attachment quota is (nothing was stored)
  12   backup: wrong passphrase or recovery key
  13   backup: the backup is damaged
  14   backup: the target cannot be reached
  130  interrupted";

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{AttachmentCommand, Cli, Command, parse_duration};

    #[test]
    fn a_ticket_lifetime_out_of_range_is_a_bad_command_line_either_way() {
        for bad in ["0", "25h", "2d"] {
            let err = parse(&["pair", "--expires", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
        assert!(matches!(
            parse(&["pair", "--expires", "24h"]),
            Ok(Command::Pair { expires: 86_400 })
        ));
    }

    /// Every positional argument of every command says what it is in `--help`.
    #[test]
    fn every_positional_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "chatsync",
            &mut missing,
        );
        assert!(missing.is_empty(), "no description: {missing:#?}");
    }

    #[test]
    fn help_lists_every_exit_code() {
        use crate::exit;
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("Examples:"), "{help}");
        for code in [
            exit::OK,
            exit::FAILURE,
            exit::USAGE,
            exit::NOT_RUNNING,
            exit::NOT_FOUND,
            exit::AMBIGUOUS,
            exit::REFUSED,
            exit::STORAGE,
            exit::TICKET,
            exit::UNREACHABLE,
            exit::TIMED_OUT,
            exit::STORAGE_FULL,
            exit::WRONG_KEY,
            exit::DAMAGED,
            exit::TARGET_UNREACHABLE,
            exit::INTERRUPTED,
        ] {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit code {code} is not in --help"
            );
        }
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("chatsync").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn a_post_needs_text_or_a_file() {
        assert!(parse(&["post", "family"]).is_err());
        assert!(parse(&["post", "family", "hi", "--name", "x.jpg"]).is_err());
        assert!(parse(&["post", "family", "hi", "--type", "image/png"]).is_err());
        match parse(&[
            "post", "family", "--file", "a.jpg", "--file", "-", "--name", "b.png",
        ]) {
            Ok(Command::Post {
                text, files, name, ..
            }) => {
                assert_eq!(text, None);
                assert_eq!(files, ["a.jpg", "-"].map(std::path::PathBuf::from));
                assert_eq!(name.as_deref(), Some("b.png"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "post",
            "family",
            "look",
            "--file",
            "a.jpg",
            "--type",
            "image/avif",
        ]) {
            Ok(Command::Post {
                text, media_type, ..
            }) => {
                assert_eq!(text.as_deref(), Some("look"));
                assert_eq!(media_type.as_deref(), Some("image/avif"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attachment_get_takes_a_directory_and_an_index() {
        match parse(&[
            "attachment",
            "get",
            "family",
            "e98b",
            "--out",
            "/tmp",
            "--index",
            "2",
        ]) {
            Ok(Command::Attachment(AttachmentCommand::Get {
                chat,
                message,
                out,
                index,
            })) => {
                assert_eq!((chat.as_str(), message.as_str()), ("family", "e98b"));
                assert_eq!(out, Some("/tmp".into()));
                assert_eq!(index, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["attachment", "get", "family"]).is_err());
        assert!(parse(&["attachment", "get", "family", "e98b", "--index", "-1"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("1s"), Ok(1));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        for bad in ["", "0", "m", "10x", "-5m", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
