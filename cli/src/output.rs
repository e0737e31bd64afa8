//! How results look: aligned, readable text for people; one JSON object per line with `--json`.

use std::io::Write;

use chatsync_daemon::api::wire::{ChatJson, DeviceJson, MessageJson, PeerJson};
use serde::Serialize;

/// Characters of an id shown to people (any unambiguous prefix of 4 or more is accepted back).
pub const SHORT_ID: usize = 8;

pub fn short(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// Prints one JSON object on its own line.
pub fn json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Local time of a millisecond timestamp, `YYYY-MM-DD HH:MM`.
pub fn local_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M")
            .to_string(),
        Err(_) => "????-??-?? ??:??".to_string(),
    }
}

/// Width of a string in terminal columns, close enough for alignment of names.
fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, to: usize) -> String {
    let mut out = s.to_string();
    for _ in width(s)..to {
        out.push(' ');
    }
    out
}

/// Renders messages as aligned lines: id, time, author, text (continuation lines indented).
pub fn message_lines(messages: &[MessageJson]) -> Vec<String> {
    let name_width = messages
        .iter()
        .map(|m| width(&m.author_name))
        .max()
        .unwrap_or(0);
    messages
        .iter()
        .map(|m| message_line(m, name_width))
        .collect()
}

pub fn message_line(m: &MessageJson, name_width: usize) -> String {
    let head = format!(
        "{}  {}  {}  ",
        short(&m.id),
        local_time(m.ts),
        pad(&m.author_name, name_width)
    );
    let mut body = String::new();
    if let Some(parent) = &m.reply_to {
        body.push_str(&format!("↳ {} ", short(parent)));
    }
    if m.deleted {
        body.push_str("(deleted)");
    } else {
        body.push_str(&m.text);
        if m.edited {
            body.push_str(" (edited)");
        }
    }
    if !m.reactions.is_empty() {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for r in m.reactions.values() {
            match counts.iter_mut().find(|(x, _)| x == r) {
                Some((_, n)) => *n += 1,
                None => counts.push((r.clone(), 1)),
            }
        }
        let shown: Vec<String> = counts
            .into_iter()
            .map(|(r, n)| if n == 1 { r } else { format!("{r} {n}") })
            .collect();
        body.push_str(&format!("  [{}]", shown.join(" ")));
    }
    let indent = " ".repeat(width(&head));
    let mut lines = body.lines();
    let mut out = format!("{head}{}", lines.next().unwrap_or(""));
    for line in lines {
        out.push('\n');
        out.push_str(&indent);
        out.push_str(line);
    }
    out
}

/// Renders the chat list as an aligned table.
pub fn chat_table(chats: &[ChatJson]) -> Vec<String> {
    let title_width = chats
        .iter()
        .map(|c| width(&c.title))
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = vec![format!(
        "{}  {}  {:>8}  LAST ACTIVITY",
        pad("ID", SHORT_ID),
        pad("TITLE", title_width),
        "MESSAGES"
    )];
    for c in chats {
        out.push(format!(
            "{}  {}  {:>8}  {}",
            pad(short(&c.id), SHORT_ID),
            pad(&c.title, title_width),
            c.messages,
            local_time(c.last_activity)
        ));
    }
    out
}

/// Renders the network's view of devices as an aligned table.
pub fn peer_table(peers: &[PeerJson]) -> Vec<String> {
    let name = |p: &PeerJson| p.name.clone().unwrap_or_else(|| "?".into());
    let name_width = peers
        .iter()
        .map(|p| width(&name(p)))
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = vec![format!(
        "{}  {}  {:<9}  {:<24}  {:<16}  {:>8}  {:<22}  {:<16}  ADDRESS",
        pad("DEVICE", 52),
        pad("NAME", name_width),
        "STATE",
        "PATH",
        "SINCE",
        "PING",
        "SYNC",
        "LAST SYNC"
    )];
    for p in peers {
        let state = if p.connected {
            p.transport.clone().unwrap_or_default()
        } else if p.suspended_until.is_some() {
            "suspended".into()
        } else {
            "offline".into()
        };
        let sync = match p.suspended_until {
            Some(until) if !p.connected => format!("until {}", local_time(until)),
            _ => sync_words(p.chats_behind, p.chats_ahead),
        };
        out.push(format!(
            "{}  {}  {:<9}  {:<24}  {:<16}  {:>8}  {:<22}  {:<16}  {}",
            pad(&p.device, 52),
            pad(&name(p), name_width),
            state,
            path_words(p),
            p.connected_since.map(local_time).unwrap_or_default(),
            p.rtt_ms.map(|r| format!("{r:.1} ms")).unwrap_or_default(),
            sync,
            p.last_sync.map(local_time).unwrap_or_default(),
            p.addresses.first().cloned().unwrap_or_default()
        ));
    }
    out
}

