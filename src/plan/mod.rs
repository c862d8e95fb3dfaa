//! The one internal description of a job, whatever it came from: a seed-format manifest, a
//! HyperSDK Artifact Manifest, or `h2k-guest fix DISK -o OUT` flags. Everything downstream
//! (pipeline, report, daemon) reads only this.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod libvirt;
pub use libvirt::*;

/// Where the job's description came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// `"version": "1.0"` with `pipeline.load/inspect/fix/convert` (the seed's format).
    SeedV1,
    /// HyperSDK Artifact Manifest v1.0 (`"manifest_version": "1.0"`, `disks[]`).
    ArtifactV1,
    /// Command-line flags, no manifest.
    Cli,
}

/// How `/etc/fstab` (and crypttab) device names are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FstabMode {
    /// Every `/dev/sdX`, `/dev/hdX`, `/dev/vdX`, `/dev/disk/by-path`, `/dev/disk/by-id` spec → `UUID=`.
    #[default]
    StabilizeAll,
    /// Only `/dev/disk/by-path/...` specs → `UUID=`.
    BypathOnly,
    /// Leave fstab alone.
    Noop,
}

impl std::str::FromStr for FstabMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stabilize-all" => Ok(FstabMode::StabilizeAll),
            "bypath-only" => Ok(FstabMode::BypathOnly),
            "noop" => Ok(FstabMode::Noop),
            other => Err(format!(
                "unknown fstab mode {other:?} (expected stabilize-all, bypath-only or noop)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Qcow2,
    Raw,
}

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Raw => "raw",
        }
    }
}

/// qcow2 compression algorithm when `compress` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompressionType {
    /// Fast and small; needs QEMU ≥ 5.1 to read.
    #[default]
    Zstd,
    /// For old readers.
    Zlib,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Boot,
    Data,
    #[default]
    Unknown,
}

/// One source disk and where its converted copy goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskPlan {
    /// Stable name: the artifact manifest's `id`, else derived from the file name.
    pub id: String,
    /// Absolute path, or an `nbd://` / `nbd+unix://` URI.
    pub source: String,
    /// Declared format (vmdk, qcow2, raw, vhd, vhdx, vdi); None = detect.
    pub format: Option<String>,
    /// Expected `sha256:<64 hex>`, verified before anything else when given.
    pub checksum: Option<String>,
    pub disk_type: DiskType,
    pub boot_order_hint: Option<u32>,
    /// Declared size in bytes (artifact manifest `bytes`), checked against the file.
    pub bytes: Option<u64>,
    /// Absolute output path (the final name; `.part` is added while writing).
    pub output: PathBuf,
    /// When `source` is an OVA: the disk (tar member) this entry converts. LOAD fills it in
    /// for every disk of the OVA, in the OVF's order ([`crate::load::ova::expand_plan`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ova_member: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FixPlan {
    pub enabled: bool,
    pub fstab_mode: FstabMode,
    /// Rewrite root= on the kernel command line (in /etc/default/grub and grub.cfg).
    pub update_grub: bool,
    /// Regenerate grub.cfg with the guest's grub-mkconfig even when patching its kernel lines
    /// in place is enough.
    pub regenerate_grub: bool,
    /// Make sure virtio drivers are in the initramfs (rebuild only when missing).
    pub initramfs: bool,
    /// Rebuild the initramfs even when virtio drivers are already present.
    pub force_initramfs: bool,
    /// How the virtio drivers get into the initramfs (`--initramfs`).
    pub initramfs_strategy: InitramfsStrategy,
    pub remove_vmware_tools: bool,
    /// Install qemu-guest-agent offline (Debian 11/12/13: fetched on the host, installed with
    /// the guest's dpkg).
    pub guest_agent: bool,
    /// Network continuity on (false = `--no-network-cleanup`, the same as [`NetworkMode::Leave`]).
    pub network_cleanup: bool,
    /// How the interfaces the guest configures meet the KVM NICs.
    pub network: NetworkMode,
    /// The VM's NICs with their KVM MAC/name (manifest `nics[]`, then `--nic` flags).
    pub nics: Vec<NicPlan>,
    /// fstrim guest filesystems before the copy so free blocks are not copied.
    pub trim: bool,
    /// Keep `FILE.h2k-orig` copies of changed guest files inside the guest.
    pub backup: bool,
}

