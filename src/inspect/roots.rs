//! INSPECT: which filesystems are operating system roots, what they are, and what their fstab
//! mounts where.
//!
//! h2k-guest finds Linux roots itself: it mounts each filesystem that can hold one read-only,
//! looks for `/etc`, `/bin` and `/etc/fstab`, and reads `os-release`, the hostname, one ELF
//! header and fstab (a few dozen appliance calls, under a second on TCG). libguestfs's
//! `inspect_os` does this for every operating system it knows, through Augeas, and costs 6–9 s
//! on TCG; it remains the answer whenever the quick look is not sure: no Linux root with an
//! os-release (older or non-Linux systems), or an fstab naming md arrays or cciss disks.

use super::mountpoints::{self, Known, KnownFs};
use super::os_facts::{self, OsFacts, ReleaseFiles};
use super::{Disks, InspectError};
use crate::guestfs::{Guestfs, GuestfsError};

/// One operating system root and what inspection learnt of it.
#[derive(Debug, Clone)]
pub struct Root {
    /// The root filesystem's mountable (`/dev/sda1`, `/dev/vg0/root`, `btrfsvol:/dev/sda2/@`).
    pub device: String,
    /// `linux`, or what libguestfs found (`windows`, …).
    pub os_type: String,
    pub facts: OsFacts,
    /// `(mountpoint, device)` from the root's fstab, `/` first.
    pub mountpoints: Vec<(String, String)>,
    /// `h2k-guest`, or `libguestfs` with the reason it was asked.
    pub found_by: String,
}

/// The filesystem types a Linux root is found on; others are not mounted to look.
const ROOT_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "jfs", "reiserfs", "f2fs", "bcachefs", "nilfs2",
];
/// Bytes read of each small file (os-release, fstab, hostname): the guest is not trusted.
const SMALL_FILE: u32 = 256 * 1024;

/// Every root on the disks, the most plausible first (a root whose fstab names itself for `/`
/// before a copy or snapshot of it). Errors with [`InspectError::NoOs`] when there is none.
pub fn find_roots(g: &Guestfs, disks: &Disks) -> Result<Vec<Root>, InspectError> {
    let reason = match own_roots(g, disks)? {
        Ok(roots) if !roots.is_empty() => return Ok(roots),
        Ok(_) => "no Linux root with an os-release".to_string(),
        Err(reason) => reason,
    };
    log::info!("asking libguestfs's inspect_os: {reason}");
    libguestfs_roots(g, disks, &reason)
}

/// The roots h2k-guest can judge by itself, or why it cannot (then libguestfs decides).
pub fn own_roots(g: &Guestfs, disks: &Disks) -> Result<Result<Vec<Root>, String>, InspectError> {
    let mut known = disks.known();
    let mut found: Vec<(Option<String>, Root)> = Vec::new();
    let candidates: Vec<String> = disks
        .filesystems
        .iter()
        .filter(|(_, t)| ROOT_TYPES.contains(&t.as_str()))
        .map(|(d, _)| d.clone())
        .collect();
    for device in candidates {
        if g.mount_ro(&device, "/").is_err() {
            continue;
        }
        let looked = look_at_root(g);
        g.umount_all()?;
        let Some((files, fstab)) = looked? else {
            continue;
        };
        let Some(facts) = os_facts::facts(&files) else {
            return Ok(Err(format!(
                "{device} looks like a Linux root without os-release"
            )));
        };
        if fstab.contains("dm-uuid-LVM-") && known.lv_uuids.is_empty() {
            known.lv_uuids = lv_uuids(g);
        }
        let mounts = match mountpoints::mounts(&fstab, &device, &known) {
            Ok(m) => m,
            Err(spec) => {
                return Ok(Err(format!(
                    "the fstab of {device} names {spec}, which only libguestfs maps"
                )))
            }
        };
        found.push((
            mounts.fstab_root,
            Root {
                os_type: "linux".into(),
                facts,
                mountpoints: mounts.mountpoints,
                found_by: "h2k-guest".into(),
                device,
            },
        ));
    }
    Ok(Ok(rank(found)))
}

