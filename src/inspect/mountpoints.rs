//! INSPECT, pure: a root's `/etc/fstab` as (mountpoint, appliance device) pairs.
//!
//! The guest names its filesystems the way its own kernel saw them: `UUID=`, `LABEL=`,
//! `PARTUUID=`, `/dev/disk/by-*/…`, `/dev/mapper/VG-LV`, `/dev/sdb1`. These functions map each
//! name to the device the appliance has for it, from what `list_filesystems` and blkid said
//! (see [`Known`]). Names that point nowhere are left out (a stale entry for a disk that was
//! not exported); device paths that cannot be mapped are kept as written, and the mount that
//! follows says so. Entries whose naming only libguestfs can map (md arrays through
//! `mdadm.conf`, cciss) make the caller ask libguestfs instead.

use crate::devices;

/// One filesystem the appliance sees, with the tags blkid gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownFs {
    /// The mountable: `/dev/sda1`, `/dev/vg0/root`, `btrfsvol:/dev/sda2/@`.
    pub device: String,
    pub fs_type: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
    pub partuuid: Option<String>,
    pub partlabel: Option<String>,
}

/// What the appliance knows about the disks, for resolving the guest's names.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub filesystems: Vec<KnownFs>,
    /// `(vg uuid + lv uuid without dashes, /dev/VG/LV)`, for `/dev/disk/by-id/dm-uuid-LVM-…`.
    pub lv_uuids: Vec<(String, String)>,
    pub disk_count: usize,
}

/// An fstab line's first four fields, with the octal escapes (`\040`) decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: String,
    pub mountpoint: String,
    pub vfstype: String,
    pub options: String,
}

pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut fields = line.split_whitespace().map(unescape);
            Some(FstabEntry {
                spec: fields.next()?,
                mountpoint: fields.next()?,
                vfstype: fields.next().unwrap_or_default(),
                options: fields.next().unwrap_or_default(),
            })
        })
        .collect()
}

/// fstab's `\NNN` octal escapes (`\040` is a space).
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// udev's `\xHH` escapes in `/dev/disk/by-label/…` names (`\x20` is a space, `\x2f` a slash).
fn unescape_udev(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'\\' && b.get(i + 1) == Some(&b'x'))
            .then(|| b.get(i + 2..i + 4))
            .flatten()
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match hex {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a guest's name for a filesystem is in the appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Device(String),
    /// A tag that matches no filesystem here, or not a block device at all (tmpfs, NFS).
    Nowhere,
    /// Only libguestfs maps this kind of name (md through mdadm.conf, cciss).
    NeedsLibguestfs,
}

#[derive(Debug, Clone, Copy)]
enum Tag {
    Uuid,
    Label,
    PartUuid,
    PartLabel,
}

