//! fstab / crypttab device-name rewriting (pure text transforms).
//!
//! Why: a guest exported from VMware names its disks after the controller it had there:
//! `/dev/sda1` (LSI Logic, pvscsi, SATA), `/dev/hda1` (IDE on old kernels),
//! `/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part1` or
//! `/dev/disk/by-id/scsi-36000c29…-part1`. On KVM the disk is a virtio disk, `/dev/vda`, on
//! another PCI address and without VMware's serial number, so none of those names exist any
//! more and the guest stops in the emergency shell. Filesystem (and LUKS) UUIDs travel with
//! the bytes, so each such name becomes `UUID=…`.
//!
//! Everything here is a pure function of text: no I/O, no appliance. The caller resolves
//! names to UUIDs beforehand into a [`DeviceMap`] (with [`appliance_device_for`] and
//! libguestfs inspection; see [`super::fstab_apply`]). Every transform returns a [`Rewrite`]: lines it does not change
//! are copied byte for byte, and running it on its own output changes nothing.

use std::collections::BTreeMap;

use super::text::{field_spans, lines, Line};
pub use super::text::{Change, Rewrite};
pub use crate::devices::{
    appliance_device_for, classify_device, is_unstable_device, DeviceNameKind,
};
use crate::devices::{unquote, usable_uuid};
pub use crate::plan::FstabMode;

/// What each guest device name resolves to at conversion time, as filesystem (or LUKS)
/// UUIDs. Built by the caller from the appliance's view of the disks; looked up by the exact
/// spec written in the guest file first, then by the mountpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMap {
    by_spec: BTreeMap<String, String>,
    by_mountpoint: BTreeMap<String, String>,
}

impl DeviceMap {
    /// `spec` exactly as the guest writes it (`/dev/sda1`, `/dev/disk/by-path/…`).
    pub fn with_spec(mut self, spec: impl Into<String>, uuid: impl Into<String>) -> Self {
        self.insert_spec(spec, uuid);
        self
    }

    /// `mountpoint` as libguestfs inspection reports it (`/`, `/boot`).
    pub fn with_mountpoint(
        mut self,
        mountpoint: impl Into<String>,
        uuid: impl Into<String>,
    ) -> Self {
        self.insert_mountpoint(mountpoint, uuid);
        self
    }

    pub fn insert_spec(&mut self, spec: impl Into<String>, uuid: impl Into<String>) {
        self.by_spec.insert(spec.into(), uuid.into());
    }

    pub fn insert_mountpoint(&mut self, mountpoint: impl Into<String>, uuid: impl Into<String>) {
        self.by_mountpoint
            .insert(normalize_mountpoint(&mountpoint.into()), uuid.into());
    }

    pub fn is_empty(&self) -> bool {
        self.by_spec.is_empty() && self.by_mountpoint.is_empty()
    }

    /// The UUID recorded for this exact spec (quotes ignored).
    pub fn uuid_for_spec(&self, spec: &str) -> Option<&str> {
        self.by_spec.get(unquote(spec)).and_then(|u| usable_uuid(u))
    }

    /// The UUID recorded for this mountpoint (trailing `/` and fstab `\040` escapes ignored).
    pub fn uuid_for_mountpoint(&self, mountpoint: &str) -> Option<&str> {
        self.by_mountpoint
            .get(&normalize_mountpoint(mountpoint))
            .and_then(|u| usable_uuid(u))
    }

    /// The exact spec first, then the mountpoint.
    pub fn lookup(&self, spec: &str, mountpoint: Option<&str>) -> Option<&str> {
        self.uuid_for_spec(spec)
            .or_else(|| mountpoint.and_then(|m| self.uuid_for_mountpoint(m)))
    }
}

/// The specs in `fstab_text` that [`rewrite_fstab`] would look up in a [`DeviceMap`] (each once,
/// in order), so the caller knows which names to resolve.
pub fn fstab_specs_needing_uuid(fstab_text: &str, mode: FstabMode) -> Vec<String> {
    specs_needing_uuid(fstab_text, mode, Table::Fstab)
}

