//! The resume guest step: find what each resume device name points at in the appliance, run
//! the pure transforms of [`super::resume`] and [`super::dracut_conf`] over the initramfs
//! generators' configuration, write back and record. Runs before the initramfs rebuild, which
//! copies this configuration into the image (the kernel command line is the GRUB step's).

use super::resume::{rewrite_initramfs_tools_resume, SwapLookup};
use super::{record, FixError, FixRecord, Guest};
use crate::devices::appliance_device_for;

const STEP: &str = "resume";

/// What a guest-side device name points at: the appliance's device for it, then what
/// inspection (or blkid) found there.
pub fn swap_lookup(guest: &Guest, spec: &str) -> SwapLookup {
    let Some(device) = appliance_device_for(spec, guest.disk_count) else {
        return SwapLookup::Unknown;
    };
    if let Some(fs) = guest.os.filesystems.iter().find(|f| f.device == device) {
        if fs.fs_type != "swap" {
            return SwapLookup::NotSwap(fs.fs_type.clone());
        }
        if let Some(uuid) = fs.uuid.clone().filter(|u| !u.is_empty()) {
            return SwapLookup::Swap(uuid);
        }
    }
    let Ok(tags) = guest.g.blkid(&device) else {
        return SwapLookup::Unknown;
    };
    let tag = |name: &str| tags.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match (tag("TYPE"), tag("UUID")) {
        (Some(t), Some(uuid)) if t == "swap" => SwapLookup::Swap(uuid),
        (Some(t), _) if t != "swap" => SwapLookup::NotSwap(t),
        _ => SwapLookup::Unknown,
    }
}

/// The files each generator reads its resume device from, that exist in the guest.
fn sources(guest: &Guest) -> Result<Vec<(String, bool)>, FixError> {
    let mut out = Vec::new();
    let glob = |pattern: &str| guest.g.glob_expand(pattern).map_err(Guest::err(STEP));
    // (path, is a dracut file)
    out.push(("/etc/initramfs-tools/initramfs.conf".to_string(), false));
    let mut conf_d = glob("/etc/initramfs-tools/conf.d/*")?;
    conf_d.sort();
    out.extend(conf_d.into_iter().map(|p| (p, false)));
    out.push(("/etc/dracut.conf".to_string(), true));
    let mut dropins = glob("/etc/dracut.conf.d/*.conf")?;
    dropins.sort();
    out.extend(dropins.into_iter().map(|p| (p, true)));
    let mut existing = Vec::new();
    for (path, dracut) in out {
        if guest.is_file(STEP, &path)? {
            existing.push((path, dracut));
        }
    }
    Ok(existing)
}

/// Make every resume device the initramfs generators are configured with stable.
pub fn run(guest: &Guest, warnings: &mut Vec<String>) -> Result<FixRecord, FixError> {
    let started = std::time::Instant::now();
    let lookup = |spec: &str| swap_lookup(guest, spec);
    let mut files = Vec::new();
    let mut count = 0;
    // initramfs-tools sources every file of conf.d, so a `resume.h2k-orig` kept there would
    // set the old device again: those backups go next to the directory instead.
    let no_backup = Guest {
        backup: false,
        ..*guest
    };
    for (path, dracut) in sources(guest)? {
        let conf_d = path.starts_with("/etc/initramfs-tools/conf.d/");
        let old = if conf_d && guest.backup {
            Some(guest.g.read_to_string(&path).map_err(Guest::err(STEP))?)
        } else {
            None
        };
        let editor = if conf_d { &no_backup } else { guest };
        let change = editor.rewrite_file(STEP, &path, warnings, |text| {
            let rewrite = if dracut {
                super::dracut_conf::rewrite_resume(text, &lookup)
            } else {
                rewrite_initramfs_tools_resume(text, &lookup)
            };
            count += rewrite.changes.len();
            rewrite
        })?;
        if let (Some(old), Some(_)) = (old, &change) {
            let name = path.rsplit('/').next().unwrap_or("resume");
            let backup = format!("/etc/initramfs-tools/conf.d-{name}.h2k-orig");
            guest
                .g
                .write(&backup, old.as_bytes())
                .map_err(Guest::err(STEP))?;
        }
        files.extend(change);
    }
    let summary = if count == 0 {
        "no unstable resume device in the initramfs configuration".to_string()
    } else {
        format!("{count} resume device(s) made stable or removed")
    };
    Ok(record(STEP, started, files, summary))
}
