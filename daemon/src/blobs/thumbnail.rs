//! Small previews of image attachments, made on this device: the web client shows a photo of
//! megabytes as a JPEG of a few kilobytes, and fetches the whole file only when asked.
//!
//! The image comes from another device: it is decoded within limits (dimensions and memory,
//! [`decode_limits`]), on a blocking thread, a few at a time (the caller's business). A preview
//! is made once and kept beside the blob (`blobs/thumbs/`), and goes with it.

use std::{
    fs::{self, File},
    io::{BufReader, BufWriter},
    path::PathBuf,
};

use chatsync_model::BlobHash;
use image::{ImageReader, Limits, codecs::jpeg::JpegEncoder};

use super::{Blobs, with_suffix};

/// The longest side of a preview, in pixels.
pub const EDGE: u32 = 320;
/// JPEG quality of previews.
const QUALITY: u8 = 80;

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("the attachment is not on this device")]
    NotHere,
    #[error("not an image this device can preview: {0}")]
    NotAnImage(String),
    #[error("cannot write the preview: {0}")]
    Io(#[from] std::io::Error),
}

/// What an image from another device may take to decode.
fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(256 << 20);
    limits
}

impl Blobs {
    fn thumbnail_path(&self, hash: &BlobHash) -> PathBuf {
        self.dir
            .join("thumbs")
            .join(format!("{}-{EDGE}.jpg", hash.to_hex()))
    }

    /// The preview of an image blob, made now if it was not yet. Blocks (decoding a large
    /// photo takes a fraction of a second).
    pub fn thumbnail(&self, hash: &BlobHash) -> Result<PathBuf, ThumbnailError> {
        let path = self.thumbnail_path(hash);
        if path.exists() {
            return Ok(path);
        }
        let file = match File::open(self.path(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ThumbnailError::NotHere);
            }
            Err(e) => return Err(e.into()),
        };
        let mut reader = ImageReader::new(BufReader::new(file))
            .with_guessed_format()
            .map_err(|e| ThumbnailError::NotAnImage(e.to_string()))?;
        reader.limits(decode_limits());
        let image = reader
            .decode()
            .map_err(|e| ThumbnailError::NotAnImage(e.to_string()))?;
        // Smaller images keep their size (`thumbnail` would scale them up).
        let preview = if image.width() <= EDGE && image.height() <= EDGE {
            image.to_rgb8()
        } else {
            image.thumbnail(EDGE, EDGE).to_rgb8()
        };
        fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
        let tmp = with_suffix(&path, &format!(".{:016x}", rand::random::<u64>()));
        let written = (|| {
            let mut out = BufWriter::new(File::create(&tmp)?);
            JpegEncoder::new_with_quality(&mut out, QUALITY)
                .encode_image(&preview)
                .map_err(std::io::Error::other)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(path)
    }

    /// Removes a blob's preview, if it has one.
    pub(super) fn remove_thumbnail(&self, hash: &BlobHash) {
        let _ = fs::remove_file(self.thumbnail_path(hash));
    }
}
