//! The listing of whole images: every format, segment layout, reader and error.

use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, Write};

use super::decompress::ZSTD_MAGIC;
use super::*;

const DIR: u32 = 0o040755;
const FILE: u32 = 0o100644;
const LINK: u32 = 0o120777;

/// Writes one newc (or crc) entry.
fn entry(out: &mut Vec<u8>, crc: bool, name: &str, mode: u32, data: &[u8]) {
    let check = if crc {
        data.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
    } else {
        0
    };
    let fields = [
        1,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        check,
    ];
    let start = out.len();
    out.extend_from_slice(if crc { b"070702" } else { b"070701" });
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// A whole archive (with its trailer) of `(name, mode, data)` entries.
fn archive_fmt(crc: bool, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, mode, data) in entries {
        entry(&mut out, crc, name, *mode, data);
    }
    entry(&mut out, crc, "TRAILER!!!", 0, b"");
    out
}

fn archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    archive_fmt(false, entries)
}

fn pad_to(mut v: Vec<u8>, block: usize) -> Vec<u8> {
    v.resize(v.len().div_ceil(block) * block, 0);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn early() -> Vec<u8> {
    pad_to(
        archive(&[
            (".", DIR, b""),
            ("kernel", DIR, b""),
            ("kernel/x86", DIR, b""),
            ("kernel/x86/microcode", DIR, b""),
            ("kernel/x86/microcode/AuthenticAMD.bin", FILE, b"ucode"),
        ]),
        512,
    )
}

const EARLY: &[&str] = &[
    "kernel",
    "kernel/x86",
    "kernel/x86/microcode",
    "kernel/x86/microcode/AuthenticAMD.bin",
];

fn main_archive() -> Vec<u8> {
    archive(&[
        (".", DIR, b""),
        ("bin", LINK, b"usr/bin"),
        ("init", 0o100755, b"#!/bin/sh\nexec /sbin/init\n"),
        ("usr", DIR, b""),
        ("usr/lib", DIR, b""),
        (
            "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko",
            FILE,
            &[7u8; 1000],
        ),
    ])
}

const MAIN: &[&str] = &[
    "bin",
    "init",
    "usr",
    "usr/lib",
    "usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko",
];

/// `super::list_paths`, checked against every other way of reading the same image: through
/// `BufReader`s so small that buffer boundaries fall inside every magic, header and
/// segment boundary, and from a file (also with a tiny buffer, and with the default one).
/// Every test that lists an image goes through here, so the whole matrix runs with each
/// reader.
fn list_paths(image: &[u8]) -> std::result::Result<Vec<String>, InitramfsImageError> {
    let whole = super::list_paths(image);
    let expected = format!("{whole:?}");
    for capacity in [1, 7, 64, 4096] {
        let got = list_paths_from_reader(BufReader::with_capacity(capacity, Cursor::new(image)));
        assert_eq!(
            format!("{got:?}"),
            expected,
            "read through {capacity} bytes"
        );
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(image).unwrap();
    file.flush().unwrap();
    for capacity in [7, FILE_BUFFER_LEN] {
        let got = list_paths_from_file_with_capacity(file.path(), capacity);
        assert_eq!(
            format!("{got:?}"),
            expected,
            "file read through {capacity} bytes"
        );
    }
    whole
}

fn list(image: &[u8]) -> Vec<String> {
    match list_paths(image) {
        Ok(paths) => paths,
        Err(e) => panic!("list_paths failed: {e}"),
    }
}

fn strs(lists: &[&[&str]]) -> Vec<String> {
    lists.concat().iter().map(|s| s.to_string()).collect()
}

#[test]
fn uncompressed_single_archive() {
    assert_eq!(list(&main_archive()), strs(&[MAIN]));
}

#[test]
fn uncompressed_single_archive_without_padding_or_root() {
    let image = archive(&[("a", FILE, b"x"), ("b", DIR, b"")]);
    assert_eq!(list(&image), strs(&[&["a", "b"]]));
}

#[test]
fn early_cpio_then_gzip_main() {
    let image = cat(&[&early(), &gzip(&main_archive())]);
    assert_eq!(list(&image), strs(&[EARLY, MAIN]));
}

#[test]
fn early_cpio_then_zstd_main() {
    let image = cat(&[&early(), &zstd(&main_archive())]);
    assert_eq!(list(&image), strs(&[EARLY, MAIN]));
}

#[test]
fn early_cpio_then_xz_main() {
    let image = cat(&[&early(), &xz(&main_archive())]);
    assert_eq!(list(&image), strs(&[EARLY, MAIN]));
}

#[test]
fn compressed_main_alone() {
    for image in [
        gzip(&main_archive()),
        zstd(&main_archive()),
        xz(&main_archive()),
    ] {
        assert_eq!(list(&image), strs(&[MAIN]));
    }
}

#[test]
fn uncompressed_zstd_frame() {
    let frame = ruzstd::encoding::compress_to_vec(
        &main_archive()[..],
        ruzstd::encoding::CompressionLevel::Uncompressed,
    );
    assert_eq!(list(&frame), strs(&[MAIN]));
}

#[test]
fn compressed_then_zero_padding() {
    for main in [
        gzip(&main_archive()),
        zstd(&main_archive()),
        xz(&main_archive()),
    ] {
        let image = pad_to(cat(&[&early(), &main, &[0]]), 4096);
        assert_eq!(list(&image), strs(&[EARLY, MAIN]));
    }
}

#[test]
fn two_gzip_members() {
    let second = archive(&[("etc", DIR, b""), ("etc/fstab", FILE, b"none\n")]);
    let image = cat(&[&early(), &gzip(&main_archive()), &gzip(&second)]);
    assert_eq!(list(&image), strs(&[EARLY, MAIN, &["etc", "etc/fstab"]]));
}

#[test]
fn two_zstd_frames_and_a_skippable_frame() {
    let second = archive(&[("etc", DIR, b"")]);
    let skippable = cat(&[&[0x5e, 0x2a, 0x4d, 0x18, 3, 0, 0, 0], b"abc"]);
    let image = cat(&[&zstd(&main_archive()), &skippable, &zstd(&second)]);
    assert_eq!(list(&image), strs(&[MAIN, &["etc"]]));
}

#[test]
fn two_xz_streams() {
    let second = archive(&[("etc", DIR, b"")]);
    let image = cat(&[&xz(&main_archive()), &xz(&second)]);
    assert_eq!(list(&image), strs(&[MAIN, &["etc"]]));
}

#[test]
fn archive_split_across_gzip_members_and_zstd_frames() {
    let a = main_archive();
    let (head, tail) = a.split_at(333);
    assert_eq!(list(&cat(&[&gzip(head), &gzip(tail)])), strs(&[MAIN]));
    assert_eq!(list(&cat(&[&zstd(head), &zstd(tail)])), strs(&[MAIN]));
}

#[test]
fn several_compressed_segments_of_different_formats() {
    let second = archive(&[("etc", DIR, b"")]);
    let third = archive(&[("lib", DIR, b"")]);
    let image = cat(&[
        &early(),
        &gzip(&main_archive()),
        &[0; 3],
        &zstd(&second),
        &[0; 100],
        &xz(&third),
        &[0; 8],
    ]);
    assert_eq!(list(&image), strs(&[EARLY, MAIN, &["etc"], &["lib"]]));
}

#[test]
fn uncompressed_archive_after_compressed_segment() {
    // The kernel accepts an uncompressed archive after a stream if it is 4-byte aligned.
    let mut image = cat(&[&early(), &gzip(&main_archive())]);
    image.resize(image.len().div_ceil(4) * 4, 0);
    image.extend_from_slice(&archive(&[("late", FILE, b"1")]));
    assert_eq!(list(&image), strs(&[EARLY, MAIN, &["late"]]));
}

#[test]
fn unaligned_uncompressed_archive_is_an_error() {
    let mut image = early();
    image.push(0);
    image.extend_from_slice(&main_archive());
    let err = list_paths(&image).unwrap_err();
    assert!(
        matches!(
            err,
            InitramfsImageError::BadHeader {
                offset: 1025,
                stream: None,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn compressed_main_with_two_concatenated_archives() {
    let second = pad_to(
        archive(&[("etc", DIR, b""), ("etc/hosts", FILE, b"h")]),
        512,
    );
    let content = cat(&[&pad_to(main_archive(), 512), &second, &[0; 1024]]);
    let expected = strs(&[MAIN, &["etc", "etc/hosts"]]);
    for image in [gzip(&content), zstd(&content), xz(&content)] {
        assert_eq!(list(&image), expected);
    }
    // Also without any padding between them.
    let content = cat(&[
        &main_archive(),
        &archive(&[("etc", DIR, b""), ("etc/hosts", FILE, b"h")]),
    ]);
    assert_eq!(list(&gzip(&content)), expected);
}

#[test]
fn names_are_normalised() {
    let image = archive(&[
        ("./", DIR, b""),
        ("./usr", DIR, b""),
        ("/etc", DIR, b""),
        ("/", DIR, b""),
        ("./.", DIR, b""),
        (".//lib/x.ko", FILE, b"k"),
        ("usr/./a", FILE, b""),
        (".hidden", FILE, b""),
        ("..weird", FILE, b""),
    ]);
    assert_eq!(
        list(&image),
        strs(&[&["usr", "etc", "lib/x.ko", "usr/./a", ".hidden", "..weird"]])
    );
}

#[test]
fn directories_symlinks_devices_and_empty_files_are_listed() {
    let image = archive(&[
        ("dev", DIR, b""),
        ("dev/console", 0o020600, b""),
        ("sbin", LINK, b"usr/sbin"),
        ("empty", FILE, b""),
        ("run", DIR, b""),
    ]);
    assert_eq!(
        list(&image),
        strs(&[&["dev", "dev/console", "sbin", "empty", "run"]])
    );
}

#[test]
fn trailer_is_not_listed() {
    let paths = list(&cat(&[&early(), &zstd(&main_archive())]));
    assert!(!paths.iter().any(|p| p.contains("TRAILER")));
    // Only the exact name is a trailer.
    let image = archive(&[("TRAILER!!!x", FILE, b""), ("dir/TRAILER!!!", FILE, b"")]);
    assert_eq!(list(&image), strs(&[&["TRAILER!!!x", "dir/TRAILER!!!"]]));
}

#[test]
fn names_stored_twice_are_listed_twice() {
    let image = cat(&[&early(), &early()]);
    assert_eq!(list(&image), strs(&[EARLY, EARLY]));
}

#[test]
fn data_with_odd_sizes_and_name_lengths() {
    let mut entries = Vec::new();
    let names: Vec<String> = (1..=9).map(|n| "n".repeat(n)).collect();
    let datas: Vec<Vec<u8>> = (0..9).map(|n| vec![b'0'; n]).collect();
    for (name, data) in names.iter().zip(&datas) {
        entries.push((name.as_str(), FILE, data.as_slice()));
    }
    let a = archive(&entries);
    let expected: Vec<String> = names.clone();
    assert_eq!(list(&a), expected);
    assert_eq!(list(&archive_fmt(true, &entries)), expected);
    assert_eq!(list(&zstd(&a)), expected);
}

#[test]
fn parser_takes_input_in_any_pieces() {
    let content = cat(&[&early(), &main_archive()]);
    for piece in [1, 2, 3, 7, 109, 110, 111, 4096] {
        let mut parser = CpioParser::new(None);
        let mut listing = limits::Listing::new(Limits::default());
        for chunk in content.chunks(piece) {
            assert_eq!(parser.feed(chunk, &mut listing).unwrap(), chunk.len());
        }
        parser.finish().unwrap();
        assert_eq!(listing.paths, strs(&[EARLY, MAIN]), "pieces of {piece}");
    }
}

#[test]
fn crc_archive() {
    let a = archive_fmt(
        true,
        &[
            (".", DIR, b""),
            ("etc", DIR, b""),
            ("etc/passwd", FILE, b"root:x:0:0::/root:/bin/sh\n"),
            ("bin", LINK, b"usr/bin"),
        ],
    );
    assert_eq!(list(&a), strs(&[&["etc", "etc/passwd", "bin"]]));
    assert_eq!(
        list(&cat(&[&early(), &gzip(&a)])),
        strs(&[EARLY, &["etc", "etc/passwd", "bin"]])
    );
}

#[test]
fn crc_archive_with_a_bad_checksum_is_an_error() {
    let mut a = archive_fmt(true, &[("etc/passwd", FILE, b"root")]);
    // The data starts after the header and the name "etc/passwd\0", padded: 110 + 11 + 3.
    a[124] = b'R';
    let err = list_paths(&a).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::BadChecksum { offset: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("etc/passwd"), "{err}");
}

#[test]
fn truncated_header_is_an_error() {
    let a = main_archive();
    for cut in [1, 6, 50, 109] {
        let err = list_paths(&a[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::Truncated {
                    offset: 0,
                    stream: None,
                    ..
                }
            ),
            "cut at {cut}: {err}"
        );
    }
    // Inside a compressed stream.
    let image = cat(&[&early(), &zstd(&main_archive()[..200])]);
    let err = list_paths(&image).unwrap_err();
    assert!(
        matches!(
            err,
            InitramfsImageError::Truncated {
                stream: Some(Stream {
                    compression: Compression::Zstd,
                    offset: 1024
                }),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_name_is_an_error() {
    let err = list_paths(&main_archive()[..111]).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::Truncated { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("name cut short"), "{err}");
}

#[test]
fn truncated_file_data_is_an_error() {
    let a = archive(&[("big", FILE, &[1u8; 5000])]);
    let cut = &a[..2000];
    let err = list_paths(cut).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::Truncated { offset: 0, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "truncated cpio archive at byte 0: data of \"big\" cut short"
    );
    for image in [gzip(cut), zstd(cut), xz(cut)] {
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::Truncated { .. }),
            "{err}"
        );
    }
}

#[test]
fn missing_trailer_is_an_error() {
    let mut a = Vec::new();
    entry(&mut a, false, "usr", DIR, b"");
    let err = list_paths(&a).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::Truncated { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("without a trailer"), "{err}");
    let err = list_paths(&gzip(&a)).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::Truncated { .. }),
        "{err}"
    );
}

#[test]
fn truncated_compressed_stream_is_an_error() {
    let content = pad_to(main_archive(), 512);
    for (c, main) in [
        (Compression::Gzip, gzip(&content)),
        (Compression::Zstd, zstd(&content)),
        (Compression::Xz, xz(&content)),
    ] {
        for cut in [main.len() / 2, main.len() - 1] {
            let image = cat(&[&early(), &main[..cut]]);
            let err = list_paths(&image).unwrap_err();
            assert!(
                matches!(
                    &err,
                    InitramfsImageError::Decompress { offset: 1024, compression, .. }
                        | InitramfsImageError::Truncated {
                            stream: Some(Stream { compression, offset: 1024 }),
                            ..
                        } if *compression == c
                ),
                "{c} cut at {cut}: {err}"
            );
        }
    }
}

#[test]
fn corrupt_compressed_stream_is_an_error() {
    for main in [
        gzip(&main_archive()),
        zstd(&main_archive()),
        xz(&main_archive()),
    ] {
        let mut image = cat(&[&early(), &main]);
        let last = image.len() - 5;
        image[last] ^= 0x55;
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::Decompress { offset: 1024, .. }
                    | InitramfsImageError::BadHeader { .. }
                    | InitramfsImageError::Truncated { .. }
            ),
            "{err}"
        );
    }
}

#[test]
fn garbage_after_trailer_is_an_error() {
    let image = cat(&[&early(), b"garbage!"]);
    let err = list_paths(&image).unwrap_err();
    assert!(
        matches!(&err, InitramfsImageError::UnsupportedCompression { offset: 1024, magic }
            if magic == "unknown magic 67 61 72 62 61 67 65 21"),
        "{err}"
    );
    // Not a cpio header although it starts with '0'.
    let image = cat(&[&early(), b"0123456789"]);
    let err = list_paths(&image).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::BadHeader { offset: 1024, .. }),
        "{err}"
    );
    // Inside a compressed stream.
    let content = cat(&[&main_archive(), b"\x01junk"]);
    for image in [gzip(&content), zstd(&content), xz(&content)] {
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(err, InitramfsImageError::BadHeader { .. }),
            "{err}"
        );
        // The same bytes however the decoder cuts its output.
        assert!(
            err.to_string()
                .contains("neither a cpio header nor zero padding (found 01 6a 75 6e 6b)"),
            "{err}"
        );
    }
}

#[test]
fn bad_header_fields_are_errors() {
    let good = main_archive();
    // Magic "070707" (odc), a non-hex digit in the mode, a name size of 0.
    for (at, byte) in [(5, b'7'), (14, b'g'), (101, b'0')] {
        let mut a = good.clone();
        a[at] = byte;
        if at == 101 {
            a[94..102].copy_from_slice(b"00000000");
        }
        let err = list_paths(&a).unwrap_err();
        assert!(
            matches!(
                err,
                InitramfsImageError::BadHeader {
                    offset: 0,
                    stream: None,
                    ..
                }
            ),
            "{err}"
        );
    }
    // The name not ending in a nul byte.
    let mut a = good.clone();
    a[94..102].copy_from_slice(b"00000001");
    let err = list_paths(&a).unwrap_err();
    assert!(err.to_string().contains("nul"), "{err}");
}

#[test]
fn lz4_and_other_compressions_are_unsupported() {
    for (magic, name) in [
        (&[0x02u8, 0x21, 0x4c, 0x18][..], "lz4 legacy frame"),
        (&[0x5d, 0x00, 0x00, 0x80], "lzma"),
        (b"BZh9", "bzip2"),
        (&[0x89, b'L', b'Z', b'O', 0], "lzo"),
    ] {
        let image = cat(&[&early(), magic, &[0x11; 64]]);
        let err = list_paths(&image).unwrap_err();
        assert!(
            matches!(&err, InitramfsImageError::UnsupportedCompression { offset: 1024, magic }
                if magic == name),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("unsupported compression at byte 1024 ({name})")
        );
    }
}

#[test]
fn empty_and_all_zero_input_are_errors() {
    assert!(matches!(list_paths(b""), Err(InitramfsImageError::Empty)));
    assert!(matches!(
        list_paths(&[0; 4096]),
        Err(InitramfsImageError::NoArchive { len: 4096 })
    ));
}

#[test]
fn error_messages_are_one_lower_case_line() {
    let images = [
        cat(&[&early(), &[0x02, 0x21, 0x4c, 0x18]]),
        main_archive()[..50].to_vec(),
        cat(&[&early(), &gzip(&main_archive())[..40]]),
        cat(&[&early(), &zstd(&main_archive())[..40]]),
        cat(&[&early(), &xz(&main_archive())[..40]]),
        cat(&[&early(), b"0707011"]),
    ];
    for image in images {
        let msg = list_paths(&image).unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
        assert!(msg.contains("byte "), "{msg}");
    }
}

// Fixtures made by the real tools (src/testdata/initramfs/gen.sh): GNU cpio, gzip, zstd,
// xz with dracut's options, lz4 -l.
const FIX_EARLY: &[u8] = include_bytes!("../testdata/initramfs/early.cpio");
const FIX_GZ: &[u8] = include_bytes!("../testdata/initramfs/main.cpio.gz");
const FIX_ZST: &[u8] = include_bytes!("../testdata/initramfs/main.cpio.zst");
const FIX_XZ: &[u8] = include_bytes!("../testdata/initramfs/main.cpio.xz");
const FIX_LZ4: &[u8] = include_bytes!("../testdata/initramfs/main.cpio.lz4");
const FIX_CRC: &[u8] = include_bytes!("../testdata/initramfs/main-crc.cpio");
const FIX_LIST: &str = include_str!("../testdata/initramfs/main.list");

fn fixture_main() -> Vec<String> {
    FIX_LIST
        .lines()
        .filter(|l| *l != ".")
        .map(String::from)
        .collect()
}

#[test]
fn fixtures_made_by_the_real_tools() {
    let early: Vec<String> = list(FIX_EARLY);
    assert_eq!(
        early,
        strs(&[&[
            "kernel",
            "kernel/x86",
            "kernel/x86/microcode",
            "kernel/x86/microcode/GenuineIntel.bin"
        ]])
    );
    let main = fixture_main();
    assert!(main.contains(
        &"usr/lib/modules/6.1.0-56-amd64/kernel/drivers/block/virtio_blk.ko".to_string()
    ));
    assert!(main.contains(&"bin".to_string()));
    for compressed in [FIX_GZ, FIX_ZST, FIX_XZ] {
        assert_eq!(list(compressed), main);
        let image = cat(&[FIX_EARLY, compressed]);
        assert_eq!(list(&image), [early.clone(), main.clone()].concat());
    }
    assert_eq!(list(FIX_CRC), main);
    let err = list_paths(&cat(&[FIX_EARLY, FIX_LZ4])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported compression at byte 1024 (lz4 legacy frame)"
    );
}

#[test]
fn fixture_streams_concatenated_with_padding() {
    let main = fixture_main();
    let image = cat(&[
        FIX_EARLY, FIX_ZST, FIX_ZST, &[0; 7], FIX_GZ, FIX_GZ, &[0; 9], FIX_XZ, &[0; 4], FIX_XZ,
    ]);
    let expected: Vec<String> = [&main[..]; 6].concat();
    assert_eq!(list(&image)[4..], expected[..]);
}

fn temp_file(data: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    file.flush().unwrap();
    file
}

#[test]
fn file_of_each_compression() {
    let second = archive(&[("etc", DIR, b""), ("etc/hosts", FILE, b"h")]);
    let content = cat(&[&pad_to(main_archive(), 512), &second]);
    let expected = strs(&[EARLY, MAIN, &["etc", "etc/hosts"]]);
    for image in [
        cat(&[&early(), &content]),
        cat(&[&early(), &gzip(&content), &[0; 5]]),
        cat(&[&early(), &zstd(&content), &[0; 6]]),
        cat(&[&early(), &xz(&content), &[0; 8]]),
    ] {
        let file = temp_file(&image);
        assert_eq!(list_paths_from_file(file.path()).unwrap(), expected);
    }
    for fixture in [FIX_GZ, FIX_ZST, FIX_XZ, FIX_CRC] {
        let file = temp_file(&cat(&[FIX_EARLY, fixture]));
        let paths = list_paths_from_file(file.path()).unwrap();
        assert_eq!(paths[4..], fixture_main()[..]);
    }
}

#[test]
fn magic_across_a_buffer_boundary() {
    // The early archive is 1024 bytes: with these capacities a refill falls after 1, 2,
    // ..., 5 bytes of the next segment's magic, or inside its header.
    let content = main_archive();
    for compressed in [gzip(&content), zstd(&content), xz(&content)] {
        let image = cat(&[&early(), &compressed, &[0; 3], &compressed]);
        let expected = strs(&[EARLY, MAIN, MAIN]);
        let end = 1024 + compressed.len() + 3;
        for capacity in [1021, 1022, 1023, 1025, 1026, 1027, 1029, 1030, 1031] {
            let reader = BufReader::with_capacity(capacity, Cursor::new(&image[..]));
            assert_eq!(list_paths_from_reader(reader).unwrap(), expected);
        }
        // And the second stream's magic straddling a refill of the file's buffer.
        let file = temp_file(&image);
        for capacity in [end - 3, end - 1, end + 1, end + 4] {
            let paths = list_paths_from_file_with_capacity(file.path(), capacity).unwrap();
            assert_eq!(paths, expected, "capacity {capacity}");
        }
    }
    // An unsupported magic found across a boundary is reported whole.
    let image = cat(&[&early(), b"garbage!"]);
    for capacity in [1020, 1025, 1027, 1031] {
        let reader = BufReader::with_capacity(capacity, Cursor::new(&image[..]));
        let err = list_paths_from_reader(reader).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported compression at byte 1024 (unknown magic 67 61 72 62 61 67 65 21)"
        );
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initrd.img");
    let err = list_paths_from_file(&path).unwrap_err();
    assert!(
        matches!(&err, InitramfsImageError::Io { path: Some(p), offset: 0, .. } if *p == path),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot read the initramfs image \"") && msg.contains(" at byte 0: "),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    // A directory opens but cannot be read.
    let err = list_paths_from_file(dir.path()).unwrap_err();
    assert!(
        matches!(err, InitramfsImageError::Io { offset: 0, .. }),
        "{err}"
    );
}

#[test]
fn empty_file_is_empty() {
    let file = temp_file(b"");
    assert!(matches!(
        list_paths_from_file(file.path()),
        Err(InitramfsImageError::Empty)
    ));
}

/// Serves `data`, then fails to read at byte `fail_at`.
struct FailingReader {
    data: Cursor<Vec<u8>>,
    fail_at: u64,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let chunk = self.fill_buf()?;
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for FailingReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let pos = self.data.position();
        if pos >= self.fail_at {
            return Err(io::Error::other("disk on fire"));
        }
        let n = (self.fail_at - pos) as usize;
        let chunk = self.data.fill_buf()?;
        Ok(&chunk[..n.min(chunk.len())])
    }

    fn consume(&mut self, amt: usize) {
        self.data.consume(amt);
    }
}