impl Default for FixPlan {
    fn default() -> Self {
        FixPlan {
            enabled: true,
            fstab_mode: FstabMode::StabilizeAll,
            update_grub: true,
            regenerate_grub: false,
            initramfs: true,
            force_initramfs: false,
            initramfs_strategy: InitramfsStrategy::Auto,
            remove_vmware_tools: false,
            guest_agent: false,
            network_cleanup: true,
            network: NetworkMode::KeepNames,
            nics: Vec::new(),
            trim: true,
            backup: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConvertPlan {
    pub enabled: bool,
    pub format: OutputFormat,
    pub compress: bool,
    pub compression_type: CompressionType,
    /// zstd/zlib level when the format supports one (informational for qcow2).
    pub compress_level: Option<u8>,
}

impl Default for ConvertPlan {
    fn default() -> Self {
        ConvertPlan {
            enabled: true,
            format: OutputFormat::Qcow2,
            compress: false,
            compression_type: CompressionType::Zstd,
            compress_level: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidatePlan {
    pub enabled: bool,
    /// `qemu-img check` the output.
    pub check_image_integrity: bool,
    /// Boot the outputs (all disks, in order) on virtio with the VM's NICs and the probe of
    /// `validate --boot --probe`; the job fails unless the guest comes up whole.
    pub boot: bool,
    pub boot_timeout_secs: u64,
    /// Interfaces the boot check's guest must have up (`validate.expect_ifaces`, `fix
    /// --expect-iface`), as `validate --expect-iface` asks.
    pub expect_ifaces: Vec<ExpectIface>,
}

impl Default for ValidatePlan {
    fn default() -> Self {
        ValidatePlan {
            enabled: true,
            check_image_integrity: true,
            boot: false,
            boot_timeout_secs: 300,
            expect_ifaces: Vec::new(),
        }
    }
}

/// `--expect-iface NAME[=ADDR[/PREFIX]]`: an interface that must be up (with that address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectIface {
    pub name: String,
    pub address: Option<String>,
}

/// As it was given: `NAME` or `NAME=ADDR[/PREFIX]`.
impl std::fmt::Display for ExpectIface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Some(address) => write!(f, "{}={address}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl std::str::FromStr for ExpectIface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, address) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let bad_name = name.is_empty()
            || name.len() > 15
            || name.contains(|c: char| c == '/' || c.is_whitespace());
        if bad_name {
            return Err(format!(
                "{s:?}: expected NAME[=ADDR/PREFIX] with an interface name (at most 15 \
                 characters, no '/' or spaces)"
            ));
        }
        if let Some(a) = address {
            let (ip, prefix) = match a.split_once('/') {
                Some((ip, p)) => (ip, Some(p)),
                None => (a, None),
            };
            let ip_ok = ip.parse::<std::net::IpAddr>().is_ok();
            let prefix_ok = prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|n| n <= 128));
            if !ip_ok || !prefix_ok {
                return Err(format!(
                    "{s:?}: {a:?} is not an address (10.0.2.15/24, fd00::2/64 or without the \
                     prefix)"
                ));
            }
        }
        Ok(ExpectIface {
            name: name.to_string(),
            address: address.map(str::to_string),
        })
    }
}

/// Facts about the VM from the manifest (used for the boot check and the report).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct VmPlan {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub cpu: Option<u32>,
    pub mem_gb: Option<f64>,
    pub firmware: Option<Firmware>,
    pub os_hint: Option<String>,
    pub nics: Vec<NicPlan>,
    /// The OVF descriptor the facts the manifest did not give came from (`vm.ova: vm.ovf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_from: Option<String>,
}

impl VmPlan {
    /// Memory in MiB, when known.
    pub fn memory_mib(&self) -> Option<u64> {
        self.mem_gb
            .filter(|g| g.is_finite() && *g > 0.0)
            .map(|g| (g * 1024.0).round() as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct NicPlan {
    /// The MAC the NIC had on VMware (lower case, colons).
    pub mac: Option<String>,
    pub network: Option<String>,
    /// The MAC it gets on KVM; None = it keeps `mac` (libvirt and virt-v2v keep it).
    pub target_mac: Option<String>,
    /// The interface name the guest should use for it on KVM (`--network rename`).
    pub target_name: Option<String>,
}

impl NicPlan {
    /// `OLD_MAC=NEW_MAC[,name=NEWNAME]` (the `--nic` flag); MACs come back normalized.
    pub fn parse_flag(s: &str) -> Result<NicPlan, String> {
        let (old, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("--nic {s:?}: expected OLD_MAC=NEW_MAC[,name=NEWNAME]"))?;
        let mut parts = rest.split(',');
        let new = parts.next().unwrap_or_default();
        let mac = normalize_mac(old)
            .ok_or_else(|| format!("--nic {s:?}: {old:?} is not a MAC address"))?;
        let target_mac = normalize_mac(new)
            .ok_or_else(|| format!("--nic {s:?}: {new:?} is not a MAC address"))?;
        let mut target_name = None;
        for part in parts {
            match part.split_once('=') {
                Some(("name", name)) if valid_interface_name(name) => {
                    target_name = Some(name.to_string())
                }
                Some(("name", name)) => {
                    return Err(format!(
                        "--nic {s:?}: {name:?} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "--nic {s:?}: unknown part {part:?} (expected name=NEWNAME)"
                    ))
                }
            }
        }
        Ok(NicPlan {
            mac: Some(mac),
            network: None,
            target_mac: Some(target_mac),
            target_name,
        })
    }
}

/// `aa:bb:cc:dd:ee:ff` from a MAC written with `:` or `-` in any case; None when it is not one.
pub fn normalize_mac(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split([':', '-']).collect();
    let ok = groups.len() == 6
        && groups
            .iter()
            .all(|g| g.len() == 2 && g.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| groups.join(":").to_ascii_lowercase())
}

/// A Linux interface name h2k-guest will write: 1 to 15 characters of `[A-Za-z0-9_.-]`, not
/// `.`/`..`, not starting with `-`.
pub fn valid_interface_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Add `--nic` flags to the NICs the manifest gave: a flag for a MAC the manifest lists sets
/// that NIC's target; the same old MAC twice among the flags is refused.
pub fn merge_nic_flags(nics: &mut Vec<NicPlan>, flags: &[String]) -> Result<(), String> {
    let mut seen: Vec<String> = Vec::new();
    for flag in flags {
        let given = NicPlan::parse_flag(flag)?;
        let mac = given.mac.clone().unwrap_or_default();
        if seen.contains(&mac) {
            return Err(format!("--nic {mac}: given twice"));
        }
        seen.push(mac.clone());
        let existing = nics
            .iter_mut()
            .find(|n| n.mac.as_deref().and_then(normalize_mac).as_deref() == Some(mac.as_str()));
        match existing {
            Some(nic) => {
                nic.target_mac = given.target_mac;
                if given.target_name.is_some() {
                    nic.target_name = given.target_name;
                }
            }
            None => nics.push(given),
        }
    }
    Ok(())
}

/// How the initramfs step puts the virtio drivers into the image of the kernel that boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsStrategy {
    /// Regenerate the image with the guest's own dracut / update-initramfs.
    Rebuild,
    /// Append the missing modules (and a fresh module index, and the image's copies of the
    /// files this run changed) as a cpio archive to the existing image; fail if it cannot.
    Append,
    /// Append when the image can be read and extended and the result verifies, else rebuild.
    #[default]
    Auto,
}

impl InitramfsStrategy {
    pub const CHOICES: &'static [(&'static str, InitramfsStrategy)] = &[
        ("rebuild", InitramfsStrategy::Rebuild),
        ("append", InitramfsStrategy::Append),
        ("auto", InitramfsStrategy::Auto),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InitramfsStrategy::Rebuild => "rebuild",
            InitramfsStrategy::Append => "append",
            InitramfsStrategy::Auto => "auto",
        }
    }
}

