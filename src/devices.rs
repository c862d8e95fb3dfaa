//! Device names as a guest writes them and as the libguestfs appliance sees them: kernel
//! disk names (`/dev/sdX`, `/dev/nvmeXnY`), `/dev/disk/by-path/…`, `/dev/disk/by-id/…` and
//! `UUID=`-style specs. A leaf: inspection and the fixes both use it.

/// What kind of device name a spec is, as far as surviving the move to KVM goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceNameKind {
    /// A kernel disk name: `/dev/sdX…`, `/dev/hdX…`, `/dev/vdX…`, `/dev/xvdX…`, `/dev/nvmeXnY…`.
    /// It depends on the controller type and probe order.
    KernelDisk,
    /// `/dev/disk/by-path/…`: depends on the PCI address and the bus.
    ByPath,
    /// `/dev/disk/by-id/…` of a disk: depends on the vendor, model and serial the hypervisor
    /// reports. (dm-/lvm-/md- ids are [`DeviceNameKind::Other`]: they live in metadata.)
    ById,
    /// Anything else: `UUID=`, `LABEL=`, `PARTUUID=`, `/dev/mapper/…`, `/dev/VG/LV`,
    /// `/dev/disk/by-uuid/…`, `/dev/sr0`, `tmpfs`, `host:/export`, bind-mount sources.
    Other,
}

/// Classify a device name (surrounding double quotes are ignored).
pub fn classify_device(spec: &str) -> DeviceNameKind {
    let spec = unquote(spec);
    if parse_kernel_disk(spec).is_some() {
        DeviceNameKind::KernelDisk
    } else if let Some(rest) = spec.strip_prefix("/dev/disk/by-path/") {
        if rest.is_empty() {
            DeviceNameKind::Other
        } else {
            DeviceNameKind::ByPath
        }
    } else if let Some(rest) = spec.strip_prefix("/dev/disk/by-id/") {
        // These ids come from LVM / MD / device-mapper metadata, which moves with the disk.
        const METADATA_IDS: [&str; 5] = [
            "dm-name-",
            "dm-uuid-",
            "lvm-pv-uuid-",
            "md-name-",
            "md-uuid-",
        ];
        if rest.is_empty() || METADATA_IDS.iter().any(|p| rest.starts_with(p)) {
            DeviceNameKind::Other
        } else {
            DeviceNameKind::ById
        }
    } else {
        DeviceNameKind::Other
    }
}

/// True for names that may not exist once the disk sits on a virtio controller.
pub fn is_unstable_device(spec: &str) -> bool {
    classify_device(spec) != DeviceNameKind::Other
}

/// Best guess of the name the libguestfs appliance gives a guest-side device. The appliance
/// sees the disks as `/dev/sda`, `/dev/sdb`, … in the order they were added (boot order);
/// `disk_count` is how many were added. Whole-disk names map to the disk, partitions keep
/// their number.
///
/// - `/dev/sdb2`, `/dev/hdb2`, `/dev/vdb2`, `/dev/xvdb2` → `/dev/sdb2` (the letter is the order).
/// - `/dev/nvme0n1p2`, `/dev/disk/by-id/…-part2` → `/dev/sda2` with a single disk only: the
///   name carries no order.
/// - `/dev/disk/by-path/…-partN` → `/dev/sdaN` with a single disk. With several disks only
///   when the address gives the order plainly: `…-scsi-0:0:T:0` is disk T (VMware's layout,
///   one controller with disks at targets 0, 1, …) and `…-ata-P` / `…-ata-P.0` is disk P-1.
///
/// None when the name is not a disk name, when the guess would point past the last disk, or
/// when the order cannot be told.
pub fn appliance_device_for(spec: &str, disk_count: usize) -> Option<String> {
    let spec = unquote(spec);
    let single = || (disk_count == 1).then_some(0);
    let (index, partition) = if let Some(disk) = parse_kernel_disk(spec) {
        match disk.index {
            Some(index) => (Some(index), disk.partition),
            None => (single(), disk.partition),
        }
    } else {
        match classify_device(spec) {
            DeviceNameKind::ByPath => {
                let (base, partition) = split_part_suffix(&spec["/dev/disk/by-path/".len()..]);
                let index = if disk_count == 1 {
                    Some(0)
                } else {
                    by_path_ordinal(base)
                };
                (index, partition)
            }
            DeviceNameKind::ById => {
                let (_, partition) = split_part_suffix(&spec["/dev/disk/by-id/".len()..]);
                (single(), partition)
            }
            _ => (None, None),
        }
    };
    let index = index.filter(|&i| i < disk_count)?;
    let partition = partition.map(|p| p.to_string()).unwrap_or_default();
    Some(format!("/dev/sd{}{partition}", disk_letters(index)))
}

/// `"x"` → `x`; anything else unchanged.
pub fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(s)
}

/// A UUID we can write unquoted into fstab or a kernel command line: hex digits and dashes
/// (ext4, xfs, swap, LUKS) or vfat's `ABCD-1234`. A leading `UUID=` is tolerated.
pub fn usable_uuid(uuid: &str) -> Option<&str> {
    let uuid = uuid.trim();
    let uuid = uuid.strip_prefix("UUID=").unwrap_or(uuid);
    let ok = !uuid.is_empty() && uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    ok.then_some(uuid)
}

