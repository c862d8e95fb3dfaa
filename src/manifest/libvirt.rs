//! `pipeline.libvirt`, in both dialects: the libvirt domain XML written beside the outputs.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::paths::{check_no_symlinks, escapes, normalize};
use super::value::*;
use crate::plan::{valid_libvirt_uri, LibvirtPlan, DEFAULT_LIBVIRT_URI};

pub(super) const LIBVIRT_KEYS: &[&str] = &["enabled", "xml", "define", "network", "console_log"];

/// `libvirt: true`, or `{enabled, xml, define, network, console_log}`. `xml` and
/// `console_log` are relative to `base` and must stay inside the output directory `root`
/// (libvirt writes the console log as root when the VM runs, so a manifest must not point it
/// at a file of the host's).
pub(super) fn libvirt_plan(
    pipeline: &Obj,
    base: &Path,
    root: &Path,
    w: &mut Vec<String>,
) -> Res<LibvirtPlan> {
    let mut plan = LibvirtPlan::default();
    match pipeline.get("libvirt") {
        None => return Ok(plan),
        Some(Value::Bool(b)) => {
            plan.xml = *b;
            return Ok(plan);
        }
        Some(other) if !other.is_object() => {
            return Err(expected(
                &pipeline.key("libvirt"),
                "true, false or an object",
                other,
            ))
        }
        Some(_) => {}
    }
    let Some(l) = pipeline.object("libvirt", LIBVIRT_KEYS, w)? else {
        return Ok(plan);
    };
    if l.bool("enabled")? == Some(false) {
        return Ok(plan);
    }
    plan.xml = true;
    if let Some(x) = l.str("xml")? {
        plan.xml_path = Some(confined_file(&l.key("xml"), x, base, root)?);
    }
    let define_key = l.key("define");
    match l.get("define") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => plan.define = Some(DEFAULT_LIBVIRT_URI.into()),
        Some(Value::String(uri)) if valid_libvirt_uri(uri) => plan.define = Some(uri.clone()),
        Some(Value::String(uri)) => {
            return Err(bad(
                &define_key,
                format!(
                    "{} is not a libvirt URI (qemu:///system, qemu+ssh://HOST/system)",
                    quote(uri)
                ),
            ))
        }
        Some(other) => return Err(expected(&define_key, "true, false or a libvirt URI", other)),
    }
    if let Some(n) = l.str("network")? {
        plan.network = n.parse().map_err(|_| {
            bad(
                &l.key("network"),
                format!("{} is not network:NAME, bridge:NAME or user", quote(n)),
            )
        })?;
    }
    if let Some(c) = l.str("console_log")? {
        plan.console_log = Some(confined_file(&l.key("console_log"), c, base, root)?);
    }
    Ok(plan)
}

