//! The seed dialect: `"version": "1.0"` with `pipeline.load/inspect/fix/convert/validate`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::paths::*;
use super::value::*;
use crate::plan::{ConvertPlan, Dialect, DiskPlan, DiskType, FixPlan, FstabMode, Plan, VmPlan};

pub(super) const SEED_TOP_KEYS: &[&str] =
    &["version", "manifest_version", "metadata", "pipeline", "vm"];
pub(super) const SEED_PIPELINE_KEYS: &[&str] =
    &["load", "inspect", "fix", "convert", "validate", "libvirt"];
pub(super) const SEED_FIX_KEYS: &[&str] = &[
    "enabled",
    "fstab",
    "grub",
    "initramfs",
    "network",
    "vmware_tools",
    "trim",
    "backup",
    "install_guest_agent",
];
pub(super) const SEED_CONVERT_KEYS: &[&str] = &[
    "enabled",
    "output_format",
    "compress",
    "compression_type",
    "compress_level",
    "output_path",
];
pub(super) const SEED_SOURCE_TYPES: &[(&str, &str)] = &[
    ("vmdk", "vmdk"),
    ("ova", "ova"),
    ("qcow2", "qcow2"),
    ("raw", "raw"),
    ("img", "img"),
    ("vhd", "vhd"),
    ("vpc", "vpc"),
    ("vhdx", "vhdx"),
    ("vdi", "vdi"),
];

/// `"version": "1.0"` with `pipeline.load/inspect/fix/convert/validate`.
pub(super) fn seed_plan(
    value: &Value,
    origin: &Path,
    root: PathBuf,
    w: &mut Vec<String>,
) -> Res<Plan> {
    let top = Obj::open(String::new(), value, SEED_TOP_KEYS, w)?;
    if top.has("vms") {
        return Err(bad(
            "vms",
            "batch manifests are not supported: write one manifest per VM",
        ));
    }
    let name = match top.free_object("metadata")? {
        Some(meta) => meta.str("name")?,
        None => None,
    };
    if let Some(name) = name {
        no_control_chars("metadata.name", name)?;
    }
    let pipeline = top.required_object("pipeline", SEED_PIPELINE_KEYS, w)?;

    let load = pipeline.required_object(
        "load",
        &["source_type", "source_path", "trust_backing_files"],
        w,
    )?;
    let trust_backing_files = load.bool("trust_backing_files")?.unwrap_or(false);
    let source_type = load.choice("source_type", SEED_SOURCE_TYPES)?;
    let source_key = load.key("source_path");
    let source = check_source(&source_key, load.required_str("source_path")?)?;

    let inspect = match pipeline.object("inspect", &["enabled", "detect_os"], w)? {
        Some(i) => {
            // OS detection always runs when fixing; the key is accepted for compatibility.
            i.bool("detect_os")?;
            i.bool("enabled")?.unwrap_or(true)
        }
        None => true,
    };

    let fix = seed_fix(pipeline.object("fix", SEED_FIX_KEYS, w)?, w)?;

    let mut convert = ConvertPlan::default();
    let mut format = OUTPUT_FORMATS[0].1;
    let mut output_path = None;
    let convert_obj = pipeline.object("convert", SEED_CONVERT_KEYS, w)?;
    if let Some(c) = &convert_obj {
        convert.enabled = c.bool("enabled")?.unwrap_or(true);
        if let Some(f) = output_format(c, "output_format")? {
            format = f;
        }
        convert.format = format.0;
        c.set_bool("compress", &mut convert.compress)?;
        if let Some(t) = c.choice("compression_type", COMPRESSION_TYPES)? {
            convert.compression_type = t;
        }
        convert.compress_level = compress_level(c, "compress_level")?;
        output_path = c.str("output_path")?.map(|p| (c.key("output_path"), p));
    }
    settle_convert(&mut convert, "pipeline.convert", w);

    let validate = validate_plan(pipeline.object("validate", VALIDATE_KEYS, w)?)?;
    let libvirt = super::libvirt::libvirt_plan(&pipeline, &root, &root, w)?;
    let mut vm = VmPlan {
        name: name.map(str::to_string),
        ..VmPlan::default()
    };
    super::artifact::read_vm(&top, &mut vm, w)?;

    let id = disk_id_from_source(&source);
    let (output, output_key) = match output_path {
        Some((key, given)) => (
            resolve_output(&key, given, &root, &root, format, w)?,
            Some(key),
        ),
        None => (root.join(format!("{id}.{}", format.1)), None),
    };
    check_placements(
        &[Placement {
            source: &source,
            source_key,
            output: &output,
            output_key,
            label: "pipeline.load.source_path".into(),
        }],
        &root,
    )?;

    Ok(Plan {
        dialect: Dialect::SeedV1,
        manifest_path: Some(origin.to_path_buf()),
        job_name: job_name(name, origin),
        disks: vec![DiskPlan {
            id,
            source,
            format: source_type.map(str::to_string),
            checksum: None,
            disk_type: DiskType::Boot,
            boot_order_hint: None,
            bytes: None,
            output,
            ova_member: None,
        }],
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

/// Absent sections keep [`FixPlan`]'s defaults; a present section with `enabled: false` turns its fix off.
pub(super) fn seed_fix(obj: Option<Obj>, w: &mut Vec<String>) -> Res<FixPlan> {
    let mut fix = FixPlan::default();
    let Some(f) = obj else {
        return Ok(fix);
    };
    fix.enabled = f.bool("enabled")?.unwrap_or(true);
    if let Some(fstab) = f.object("fstab", &["enabled", "mode"], w)? {
        let mode = fstab.choice("mode", FSTAB_MODES)?.unwrap_or_default();
        fix.fstab_mode = if fstab.bool("enabled")?.unwrap_or(true) {
            mode
        } else {
            FstabMode::Noop
        };
    }
    if let Some(grub) = f.object("grub", &["enabled", "regenerate"], w)? {
        fix.update_grub = grub.bool("enabled")?.unwrap_or(true);
        fix.regenerate_grub = grub.bool("regenerate")?.unwrap_or(false);
    }
    if let Some(initramfs) = f.object("initramfs", &["enabled", "regenerate", "force"], w)? {
        let enabled = initramfs.bool("enabled")?.unwrap_or(true);
        // `regenerate` means "make sure virtio drivers are in", not "always rebuild".
        let regenerate = initramfs.bool("regenerate")?.unwrap_or(true);
        let force = initramfs.bool("force")?.unwrap_or(false);
        fix.initramfs = enabled && (regenerate || force);
        fix.force_initramfs = enabled && force;
    }
    if let Some(network) = f.object("network", &["enabled"], w)? {
        fix.network_cleanup = network.bool("enabled")?.unwrap_or(true);
    }
    if let Some(tools) = f.object("vmware_tools", &["remove"], w)? {
        fix.remove_vmware_tools = tools.bool("remove")?.unwrap_or(false);
    }
    // `trim: true` or `trim: {enabled: true}`.
    match f.get("trim") {
        None => {}
        Some(Value::Bool(b)) => fix.trim = *b,
        Some(_) => {
            if let Some(trim) = f.object("trim", &["enabled"], w)? {
                fix.trim = trim.bool("enabled")?.unwrap_or(true);
            }
        }
    }
    f.set_bool("backup", &mut fix.backup)?;
    f.set_bool("install_guest_agent", &mut fix.guest_agent)?;
    Ok(fix)
}
