//! Checks on bytes from other devices, run before Automerge parses them.
//!
//! # Why
//!
//! Automerge 0.12 decodes what it is given and trusts the numbers inside. On bytes from a peer
//! that means:
//!
//! - **Bloom filters** in a sync message carry their own parameters. A filter with entries but
//!   zero bits per entry has zero bits, and the next `generate_sync_message` divides by zero
//!   (a panic). A huge probe count makes every filter lookup allocate and compute that many
//!   probes (gigabytes, minutes).
//! - **Compressed data** (deflated columns of a document chunk, or a compressed change chunk)
//!   is inflated completely into memory before anything else is checked: a few hundred
//!   kilobytes can inflate to gigabytes.
//! - **Run-length encoded columns** give the number of operations. A change of a hundred bytes
//!   can say "ten million list inserts", and applying it takes gigabytes and tens of seconds;
//!   a document of a few kilobytes can claim billions of ops or successors, and loading it
//!   reserves memory for all of them up front. Such allocations abort the process, which
//!   `catch_unwind` cannot stop.
//! - **Counts** (heads, changes, actors) are read before the things they count.
//!
//! # What this module checks
//!
//! [`check_sync_message`] parses the sync message encoding of automerge 0.12 itself, both
//! versions: type byte `0x42` (v1) or `0x43` (v2), then heads, need, have entries (last-sync
//! hashes and a length-prefixed Bloom filter), a length-prefixed list of change entries (in v1
//! each is a change chunk; in v2 the single entry is either concatenated change chunks or a whole
//! saved document), then an optional length-prefixed flags section (capabilities and per-message
//! signals). Every length and count is compared with what is left of the input, and with a
//! limit, before anything depends on it. Each Bloom filter must be empty (automerge's "no
//! filter"), or have between 1 and [`WireLimits::max_bloom_entries`] entries, between 1 and
//! [`WireLimits::max_bloom_bits_per_entry`] bits per entry (automerge uses 10), between 1 and
//! [`WireLimits::max_bloom_probes`] probes (automerge uses 7), and exactly as many bytes of bits
//! as those parameters imply. Every change entry must pass the chunk checks below on its own
//! (automerge joins the entries and parses the result as one stream, so a chunk could straddle
//! two entries; automerge never writes one that does), and nothing may follow the flags
//! section (automerge ignores such bytes).
//!
//! [`check_chunks`] walks a storage byte stream (what `save()` writes, possibly followed by
//! change chunks, or one change entry of a sync message) chunk by chunk. An empty stream is
//! refused.
//!
//! - magic bytes, chunk type, LEB128 length within the input, and the checksum (the first four
//!   bytes of the SHA-256 automerge records). The checksum stops random corruption before any
//!   column decoder sees it; it does nothing against a peer that means harm, which can compute it.
//! - chunk types: only documents (0), changes (1) and compressed changes (2). These are what
//!   `save()`, `save_incremental()`, the sync protocol (`raw_bytes` of changes, `save()` for a
//!   whole-document catch-up) and `Change::bytes()` produce. Bundles (3) are refused: automerge
//!   calls them not ready for production, nothing we run writes them, and their decoder is a
//!   large surface for no benefit.
//! - sizes: one change chunk at most [`WireLimits::max_change_bytes`] (compressed or inflated);
//!   all decoded data in one input (chunk data as sent, with every deflated part counted at its
//!   inflated size) at most [`WireLimits::max_inflated_bytes`]. Deflated data is inflated as a
//!   stream into a 32 KiB buffer and counted; inflation stops at the limit. Nothing is inflated
//!   into memory except one compressed change (at most `max_change_bytes`), which must be
//!   hashed to check its checksum.
//! - the fields of each change (dependencies, actor, start op, message, other actors, column
//!   metadata) and of each document (actors, heads, column metadata, column data, head
//!   indices), with counts limited and lengths checked. Columns must be in automerge's order;
//!   columns of a change must not be deflated (automerge refuses them too).
//! - every column is decoded as a stream of runs, without materialising it: the rows it holds
//!   (run-length, delta, boolean and string columns), that its runs are well formed and end
//!   exactly at the column's end, that no run is empty (honest encoders never write one, and a
//!   stream of empty runs would cost time and count nothing), that every actor index is below
//!   the number of actors, the sum of every group column (the number of preds, succs or deps
//!   the rows refer to), and that each value column is exactly as long as its metadata column
//!   says (hexane panics otherwise). A column that shares its id with a group column holds those
//!   references; every other column holds one row per op (or per change, in a document's
//!   change columns). The widest such column gives the op count of a change, at most
//!   [`WireLimits::max_ops_per_change`], and the op and change counts of a document (which
//!   stores deletions as successors, not as ops). Totals per input are limited by
//!   [`WireLimits::max_changes`] and [`WireLimits::max_ops`]; group sums and the columns that
//!   hold references may reach four times the row limit (honest data averages about one pred,
//!   succ or dep per row).
//!
//! The parser allocates no more than a few fixed buffers (inflater state, a 32 KiB window), the
//! column list of one chunk (at most 64 entries) and one inflated compressed change. Its time
//! is linear in the input plus the inflated data, which the limits bound. In a debug build, a
//! document that inflates past 512 MiB is refused after about 1.5 s; the slowest input is one
//! whose 512 MiB are all small runs to decode, about 40 ns a byte (20 s, far less in a release
//! build). Checking a real chat document costs about 2% of loading it.
//!
//! # What it does not check
//!
//! - **Meaning.** Values inside columns are not interpreted: counters out of range, preds that
//!   point at nothing, keys in the wrong object, dependency indices past the last change,
//!   columns of the same rows that disagree on how many there are. Automerge returns
//!   errors for many of these and panics for some (in automerge and its `hexane` dependency;
//!   the tests here find some within seconds of mutating real changes and fixing their
//!   checksums): callers must still contain panics (`catch_unwind`) and rebuild the document
//!   from their store if a receive fails half-way.
//! - **Authorship.** Nothing here proves who wrote a change: a paired device can write changes
//!   under another device's actor and next sequence number, which makes peers refuse that
//!   device's real change. Verify authors before Automerge sees a change.
//! - **Missing dependencies.** A change whose dependencies never arrive is queued by Automerge
//!   forever (and saved with the document); many of them slow every later apply. Bound that
//!   queue separately.
//! - **Cost of valid data.** Within the limits, a peer can still send the largest document and
//!   the most ops the limits allow; with the defaults, that is hundreds of megabytes and seconds
//!   of CPU per input, which is the price of accepting real chats of that size.
//! - **Future formats.** Anything automerge 0.12 does not write (bytes after the flags section,
//!   bundle chunks, chunk types it does not know) is refused, so a newer automerge that adds
//!   to the format will need this module updated.
//!
//! # Limits
//!
//! See [`WireLimits`]; [`WireLimits::default`] is sized for this app: a message text is at most
//! 64 KiB ([`crate::limits::MAX_TEXT_BYTES`]), a post is three ops in one change, and a
//! whole document may be up to 256 MiB on the wire.

