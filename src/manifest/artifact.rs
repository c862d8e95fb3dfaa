//! The HyperSDK Artifact Manifest v1.0 dialect (`"manifest_version": "1.0"`, `disks[]`).

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use serde_json::Value;

use super::paths::*;
use super::value::*;
use crate::plan::{
    normalize_mac, valid_interface_name, ConvertPlan, Dialect, DiskPlan, DiskType, Firmware,
    FixPlan, InitramfsStrategy, NetworkMode, NicPlan, Plan, ValidatePlan, VmPlan,
};

pub(super) const ARTIFACT_TOP_KEYS: &[&str] = &[
    "manifest_version",
    "source",
    "vm",
    "disks",
    "nics",
    "notes",
    "warnings",
    "metadata",
    "pipeline",
    "configuration",
    "output",
    "options",
];
pub(super) const ARTIFACT_SOURCE_KEYS: &[&str] = &[
    "provider",
    "vm_id",
    "vm_name",
    "datacenter",
    "export_timestamp",
    "export_method",
];
pub(super) const ARTIFACT_VM_KEYS: &[&str] = &[
    "cpu",
    "mem_gb",
    "firmware",
    "secureboot",
    "os_hint",
    "os_version",
];
pub(super) const ARTIFACT_DISK_KEYS: &[&str] = &[
    "id",
    "source_format",
    "bytes",
    "local_path",
    "checksum",
    "boot_order_hint",
    "label",
    "disk_type",
];
pub(super) const ARTIFACT_FIX_KEYS: &[&str] = &[
    "enabled",
    "backup",
    "print_fstab",
    "update_grub",
    "regen_initramfs",
    "fstab_mode",
    "remove_vmware_tools",
    // h2k-guest extensions, for parity with the seed format.
    "force_initramfs",
    "initramfs_strategy",
    "regenerate_grub",
    "network_cleanup",
    "network_mode",
    "trim",
    "install_guest_agent",
];
pub(super) const ARTIFACT_NIC_KEYS: &[&str] =
    &["id", "mac", "network", "target_mac", "target_name"];
pub(super) const NETWORK_MODES: &[(&str, NetworkMode)] = &[
    ("keep-names", NetworkMode::KeepNames),
    ("rename", NetworkMode::Rename),
    ("leave", NetworkMode::Leave),
];
pub(super) const ARTIFACT_CONVERT_KEYS: &[&str] =
    &["enabled", "compress", "compress_level", "compression_type"];
pub(super) const ARTIFACT_SOURCE_FORMATS: &[(&str, &str)] = &[
    ("vmdk", "vmdk"),
    ("qcow2", "qcow2"),
    ("raw", "raw"),
    ("vhd", "vhd"),
    ("vhdx", "vhdx"),
    ("vdi", "vdi"),
];
pub(super) const DISK_TYPES: &[(&str, DiskType)] = &[
    ("boot", DiskType::Boot),
    ("data", DiskType::Data),
    ("unknown", DiskType::Unknown),
];
pub(super) const FIRMWARES: &[(&str, Option<Firmware>)] = &[
    ("bios", Some(Firmware::Bios)),
    ("uefi", Some(Firmware::Uefi)),
    ("unknown", None),
];

/// A VM with more disks than this is not a real export; the cap bounds the work per manifest.
pub const MAX_DISKS: usize = 64;

