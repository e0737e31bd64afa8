//! A message's attachments: what the document says about files whose bytes live elsewhere.
//!
//! The bytes of a photo or a video do not belong in the chat's Automerge document: every
//! replica would load them with the chat, and every sync would carry them. The document holds,
//! per attachment, its BLAKE3 hash, its size, its file name and its media type; the daemon keeps
//! the bytes in a blob store addressed by that hash and moves them between devices itself,
//! checking every piece against the hash as it arrives. The hash is what makes the list safe to
//! take from any device: bytes that do not hash to it are never shown as the attachment.
//!
//! The list is one string field of the message, written with the post and never changed (like
//! the header, see [`crate::header`]: one operation instead of one per attachment field).
//!
//! Layout (UTF-8, one line per attachment after the version):
//!
//! ```text
//! 1
//! {hash, 64 lowercase hex digits}\t{size, decimal}\t{media type}\t{file name}
//! ```
//!
//! The field comes from other devices: [`decode`] refuses anything malformed or over the
//! limits, and the message is then not shown, like a message whose header cannot be read.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Version written in front of every attachment list by this build.
const VERSION: &str = "1";
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 32;
/// Longest file name, in bytes of UTF-8.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Longest media type (`type/subtype` with parameters), in bytes.
pub const MAX_MEDIA_TYPE_BYTES: usize = 127;
/// Largest attachment the document may describe (1 TiB). What a device accepts to store is its
/// own quota's business; this bounds the numbers replicas read.
pub const MAX_ATTACHMENT_BYTES: u64 = 1 << 40;
/// The BLAKE3 hash of nothing: the only hash an attachment of 0 bytes may have.
pub const EMPTY_HASH: BlobHash = BlobHash([
    0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9, 0x49,
    0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f, 0x32, 0x62,
]);
/// Longest attachment field accepted.
pub const MAX_ATTACHMENTS_FIELD_BYTES: usize =
    2 + MAX_ATTACHMENTS * (64 + 1 + 20 + 1 + MAX_MEDIA_TYPE_BYTES + 1 + MAX_FILE_NAME_BYTES + 1);

/// The BLAKE3 hash of a blob's bytes, which names it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Reads 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<BlobHash, ModelError> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(ModelError::Invalid(format!(
                "a blob hash is 64 hex digits; got {} characters",
                s.len()
            )));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
                return Err(ModelError::Invalid(
                    "a blob hash is 64 hex digits (0-9, a-f)".into(),
                ));
            };
            out[i] = hi << 4 | lo;
        }
        Ok(BlobHash(out))
    }

    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[(b >> 4) as usize] as char);
            s.push(DIGITS[(b & 0xf) as usize] as char);
        }
        s
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl Serialize for BlobHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BlobHash::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// One file attached to a message, as the document describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub hash: BlobHash,
    pub size: u64,
    /// The file's name: no path, no control characters (see [`check_file_name`]).
    pub name: String,
    /// Its media type, such as `image/jpeg`.
    pub media_type: String,
}

impl Attachment {
    /// Checks every field against the limits; what [`decode`] accepts.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.size > MAX_ATTACHMENT_BYTES {
            return Err(ModelError::Invalid(format!(
                "an attachment is at most {MAX_ATTACHMENT_BYTES} bytes"
            )));
        }
        // Bytes are checked against the hash as they arrive; with none to arrive, nothing
        // would be, and any hash could be made to name an empty file.
        if self.size == 0 && self.hash != EMPTY_HASH {
            return Err(ModelError::Invalid(
                "an attachment of 0 bytes has the hash of nothing".into(),
            ));
        }
        check_file_name(&self.name)?;
        check_media_type(&self.media_type)
    }
}

/// A file name an attachment may carry: 1 to 255 bytes, no `/` or `\`, no control characters,
/// not `.` or `..`. Names come from other devices and end up as file names on this one.
pub fn check_file_name(name: &str) -> Result<(), ModelError> {
    if name.is_empty() || name.len() > MAX_FILE_NAME_BYTES {
        return Err(ModelError::Invalid(format!(
            "a file name must be 1 to {MAX_FILE_NAME_BYTES} bytes"
        )));
    }
    if name == "." || name == ".." {
        return Err(ModelError::Invalid(format!("{name:?} is not a file name")));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(ModelError::Invalid(
            "a file name must not contain `/`, `\\` or control characters".into(),
        ));
    }
    Ok(())
}

/// A media type an attachment may carry: 3 to 127 printable ASCII characters with one `/`
/// (parameters after `;` allowed).
pub fn check_media_type(media_type: &str) -> Result<(), ModelError> {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    let valid = media_type.len() <= MAX_MEDIA_TYPE_BYTES
        && media_type.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence.split('/').count() == 2
        && essence.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        });
    if valid {
        Ok(())
    } else {
        Err(ModelError::Invalid(format!(
            "{media_type:?} is not a media type (`type/subtype`, at most \
             {MAX_MEDIA_TYPE_BYTES} printable ASCII characters)"
        )))
    }
}