use flate2::{Decompress, FlushDecompress, Status};
use sha2::{Digest, Sha256};

/// Limits on what a peer may send in one input (one sync message, or one document stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest list of change hashes: the heads and the need of a sync message, the last-sync
    /// hashes of a have entry, the dependencies of a change, the heads of a document. Heads
    /// are as many as the devices that wrote concurrently; 1024 is far beyond a chat's mesh.
    pub max_heads: usize,
    /// Most have entries in a sync message. Automerge sends zero or one.
    pub max_have: usize,
    /// Most entries in one Bloom filter: the changes since the last sync, so at most
    /// [`Self::max_changes`]. Its bits then take at most 1.25 MiB at 10 bits per entry.
    pub max_bloom_entries: u32,
    /// Most bits per Bloom filter entry. Automerge uses 10; anything above 32 buys nothing.
    pub max_bloom_bits_per_entry: u32,
    /// Most probes per Bloom filter lookup. Automerge uses 7; every lookup allocates and
    /// computes this many, once per change of ours, on every message we generate.
    pub max_bloom_probes: u32,
    /// Most changes in one input: change chunks (and change entries of a sync message) plus
    /// the changes stored in documents. A post is one change; a chat of a million changes is
    /// far beyond what one device reads.
    pub max_changes: u64,
    /// Most ops in one input: eight per change at the change limit (a post is three).
    pub max_ops: u64,
    /// Most ops in one change. The largest change this app writes is a deletion that clears
    /// every reaction of a message (two ops plus one per reacting device); 100 000 leaves room
    /// for bulk operations, while a change at the limit costs about 0.3 s and 60 MB to apply
    /// (list inserts, the most expensive op measured).
    pub max_ops_per_change: u64,
    /// Largest change chunk, compressed or inflated. A message text is at most 64 KiB; no
    /// change this app writes comes near 1 MiB.
    pub max_change_bytes: usize,
    /// Most decoded bytes in one input: chunk data as sent, with deflated parts counted at
    /// their inflated size. Automerge holds all of it in memory at once. A chat of short posts
    /// decodes to about 100 bytes per post plus its texts (and is about 9x smaller on the
    /// wire): at the change limit that leaves room for texts of 400 bytes on average.
    pub max_inflated_bytes: u64,
    /// Most actors in a document or in one change (the change's own plus the others its ops
    /// refer to): the devices that ever wrote to a chat.
    pub max_actors: usize,
    /// Longest actor id. This app's actors are device ids (at most 64 bytes); Automerge's own
    /// random actors are 16.
    pub max_actor_bytes: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_heads: 1024,
            max_have: 16,
            max_bloom_entries: 1_000_000,
            max_bloom_bits_per_entry: 32,
            max_bloom_probes: 32,
            max_changes: 1_000_000,
            max_ops: 8_000_000,
            max_ops_per_change: 100_000,
            max_change_bytes: 1 << 20,
            max_inflated_bytes: 512 << 20,
            max_actors: 4096,
            max_actor_bytes: 128,
        }
    }
}

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ends in the middle of something, or a length points past its end.
    #[error("input ends inside {0}")]
    Truncated(&'static str),
    /// A LEB128 number is malformed, too long, or too large for its field.
    #[error("malformed number in {0}")]
    BadNumber(&'static str),
    /// A count is above its limit.
    #[error("{what}: {count} is more than the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    /// A size in bytes is above its limit.
    #[error("{what}: {size} bytes is more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// The first byte is not one of automerge's sync message types (0x42, 0x43).
    #[error("not a sync message: first byte is {0:#04x}")]
    NotSyncMessage(u8),
    /// A Bloom filter's parameters are out of range.
    #[error(
        "Bloom filter parameters out of range: {entries} entries, {bits_per_entry} bits per entry, {probes} probes"
    )]
    BloomParams {
        entries: u64,
        bits_per_entry: u64,
        probes: u64,
    },
    /// A Bloom filter's bits are not as long as its parameters say.
    #[error("Bloom filter has {found} bytes of bits; its parameters need {expected}")]
    BloomLength { expected: u64, found: u64 },
    /// A chunk does not start with automerge's magic bytes.
    #[error("not an automerge chunk (bad magic bytes)")]
    BadMagic,
    /// A chunk type that is not accepted.
    #[error("chunk type {0} is not accepted (only documents, changes and compressed changes)")]
    ChunkType(u8),
    /// A chunk's checksum does not match its contents.
    #[error("chunk checksum does not match its contents")]
    BadChecksum,
    /// A deflate stream is invalid or incomplete.
    #[error("invalid deflate stream in {0}")]
    BadDeflate(&'static str),
    /// Bytes follow where the format has nothing more.
    #[error("{bytes} unexpected bytes after {what}")]
    Trailing { what: &'static str, bytes: u64 },
    /// Something else about the structure is wrong.
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

/// What a sync message contained, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncMessageShape {
    /// 1 for type byte 0x42, 2 for 0x43.
    pub version: u8,
    pub heads: usize,
    pub need: usize,
    pub have: usize,
    /// Sum of the entries of all Bloom filters.
    pub bloom_entries: u64,
    /// Entries of the change list (each a chunk stream).
    pub change_entries: usize,
    /// Total bytes of the change entries.
    pub change_bytes: u64,
    /// What the change entries held.
    pub chunks: ChunksShape,
    /// The flag bits of the flags section as automerge reads them, or `None` without one.
    pub flags: Option<u8>,
}

/// What a chunk stream contained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunksShape {
    pub documents: u64,
    /// Change chunks, compressed or not.
    pub change_chunks: u64,
    /// Of which compressed.
    pub compressed_changes: u64,
    /// Changes: change chunks plus the changes stored in documents.
    pub changes: u64,
    /// Ops: the rows of the widest per-op column of each change or document (documents do not
    /// store deletions as ops).
    pub ops: u64,
    /// Decoded bytes: chunk data, with deflated parts at their inflated size.
    pub decoded_bytes: u64,
}