struct KernelDisk {
    /// Disk order when the name carries it (sdX/hdX/vdX/xvdX letters); None for NVMe.
    index: Option<usize>,
    partition: Option<u32>,
}

fn parse_kernel_disk(spec: &str) -> Option<KernelDisk> {
    let name = spec.strip_prefix("/dev/")?;
    if let Some(rest) = name.strip_prefix("nvme") {
        // nvme<ctrl>n<ns>[p<part>]
        let (ctrl, rest) = rest.split_once('n')?;
        let (ns, part) = match rest.split_once('p') {
            Some((ns, part)) => (ns, Some(part)),
            None => (rest, None),
        };
        if !all_digits(ctrl) || !all_digits(ns) || part.is_some_and(|p| !all_digits(p)) {
            return None;
        }
        return Some(KernelDisk {
            index: None,
            partition: part.and_then(|p| p.parse().ok()),
        });
    }
    let rest = ["xvd", "sd", "hd", "vd"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let letters_end = rest
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(rest.len());
    let (letters, digits) = rest.split_at(letters_end);
    if letters.is_empty() || letters.len() > 3 || !(digits.is_empty() || all_digits(digits)) {
        return None;
    }
    let index = letters
        .bytes()
        .fold(0usize, |acc, b| acc * 26 + usize::from(b - b'a' + 1))
        - 1;
    Some(KernelDisk {
        index: Some(index),
        partition: if digits.is_empty() {
            None
        } else {
            digits.parse().ok()
        },
    })
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// 0 → `a`, 25 → `z`, 26 → `aa` (the kernel's sd naming).
fn disk_letters(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ascii")
}

/// `name-part3` → (`name`, Some(3)).
fn split_part_suffix(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once("-part") {
        Some((base, n)) if all_digits(n) => (base, n.parse().ok()),
        _ => (name, None),
    }
}

/// Disk order from a by-path name, when it is plain: `pci-<addr>-scsi-0:0:T:0` → T,
/// `pci-<addr>-ata-P[.0]` → P-1. Anything nested (USB, SAS, FC, iSCSI) or off that pattern → None.
fn by_path_ordinal(base: &str) -> Option<usize> {
    let (_addr, transport) = base.strip_prefix("pci-")?.split_once('-')?;
    if let Some(hctl) = transport.strip_prefix("scsi-") {
        let nums: Vec<usize> = hctl
            .split(':')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        match nums.as_slice() {
            [_host, 0, target, 0] => Some(*target),
            _ => None,
        }
    } else if let Some(port) = transport.strip_prefix("ata-") {
        let port = match port.split_once('.') {
            Some((port, "0")) => port,
            Some(_) => return None,
            None => port,
        };
        port.parse::<usize>().ok().and_then(|p| p.checked_sub(1))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- classification ---

    #[test]
    fn classifies_kernel_disk_names() {
        for spec in [
            "/dev/sda",
            "/dev/sda1",
            "/dev/sdab12",
            "/dev/hdb2",
            "/dev/vda1",
            "/dev/xvda1",
            "/dev/nvme0n1p2",
            "/dev/nvme1n1",
        ] {
            assert_eq!(classify_device(spec), DeviceNameKind::KernelDisk, "{spec}");
        }
    }

    #[test]
    fn classifies_by_path_and_by_id() {
        assert_eq!(
            classify_device("/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0-part1"),
            DeviceNameKind::ByPath
        );
        assert_eq!(
            classify_device("/dev/disk/by-id/wwn-0x6000c2912345678-part1"),
            DeviceNameKind::ById
        );
        assert_eq!(
            classify_device(
                "/dev/disk/by-id/ata-VMware_Virtual_IDE_Hard_Drive_00000000000000000001-part2"
            ),
            DeviceNameKind::ById
        );
        assert_eq!(classify_device("\"/dev/sda1\""), DeviceNameKind::KernelDisk);
    }

    #[test]
    fn stable_and_non_disk_names_are_other() {
        for spec in [
            "UUID=abc",
            "LABEL=root",
            "PARTUUID=0a1b2c3d-01",
            "PARTLABEL=esp",
            "/dev/mapper/vg0-root",
            "/dev/vg0/root",
            "/dev/centos/swap",
            "/dev/disk/by-uuid/abc",
            "/dev/disk/by-label/root",
            "/dev/disk/by-id/dm-name-vg0-root",
            "/dev/disk/by-id/dm-uuid-LVM-abc",
            "/dev/disk/by-id/lvm-pv-uuid-abc",
            "/dev/disk/by-id/md-uuid-abc",
            "/dev/sr0",
            "/dev/scd0",
            "/dev/fd0",
            "/dev/md0",
            "/dev/dm-0",
            "/dev/sd",
            "/dev/sda1x",
            "/dev/nvme0",
            "tmpfs",
            "proc",
            "nfs-server:/export/home",
            "/srv/data",
        ] {
            assert_eq!(classify_device(spec), DeviceNameKind::Other, "{spec}");
        }
    }

    // --- appliance_device_for ---

    #[test]
    fn appliance_kernel_names_follow_the_letter() {
        assert_eq!(
            appliance_device_for("/dev/sda1", 1).as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(
            appliance_device_for("/dev/hdb2", 2).as_deref(),
            Some("/dev/sdb2")
        );
        assert_eq!(
            appliance_device_for("/dev/vda1", 1).as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(
            appliance_device_for("/dev/xvda1", 1).as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(
            appliance_device_for("/dev/sdb", 3).as_deref(),
            Some("/dev/sdb")
        );
        assert_eq!(
            appliance_device_for("/dev/sdaa3", 30).as_deref(),
            Some("/dev/sdaa3")
        );
    }

    #[test]
    fn appliance_kernel_name_past_the_last_disk_is_none() {
        assert_eq!(appliance_device_for("/dev/sdb1", 1), None);
        assert_eq!(appliance_device_for("/dev/sda1", 0), None);
    }

    #[test]
    fn appliance_nvme_needs_a_single_disk() {
        assert_eq!(
            appliance_device_for("/dev/nvme0n1p2", 1).as_deref(),
            Some("/dev/sda2")
        );
        assert_eq!(
            appliance_device_for("/dev/nvme0n1", 1).as_deref(),
            Some("/dev/sda")
        );
        assert_eq!(appliance_device_for("/dev/nvme0n1p2", 2), None);
    }

    #[test]
    fn appliance_by_path_single_disk() {
        assert_eq!(
            appliance_device_for("/dev/disk/by-path/pci-0000:00:07.1-ata-2-part2", 1).as_deref(),
            Some("/dev/sda2")
        );
        assert_eq!(
            appliance_device_for("/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part1", 1)
                .as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(
            appliance_device_for("/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0", 1).as_deref(),
            Some("/dev/sda")
        );
    }

    #[test]
    fn appliance_by_path_several_disks_uses_plain_addresses_only() {
        let p = |s: &str| appliance_device_for(&format!("/dev/disk/by-path/{s}"), 3);
        assert_eq!(
            p("pci-0000:03:00.0-scsi-0:0:1:0-part1").as_deref(),
            Some("/dev/sdb1")
        );
        assert_eq!(
            p("pci-0000:03:00.0-scsi-0:0:0:0-part2").as_deref(),
            Some("/dev/sda2")
        );
        assert_eq!(
            p("pci-0000:02:03.0-ata-2.0-part1").as_deref(),
            Some("/dev/sdb1")
        );
        assert_eq!(
            p("pci-0000:02:03.0-ata-1-part1").as_deref(),
            Some("/dev/sda1")
        );
        // Past the last disk, a second channel, a non-zero LUN, a slave device, nested buses.
        assert_eq!(p("pci-0000:03:00.0-scsi-0:0:5:0-part1"), None);
        assert_eq!(p("pci-0000:03:00.0-scsi-0:1:0:0-part1"), None);
        assert_eq!(p("pci-0000:03:00.0-scsi-0:0:0:1-part1"), None);
        assert_eq!(p("pci-0000:00:07.1-ata-1.1-part1"), None);
        assert_eq!(p("pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0-part1"), None);
        assert_eq!(p("pci-0000:0b:00.0-nvme-1-part1"), None);
    }

    #[test]
    fn appliance_by_id_single_disk_only() {
        let id = "/dev/disk/by-id/scsi-36000c29a1b2c3d4e5f6a7b8c9d0e1f2a-part3";
        assert_eq!(appliance_device_for(id, 1).as_deref(), Some("/dev/sda3"));
        assert_eq!(appliance_device_for(id, 2), None);
        assert_eq!(
            appliance_device_for("/dev/disk/by-id/wwn-0x6000c29a1b2c3d4e", 1).as_deref(),
            Some("/dev/sda")
        );
        assert_eq!(
            appliance_device_for("/dev/disk/by-id/dm-name-vg0-root", 1),
            None
        );
    }

    #[test]
    fn appliance_non_disk_names_are_none() {
        for spec in [
            "UUID=abc",
            "LABEL=root",
            "/dev/mapper/vg0-root",
            "/dev/vg0/root",
            "/dev/sr0",
            "tmpfs",
        ] {
            assert_eq!(appliance_device_for(spec, 1), None, "{spec}");
        }
    }

    #[test]
    fn disk_letters_round_trip() {
        assert_eq!(disk_letters(0), "a");
        assert_eq!(disk_letters(25), "z");
        assert_eq!(disk_letters(26), "aa");
        assert_eq!(disk_letters(27), "ab");
        assert_eq!(disk_letters(701), "zz");
        assert_eq!(disk_letters(702), "aaa");
        for i in [0, 1, 25, 26, 51, 52, 701, 702, 1000] {
            let name = format!("/dev/sd{}", disk_letters(i));
            assert_eq!(
                parse_kernel_disk(&name).and_then(|d| d.index),
                Some(i),
                "{name}"
            );
        }
    }
}