/// Same as [`fstab_specs_needing_uuid`] for `/etc/crypttab` source devices.
pub fn crypttab_specs_needing_uuid(crypttab_text: &str, mode: FstabMode) -> Vec<String> {
    specs_needing_uuid(crypttab_text, mode, Table::Crypttab)
}

/// Rewrite the first field of `/etc/fstab` entries to `UUID=…` as `mode` asks: stabilize-all
/// takes every kernel disk, by-path and by-id name (swap included), bypath-only takes
/// `/dev/disk/by-path/…` only, noop takes nothing. `UUID=`, `LABEL=`, `PARTUUID=`,
/// `PARTLABEL=`, `/dev/mapper/…`, `/dev/VG/LV`, pseudo filesystems, bind mounts, network
/// mounts and CD-ROM entries are kept. A name with no UUID in `map` is kept and warned about.
pub fn rewrite_fstab(text: &str, mode: FstabMode, map: &DeviceMap) -> Rewrite {
    rewrite_table(text, mode, map, Table::Fstab)
}

/// Rewrite the source device (field 2) of `/etc/crypttab` entries like [`rewrite_fstab`]; the
/// UUID to give is the LUKS header's. Looked up by spec only (a crypttab line has no
/// mountpoint); [`Change::field`] is the mapping name.
pub fn rewrite_crypttab(text: &str, mode: FstabMode, map: &DeviceMap) -> Rewrite {
    rewrite_table(text, mode, map, Table::Crypttab)
}
/// Decode fstab's octal escapes (`\040` is a space) and drop a trailing `/`.
fn normalize_mountpoint(mountpoint: &str) -> String {
    let s = crate::inspect::mountpoints::unescape(mountpoint);
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() && s.starts_with('/') {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Fstab,
    Crypttab,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Fstab => "fstab",
            Table::Crypttab => "crypttab",
        }
    }
}

fn mode_wants(spec: &str, mode: FstabMode) -> bool {
    match mode {
        FstabMode::StabilizeAll => is_unstable_device(spec),
        FstabMode::BypathOnly => classify_device(spec) == DeviceNameKind::ByPath,
        FstabMode::Noop => false,
    }
}

/// One table entry whose device field `mode` wants rewritten.
struct Entry<'a> {
    /// Span of the device field in the line body.
    span: (usize, usize),
    spec: &'a str,
    /// Mountpoint (fstab) or mapping name (crypttab), for messages and [`Change::field`].
    label: String,
    /// Mountpoint to fall back on in the [`DeviceMap`].
    mountpoint: Option<String>,
    /// Why a missing UUID is expected, added to the warning.
    hint: Option<&'static str>,
}

/// Parse a line; Ok(None) when it is a comment, blank or not something `mode` rewrites;
/// Err(warning) when it should be rewritten but is malformed.
fn parse_entry<'a>(
    line: &Line<'a>,
    mode: FstabMode,
    table: Table,
) -> Result<Option<Entry<'a>>, String> {
    let body = line.body;
    let fields = field_spans(body);
    let Some(&(first_start, first_end)) = fields.first() else {
        return Ok(None);
    };
    if body[first_start..].starts_with('#') {
        return Ok(None);
    }
    let field_text = |i: usize| fields.get(i).map(|&(s, e)| &body[s..e]);
    match table {
        Table::Fstab => {
            let spec = &body[first_start..first_end];
            if !mode_wants(spec, mode) {
                return Ok(None);
            }
            let Some(mountpoint) = field_text(1) else {
                return Err(format!(
                    "fstab line {}: {spec} has no mountpoint field; left unchanged",
                    line.number
                ));
            };
            let fstype = field_text(2).unwrap_or("auto");
            // A CD-ROM's medium has no fixed UUID; the entry is usually noauto anyway.
            if fstype.split(',').any(|t| t == "iso9660" || t == "udf") {
                return Ok(None);
            }
            let is_swap = fstype == "swap" || mountpoint == "swap";
            let label = if is_swap {
                "swap".to_string()
            } else {
                normalize_mountpoint(mountpoint)
            };
            let mountpoint = (!is_swap && mountpoint != "none").then(|| label.clone());
            Ok(Some(Entry {
                span: (first_start, first_end),
                spec,
                label,
                mountpoint,
                hint: None,
            }))
        }
        Table::Crypttab => {
            let name = &body[first_start..first_end];
            let Some(&(s, e)) = fields.get(1) else {
                return if mode == FstabMode::Noop {
                    Ok(None)
                } else {
                    Err(format!(
                        "crypttab line {}: {name} has no source device field; left unchanged",
                        line.number
                    ))
                };
            };
            let spec = &body[s..e];
            if !mode_wants(spec, mode) {
                return Ok(None);
            }
            let random_key = matches!(field_text(2), Some("/dev/urandom" | "/dev/random"));
            let swap_or_tmp = field_text(3)
                .is_some_and(|o| o.split(',').any(|o| o == "swap" || o.starts_with("tmp")));
            let hint = (random_key || swap_or_tmp).then_some(
                "a random-key swap/tmp device is re-formatted each boot and has no lasting UUID; \
                 point it at /dev/disk/by-partuuid/… by hand",
            );
            Ok(Some(Entry {
                span: (s, e),
                spec,
                label: name.to_string(),
                mountpoint: None,
                hint,
            }))
        }
    }
}

