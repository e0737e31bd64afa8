//! A message's header: the facts about it that never change after it is posted (author, the
//! author's name, time, clock, the message it answers), kept in one string field.
//!
//! Why one field: every field is an Automerge operation, and inserting an operation is what a
//! post costs (it grows with the chat). A post that writes the header, the text and the
//! message's map is three operations instead of six or seven, which halves the work of
//! posting, of loading and of receiving a message. The text stays a field of its own because
//! edits replace it; reactions and read markers are written by other devices.
//!
//! Layout (UTF-8, fields separated by `\n`):
//!
//! ```text
//! 1\n{author device id}\n{ts}\n{clock}\n{reply_to message id, or nothing}\n{author name}
//! ```
//!
//! The leading `1` is the header's version. Ids are ASCII without `\n` and the numbers are
//! decimal, so only the name, last, may hold any character. Headers come from other devices:
//! [`Header::decode`] refuses anything malformed or over [`MAX_HEADER_BYTES`], and the message
//! is then not shown, like a message missing a field.

use crate::{
    DeviceId, MessageId,
    clock::Clock,
    limits::{MAX_DEVICE_NAME_BYTES, MAX_ID_BYTES},
};

/// Version written in front of every header by this build.
const VERSION: &str = "1";

/// Longest header accepted: version, two ids, two 64-bit numbers, a name, separators.
pub const MAX_HEADER_BYTES: usize = 1 + 2 * MAX_ID_BYTES + 2 * 20 + MAX_DEVICE_NAME_BYTES + 5;

/// A message's fixed facts, as its header holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub author: DeviceId,
    pub author_name: String,
    /// The author's wall clock when posting (ms).
    pub ts: i64,
    pub clock: Clock,
    pub reply_to: Option<MessageId>,
}

impl Header {
    pub fn encode(&self) -> String {
        format!(
            "{VERSION}\n{}\n{}\n{}\n{}\n{}",
            self.author.as_str(),
            self.ts,
            self.clock.to_stored(),
            self.reply_to.as_ref().map_or("", |r| r.as_str()),
            self.author_name
        )
    }

    /// Reads a header; `None` if it is not one this version can read.
    pub fn decode(value: &str) -> Option<Header> {
        if value.len() > MAX_HEADER_BYTES {
            return None;
        }
        let mut fields = value.splitn(6, '\n');
        if fields.next()? != VERSION {
            return None;
        }
        let author = DeviceId::new(fields.next()?).ok()?;
        let ts = fields.next()?.parse().ok()?;
        let clock = Clock::from_stored(fields.next()?.parse().ok()?)?;
        let reply_to = match fields.next()? {
            "" => None,
            id => Some(MessageId::new(id).ok()?),
        };
        let author_name = fields.next()?.to_string();
        if author_name.len() > MAX_DEVICE_NAME_BYTES {
            return None;
        }
        Some(Header {
            author,
            author_name,
            ts,
            clock,
            reply_to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, reply_to: Option<&str>) -> Header {
        Header {
            author: DeviceId::new("12D3KooWdevice").unwrap(),
            author_name: name.into(),
            ts: 1_700_000_000_123,
            clock: Clock::from_stored(1_700_000_000_123 << 16 | 7).unwrap(),
            reply_to: reply_to.map(|r| MessageId::new(r).unwrap()),
        }
    }

    #[test]
    fn headers_round_trip_with_any_name() {
        for h in [
            header("laptop", None),
            header("", Some("m1")),
            header("a\nname\nwith lines", Some("parent-1")),
            header(&"é".repeat(MAX_DEVICE_NAME_BYTES / 2), None),
        ] {
            let encoded = h.encode();
            assert!(encoded.len() <= MAX_HEADER_BYTES, "{encoded:?}");
            assert_eq!(Header::decode(&encoded), Some(h));
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = header("n", Some("m1")).encode();
        assert!(Header::decode(&good).is_some());
        let too_long_name = header(&"x".repeat(MAX_DEVICE_NAME_BYTES + 1), None).encode();
        for bad in [
            "",
            "1",
            "2\nauthor\n1\n65536\n\nname",
            "1\nnot an id\n1\n65536\n\nname",
            "1\nauthor\nten\n65536\n\nname",
            "1\nauthor\n1\n-5\n\nname",
            "1\nauthor\n1\n65536\nbad id!\nname",
            "1\nauthor\n1\n65536\n",
            too_long_name.as_str(),
            &format!("{good}{}", "x".repeat(MAX_HEADER_BYTES)),
        ] {
            assert_eq!(Header::decode(bad), None, "{bad:?}");
        }
    }
}