impl Seek for FailingReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.data.seek(to)
    }
}

#[test]
fn read_errors_are_io_errors_not_bad_data() {
    let content = pad_to(main_archive(), 512);
    for main in [
        gzip(&content),
        zstd(&content),
        xz(&content),
        content.clone(),
    ] {
        let image = cat(&[&early(), &main]);
        for fail_at in [0, 500, 1024, 1027, 1024 + main.len() as u64 / 2] {
            let reader = FailingReader {
                data: Cursor::new(image.clone()),
                fail_at,
            };
            let err = list_paths_from_reader(reader).unwrap_err();
            assert!(
                matches!(err, InitramfsImageError::Io { path: None, offset, .. }
                    if offset == fail_at),
                "failing at {fail_at}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!("cannot read the initramfs image at byte {fail_at}: disk on fire")
            );
        }
    }
}

#[test]
fn zstd_window_over_the_limit_is_an_error() {
    // A frame header declaring a 64 MiB window (Window_Descriptor exponent 16), then an
    // empty last raw block.
    let frame = cat(&[ZSTD_MAGIC, &[0x00, 0x80], &[0x01, 0x00, 0x00]]);
    let err = list_paths(&cat(&[&early(), &frame])).unwrap_err();
    assert!(
        matches!(
            err,
            InitramfsImageError::Decompress {
                offset: 1024,
                compression: Compression::Zstd,
                ..
            }
        ),
        "{err}"
    );
    // The same frame with a 32 MiB window (exponent 15) is accepted.
    let frame = cat(&[ZSTD_MAGIC, &[0x00, 0x78], &[0x01, 0x00, 0x00]]);
    assert_eq!(list(&cat(&[&early(), &frame])), strs(&[EARLY]));
}