fn specs_needing_uuid(text: &str, mode: FstabMode, table: Table) -> Vec<String> {
    let mut specs: Vec<String> = Vec::new();
    for line in lines(text) {
        if let Ok(Some(entry)) = parse_entry(&line, mode, table) {
            let spec = unquote(entry.spec).to_string();
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
    }
    specs
}

fn rewrite_table(text: &str, mode: FstabMode, map: &DeviceMap, table: Table) -> Rewrite {
    if mode == FstabMode::Noop {
        return Rewrite::unchanged(text);
    }
    let mut out = Rewrite {
        text: String::with_capacity(text.len() + 128),
        ..Rewrite::default()
    };
    for line in lines(text) {
        let new_body = match parse_entry(&line, mode, table) {
            Ok(Some(entry)) => rewrite_entry(&line, &entry, map, table, &mut out),
            Ok(None) => None,
            Err(warning) => {
                out.warnings.push(warning);
                None
            }
        };
        out.text.push_str(new_body.as_deref().unwrap_or(line.body));
        out.text.push_str(line.ending);
    }
    out
}

fn rewrite_entry(
    line: &Line,
    entry: &Entry,
    map: &DeviceMap,
    table: Table,
    out: &mut Rewrite,
) -> Option<String> {
    let what = match table {
        Table::Fstab if entry.label == "swap" => "swap".to_string(),
        Table::Fstab => format!("mountpoint {}", entry.label),
        Table::Crypttab => format!("mapping {}", entry.label),
    };
    let by_spec = map.uuid_for_spec(entry.spec);
    let by_mountpoint = entry
        .mountpoint
        .as_deref()
        .and_then(|m| map.uuid_for_mountpoint(m));
    if let (Some(a), Some(b)) = (by_spec, by_mountpoint) {
        if a != b {
            out.warnings.push(format!(
                "{} line {}: {} ({what}) resolves to UUID {a} by name but inspection mounted UUID {b} there; using {a}",
                table.name(),
                line.number,
                entry.spec
            ));
        }
    }
    let Some(uuid) = by_spec.or(by_mountpoint) else {
        let hint = entry.hint.map(|h| format!(" ({h})")).unwrap_or_default();
        out.warnings.push(format!(
            "{} line {}: no UUID known for {} ({what}); left unchanged, the name may not exist on KVM{hint}",
            table.name(),
            line.number,
            entry.spec
        ));
        return None;
    };
    let new = format!("UUID={uuid}");
    out.changes.push(Change {
        line: line.number,
        field: entry.label.clone(),
        old: entry.spec.to_string(),
        new: new.clone(),
    });
    let (s, e) = entry.span;
    Some(format!("{}{new}{}", &line.body[..s], &line.body[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "1b2c3d4e-0000-4000-8000-000000000001";
    const BOOT: &str = "1b2c3d4e-0000-4000-8000-000000000002";
    const SWAP: &str = "1b2c3d4e-0000-4000-8000-000000000003";
    const DATA: &str = "1b2c3d4e-0000-4000-8000-000000000004";
    const EFI: &str = "5A1B-9C3D";

    fn map() -> DeviceMap {
        DeviceMap::default()
            .with_spec("/dev/sda1", BOOT)
            .with_spec("/dev/sda2", ROOT)
            .with_spec("/dev/sda5", SWAP)
            .with_mountpoint("/", ROOT)
            .with_mountpoint("/boot", BOOT)
            .with_mountpoint("/boot/efi", EFI)
            .with_mountpoint("/data", DATA)
    }

    fn assert_idempotent(text: &str, mode: FstabMode, map: &DeviceMap) {
        let first = rewrite_fstab(text, mode, map);
        let second = rewrite_fstab(&first.text, mode, map);
        assert_eq!(second.text, first.text);
        assert!(
            second.changes.is_empty(),
            "second run changed {:?}",
            second.changes
        );
    }

    /// Every line not listed in `changed` (1-based) must be byte-for-byte the same.
    fn assert_other_lines_identical(old: &str, new: &str, changed: &[usize]) {
        let old: Vec<&str> = old.split_inclusive('\n').collect();
        let new: Vec<&str> = new.split_inclusive('\n').collect();
        assert_eq!(old.len(), new.len());
        for (i, (o, n)) in old.iter().zip(&new).enumerate() {
            if !changed.contains(&(i + 1)) {
                assert_eq!(o, n, "line {} changed", i + 1);
            }
        }
    }

    // --- DeviceMap ---

    #[test]
    fn device_map_tries_spec_then_mountpoint() {
        let m = DeviceMap::default()
            .with_spec("/dev/sdb1", DATA)
            .with_mountpoint("/srv/", ROOT);
        assert_eq!(m.lookup("/dev/sdb1", Some("/srv")), Some(DATA));
        assert_eq!(m.lookup("\"/dev/sdb1\"", None), Some(DATA));
        assert_eq!(m.lookup("/dev/sdc1", Some("/srv")), Some(ROOT));
        assert_eq!(m.lookup("/dev/sdc1", Some("/srv/")), Some(ROOT));
        assert_eq!(m.lookup("/dev/sdc1", None), None);
        assert_eq!(
            DeviceMap::default()
                .with_spec("/dev/sda1", "UUID=abcd")
                .uuid_for_spec("/dev/sda1"),
            Some("abcd")
        );
        assert_eq!(
            DeviceMap::default()
                .with_spec("/dev/sda1", "  ")
                .uuid_for_spec("/dev/sda1"),
            None
        );
        assert_eq!(
            DeviceMap::default()
                .with_spec("/dev/sda1", "a b")
                .uuid_for_spec("/dev/sda1"),
            None
        );
    }

    #[test]
    fn mountpoint_escapes_are_decoded() {
        assert_eq!(normalize_mountpoint("/mnt/my\\040disk/"), "/mnt/my disk");
        assert_eq!(normalize_mountpoint("/"), "/");
        assert_eq!(normalize_mountpoint("//"), "/");
        assert_eq!(normalize_mountpoint("/a\\\\b"), "/a\\\\b");
    }

    // --- fstab ---

    /// A RHEL-style fstab as an installer on VMware writes it, with a hand-added data disk.
    const VMWARE_FSTAB: &str = "\
#
# /etc/fstab
# Created by anaconda on Tue Mar  5 10:12:44 2024
#
/dev/sda2\t/\txfs\tdefaults\t0 0
/dev/sda1               /boot                   xfs     defaults        0 0
/dev/sda5   swap    swap    defaults    0 0

/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1 /data ext4 defaults,nofail 0 2
tmpfs /tmp tmpfs defaults,size=2G 0 0
proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
/srv/export /var/export none bind 0 0
nas01:/export/home /home nfs4 rw,hard,_netdev 0 0
/dev/sr0 /media/cdrom iso9660 ro,user,noauto 0 0
";

    #[test]
    fn stabilize_all_rewrites_kernel_and_by_path_names() {
        let r = rewrite_fstab(VMWARE_FSTAB, FstabMode::StabilizeAll, &map());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let fields: Vec<(usize, &str, &str)> = r
            .changes
            .iter()
            .map(|c| (c.line, c.field.as_str(), c.new.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![
                (5, "/", &*format!("UUID={ROOT}")),
                (6, "/boot", &*format!("UUID={BOOT}")),
                (7, "swap", &*format!("UUID={SWAP}")),
                (9, "/data", &*format!("UUID={DATA}")),
            ]
        );
        assert!(r
            .text
            .contains(&format!("UUID={ROOT}\t/\txfs\tdefaults\t0 0\n")));
        assert!(r.text.contains(&format!(
            "UUID={BOOT}               /boot                   xfs"
        )));
        assert!(r
            .text
            .contains(&format!("UUID={SWAP}   swap    swap    defaults    0 0\n")));
        assert!(r
            .text
            .contains(&format!("UUID={DATA} /data ext4 defaults,nofail 0 2\n")));
        assert_other_lines_identical(VMWARE_FSTAB, &r.text, &[5, 6, 7, 9]);
        assert_eq!(
            r.changes[3].old,
            "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1"
        );
        assert_idempotent(VMWARE_FSTAB, FstabMode::StabilizeAll, &map());
    }

    #[test]
    fn bypath_only_leaves_kernel_names() {
        let r = rewrite_fstab(VMWARE_FSTAB, FstabMode::BypathOnly, &map());
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].line, 9);
        assert!(r.text.contains("/dev/sda2\t/\txfs"));
        assert_other_lines_identical(VMWARE_FSTAB, &r.text, &[9]);
        assert_idempotent(VMWARE_FSTAB, FstabMode::BypathOnly, &map());
    }

    #[test]
    fn noop_changes_nothing() {
        let r = rewrite_fstab(VMWARE_FSTAB, FstabMode::Noop, &map());
        assert_eq!(r, Rewrite::unchanged(VMWARE_FSTAB));
        assert!(!r.is_changed());
    }

    #[test]
    fn stable_specs_are_kept() {
        let text = "\
UUID=0a1b2c3d-aaaa-bbbb-cccc-000000000001 / ext4 errors=remount-ro 0 1
UUID=\"0a1b2c3d-aaaa-bbbb-cccc-000000000002\" /boot ext4 defaults 0 2
LABEL=DATA /data xfs defaults 0 0
PARTUUID=6e8f1c2a-02 /srv ext4 defaults 0 2
PARTLABEL=EFI\\040System /boot/efi vfat umask=0077 0 1
/dev/mapper/vg0-root / ext4 defaults 1 1
/dev/vg0/home /home ext4 defaults 1 2
/dev/disk/by-id/dm-name-vg0-var /var ext4 defaults 1 2
/dev/disk/by-uuid/0a1b2c3d-aaaa-bbbb-cccc-000000000003 /opt ext4 defaults 0 2
devpts /dev/pts devpts gid=5,mode=620 0 0
";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r, Rewrite::unchanged(text));
    }

    #[test]
    fn unmapped_spec_is_kept_with_a_warning() {
        let text = "/dev/sdc1 /backup ext4 defaults,nofail 0 2\n/dev/sdd1\tnone\tswap\tsw\t0\t0\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r.text, text);
        assert!(r.changes.is_empty());
        assert_eq!(r.warnings.len(), 2);
        assert!(
            r.warnings[0].contains("/dev/sdc1")
                && r.warnings[0].contains("/backup")
                && r.warnings[0].contains("line 1")
        );
        assert!(r.warnings[1].contains("/dev/sdd1") && r.warnings[1].contains("swap"));
    }

    #[test]
    fn falls_back_to_mountpoint() {
        let text = "/dev/disk/by-id/scsi-36000c29a1b2c3d4e5f6a7b8c9d0e1f2a-part1 /boot/efi vfat umask=0077 0 1\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(
            r.text,
            format!("UUID={EFI} /boot/efi vfat umask=0077 0 1\n")
        );
        assert_eq!(r.changes[0].field, "/boot/efi");
    }

    #[test]
    fn spec_and_mountpoint_disagreeing_warns_and_uses_spec() {
        let m = DeviceMap::default()
            .with_spec("/dev/sdb1", DATA)
            .with_mountpoint("/data", ROOT);
        let r = rewrite_fstab(
            "/dev/sdb1 /data ext4 defaults 0 2\n",
            FstabMode::StabilizeAll,
            &m,
        );
        assert_eq!(r.text, format!("UUID={DATA} /data ext4 defaults 0 2\n"));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains(DATA) && r.warnings[0].contains(ROOT));
    }

    #[test]
    fn swap_with_none_mountpoint_does_not_use_mountpoint_lookup() {
        let m = DeviceMap::default().with_mountpoint("none", DATA);
        let r = rewrite_fstab("/dev/sda5 none swap sw 0 0\n", FstabMode::StabilizeAll, &m);
        assert!(r.changes.is_empty());
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn btrfs_subvolumes_share_one_device() {
        let text = "/dev/sda2 / btrfs subvol=@,compress=zstd 0 0\n/dev/sda2 /home btrfs subvol=@home 0 0\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r.text, format!("UUID={ROOT} / btrfs subvol=@,compress=zstd 0 0\nUUID={ROOT} /home btrfs subvol=@home 0 0\n"));
        assert_eq!(
            fstab_specs_needing_uuid(text, FstabMode::StabilizeAll),
            vec!["/dev/sda2"]
        );
    }

    #[test]
    fn indentation_trailing_whitespace_and_no_final_newline_are_kept() {
        let text = "  /dev/sda1 /boot ext2 defaults 0 2   \n\t/dev/sda2\t\t/   ext4 defaults 0 1\t";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r.text, format!("  UUID={BOOT} /boot ext2 defaults 0 2   \n\tUUID={ROOT}\t\t/   ext4 defaults 0 1\t"));
        assert_idempotent(text, FstabMode::StabilizeAll, &map());
    }

    #[test]
    fn comments_and_commented_out_entries_are_untouched() {
        let text =
            "# /dev/sda1 /boot ext4 defaults 0 2\n   #/dev/sda2 / ext4 defaults 0 1\n\n   \n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r, Rewrite::unchanged(text));
    }

    #[test]
    fn quoted_spec_is_rewritten() {
        let r = rewrite_fstab(
            "\"/dev/sda1\" /boot ext4 defaults 0 2\n",
            FstabMode::StabilizeAll,
            &map(),
        );
        assert_eq!(r.text, format!("UUID={BOOT} /boot ext4 defaults 0 2\n"));
        assert_eq!(r.changes[0].old, "\"/dev/sda1\"");
    }

    #[test]
    fn missing_fields() {
        // Spec only: malformed, warned about. Spec and mountpoint only: fstype defaults to auto.
        let text = "/dev/sda1\n/dev/sda2 /\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r.text, format!("/dev/sda1\nUUID={ROOT} /\n"));
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("no mountpoint"));
    }

    #[test]
    fn escaped_mountpoint_lookup() {
        let m = DeviceMap::default().with_mountpoint("/mnt/my disk", DATA);
        let r = rewrite_fstab(
            "/dev/sdb1 /mnt/my\\040disk ext4 defaults 0 0\n",
            FstabMode::StabilizeAll,
            &m,
        );
        assert_eq!(
            r.text,
            format!("UUID={DATA} /mnt/my\\040disk ext4 defaults 0 0\n")
        );
        assert_eq!(r.changes[0].field, "/mnt/my disk");
    }

    #[test]
    fn cdrom_entries_on_ide_names_are_left_alone() {
        let text = "/dev/hdc /media/cdrom0 udf,iso9660 user,noauto 0 0\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(r, Rewrite::unchanged(text));
    }

    #[test]
    fn old_ide_and_xen_and_nvme_names() {
        let m = DeviceMap::default()
            .with_spec("/dev/hda1", BOOT)
            .with_spec("/dev/xvda2", ROOT)
            .with_spec("/dev/nvme0n1p3", DATA);
        let text = "/dev/hda1 /boot ext3 defaults 1 2\n/dev/xvda2 / ext4 defaults 1 1\n/dev/nvme0n1p3 /data xfs defaults 0 0\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &m);
        assert_eq!(r.changes.len(), 3);
        assert_eq!(r.text, format!("UUID={BOOT} /boot ext3 defaults 1 2\nUUID={ROOT} / ext4 defaults 1 1\nUUID={DATA} /data xfs defaults 0 0\n"));
    }

    #[test]
    fn crlf_line_endings_are_kept() {
        let text = "/dev/sda1 /boot ext4 defaults 0 2\r\n# c\r\n";
        let r = rewrite_fstab(text, FstabMode::StabilizeAll, &map());
        assert_eq!(
            r.text,
            format!("UUID={BOOT} /boot ext4 defaults 0 2\r\n# c\r\n")
        );
    }

    #[test]
    fn empty_input() {
        assert_eq!(
            rewrite_fstab("", FstabMode::StabilizeAll, &map()),
            Rewrite::unchanged("")
        );
    }

    #[test]
    fn specs_needing_uuid_follow_the_mode() {
        assert_eq!(
            fstab_specs_needing_uuid(VMWARE_FSTAB, FstabMode::StabilizeAll),
            vec![
                "/dev/sda2",
                "/dev/sda1",
                "/dev/sda5",
                "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1"
            ]
        );
        assert_eq!(
            fstab_specs_needing_uuid(VMWARE_FSTAB, FstabMode::BypathOnly),
            vec!["/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1"]
        );
        assert!(fstab_specs_needing_uuid(VMWARE_FSTAB, FstabMode::Noop).is_empty());
    }

    // --- crypttab ---

    const LUKS: &str = "7f3e2d1c-1111-4222-8333-444455556666";

    #[test]
    fn crypttab_source_is_rewritten_and_name_recorded() {
        let text = "\
# <target name>\t<source device>\t\t<key file>\t<options>
sda3_crypt /dev/sda3 none luks,discard
home_crypt\tUUID=0d9c8b7a-1111-2222-3333-444455556666\tnone\tluks
";
        let m = DeviceMap::default().with_spec("/dev/sda3", LUKS);
        let r = rewrite_crypttab(text, FstabMode::StabilizeAll, &m);
        assert_eq!(
            r.changes,
            vec![Change {
                line: 2,
                field: "sda3_crypt".into(),
                old: "/dev/sda3".into(),
                new: format!("UUID={LUKS}")
            }]
        );
        assert!(r
            .text
            .contains(&format!("sda3_crypt UUID={LUKS} none luks,discard\n")));
        assert_other_lines_identical(text, &r.text, &[2]);
        let again = rewrite_crypttab(&r.text, FstabMode::StabilizeAll, &m);
        assert_eq!(again, Rewrite::unchanged(&r.text));
    }

    #[test]
    fn crypttab_does_not_use_mountpoints() {
        // A crypttab name that happens to look like a mountpoint must not be looked up.
        let m = DeviceMap::default().with_mountpoint("/", ROOT);
        let r = rewrite_crypttab("/ /dev/sda3 none luks\n", FstabMode::StabilizeAll, &m);
        assert!(r.changes.is_empty());
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn crypttab_random_key_swap_warns_with_hint() {
        let text =
            "cryptswap1 /dev/sda5 /dev/urandom swap,offset=1024,cipher=aes-xts-plain64,size=512\n";
        let r = rewrite_crypttab(text, FstabMode::StabilizeAll, &DeviceMap::default());
        assert_eq!(r.text, text);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("cryptswap1") && r.warnings[0].contains("by-partuuid"));
    }

    #[test]
    fn crypttab_bypath_only_and_missing_source() {
        let text = "data_crypt /dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1 /etc/keys/data.key luks\nroot_crypt /dev/sda2 none luks\nlonely\n";
        let m = DeviceMap::default()
            .with_spec(
                "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:1:0-part1",
                LUKS,
            )
            .with_spec("/dev/sda2", ROOT);
        let r = rewrite_crypttab(text, FstabMode::BypathOnly, &m);
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].field, "data_crypt");
        assert!(r.text.contains("root_crypt /dev/sda2 none luks\n"));
        assert!(r.text.ends_with("lonely\n"));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("lonely"));
        assert_eq!(
            crypttab_specs_needing_uuid(text, FstabMode::StabilizeAll).len(),
            2
        );
        assert_eq!(
            rewrite_crypttab(text, FstabMode::Noop, &m),
            Rewrite::unchanged(text)
        );
    }
}
