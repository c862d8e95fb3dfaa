//! INSPECT: what operating system is on the disk and how it boots.
//!
//! Runs inside a launched appliance. The same functions serve `h2k-guest inspect` (read-only
//! drive) and the fix pipeline (the writable overlay), so what is reported is what is fixed.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::guestfs::{Guestfs, GuestfsError};

pub mod mountpoints;
pub mod os_facts;
pub mod photon;
pub mod roots;

pub use roots::{find_roots, Root};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "no operating system found on the disk (no Linux root, and libguestfs inspection found none)"
    )]
    NoOs,
    #[error(transparent)]
    Guestfs(#[from] GuestfsError),
}

/// Everything h2k-guest knows about one operating system on the disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OsInfo {
    pub root: String,
    #[serde(rename = "type")]
    pub os_type: String,
    pub distro: String,
    pub product_name: String,
    pub major_version: i32,
    pub minor_version: i32,
    pub arch: String,
    pub osinfo: Option<String>,
    pub package_format: String,
    pub package_management: String,
    pub hostname: String,
    pub mountpoints: Vec<Mountpoint>,
    pub filesystems: Vec<Filesystem>,
    pub kernels: Vec<Kernel>,
    /// The kernel the bootloader boots by default (best guess: the newest).
    pub default_kernel: Option<String>,
    pub bootloader: Bootloader,
    pub firmware: Firmware,
    pub initramfs_tool: InitramfsTool,
    /// Whether the default kernel's initramfs (or the kernel itself) has virtio_blk.
    pub virtio_blk_in_default_initramfs: Option<bool>,
    /// How a Photon OS guest boots; absent for every other distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photon: Option<crate::inspect::photon::PhotonBoot>,
    /// What found the root: `h2k-guest`, or `libguestfs (why it was asked)`.
    #[serde(default)]
    pub found_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mountpoint {
    pub mountpoint: String,
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filesystem {
    pub device: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: String,
    pub initramfs: Option<String>,
    /// virtio drivers found inside the initramfs or built into the kernel.
    pub virtio_modules: Vec<String>,
    /// Whether virtio_blk is available at boot (in the initramfs or built in); None = unknown.
    pub has_virtio_blk: Option<bool>,
    /// What listed the initramfs: "host" (read by h2k-guest), or the guest's lister when the
    /// image's compression is not one h2k-guest decodes; None when it could not be listed.
    pub initramfs_listed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bootloader {
    pub kind: BootloaderKind,
    /// Path of the generated configuration inside the guest, when there is one.
    pub config: Option<String>,
    /// Boot Loader Specification entries in /boot/loader/entries.
    pub bls: bool,
}

/// Which bootloader the guest has; serialized as "grub2", "grub-legacy", "systemd-boot" or
/// "unknown".
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BootloaderKind {
    Grub2,
    GrubLegacy,
    SystemdBoot,
    Unknown,
}

impl BootloaderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BootloaderKind::Grub2 => "grub2",
            BootloaderKind::GrubLegacy => "grub-legacy",
            BootloaderKind::SystemdBoot => "systemd-boot",
            BootloaderKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for BootloaderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Firmware {
    /// Serialized as "bios" or "uefi".
    pub kind: crate::plan::Firmware,
    /// Why: "ESP partition /dev/sda1", "/boot/efi in fstab", "no ESP".
    pub evidence: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsTool {
    InitramfsTools,
    Dracut,
    Mkinitcpio,
    Unknown,
}

/// The modules a guest needs to find its disk and network on KVM.
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "virtio_net",
    "virtio_ring",
    "virtio",
];

const ESP_GPT_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

/// The appliance's view of the disks, read once: `list_filesystems` probes every device (LVM,
/// md, signatures) and costs about 1.5 s per call under TCG; blkid's tags per device follow.
#[derive(Debug, Clone)]
pub struct Disks {
    /// (device, filesystem type) as libguestfs lists them.
    pub filesystems: Vec<(String, String)>,
    /// The same with blkid's UUID, LABEL, PARTUUID (not for type "unknown").
    pub described: Vec<mountpoints::KnownFs>,
    pub disk_count: usize,
}

pub fn scan_disks(g: &Guestfs) -> Result<Disks, GuestfsError> {
    let filesystems = g.list_filesystems()?;
    Ok(Disks {
        described: roots::describe(g, &filesystems),
        filesystems,
        disk_count: g.list_devices()?.len(),
    })
}

/// Mount the guest's filesystems for `root` at their mountpoints (shortest path first).
/// Filesystems that fail to mount (e.g. a stale fstab entry) are skipped with a warning.
pub fn mount_guest(g: &Guestfs, root: &Root) -> Result<Vec<String>, InspectError> {
    let mut mps = root.mountpoints.clone();
    mps.sort_by_key(|(mp, _)| mp.len());
    let mut warnings = Vec::new();
    for (mp, dev) in mps {
        if let Err(e) = g.mount(&dev, &mp) {
            if mp == "/" {
                return Err(e.into());
            }
            warnings.push(format!("could not mount {dev} on {mp}: {}", e.message));
        }
    }
    Ok(warnings)
}

/// Inspect one root; the guest must be mounted (see [`mount_guest`]).
pub fn inspect_root(g: &Guestfs, root: &Root, disks: &Disks) -> Result<OsInfo, InspectError> {
    inspect_root_timed(g, root, disks, &mut Vec::new())
}

/// [`inspect_root`], adding where its time went to `parts` (name, seconds).
pub fn inspect_root_timed(
    g: &Guestfs,
    root: &Root,
    disks: &Disks,
    parts: &mut Vec<(&'static str, f64)>,
) -> Result<OsInfo, InspectError> {
    let mut clock = std::time::Instant::now();
    let mut lap = |name: &'static str, parts: &mut Vec<(&'static str, f64)>| {
        parts.push((name, clock.elapsed().as_secs_f64()));
        clock = std::time::Instant::now();
    };
    let mountpoints: Vec<Mountpoint> = root
        .mountpoints
        .iter()
        .map(|(mountpoint, device)| Mountpoint {
            mountpoint: mountpoint.clone(),
            device: device.clone(),
        })
        .collect();
    let filesystems = disks
        .described
        .iter()
        .map(|f| Filesystem {
            device: f.device.clone(),
            fs_type: f.fs_type.clone(),
            uuid: f.uuid.clone(),
            label: f.label.clone(),
        })
        .collect();
    let kernels = list_kernels(g)?;
    lap("kernels and initramfs", parts);
    let default_kernel = kernels.last().map(|k| k.version.clone());
    let virtio_blk_in_default_initramfs = kernels.last().and_then(|k| k.has_virtio_blk);
    let facts = root.facts.clone();
    let mut os = OsInfo {
        root: root.device.clone(),
        os_type: root.os_type.clone(),
        distro: facts.distro,
        product_name: facts.product_name,
        major_version: facts.major_version,
        minor_version: facts.minor_version,
        arch: facts.arch,
        osinfo: facts.osinfo,
        package_format: facts.package_format,
        package_management: facts.package_management,
        hostname: facts.hostname,
        bootloader: detect_bootloader(g)?,
        firmware: detect_firmware(g, &mountpoints, disks)?,
        initramfs_tool: detect_initramfs_tool(g)?,
        mountpoints,
        filesystems,
        kernels,
        default_kernel,
        virtio_blk_in_default_initramfs,
        photon: None,
        found_by: root.found_by.clone(),
    };
    lap("boot loader and firmware", parts);
    // libguestfs does not know Photon: os-release, and Photon's own boot layout.
    crate::inspect::photon::complete(g, &mut os)?;
    lap("os-release and photon", parts);
    Ok(os)
}

/// Compare kernel versions ("6.1.0-18-amd64" < "6.1.0-25-amd64") by numeric runs.
pub fn compare_kernel_versions(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u64, &str>> {
        let mut out = Vec::new();
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            let digit = bytes[i].is_ascii_digit();
            while i < bytes.len() && bytes[i].is_ascii_digit() == digit {
                i += 1;
            }
            let run = &s[start..i];
            out.push(if digit {
                Ok(run.parse().unwrap_or(u64::MAX))
            } else {
                Err(run)
            });
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Err(x), Err(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// Where distributions put the initramfs for kernel `version`, most common first.
pub fn initramfs_candidates(version: &str) -> Vec<String> {
    vec![
        format!("/boot/initrd.img-{version}"),
        format!("/boot/initramfs-{version}.img"),
        format!("/boot/initrd-{version}"),
        format!("/boot/initramfs-{version}"),
    ]
}

fn list_kernels(g: &Guestfs) -> Result<Vec<Kernel>, GuestfsError> {
    let mut versions: Vec<String> = g
        .glob_expand("/boot/vmlinuz-*")?
        .into_iter()
        .filter_map(|p| p.strip_prefix("/boot/vmlinuz-").map(str::to_string))
        .filter(|v| !v.contains("rescue"))
        .collect();
    versions.sort_by(|a, b| compare_kernel_versions(a, b));
    let mut out = Vec::new();
    for version in versions {
        let mut initramfs = None;
        for c in initramfs_candidates(&version) {
            if g.is_file(&c)? {
                initramfs = Some(c);
                break;
            }
        }
        let drivers = virtio_in_boot(g, &version, initramfs.as_deref());
        out.push(Kernel {
            vmlinuz: format!("/boot/vmlinuz-{version}"),
            version,
            initramfs,
            virtio_modules: drivers.modules,
            has_virtio_blk: drivers.has_virtio_blk,
            initramfs_listed_by: drivers.listed_by,
        });
    }
    Ok(out)
}

/// The virtio drivers a kernel has at boot.
pub struct BootDrivers {
    /// virtio drivers built in or in the initramfs.
    pub modules: Vec<String>,
    /// None when neither the initramfs nor modules.builtin could be read.
    pub has_virtio_blk: Option<bool>,
    /// See [`Kernel::initramfs_listed_by`].
    pub listed_by: Option<String>,
}

/// Which virtio drivers are available at boot for this kernel: built in, or in the initramfs.
pub fn virtio_in_boot(g: &Guestfs, version: &str, initramfs: Option<&str>) -> BootDrivers {
    let builtin = g
        .read_to_string(&format!("/lib/modules/{version}/modules.builtin"))
        .unwrap_or_default();
    let (listing, listed_by) = initramfs.and_then(|path| list_initramfs(g, path)).unzip();
    let mut found = Vec::new();
    for m in VIRTIO_MODULES {
        let file = format!("/{m}.ko");
        let in_builtin = builtin.lines().any(|l| l.ends_with(&file));
        let in_initramfs = listing
            .iter()
            .flatten()
            .any(|path| module_name_of(path).is_some_and(|n| n == *m));
        if in_builtin || in_initramfs {
            found.push(m.to_string());
        }
    }
    let known = listing.is_some() || !builtin.is_empty();
    let has_blk = found.iter().any(|m| m == "virtio_blk");
    BootDrivers {
        modules: found,
        has_virtio_blk: (known && (listing.is_some() || has_blk)).then_some(has_blk),
        listed_by,
    }
}

/// "usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko.xz" → "virtio_blk".
pub fn module_name_of(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (file.len() > stem.len()).then_some(stem)
}

/// The file list of an initramfs: read on the host when its compression is one we decode
/// (a 0.2 s download instead of 1.5-9 s of the guest's lister under TCG), else through the
/// guest's own lister (lsinitramfs or lsinitrd) inside the appliance.
/// Returns the paths and what listed them ("host" or the lister's path).
fn list_initramfs(g: &Guestfs, path: &str) -> Option<(Vec<String>, String)> {
    match list_initramfs_on_host(g, path) {
        Ok(paths) => return Some((paths, "host".into())),
        Err(why) => log::debug!("{path}: listing in the guest instead: {why}"),
    }
    for lister in [
        "/usr/bin/lsinitramfs",
        "/usr/sbin/lsinitramfs",
        "/usr/bin/lsinitrd",
        "/usr/sbin/lsinitrd",
    ] {
        if g.is_file(lister).unwrap_or(false) {
            match g.command(&[lister, path]) {
                Ok(out) => return Some((out.lines().map(str::to_string).collect(), lister.into())),
                Err(e) => log::debug!("{lister} {path} failed: {e}"),
            }
        }
    }
    None
}

fn list_initramfs_on_host(g: &Guestfs, path: &str) -> Result<Vec<String>, String> {
    let tmp = tempfile::Builder::new()
        .prefix("h2k-initramfs-")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    // Checked before the download: a hostile guest's image must not fill the host's disk.
    let size = g.filesize(path).map_err(|e| e.to_string())?;
    crate::initramfs_image::check_image_size(size).map_err(|e| e.to_string())?;
    g.download(path, tmp.path()).map_err(|e| e.to_string())?;
    // Streamed from the file: the memory used does not grow with the size of the image.
    crate::initramfs_image::list_paths_from_file(tmp.path()).map_err(|e| e.to_string())
}

fn detect_bootloader(g: &Guestfs) -> Result<Bootloader, GuestfsError> {
    // systemd-boot keeps its entries on the ESP; GRUB's BLS (Fedora, RHEL) in /boot.
    let mut bls = false;
    for dir in [
        "/boot/loader/entries",
        "/boot/efi/loader/entries",
        "/efi/loader/entries",
    ] {
        bls = bls || (g.is_dir(dir)? && !g.glob_expand(&format!("{dir}/*.conf"))?.is_empty());
    }
    for cfg in ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"] {
        if g.is_file(cfg)? {
            return Ok(Bootloader {
                kind: BootloaderKind::Grub2,
                config: Some(cfg.into()),
                bls,
            });
        }
    }
    // UEFI-only GRUB 2 layouts keep grub.cfg on the ESP.
    if let Some(cfg) = g
        .glob_expand("/boot/efi/EFI/*/grub.cfg")?
        .into_iter()
        .next()
    {
        return Ok(Bootloader {
            kind: BootloaderKind::Grub2,
            config: Some(cfg),
            bls,
        });
    }
    for cfg in ["/boot/grub/menu.lst", "/boot/grub/grub.conf"] {
        if g.is_file(cfg)? {
            return Ok(Bootloader {
                kind: BootloaderKind::GrubLegacy,
                config: Some(cfg.into()),
                bls,
            });
        }
    }
    for cfg in [
        "/boot/efi/loader/loader.conf",
        "/efi/loader/loader.conf",
        "/boot/loader/loader.conf",
    ] {
        if g.is_file(cfg)? {
            return Ok(Bootloader {
                kind: BootloaderKind::SystemdBoot,
                config: Some(cfg.into()),
                bls,
            });
        }
    }
    Ok(Bootloader {
        kind: BootloaderKind::Unknown,
        config: None,
        bls,
    })
}

fn detect_firmware(
    g: &Guestfs,
    mountpoints: &[Mountpoint],
    disks: &Disks,
) -> Result<Firmware, GuestfsError> {
    // Only a FAT partition can be an ESP the firmware boots from: blkid (a process in the
    // appliance, up to a second each under TCG) is asked about those alone.
    let fat = |dev: &str| {
        disks
            .filesystems
            .iter()
            .any(|(d, t)| d == dev && t == "vfat")
    };
    for p in g.list_partitions()?.into_iter().filter(|p| fat(p)) {
        let tags = g.blkid(&p).unwrap_or_default();
        if tags
            .iter()
            .any(|(k, v)| k == "PART_ENTRY_TYPE" && v.eq_ignore_ascii_case(ESP_GPT_TYPE))
        {
            return Ok(Firmware {
                kind: crate::plan::Firmware::Uefi,
                evidence: format!("EFI system partition {p}"),
            });
        }
    }
    if let Some(m) = mountpoints
        .iter()
        .find(|m| m.mountpoint == "/boot/efi" || m.mountpoint == "/efi")
    {
        return Ok(Firmware {
            kind: crate::plan::Firmware::Uefi,
            evidence: format!("{} mounted from {}", m.mountpoint, m.device),
        });
    }
    Ok(Firmware {
        kind: crate::plan::Firmware::Bios,
        evidence: "no EFI system partition".into(),
    })
}

fn detect_initramfs_tool(g: &Guestfs) -> Result<InitramfsTool, GuestfsError> {
    let any = |paths: &[&str]| -> Result<bool, GuestfsError> {
        for p in paths {
            if g.is_file(p)? {
                return Ok(true);
            }
        }
        Ok(false)
    };
    // dracut first: a Debian guest that switched to dracut may keep initramfs-tools-core files.
    if any(&["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"])? {
        return Ok(InitramfsTool::Dracut);
    }
    if any(&["/usr/sbin/update-initramfs", "/sbin/update-initramfs"])? {
        return Ok(InitramfsTool::InitramfsTools);
    }
    if any(&["/usr/bin/mkinitcpio", "/usr/sbin/mkinitcpio"])? {
        return Ok(InitramfsTool::Mkinitcpio);
    }
    Ok(InitramfsTool::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec![
            "6.1.0-25-amd64",
            "6.1.0-9-amd64",
            "5.10.0-28-amd64",
            "6.10.0-1-amd64",
        ];
        v.sort_by(|a, b| compare_kernel_versions(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-28-amd64",
                "6.1.0-9-amd64",
                "6.1.0-25-amd64",
                "6.10.0-1-amd64"
            ]
        );
        assert_eq!(
            compare_kernel_versions("5.14.0-427.el9.x86_64", "5.14.0-427.el9.x86_64"),
            Ordering::Equal
        );
        assert_eq!(
            compare_kernel_versions("4.18.0-553.el8", "4.18.0-80.el8"),
            Ordering::Greater
        );
    }

    #[test]
    fn module_names_from_initramfs_listings() {
        assert_eq!(
            module_name_of("usr/lib/modules/6.1.0-18-amd64/kernel/drivers/block/virtio_blk.ko"),
            Some("virtio_blk")
        );
        assert_eq!(
            module_name_of("lib/modules/5.14/kernel/drivers/virtio/virtio_pci.ko.xz"),
            Some("virtio_pci")
        );
        assert_eq!(
            module_name_of("usr/lib/modules/6.1/kernel/drivers/virtio/virtio.ko.zst"),
            Some("virtio")
        );
        assert_eq!(module_name_of("usr/lib/modules/6.1/modules.dep"), None);
        assert_eq!(module_name_of("etc/virtio_blk.conf"), None);
    }

    #[test]
    fn initramfs_names_cover_debian_and_dracut() {
        let c = initramfs_candidates("6.1.0-18-amd64");
        assert_eq!(c[0], "/boot/initrd.img-6.1.0-18-amd64");
        assert_eq!(c[1], "/boot/initramfs-6.1.0-18-amd64.img");
    }

    #[test]
    fn bootloader_and_firmware_kinds_serialize_as_before() {
        for k in [
            BootloaderKind::Grub2,
            BootloaderKind::GrubLegacy,
            BootloaderKind::SystemdBoot,
            BootloaderKind::Unknown,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(k.to_string(), k.as_str());
        }
        let fw = Firmware {
            kind: crate::plan::Firmware::Uefi,
            evidence: String::new(),
        };
        assert_eq!(serde_json::to_value(&fw).unwrap()["kind"], "uefi");
    }
}
