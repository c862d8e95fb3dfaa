//! systemd-boot guests (Debian 13's `systemd-boot` package, kernel-install): the boot entries
//! live on the ESP (`loader/entries/*.conf`), each with its own `options` command line and its
//! own copy of the kernel and initramfs, and `/etc/kernel/cmdline` is what kernel-install
//! writes into the next entry. GRUB's step does not apply: this one rewrites `root=`/`resume=`
//! in every entry and in `/etc/kernel/cmdline`, and puts the rebuilt initramfs where the entries
//! boot it from (the copy in `/boot` is not read by the firmware's loader).

use super::grub::{rewrite_bls_entry, rewrite_cmdline, unstable_root, Resolve};
use super::grub_apply::GuestResolve;
use super::record::{FileChange, FixRecord};
use super::text::{lines, Change, Rewrite};
use super::{record, FixError, Guest};

pub const STEP: &str = "systemd-boot";

/// `/etc/kernel/cmdline`: one command line (continued over lines or not); every line's
/// `root=`/`resume=` rewritten, comments kept.
pub fn rewrite_kernel_cmdline(text: &str, resolve: &dyn Resolve) -> Rewrite {
    let mut out = Rewrite::unchanged("");
    for line in lines(text) {
        if line.body.trim_start().starts_with('#') {
            out.text.push_str(line.body);
        } else {
            let (new, changes) = rewrite_cmdline(line.body, resolve);
            for (old, replacement) in changes {
                out.changes.push(Change {
                    line: line.number,
                    field: "kernel cmdline".into(),
                    old,
                    new: replacement,
                });
            }
            if let Some(root) = unstable_root(&new) {
                out.warnings.push(format!(
                    "line {}: root={root} could not be resolved",
                    line.number
                ));
            }
            out.text.push_str(&new);
        }
        out.text.push_str(line.ending);
    }
    out
}

/// A boot entry's kernel version (`version` key) and the initramfs paths it loads (`initrd`
/// keys, relative to the ESP's root).
pub fn entry_initrds(text: &str) -> (Option<String>, Vec<String>) {
    let mut version = None;
    let mut initrds = Vec::new();
    for line in lines(text) {
        let body = line.body.trim();
        let Some((key, value)) = body.split_once(|c: char| c.is_ascii_whitespace()) else {
            continue;
        };
        let value = value.trim();
        match key {
            "version" if !value.is_empty() => version = Some(value.to_string()),
            "initrd" if !value.is_empty() => initrds.push(value.to_string()),
            _ => {}
        }
    }
    (version, initrds)
}

/// Where an entry's initramfs lies in the guest tree: under the ESP, never outside it (a
/// `..` in a hostile entry is refused).
pub fn initrd_on_esp(esp: &str, initrd: &str) -> Option<String> {
    let rel = initrd.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return None;
    }
    Some(format!("{}/{rel}", esp.trim_end_matches('/')))
}

/// The ESP a `loader/loader.conf` path belongs to (`/boot/efi/loader/loader.conf` → `/boot/efi`).
pub fn esp_of(loader_conf: &str) -> Option<&str> {
    loader_conf.strip_suffix("/loader/loader.conf")
}

