//! The fstab/crypttab guest step: resolve device names in the appliance, run the pure
//! transforms of [`super::fstab`], write back and record.

use super::fstab::{
    crypttab_specs_needing_uuid, fstab_specs_needing_uuid, rewrite_crypttab, rewrite_fstab,
    DeviceMap, FstabMode,
};
use super::text::Rewrite;
use crate::devices::appliance_device_for;

const STEP: &str = "fstab";

/// The UUID of the filesystem (or LUKS container) a guest-side name points at, resolved
/// through the appliance's view of the disks.
pub fn resolve_uuid(guest: &super::Guest, spec: &str) -> Option<String> {
    let device = appliance_device_for(spec, guest.disk_count)?;
    guest
        .os
        .filesystems
        .iter()
        .find(|f| f.device == device)
        .and_then(|f| f.uuid.clone())
        .or_else(|| guest.g.vfs_uuid(&device).ok().filter(|u| !u.is_empty()))
}

/// Names to UUIDs for `specs`, plus every inspected mountpoint's UUID (libguestfs already
/// resolved the guest's fstab to appliance devices when it inspected the guest).
fn device_map(guest: &super::Guest, specs: &[String]) -> DeviceMap {
    let mut map = DeviceMap::default();
    for m in &guest.os.mountpoints {
        if let Some(uuid) = guest
            .os
            .filesystems
            .iter()
            .find(|f| f.device == m.device)
            .and_then(|f| f.uuid.clone())
        {
            map.insert_mountpoint(m.mountpoint.clone(), uuid);
        }
    }
    for spec in specs {
        if let Some(uuid) = resolve_uuid(guest, spec) {
            map.insert_spec(spec.clone(), uuid);
        }
    }
    map
}

/// Rewrite unstable device names in `/etc/fstab` and `/etc/crypttab` to `UUID=`.
pub fn run(
    guest: &super::Guest,
    mode: FstabMode,
    warnings: &mut Vec<String>,
) -> Result<super::FixRecord, super::FixError> {
    let started = std::time::Instant::now();
    if mode == FstabMode::Noop {
        return Ok(super::skipped(STEP, "fstab mode noop"));
    }
    let mut files = Vec::new();
    let mut count = 0;
    type Transform = fn(&str, FstabMode, &DeviceMap) -> Rewrite;
    type Specs = fn(&str, FstabMode) -> Vec<String>;
    let tables: [(&str, Specs, Transform); 2] = [
        ("/etc/fstab", fstab_specs_needing_uuid, rewrite_fstab),
        (
            "/etc/crypttab",
            crypttab_specs_needing_uuid,
            rewrite_crypttab,
        ),
    ];
    for (path, specs_of, transform) in tables {
        if !guest.is_file(STEP, path)? {
            continue;
        }
        let change = guest.rewrite_file(STEP, path, warnings, |text| {
            let map = device_map(guest, &specs_of(text, mode));
            let rewrite = transform(text, mode, &map);
            count += rewrite.changes.len();
            rewrite
        })?;
        files.extend(change);
    }
    let summary = if count == 0 {
        "no unstable device names".to_string()
    } else {
        format!("{count} device name(s) → UUID=")
    };
    Ok(super::record(STEP, started, files, summary))
}