/// An xz stream whose LZMA2 dictionary is `dict` bytes (the decoder's memory need).
fn xz_with_dict(data: &[u8], dict: u32) -> Vec<u8> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
    let mut opts = LzmaOptions::new_preset(0).unwrap();
    opts.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let stream = Stream::new_stream_encoder(&filters, Check::Crc32).unwrap();
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn xz_dictionary_over_the_memory_limit_is_an_error() {
    let main = main_archive();
    let err = list_paths(&cat(&[&early(), &xz_with_dict(&main, 64 << 20)])).unwrap_err();
    assert!(
        matches!(
            err,
            InitramfsImageError::Decompress {
                offset: 1024,
                compression: Compression::Xz,
                ..
            }
        ),
        "{err}"
    );
    // dracut's 1 MiB and xz -6's 8 MiB dictionaries are within the limit.
    for dict in [1 << 20, 8 << 20] {
        let listed = list(&cat(&[&early(), &xz_with_dict(&main, dict)]));
        assert_eq!(listed, strs(&[EARLY, MAIN]));
    }
}

/// `image` listed within `limits`, read through a small buffer.
fn within(image: &[u8], limits: Limits) -> std::result::Result<Vec<String>, InitramfsImageError> {
    list_paths_within(
        BufReader::with_capacity(7, Cursor::new(image)),
        image.len() as u64,
        limits,
    )
}