/// Checks a sync message before `automerge::sync::Message::decode` sees it.
pub fn check_sync_message(
    bytes: &[u8],
    limits: &WireLimits,
) -> Result<SyncMessageShape, WireError> {
    let mut c = Cursor::new(bytes);
    let mut shape = SyncMessageShape {
        version: match c.byte("message type")? {
            MESSAGE_TYPE_SYNC => 1,
            MESSAGE_TYPE_SYNC_V2 => 2,
            other => return Err(WireError::NotSyncMessage(other)),
        },
        ..SyncMessageShape::default()
    };
    shape.heads = c.hashes(limits.max_heads, "heads")?;
    shape.need = c.hashes(limits.max_heads, "need")?;
    let have = c.count(limits.max_have as u64, "have entries")?;
    for _ in 0..have {
        c.hashes(limits.max_heads, "last sync hashes of a have entry")?;
        let len = c.uleb("Bloom filter length")?;
        let bloom = c.take(len, "Bloom filter")?;
        shape.bloom_entries += check_bloom(bloom, limits)?;
    }
    shape.have = have as usize;
    let entries = c.count(limits.max_changes, "change entries")?;
    for _ in 0..entries {
        let len = c.uleb("change entry length")?;
        let entry = c.take(len, "change entry")?;
        scan_chunk_stream(entry, limits, &mut shape.chunks)?;
        shape.change_bytes += len;
    }
    shape.change_entries = entries as usize;
    if !c.is_empty() {
        let len = c.uleb("flags length")?;
        if len > MAX_FLAGS_BYTES {
            return Err(WireError::TooLarge {
                what: "flags",
                size: len,
                limit: MAX_FLAGS_BYTES,
            });
        }
        let flags = c.take(len, "flags")?;
        // As automerge reads them: bytes with the high bit set carry flag bits, others are
        // older single-byte capabilities.
        shape.flags = Some(
            flags
                .iter()
                .filter(|b| *b & 0x80 != 0)
                .fold(0u8, |acc, b| acc | (b & 0x7f)),
        );
    }
    c.expect_end("sync message")?;
    Ok(shape)
}

/// Checks a storage byte stream (a saved document, change chunks, or both) before
/// `Automerge::load` or `load_incremental` sees it.
pub fn check_chunks(bytes: &[u8], limits: &WireLimits) -> Result<(), WireError> {
    chunks_shape(bytes, limits).map(|_| ())
}

/// [`check_chunks`], returning what the stream held.
pub fn chunks_shape(bytes: &[u8], limits: &WireLimits) -> Result<ChunksShape, WireError> {
    let mut shape = ChunksShape::default();
    scan_chunk_stream(bytes, limits, &mut shape)?;
    Ok(shape)
}

const MESSAGE_TYPE_SYNC: u8 = 0x42;
const MESSAGE_TYPE_SYNC_V2: u8 = 0x43;
const MAGIC_BYTES: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED: u8 = 2;
const HASH_BYTES: u64 = 32;
/// Automerge writes two flag bytes.
const MAX_FLAGS_BYTES: u64 = 64;
/// Automerge writes at most about twenty columns per metadata block.
const MAX_COLUMNS: u64 = 64;
/// Group columns (preds, succs, deps) may refer to this many rows per row of the limit.
const REFS_PER_ROW: u64 = 4;
/// Inflater output window.
const INFLATE_WINDOW: usize = 32 * 1024;
const COLUMN_DEFLATE_BIT: u32 = 0b1000;

