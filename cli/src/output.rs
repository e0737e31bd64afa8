//! How results look: aligned, readable text for people; one JSON object per line with `--json`.

use std::io::Write;

use chatsync_api::wire::{
    AttachmentJson, ChatJson, ConnectionPath, DeviceJson, MessageJson, PeerJson,
};
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

/// Text another device wrote (a message, a title, a name, a reaction), made safe to print on a
/// terminal: control characters, escape sequences and bidirectional overrides are shown as
/// visible marks instead of acting, so that nobody can forge a line that looks like another
/// device's message, move the cursor or recolour the screen. Newlines are kept (callers indent
/// continuation lines); `--json` prints the raw text.
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            // C0 controls as their Unicode control pictures (ESC shows as ␛, CR as ␍).
            '\u{0}'..='\u{1f}' => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}')),
            '\u{7f}' => out.push('\u{2421}'),
            // C1 controls (a lone 0x9b is a CSI on some terminals), bidirectional embeddings,
            // overrides and isolates (which reorder what follows), and the line and paragraph
            // separators.
            '\u{80}'..='\u{9f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}' => out.push_str(&format!("<U+{:04X}>", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// [`visible`], on one line: newlines shown too (for names and titles in tables).
pub fn visible_line(text: &str) -> String {
    visible(text).replace('\n', "\u{2424}")
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
        .map(|m| width(&visible_line(&m.author_name)))
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
        pad(&visible_line(&m.author_name), name_width)
    );
    let mut body = String::new();
    if let Some(parent) = &m.reply_to {
        body.push_str(&format!("↳ {} ", short(parent)));
    }
    if m.deleted {
        body.push_str("(deleted)");
    } else {
        body.push_str(&visible(&m.text));
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
            .map(|(r, n)| {
                let r = visible_line(&r);
                if n == 1 { r } else { format!("{r} {n}") }
            })
            .collect();
        body.push_str(&format!("  [{}]", shown.join(" ")));
    }
    let indent = " ".repeat(width(&head));
    // Attachments go under the text, one a line; with no text, the first takes its place.
    let mut lines = body
        .lines()
        .map(str::to_string)
        .chain(m.attachments.iter().map(attachment_line));
    let mut out = format!("{head}{}", lines.next().unwrap_or_default());
    for line in lines {
        out.push('\n');
        out.push_str(&indent);
        out.push_str(&line);
    }
    out
}

/// `📎 name (1.2 MiB, image/jpeg)`, and ` — not on this device` when its bytes are elsewhere.
pub fn attachment_line(a: &AttachmentJson) -> String {
    let mut line = format!(
        "📎 {} ({}, {})",
        visible_line(&a.name),
        human_bytes(a.size),
        visible_line(&a.media_type)
    );
    if !a.present {
        line.push_str(" — not on this device");
    }
    line
}

/// A size for people: `512 B`, `9.6 KiB`, `1.2 MiB`, `3.0 GiB` (1024-based, one decimal).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Renders the chat list as an aligned table.
pub fn chat_table(chats: &[ChatJson]) -> Vec<String> {
    let title_width = chats
        .iter()
        .map(|c| width(&visible_line(&c.title)))
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
            pad(&visible_line(&c.title), title_width),
            c.messages,
            local_time(c.last_activity)
        ));
    }
    out
}

/// Renders the network's view of devices as an aligned table.
pub fn peer_table(peers: &[PeerJson]) -> Vec<String> {
    let name = |p: &PeerJson| p.name.as_deref().map_or_else(|| "?".into(), visible_line);
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
            p.transport.map(|t| t.to_string()).unwrap_or_default()
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
    match (p.path, &p.relay) {
        (Some(ConnectionPath::Relayed), Some(relay)) => format!("relayed via {}", short_id(relay)),
        (Some(ConnectionPath::Direct), _) if p.hole_punched => "direct (hole punched)".into(),
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
        .map(|d| width(&visible_line(&d.name)))
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
        let mut state = match (d.this_device, d.trusted) {
            (true, _) => "this device",
            (false, true) => "trusted",
            (false, false) => "removed",
        }
        .to_string();
        if let Some(found) = &d.equivocated {
            // No honest device signs two changes with one sequence number.
            state.push_str(&format!(
                ", EQUIVOCATED in chat {} (seq {}): remove it with `chatsync devices remove {}`",
                found.chat, found.seq, d.id
            ));
        }
        out.push(format!(
            "{}  {}  {:<16}  {state}",
            pad(&d.id, id_width),
            pad(&visible_line(&d.name), name_width),
            d.added_at.map(local_time).unwrap_or_default()
        ));
    }
    out
}

/// `data` as a QR code drawn with Unicode half blocks (light on dark, for terminals).
pub fn qr_code(data: &str, level: qrcode::EcLevel) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::with_error_correction_level(data.as_bytes(), level)?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_escapes_and_reordering_show_as_marks() {
        assert_eq!(visible("a\x1b[31mb\rc\x07"), "a␛[31mb␍c␇");
        assert_eq!(
            visible("x\u{9b}y\u{202e}z\u{2066}"),
            "x<U+009B>y<U+202E>z<U+2066>"
        );
        assert_eq!(visible("two\nlines\tand tab"), "two\nlines\tand tab");
        assert_eq!(visible_line("two\nlines"), "two␤lines");
        assert_eq!(visible("émoji 👍 and ünïcode"), "émoji 👍 and ünïcode");
    }

    #[test]
    fn a_forged_line_stays_on_the_line_of_the_message_that_carries_it() {
        let line = message_line(&msg("eve\x1b[2K", "hi\r01234567  mallory  keys"), 0);
        assert_eq!(line.lines().count(), 1);
        assert!(!line.contains('\r') && !line.contains('\x1b'), "{line:?}");
    }

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
            attachments: Vec::new(),
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

    fn attachment(name: &str, size: u64, present: bool) -> AttachmentJson {
        AttachmentJson {
            hash: "ab".repeat(32),
            size,
            name: name.into(),
            media_type: "image/jpeg".into(),
            present,
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(9830), "9.6 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn attachments_are_listed_under_the_text() {
        let mut m = msg("al", "look\nat this");
        m.attachments = vec![
            attachment("beach.jpg", 1_258_291, true),
            attachment("clip\u{202e}4pm.exe", 10, false),
        ];
        let line = message_line(&m, 0);
        let lines: Vec<&str> = line.lines().collect();
        assert_eq!(lines.len(), 4, "{line}");
        assert_eq!(lines[2].trim(), "📎 beach.jpg (1.2 MiB, image/jpeg)");
        assert_eq!(
            lines[3].trim(),
            "📎 clip<U+202E>4pm.exe (10 B, image/jpeg) — not on this device"
        );
        let col = |l: &str, needle: &str| l.find(needle).unwrap();
        assert_eq!(col(lines[0], "look"), col(lines[2], "📎"));
    }

    #[test]
    fn an_attachment_without_text_takes_the_text_s_place() {
        let mut m = msg("al", "");
        m.attachments = vec![attachment("a.jpg", 1, true), attachment("b.jpg", 2, true)];
        let line = message_line(&m, 0);
        let lines: Vec<&str> = line.lines().collect();
        assert_eq!(lines.len(), 2, "{line}");
        assert!(lines[0].ends_with("📎 a.jpg (1 B, image/jpeg)"), "{line}");
        assert_eq!(lines[1].trim(), "📎 b.jpg (2 B, image/jpeg)");
    }
}