impl Known {
    fn by_tag(&self, tag: Tag, value: &str) -> Resolved {
        let value = devices::unquote(value.trim());
        let found = self.filesystems.iter().find(|f| {
            // Subvolumes share their device's tags; the device itself is the answer.
            !f.device.starts_with("btrfsvol:")
                && match tag {
                    Tag::Uuid => f
                        .uuid
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(value)),
                    Tag::Label => f.label.as_deref() == Some(value),
                    Tag::PartUuid => f
                        .partuuid
                        .as_deref()
                        .is_some_and(|u| u.eq_ignore_ascii_case(value)),
                    Tag::PartLabel => f.partlabel.as_deref() == Some(value),
                }
        });
        match found {
            Some(f) => Resolved::Device(f.device.clone()),
            None => Resolved::Nowhere,
        }
    }

    fn has(&self, device: &str) -> bool {
        self.filesystems.iter().any(|f| f.device == device)
    }

    /// `/dev/mapper/VG-LV` → `/dev/VG/LV` (a `-` inside a name is written `--`).
    fn mapper(&self, name: &str, spec: &str) -> Resolved {
        let keep = Resolved::Device(spec.to_string());
        let mut vg = String::new();
        let mut chars = name.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '-' {
                if chars.peek() == Some(&'-') {
                    chars.next();
                    vg.push('-');
                    continue;
                }
                let lv: String = chars.collect::<String>().replace("--", "-");
                let device = format!("/dev/{vg}/{lv}");
                return if self.has(&device) {
                    Resolved::Device(device)
                } else {
                    keep
                };
            }
            vg.push(c);
        }
        keep
    }

    /// Resolve one fstab `spec` (the root's own mountable stands for `/dev/root`).
    pub fn resolve(&self, spec: &str, root: &str) -> Resolved {
        let spec = devices::unquote(spec);
        for (prefix, tag) in [
            ("UUID=", Tag::Uuid),
            ("LABEL=", Tag::Label),
            ("PARTUUID=", Tag::PartUuid),
            ("PARTLABEL=", Tag::PartLabel),
            ("/dev/disk/by-uuid/", Tag::Uuid),
            ("/dev/disk/by-label/", Tag::Label),
            ("/dev/disk/by-partuuid/", Tag::PartUuid),
            ("/dev/disk/by-partlabel/", Tag::PartLabel),
        ] {
            if let Some(value) = spec.strip_prefix(prefix) {
                return self.by_tag(tag, &unescape_udev(value));
            }
        }
        if !spec.starts_with("/dev/") {
            return Resolved::Nowhere;
        }
        if spec == "/dev/root" {
            return Resolved::Device(root.to_string());
        }
        if spec.starts_with("/dev/md") || spec.starts_with("/dev/cciss/") {
            return Resolved::NeedsLibguestfs;
        }
        if let Some(ids) = spec.strip_prefix("/dev/disk/by-id/dm-uuid-LVM-") {
            return match self.lv_uuids.iter().find(|(u, _)| u == ids) {
                Some((_, device)) => Resolved::Device(device.clone()),
                None => Resolved::Device(spec.to_string()),
            };
        }
        if let Some(name) = spec.strip_prefix("/dev/disk/by-id/dm-name-") {
            return self.mapper(name, spec);
        }
        if let Some(name) = spec.strip_prefix("/dev/mapper/") {
            return self.mapper(name, spec);
        }
        if self.has(spec) {
            return Resolved::Device(spec.to_string());
        }
        match devices::appliance_device_for(spec, self.disk_count) {
            Some(device) if self.has(&device) => Resolved::Device(device),
            _ => Resolved::Device(spec.to_string()),
        }
    }
}

/// `//usr//local/` → `/usr/local`.
fn canonical_mountpoint(mp: &str) -> String {
    let parts: Vec<&str> = mp.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

fn ignored_spec(spec: &str) -> bool {
    let numbered = |p: &str| {
        spec.strip_prefix(p)
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    };
    numbered("/dev/fd")
        || numbered("/dev/cd")
        || numbered("/dev/sr")
        || spec == "/dev/floppy"
        || spec == "/dev/cdrom"
}

fn ignored_mountpoint(mp: &str) -> bool {
    ["/dev", "/proc", "/sys", "/selinux", "/media"]
        .iter()
        .any(|p| mp == *p || mp.starts_with(&format!("{p}/")))
}

/// The btrfs subvolume an entry mounts (`subvol=@home` → `btrfsvol:/dev/sda2/@home`).
fn with_subvolume(device: String, entry: &FstabEntry) -> String {
    if entry.vfstype != "btrfs" || !device.starts_with("/dev/") {
        return device;
    }
    let subvol = entry
        .options
        .split(',')
        .filter_map(|o| o.strip_prefix("subvol="))
        .next_back()
        .map(|s| s.trim_start_matches('/'))
        .filter(|s| !s.is_empty());
    match subvol {
        Some(s) => format!("btrfsvol:{device}/{s}"),
        None => device,
    }
}

/// What a root's fstab says is mounted where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// `(mountpoint, device)`, `/` first and always the root itself.
    pub mountpoints: Vec<(String, String)>,
    /// What the fstab's own `/` line names, resolved (None: no such line, or it points
    /// nowhere). A root whose fstab names another filesystem for `/` is a copy (a snapshot).
    pub fstab_root: Option<String>,
}