/// The storage chunks of a stream (one entry of a sync message's changes, or a saved
/// document), each from its magic bytes to its end, with whether it is a whole document. Only
/// the framing is read: the stream should have passed [`check_chunks`] or
/// [`check_sync_message`].
pub fn split_chunks(bytes: &[u8]) -> Result<Vec<(bool, &[u8])>, WireError> {
    let mut c = Cursor::new(bytes);
    let mut out = Vec::new();
    while !c.is_empty() {
        let start = c.pos;
        if c.take(4, "chunk header")? != MAGIC_BYTES {
            return Err(WireError::BadMagic);
        }
        c.take(4, "chunk header")?;
        let chunk_type = c.byte("chunk header")?;
        let len = c.uleb("chunk length")?;
        c.take(len, "chunk data")?;
        out.push((chunk_type == CHUNK_DOCUMENT, &bytes[start..c.pos]));
    }
    Ok(out)
}

fn check_bloom(bytes: &[u8], limits: &WireLimits) -> Result<u64, WireError> {
    if bytes.is_empty() {
        return Ok(0);
    }
    let mut c = Cursor::new(bytes);
    let entries = c.uleb("Bloom filter entries")?;
    let bits_per_entry = c.uleb("Bloom filter bits per entry")?;
    let probes = c.uleb("Bloom filter probes")?;
    if !(1..=u64::from(limits.max_bloom_entries)).contains(&entries)
        || !(1..=u64::from(limits.max_bloom_bits_per_entry)).contains(&bits_per_entry)
        || !(1..=u64::from(limits.max_bloom_probes)).contains(&probes)
    {
        return Err(WireError::BloomParams {
            entries,
            bits_per_entry,
            probes,
        });
    }
    // Both factors are below 2^32: no overflow.
    let expected = (entries * bits_per_entry).div_ceil(8);
    let found = c.remaining() as u64;
    if found != expected {
        return Err(WireError::BloomLength { expected, found });
    }
    Ok(entries)
}

fn scan_chunk_stream(
    bytes: &[u8],
    limits: &WireLimits,
    shape: &mut ChunksShape,
) -> Result<(), WireError> {
    if bytes.is_empty() {
        return Err(WireError::Malformed {
            what: "chunk stream",
            why: "empty",
        });
    }
    let mut c = Cursor::new(bytes);
    while !c.is_empty() {
        if c.take(4, "chunk header")? != MAGIC_BYTES {
            return Err(WireError::BadMagic);
        }
        let checksum = c.take(4, "chunk header")?;
        let chunk_type = c.byte("chunk header")?;
        if !matches!(chunk_type, CHUNK_DOCUMENT | CHUNK_CHANGE | CHUNK_COMPRESSED) {
            return Err(WireError::ChunkType(chunk_type));
        }
        let len = c.uleb("chunk length")?;
        if chunk_type != CHUNK_DOCUMENT && len > limits.max_change_bytes as u64 {
            return Err(WireError::TooLarge {
                what: "change chunk",
                size: len,
                limit: limits.max_change_bytes as u64,
            });
        }
        let data = c.take(len, "chunk data")?;
        match chunk_type {
            CHUNK_DOCUMENT => {
                add_decoded(shape, len, limits)?;
                verify_checksum(checksum, CHUNK_DOCUMENT, data)?;
                scan_document(data, limits, shape)?;
            }
            CHUNK_CHANGE => {
                add_decoded(shape, len, limits)?;
                verify_checksum(checksum, CHUNK_CHANGE, data)?;
                scan_change(data, limits, shape)?;
            }
            _ => {
                let remaining = limits
                    .max_inflated_bytes
                    .saturating_sub(shape.decoded_bytes);
                let budget = if remaining < limits.max_change_bytes as u64 {
                    Budget {
                        what: "decoded data",
                        base: shape.decoded_bytes,
                        limit: limits.max_inflated_bytes,
                    }
                } else {
                    Budget {
                        what: "inflated change",
                        base: 0,
                        limit: limits.max_change_bytes as u64,
                    }
                };
                let inflated = inflate_all(data, budget, "compressed change")?;
                add_decoded(shape, inflated.len() as u64, limits)?;
                // The checksum of a compressed change is that of the change it holds.
                verify_checksum(checksum, CHUNK_CHANGE, &inflated)?;
                scan_change(&inflated, limits, shape)?;
                shape.compressed_changes += 1;
            }
        }
    }
    Ok(())
}

fn add_decoded(shape: &mut ChunksShape, bytes: u64, limits: &WireLimits) -> Result<(), WireError> {
    let total = shape.decoded_bytes.saturating_add(bytes);
    if total > limits.max_inflated_bytes {
        return Err(WireError::TooLarge {
            what: "decoded data",
            size: total,
            limit: limits.max_inflated_bytes,
        });
    }
    shape.decoded_bytes = total;
    Ok(())
}

fn verify_checksum(checksum: &[u8], chunk_type: u8, data: &[u8]) -> Result<(), WireError> {
    let mut len = [0u8; 10];
    let len_bytes = write_uleb(data.len() as u64, &mut len);
    let mut hasher = Sha256::new();
    hasher.update([chunk_type]);
    hasher.update(&len[..len_bytes]);
    hasher.update(data);
    let hash = hasher.finalize();
    if hash.get(..4) == Some(checksum) {
        Ok(())
    } else {
        Err(WireError::BadChecksum)
    }
}

