//! Photon's per-kernel initramfs registration (pure): `/var/lib/initramfs/kernel/<uname_r>`.
//!
//! Each kernel package writes this file (e.g. `--add-drivers "xen-blkfront hv_storvsc …"`);
//! Photon's `mkinitrd` rebuilds `/boot/initrd.img-<uname_r>` for every kernel registered there
//! and passes the file's words, split as `xargs` splits them, to dracut. A virtio driver listed
//! here therefore stays in every image Photon's own tooling makes after ours.

/// Why a driver list could not be read the way `xargs` reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverListError {
    #[error("unmatched {quote} quote at byte {offset} (xargs would refuse the file)")]
    UnmatchedQuote { quote: char, offset: usize },
    #[error("a backslash ends the file")]
    TrailingBackslash,
}

/// The words of `text` as `xargs` (without `-0`/`-d`) makes them: blanks and newlines
/// separate, `'…'` and `"…"` group (no newline inside), a backslash outside quotes takes the
/// next character literally.
pub fn split_args(text: &str) -> Result<Vec<String>, DriverListError> {
    let mut args = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => {
                args.extend(word.take());
            }
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, '\n')) | None => {
                            return Err(DriverListError::UnmatchedQuote {
                                quote: c,
                                offset: i,
                            })
                        }
                        Some((_, other)) => w.push(other),
                    }
                }
            }
            '\\' => match chars.next() {
                Some((_, next)) => word.get_or_insert_with(String::new).push(next),
                None => return Err(DriverListError::TrailingBackslash),
            },
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    args.extend(word);
    Ok(args)
}

/// modprobe's view of a name: `xen-blkfront` and `xen_blkfront` are the same module.
pub fn normalized(module: &str) -> String {
    module.replace('-', "_")
}

/// The drivers the arguments add: every `--add-drivers LIST` and `--add-drivers=LIST`.
pub fn added_drivers(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let list = if a == "--add-drivers" {
            it.next().map(String::as_str)
        } else {
            a.strip_prefix("--add-drivers=")
        };
        out.extend(
            list.into_iter()
                .flat_map(str::split_whitespace)
                .map(normalized),
        );
    }
    out
}