/// HyperSDK Artifact Manifest v1.0 (`"manifest_version": "1.0"`, `disks[]`).
pub(super) fn artifact_plan(
    value: &Value,
    origin: &Path,
    root: PathBuf,
    w: &mut Vec<String>,
) -> Res<Plan> {
    let top = Obj::open(String::new(), value, ARTIFACT_TOP_KEYS, w)?;
    let mut vm = VmPlan::default();

    if let Some(source) = top.object("source", ARTIFACT_SOURCE_KEYS, w)? {
        for key in ARTIFACT_SOURCE_KEYS {
            source.str(key)?;
        }
        vm.provider = source.str("provider")?.map(str::to_string);
        vm.name = source.str("vm_name")?.map(str::to_string);
        if let Some(name) = &vm.name {
            no_control_chars(&source.key("vm_name"), name)?;
        }
    }
    read_vm(&top, &mut vm, w)?;
    if let Some(nics) = top.array("nics")? {
        for (i, item) in nics.iter().enumerate() {
            vm.nics.push(artifact_nic(i, item, w)?);
        }
    }
    informational(&top, w)?;

    let disks = artifact_disks(&top, w)?;

    let mut inspect = true;
    let mut fix = FixPlan::default();
    let mut convert = ConvertPlan::default();
    let mut validate = ValidatePlan::default();
    let mut trust_backing_files = false;
    let pipeline_keys = &["load", "inspect", "fix", "convert", "validate", "libvirt"];
    let pipeline = top.object("pipeline", pipeline_keys, w)?;
    if let Some(p) = &pipeline {
        if let Some(load) = p.object("load", &["trust_backing_files"], w)? {
            trust_backing_files = load.bool("trust_backing_files")?.unwrap_or(false);
        }
        if let Some(i) = p.object("inspect", &["enabled", "collect_guest_info"], w)? {
            i.bool("collect_guest_info")?;
            inspect = i.bool("enabled")?.unwrap_or(true);
        }
        if let Some(f) = p.object("fix", ARTIFACT_FIX_KEYS, w)? {
            artifact_fix(&f, &mut fix)?;
        }

        if let Some(c) = p.object("convert", ARTIFACT_CONVERT_KEYS, w)? {
            convert.enabled = c.bool("enabled")?.unwrap_or(true);
            c.set_bool("compress", &mut convert.compress)?;
            convert.compress_level = compress_level(&c, "compress_level")?;
            if let Some(t) = c.choice("compression_type", COMPRESSION_TYPES)? {
                convert.compression_type = t;
            }
        }
        validate = validate_plan(p.object("validate", VALIDATE_KEYS, w)?)?;
    }
    // The network step maps the VM's NICs (normalized MACs) to their KVM MAC and name.
    fix.nics = vm
        .nics
        .iter()
        .map(|n| NicPlan {
            mac: n.mac.as_deref().and_then(normalize_mac),
            ..n.clone()
        })
        .collect();

    let mut format = OUTPUT_FORMATS[0].1;
    let mut base = root.clone();
    let mut filename = None;
    if let Some(out) = top.object("output", &["directory", "format", "filename"], w)? {
        if let Some(f) = output_format(&out, "format")? {
            format = f;
        }
        if let Some(dir) = out.str("directory")? {
            base = resolve_dir(&out.key("directory"), dir, &root)?;
        }
        filename = out.str("filename")?.map(|f| (out.key("filename"), f));
    }
    convert.format = format.0;
    settle_convert(&mut convert, "pipeline.convert", w);
    let libvirt = match &pipeline {
        Some(p) => super::libvirt::libvirt_plan(p, &base, &root, w)?,
        None => Default::default(),
    };

    // `output.filename` names the boot disk's output (the first after sorting); others get `<id>.<ext>`.
    let mut planned = Vec::with_capacity(disks.len());
    for (position, disk) in disks.into_iter().enumerate() {
        let (output, output_key) = match (&filename, position) {
            (Some((key, given)), 0) => (
                resolve_output(key, given, &base, &root, format, w)?,
                Some(key.clone()),
            ),
            _ => (base.join(format!("{}.{}", disk.id, format.1)), None),
        };
        planned.push((disk, output, output_key));
    }
    let placements: Vec<Placement> = planned
        .iter()
        .map(|(disk, output, output_key)| Placement {
            source: &disk.source,
            source_key: format!("disks[{}].local_path", disk.index),
            output,
            output_key: output_key.clone(),
            label: format!("disks[{}]", disk.index),
        })
        .collect();
    check_placements(&placements, &root)?;

    Ok(Plan {
        dialect: Dialect::ArtifactV1,
        manifest_path: Some(origin.to_path_buf()),
        job_name: job_name(vm.name.as_deref(), origin),
        disks: planned
            .into_iter()
            .map(|(disk, output, _)| DiskPlan {
                id: disk.id,
                source: disk.source,
                format: Some(disk.format.to_string()),
                checksum: disk.checksum,
                disk_type: disk.disk_type,
                boot_order_hint: disk.boot_order_hint,
                bytes: Some(disk.bytes),
                output,
                ova_member: None,
            })
            .collect(),
        inspect,
        fix,
        convert,
        validate,
        vm,
        libvirt,
        output_dir: root,
        trust_backing_files,
        warnings: Vec::new(),
    })
}