/// The mountpoints of `root` from its fstab text, or the spec only libguestfs can map.
pub fn mounts(fstab: &str, root: &str, known: &Known) -> Result<Mounts, String> {
    let mut mountpoints = vec![("/".to_string(), root.to_string())];
    let mut fstab_root = None;
    for entry in parse_fstab(fstab) {
        let mp = canonical_mountpoint(&entry.mountpoint);
        if !entry.mountpoint.starts_with('/')
            || ignored_mountpoint(&mp)
            || ignored_spec(&entry.spec)
        {
            continue;
        }
        let device = match known.resolve(&entry.spec, root) {
            Resolved::Device(d) => with_subvolume(d, &entry),
            Resolved::Nowhere => continue,
            Resolved::NeedsLibguestfs => return Err(entry.spec),
        };
        if mp == "/" {
            fstab_root.get_or_insert(device);
        } else if !mountpoints.iter().any(|(m, _)| *m == mp) {
            mountpoints.push((mp, device));
        }
    }
    Ok(Mounts {
        mountpoints,
        fstab_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(device: &str, fs_type: &str, uuid: &str, label: &str, partuuid: &str) -> KnownFs {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        KnownFs {
            device: device.into(),
            fs_type: fs_type.into(),
            uuid: some(uuid),
            label: some(label),
            partuuid: some(partuuid),
            partlabel: None,
        }
    }

    fn known() -> Known {
        Known {
            filesystems: vec![
                fs(
                    "/dev/sda1",
                    "vfat",
                    "8C1A-2B3C",
                    "EFI",
                    "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
                ),
                fs(
                    "/dev/sda2",
                    "ext4",
                    "27576639-6b43-4d36-aa65-984b716b4e12",
                    "boot",
                    "",
                ),
                fs(
                    "/dev/sda3",
                    "btrfs",
                    "b0b0b0b0-0000-0000-0000-000000000003",
                    "my data",
                    "",
                ),
                fs("btrfsvol:/dev/sda3/@", "btrfs", "", "", ""),
                fs(
                    "/dev/sysvg/root",
                    "xfs",
                    "e3862d9e-f7c9-4544-942d-709fa8ccab65",
                    "root",
                    "",
                ),
                fs(
                    "/dev/sysvg/swap",
                    "swap",
                    "11111111-2222-3333-4444-555555555555",
                    "",
                    "",
                ),
                fs("/dev/my-vg/lv-home", "ext4", "", "", ""),
                fs(
                    "/dev/sdb1",
                    "xfs",
                    "dddddddd-0000-0000-0000-000000000001",
                    "data",
                    "",
                ),
            ],
            lv_uuids: vec![(
                "VGUUIDx".repeat(4) + &"LVUUIDyy".repeat(4),
                "/dev/sysvg/root".into(),
            )],
            disk_count: 2,
        }
    }

    fn resolve(spec: &str) -> Resolved {
        known().resolve(spec, "/dev/sysvg/root")
    }

    fn dev(d: &str) -> Resolved {
        Resolved::Device(d.into())
    }

    #[test]
    fn tags_resolve_to_their_filesystem() {
        assert_eq!(
            resolve("UUID=27576639-6b43-4d36-aa65-984b716b4e12"),
            dev("/dev/sda2")
        );
        assert_eq!(
            resolve("UUID=\"27576639-6B43-4D36-AA65-984B716B4E12\""),
            dev("/dev/sda2")
        );
        assert_eq!(resolve("UUID=8C1A-2B3C"), dev("/dev/sda1"));
        assert_eq!(resolve("LABEL=root"), dev("/dev/sysvg/root"));
        assert_eq!(
            resolve("PARTUUID=0F1E2D3C-AAAA-BBBB-CCCC-000000000001"),
            dev("/dev/sda1")
        );
        assert_eq!(
            resolve("/dev/disk/by-uuid/e3862d9e-f7c9-4544-942d-709fa8ccab65"),
            dev("/dev/sysvg/root")
        );
        assert_eq!(resolve("/dev/disk/by-label/my\\x20data"), dev("/dev/sda3"));
        assert_eq!(resolve("LABEL=nosuch"), Resolved::Nowhere);
        assert_eq!(
            resolve("UUID=00000000-dead-beef-0000-000000000000"),
            Resolved::Nowhere
        );
    }

    #[test]
    fn device_paths_map_to_the_appliance() {
        assert_eq!(resolve("/dev/mapper/sysvg-root"), dev("/dev/sysvg/root"));
        assert_eq!(
            resolve("/dev/mapper/my--vg-lv--home"),
            dev("/dev/my-vg/lv-home")
        );
        assert_eq!(
            resolve("/dev/disk/by-id/dm-name-sysvg-swap"),
            dev("/dev/sysvg/swap")
        );
        assert_eq!(resolve("/dev/sysvg/root"), dev("/dev/sysvg/root"));
        assert_eq!(resolve("/dev/sdb1"), dev("/dev/sdb1"));
        assert_eq!(resolve("/dev/vdb1"), dev("/dev/sdb1"));
        assert_eq!(resolve("/dev/xvda2"), dev("/dev/sda2"));
        assert_eq!(resolve("/dev/root"), dev("/dev/sysvg/root"));
        let dm = format!(
            "/dev/disk/by-id/dm-uuid-LVM-{}",
            "VGUUIDx".repeat(4) + &"LVUUIDyy".repeat(4)
        );
        assert_eq!(resolve(&dm), dev("/dev/sysvg/root"));
        // Kept as written when nothing here matches; the mount will say why it failed.
        assert_eq!(
            resolve("/dev/mapper/luks-1234"),
            dev("/dev/mapper/luks-1234")
        );
        assert_eq!(resolve("/dev/sdc1"), dev("/dev/sdc1"));
        assert_eq!(resolve("/dev/md0"), Resolved::NeedsLibguestfs);
        assert_eq!(resolve("/dev/md/data"), Resolved::NeedsLibguestfs);
        assert_eq!(resolve("/dev/cciss/c0d0p1"), Resolved::NeedsLibguestfs);
        assert_eq!(resolve("tmpfs"), Resolved::Nowhere);
        assert_eq!(resolve("nfs.example:/export"), Resolved::Nowhere);
    }

    #[test]
    fn by_path_names_map_by_partition_on_a_single_disk() {
        let mut k = known();
        k.disk_count = 1;
        assert_eq!(
            k.resolve(
                "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part2",
                "/dev/sda3"
            ),
            dev("/dev/sda2")
        );
    }

    #[test]
    fn fstab_of_an_lvm_guest() {
        let text = "# /etc/fstab\nLABEL=root / xfs defaults 0 0\nLABEL=boot /boot ext4 defaults 0 2\n/dev/mapper/sysvg-swap none swap sw 0 0\nproc /proc proc defaults 0 0\ntmpfs /tmp tmpfs defaults 0 0\n/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\nUUID=gone /old ext4 defaults 0 0\n";
        let m = mounts(text, "/dev/sysvg/root", &known()).unwrap();
        assert_eq!(
            m.mountpoints,
            vec![
                ("/".to_string(), "/dev/sysvg/root".to_string()),
                ("/boot".to_string(), "/dev/sda2".to_string()),
            ]
        );
        assert_eq!(m.fstab_root.as_deref(), Some("/dev/sysvg/root"));
    }

    #[test]
    fn btrfs_subvolumes_become_btrfsvol_mountables() {
        let text = "UUID=b0b0b0b0-0000-0000-0000-000000000003 / btrfs defaults,subvol=@ 0 0\nUUID=b0b0b0b0-0000-0000-0000-000000000003 /home btrfs subvol=/@home,compress=zstd 0 0\nUUID=b0b0b0b0-0000-0000-0000-000000000003 /.snapshots btrfs defaults 0 0\n";
        let m = mounts(text, "btrfsvol:/dev/sda3/@", &known()).unwrap();
        assert_eq!(m.fstab_root.as_deref(), Some("btrfsvol:/dev/sda3/@"));
        assert_eq!(
            m.mountpoints,
            vec![
                ("/".to_string(), "btrfsvol:/dev/sda3/@".to_string()),
                ("/home".to_string(), "btrfsvol:/dev/sda3/@home".to_string()),
                ("/.snapshots".to_string(), "/dev/sda3".to_string()),
            ]
        );
    }

    #[test]
    fn a_snapshot_names_another_root() {
        let text = "UUID=b0b0b0b0-0000-0000-0000-000000000003 / btrfs defaults 0 0\n";
        let m = mounts(text, "btrfsvol:/dev/sda3/@/.snapshots/1/snapshot", &known()).unwrap();
        assert_eq!(m.fstab_root.as_deref(), Some("/dev/sda3"));
        assert_eq!(
            m.mountpoints[0].1,
            "btrfsvol:/dev/sda3/@/.snapshots/1/snapshot"
        );
    }

    #[test]
    fn md_arrays_are_left_to_libguestfs() {
        let text = "/dev/md0 / ext4 defaults 0 1\n";
        assert_eq!(mounts(text, "/dev/md127", &known()), Err("/dev/md0".into()));
    }

    #[test]
    fn escapes_duplicates_and_odd_mountpoints() {
        let text = "LABEL=my\\040data /srv/my\\040data btrfs defaults 0 0\nLABEL=boot //boot// ext4 defaults 0 0\nLABEL=data /boot xfs defaults 0 0\nLABEL=data none swap sw 0 0\nLABEL=data /sys/kernel/x ext4 defaults 0 0\n/dev/fd0 /mnt/floppy auto noauto 0 0\nbroken\n";
        let m = mounts(text, "/dev/sysvg/root", &known()).unwrap();
        assert_eq!(
            m.mountpoints,
            vec![
                ("/".to_string(), "/dev/sysvg/root".to_string()),
                ("/srv/my data".to_string(), "/dev/sda3".to_string()),
                ("/boot".to_string(), "/dev/sda2".to_string()),
            ]
        );
        assert_eq!(m.fstab_root, None);
    }

    #[test]
    fn no_fstab_means_just_the_root() {
        let m = mounts("", "/dev/sda2", &known()).unwrap();
        assert_eq!(
            m.mountpoints,
            vec![("/".to_string(), "/dev/sda2".to_string())]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_fstab_resolves_to_known_devices_or_its_own_words(text in "(([A-Za-z0-9=/_@ .\\\\-]{0,40})\n){0,12}") {
            let k = known();
            if let Ok(m) = mounts(&text, "/dev/sysvg/root", &k) {
                proptest::prop_assert_eq!(&m.mountpoints[0], &("/".to_string(), "/dev/sysvg/root".to_string()));
                for (mp, _) in &m.mountpoints {
                    proptest::prop_assert!(mp.starts_with('/'));
                    proptest::prop_assert!(!ignored_mountpoint(mp));
                }
                let mut seen: Vec<&String> = m.mountpoints.iter().map(|(mp, _)| mp).collect();
                seen.sort();
                seen.dedup();
                proptest::prop_assert_eq!(seen.len(), m.mountpoints.len());
            }
        }
    }
}
