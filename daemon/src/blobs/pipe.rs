//! Bounded channels between async IO and the blocking code that hashes and writes blobs.
//!
//! Hashing and file IO run on blocking threads; sockets and request bodies are async. An async
//! pump moves pieces of at most [`PIECE`] bytes through a channel of a few pieces, so a transfer
//! holds a fixed amount of memory whatever its size, and either side stopping ends the other:
//! a closed channel reads as the end of the stream, and fails writes.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Largest piece a writer hands to its pump.
pub const PIECE: usize = 64 * 1024;
/// Pieces waiting in a channel.
pub const QUEUE: usize = 16;

/// The blocking side of a receiving pump: reads the pieces the pump forwards. The pump sends an
/// error when its source failed (a cut upload must not read as a short file); the channel's end
/// is the end of the stream.
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(piece)) => self.current = piece,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The blocking side of a sending pump: gathers what is written into pieces for the pump; fails
/// once the pump has stopped.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    piece: BytesMut,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Bytes>) -> ChannelWriter {
        ChannelWriter {
            tx,
            piece: BytesMut::with_capacity(PIECE),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PIECE - self.piece.len());
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == PIECE {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = self.piece.split().freeze();
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the transfer stopped"))
    }
}