/// `vm{cpu, mem_gb, firmware, secureboot, os_hint, os_version}` (the seed dialect reads it too).
pub(super) fn read_vm(top: &Obj, vm: &mut VmPlan, w: &mut Vec<String>) -> Res<()> {
    if let Some(hw) = top.object("vm", ARTIFACT_VM_KEYS, w)? {
        // The exporter omits zero values; a 0 here means "unknown", not "none".
        vm.cpu = hw.u32("cpu")?.filter(|&n| n > 0);
        vm.mem_gb = hw.number("mem_gb")?.filter(|&n| n > 0.0);
        vm.firmware = hw.choice("firmware", FIRMWARES)?.flatten();
        hw.bool("secureboot")?;
        vm.os_hint = hw.str("os_hint")?.map(str::to_string);
        hw.str("os_version")?;
    }
    Ok(())
}

/// `nics[i]`: its VMware MAC, and (h2k-guest extensions) the MAC and interface name it gets on
/// KVM. MACs are checked; `target_mac` comes back normalized.
pub(super) fn artifact_nic(i: usize, item: &Value, w: &mut Vec<String>) -> Res<NicPlan> {
    let nic = Obj::open(format!("nics[{i}]"), item, ARTIFACT_NIC_KEYS, w)?;
    if let Some(id) = nic.str("id")? {
        no_control_chars(&nic.key("id"), id)?;
    }
    let mac_key = |key: &str| -> Res<Option<String>> {
        match nic.str(key)? {
            Some(m) if !valid_mac(m) => Err(bad(
                &nic.key(key),
                format!("{} is not a MAC address (XX:XX:XX:XX:XX:XX)", quote(m)),
            )),
            other => Ok(other.map(str::to_string)),
        }
    };
    let mac = mac_key("mac")?;
    let target_mac = mac_key("target_mac")?.as_deref().and_then(normalize_mac);
    let target_name = nic.str("target_name")?;
    if let Some(name) = target_name.filter(|n| !valid_interface_name(n)) {
        return Err(bad(
            &nic.key("target_name"),
            format!(
                "{} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)",
                quote(name)
            ),
        ));
    }
    Ok(NicPlan {
        mac,
        network: nic.str("network")?.map(str::to_string),
        target_mac,
        target_name: target_name.map(str::to_string),
    })
}

/// Keys kept for the exporter's own records: type-checked, otherwise ignored, except where
/// ignoring them would surprise (guest configuration injection, dry runs).
pub(super) fn informational(top: &Obj, w: &mut Vec<String>) -> Res<()> {
    if let Some(notes) = top.array("notes")? {
        for (i, note) in notes.iter().enumerate() {
            if !note.is_string() {
                return Err(expected(&format!("notes[{i}]"), "a string", note));
            }
        }
    }
    top.array("warnings")?;
    top.free_object("metadata")?;
    if let Some(config) = top.free_object("configuration")? {
        if !config.map.is_empty() {
            w.push(
                "configuration: guest configuration injection is not supported (ignored)".into(),
            );
        }
    }
    if let Some(options) = top.free_object("options")? {
        // Running "for real" when a dry run was asked for would be worse than refusing.
        if options.bool("dry_run")? == Some(true) {
            return Err(bad(
                "options.dry_run",
                "dry runs are not supported in manifests; remove the key or set it to false",
            ));
        }
    }
    Ok(())
}