fn over(result: std::result::Result<Vec<String>, InitramfsImageError>) -> (Cap, u64) {
    match result {
        Err(InitramfsImageError::OverCap { cap, limit }) => (cap, limit),
        other => panic!("expected a cap error, got {other:?}"),
    }
}

#[test]
fn image_size_cap() {
    let image = cat(&[&early(), &gzip(&main_archive())]);
    let len = image.len() as u64;
    let exact = Limits {
        image_bytes: len,
        ..Limits::default()
    };
    assert_eq!(within(&image, exact).unwrap(), strs(&[EARLY, MAIN]));
    let small = Limits {
        image_bytes: len - 1,
        ..Limits::default()
    };
    assert_eq!(over(within(&image, small)), (Cap::ImageBytes, len - 1));
    assert!(check_image_size(MAX_IMAGE_BYTES).is_ok());
    let err = check_image_size(MAX_IMAGE_BYTES + 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "initramfs image over the image size limit of 536870912"
    );
    // A (sparse) file one byte over the cap is refused before it is read.
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(MAX_IMAGE_BYTES + 1).unwrap();
    assert_eq!(
        over(list_paths_from_file(file.path())),
        (Cap::ImageBytes, MAX_IMAGE_BYTES)
    );
}

#[test]
fn decompressed_bytes_cap_counts_every_stream() {
    let main = main_archive();
    let image = cat(&[&early(), &gzip(&main), &zstd(&main), &xz(&main)]);
    let total = 3 * main.len() as u64;
    let exact = Limits {
        decompressed_bytes: total,
        ..Limits::default()
    };
    assert_eq!(
        within(&image, exact).unwrap(),
        strs(&[EARLY, MAIN, MAIN, MAIN])
    );
    let small = Limits {
        decompressed_bytes: total - 1,
        ..Limits::default()
    };
    assert_eq!(
        over(within(&image, small)),
        (Cap::DecompressedBytes, total - 1)
    );
    // A bomb: 64 MiB of zeros in a small gzip stream, against a 1 MiB cap.
    let bomb = cat(&[&early(), &gzip(&vec![0u8; 64 << 20])]);
    let limits = Limits {
        decompressed_bytes: 1 << 20,
        ..Limits::default()
    };
    assert_eq!(
        over(within(&bomb, limits)),
        (Cap::DecompressedBytes, 1 << 20)
    );
}