fn write_uleb(mut value: u64, out: &mut [u8; 10]) -> usize {
    let mut i = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// The body of a change chunk (after the header).
fn scan_change(body: &[u8], limits: &WireLimits, shape: &mut ChunksShape) -> Result<(), WireError> {
    let mut c = Cursor::new(body);
    c.hashes(limits.max_heads, "change dependencies")?;
    c.actor(limits)?;
    c.uleb("change seq")?;
    let start_op = c.uleb("change start op")?;
    if start_op == 0 || start_op > u64::from(u32::MAX) {
        return Err(WireError::Malformed {
            what: "change",
            why: "start op is zero or does not fit in 32 bits",
        });
    }
    c.sleb("change time")?;
    let message_len = c.uleb("change message length")?;
    let message = c.take(message_len, "change message")?;
    if std::str::from_utf8(message).is_err() {
        return Err(WireError::Malformed {
            what: "change message",
            why: "not UTF-8",
        });
    }
    let other_actors = c.count(
        limits.max_actors.saturating_sub(1) as u64,
        "other actors of a change",
    )?;
    for _ in 0..other_actors {
        c.actor(limits)?;
    }
    let columns = c.columns("change columns")?;
    if columns.iter().any(|col| col.deflated()) {
        return Err(WireError::Malformed {
            what: "change columns",
            why: "a change's columns must not be deflated",
        });
    }
    let data = c.take(columns_len(&columns)?, "change column data")?;
    // Whatever follows the columns is the change's extra bytes, which automerge keeps.

    shape.changes += 1;
    shape.change_chunks += 1;
    if shape.changes > limits.max_changes {
        return Err(WireError::TooMany {
            what: "changes",
            count: shape.changes,
            limit: limits.max_changes,
        });
    }
    let rows_limit = limits
        .max_ops_per_change
        .min(limits.max_ops.saturating_sub(shape.ops));
    let ops = scan_columns(
        &columns,
        data,
        &ColumnLimits {
            rows: rows_limit,
            refs: rows_limit.saturating_mul(REFS_PER_ROW),
            actors: other_actors + 1,
            what: "ops in a change",
        },
        limits,
        shape,
    )?;
    // Op counters are 32 bits wide in automerge.
    if start_op + ops > u64::from(u32::MAX) + 1 {
        return Err(WireError::Malformed {
            what: "change",
            why: "op counters run past 32 bits",
        });
    }
    shape.ops += ops;
    Ok(())
}

/// The body of a document chunk (after the header).
fn scan_document(
    body: &[u8],
    limits: &WireLimits,
    shape: &mut ChunksShape,
) -> Result<(), WireError> {
    let mut c = Cursor::new(body);
    let actors = c.count(limits.max_actors as u64, "actors of a document")?;
    for _ in 0..actors {
        c.actor(limits)?;
    }
    let heads = c.hashes(limits.max_heads, "heads of a document")?;
    let change_columns = c.columns("document change columns")?;
    let op_columns = c.columns("document op columns")?;
    let change_data = c.take(columns_len(&change_columns)?, "document change data")?;
    let op_data = c.take(columns_len(&op_columns)?, "document op data")?;
    // Head indices: absent in documents from older writers.
    if !c.is_empty() {
        for _ in 0..heads {
            c.uleb("document head indices")?;
        }
    }
    c.expect_end("document")?;

    let change_rows = limits.max_changes.saturating_sub(shape.changes);
    let changes = scan_columns(
        &change_columns,
        change_data,
        &ColumnLimits {
            rows: change_rows,
            refs: change_rows.saturating_mul(REFS_PER_ROW),
            actors,
            what: "changes",
        },
        limits,
        shape,
    )?;
    shape.changes += changes;
    let op_rows = limits.max_ops.saturating_sub(shape.ops);
    let ops = scan_columns(
        &op_columns,
        op_data,
        &ColumnLimits {
            rows: op_rows,
            refs: op_rows.saturating_mul(REFS_PER_ROW),
            actors,
            what: "ops",
        },
        limits,
        shape,
    )?;
    shape.ops += ops;
    shape.documents += 1;
    Ok(())
}

/// Scans the columns of one metadata block, inflating deflated ones as a stream. Returns the
/// rows of the widest column that has one row per op or change (the columns that share their
/// id with a group column hold the group's references instead, limited by `scan.refs`).
fn scan_columns(
    columns: &[ColumnMeta],
    data: &[u8],
    scan: &ColumnLimits,
    limits: &WireLimits,
    shape: &mut ChunksShape,
) -> Result<u64, WireError> {
    let mut rows = 0;
    let mut offset = 0usize;
    let mut window: Vec<u8> = Vec::new();
    // (id, type, weight) of the value metadata and value columns.
    let mut values: Vec<(u32, ColumnType, u64)> = Vec::new();
    for col in columns {
        let end = offset + col.len as usize;
        let raw = &data[offset..end];
        offset = end;
        let grouped = col.col_type() != ColumnType::Group
            && columns
                .iter()
                .any(|g| g.col_type() == ColumnType::Group && g.id() == col.id());
        let col_limits = if grouped {
            ColumnLimits {
                rows: scan.refs,
                what: "references (preds, succs or deps)",
                ..*scan
            }
        } else {
            *scan
        };
        let stats = if col.deflated() {
            if window.is_empty() {
                window = vec![0; INFLATE_WINDOW];
            }
            let budget = Budget {
                what: "decoded data",
                base: shape.decoded_bytes,
                limit: limits.max_inflated_bytes,
            };
            let mut src = Inflater::new(raw, window.as_mut_slice(), budget, "deflated column");
            let stats = scan_column(&mut src, col.col_type(), &col_limits)?;
            src.finish()?;
            // The compressed bytes were counted with the chunk: count the difference.
            let produced = src.produced;
            add_decoded(shape, produced.saturating_sub(col.len), limits)?;
            stats
        } else {
            scan_column(&mut Cursor::new(raw), col.col_type(), &col_limits)?
        };
        if !grouped {
            rows = rows.max(stats.rows);
        }
        if matches!(col.col_type(), ColumnType::ValueMeta | ColumnType::Value) {
            values.push((col.id(), col.col_type(), stats.weight));
        }
    }
    // The value bytes must be as long as their metadata says (hexane panics otherwise).
    for &(id, col_type, described) in &values {
        let present = values
            .iter()
            .find(|(other, t, _)| *other == id && *t == ColumnType::Value)
            .map_or(0, |(_, _, len)| *len);
        if col_type == ColumnType::ValueMeta && described != present {
            return Err(WireError::Malformed {
                what: "value column",
                why: "its length differs from what its metadata says",
            });
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy)]
struct ColumnMeta {
    spec: u32,
    len: u64,
}

impl ColumnMeta {
    fn id(&self) -> u32 {
        self.spec >> 4
    }

    fn deflated(&self) -> bool {
        self.spec & COLUMN_DEFLATE_BIT != 0
    }

    fn col_type(&self) -> ColumnType {
        match self.spec & 0b111 {
            0 => ColumnType::Group,
            1 => ColumnType::Actor,
            2 => ColumnType::Integer,
            3 => ColumnType::Delta,
            4 => ColumnType::Boolean,
            5 => ColumnType::String,
            6 => ColumnType::ValueMeta,
            _ => ColumnType::Value,
        }
    }
}

fn columns_len(columns: &[ColumnMeta]) -> Result<u64, WireError> {
    columns
        .iter()
        .try_fold(0u64, |acc, col| acc.checked_add(col.len))
        .ok_or(WireError::Malformed {
            what: "column metadata",
            why: "column lengths overflow",
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    /// Run-length encoded counts: how many of the following rows (in other columns) each
    /// row has.
    Group,
    /// Run-length encoded actor indices.
    Actor,
    /// Run-length encoded unsigned integers.
    Integer,
    /// Run-length encoded signed deltas.
    Delta,
    /// Alternating run lengths of false and true.
    Boolean,
    /// Run-length encoded length-prefixed strings.
    String,
    /// Run-length encoded value metadata (type and length of each value).
    ValueMeta,
    /// Raw value bytes, as many as the metadata says.
    Value,
}

#[derive(Clone, Copy)]
struct ColumnLimits {
    rows: u64,
    refs: u64,
    actors: u64,
    what: &'static str,
}

#[derive(Debug, Default)]
struct ColumnStats {
    rows: u64,
    /// Group columns: the sum of their values (the references they count). Value metadata
    /// columns: the bytes of value they describe. Value columns: their length.
    weight: u64,
}

/// Decodes one column run by run, counting rows without materialising them.
fn scan_column<S: ByteSource>(
    src: &mut S,
    col_type: ColumnType,
    limits: &ColumnLimits,
) -> Result<ColumnStats, WireError> {
    let mut stats = ColumnStats::default();
    let too_many = |count| WireError::TooMany {
        what: limits.what,
        count,
        limit: limits.rows,
    };
    match col_type {
        ColumnType::Value => {
            stats.weight = src.skip_rest()?;
        }
        ColumnType::Boolean => {
            let mut first = true;
            while let Some(run) = src.uleb_or_end("boolean column")? {
                // Only the first run (of falses) may be empty, when the column starts with true.
                if run == 0 && !first {
                    return Err(WireError::Malformed {
                        what: "boolean column",
                        why: "empty run",
                    });
                }
                first = false;
                stats.rows = stats.rows.saturating_add(run);
                if stats.rows > limits.rows {
                    return Err(too_many(stats.rows));
                }
            }
        }
        _ => {
            let mut weight: u64 = 0;
            while let Some(count) = src.sleb_or_end("column run")? {
                if count > 0 {
                    let count = count as u64;
                    stats.rows = stats.rows.saturating_add(count);
                    if stats.rows > limits.rows {
                        return Err(too_many(stats.rows));
                    }
                    let value = read_value(src, col_type, limits)?;
                    weight = weight.saturating_add(value.saturating_mul(count));
                } else if count < 0 {
                    let count = count.unsigned_abs();
                    stats.rows = stats.rows.saturating_add(count);
                    if stats.rows > limits.rows {
                        return Err(too_many(stats.rows));
                    }
                    for _ in 0..count {
                        let value = read_value(src, col_type, limits)?;
                        weight = weight.saturating_add(value);
                    }
                } else {
                    let nulls = src.uleb("null run")?;
                    if nulls == 0 {
                        return Err(WireError::Malformed {
                            what: "column",
                            why: "empty null run",
                        });
                    }
                    stats.rows = stats.rows.saturating_add(nulls);
                    if stats.rows > limits.rows {
                        return Err(too_many(stats.rows));
                    }
                }
                if col_type == ColumnType::Group && weight > limits.refs {
                    return Err(WireError::TooMany {
                        what: "references (preds, succs or deps) in a group column",
                        count: weight,
                        limit: limits.refs,
                    });
                }
            }
            stats.weight = weight;
        }
    }
    Ok(stats)
}

/// Reads one value of a run-length encoded column. Returns its weight: for a group column its
/// value (the number of rows it refers to), for value metadata the length of the value it
/// describes, 0 otherwise.
fn read_value<S: ByteSource>(
    src: &mut S,
    col_type: ColumnType,
    limits: &ColumnLimits,
) -> Result<u64, WireError> {
    match col_type {
        ColumnType::Group => src.uleb("group column"),
        ColumnType::Actor => {
            let actor = src.uleb("actor column")?;
            if actor >= limits.actors {
                return Err(WireError::Malformed {
                    what: "actor column",
                    why: "actor index out of range",
                });
            }
            Ok(0)
        }
        ColumnType::Integer => src.uleb("integer column").map(|_| 0),
        // Type in the low four bits, length above.
        ColumnType::ValueMeta => src.uleb("value metadata column").map(|meta| meta >> 4),
        ColumnType::Delta => src.sleb("delta column").map(|_| 0),
        ColumnType::String => {
            let len = src.uleb("string column")?;
            src.skip(len, "string column")?;
            Ok(0)
        }
        ColumnType::Boolean | ColumnType::Value => Ok(0),
    }
}

/// Inflates a whole deflate stream within `budget`.
fn inflate_all(data: &[u8], budget: Budget, what: &'static str) -> Result<Vec<u8>, WireError> {
    let mut window = vec![0; INFLATE_WINDOW];
    let mut src = Inflater::new(data, window.as_mut_slice(), budget, what);
    let mut out = Vec::new();
    while src.refill()? {
        out.extend_from_slice(src.buffered());
        src.consume_buffer();
    }
    src.finish()?;
    Ok(out)
}

/// Sequential access to a column's bytes, from a slice or from an inflater.
trait ByteSource {
    /// The next byte, or `None` at the end.
    fn next_byte(&mut self) -> Result<Option<u8>, WireError>;
    /// Skips `n` bytes.
    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), WireError>;
    /// Skips everything left; returns how many bytes that was.
    fn skip_rest(&mut self) -> Result<u64, WireError>;

    /// The 7-bit groups of a LEB128 number (at most 64 bits' worth): its value without sign
    /// extension, the shift of its last group, and its last byte; `None` at the end of the column.
    fn leb_groups(&mut self, what: &'static str) -> Result<Option<(u128, u32, u8)>, WireError> {
        let Some(first) = self.next_byte()? else {
            return Ok(None);
        };
        let mut value = u128::from(first & 0x7f);
        let mut byte = first;
        let mut shift = 0;
        while byte & 0x80 != 0 {
            shift += 7;
            if shift > 63 {
                return Err(WireError::BadNumber(what));
            }
            byte = self.next_byte()?.ok_or(WireError::Truncated(what))?;
            value |= u128::from(byte & 0x7f) << shift;
        }
        Ok(Some((value, shift, byte)))
    }

    /// An unsigned LEB128 number, or `None` at the end of the column.
    fn uleb_or_end(&mut self, what: &'static str) -> Result<Option<u64>, WireError> {
        let Some((value, _, _)) = self.leb_groups(what)? else {
            return Ok(None);
        };
        u64::try_from(value)
            .map(Some)
            .map_err(|_| WireError::BadNumber(what))
    }

    fn uleb(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.uleb_or_end(what)?.ok_or(WireError::Truncated(what))
    }

    /// A signed LEB128 number, or `None` at the end of the column.
    fn sleb_or_end(&mut self, what: &'static str) -> Result<Option<i64>, WireError> {
        let Some((groups, shift, byte)) = self.leb_groups(what)? else {
            return Ok(None);
        };
        let mut value = i128::try_from(groups).map_err(|_| WireError::BadNumber(what))?;
        if byte & 0x40 != 0 {
            value -= 1i128 << (shift + 7);
        }
        i64::try_from(value)
            .map(Some)
            .map_err(|_| WireError::BadNumber(what))
    }

    fn sleb(&mut self, what: &'static str) -> Result<i64, WireError> {
        self.sleb_or_end(what)?.ok_or(WireError::Truncated(what))
    }
}

/// A position in a byte slice, with the strict reads of automerge's own parser.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn expect_end(&self, what: &'static str) -> Result<(), WireError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing {
                what,
                bytes: self.remaining() as u64,
            })
        }
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, WireError> {
        let byte = *self.bytes.get(self.pos).ok_or(WireError::Truncated(what))?;
        self.pos += 1;
        Ok(byte)
    }

    /// `n` bytes, refused before anything is copied if fewer remain.
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() as u64 {
            return Err(WireError::Truncated(what));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// An unsigned LEB128 number as automerge's parser reads it: at most 64 bits, and no
    /// redundant trailing zero byte.
    fn uleb(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = self.byte(what)?;
            if shift == 63 && byte & 0x7e != 0 {
                return Err(WireError::BadNumber(what));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if shift > 0 && byte == 0 {
                    return Err(WireError::BadNumber(what));
                }
                return Ok(value);
            }
            shift += 7;
            if shift > 63 {
                return Err(WireError::BadNumber(what));
            }
        }
    }

    fn sleb(&mut self, what: &'static str) -> Result<i64, WireError> {
        ByteSource::sleb(self, what)
    }

    /// A count, refused if above `limit`.
    fn count(&mut self, limit: u64, what: &'static str) -> Result<u64, WireError> {
        let count = self.uleb(what)?;
        if count > limit {
            return Err(WireError::TooMany { what, count, limit });
        }
        Ok(count)
    }

    /// A length-prefixed list of change hashes; returns how many.
    fn hashes(&mut self, limit: usize, what: &'static str) -> Result<usize, WireError> {
        let count = self.count(limit as u64, what)?;
        self.take(count.saturating_mul(HASH_BYTES), what)?;
        Ok(count as usize)
    }

    fn actor(&mut self, limits: &WireLimits) -> Result<(), WireError> {
        let len = self.uleb("actor id length")?;
        if len > limits.max_actor_bytes as u64 {
            return Err(WireError::TooLarge {
                what: "actor id",
                size: len,
                limit: limits.max_actor_bytes as u64,
            });
        }
        self.take(len, "actor id")?;
        Ok(())
    }

    /// Column metadata: count, then (spec, length) pairs in automerge's order.
    fn columns(&mut self, what: &'static str) -> Result<Vec<ColumnMeta>, WireError> {
        let count = self.count(MAX_COLUMNS, what)?;
        let mut columns: Vec<ColumnMeta> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let spec = u32::try_from(self.uleb(what)?).map_err(|_| WireError::BadNumber(what))?;
            let len = self.uleb(what)?;
            if let Some(last) = columns.last()
                && last.spec & !COLUMN_DEFLATE_BIT >= spec & !COLUMN_DEFLATE_BIT
            {
                return Err(WireError::Malformed {
                    what,
                    why: "columns out of order or repeated",
                });
            }
            columns.push(ColumnMeta { spec, len });
        }
        Ok(columns)
    }
}

