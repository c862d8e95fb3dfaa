//! Property tests of the reader against hostile and valid images.
//!
//! A few thousand cases run with the unit tests; for a longer run set `H2K_PROPTEST_CASES`
//! (the case count of each property), e.g.
//! `H2K_PROPTEST_CASES=50000 cargo test --lib initramfs_image::tests::properties`.

use proptest::prelude::*;

use super::*;

/// `default` cases, or `H2K_PROPTEST_CASES` of them.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("H2K_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Caps small enough for generated inputs to reach them.
fn small_limits() -> Limits {
    Limits {
        image_bytes: 64 << 10,
        decompressed_bytes: 32 << 10,
        entries: 40,
        name_bytes: 400,
        name_len: 64,
    }
}

/// Whatever the outcome, the caps hold: a list is never longer than the entries allowed,
/// nor its names bigger than the bytes allowed.
fn within_caps(image: &[u8], limits: Limits, capacity: usize) {
    let listed = list_paths_within(
        BufReader::with_capacity(capacity, Cursor::new(image)),
        image.len() as u64,
        limits,
    );
    if let Ok(paths) = listed {
        assert!(paths.len() <= limits.entries);
        assert!(paths.iter().map(String::len).sum::<usize>() <= limits.name_bytes);
        assert!(paths.iter().all(|p| p.len() < limits.name_len));
    }
}

/// A path of one to four components, none of them "." or "..".
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_][a-z0-9_.-]{0,11}(/[a-z0-9_][a-z0-9_.-]{0,11}){0,3}"
}

/// Entries of an archive: names, file data, and whether to write a "crc" archive.
fn entries() -> impl Strategy<Value = (Vec<(String, Vec<u8>)>, bool)> {
    (
        prop::collection::vec((name(), prop::collection::vec(any::<u8>(), 0..200)), 0..12),
        any::<bool>(),
    )
}

fn build(entries: &[(String, Vec<u8>)], crc: bool) -> Vec<u8> {
    let list: Vec<(&str, u32, &[u8])> = entries
        .iter()
        .map(|(name, data)| (name.as_str(), FILE, data.as_slice()))
        .collect();
    archive_fmt(crc, &list)
}

/// A valid image of `entries`: the archive alone, gzipped, or after an early archive.
fn image(entries: &[(String, Vec<u8>)], crc: bool, layout: u8) -> (Vec<u8>, Vec<String>) {
    let main = build(entries, crc);
    let mut names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
    let image = match layout % 3 {
        0 => main,
        1 => gzip(&main),
        _ => {
            names.splice(0..0, strs(&[EARLY]));
            cat(&[&early(), &gzip(&main)])
        }
    };
    (image, names)
}

/// Bytes worth feeding: random, a valid image with bytes overwritten, or random bytes after
/// a cpio magic or inside a gzip stream.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let random = prop::collection::vec(any::<u8>(), 0..2048);
    let mutated = (
        entries(),
        any::<u8>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    )
        .prop_map(|((entries, crc), layout, edits)| {
            let (mut image, _) = image(&entries, crc, layout);
            for (at, byte) in edits {
                let i = at.index(image.len());
                image[i] = byte;
            }
            image
        });
    let after_magic =
        prop::collection::vec(any::<u8>(), 0..1024).prop_map(|rest| cat(&[b"070701", &rest]));
    let gzipped = prop::collection::vec(any::<u8>(), 0..1024).prop_map(|data| gzip(&data));
    prop_oneof![random, mutated, after_magic, gzipped]
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn hostile_bytes_never_panic_and_stay_within_the_caps(
        bytes in hostile(),
        capacity in 1usize..64,
    ) {
        within_caps(&bytes, small_limits(), capacity);
        within_caps(&bytes, Limits::default(), capacity);
    }
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn valid_images_list_exactly_their_names(
        (entries, crc) in entries(),
        layout in any::<u8>(),
        capacity in 1usize..64,
    ) {
        let (image, names) = image(&entries, crc, layout);
        let listed = list_paths_within(
            BufReader::with_capacity(capacity, Cursor::new(&image)),
            image.len() as u64,
            Limits::default(),
        );
        prop_assert_eq!(listed.unwrap(), names);
    }

    #[test]
    fn truncated_images_are_errors(
        (entries, crc) in entries(),
        layout in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (image, _) = image(&entries, crc, layout);
        // Cut inside the last segment: cut just after the early archive, the image is
        // that archive, validly.
        let first = if layout % 3 == 2 { early().len() + 1 } else { 0 };
        let cut = first + cut.index(image.len() - first);
        let listed = super::super::list_paths(&image[..cut]);
        prop_assert!(listed.is_err(), "cut at {} of {}: {:?}", cut, image.len(), listed);
    }
}