impl std::str::FromStr for InitramfsStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::CHOICES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                format!("unknown initramfs strategy {s:?} (expected rebuild, append or auto)")
            })
    }
}

/// What the network step does with the interface names the guest configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// Pin each configured name to its NIC on KVM with a systemd `.link` file.
    #[default]
    KeepNames,
    /// Rewrite the configuration to the new names given per NIC.
    Rename,
    /// Change nothing; warn about names that will not exist on KVM.
    Leave,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::KeepNames => "keep-names",
            NetworkMode::Rename => "rename",
            NetworkMode::Leave => "leave",
        }
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep-names" => Ok(NetworkMode::KeepNames),
            "rename" => Ok(NetworkMode::Rename),
            "leave" => Ok(NetworkMode::Leave),
            other => Err(format!(
                "unknown network mode {other:?} (expected keep-names, rename or leave)"
            )),
        }
    }
}

impl FixPlan {
    /// The network mode in force: `network_cleanup: false` means leave.
    pub fn network_mode(&self) -> NetworkMode {
        if self.network_cleanup {
            self.network
        } else {
            NetworkMode::Leave
        }
    }
}

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub dialect: Dialect,
    /// The manifest file, when there is one.
    pub manifest_path: Option<PathBuf>,
    /// A short name for logs, reports and the daemon's output directory.
    pub job_name: String,
    /// Boot disk first (boot_order_hint, then disk_type boot, then manifest order).
    pub disks: Vec<DiskPlan>,
    pub inspect: bool,
    pub fix: FixPlan,
    pub convert: ConvertPlan,
    pub validate: ValidatePlan,
    pub vm: VmPlan,
    /// The libvirt domain XML (off unless asked for).
    pub libvirt: LibvirtPlan,
    /// Directory outputs are confined to.
    pub output_dir: PathBuf,
    /// Follow backing files and VMDK extents outside the source's own directory tree (and
    /// protocol/`json:` names). Off by default: an image is untrusted data (`--trust-backing-files`).
    pub trust_backing_files: bool,
    /// Unknown keys and other non-fatal remarks found while reading the manifest.
    pub warnings: Vec<String>,
}

