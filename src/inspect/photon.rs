//! INSPECT, Photon OS: what libguestfs does not know about it.
//!
//! libguestfs says "unknown" for Photon, so its identity comes from `/etc/os-release`
//! (`ID=photon`, `VERSION_ID=5.0`). Its boot is not Debian's either: the installer writes
//! `/boot/grub2/grub.cfg` once ("DO NOT OVERWRITE THIS FILE USING 'grub2-mkconfig'"), which
//! `load_env`s `/boot/photon.cfg` — a symlink to the booted kernel's `linux-<ver>.cfg`, a GRUB
//! environment block with `photon_linux`, `photon_initrd` and `photon_cmdline` — then
//! `user.cfg` and `systemd.cfg`, and boots `root=$rootpartition` (`PARTUUID=…`). Each kernel
//! package registers its dracut arguments in `/var/lib/initramfs/kernel/<ver>`.

use serde::{Deserialize, Serialize};

use crate::grub_env::EnvBlock;
use crate::guestfs::{Guestfs, GuestfsError};
use crate::inspect::OsInfo;

pub const GRUB_CFG: &str = "/boot/grub2/grub.cfg";
pub const PHOTON_CFG: &str = "/boot/photon.cfg";
pub const USER_CFG: &str = "/boot/user.cfg";
pub const SYSTEMD_CFG: &str = "/boot/systemd.cfg";
pub const DRIVER_LIST_DIR: &str = "/var/lib/initramfs/kernel";
/// The words the installer's grub.cfg carries so that nobody regenerates it.
const INSTALLER_MARKER: &str = "DO NOT OVERWRITE THIS FILE USING 'grub2-mkconfig'";

/// How a Photon guest boots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhotonBoot {
    /// grub.cfg carries the installer's "DO NOT OVERWRITE" marker.
    pub installer_grub_cfg: bool,
    /// grub.cfg's `set rootpartition=` (the `root=` every boot gets first).
    pub root_partition: Option<String>,
    /// What `/boot/photon.cfg` is: the `/boot/…` file it links to, or itself.
    pub photon_cfg: Option<String>,
    /// Whether `/boot/photon.cfg` is a symlink (what the kernel packages make).
    pub photon_cfg_is_link: bool,
    pub photon_linux: Option<String>,
    pub photon_initrd: Option<String>,
    pub photon_cmdline: Option<String>,
    /// The kernel photon.cfg boots (`photon_linux` without `vmlinuz-`).
    pub kernel: Option<String>,
    /// Its package: `linux`, `linux-esx`, `linux-rt`, …
    pub flavour: Option<String>,
    /// Every `/boot/linux-*.cfg` with the kernel it boots.
    pub kernel_cfgs: Vec<KernelCfg>,
    /// Kernels registered in /var/lib/initramfs/kernel.
    pub driver_lists: Vec<String>,
    pub user_cfg: bool,
    pub systemd_cfg: bool,
    /// Env blocks that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// One installed kernel's environment block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelCfg {
    /// `/boot/linux-esx-6.1.10-11.ph5-esx.cfg`.
    pub path: String,
    pub version: String,
    pub flavour: String,
}

/// `/etc/os-release` as `(key, value)` with shell quoting removed.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

/// The value of `key` in a parsed os-release (the last assignment wins, as in a shell).
pub fn release_value<'a>(release: &'a [(String, String)], key: &str) -> Option<&'a str> {
    release
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `5.0` → (5, 0); `5` → (5, 0).
pub fn version_numbers(version_id: &str) -> (i32, i32) {
    let mut it = version_id.split('.').map(|p| p.trim().parse::<i32>().ok());
    let major = it.next().flatten().unwrap_or(0);
    let minor = it.next().flatten().unwrap_or(0);
    (major, minor)
}

pub fn is_installer_grub_cfg(text: &str) -> bool {
    text.contains(INSTALLER_MARKER)
}

/// The value of the last `set rootpartition=…` in grub.cfg.
pub fn root_partition(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("set rootpartition="))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .next_back()
}