/// "lan", "direct", "direct (punched)", "relayed via 12D3Ko…Xyz1", or nothing while offline.
pub fn path_words(p: &PeerJson) -> String {
    match (p.path.as_deref(), &p.relay) {
        (Some("relayed"), Some(relay)) => format!("relayed via {}", short_id(relay)),
        (Some("direct"), _) if p.hole_punched => "direct (hole punched)".into(),
        (Some(path), _) if p.connected => path.to_string(),
        _ => String::new(),
    }
}

/// A device id cut to its first 6 and last 4 characters.
pub fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 12 {
        return id.to_string();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// "in sync", "2 behind, 1 ahead", or nothing when unknown.
pub fn sync_words(behind: Option<usize>, ahead: Option<usize>) -> String {
    match (behind, ahead) {
        (Some(0), Some(0)) => "in sync".into(),
        (Some(b), Some(a)) => {
            let mut parts = Vec::new();
            if b > 0 {
                parts.push(format!("{b} behind"));
            }
            if a > 0 {
                parts.push(format!("{a} ahead"));
            }
            parts.join(", ")
        }
        _ => String::new(),
    }
}

/// Renders the roster as an aligned table.
pub fn device_table(devices: &[DeviceJson]) -> Vec<String> {
    let id_width = devices
        .iter()
        .map(|d| width(&d.id))
        .max()
        .unwrap_or(0)
        .max(2);
    let name_width = devices
        .iter()
        .map(|d| width(&d.name))
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = vec![format!(
        "{}  {}  {:<16}  STATE",
        pad("ID", id_width),
        pad("NAME", name_width),
        "ADDED"
    )];
    for d in devices {
        let state = match (d.this_device, d.trusted) {
            (true, _) => "this device",
            (false, true) => "trusted",
            (false, false) => "removed",
        };
        out.push(format!(
            "{}  {}  {:<16}  {state}",
            pad(&d.id, id_width),
            pad(&d.name, name_width),
            d.added_at.map(local_time).unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(name: &str, text: &str) -> MessageJson {
        MessageJson {
            id: "0123456789abcdef".into(),
            chat: "c".into(),
            author: "d".into(),
            author_name: name.into(),
            ts: 0,
            text: text.into(),
            reply_to: None,
            edited: false,
            edited_at: None,
            deleted: false,
            reactions: Default::default(),
        }
    }

    #[test]
    fn names_are_aligned_and_continuations_indented() {
        let lines = message_lines(&[msg("al", "hi"), msg("barbara", "one\ntwo")]);
        let col = |l: &str, needle: &str| l.find(needle).unwrap();
        assert_eq!(col(&lines[0], "hi"), col(&lines[1], "one"));
        let second: Vec<&str> = lines[1].lines().collect();
        assert_eq!(second[1].trim(), "two");
        assert_eq!(col(second[1], "two"), col(second[0], "one"));
    }

    #[test]
    fn deleted_edited_and_reactions_are_shown() {
        let mut m = msg("a", "secret");
        m.deleted = true;
        assert!(message_line(&m, 1).contains("(deleted)"));
        assert!(!message_line(&m, 1).contains("secret"));
        let mut m = msg("a", "x");
        m.edited = true;
        m.reactions.insert("d1".into(), "👍".into());
        m.reactions.insert("d2".into(), "👍".into());
        let line = message_line(&m, 1);
        assert!(line.contains("(edited)"));
        assert!(line.contains("[👍 2]"));
    }
}