/// The list with every driver of `wanted` registered: the missing ones are added on one new
/// `--add-drivers "…"` line (dracut adds up repeated options; the package's own line stays as
/// it was). Returns the new text and the drivers added (none: the text is returned as is).
pub fn register_drivers(
    text: &str,
    wanted: &[&str],
) -> Result<(String, Vec<String>), DriverListError> {
    let have = added_drivers(&split_args(text)?);
    let mut missing: Vec<String> = Vec::new();
    for w in wanted {
        let n = normalized(w);
        if !have.contains(&n) && !missing.contains(&n) {
            missing.push(n);
        }
    }
    if missing.is_empty() {
        return Ok((text.to_string(), missing));
    }
    let mut out = text.to_string();
    // A backslash before the last newline escapes it: the new line would join that word.
    let escaped_end = out
        .strip_suffix('\n')
        .is_some_and(|body| body.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1);
    if !out.is_empty() && (!out.ends_with('\n') || escaped_end) {
        out.push('\n');
    }
    out.push_str(&format!("--add-drivers \"{}\"\n", missing.join(" ")));
    Ok((out, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: &str = "--add-drivers \"xen-scsifront xen-blkfront xen-acpi-processor xen-evtchn xen-gntalloc xen-gntdev xen-privcmd xen-pciback xenfs hv_utils hv_vmbus hv_storvsc hv_netvsc hv_sock hv_balloon virtio_blk virtio-rng virtio_console virtio_crypto virtio_mem vmw_vsock_virtio_transport vmw_vsock_virtio_transport_common 9pnet_virtio vrf\"\n";
    const ESX: &str = "--add-drivers \"lvm dm-mod\"\n";
    // The list the fix step registers.
    const VIRTIO: &[&str] = crate::inspect::VIRTIO_MODULES;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn split_like_xargs() {
        assert_eq!(
            split_args(ESX).unwrap(),
            words(&["--add-drivers", "lvm dm-mod"])
        );
        assert_eq!(
            split_args("a  'b c'\n\"d\"e f\\ g\t").unwrap(),
            words(&["a", "b c", "de", "f g"])
        );
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert_eq!(split_args(" \n ").unwrap(), Vec::<String>::new());
        assert_eq!(split_args("''").unwrap(), words(&[""]));
        assert_eq!(split_args("\"it's\"").unwrap(), words(&["it's"]));
    }

    #[test]
    fn unmatched_quotes_are_refused_as_xargs_refuses_them() {
        assert_eq!(
            split_args("--add-drivers \"a b"),
            Err(DriverListError::UnmatchedQuote {
                quote: '"',
                offset: 14
            })
        );
        assert!(split_args("'a\nb'").is_err(), "no newline inside quotes");
        assert_eq!(split_args("a\\"), Err(DriverListError::TrailingBackslash));
        let e = split_args("x 'y").unwrap_err().to_string();
        assert!(e.contains("unmatched ' quote at byte 2"), "{e}");
    }

    /// The host's xargs splits every case as [`split_args`] does (skipped without xargs).
    #[test]
    fn splits_as_the_hosts_xargs() {
        if !std::path::Path::new("/usr/bin/xargs").exists() {
            eprintln!("no xargs on this host; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            LINUX,
            ESX,
            "a  'b c'\n\"d\"e f\\ g\t",
            "x\\'y \"it's\"",
            "''",
            "a\"b\"c'd'",
            "--add-drivers=\"a b\" -H\n\n",
            "--add-drivers \"lvm\"\n--add-drivers \"virtio_blk virtio_pci\"\n",
        ];
        for (i, case) in cases.iter().enumerate() {
            let file = dir.path().join(format!("k{i}"));
            std::fs::write(&file, case).unwrap();
            let out = std::process::Command::new("/usr/bin/xargs")
                .arg("-n1")
                .arg("-a")
                .arg(&file)
                .args(["printf", "%s\\0"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{case:?}: {out:?}");
            let theirs: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .split_terminator('\0')
                .map(str::to_string)
                .collect();
            assert_eq!(split_args(case).unwrap(), theirs, "{case:?}");
        }
    }

    #[test]
    fn drivers_from_both_option_forms_normalized() {
        let args =
            split_args("--add-drivers \"a-b c\" --add-drivers=d-e -H --add-drivers").unwrap();
        assert_eq!(added_drivers(&args), words(&["a_b", "c", "d_e"]));
        assert!(added_drivers(&words(&["--add", "virtio_blk"])).is_empty());
    }

    #[test]
    fn esx_list_gets_the_virtio_drivers_on_a_new_line() {
        let (out, added) = register_drivers(ESX, VIRTIO).unwrap();
        assert_eq!(added, words(VIRTIO));
        assert_eq!(
            out,
            "--add-drivers \"lvm dm-mod\"\n--add-drivers \"virtio_blk virtio_scsi virtio_pci virtio_net virtio_ring virtio\"\n"
        );
        let args = split_args(&out).unwrap();
        let all = added_drivers(&args);
        for v in VIRTIO {
            assert!(all.contains(&v.to_string()), "{v} in {all:?}");
        }
        assert_eq!(
            register_drivers(&out, VIRTIO).unwrap(),
            (out.clone(), vec![])
        );
    }

    #[test]
    fn only_the_missing_ones_are_added() {
        let (out, added) = register_drivers(LINUX, VIRTIO).unwrap();
        assert_eq!(
            added,
            words(&[
                "virtio_scsi",
                "virtio_pci",
                "virtio_net",
                "virtio_ring",
                "virtio"
            ])
        );
        assert!(out.starts_with(LINUX));
        assert_eq!(register_drivers(LINUX, &["virtio_blk"]).unwrap().1.len(), 0);
        assert_eq!(
            register_drivers(LINUX, &["virtio-blk", "hv-storvsc"])
                .unwrap()
                .1
                .len(),
            0,
            "dashes and underscores are one name"
        );
    }

    #[test]
    fn empty_or_unterminated_lists() {
        assert_eq!(
            register_drivers("", &["virtio_blk"]).unwrap().0,
            "--add-drivers \"virtio_blk\"\n"
        );
        assert_eq!(
            register_drivers("--add-drivers \"lvm\"", &["virtio_blk"])
                .unwrap()
                .0,
            "--add-drivers \"lvm\"\n--add-drivers \"virtio_blk\"\n"
        );
        assert_eq!(
            register_drivers("-H", &["virtio_blk", "virtio_blk"])
                .unwrap()
                .1,
            words(&["virtio_blk"])
        );
        assert!(register_drivers("--add-drivers \"lvm", &["virtio_blk"]).is_err());
        let (out, _) = register_drivers("lvm\\\n", &["virtio_blk"]).unwrap();
        assert_eq!(out, "lvm\\\n\n--add-drivers \"virtio_blk\"\n");
        assert!(added_drivers(&split_args(&out).unwrap()).contains(&"virtio_blk".to_string()));
    }
}