#[test]
fn entry_count_cap_counts_roots_and_trailers() {
    // early: 5 entries and a trailer; main: 6 entries and a trailer.
    let image = cat(&[&early(), &main_archive()]);
    let exact = Limits {
        entries: 13,
        ..Limits::default()
    };
    assert_eq!(within(&image, exact).unwrap(), strs(&[EARLY, MAIN]));
    let small = Limits {
        entries: 12,
        ..Limits::default()
    };
    assert_eq!(over(within(&image, small)), (Cap::Entries, 12));
}

#[test]
fn name_bytes_cap() {
    let image = cat(&[&early(), &zstd(&main_archive())]);
    let total: usize = [EARLY, MAIN].concat().iter().map(|p| p.len()).sum();
    let exact = Limits {
        name_bytes: total,
        ..Limits::default()
    };
    assert_eq!(within(&image, exact).unwrap(), strs(&[EARLY, MAIN]));
    let small = Limits {
        name_bytes: total - 1,
        ..Limits::default()
    };
    assert_eq!(
        over(within(&image, small)),
        (Cap::NameBytes, total as u64 - 1)
    );
}

#[test]
fn name_length_cap_is_path_max() {
    // 4095 bytes and the nul: PATH_MAX, accepted.
    let longest = "d/".repeat(2047) + "f";
    let image = archive(&[(&longest, FILE, b"x")]);
    assert_eq!(list(&image), vec![longest.clone()]);
    let too_long = longest + "g";
    let image = archive(&[(&too_long, FILE, b"x")]);
    assert_eq!(
        over(list_paths(&image)),
        (Cap::NameLen, MAX_NAME_LEN as u64)
    );
    // The trailer's name, "TRAILER!!!" and its nul, is the shortest cap an archive passes.
    let limits = Limits {
        name_len: 11,
        ..Limits::default()
    };
    let image = archive(&[("initramfs!", FILE, b"")]);
    assert_eq!(within(&image, limits).unwrap(), vec!["initramfs!"]);
    let image = archive(&[("initramfs!!", FILE, b"")]);
    assert_eq!(over(within(&image, limits)), (Cap::NameLen, 11));
}