/// Writes a list of checked attachments as the message field holds it.
pub fn encode(attachments: &[Attachment]) -> String {
    let mut s = String::from(VERSION);
    for a in attachments {
        s.push('\n');
        s.push_str(&format!(
            "{}\t{}\t{}\t{}",
            a.hash, a.size, a.media_type, a.name
        ));
    }
    s
}

/// Reads an attachment list; `None` if it is not one this version can read.
pub fn decode(value: &str) -> Option<Vec<Attachment>> {
    if value.len() > MAX_ATTACHMENTS_FIELD_BYTES {
        return None;
    }
    let mut lines = value.split('\n');
    if lines.next()? != VERSION {
        return None;
    }
    let mut out = Vec::new();
    for line in lines {
        if out.len() == MAX_ATTACHMENTS {
            return None;
        }
        let mut fields = line.splitn(4, '\t');
        let hash = BlobHash::from_hex(fields.next()?).ok()?;
        let size = fields.next()?.parse().ok()?;
        let media_type = fields.next()?.to_string();
        let name = fields.next()?.to_string();
        let attachment = Attachment {
            hash,
            size,
            name,
            media_type,
        };
        attachment.check().ok()?;
        out.push(attachment);
    }
    Some(out)
}

/// Checks a list about to be posted.
pub fn check_list(attachments: &[Attachment]) -> Result<(), ModelError> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(ModelError::Invalid(format!(
            "a message has at most {MAX_ATTACHMENTS} attachments"
        )));
    }
    attachments.iter().try_for_each(Attachment::check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str, media_type: &str, size: u64) -> Attachment {
        Attachment {
            hash: if size == 0 {
                EMPTY_HASH
            } else {
                BlobHash([0xab; 32])
            },
            size,
            name: name.into(),
            media_type: media_type.into(),
        }
    }

    #[test]
    fn lists_round_trip() {
        let lists = [
            vec![],
            vec![attachment("photo.jpg", "image/jpeg", 1234)],
            vec![
                attachment("a b ünïcode.txt", "text/plain; charset=utf-8", 0),
                attachment(
                    &"x".repeat(MAX_FILE_NAME_BYTES),
                    "application/octet-stream",
                    1,
                ),
            ],
            (0..MAX_ATTACHMENTS)
                .map(|i| attachment(&format!("{i}.bin"), "x-a/b.c+d", MAX_ATTACHMENT_BYTES))
                .collect(),
        ];
        for list in lists {
            check_list(&list).unwrap();
            let encoded = encode(&list);
            assert!(encoded.len() <= MAX_ATTACHMENTS_FIELD_BYTES);
            assert_eq!(decode(&encoded), Some(list));
        }
    }

    #[test]
    fn hashes_read_hex_of_either_case() {
        let h = BlobHash([0x0f; 32]);
        assert_eq!(BlobHash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(BlobHash::from_hex(&h.to_hex().to_uppercase()).unwrap(), h);
        assert!(BlobHash::from_hex(&"g".repeat(64)).is_err());
        assert!(BlobHash::from_hex("ab").is_err());
        assert!(BlobHash::from_hex(&"é".repeat(32)).is_err());
    }

    #[test]
    fn names_that_would_be_paths_are_refused() {
        for bad in ["", ".", "..", "a/b", "..\\x", "a\nb", "a\tb", "a\0b"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name(&"x".repeat(MAX_FILE_NAME_BYTES + 1)).is_err());
        for good in ["a", "...", ".hidden", "photo 1.jpg", "日本.png"] {
            check_file_name(good).unwrap();
        }
    }

    #[test]
    fn media_types_are_type_slash_subtype() {
        for bad in [
            "", "image", "/jpeg", "image/", "a/b/c", "im age/x", "a/b\t", "é/x",
        ] {
            assert!(check_media_type(bad).is_err(), "{bad:?}");
        }
        for good in [
            "image/jpeg",
            "text/plain; charset=utf-8",
            "application/vnd.a+json",
        ] {
            check_media_type(good).unwrap();
        }
    }

    #[test]
    fn malformed_fields_are_refused() {
        let good = encode(&[attachment("a", "a/b", 1)]);
        assert!(decode(&good).is_some());
        let hash = BlobHash([1; 32]).to_hex();
        for bad in [
            String::new(),
            "2".into(),
            format!("1\n{hash}"),
            format!("1\n{hash}\t-1\ta/b\tn"),
            format!("1\n{hash}\t0\ta/b\tn"),
            format!("1\n{hash}\t{}\ta/b\tn", MAX_ATTACHMENT_BYTES + 1),
            format!("1\n{hash}\t1\ta/b\ta/b"),
            format!("1\n{hash}\t1\tab\tn"),
            "1\nxyz\t1\ta/b\tn".to_string(),
            format!("{good}\n"),
            format!("{good}{}", "x".repeat(MAX_ATTACHMENTS_FIELD_BYTES)),
            std::iter::once("1".to_string())
                .chain((0..=MAX_ATTACHMENTS).map(|_| format!("{hash}\t1\ta/b\tn")))
                .collect::<Vec<_>>()
                .join("\n"),
        ] {
            assert_eq!(decode(&bad), None, "{bad:?}");
        }
    }
}