/// A job name safe for file names: `[A-Za-z0-9_.-]`, other characters → `_`.
pub fn sanitize_job_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // No leading '-' (read as an option) or '.', and short enough for one path component.
    let trimmed: String = cleaned
        .trim_start_matches(['.', '-'])
        .trim_end_matches('.')
        .chars()
        .take(64)
        .collect();
    if trimmed.is_empty() {
        "job".into()
    } else {
        trimmed
    }
}

impl Plan {
    /// The manifest-free form: one disk, one output, defaults for everything else.
    pub fn for_single_disk(source: &str, format: Option<String>, output: PathBuf) -> Plan {
        let output_dir = output
            .parent()
            .map(PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let stem = output
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("disk")
            .to_string();
        Plan {
            dialect: Dialect::Cli,
            manifest_path: None,
            job_name: sanitize_job_name(&stem),
            disks: vec![DiskPlan {
                id: sanitize_job_name(&stem),
                source: source.to_string(),
                format,
                checksum: None,
                disk_type: DiskType::Boot,
                boot_order_hint: Some(0),
                bytes: None,
                output,
                ova_member: None,
            }],
            inspect: true,
            fix: FixPlan::default(),
            convert: ConvertPlan::default(),
            validate: ValidatePlan::default(),
            vm: VmPlan::default(),
            libvirt: LibvirtPlan::default(),
            output_dir,
            trust_backing_files: false,
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_file_name_safe() {
        assert_eq!(sanitize_job_name("web-01.prod"), "web-01.prod");
        assert_eq!(sanitize_job_name("my vm/../x"), "my_vm_.._x");
        assert_eq!(sanitize_job_name(".."), "job");
        assert_eq!(sanitize_job_name(""), "job");
        assert_eq!(sanitize_job_name("--rm"), "rm");
        assert_eq!(sanitize_job_name(&"x".repeat(300)).len(), 64);
    }

    #[test]
    fn nic_flags_parse_and_normalize() {
        let n = NicPlan::parse_flag("00:50:56:AA:BB:CC=52-54-00-01-02-03,name=enp1s0").unwrap();
        assert_eq!(n.mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(n.target_mac.as_deref(), Some("52:54:00:01:02:03"));
        assert_eq!(n.target_name.as_deref(), Some("enp1s0"));
        let plain = NicPlan::parse_flag("00:50:56:aa:bb:cc=00:50:56:aa:bb:cc").unwrap();
        assert_eq!(plain.target_name, None);
        for bad in [
            "00:50:56:aa:bb:cc",
            "00:50:56:aa:bb=52:54:00:01:02:03",
            "00:50:56:aa:bb:cc=nope",
            "00:50:56:aa:bb:cc=52:54:00:01:02:03,name=",
            "00:50:56:aa:bb:cc=52:54:00:01:02:03,name=a/b",
            "00:50:56:aa:bb:cc=52:54:00:01:02:03,name=averyveryverylongname",
            "00:50:56:aa:bb:cc=52:54:00:01:02:03,mtu=9000",
        ] {
            assert!(NicPlan::parse_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nic_flags_merge_into_manifest_nics_and_refuse_duplicates() {
        let mut nics = vec![NicPlan {
            mac: Some("00:50:56:AA:BB:CC".into()),
            network: Some("VM Network".into()),
            ..NicPlan::default()
        }];
        merge_nic_flags(
            &mut nics,
            &[
                "00:50:56:aa:bb:cc=52:54:00:01:02:03".into(),
                "00:50:56:aa:bb:dd=52:54:00:01:02:04,name=eth1".into(),
            ],
        )
        .unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].target_mac.as_deref(), Some("52:54:00:01:02:03"));
        assert_eq!(nics[0].network.as_deref(), Some("VM Network"));
        assert_eq!(nics[1].target_name.as_deref(), Some("eth1"));
        let err = merge_nic_flags(
            &mut Vec::new(),
            &[
                "00:50:56:aa:bb:cc=52:54:00:01:02:03".into(),
                "00:50:56:AA:BB:CC=52:54:00:01:02:05".into(),
            ],
        )
        .unwrap_err();
        assert!(err.contains("given twice"), "{err}");
    }

    #[test]
    fn network_modes_parse_and_no_cleanup_means_leave() {
        for m in [
            NetworkMode::KeepNames,
            NetworkMode::Rename,
            NetworkMode::Leave,
        ] {
            assert_eq!(m.as_str().parse::<NetworkMode>().unwrap(), m);
        }
        assert!("keep".parse::<NetworkMode>().is_err());
        let mut fix = FixPlan::default();
        assert_eq!(fix.network_mode(), NetworkMode::KeepNames);
        fix.network = NetworkMode::Rename;
        fix.network_cleanup = false;
        assert_eq!(fix.network_mode(), NetworkMode::Leave);
    }

    #[test]
    fn single_disk_plan_puts_outputs_beside_the_output() {
        let p = Plan::for_single_disk("/src/vm.vmdk", None, PathBuf::from("/out/vm.qcow2"));
        assert_eq!(p.output_dir, PathBuf::from("/out"));
        assert_eq!(p.job_name, "vm");
        assert_eq!(p.disks[0].output, PathBuf::from("/out/vm.qcow2"));
        let rel = Plan::for_single_disk("/src/vm.vmdk", None, PathBuf::from("vm.qcow2"));
        assert_eq!(rel.output_dir, PathBuf::from("."));
    }
}