/// A disk as declared, with its position in the manifest for messages.
pub(super) struct ArtifactDisk {
    index: usize,
    id: String,
    format: &'static str,
    bytes: u64,
    source: String,
    checksum: Option<String>,
    boot_order_hint: Option<u32>,
    disk_type: DiskType,
}

/// `disks[]`, validated, sorted boot-first: boot_order_hint ascending (absent last), then
/// disk_type boot, then manifest order.
pub(super) fn artifact_disks(top: &Obj, w: &mut Vec<String>) -> Res<Vec<ArtifactDisk>> {
    let items = top.array("disks")?.ok_or_else(|| missing("disks"))?;
    if items.is_empty() {
        return Err(bad("disks", "must list at least one disk"));
    }
    if items.len() > MAX_DISKS {
        return Err(bad(
            "disks",
            format!("lists {} disks (at most {MAX_DISKS})", items.len()),
        ));
    }
    let mut first_with_id: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut disks: Vec<ArtifactDisk> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let d = Obj::open(format!("disks[{index}]"), item, ARTIFACT_DISK_KEYS, w)?;
        let id = d.required_str("id")?;
        if !valid_disk_id(id) {
            return Err(bad(
                &d.key("id"),
                format!("{} does not match ^[a-zA-Z0-9_-]+$", quote(id)),
            ));
        }
        if let Some(first) = first_with_id.insert(id, index) {
            return Err(bad(
                &d.key("id"),
                format!("duplicate id {} (also disks[{}].id)", quote(id), first),
            ));
        }
        let format = d
            .choice("source_format", ARTIFACT_SOURCE_FORMATS)?
            .ok_or_else(|| missing(&d.key("source_format")))?;
        let bytes = d.uint("bytes")?.ok_or_else(|| missing(&d.key("bytes")))?;
        let source = check_source(&d.key("local_path"), d.required_str("local_path")?)?;
        let checksum = match d.str("checksum")? {
            None => None,
            Some(given) => Some(normalize_checksum(given).ok_or_else(|| {
                bad(
                    &d.key("checksum"),
                    format!("{} is not sha256:<64 hex digits>", quote(given)),
                )
            })?),
        };
        let boot_order_hint = d.u32("boot_order_hint")?;
        if let Some(label) = d.str("label")? {
            no_control_chars(&d.key("label"), label)?;
        }
        let disk_type = d.choice("disk_type", DISK_TYPES)?.unwrap_or_default();
        disks.push(ArtifactDisk {
            index,
            id: id.to_string(),
            format,
            bytes,
            source,
            checksum,
            boot_order_hint,
            disk_type,
        });
    }
    // Stable: equal keys keep manifest order.
    disks.sort_by_key(|d| {
        (
            d.boot_order_hint.is_none(),
            d.boot_order_hint,
            d.disk_type != DiskType::Boot,
        )
    });
    Ok(disks)
}