mod properties;

// --- keeping file contents ---

fn keep_conf(path: &str) -> bool {
    path.starts_with("conf/") || path.ends_with("/modules.dep")
}

#[test]
fn kept_files_are_the_wanted_regular_files_of_every_segment() {
    let main = archive(&[
        ("conf", DIR, b""),
        ("conf/conf.d", DIR, b""),
        ("conf/conf.d/resume", FILE, b"RESUME=UUID=abc\n"),
        ("conf/link", LINK, b"conf.d/resume"),
        (
            "usr/lib/modules/6.1/modules.dep",
            FILE,
            b"kernel/a.ko: kernel/b.ko\n",
        ),
        ("usr/bin/sh", FILE, b"\x7fELF"),
    ]);
    for image in [
        cat(&[&early(), &gzip(&main)]),
        cat(&[&early(), &zstd(&main)]),
        cat(&[&early(), &xz(&main)]),
        main.clone(),
    ] {
        let read = read_image(&image, keep_conf).unwrap();
        assert_eq!(read.paths, list(&image));
        let kept: Vec<&str> = read.files.keys().map(String::as_str).collect();
        assert_eq!(
            kept,
            ["conf/conf.d/resume", "usr/lib/modules/6.1/modules.dep"]
        );
        assert_eq!(read.files["conf/conf.d/resume"], b"RESUME=UUID=abc\n");
    }
}

#[test]
fn a_later_copy_of_a_kept_file_replaces_the_earlier_one() {
    let first = archive(&[("conf/initramfs.conf", FILE, b"MODULES=most\n")]);
    let second = archive(&[("./conf/initramfs.conf", FILE, b"MODULES=dep\n")]);
    let read = read_image(&cat(&[&first, &gzip(&second)]), keep_conf).unwrap();
    assert_eq!(read.files["conf/initramfs.conf"], b"MODULES=dep\n");
}

#[test]
fn kept_files_survive_a_tiny_read_buffer_and_empty_files() {
    let main = archive(&[("conf/empty", FILE, b""), ("conf/big", FILE, &[b'x'; 5000])]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, gzip(&main)).unwrap();
    let read = read_image_from_file(&path, keep_conf).unwrap();
    assert_eq!(read.files["conf/empty"], b"");
    assert_eq!(read.files["conf/big"].len(), 5000);
}

#[test]
fn listing_only_keeps_nothing() {
    let main = archive(&[("conf/x", FILE, b"a")]);
    assert!(read_image(&main, |_| false).unwrap().files.is_empty());
}