/// The roots in the order to trust them, given what each one's fstab names for `/`: first
/// those that name themselves (or nothing), then the rest in the filesystems' order. A root
/// whose fstab names another root found here is a copy of it (a btrfs snapshot, a backup
/// subvolume) and is not an operating system of its own.
fn rank(found: Vec<(Option<String>, Root)>) -> Vec<Root> {
    let devices: Vec<String> = found.iter().map(|(_, r)| r.device.clone()).collect();
    let mut roots: Vec<(bool, Root)> = found
        .into_iter()
        .filter_map(|(fstab_root, root)| match fstab_root {
            Some(named) if named != root.device && devices.contains(&named) => {
                log::debug!("{} is a copy of the root {named}", root.device);
                None
            }
            Some(named) => Some((named == root.device, root)),
            None => Some((true, root)),
        })
        .collect();
    // Stable: the filesystems' own order among equals.
    roots.sort_by_key(|(names_itself, _)| !names_itself);
    roots.into_iter().map(|(_, r)| r).collect()
}

/// With a candidate mounted on `/`: its release files and fstab if it is a Linux root.
fn look_at_root(g: &Guestfs) -> Result<Option<(ReleaseFiles, String)>, GuestfsError> {
    let bin = g.is_dir("/bin")?
        || g.readlink("/bin")
            .is_ok_and(|t| t.trim_start_matches('/') == "usr/bin");
    if !g.is_dir("/etc")? || !bin || !(g.is_file("/etc/fstab")? || g.is_file("/etc/hosts")?) {
        return Ok(None);
    }
    let text = |path: &str| {
        g.read_head(path, SMALL_FILE)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let os_release = text("/etc/os-release").or_else(|| text("/usr/lib/os-release"));
    // The same reading of ID as `os_facts::facts` makes, so both agree on "Debian".
    let debian = os_release.as_deref().is_some_and(|t| {
        super::photon::release_value(&super::photon::parse_os_release(t), "ID")
            .is_some_and(|id| id.eq_ignore_ascii_case("debian"))
    });
    let hostname = text("/etc/hostname").or_else(|| text("/etc/HOSTNAME"));
    let files = ReleaseFiles {
        debian_version: debian.then(|| text("/etc/debian_version")).flatten(),
        sysconfig_network: hostname
            .is_none()
            .then(|| text("/etc/sysconfig/network"))
            .flatten(),
        hostname,
        elf_header: [
            "/usr/bin/ls",
            "/bin/ls",
            "/usr/bin/bash",
            "/bin/bash",
            "/bin/busybox",
        ]
        .iter()
        .find_map(|p| {
            g.read_head(p, 64)
                .ok()
                .filter(|h| h.starts_with(b"\x7fELF"))
        }),
        os_release,
    };
    Ok(Some((files, text("/etc/fstab").unwrap_or_default())))
}

/// `(vg uuid + lv uuid, /dev/VG/LV)` without dashes, as `/dev/disk/by-id/dm-uuid-LVM-…` spells
/// them.
fn lv_uuids(g: &Guestfs) -> Vec<(String, String)> {
    let plain = |s: String| s.replace('-', "");
    g.lvs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|lv| {
            let vg = lv.strip_prefix("/dev/")?.split('/').next()?.to_string();
            let ids = plain(g.vguuid(&vg).ok()?) + &plain(g.lvuuid(&lv).ok()?);
            Some((ids, lv))
        })
        .collect()
}

/// libguestfs's inspection: its roots, facts and mountpoints.
pub fn libguestfs_roots(
    g: &Guestfs,
    disks: &Disks,
    reason: &str,
) -> Result<Vec<Root>, InspectError> {
    let devices = g.inspect_os()?;
    if devices.is_empty() {
        return Err(InspectError::NoOs);
    }
    devices
        .into_iter()
        .map(|root| {
            Ok(Root {
                os_type: g.inspect_get_type(&root)?,
                facts: OsFacts {
                    distro: g.inspect_get_distro(&root)?,
                    product_name: g.inspect_get_product_name(&root)?,
                    major_version: g.inspect_get_major_version(&root)?,
                    minor_version: g.inspect_get_minor_version(&root)?,
                    arch: g.inspect_get_arch(&root)?,
                    osinfo: g.inspect_get_osinfo(&root).ok().filter(|s| s != "unknown"),
                    package_format: g.inspect_get_package_format(&root)?,
                    package_management: g.inspect_get_package_management(&root)?,
                    hostname: g.inspect_get_hostname(&root)?,
                },
                mountpoints: resolved_mountpoints(g, &root, disks)?,
                found_by: format!("libguestfs ({reason})"),
                device: root,
            })
        })
        .collect()
}

