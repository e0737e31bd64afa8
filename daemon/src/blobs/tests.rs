use std::{io::Read, sync::Arc};

use chatsync_model::BlobHash;

use super::{
    BlobError, Blobs, GROUP_BYTES,
    transfer::{self, ReceiveError, Request},
};

const GIB: u64 = 1 << 30;

fn store(quota: u64) -> (tempfile::TempDir, Arc<Blobs>) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(dir.path(), quota, 0).unwrap();
    (dir, blobs)
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

fn read_all(blobs: &Blobs, hash: &BlobHash) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::open(blobs.path(hash))
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The verified stream of `hash` from `from`, as the sender writes it.
fn stream(blobs: &Blobs, hash: &BlobHash, from: u64) -> Vec<u8> {
    let blob = blobs.open_blob(hash).unwrap().unwrap();
    let mut out = Vec::new();
    let sent = transfer::send(&blob, from, &mut out).unwrap();
    assert_eq!(sent, out.len() as u64);
    out
}

#[test]
fn imports_are_named_by_their_blake3_hash_and_deduplicated() {
    let (_dir, blobs) = store(GIB);
    for len in [0, 1, 1024, 16 * 1024, 16 * 1024 + 1, 300_001] {
        let data = bytes(len, 7);
        let (hash, size) = blobs.import(&data[..], Some(len as u64)).unwrap();
        assert_eq!(hash.0, *blake3::hash(&data).as_bytes());
        assert_eq!(size, len as u64);
        assert_eq!(read_all(&blobs, &hash), data);
        // The same bytes again, without a length: the same blob, stored once.
        let before = blobs.stats();
        assert_eq!(blobs.import(&data[..], None).unwrap(), (hash, size));
        assert_eq!(blobs.stats(), before);
    }
}