/// A file named relative to `base`, inside `root` (not `root` itself), reached through no
/// symlink below it.
fn confined_file(key: &str, given: &str, base: &Path, root: &Path) -> Res<PathBuf> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    no_control_chars(key, given)?;
    let path = normalize(&base.join(given));
    if !path.starts_with(root) || path == root {
        return Err(escapes(key, given, root));
    }
    if given.ends_with('/') {
        return Err(bad(
            key,
            format!("{} names a directory, not a file", quote(given)),
        ));
    }
    check_no_symlinks(key, &path, root)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::LibvirtNetwork;
    use serde_json::json;

    fn read(value: Value, root: &Path) -> Result<(LibvirtPlan, Vec<String>), String> {
        let top = json!({ "libvirt": value });
        let mut w = Vec::new();
        let p = Obj::open("pipeline".into(), &top, &["libvirt"], &mut w).map_err(|b| b.message)?;
        libvirt_plan(&p, &root.join("sub"), root, &mut w)
            .map(|l| (l, w))
            .map_err(|b| format!("{}: {}", b.key, b.message))
    }

    #[test]
    fn libvirt_section_reads_every_key() {
        let root = Path::new("/out");
        assert_eq!(read(json!(false), root).unwrap().0, LibvirtPlan::default());
        let (on, _) = read(json!(true), root).unwrap();
        assert!(on.xml && on.xml_path.is_none() && on.define.is_none());
        let (full, w) = read(
            json!({"xml": "vm.xml", "define": true, "network": "bridge:br0",
                   "console_log": "../logs/vm.console", "colour": "red"}),
            root,
        )
        .unwrap();
        assert_eq!(
            full,
            LibvirtPlan {
                xml: true,
                xml_path: Some("/out/sub/vm.xml".into()),
                define: Some("qemu:///system".into()),
                network: LibvirtNetwork::Bridge("br0".into()),
                console_log: Some("/out/logs/vm.console".into()),
            }
        );
        assert_eq!(w, ["unknown key pipeline.libvirt.colour (ignored)"]);
        let (remote, _) = read(json!({"define": "qemu+ssh://kvm1/system"}), root).unwrap();
        assert_eq!(remote.define.as_deref(), Some("qemu+ssh://kvm1/system"));
        let (off, _) = read(json!({"enabled": false, "define": true}), root).unwrap();
        assert_eq!(off, LibvirtPlan::default());
    }

    #[test]
    fn both_dialects_read_pipeline_libvirt_and_the_seed_reads_vm() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("web01.vmdk");
        std::fs::write(&disk, b"x").unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let seed = format!(
            r#"{{"version": "1.0", "vm": {{"cpu": 4, "mem_gb": 8, "firmware": "uefi"}},
                "pipeline": {{"load": {{"source_path": "{}"}},
                              "libvirt": {{"xml": "vm.xml", "define": "qemu:///session"}}}}}}"#,
            disk.display()
        );
        let plan = crate::manifest::parse_manifest(&seed, &dir.path().join("m.json"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.libvirt_xml_path(), Some(root.join("vm.xml")));
        assert_eq!(plan.libvirt.define.as_deref(), Some("qemu:///session"));
        assert_eq!(
            (plan.vm.cpu, plan.vm.memory_mib(), plan.vm.firmware),
            (Some(4), Some(8192), Some(crate::plan::Firmware::Uefi))
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let artifact = format!(
            r#"{{"manifest_version": "1.0", "source": {{"vm_name": "web01"}},
                "disks": [{{"id": "boot", "source_format": "vmdk", "bytes": 1,
                            "local_path": "{}"}}],
                "output": {{"directory": "out"}},
                "pipeline": {{"libvirt": {{"console_log": "web01.log"}}}}}}"#,
            disk.display()
        );
        let plan = crate::manifest::parse_manifest(&artifact, &dir.path().join("a.json"), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.libvirt_xml_path(), Some(root.join("out/web01.xml")));
        assert_eq!(plan.libvirt.console_log, Some(root.join("out/web01.log")));
        let bad = artifact.replace("web01.log", "../../x.log");
        let e = crate::manifest::parse_manifest(&bad, &dir.path().join("a.json"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.json: pipeline.libvirt.console_log: \"../../x.log\" escapes"),
            "{e}"
        );
    }

    #[test]
    fn bad_libvirt_values_name_their_key() {
        let root = Path::new("/out");
        for (value, expected) in [
            (
                json!("yes"),
                "pipeline.libvirt: expected true, false or an object, found string \"yes\"",
            ),
            (
                json!({"xml": "../../etc/x.xml"}),
                "pipeline.libvirt.xml: \"../../etc/x.xml\" escapes the output directory /out",
            ),
            (
                json!({"console_log": "/etc/shadow"}),
                "pipeline.libvirt.console_log: \"/etc/shadow\" escapes the output directory /out",
            ),
            (
                json!({"xml": "d/"}),
                "pipeline.libvirt.xml: \"d/\" names a directory, not a file",
            ),
            (
                json!({"define": "system"}),
                "pipeline.libvirt.define: \"system\" is not a libvirt URI",
            ),
            (
                json!({"define": 1}),
                "pipeline.libvirt.define: expected true, false or a libvirt URI, found number 1",
            ),
            (
                json!({"network": "nat"}),
                "pipeline.libvirt.network: \"nat\" is not network:NAME, bridge:NAME or user",
            ),
            (
                json!({"enabled": "yes"}),
                "pipeline.libvirt.enabled: expected a boolean",
            ),
        ] {
            let e = read(value.clone(), root).unwrap_err();
            assert!(e.starts_with(expected), "{value}: {e}");
        }
    }
}