/// A present `fix` section with `enabled` absent means "fix, with the defaults"; explicit
/// `false` turns a fix off.
pub(super) fn artifact_fix(f: &Obj, fix: &mut FixPlan) -> Res<()> {
    fix.enabled = f.bool("enabled")?.unwrap_or(true);
    f.set_bool("backup", &mut fix.backup)?;
    f.bool("print_fstab")?;
    f.set_bool("update_grub", &mut fix.update_grub)?;
    // Like the seed's `regenerate`: make sure virtio drivers are in, rebuild only if missing.
    f.set_bool("regen_initramfs", &mut fix.initramfs)?;
    if let Some(mode) = f.choice("fstab_mode", FSTAB_MODES)? {
        fix.fstab_mode = mode;
    }
    f.set_bool("remove_vmware_tools", &mut fix.remove_vmware_tools)?;
    if f.bool("force_initramfs")? == Some(true) {
        fix.force_initramfs = true;
        fix.initramfs = true;
    }
    if let Some(strategy) = f.choice("initramfs_strategy", InitramfsStrategy::CHOICES)? {
        fix.initramfs_strategy = strategy;
    }
    f.set_bool("regenerate_grub", &mut fix.regenerate_grub)?;
    f.set_bool("network_cleanup", &mut fix.network_cleanup)?;
    if let Some(mode) = f.choice("network_mode", NETWORK_MODES)? {
        fix.network = mode;
    }
    f.set_bool("trim", &mut fix.trim)?;
    f.set_bool("install_guest_agent", &mut fix.guest_agent)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nic(value: Value) -> Result<NicPlan, String> {
        artifact_nic(0, &value, &mut Vec::new()).map_err(|b| format!("{}: {}", b.key, b.message))
    }

    #[test]
    fn nics_read_target_mac_and_name() {
        let n = nic(
            json!({"id": "eth0", "mac": "00:50:56:ab:cd:ef", "network": "VM Network",
                           "target_mac": "52:54:00:AB:CD:EF", "target_name": "enp1s0"}),
        )
        .unwrap();
        assert_eq!(
            n,
            NicPlan {
                mac: Some("00:50:56:ab:cd:ef".into()),
                network: Some("VM Network".into()),
                target_mac: Some("52:54:00:ab:cd:ef".into()),
                target_name: Some("enp1s0".into()),
            }
        );
        assert_eq!(nic(json!({})).unwrap(), NicPlan::default());
    }

    #[test]
    fn bad_nic_values_name_their_key() {
        for (value, key) in [
            (json!({"mac": "00:50:56"}), "nics[0].mac"),
            (
                json!({"target_mac": "zz:50:56:ab:cd:ef"}),
                "nics[0].target_mac",
            ),
            (json!({"target_mac": 7}), "nics[0].target_mac"),
            (json!({"target_name": "a b"}), "nics[0].target_name"),
            (
                json!({"target_name": "x".repeat(16)}),
                "nics[0].target_name",
            ),
        ] {
            let err = nic(value.clone()).unwrap_err();
            assert!(err.starts_with(&format!("{key}:")), "{value}: {err}");
        }
    }

    #[test]
    fn fix_initramfs_strategy_is_read() {
        let read = |value: serde_json::Value| {
            let f = Obj::open(
                "pipeline.fix".into(),
                &value,
                ARTIFACT_FIX_KEYS,
                &mut Vec::new(),
            )
            .ok()
            .unwrap();
            let mut fix = FixPlan::default();
            artifact_fix(&f, &mut fix).map(|_| fix.initramfs_strategy)
        };
        assert_eq!(
            FixPlan::default().initramfs_strategy,
            InitramfsStrategy::Auto
        );
        assert_eq!(
            read(json!({"initramfs_strategy": "rebuild"})).ok(),
            Some(InitramfsStrategy::Rebuild)
        );
        assert!(read(json!({"initramfs_strategy": "patch"})).is_err());
    }

    #[test]
    fn fix_network_mode_is_read() {
        let value = json!({"network_mode": "rename"});
        let f = Obj::open(
            "pipeline.fix".into(),
            &value,
            ARTIFACT_FIX_KEYS,
            &mut Vec::new(),
        )
        .ok()
        .unwrap();
        let mut fix = FixPlan::default();
        artifact_fix(&f, &mut fix).ok().unwrap();
        assert_eq!(fix.network, NetworkMode::Rename);
        let value = json!({"network_mode": "keep"});
        let f = Obj::open(
            "pipeline.fix".into(),
            &value,
            ARTIFACT_FIX_KEYS,
            &mut Vec::new(),
        )
        .ok()
        .unwrap();
        let err = artifact_fix(&f, &mut fix).err().unwrap();
        assert_eq!(err.key, "pipeline.fix.network_mode");
    }

    #[test]
    fn unknown_nic_keys_warn() {
        let mut w = Vec::new();
        artifact_nic(2, &json!({"model": "vmxnet3"}), &mut w)
            .ok()
            .unwrap();
        assert_eq!(w, ["unknown key nics[2].model (ignored)"]);
    }
}