impl ByteSource for Cursor<'_> {
    fn next_byte(&mut self) -> Result<Option<u8>, WireError> {
        let byte = self.bytes.get(self.pos).copied();
        if byte.is_some() {
            self.pos += 1;
        }
        Ok(byte)
    }

    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), WireError> {
        self.take(n, what).map(|_| ())
    }

    fn skip_rest(&mut self) -> Result<u64, WireError> {
        let skipped = self.remaining() as u64;
        self.pos = self.bytes.len();
        Ok(skipped)
    }
}

/// A raw deflate stream, inflated on demand into a fixed window, refused once it passes its
/// budget.
struct Inflater<'a, 'w> {
    inflate: Decompress,
    input: &'a [u8],
    window: &'w mut [u8],
    start: usize,
    end: usize,
    ended: bool,
    produced: u64,
    budget: Budget,
    what: &'static str,
}

/// What an inflater may produce: `limit` bytes of `what`, of which `base` were used before.
#[derive(Debug, Clone, Copy)]
struct Budget {
    what: &'static str,
    base: u64,
    limit: u64,
}

impl<'a, 'w> Inflater<'a, 'w> {
    fn new(input: &'a [u8], window: &'w mut [u8], budget: Budget, what: &'static str) -> Self {
        Inflater {
            inflate: Decompress::new(false),
            input,
            window,
            start: 0,
            end: 0,
            ended: false,
            produced: 0,
            budget,
            what,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.window[self.start..self.end]
    }

    fn consume_buffer(&mut self) {
        self.start = self.end;
    }

    /// Inflates more into the window once it is used up. Returns false at the end of the
    /// stream.
    fn refill(&mut self) -> Result<bool, WireError> {
        if self.start < self.end {
            return Ok(true);
        }
        while !self.ended {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(self.input, self.window, FlushDecompress::None)
                .map_err(|_| WireError::BadDeflate(self.what))?;
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = (self.inflate.total_out() - out_before) as usize;
            self.input = &self.input[consumed..];
            self.produced += produced as u64;
            let total = self.budget.base.saturating_add(self.produced);
            if total > self.budget.limit {
                return Err(WireError::TooLarge {
                    what: self.budget.what,
                    size: total,
                    limit: self.budget.limit,
                });
            }
            match status {
                Status::StreamEnd => self.ended = true,
                Status::Ok | Status::BufError if consumed == 0 && produced == 0 => {
                    return Err(WireError::BadDeflate(self.what));
                }
                Status::Ok | Status::BufError => {}
            }
            if produced > 0 {
                self.start = 0;
                self.end = produced;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Requires the stream to have ended with nothing after it.
    fn finish(&mut self) -> Result<(), WireError> {
        if self.refill()? {
            return Err(WireError::Trailing {
                what: self.what,
                bytes: (self.end - self.start) as u64,
            });
        }
        if !self.input.is_empty() {
            return Err(WireError::Trailing {
                what: self.what,
                bytes: self.input.len() as u64,
            });
        }
        Ok(())
    }
}

impl ByteSource for Inflater<'_, '_> {
    fn next_byte(&mut self) -> Result<Option<u8>, WireError> {
        if !self.refill()? {
            return Ok(None);
        }
        let byte = self.window[self.start];
        self.start += 1;
        Ok(Some(byte))
    }

    fn skip(&mut self, mut n: u64, what: &'static str) -> Result<(), WireError> {
        while n > 0 {
            if !self.refill()? {
                return Err(WireError::Truncated(what));
            }
            let step = n.min((self.end - self.start) as u64);
            self.start += step as usize;
            n -= step;
        }
        Ok(())
    }

    fn skip_rest(&mut self) -> Result<u64, WireError> {
        let mut skipped = 0;
        while self.refill()? {
            skipped += (self.end - self.start) as u64;
            self.consume_buffer();
        }
        Ok(skipped)
    }
}
