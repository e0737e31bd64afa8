//! Moving a blob between devices: the request, the answer, and verified streaming.
//!
//! One stream per transfer (`/chatsync/blob/1`, see `net/blobs.rs`). The receiver asks for a
//! blob from the first byte it lacks; the sender answers with a status byte and then the BLAKE3
//! verified stream of that range (`bao-tree`): each 16 KiB group comes after the hashes that
//! link it to the root, which is the hash the message names. The receiver checks every group
//! before writing it, so a device that sends one wrong byte is caught at that group, and what
//! came before stays good and is kept.
//!
//! ```text
//! request:  "CSB1" | hash (32) | size (u64 LE) | from (u64 LE, a multiple of 16 KiB)
//! answer:   status (1): 0 the stream follows, 1 not here, 2 busy, 3 bad request
//! ```
//!
//! The functions here do blocking IO on any `Read`/`Write`, so they run the same over a real
//! stream (through `net/blobs.rs`'s bounded channels) and over bytes in a test.

use std::io::{self, Read, Write};

use bao_tree::{
    ChunkNum, ChunkRanges,
    io::{
        BaoContentItem, DecodeError,
        sync::{DecodeResponseIter, OutboardMut, WriteAt},
    },
};
use chatsync_model::BlobHash;

use super::{GROUP_BYTES, Partial, StoredBlob};

const MAGIC: &[u8; 4] = b"CSB1";
pub const REQUEST_BYTES: usize = 4 + 32 + 8 + 8;
/// Received bytes between two syncs of a download's progress.
/// Each costs two syncs and a rename, during which nothing is read from the stream; a crash
/// loses at most this much (a stream that stops is checkpointed at once).
const CHECKPOINT_EVERY: u64 = 32 * 1024 * 1024;

/// What a receiver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub hash: BlobHash,
    pub size: u64,
    /// First byte wanted; the rest of the blob follows.
    pub from: u64,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_BYTES] {
        let mut out = [0u8; REQUEST_BYTES];
        out[..4].copy_from_slice(MAGIC);
        out[4..36].copy_from_slice(&self.hash.0);
        out[36..44].copy_from_slice(&self.size.to_le_bytes());
        out[44..52].copy_from_slice(&self.from.to_le_bytes());
        out
    }

    /// Reads a request from another device; `None` if it is not a well-formed one.
    pub fn decode(bytes: &[u8; REQUEST_BYTES]) -> Option<Request> {
        if &bytes[..4] != MAGIC {
            return None;
        }
        let hash = BlobHash(bytes[4..36].try_into().ok()?);
        let size = u64::from_le_bytes(bytes[36..44].try_into().ok()?);
        let from = u64::from_le_bytes(bytes[44..52].try_into().ok()?);
        let aligned = from % GROUP_BYTES == 0 || from == size;
        (from <= size && aligned && size <= chatsync_model::attachment::MAX_ATTACHMENT_BYTES)
            .then_some(Request { hash, size, from })
    }
}

/// The sender's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Sending = 0,
    NotHere = 1,
    Busy = 2,
    BadRequest = 3,
}

impl Status {
    pub fn of(byte: u8) -> Option<Status> {
        match byte {
            0 => Some(Status::Sending),
            1 => Some(Status::NotHere),
            2 => Some(Status::Busy),
            3 => Some(Status::BadRequest),
            _ => None,
        }
    }
}

/// The chunk ranges a request covers.
fn ranges(from: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(from / 1024)..)
}

/// Sends the verified stream of `blob` from byte `from`, checking it against its hash on the
/// way out (a blob damaged on this disk is not sent as if it were good). Returns the bytes
/// written.
pub fn send(blob: &StoredBlob, from: u64, out: impl Write) -> io::Result<u64> {
    let mut counted = CountingWriter {
        inner: out,
        bytes: 0,
    };
    if from < blob.size {
        bao_tree::io::sync::encode_ranges_validated(
            &blob.data,
            &blob.outboard,
            &ranges(from),
            &mut counted,
        )
        .map_err(io::Error::from)?;
    }
    counted.inner.flush()?;
    Ok(counted.bytes)
}

/// Why a download stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Bytes that do not hash to what the message names: no honest device sends them.
    #[error("data that does not match the attachment's hash ({0})")]
    Corrupt(String),
    /// The stream ended or failed: the next request resumes where this one stopped.
    #[error("the transfer was cut: {0}")]
    Cut(io::Error),
    /// This device could not write what it received.
    #[error("cannot write the attachment: {0}")]
    Local(io::Error),
}

/// Receives the verified stream for `partial` from its first missing byte to its end, writing
/// each group once it is checked; `progress` hears the bytes verified so far. The download is
/// checkpointed as it goes, and once more when the stream stops for any reason.
pub fn receive(
    partial: &mut Partial,
    input: impl Read,
    mut progress: impl FnMut(u64),
) -> Result<(), ReceiveError> {
    let result = receive_inner(partial, input, &mut progress);
    partial.checkpoint().map_err(ReceiveError::Local)?;
    result
}

fn receive_inner(
    partial: &mut Partial,
    input: impl Read,
    progress: &mut impl FnMut(u64),
) -> Result<(), ReceiveError> {
    let from = partial.verified;
    if from >= partial.size {
        return Ok(());
    }
    let ranges = ranges(from);
    let root = partial.outboard.root;
    let tree = partial.outboard.tree;
    let mut since_checkpoint = 0u64;
    for item in DecodeResponseIter::new(root, tree, input, &ranges) {
        match item {
            Ok(BaoContentItem::Parent(parent)) => partial
                .outboard
                .save(parent.node, &parent.pair)
                .map_err(ReceiveError::Local)?,
            Ok(BaoContentItem::Leaf(leaf)) => {
                if leaf.offset != partial.verified {
                    return Err(ReceiveError::Corrupt(format!(
                        "a group at {} where {} was due",
                        leaf.offset, partial.verified
                    )));
                }
                let end = leaf.offset + leaf.data.len() as u64;
                partial.grew_to(end);
                partial
                    .data
                    .write_all_at(leaf.offset, &leaf.data)
                    .map_err(ReceiveError::Local)?;
                partial.verified = end;
                since_checkpoint += leaf.data.len() as u64;
                progress(end);
                if since_checkpoint >= CHECKPOINT_EVERY {
                    partial.checkpoint().map_err(ReceiveError::Local)?;
                    since_checkpoint = 0;
                }
            }
            Err(DecodeError::ParentHashMismatch(node)) => {
                return Err(ReceiveError::Corrupt(format!(
                    "hashes of the group at {} bytes",
                    node.mid().to_bytes()
                )));
            }
            Err(DecodeError::LeafHashMismatch(chunk)) => {
                return Err(ReceiveError::Corrupt(format!(
                    "the group at {} bytes",
                    chunk.to_bytes()
                )));
            }
            Err(DecodeError::ParentNotFound(_) | DecodeError::LeafNotFound(_)) => {
                return Err(ReceiveError::Cut(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended early",
                )));
            }
            Err(DecodeError::Io(e)) => return Err(ReceiveError::Cut(e)),
        }
    }
    if partial.verified == partial.size {
        Ok(())
    } else {
        Err(ReceiveError::Cut(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended early",
        )))
    }
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