/// `vmlinuz-6.1.10-11.ph5` (or `/boot/vmlinuz-…`) → `6.1.10-11.ph5`.
pub fn kernel_of_photon_linux(photon_linux: &str) -> Option<String> {
    let name = photon_linux.rsplit('/').next()?;
    name.strip_prefix("vmlinuz-")
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The kernel package a `linux-<…>.cfg` belongs to: its name minus `-<version>.cfg`
/// (`linux-esx-6.1.10-11.ph5-esx.cfg` → `linux-esx`), else the version's suffix.
pub fn flavour_of(cfg_name: &str, version: &str) -> String {
    if let Some(pkg) = cfg_name
        .strip_suffix(".cfg")
        .and_then(|s| s.strip_suffix(version))
        .and_then(|s| s.strip_suffix('-'))
        .filter(|p| p.starts_with("linux"))
    {
        return pkg.to_string();
    }
    for suffix in ["esx", "rt", "secure", "aws"] {
        if version.ends_with(&format!("-{suffix}")) {
            return format!("linux-{suffix}");
        }
    }
    "linux".to_string()
}

/// Where a `/boot/photon.cfg` symlink points, confined to `/boot`: `linux-X.cfg` or
/// `/boot/linux-X.cfg` → `/boot/linux-X.cfg`; anything leaving /boot is None.
pub fn confined_boot_path(link_target: &str) -> Option<String> {
    let name = link_target.strip_prefix("/boot/").unwrap_or(link_target);
    let ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    ok.then(|| format!("/boot/{name}"))
}

/// Fill in what libguestfs left unknown from /etc/os-release (h2k-guest's own inspection
/// has read it already), and for Photon its boot.
pub fn complete(g: &Guestfs, os: &mut OsInfo) -> Result<(), GuestfsError> {
    if os.distro == "unknown" {
        if let Ok(text) = g.read_to_string("/etc/os-release") {
            apply_os_release(os, &parse_os_release(&text));
        }
    }
    if os.distro != "photon" {
        return Ok(());
    }
    let boot = read_boot(g)?;
    if let Some(k) = &boot.kernel {
        if let Some(kernel) = os.kernels.iter().find(|x| &x.version == k) {
            os.default_kernel = Some(kernel.version.clone());
            os.virtio_blk_in_default_initramfs = kernel.has_virtio_blk;
        }
    }
    os.photon = Some(boot);
    Ok(())
}

/// The os-release facts for a distribution libguestfs did not recognise.
pub fn apply_os_release(os: &mut OsInfo, release: &[(String, String)]) {
    let get = |k: &str| release_value(release, k);
    if get("ID") != Some("photon") {
        return;
    }
    os.distro = "photon".into();
    if let Some(name) = get("PRETTY_NAME").or(get("NAME")) {
        os.product_name = name.to_string();
    }
    if let Some(v) = get("VERSION_ID") {
        (os.major_version, os.minor_version) = version_numbers(v);
    }
    os.package_format = "rpm".into();
    os.package_management = "tdnf".into();
}

fn read_env(g: &Guestfs, path: &str, unreadable: &mut Vec<String>) -> Option<EnvBlock> {
    let bytes = g.read_file(path).ok()?;
    match EnvBlock::parse(&bytes) {
        Ok(b) => Some(b),
        Err(e) => {
            unreadable.push(format!("{path}: {e}"));
            None
        }
    }
}

fn read_boot(g: &Guestfs) -> Result<PhotonBoot, GuestfsError> {
    let mut boot = PhotonBoot::default();
    if let Ok(text) = g.read_to_string(GRUB_CFG) {
        boot.installer_grub_cfg = is_installer_grub_cfg(&text);
        boot.root_partition = root_partition(&text);
    }
    match g.readlink(PHOTON_CFG) {
        Ok(target) => {
            boot.photon_cfg_is_link = true;
            boot.photon_cfg = confined_boot_path(&target);
            if boot.photon_cfg.is_none() {
                boot.unreadable
                    .push(format!("{PHOTON_CFG}: links outside /boot ({target})"));
            }
        }
        Err(_) if g.is_file(PHOTON_CFG)? => boot.photon_cfg = Some(PHOTON_CFG.into()),
        Err(_) => {}
    }
    let mut unreadable = Vec::new();
    if let Some(env) = boot
        .photon_cfg
        .clone()
        .and_then(|p| read_env(g, &p, &mut unreadable))
    {
        boot.photon_linux = env.get("photon_linux").map(str::to_string);
        boot.photon_initrd = env.get("photon_initrd").map(str::to_string);
        boot.photon_cmdline = env.get("photon_cmdline").map(str::to_string);
        boot.kernel = boot
            .photon_linux
            .as_deref()
            .and_then(kernel_of_photon_linux);
    }
    let mut cfgs = g.glob_expand("/boot/linux-*.cfg")?;
    cfgs.sort();
    for path in cfgs {
        let Some(env) = read_env(g, &path, &mut unreadable) else {
            continue;
        };
        let Some(version) = env.get("photon_linux").and_then(kernel_of_photon_linux) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(&path);
        let flavour = flavour_of(name, &version);
        if boot.photon_cfg.as_deref() == Some(path.as_str()) {
            boot.flavour = Some(flavour.clone());
        }
        boot.kernel_cfgs.push(KernelCfg {
            path,
            version,
            flavour,
        });
    }
    if boot.flavour.is_none() {
        boot.flavour = boot.kernel.as_deref().map(|k| flavour_of("", k));
    }
    boot.unreadable.extend(unreadable);
    if g.is_dir(DRIVER_LIST_DIR)? {
        let mut lists = g.ls(DRIVER_LIST_DIR)?;
        lists.sort();
        boot.driver_lists = lists;
    }
    boot.user_cfg = g.is_file(USER_CFG)?;
    boot.systemd_cfg = g.is_file(SYSTEMD_CFG)?;
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OS_RELEASE: &str = "NAME=\"VMware Photon OS\"\nVERSION=\"5.0\"\nID=photon\nVERSION_ID=5.0\nPRETTY_NAME=\"VMware Photon OS/Linux\"\nANSI_COLOR=\"1;34\"\nHOME_URL=\"https://vmware.github.io/photon/\"\nBUG_REPORT_URL=\"https://github.com/vmware/photon/issues\"\n";

    fn unknown_os() -> OsInfo {
        OsInfo {
            root: "/dev/sda3".into(),
            os_type: "linux".into(),
            distro: "unknown".into(),
            product_name: "unknown".into(),
            major_version: 0,
            minor_version: 0,
            arch: "x86_64".into(),
            osinfo: None,
            package_format: "unknown".into(),
            package_management: "unknown".into(),
            hostname: "photon".into(),
            mountpoints: vec![],
            filesystems: vec![],
            kernels: vec![],
            default_kernel: None,
            bootloader: crate::inspect::Bootloader {
                kind: crate::inspect::BootloaderKind::Grub2,
                config: Some(GRUB_CFG.into()),
                bls: false,
            },
            firmware: crate::inspect::Firmware {
                kind: crate::plan::Firmware::Uefi,
                evidence: String::new(),
            },
            initramfs_tool: crate::inspect::InitramfsTool::Dracut,
            virtio_blk_in_default_initramfs: None,
            photon: None,
            found_by: String::new(),
        }
    }

    #[test]
    fn os_release_quotes_are_removed() {
        let r = parse_os_release(OS_RELEASE);
        assert!(r.contains(&("ID".into(), "photon".into())));
        assert!(r.contains(&("VERSION_ID".into(), "5.0".into())));
        assert!(r.contains(&("NAME".into(), "VMware Photon OS".into())));
        let r = parse_os_release("# c\nID='x'\n\nNAME=\"a \\\"b\\\"\"\nbroken\n");
        assert_eq!(
            r,
            vec![
                ("ID".to_string(), "x".to_string()),
                ("NAME".to_string(), "a \"b\"".to_string())
            ]
        );
    }

    #[test]
    fn photon_is_recognised_from_os_release() {
        let mut os = unknown_os();
        apply_os_release(&mut os, &parse_os_release(OS_RELEASE));
        assert_eq!(os.distro, "photon");
        assert_eq!((os.major_version, os.minor_version), (5, 0));
        assert_eq!(os.product_name, "VMware Photon OS/Linux");
        assert_eq!(os.package_format, "rpm");
        assert_eq!(os.package_management, "tdnf");
    }

    #[test]
    fn other_os_releases_leave_unknown_alone() {
        let mut os = unknown_os();
        apply_os_release(&mut os, &parse_os_release("ID=plan9\nVERSION_ID=4\n"));
        assert_eq!(os.distro, "unknown");
        assert_eq!(os.package_management, "unknown");
        apply_os_release(&mut os, &[]);
        assert_eq!(os.distro, "unknown");
    }

    #[test]
    fn versions() {
        assert_eq!(version_numbers("5.0"), (5, 0));
        assert_eq!(version_numbers("4"), (4, 0));
        assert_eq!(version_numbers("3.0.1"), (3, 0));
        assert_eq!(version_numbers("rolling"), (0, 0));
        assert_eq!(version_numbers(""), (0, 0));
    }

    #[test]
    fn installer_grub_cfg_and_its_root_partition() {
        let cfg = "# Begin /boot/grub2/grub.cfg\n\n# Generated by Photon Installer\n# DO NOT OVERWRITE THIS FILE USING 'grub2-mkconfig'\n# UNLESS YOU ARE ABSOULUTELY SURE\n\nset default=0\nload_env -f /boot/photon.cfg\nset rootpartition=PARTUUID=8a1c6d2e-0d4f-4b7e-9c51-2f1e4b9b7a10\n\nmenuentry \"Photon\" {\n  linux /boot/$photon_linux root=$rootpartition $photon_cmdline $systemd_cmdline $user_cmdline\n}\n";
        assert!(is_installer_grub_cfg(cfg));
        assert_eq!(
            root_partition(cfg).as_deref(),
            Some("PARTUUID=8a1c6d2e-0d4f-4b7e-9c51-2f1e4b9b7a10")
        );
        assert!(!is_installer_grub_cfg(
            "### BEGIN /etc/grub.d/10_linux ###\n"
        ));
        assert_eq!(root_partition("set root=hd0\n"), None);
        assert_eq!(
            root_partition("  set rootpartition=/dev/sda3\nset rootpartition=\"/dev/sdb3\"\n")
                .as_deref(),
            Some("/dev/sdb3")
        );
    }

    #[test]
    fn kernel_names() {
        assert_eq!(
            kernel_of_photon_linux("vmlinuz-6.1.10-11.ph5-esx").as_deref(),
            Some("6.1.10-11.ph5-esx")
        );
        assert_eq!(
            kernel_of_photon_linux("/boot/vmlinuz-6.1.0-18-amd64").as_deref(),
            Some("6.1.0-18-amd64")
        );
        assert_eq!(kernel_of_photon_linux("vmlinuz-"), None);
        assert_eq!(kernel_of_photon_linux("bzImage"), None);
    }

    #[test]
    fn flavours_from_the_cfg_name_or_the_version() {
        assert_eq!(
            flavour_of("linux-esx-6.1.10-11.ph5-esx.cfg", "6.1.10-11.ph5-esx"),
            "linux-esx"
        );
        assert_eq!(
            flavour_of("linux-6.1.10-11.ph5.cfg", "6.1.10-11.ph5"),
            "linux"
        );
        assert_eq!(
            flavour_of("linux-rt-6.1.10-11.ph5-rt.cfg", "6.1.10-11.ph5-rt"),
            "linux-rt"
        );
        assert_eq!(flavour_of("odd.cfg", "6.1.10-11.ph5-esx"), "linux-esx");
        assert_eq!(flavour_of("", "6.1.0-18-amd64"), "linux");
        assert_eq!(
            flavour_of("linux-6.1.0-18-amd64.cfg", "6.1.0-18-amd64"),
            "linux"
        );
    }

    #[test]
    fn photon_cfg_links_stay_in_boot() {
        assert_eq!(
            confined_boot_path("linux-6.1.10-11.ph5.cfg").as_deref(),
            Some("/boot/linux-6.1.10-11.ph5.cfg")
        );
        assert_eq!(
            confined_boot_path("/boot/linux-x.cfg").as_deref(),
            Some("/boot/linux-x.cfg")
        );
        for bad in [
            "../etc/shadow",
            "/etc/shadow",
            "",
            "..",
            "sub/linux.cfg",
            "/boot/../x",
        ] {
            assert_eq!(confined_boot_path(bad), None, "{bad}");
        }
    }
}