#[test]
fn imports_of_another_length_than_announced_are_refused_and_leave_nothing() {
    let (dir, blobs) = store(GIB);
    let data = bytes(5000, 1);
    for announced in [4999, 5001] {
        let err = blobs.import(&data[..], Some(announced)).unwrap_err();
        assert!(matches!(err, BlobError::WrongLength { .. }), "{err}");
    }
    assert_eq!(blobs.stats().blobs, 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn the_quota_is_kept() {
    let (_dir, blobs) = store(10_000);
    blobs.import(&bytes(6000, 1)[..], None).unwrap();
    let err = blobs.import(&bytes(6000, 2)[..], Some(6000)).unwrap_err();
    assert!(matches!(err, BlobError::Quota { .. }), "{err}");
    let err = blobs.import(&bytes(6000, 3)[..], None).unwrap_err();
    assert!(matches!(err, BlobError::Quota { .. }), "{err}");
    assert_eq!(blobs.stats().blobs, 1);
}

#[test]
fn a_blob_moves_whole_and_verified() {
    let (_a, sender) = store(GIB);
    let (_b, receiver) = store(GIB);
    let data = bytes(1_000_003, 9);
    let (hash, size) = sender.import(&data[..], None).unwrap();
    let mut partial = receiver.start_download(hash, size, true).unwrap().unwrap();
    assert!(
        receiver.start_download(hash, size, true).unwrap().is_none(),
        "one writer"
    );
    let mut last = 0;
    transfer::receive(&mut partial, &stream(&sender, &hash, 0)[..], |n| last = n).unwrap();
    assert_eq!(last, size);
    partial.finish().unwrap();
    assert_eq!(read_all(&receiver, &hash), data);
    assert_eq!(receiver.stats().bytes, size);
    assert_eq!(receiver.stats().partial_bytes, 0);
    // And the receiver can send it on.
    assert_eq!(stream(&receiver, &hash, 0), stream(&sender, &hash, 0));
}

#[test]
fn a_cut_transfer_resumes_from_the_last_checkpoint_after_a_restart() {
    let (_a, sender) = store(GIB);
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(10 * 1024 * 1024 + 5, 3);
    let (hash, size) = sender.import(&data[..], None).unwrap();
    let full = stream(&sender, &hash, 0);
    {
        let receiver = Blobs::open(dir.path(), GIB, 0).unwrap();
        let mut partial = receiver.start_download(hash, size, true).unwrap().unwrap();
        let cut = &full[..full.len() * 2 / 3];
        let err = transfer::receive(&mut partial, cut, |_| {}).unwrap_err();
        assert!(matches!(err, ReceiveError::Cut(_)), "{err}");
        assert!(partial.have() > size / 2 && partial.have() % GROUP_BYTES == 0);
    }
    // A new run: the download resumes where the checkpoint says, asking only for the rest.
    let receiver = Blobs::open(dir.path(), GIB, 0).unwrap();
    assert_eq!(
        receiver.partial_downloads(),
        vec![(
            hash,
            super::Progress {
                size,
                have: receiver_have(&receiver, &hash),
                asked: true
            }
        )]
    );
    let mut partial = receiver.start_download(hash, size, true).unwrap().unwrap();
    let from = partial.have();
    assert!(from > size / 2);
    let rest = stream(&sender, &hash, from);
    assert!(
        (rest.len() as u64) < size - from + size / 100,
        "{} bytes resent",
        rest.len()
    );
    transfer::receive(&mut partial, &rest[..], |_| {}).unwrap();
    partial.finish().unwrap();
    assert_eq!(read_all(&receiver, &hash), data);
    assert!(receiver.partial_downloads().is_empty());
}

#[test]
fn a_wrong_byte_is_caught_at_its_group_and_what_came_before_is_kept() {
    let (_a, sender) = store(GIB);
    let (_b, receiver) = store(GIB);
    let data = bytes(2 * 1024 * 1024, 5);
    let (hash, size) = sender.import(&data[..], None).unwrap();
    let mut bad = stream(&sender, &hash, 0);
    let at = bad.len() / 2;
    bad[at] ^= 1;
    let mut partial = receiver.start_download(hash, size, true).unwrap().unwrap();
    let err = transfer::receive(&mut partial, &bad[..], |_| {}).unwrap_err();
    assert!(matches!(err, ReceiveError::Corrupt(_)), "{err}");
    let kept = partial.have();
    assert!(kept > 0 && kept < size, "{kept}");
    assert_eq!(kept % GROUP_BYTES, 0);
    // An honest device finishes it from there.
    let rest = stream(&sender, &hash, kept);
    transfer::receive(&mut partial, &rest[..], |_| {}).unwrap();
    partial.finish().unwrap();
    assert_eq!(read_all(&receiver, &hash), data);
}

#[test]
fn a_stream_for_other_bytes_is_refused_at_once() {
    let (_a, sender) = store(GIB);
    let (_b, receiver) = store(GIB);
    let (real, size) = sender.import(&bytes(100_000, 1)[..], None).unwrap();
    let (other, _) = sender.import(&bytes(100_000, 2)[..], None).unwrap();
    let mut partial = receiver.start_download(real, size, true).unwrap().unwrap();
    let err = transfer::receive(&mut partial, &stream(&sender, &other, 0)[..], |_| {});
    assert!(matches!(err, Err(ReceiveError::Corrupt(_))), "{err:?}");
    assert_eq!(partial.have(), 0);
    partial.discard().unwrap();
    assert_eq!(receiver.stats().partial_bytes, 0);
}

#[test]
fn requests_round_trip_and_malformed_ones_are_refused() {
    let request = Request {
        hash: BlobHash([4; 32]),
        size: 10 * GROUP_BYTES + 3,
        from: 2 * GROUP_BYTES,
    };
    assert_eq!(Request::decode(&request.encode()), Some(request));
    let at_end = Request {
        from: request.size,
        ..request
    };
    assert_eq!(Request::decode(&at_end.encode()), Some(at_end));
    for bad in [
        Request { from: 5, ..request },
        Request {
            from: request.size + GROUP_BYTES,
            ..request
        },
        Request {
            size: u64::MAX,
            ..request
        },
    ] {
        assert_eq!(Request::decode(&bad.encode()), None, "{bad:?}");
    }
    let mut wrong_magic = request.encode();
    wrong_magic[0] = b'X';
    assert_eq!(Request::decode(&wrong_magic), None);
}

#[test]
fn images_get_small_previews_and_other_bytes_get_none() {
    let (_dir, blobs) = store(GIB);
    let mut png = Vec::new();
    let image =
        image::RgbaImage::from_fn(1000, 500, |x, y| image::Rgba([x as u8, y as u8, 7, 255]));
    image::DynamicImage::ImageRgba8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (hash, _) = blobs.import(&png[..], None).unwrap();
    let preview = blobs.thumbnail(&hash).unwrap();
    let made = image::open(&preview).unwrap();
    assert_eq!((made.width(), made.height()), (320, 160));
    // Made once, kept, and removed with the blob.
    assert_eq!(blobs.thumbnail(&hash).unwrap(), preview);
    blobs.remove(&hash).unwrap();
    assert!(!preview.exists());
    let (text, _) = blobs.import(&b"not an image"[..], None).unwrap();
    assert!(matches!(
        blobs.thumbnail(&text),
        Err(super::thumbnail::ThumbnailError::NotAnImage(_))
    ));
    assert!(matches!(
        blobs.thumbnail(&BlobHash([9; 32])),
        Err(super::thumbnail::ThumbnailError::NotHere)
    ));
}

#[test]
fn the_smallest_png_is_previewed() {
    let (_dir, blobs) = store(GIB);
    let pixel: [u8; 67] = [
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    let (hash, _) = blobs.import(&pixel[..], None).unwrap();
    let made = image::open(blobs.thumbnail(&hash).unwrap()).unwrap();
    assert_eq!((made.width(), made.height()), (1, 1), "not scaled up");
}

#[test]
fn the_model_knows_the_hash_of_nothing() {
    assert_eq!(
        chatsync_model::attachment::EMPTY_HASH.0,
        *blake3::hash(b"").as_bytes()
    );
}

#[test]
fn uploads_at_once_keep_the_quota_together() {
    let (_dir, blobs) = store(10_000);
    // Room set aside by one write counts against the next.
    blobs.reserve(6_000).unwrap();
    let err = blobs.import(&bytes(6_000, 1)[..], Some(6_000)).unwrap_err();
    assert!(matches!(err, BlobError::Quota { .. }), "{err}");
    let err = blobs.import(&bytes(6_000, 2)[..], None).unwrap_err();
    assert!(matches!(err, BlobError::Quota { .. }), "{err}");
    blobs.release(6_000);
    blobs.import(&bytes(6_000, 3)[..], Some(6_000)).unwrap();
}

#[test]
fn a_record_left_without_its_bytes_starts_the_download_over() {
    let (dir, blobs) = store(GIB);
    let (_a, sender) = store(GIB);
    let data = bytes(100_000, 4);
    let (hash, size) = sender.import(&data[..], None).unwrap();
    // A crash between the removal of a download's bytes and of its record.
    let partial = dir.path().join("blobs/partial");
    std::fs::write(
        partial.join(format!("{hash}.have")),
        format!("{size} {size}"),
    )
    .unwrap();
    let mut download = blobs.start_download(hash, size, true).unwrap().unwrap();
    assert_eq!(download.have(), 0);
    transfer::receive(&mut download, &stream(&sender, &hash, 0)[..], |_| {}).unwrap();
    download.finish().unwrap();
    assert_eq!(read_all(&blobs, &hash), data);
}

#[test]
fn bytes_that_do_not_hash_to_the_name_are_not_kept() {
    let (_dir, blobs) = store(GIB);
    let (named, _) = blobs.import(&bytes(1_000, 5)[..], None).unwrap();
    let err = blobs
        .import_checked(&bytes(1_000, 6)[..], Some(1_000), Some(BlobHash([7; 32])))
        .unwrap_err();
    assert!(matches!(err, BlobError::WrongHash { .. }), "{err}");
    // Bytes of a blob that is here, under another name: the blob that is here stays.
    let err = blobs
        .import_checked(&bytes(1_000, 5)[..], Some(1_000), Some(BlobHash([8; 32])))
        .unwrap_err();
    assert!(matches!(err, BlobError::WrongHash { .. }), "{err}");
    assert!(blobs.has(&named));
    assert_eq!(blobs.stats().blobs, 1);
    // And nothing is fetched for 0 bytes: there is nothing to check.
    assert!(blobs.start_download(BlobHash([9; 32]), 0, true).is_err());
}

fn receiver_have(blobs: &Blobs, hash: &BlobHash) -> u64 {
    blobs
        .partial_downloads()
        .into_iter()
        .find(|(h, _)| h == hash)
        .map_or(0, |(_, p)| p.have)
}