/// libguestfs's mountpoints with each device as the appliance names it. libguestfs resolves
/// `/dev/sdX`, `UUID=` and `LABEL=` itself but passes `/dev/disk/by-path/…` and
/// `/dev/disk/by-id/…` through unchanged; those are mapped by their partition number.
fn resolved_mountpoints(
    g: &Guestfs,
    root: &str,
    disks: &Disks,
) -> Result<Vec<(String, String)>, GuestfsError> {
    let known = |dev: &str| disks.filesystems.iter().any(|(d, _)| d == dev);
    let mut mps: Vec<(String, String)> = g
        .inspect_get_mountpoints(root)?
        .into_iter()
        .map(|(mp, dev)| {
            if known(&dev) {
                return (mp, dev);
            }
            match crate::devices::appliance_device_for(&dev, disks.disk_count).filter(|d| known(d))
            {
                Some(resolved) => (mp, resolved),
                None => (mp, dev),
            }
        })
        .collect();
    if !mps.iter().any(|(mp, _)| mp == "/") {
        mps.insert(0, ("/".into(), root.into()));
    }
    Ok(mps)
}

impl Disks {
    /// The filesystems with their tags, for resolving the guest's names for them.
    pub fn known(&self) -> Known {
        Known {
            filesystems: self.described.clone(),
            lv_uuids: Vec::new(),
            disk_count: self.disk_count,
        }
    }
}

/// blkid's tags for every filesystem (one call per device; subvolumes share their device's).
pub fn describe(g: &Guestfs, filesystems: &[(String, String)]) -> Vec<KnownFs> {
    let nonempty = |s: &String| !s.is_empty();
    let mut out: Vec<KnownFs> = Vec::new();
    for (device, fs_type) in filesystems {
        if fs_type == "unknown" {
            continue;
        }
        let parent = device.strip_prefix("btrfsvol:").and_then(|rest| {
            out.iter()
                .find(|f| rest.starts_with(&format!("{}/", f.device)))
        });
        let fs = match parent {
            Some(p) => KnownFs {
                device: device.clone(),
                fs_type: fs_type.clone(),
                partuuid: None,
                partlabel: None,
                ..p.clone()
            },
            None => {
                let tags = g.blkid(device).unwrap_or_default();
                let tag = |k: &str| {
                    tags.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .filter(nonempty)
                };
                KnownFs {
                    device: device.clone(),
                    fs_type: fs_type.clone(),
                    uuid: tag("UUID"),
                    label: tag("LABEL"),
                    partuuid: tag("PARTUUID"),
                    partlabel: tag("PART_ENTRY_NAME").or_else(|| tag("PARTLABEL")),
                }
            }
        };
        out.push(fs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(device: &str) -> Root {
        Root {
            device: device.into(),
            os_type: "linux".into(),
            facts: os_facts::facts(&ReleaseFiles {
                os_release: Some("ID=opensuse-leap\nVERSION_ID=15.5\n".into()),
                ..ReleaseFiles::default()
            })
            .unwrap(),
            mountpoints: vec![("/".into(), device.into())],
            found_by: "h2k-guest".into(),
        }
    }

    fn devices(roots: &[Root]) -> Vec<&str> {
        roots.iter().map(|r| r.device.as_str()).collect()
    }

    #[test]
    fn snapshots_of_a_root_are_not_roots_of_their_own() {
        let snap = |n: u32| format!("btrfsvol:/dev/sda2/@/.snapshots/{n}/snapshot");
        let found = vec![
            (Some("/dev/sda2".to_string()), root("/dev/sda2")),
            (Some("/dev/sda2".to_string()), root(&snap(1))),
            (Some("/dev/sda2".to_string()), root(&snap(2))),
        ];
        assert_eq!(devices(&rank(found)), ["/dev/sda2"]);
    }

    #[test]
    fn a_root_naming_itself_comes_before_one_naming_elsewhere() {
        let found = vec![
            (Some("/dev/sdc1".to_string()), root("/dev/sda1")),
            (None, root("/dev/sdb1")),
            (Some("/dev/sdb2".to_string()), root("/dev/sdb2")),
        ];
        assert_eq!(
            devices(&rank(found)),
            ["/dev/sdb1", "/dev/sdb2", "/dev/sda1"]
        );
    }

    #[test]
    fn two_operating_systems_stay_two() {
        let found = vec![
            (Some("/dev/sda1".to_string()), root("/dev/sda1")),
            (Some("/dev/sdb1".to_string()), root("/dev/sdb1")),
        ];
        assert_eq!(devices(&rank(found)), ["/dev/sda1", "/dev/sdb1"]);
    }
}