pub fn run(guest: &Guest, warnings: &mut Vec<String>) -> Result<FixRecord, FixError> {
    let started = std::time::Instant::now();
    let resolve = GuestResolve(guest);
    let config = guest.os.bootloader.config.clone().unwrap_or_default();
    let Some(esp) = esp_of(&config).map(str::to_string) else {
        return Err(FixError::Failed {
            step: STEP,
            message: format!("systemd-boot detected but {config} is not a loader/loader.conf"),
        });
    };
    let mut files: Vec<FileChange> = Vec::new();
    let mut entries = guest
        .g
        .glob_expand(&format!("{esp}/loader/entries/*.conf"))
        .map_err(Guest::err(STEP))?;
    entries.extend(
        guest
            .g
            .glob_expand("/boot/loader/entries/*.conf")
            .map_err(Guest::err(STEP))?,
    );
    entries.sort();
    entries.dedup();
    if entries.is_empty() {
        return Err(FixError::Failed {
            step: STEP,
            message: format!("systemd-boot has no boot entries in {esp}/loader/entries"),
        });
    }
    if guest.is_file(STEP, "/etc/kernel/cmdline")? {
        files.extend(
            guest.rewrite_file(STEP, "/etc/kernel/cmdline", warnings, |t| {
                rewrite_kernel_cmdline(t, &resolve)
            })?,
        );
    }
    let mut refreshed = 0;
    for entry in &entries {
        files
            .extend(guest.rewrite_file(STEP, entry, warnings, |t| rewrite_bls_entry(t, &resolve))?);
        let text = guest.g.read_to_string(entry).map_err(Guest::err(STEP))?;
        let (version, initrds) = entry_initrds(&text);
        let Some(version) = version else { continue };
        let rebuilt = format!("/boot/initrd.img-{version}");
        if !guest.is_file(STEP, &rebuilt)? {
            continue;
        }
        for initrd in initrds {
            let Some(target) = initrd_on_esp(&esp, &initrd) else {
                warnings.push(format!(
                    "{entry}: initrd {initrd} left alone (not a path on the ESP)"
                ));
                continue;
            };
            // The entry's copy is what the loader reads: it must be the rebuilt image.
            let same = guest.g.command(&["cmp", "-s", &rebuilt, &target]).is_ok();
            if same {
                continue;
            }
            guest
                .g
                .cp(&rebuilt, &target)
                .map_err(|cause| FixError::File {
                    step: STEP,
                    path: target.clone(),
                    cause,
                })?;
            refreshed += 1;
            files.push(FileChange {
                path: target.clone(),
                diff: String::new(),
                note: format!("replaced by {rebuilt} (the image the initramfs step rebuilt)"),
            });
        }
    }
    let summary = format!(
        "{} boot entr{} in {esp}/loader/entries checked, {} file(s) changed, {refreshed} initramfs cop{} on the ESP refreshed",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        files.len(),
        if refreshed == 1 { "y" } else { "ies" }
    );
    Ok(record(STEP, started, files, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0b7f0000-1111-2222-3333-444455556666";

    fn resolve(dev: &str) -> Option<String> {
        (dev == "/dev/sda2").then(|| UUID.to_string())
    }

    #[test]
    fn kernel_cmdline_root_becomes_uuid_and_comments_stay() {
        let text =
            "# written by the installer\nroot=/dev/sda2 ro console=tty0 console=ttyS0,115200n8\n";
        let r = rewrite_kernel_cmdline(text, &resolve);
        assert_eq!(
            r.text,
            format!("# written by the installer\nroot=UUID={UUID} ro console=tty0 console=ttyS0,115200n8\n")
        );
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].line, 2);
        assert!(r.warnings.is_empty());
        // Idempotent.
        assert_eq!(rewrite_kernel_cmdline(&r.text, &resolve).text, r.text);
    }

    #[test]
    fn kernel_cmdline_unknown_device_is_kept_with_a_warning() {
        let r = rewrite_kernel_cmdline("root=/dev/sdz9 ro", &resolve);
        assert_eq!(r.text, "root=/dev/sdz9 ro");
        assert!(r.changes.is_empty());
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    }

    #[test]
    fn kernel_cmdline_stable_text_is_byte_for_byte() {
        for t in [
            "",
            "\n",
            "root=UUID=x ro quiet\r\n",
            "rw\n\n# c\n",
            "root=PARTUUID=ab-01",
        ] {
            let r = rewrite_kernel_cmdline(t, &resolve);
            assert_eq!(r.text, t);
            assert!(r.changes.is_empty());
        }
    }

    #[test]
    fn entry_version_and_initrds() {
        let text = "title      Debian GNU/Linux 13 (trixie)\nversion    6.12.48+deb13-amd64\nmachine-id debian\nsort-key   debian\noptions    root=/dev/sda2 ro\nlinux      /debian/6.12.48+deb13-amd64/linux\ninitrd     /debian/6.12.48+deb13-amd64/initrd.img-6.12.48+deb13-amd64\n";
        let (v, i) = entry_initrds(text);
        assert_eq!(v.as_deref(), Some("6.12.48+deb13-amd64"));
        assert_eq!(
            i,
            ["/debian/6.12.48+deb13-amd64/initrd.img-6.12.48+deb13-amd64"]
        );
        assert_eq!(
            entry_initrds("garbage\n\nversion\ninitrd \n"),
            (None, vec![])
        );
        let two = "version 1\ninitrd /a/ucode.img\ninitrd\t/a/initrd\n";
        assert_eq!(entry_initrds(two).1, ["/a/ucode.img", "/a/initrd"]);
    }

    #[test]
    fn initrd_paths_stay_on_the_esp() {
        assert_eq!(
            initrd_on_esp("/boot/efi", "/debian/6.1/initrd.img-6.1").as_deref(),
            Some("/boot/efi/debian/6.1/initrd.img-6.1")
        );
        assert_eq!(initrd_on_esp("/efi/", "x").as_deref(), Some("/efi/x"));
        for bad in ["", "/", "/../etc/shadow", "/a/../../b", "/a//b"] {
            assert_eq!(initrd_on_esp("/boot/efi", bad), None, "{bad}");
        }
    }

    #[test]
    fn esp_from_loader_conf() {
        assert_eq!(esp_of("/boot/efi/loader/loader.conf"), Some("/boot/efi"));
        assert_eq!(esp_of("/efi/loader/loader.conf"), Some("/efi"));
        assert_eq!(esp_of("/boot/grub/grub.cfg"), None);
    }
}
