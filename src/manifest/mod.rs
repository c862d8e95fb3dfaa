//! Manifest reading: seed format and HyperSDK Artifact Manifest v1.0, JSON or YAML → [`crate::plan::Plan`].
//!
//! Both dialects are parsed into a `serde_json::Value` (YAML too) and walked by hand, so every
//! error names its key path (`disks[1].id`) and every unknown key is a warning, never a failure.
//! Source files are checked for existence here so `h2k-guest manifest validate` catches a wrong
//! path before an appliance is launched. `manifests/README.md` documents every key.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::plan::Plan;

/// A manifest is a few KiB; anything larger is refused unread.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// What went wrong, for callers that react differently (the daemon's error report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestErrorKind {
    /// The file cannot be read, or is not a text manifest at all (empty, binary, too large).
    Read,
    /// Not well-formed JSON or YAML.
    Syntax,
    /// Well-formed, but a key is missing, has the wrong type or a bad value.
    Invalid,
}

/// A manifest problem; `Display` is one line naming the file, then the `line:column` or key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    file: String,
    kind: ManifestErrorKind,
    key: Option<String>,
    line_column: Option<(usize, usize)>,
    message: String,
}

impl ManifestError {
    fn new(
        file: &Path,
        kind: ManifestErrorKind,
        key: Option<String>,
        line_column: Option<(usize, usize)>,
        message: impl Into<String>,
    ) -> Self {
        // One line whatever the source: a parser message or a value must not split the report.
        let one_line = |s: String| s.replace(['\n', '\r'], " ");
        ManifestError {
            file: one_line(file.display().to_string()),
            kind,
            key: key.map(one_line),
            line_column,
            message: one_line(message.into()),
        }
    }

    pub fn kind(&self) -> ManifestErrorKind {
        self.kind
    }

    /// The manifest file as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The key path at fault (`pipeline.convert.compress`, `disks[1].id`), when there is one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// 1-based line and column of a syntax error.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        self.line_column
    }

    /// The message without the file and key prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line_column, &self.key) {
            (Some((line, column)), _) => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.message)
            }
            (None, Some(key)) => write!(f, "{}: {key}: {}", self.file, self.message),
            (None, None) => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Read a manifest file (JSON for `.json`, YAML for `.yaml`/`.yml`, sniffed otherwise) into a
/// [`Plan`]. `output_dir` confines every output; by default it is the manifest's directory.
pub fn load_manifest(path: &Path, output_dir: Option<&Path>) -> Result<Plan, ManifestError> {
    let text = read_text(path)?;
    parse_manifest(&text, path, output_dir)
}

/// [`load_manifest`] on text already read; `origin` names the file in messages, picks the syntax
/// by extension, gives the default output directory and the fallback job name.
pub fn parse_manifest(
    text: &str,
    origin: &Path,
    output_dir: Option<&Path>,
) -> Result<Plan, ManifestError> {
    let unreadable =
        |message: &str| ManifestError::new(origin, ManifestErrorKind::Read, None, None, message);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(unreadable("empty manifest"));
    }
    if text.contains('\0') {
        return Err(unreadable(BINARY));
    }
    let value = parse_value(text, origin)?;
    let mut warnings = Vec::new();
    let root = output_root(origin, output_dir);
    let mut plan = build_plan(&value, origin, root, &mut warnings).map_err(|bad| {
        let key = (!bad.key.is_empty()).then_some(bad.key);
        ManifestError::new(origin, ManifestErrorKind::Invalid, key, None, bad.message)
    })?;
    plan.warnings = warnings;
    Ok(plan)
}

const BINARY: &str = "binary file, not a JSON or YAML manifest";

fn read_text(path: &Path) -> Result<String, ManifestError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail =
        |message: String| ManifestError::new(path, ManifestErrorKind::Read, None, None, message);
    // Non-blocking so a FIFO given as the manifest cannot hang the open; fstat then refuses it.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(io_reason(&e)))?;
    let meta = file.metadata().map_err(|e| fail(io_reason(&e)))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not a manifest file".into()));
    }
    if !meta.is_file() {
        return Err(fail(format!(
            "is {}, not a regular file",
            file_type_name(&meta.file_type())
        )));
    }
    let mut bytes = Vec::new();
    // Read one byte past the cap so "exactly 4 MiB" and "more" are told apart without reading more.
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(io_reason(&e)))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(fail(format!(
            "manifest larger than {} MiB",
            MAX_MANIFEST_BYTES >> 20
        )));
    }
    if bytes.contains(&0) {
        return Err(fail(BINARY.into()));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not a text file (invalid UTF-8 at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

pub(crate) use crate::util::file_type_name;

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn parse_value(text: &str, origin: &Path) -> Result<Value, ManifestError> {
    let syntax = |what: &str, line_column: Option<(usize, usize)>, message: String| {
        ManifestError::new(
            origin,
            ManifestErrorKind::Syntax,
            None,
            line_column,
            format!("invalid {what}: {}", strip_locations(&message)),
        )
    };
    if is_json(origin, text) {
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = serde::de::DeserializeSeed::deserialize(UniqueKeys(String::new()), &mut de)
            .and_then(|value| de.end().map(|()| value));
        parsed.map_err(|e| {
            let at = (e.line() > 0).then(|| (e.line(), e.column().max(1)));
            syntax("JSON", at, e.to_string())
        })
    } else {
        let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e.location().map(|l| (l.line(), l.column()));
            syntax("YAML", at, e.to_string())
        })?;
        yaml.apply_merge()
            .map_err(|e| syntax("YAML", None, e.to_string()))?;
        Ok(yaml_to_json(yaml))
    }
}

/// Parses JSON into a [`Value`] like serde_json does, but refuses a key given twice in one object
/// (serde_json would keep the last silently; YAML already refuses). The field is the key path.
struct UniqueKeys(String);

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(n.into())
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) =
            seq.next_element_seed(UniqueKeys(format!("{}[{}]", self.0, items.len())))?
        {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.0, &key);
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {path}")));
            }
            let value = map.next_value_seed(UniqueKeys(path))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn is_json(origin: &Path, text: &str) -> bool {
    let ext = origin
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("json") => true,
        Some("yaml" | "yml") => false,
        _ => text.trim_start().starts_with('{'),
    }
}

/// The location is reported separately as `file:line:column`; drop serde's " at line L column C".
fn strip_locations(message: &str) -> String {
    const AT_LINE: &str = " at line ";
    let skip_digits = |s: &str| {
        s.trim_start_matches(|c: char| c.is_ascii_digit())
            .to_string()
    };
    let mut out = String::new();
    let mut rest = message.to_string();
    while let Some(i) = rest.find(AT_LINE) {
        out.push_str(&rest[..i]);
        let after_line = skip_digits(&rest[i + AT_LINE.len()..]);
        rest = match after_line.strip_prefix(" column ") {
            Some(after) => skip_digits(after),
            None => after_line,
        };
    }
    out.push_str(&rest);
    out
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into()
            } else if let Some(i) = n.as_i64() {
                i.into()
            } else {
                // .inf / .nan have no JSON form: keep them as text so type errors still show them.
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or_else(|| Value::String(n.to_string()))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (yaml_key(k), yaml_to_json(v)))
                .collect(),
        ),
        Y::Tagged(tagged) => yaml_to_json(tagged.value),
    }
}

fn yaml_key(key: serde_yaml_ng::Value) -> String {
    use serde_yaml_ng::Value as Y;
    match key {
        Y::String(s) => s,
        Y::Number(n) => n.to_string(),
        Y::Bool(b) => b.to_string(),
        Y::Null => "null".into(),
        other => format!("{other:?}"),
    }
}

mod artifact;
mod libvirt;
mod paths;
mod seed;
mod value;

pub use artifact::MAX_DISKS;
use artifact::*;
use paths::*;
use seed::*;
use value::*;

fn build_plan(value: &Value, origin: &Path, root: PathBuf, w: &mut Vec<String>) -> Res<Plan> {
    let Some(map) = value.as_object() else {
        return Err(bad(
            "",
            format!(
                "expected an object at the top level, found {}",
                describe(value)
            ),
        ));
    };
    let present = |key: &str| map.get(key).filter(|v| !v.is_null());
    if let Some(version) = present("manifest_version") {
        check_version("manifest_version", version)?;
        let has_seed_load = map
            .get("pipeline")
            .and_then(|p| p.get("load"))
            .is_some_and(|l| !l.is_null());
        // hyperctl's quick-start writes the seed layout under "manifest_version".
        if present("disks").is_none() && has_seed_load {
            w.push(
                "manifest_version with pipeline.load and no disks[]: read as the seed format"
                    .into(),
            );
            return seed_plan(value, origin, root, w);
        }
        artifact_plan(value, origin, root, w)
    } else if let Some(version) = present("version") {
        check_version("version", version)?;
        seed_plan(value, origin, root, w)
    } else {
        Err(bad(
            "version",
            "missing: expected \"version\": \"1.0\" (seed format) or \"manifest_version\": \"1.0\" (HyperSDK artifact manifest)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{
        CompressionType, ConvertPlan, Dialect, DiskType, Firmware, FixPlan, FstabMode, NicPlan,
        OutputFormat, ValidatePlan, VmPlan,
    };
    use tempfile::TempDir;

    /// `seed/manifest-v1.0-example.json` from the design notes, verbatim.
    const SEED: &str = r#"{
  "version": "1.0",
  "pipeline": {
    "load": {
      "source_type": "vmdk",
      "source_path": "/var/lib/hyper2kvm/images/photon.vmdk"
    },
    "inspect": {
      "enabled": true,
      "detect_os": true
    },
    "fix": {
      "fstab": {"enabled": true, "mode": "stabilize-all"},
      "grub": {"enabled": true},
      "initramfs": {"enabled": true, "regenerate": true}
    },
    "convert": {
      "output_format": "qcow2",
      "compress": true,
      "output_path": "photon-converted.qcow2"
    }
  }
}
"#;
    const SEED_SOURCE: &str = "/var/lib/hyper2kvm/images/photon.vmdk";
    const SUM_A: &str = "sha256:a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0a1b2";
    const SUM_B: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A temp dir holding the manifest's would-be location and some disk files.
    struct Fixture {
        dir: TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Create a small file standing in for a disk; return its absolute path.
        fn disk(&self, name: &str) -> String {
            let path = self.path(name);
            fs::write(&path, b"not really a disk").unwrap();
            path.display().to_string()
        }

        fn parse(&self, name: &str, text: &str) -> Result<Plan, ManifestError> {
            parse_manifest(text, &self.path(name), None)
        }

        fn seed(&self) -> String {
            SEED.replace(SEED_SOURCE, &self.disk("photon.vmdk"))
        }

        fn artifact(&self) -> String {
            let data = self.disk("data.vmdk");
            let boot = self.disk("boot.vmdk");
            format!(
                r#"{{
  "manifest_version": "1.0",
  "source": {{"provider": "vsphere", "vm_id": "vm-1234", "vm_name": "Web Server 01",
              "datacenter": "DC1", "export_timestamp": "2026-01-21T18:30:00Z",
              "export_method": "govc-export"}},
  "vm": {{"cpu": 4, "mem_gb": 16, "firmware": "uefi", "secureboot": false,
          "os_hint": "linux", "os_version": "Ubuntu 22.04"}},
  "disks": [
    {{"id": "data-disk", "source_format": "vmdk", "bytes": 2048, "local_path": "{data}",
      "checksum": "{SUM_B}", "boot_order_hint": 1, "label": "Data", "disk_type": "data"}},
    {{"id": "boot-disk", "source_format": "vmdk", "bytes": 1024, "local_path": "{boot}",
      "checksum": "{SUM_A}", "boot_order_hint": 0, "label": "OS", "disk_type": "boot"}}
  ],
  "nics": [{{"id": "eth0", "mac": "00:50:56:ab:cd:ef", "network": "VM Network"}}],
  "notes": ["exported by govc"],
  "warnings": [{{"stage": "export", "message": "snapshot skipped"}}],
  "metadata": {{"hypersdk_version": "0.1.0", "job_id": "job-123", "tags": {{"env": "prod"}}}},
  "pipeline": {{
    "inspect": {{"enabled": true, "collect_guest_info": true}},
    "fix": {{"enabled": true, "backup": true, "update_grub": true, "regen_initramfs": true,
             "fstab_mode": "bypath-only", "remove_vmware_tools": true}},
    "convert": {{"enabled": true, "compress": true, "compress_level": 6}},
    "validate": {{"enabled": true, "check_image_integrity": true}}
  }},
  "output": {{"directory": "out", "format": "qcow2"}},
  "options": {{"dry_run": false, "verbose": 1}}
}}"#
            )
        }

        /// The error text for `key` in `name`, as the user sees it.
        fn at(&self, name: &str, key: &str, message: &str) -> String {
            format!("{}: {key}: {message}", self.path(name).display())
        }
    }

    fn err(result: Result<Plan, ManifestError>) -> ManifestError {
        match result {
            Ok(plan) => panic!("expected an error, got {plan:#?}"),
            Err(e) => e,
        }
    }

    /// Replace the first occurrence of `from` (which must be present) in the manifest text.
    fn edit(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from:?} not in manifest");
        text.replacen(from, to, 1)
    }

    // ---- the seed format --------------------------------------------------------------------

    #[test]
    fn seed_example_maps_to_plan() {
        let fx = Fixture::new();
        let plan = fx.parse("photon-1769251638.json", &fx.seed()).unwrap();
        assert_eq!(plan.dialect, Dialect::SeedV1);
        assert_eq!(plan.job_name, "photon-1769251638");
        assert_eq!(plan.output_dir, fx.dir.path());
        assert_eq!(plan.manifest_path, Some(fx.path("photon-1769251638.json")));
        assert_eq!(plan.disks.len(), 1);
        let disk = &plan.disks[0];
        assert_eq!(disk.id, "photon");
        assert_eq!(disk.source, fx.path("photon.vmdk").display().to_string());
        assert_eq!(disk.format.as_deref(), Some("vmdk"));
        assert_eq!(disk.disk_type, DiskType::Boot);
        assert_eq!(disk.output, fx.path("photon-converted.qcow2"));
        assert!(plan.inspect);
        assert_eq!(
            plan.fix,
            FixPlan {
                fstab_mode: FstabMode::StabilizeAll,
                update_grub: true,
                initramfs: true,
                force_initramfs: false,
                ..FixPlan::default()
            }
        );
        assert!(plan.convert.enabled && plan.convert.compress);
        assert_eq!(plan.convert.format, OutputFormat::Qcow2);
        assert_eq!(plan.convert.compression_type, CompressionType::Zstd);
        assert_eq!(plan.validate, ValidatePlan::default());
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn seed_optional_sections_map() {
        let fx = Fixture::new();
        let text = edit(
            &fx.seed(),
            r#""initramfs": {"enabled": true, "regenerate": true}"#,
            r#""initramfs": {"enabled": true, "regenerate": true, "force": true},
      "network": {"enabled": false},
      "vmware_tools": {"remove": true},
      "trim": false,
      "backup": true"#,
        );
        let text = edit(
            &text,
            r#""compress": true,"#,
            r#""compress": true, "compression_type": "zlib", "compress_level": 9,"#,
        );
        let text = edit(
            &text,
            "\n  }\n}",
            r#",
    "validate": {"enabled": true, "check_image_integrity": false, "boot": true, "boot_timeout": 90,
                 "expect_ifaces": ["ens192", "ens224=10.0.2.15/24", "eth0=fd00::2"]}
  }
}"#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert!(plan.fix.initramfs && plan.fix.force_initramfs);
        assert!(!plan.fix.network_cleanup);
        assert!(plan.fix.remove_vmware_tools);
        assert!(!plan.fix.trim);
        assert!(plan.fix.backup);
        assert_eq!(plan.convert.compression_type, CompressionType::Zlib);
        assert_eq!(plan.convert.compress_level, Some(9));
        assert_eq!(
            plan.validate,
            ValidatePlan {
                enabled: true,
                check_image_integrity: false,
                boot: true,
                boot_timeout_secs: 90,
                expect_ifaces: ["ens192", "ens224=10.0.2.15/24", "eth0=fd00::2"]
                    .map(|s| s.parse().unwrap())
                    .to_vec(),
            }
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn seed_disabled_fixes() {
        let fx = Fixture::new();
        let text = fx
            .seed()
            .replace(r#""enabled": true, "mode""#, r#""enabled": false, "mode""#)
            .replace(
                r#""grub": {"enabled": true}"#,
                r#""grub": {"enabled": false}"#,
            )
            .replace(r#""regenerate": true"#, r#""regenerate": false"#);
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.fix.fstab_mode, FstabMode::Noop);
        assert!(!plan.fix.update_grub);
        assert!(!plan.fix.initramfs && !plan.fix.force_initramfs);
    }

    #[test]
    fn seed_grub_regenerate() {
        let fx = Fixture::new();
        let plan = fx.parse("m.json", &fx.seed()).unwrap();
        assert!(plan.fix.update_grub && !plan.fix.regenerate_grub);
        let text = edit(
            &fx.seed(),
            r#""grub": {"enabled": true}"#,
            r#""grub": {"enabled": true, "regenerate": true}"#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert!(plan.fix.update_grub && plan.fix.regenerate_grub);
        let text = edit(
            &fx.seed(),
            r#""grub": {"enabled": true}"#,
            r#""grub": {"enabled": true, "regenerate": "yes"}"#,
        );
        let err = fx.parse("m.json", &text).unwrap_err().to_string();
        assert!(err.contains("regenerate"), "{err}");
    }

    #[test]
    fn seed_trim_accepts_object_form() {
        let fx = Fixture::new();
        let text = edit(
            &fx.seed(),
            r#""grub": {"enabled": true},"#,
            r#""grub": {"enabled": true}, "trim": {"enabled": false},"#,
        );
        assert!(!fx.parse("m.json", &text).unwrap().fix.trim);
    }

    #[test]
    fn seed_minimal_uses_defaults() {
        let fx = Fixture::new();
        let src = fx.disk("vm disk.v2.vmdk");
        let text =
            format!(r#"{{"version": "1.0", "pipeline": {{"load": {{"source_path": "{src}"}}}}}}"#);
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.disks[0].id, "vm_disk_v2");
        assert_eq!(plan.disks[0].format, None);
        assert_eq!(plan.disks[0].output, fx.path("vm_disk_v2.qcow2"));
        assert_eq!(plan.fix, FixPlan::default());
        assert_eq!(plan.convert, ConvertPlan::default());
        assert!(plan.inspect);
    }

    #[test]
    fn seed_metadata_name_is_job_name() {
        let fx = Fixture::new();
        let text = edit(
            &fx.seed(),
            "\"version\": \"1.0\",",
            r#""version": "1.0", "metadata": {"name": "photon os/migration", "created_by": "me"},"#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.job_name, "photon_os_migration");
        assert_eq!(plan.vm.name.as_deref(), Some("photon os/migration"));
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn seed_yaml() {
        let fx = Fixture::new();
        let src = fx.disk("photon.vmdk");
        let text = format!(
            "# the seed example, in YAML\n\
             version: 1.0\n\
             pipeline:\n  \
               load: {{source_type: vmdk, source_path: {src}}}\n  \
               inspect: {{enabled: true, detect_os: true}}\n  \
               fix:\n    \
                 fstab: {{enabled: true, mode: stabilize-all}}\n    \
                 grub: {{enabled: true}}\n    \
                 initramfs: {{enabled: true, regenerate: true}}\n  \
               convert:\n    \
                 output_format: qcow2\n    \
                 compress: true\n    \
                 output_path: photon-converted.qcow2\n"
        );
        let yaml = fx.parse("photon.yaml", &text).unwrap();
        let json = fx.parse("photon.json", &fx.seed()).unwrap();
        assert_eq!(yaml.disks, json.disks);
        assert_eq!(yaml.fix, json.fix);
        assert_eq!(yaml.convert, json.convert);
        assert_eq!(yaml.validate, json.validate);
        assert!(yaml.warnings.is_empty(), "{:?}", yaml.warnings);
    }

    #[test]
    fn seed_layout_under_manifest_version_is_read_as_seed() {
        let fx = Fixture::new();
        let text = edit(&fx.seed(), "\"version\"", "\"manifest_version\"");
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.dialect, Dialect::SeedV1);
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("read as the seed format"));
    }

    #[test]
    fn seed_nbd_source_is_not_checked_on_disk() {
        let fx = Fixture::new();
        let text = SEED.replace(SEED_SOURCE, "nbd+unix:///disk?socket=/run/x.sock");
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.disks[0].source, "nbd+unix:///disk?socket=/run/x.sock");
        assert_eq!(plan.disks[0].id, "disk-0");
        let text = SEED.replace(SEED_SOURCE, "nbd://host:10809/export");
        assert!(fx.parse("m.json", &text).is_ok());
    }

    #[test]
    fn seed_batch_is_refused() {
        let fx = Fixture::new();
        let e = err(fx.parse(
            "m.json",
            r#"{"version": "1.0", "batch": true, "vms": [{"name": "vm1"}]}"#,
        ));
        assert_eq!(e.key(), Some("vms"));
    }

    // ---- the artifact manifest --------------------------------------------------------------

    #[test]
    fn artifact_maps_to_plan_boot_disk_first() {
        let fx = Fixture::new();
        let plan = fx.parse("artifact-manifest.json", &fx.artifact()).unwrap();
        assert_eq!(plan.dialect, Dialect::ArtifactV1);
        assert_eq!(plan.job_name, "Web_Server_01");
        let ids: Vec<&str> = plan.disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["boot-disk", "data-disk"]);
        let boot = &plan.disks[0];
        assert_eq!(boot.source, fx.path("boot.vmdk").display().to_string());
        assert_eq!(boot.format.as_deref(), Some("vmdk"));
        assert_eq!(boot.checksum.as_deref(), Some(SUM_A));
        assert_eq!(boot.disk_type, DiskType::Boot);
        assert_eq!(boot.boot_order_hint, Some(0));
        assert_eq!(boot.bytes, Some(1024));
        assert_eq!(boot.output, fx.path("out/boot-disk.qcow2"));
        assert_eq!(plan.disks[1].output, fx.path("out/data-disk.qcow2"));
        assert_eq!(plan.disks[1].checksum.as_deref(), Some(SUM_B));
        assert_eq!(plan.output_dir, fx.dir.path());
        assert!(plan.inspect);
        assert_eq!(
            plan.fix,
            FixPlan {
                fstab_mode: FstabMode::BypathOnly,
                remove_vmware_tools: true,
                backup: true,
                nics: plan.vm.nics.clone(),
                ..FixPlan::default()
            }
        );
        assert!(plan.convert.compress);
        assert_eq!(plan.convert.compress_level, Some(6));
        assert_eq!(plan.validate, ValidatePlan::default());
        assert_eq!(
            plan.vm,
            VmPlan {
                name: Some("Web Server 01".into()),
                provider: Some("vsphere".into()),
                cpu: Some(4),
                mem_gb: Some(16.0),
                firmware: Some(Firmware::Uefi),
                os_hint: Some("linux".into()),
                nics: vec![NicPlan {
                    mac: Some("00:50:56:ab:cd:ef".into()),
                    network: Some("VM Network".into()),
                    ..NicPlan::default()
                }],
                hardware_from: None,
            }
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn artifact_yaml_matches_json() {
        let fx = Fixture::new();
        let data = fx.disk("data.vmdk");
        let boot = fx.disk("boot.vmdk");
        let text = format!(
            r#"manifest_version: "1.0"
source:
  provider: vsphere
  vm_id: vm-1234
  vm_name: Web Server 01
  datacenter: DC1
  export_timestamp: "2026-01-21T18:30:00Z"
  export_method: govc-export
vm: {{cpu: 4, mem_gb: 16, firmware: uefi, secureboot: false, os_hint: linux, os_version: Ubuntu 22.04}}
disks:
  - id: data-disk
    source_format: vmdk
    bytes: 2048
    local_path: {data}
    checksum: "{SUM_B}"
    boot_order_hint: 1
    label: Data
    disk_type: data
  - id: boot-disk
    source_format: vmdk
    bytes: 1024
    local_path: {boot}
    checksum: "{SUM_A}"
    boot_order_hint: 0
    label: OS
    disk_type: boot
nics:
  - {{id: eth0, mac: "00:50:56:ab:cd:ef", network: VM Network}}
notes: [exported by govc]
warnings:
  - {{stage: export, message: snapshot skipped}}
metadata: {{hypersdk_version: 0.1.0, job_id: job-123, tags: {{env: prod}}}}
pipeline:
  inspect: {{enabled: true, collect_guest_info: true}}
  fix:
    enabled: true
    backup: true
    update_grub: true
    regen_initramfs: true
    fstab_mode: bypath-only
    remove_vmware_tools: true
  convert: {{enabled: true, compress: true, compress_level: 6}}
  validate: {{enabled: true, check_image_integrity: true}}
output: {{directory: out, format: qcow2}}
options: {{dry_run: false, verbose: 1}}
"#
        );
        let yaml = fx.parse("artifact-manifest.yml", &text).unwrap();
        let json = fx.parse("artifact-manifest.json", &fx.artifact()).unwrap();
        assert_eq!(yaml.disks, json.disks);
        assert_eq!(yaml.fix, json.fix);
        assert_eq!(yaml.convert, json.convert);
        assert_eq!(yaml.vm, json.vm);
        assert_eq!(yaml.job_name, json.job_name);
        assert!(yaml.warnings.is_empty(), "{:?}", yaml.warnings);
    }

    #[test]
    fn artifact_minimal_uses_defaults() {
        let fx = Fixture::new();
        let src = fx.disk("d.vmdk");
        let text = format!(
            r#"{{"manifest_version": "1.0", "disks": [{{"id": "disk-0", "source_format": "vmdk", "bytes": 10, "local_path": "{src}"}}]}}"#
        );
        let plan = fx.parse("vm7.json", &text).unwrap();
        assert_eq!(plan.job_name, "vm7");
        assert_eq!(plan.disks[0].output, fx.path("disk-0.qcow2"));
        assert_eq!(plan.disks[0].disk_type, DiskType::Unknown);
        assert_eq!(plan.disks[0].checksum, None);
        assert_eq!(plan.fix, FixPlan::default());
        assert_eq!(plan.convert, ConvertPlan::default());
        assert_eq!(plan.validate, ValidatePlan::default());
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn artifact_sort_falls_back_to_disk_type_then_order() {
        let fx = Fixture::new();
        let disk = |id: &str, extra: &str| {
            let src = fx.disk(&format!("{id}.vmdk"));
            format!(
                r#"{{"id": "{id}", "source_format": "vmdk", "bytes": 1, "local_path": "{src}"{extra}}}"#
            )
        };
        let disks = [
            disk("a", ""),
            disk("b", r#", "disk_type": "data""#),
            disk("c", r#", "disk_type": "boot""#),
            disk("d", r#", "boot_order_hint": 5"#),
            disk("e", r#", "boot_order_hint": 2, "disk_type": "data""#),
        ];
        let text = format!(
            r#"{{"manifest_version": "1.0", "disks": [{}]}}"#,
            disks.join(",")
        );
        let plan = fx.parse("m.json", &text).unwrap();
        let ids: Vec<&str> = plan.disks.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["e", "d", "c", "a", "b"]);
    }

    #[test]
    fn artifact_output_filename_names_the_boot_disk() {
        let fx = Fixture::new();
        let text = edit(
            &fx.artifact(),
            r#""format": "qcow2"}"#,
            r#""format": "raw", "filename": "web01"}"#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.convert.format, OutputFormat::Raw);
        assert_eq!(plan.disks[0].output, fx.path("out/web01.raw"));
        assert_eq!(plan.disks[1].output, fx.path("out/data-disk.raw"));
        // qemu-img cannot compress raw output.
        assert!(!plan.convert.compress);
        assert_eq!(
            plan.warnings,
            ["pipeline.convert.compress: compression applies to qcow2 only (ignored for raw output)"]
        );
    }

    #[test]
    fn artifact_img_format_gives_img_extension() {
        let fx = Fixture::new();
        let text = edit(&fx.artifact(), r#""format": "qcow2""#, r#""format": "img""#);
        let text = edit(&text, r#""compress": true, "#, "");
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.convert.format, OutputFormat::Raw);
        assert_eq!(plan.disks[0].output, fx.path("out/boot-disk.img"));
    }

    #[test]
    fn artifact_firmware_unknown_and_zero_sizes_are_none() {
        let fx = Fixture::new();
        let text = edit(
            &fx.artifact(),
            r#""cpu": 4, "mem_gb": 16, "firmware": "uefi""#,
            r#""cpu": 0, "mem_gb": 0, "firmware": "unknown""#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(
            (plan.vm.cpu, plan.vm.mem_gb, plan.vm.firmware),
            (None, None, None)
        );
    }

    #[test]
    fn install_guest_agent_is_read_in_both_dialects() {
        let fx = Fixture::new();
        assert!(!fx.parse("s.json", &fx.seed()).unwrap().fix.guest_agent);
        let seed = edit(
            &fx.seed(),
            r#""initramfs": {"enabled": true, "regenerate": true}"#,
            r#""initramfs": {"enabled": true, "regenerate": true}, "install_guest_agent": true"#,
        );
        let plan = fx.parse("s.json", &seed).unwrap();
        assert!(plan.fix.guest_agent && plan.warnings.is_empty(), "{plan:?}");
        let artifact = edit(
            &fx.artifact(),
            r#""remove_vmware_tools": true}"#,
            r#""remove_vmware_tools": true, "install_guest_agent": true}"#,
        );
        let plan = fx.parse("a.json", &artifact).unwrap();
        assert!(plan.fix.guest_agent && plan.warnings.is_empty(), "{plan:?}");
        let bad = edit(
            &fx.artifact(),
            r#""remove_vmware_tools": true}"#,
            r#""remove_vmware_tools": true, "install_guest_agent": "yes"}"#,
        );
        assert!(fx.parse("a.json", &bad).is_err());
    }

    #[test]
    fn artifact_fix_extensions_and_disabled_stages() {
        let fx = Fixture::new();
        let text = edit(
            &fx.artifact(),
            r#""remove_vmware_tools": true}"#,
            r#""remove_vmware_tools": true, "force_initramfs": true, "regenerate_grub": true, "network_cleanup": false, "trim": false}"#,
        );
        let text = edit(
            &text,
            r#""inspect": {"enabled": true"#,
            r#""inspect": {"enabled": false"#,
        );
        let text = edit(
            &text,
            r#""validate": {"enabled": true"#,
            r#""validate": {"enabled": false"#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert!(plan.fix.force_initramfs && plan.fix.initramfs);
        assert!(plan.fix.regenerate_grub);
        assert!(!plan.fix.network_cleanup && !plan.fix.trim);
        assert!(!plan.inspect);
        assert!(!plan.validate.enabled);
    }

    #[test]
    fn artifact_convert_disabled_warns() {
        let fx = Fixture::new();
        let text = edit(
            &fx.artifact(),
            r#""convert": {"enabled": true"#,
            r#""convert": {"enabled": false"#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert!(!plan.convert.enabled);
        assert_eq!(
            plan.warnings,
            ["pipeline.convert.enabled is false: no converted image will be written"]
        );
    }

    #[test]
    fn artifact_uppercase_checksum_is_normalised() {
        let fx = Fixture::new();
        let text = edit(&fx.artifact(), SUM_A, &SUM_A.replace("a1b2", "A1B2"));
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(plan.disks[0].checksum.as_deref(), Some(SUM_A));
    }

    #[test]
    fn artifact_configuration_warns() {
        let fx = Fixture::new();
        let text = edit(
            &fx.artifact(),
            r#""options""#,
            r#""configuration": {"users": {"root": {}}}, "options""#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        assert_eq!(
            plan.warnings,
            ["configuration: guest configuration injection is not supported (ignored)"]
        );
    }

    // ---- unknown keys -------------------------------------------------------------------------

    #[test]
    fn unknown_keys_warn_with_their_path() {
        let fx = Fixture::new();
        let text = edit(
            &fx.seed(),
            r#""mode": "stabilize-all""#,
            r#""mode": "stabilize-all", "foo": 1, "comment": "JSON has no comments""#,
        );
        let text = edit(
            &text,
            r#""version": "1.0","#,
            r#""version": "1.0", "extra": {"x": 1}, "odd key": 2,"#,
        );
        let text = edit(
            &text,
            r#""output_format""#,
            r#""add_modules": ["virtio"], "output_format""#,
        );
        let plan = fx.parse("m.json", &text).unwrap();
        let mut warnings = plan.warnings.clone();
        warnings.sort();
        assert_eq!(
            warnings,
            [
                "unknown key [\"odd key\"] (ignored)",
                "unknown key extra (ignored)",
                "unknown key pipeline.convert.add_modules (ignored)",
                "unknown key pipeline.fix.fstab.foo (ignored)",
            ]
        );
    }

    #[test]
    fn unknown_keys_in_artifact_arrays_name_the_index() {
        let fx = Fixture::new();
        let text = edit(
            &fx.artifact(),
            r#""disk_type": "boot""#,
            r#""disk_type": "boot", "controller": "scsi""#,
        );
        let text = edit(
            &text,
            r#""network": "VM Network""#,
            r#""network": "VM Network", "model": "vmxnet3""#,
        );
        let text = edit(&text, r#""options""#, r#""profile": "web", "options""#);
        let mut warnings = fx.parse("m.json", &text).unwrap().warnings;
        warnings.sort();
        assert_eq!(
            warnings,
            [
                "unknown key disks[1].controller (ignored)",
                "unknown key nics[0].model (ignored)",
                "unknown key profile (ignored)",
            ]
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let fx = Fixture::new();
        let text = edit(&fx.seed(), r#""compress": true"#, r#""compress": null"#);
        assert!(!fx.parse("m.json", &text).unwrap().convert.compress);
    }

    // ---- mistakes: one line, file + key path + value --------------------------------------------

    #[test]
    fn wrong_type_names_key_and_value() {
        let fx = Fixture::new();
        let text = edit(&fx.seed(), r#""compress": true"#, r#""compress": "yes""#);
        let e = err(fx.parse("m.json", &text));
        assert_eq!(e.kind(), ManifestErrorKind::Invalid);
        assert_eq!(e.key(), Some("pipeline.convert.compress"));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "pipeline.convert.compress",
                "expected a boolean, found string \"yes\""
            )
        );
    }

    #[test]
    fn yaml_yes_is_a_string_not_a_boolean() {
        let fx = Fixture::new();
        let src = fx.disk("a.vmdk");
        let text = format!("version: '1.0'\npipeline:\n  load: {{source_path: {src}}}\n  convert: {{compress: yes}}\n");
        let e = err(fx.parse("m.yaml", &text));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.yaml",
                "pipeline.convert.compress",
                "expected a boolean, found string \"yes\""
            )
        );
    }

    #[test]
    fn wrong_types_elsewhere() {
        let fx = Fixture::new();
        let cases = [
            (
                r#""bytes": 1024"#,
                r#""bytes": -1"#,
                "disks[1].bytes",
                "expected a non-negative integer, found number -1",
            ),
            (
                r#""bytes": 1024"#,
                r#""bytes": 1.5"#,
                "disks[1].bytes",
                "expected a non-negative integer, found number 1.5",
            ),
            (
                r#""cpu": 4"#,
                r#""cpu": "four""#,
                "vm.cpu",
                "expected a non-negative integer, found string \"four\"",
            ),
            (
                r#""mem_gb": 16"#,
                r#""mem_gb": -2"#,
                "vm.mem_gb",
                "expected a non-negative number, found number -2",
            ),
            (
                r#""boot_order_hint": 0"#,
                r#""boot_order_hint": 99999999999"#,
                "disks[1].boot_order_hint",
                "99999999999 is out of range",
            ),
            (
                r#""compress_level": 6"#,
                r#""compress_level": 12"#,
                "pipeline.convert.compress_level",
                "12 is out of range (expected 1 to 9)",
            ),
            (
                r#""nics": [{"#,
                r#""nics": [7, {"#,
                "nics[0]",
                "expected an object, found number 7",
            ),
            (
                r#""notes": ["exported by govc"]"#,
                r#""notes": [1]"#,
                "notes[0]",
                "expected a string, found number 1",
            ),
            (
                r#""pipeline": {"#,
                r#""pipeline": [], "x": {"#,
                "pipeline",
                "expected an object, found an array",
            ),
            (
                r#""vm_name": "Web Server 01""#,
                r#""vm_name": ["a"]"#,
                "source.vm_name",
                "expected a string, found an array",
            ),
            (
                r#""disks": ["#,
                r#""disks": {"a": 1}, "y": ["#,
                "disks",
                "expected an array, found an object",
            ),
            (
                r#""mac": "00:50:56:ab:cd:ef""#,
                r#""mac": "00:50:56""#,
                "nics[0].mac",
                "\"00:50:56\" is not a MAC address (XX:XX:XX:XX:XX:XX)",
            ),
            (
                r#""dry_run": false"#,
                r#""dry_run": true"#,
                "options.dry_run",
                "dry runs are not supported in manifests; remove the key or set it to false",
            ),
        ];
        for (from, to, key, message) in cases {
            let text = edit(&fx.artifact(), from, to);
            let e = err(fx.parse("m.json", &text));
            assert_eq!(e.to_string(), fx.at("m.json", key, message), "{to}");
            assert_eq!(e.key(), Some(key));
        }
    }

    #[test]
    fn missing_required_keys() {
        let fx = Fixture::new();
        let seed = fx.seed();
        let src = fx.disk("photon.vmdk");
        let cases = [
            (
                edit(&seed, &format!(r#""source_path": "{src}""#), r#""x": 1"#),
                "pipeline.load.source_path",
            ),
            (r#"{"version": "1.0"}"#.to_string(), "pipeline"),
            (
                r#"{"version": "1.0", "pipeline": {"convert": {}}}"#.to_string(),
                "pipeline.load",
            ),
            (
                edit(&fx.artifact(), r#""bytes": 1024, "#, ""),
                "disks[1].bytes",
            ),
            (
                edit(&fx.artifact(), r#""id": "data-disk", "#, ""),
                "disks[0].id",
            ),
            (
                edit(
                    &fx.artifact(),
                    r#""source_format": "vmdk", "bytes": 2048"#,
                    r#""bytes": 2048"#,
                ),
                "disks[0].source_format",
            ),
            (r#"{"manifest_version": "1.0"}"#.to_string(), "disks"),
        ];
        for (text, key) in cases {
            let e = err(fx.parse("m.json", &text));
            assert_eq!(
                e.to_string(),
                fx.at("m.json", key, "missing required key"),
                "{text}"
            );
        }
        let e = err(fx.parse("m.json", r#"{"manifest_version": "1.0", "disks": []}"#));
        assert_eq!(
            e.to_string(),
            fx.at("m.json", "disks", "must list at least one disk")
        );
    }

    #[test]
    fn bad_enum_values() {
        let fx = Fixture::new();
        let seed_cases = [
            (r#""mode": "stabilize-all""#, r#""mode": "all""#, "pipeline.fix.fstab.mode", "unknown value \"all\" (expected stabilize-all, bypath-only or noop)"),
            (r#""source_type": "vmdk""#, r#""source_type": "ami""#, "pipeline.load.source_type", "unknown value \"ami\" (expected vmdk, ova, qcow2, raw, img, vhd, vpc, vhdx or vdi)"),
            (r#""output_format": "qcow2""#, r#""output_format": "vdi""#, "pipeline.convert.output_format", "vdi output is not supported (expected qcow2, raw or img)"),
            (r#""output_format": "qcow2""#, r#""output_format": "QCOW2""#, "pipeline.convert.output_format", "unknown value \"QCOW2\" (expected qcow2, raw or img)"),
        ];
        for (from, to, key, message) in seed_cases {
            let e = err(fx.parse("m.json", &edit(&fx.seed(), from, to)));
            assert_eq!(e.to_string(), fx.at("m.json", key, message));
        }
        let artifact_cases = [
            (
                r#""source_format": "vmdk", "bytes": 1024"#,
                r#""source_format": "ova", "bytes": 1024"#,
                "disks[1].source_format",
                "unknown value \"ova\" (expected vmdk, qcow2, raw, vhd, vhdx or vdi)",
            ),
            (
                r#""disk_type": "data""#,
                r#""disk_type": "swap""#,
                "disks[0].disk_type",
                "unknown value \"swap\" (expected boot, data or unknown)",
            ),
            (
                r#""firmware": "uefi""#,
                r#""firmware": "efi""#,
                "vm.firmware",
                "unknown value \"efi\" (expected bios, uefi or unknown)",
            ),
            (
                r#""fstab_mode": "bypath-only""#,
                r#""fstab_mode": "uuid""#,
                "pipeline.fix.fstab_mode",
                "unknown value \"uuid\" (expected stabilize-all, bypath-only or noop)",
            ),
            (
                r#""format": "qcow2""#,
                r#""format": "vdi""#,
                "output.format",
                "vdi output is not supported (expected qcow2, raw or img)",
            ),
        ];
        for (from, to, key, message) in artifact_cases {
            let e = err(fx.parse("m.json", &edit(&fx.artifact(), from, to)));
            assert_eq!(e.to_string(), fx.at("m.json", key, message));
        }
    }

    #[test]
    fn bad_expect_ifaces() {
        let fx = Fixture::new();
        // The seed has no validate object, the artifact one has.
        let with = |base: &str, list: &str| {
            let text = if base.contains(r#""validate": {"#) {
                let to = format!(r#""validate": {{"expect_ifaces": {list}, "#);
                edit(base, r#""validate": {"#, &to)
            } else {
                let to = format!(r#""pipeline": {{"validate": {{"expect_ifaces": {list}}}, "#);
                edit(base, r#""pipeline": {"#, &to)
            };
            fx.parse("m.json", &text)
        };
        let name_message = "expected NAME[=ADDR/PREFIX] with an interface name (at most 15 \
                            characters, no '/' or spaces)";
        let cases = [
            (r#"["ens192", "a/b"]"#, "[1]", format!(r#""a/b": {name_message}"#)),
            (r#"["=10.0.2.15"]"#, "[0]", format!(r#""=10.0.2.15": {name_message}"#)),
            (
                r#"["ens192=10.0.2.300/24"]"#,
                "[0]",
                r#""ens192=10.0.2.300/24": "10.0.2.300/24" is not an address (10.0.2.15/24, fd00::2/64 or without the prefix)"#.into(),
            ),
            (
                r#"["ens192=10.0.2.15/129"]"#,
                "[0]",
                r#""ens192=10.0.2.15/129": "10.0.2.15/129" is not an address (10.0.2.15/24, fd00::2/64 or without the prefix)"#.into(),
            ),
            (r#"[7]"#, "[0]", "expected a string NAME or NAME=ADDR/PREFIX, found number 7".into()),
            (r#""ens192""#, "", r#"expected an array, found string "ens192""#.into()),
        ];
        for base in [fx.seed(), fx.artifact()] {
            for (list, index, message) in &cases {
                let e = err(with(&base, list));
                let key = format!("pipeline.validate.expect_ifaces{index}");
                assert_eq!(e.to_string(), fx.at("m.json", &key, message), "{list}");
            }
            let plan = with(&base, r#"["ens192", "ens224=10.0.2.15/24"]"#).unwrap();
            let names: Vec<_> = plan
                .validate
                .expect_ifaces
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            assert_eq!(names, ["ens192", "ens224"]);
            assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        }
        // A long value is cut in the message, which stays one line.
        let long = format!(r#"["{}"]"#, "x".repeat(300));
        let e = err(with(&fx.seed(), &long)).to_string();
        assert!(e.len() < 400 && e.contains("…") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_disk_id() {
        let fx = Fixture::new();
        let text = edit(&fx.artifact(), r#""id": "boot-disk""#, r#""id": "bad id!""#);
        let e = err(fx.parse("m.json", &text));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "disks[1].id",
                "\"bad id!\" does not match ^[a-zA-Z0-9_-]+$"
            )
        );
        let text = edit(
            &fx.artifact(),
            r#""id": "boot-disk""#,
            r#""id": "data-disk""#,
        );
        let e = err(fx.parse("m.json", &text));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "disks[1].id",
                "duplicate id \"data-disk\" (also disks[0].id)"
            )
        );
        let text = edit(&fx.artifact(), r#""id": "boot-disk""#, r#""id": """#);
        assert_eq!(err(fx.parse("m.json", &text)).key(), Some("disks[1].id"));
    }

    #[test]
    fn bad_checksum_format() {
        let fx = Fixture::new();
        for bad_sum in [
            "md5:0123",
            "sha256:abc",
            &SUM_A.replace("a1", "zz"),
            "a1b2c3",
        ] {
            let text = edit(&fx.artifact(), SUM_A, bad_sum);
            let e = err(fx.parse("m.json", &text));
            let message = format!("{bad_sum:?} is not sha256:<64 hex digits>");
            assert_eq!(
                e.to_string(),
                fx.at("m.json", "disks[1].checksum", &message)
            );
        }
    }

    #[test]
    fn unsupported_or_missing_version() {
        let fx = Fixture::new();
        let e = err(fx.parse(
            "m.json",
            &edit(&fx.seed(), r#""version": "1.0""#, r#""version": "2.0""#),
        ));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "version",
                "unsupported version \"2.0\" (expected \"1.0\")"
            )
        );
        let e = err(fx.parse(
            "m.json",
            &edit(
                &fx.artifact(),
                r#""manifest_version": "1.0""#,
                r#""manifest_version": "2.0""#,
            ),
        ));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "manifest_version",
                "unsupported version \"2.0\" (expected \"1.0\")"
            )
        );
        let e = err(fx.parse("m.yaml", "version: 2\npipeline: {}\n"));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.yaml",
                "version",
                "unsupported version 2 (expected \"1.0\")"
            )
        );
        let e = err(fx.parse("m.json", r#"{"version": true}"#));
        assert_eq!(e.key(), Some("version"));
        let e = err(fx.parse("m.json", r#"{"command": "daemon", "output_dir": "/x"}"#));
        assert_eq!(e.key(), Some("version"));
        assert!(
            e.to_string().contains("\"manifest_version\": \"1.0\""),
            "{e}"
        );
    }

    #[test]
    fn top_level_must_be_an_object() {
        let fx = Fixture::new();
        let e = err(fx.parse("m.json", "[1, 2]"));
        assert_eq!(e.key(), None);
        assert_eq!(
            e.to_string(),
            format!(
                "{}: expected an object at the top level, found an array",
                fx.path("m.json").display()
            )
        );
        let e = err(fx.parse("m.yaml", "just some words\n"));
        assert!(
            e.to_string().ends_with("found string \"just some words\""),
            "{e}"
        );
    }

    #[test]
    fn source_paths_must_be_absolute_and_exist() {
        let fx = Fixture::new();
        let e = err(fx.parse("m.json", &SEED.replace(SEED_SOURCE, "images/photon.vmdk")));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "pipeline.load.source_path",
                "\"images/photon.vmdk\" is not an absolute path"
            )
        );
        let e = err(fx.parse(
            "m.json",
            &SEED.replace(SEED_SOURCE, "/nonexistent/photon.vmdk"),
        ));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "pipeline.load.source_path",
                "/nonexistent/photon.vmdk: no such file"
            )
        );
        let dir = fx.dir.path().display().to_string();
        let e = err(fx.parse("m.json", &SEED.replace(SEED_SOURCE, &dir)));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "pipeline.load.source_path",
                &format!("{dir}: is a directory, not a disk image")
            )
        );
        let e = err(fx.parse(
            "m.json",
            &SEED.replace(SEED_SOURCE, "https://example.com/x.vmdk"),
        ));
        assert_eq!(e.key(), Some("pipeline.load.source_path"));
        let e = err(fx.parse("m.json", &SEED.replace(SEED_SOURCE, "")));
        assert_eq!(
            e.to_string(),
            fx.at("m.json", "pipeline.load.source_path", "empty path")
        );

        let boot = fx.path("boot.vmdk").display().to_string();
        let text = fx.artifact();
        let e = err(fx.parse("m.json", &edit(&text, &boot, "boot.vmdk")));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "disks[1].local_path",
                "\"boot.vmdk\" is not an absolute path"
            )
        );
        fs::remove_file(&boot).unwrap();
        let e = err(fx.parse("m.json", &text));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "disks[1].local_path",
                &format!("{boot}: no such file")
            )
        );
    }

    #[test]
    fn output_paths_are_confined() {
        let fx = Fixture::new();
        let root = fx.dir.path().display().to_string();
        let escape = |given: &str| format!("{given:?} escapes the output directory {root}");
        for given in ["../x.qcow2", "/etc/x", "a/../../x.qcow2", "/"] {
            let text = edit(&fx.seed(), "photon-converted.qcow2", given);
            let e = err(fx.parse("m.json", &text));
            assert_eq!(
                e.to_string(),
                fx.at("m.json", "pipeline.convert.output_path", &escape(given))
            );
        }
        let text = edit(&fx.seed(), "photon-converted.qcow2", "sub/");
        assert_eq!(
            err(fx.parse("m.json", &text)).key(),
            Some("pipeline.convert.output_path")
        );
        let text = edit(
            &fx.artifact(),
            r#""directory": "out""#,
            r#""directory": "../elsewhere""#,
        );
        let e = err(fx.parse("m.json", &text));
        assert_eq!(
            e.to_string(),
            fx.at("m.json", "output.directory", &escape("../elsewhere"))
        );
        let text = edit(
            &fx.artifact(),
            r#""format": "qcow2"}"#,
            r#""format": "qcow2", "filename": "../../x"}"#,
        );
        assert_eq!(
            err(fx.parse("m.json", &text)).key(),
            Some("output.filename")
        );
    }

    #[test]
    fn absolute_output_inside_the_output_dir_is_fine() {
        let fx = Fixture::new();
        let inside = fx.path("sub/./x.qcow2").display().to_string();
        let plan = fx
            .parse(
                "m.json",
                &edit(&fx.seed(), "photon-converted.qcow2", &inside),
            )
            .unwrap();
        assert_eq!(plan.disks[0].output, fx.path("sub/x.qcow2"));
        let plan = fx
            .parse(
                "m.json",
                &edit(&fx.seed(), "photon-converted.qcow2", "a/../b/x"),
            )
            .unwrap();
        assert_eq!(plan.disks[0].output, fx.path("b/x.qcow2"));
    }

    #[test]
    fn explicit_output_dir_confines_instead_of_the_manifest_dir() {
        let fx = Fixture::new();
        let out = tempfile::tempdir().unwrap();
        let plan = parse_manifest(&fx.seed(), &fx.path("m.json"), Some(out.path())).unwrap();
        assert_eq!(plan.output_dir, out.path());
        assert_eq!(
            plan.disks[0].output,
            out.path().join("photon-converted.qcow2")
        );
        let inside_manifest_dir = fx.path("x.qcow2").display().to_string();
        let text = edit(&fx.seed(), "photon-converted.qcow2", &inside_manifest_dir);
        let e = err(parse_manifest(&text, &fx.path("m.json"), Some(out.path())));
        assert_eq!(e.key(), Some("pipeline.convert.output_path"));
    }

    #[test]
    fn output_extension_follows_the_format() {
        let fx = Fixture::new();
        let with = |path: &str, format: &str| {
            let text = edit(&fx.seed(), "photon-converted.qcow2", path);
            let text = edit(
                &text,
                r#""output_format": "qcow2""#,
                &format!(r#""output_format": "{format}""#),
            );
            let text = edit(&text, r#""compress": true"#, r#""compress": false"#);
            fx.parse("m.json", &text).unwrap()
        };
        assert_eq!(with("vm", "qcow2").disks[0].output, fx.path("vm.qcow2"));
        assert_eq!(with("vm", "raw").disks[0].output, fx.path("vm.raw"));
        assert_eq!(with("vm", "img").disks[0].output, fx.path("vm.img"));
        assert_eq!(
            with("vm.v2", "qcow2").disks[0].output,
            fx.path("vm.v2.qcow2")
        );
        assert_eq!(with("vm.img", "raw").disks[0].output, fx.path("vm.img"));
        let plan = with("vm.raw", "qcow2");
        assert_eq!(plan.disks[0].output, fx.path("vm.raw"));
        assert_eq!(plan.warnings, ["pipeline.convert.output_path: extension .raw does not match the output format qcow2"]);
    }

    #[test]
    fn output_must_not_overwrite_a_source_or_another_output() {
        let fx = Fixture::new();
        let src = fx.disk("vm.qcow2");
        let text =
            format!(r#"{{"version": "1.0", "pipeline": {{"load": {{"source_path": "{src}"}}}}}}"#);
        let e = err(fx.parse("m.json", &text));
        assert_eq!(e.key(), Some("pipeline.load.source_path"));
        assert!(e.message().contains("would overwrite the source"), "{e}");
        let text = format!(
            r#"{{"version": "1.0", "pipeline": {{"load": {{"source_path": "{src}"}}, "convert": {{"output_path": "./vm.qcow2"}}}}}}"#
        );
        assert_eq!(
            err(fx.parse("m.json", &text)).key(),
            Some("pipeline.convert.output_path")
        );

        let text = edit(
            &fx.artifact(),
            r#""format": "qcow2"}"#,
            r#""format": "qcow2", "filename": "data-disk"}"#,
        );
        let e = err(fx.parse("m.json", &text));
        assert_eq!(
            e.to_string(),
            fx.at(
                "m.json",
                "disks[0]",
                &format!(
                    "output {} is also the output of disks[1]",
                    fx.path("out/data-disk.qcow2").display()
                )
            )
        );
    }

    // ---- unreadable and malformed files ---------------------------------------------------------

    #[test]
    fn malformed_json_names_line_and_column() {
        let fx = Fixture::new();
        let e = err(fx.parse(
            "m.json",
            "{\n  \"version\": \"1.0\",\n  \"pipeline\": {,}\n}\n",
        ));
        assert_eq!(e.kind(), ManifestErrorKind::Syntax);
        assert_eq!(e.line_column(), Some((3, 16)));
        assert_eq!(
            e.to_string(),
            format!(
                "{}:3:16: invalid JSON: key must be a string",
                fx.path("m.json").display()
            )
        );
        let e = err(fx.parse("m.json", "{\"version\": \"1.0\",}"));
        assert!(
            e.to_string()
                .ends_with(":1:19: invalid JSON: trailing comma"),
            "{e}"
        );
    }

    #[test]
    fn malformed_yaml_names_line_and_column() {
        let fx = Fixture::new();
        let e = err(fx.parse("m.yaml", "version: '1.0'\npipeline:\n  load: [a, b\n"));
        assert_eq!(e.kind(), ManifestErrorKind::Syntax);
        let (line, _) = e.line_column().unwrap();
        assert_eq!(line, 4);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{}:4:", fx.path("m.yaml").display())),
            "{text}"
        );
        assert!(!text.contains(" at line "), "{text}");
        assert!(!text.contains('\n'));
        let e = err(fx.parse("m.yml", "a: 1\na: 2\n"));
        assert!(e.to_string().contains("duplicate entry"), "{e}");
    }

    #[test]
    fn syntax_is_sniffed_for_other_extensions() {
        let fx = Fixture::new();
        assert_eq!(
            fx.parse("m.manifest", &fx.seed()).unwrap().dialect,
            Dialect::SeedV1
        );
        let src = fx.disk("d.vmdk");
        let yaml = format!("version: '1.0'\npipeline:\n  load:\n    source_path: {src}\n");
        assert_eq!(fx.parse("m", &yaml).unwrap().dialect, Dialect::SeedV1);
    }

    #[test]
    fn empty_and_binary_text() {
        let fx = Fixture::new();
        for text in ["", "  \n\t\n", "\u{feff}"] {
            let e = err(fx.parse("m.json", text));
            assert_eq!(e.kind(), ManifestErrorKind::Read);
            assert_eq!(
                e.to_string(),
                format!("{}: empty manifest", fx.path("m.json").display())
            );
        }
        let e = err(fx.parse("m.json", "{\"a\0\": 1}"));
        assert_eq!(e.message(), BINARY);
    }

    #[test]
    fn bom_is_skipped() {
        let fx = Fixture::new();
        let text = format!("\u{feff}{}", fx.seed());
        assert!(fx.parse("m.json", &text).is_ok());
    }

    #[test]
    fn load_reads_json_and_yaml_files() {
        let fx = Fixture::new();
        let path = fx.path("photon.json");
        fs::write(&path, fx.seed()).unwrap();
        let plan = load_manifest(&path, None).unwrap();
        assert_eq!(plan.job_name, "photon");
        assert_eq!(plan.disks[0].output, fx.path("photon-converted.qcow2"));
    }

    #[test]
    fn load_refuses_unreadable_files() {
        let fx = Fixture::new();
        let display = |name: &str| fx.path(name).display().to_string();

        let e = err(load_manifest(&fx.path("absent.json"), None));
        assert_eq!(
            e.to_string(),
            format!("{}: no such file", display("absent.json"))
        );

        let e = err(load_manifest(fx.dir.path(), None));
        assert_eq!(
            e.to_string(),
            format!(
                "{}: is a directory, not a manifest file",
                fx.dir.path().display()
            )
        );

        fs::write(fx.path("empty.json"), b"").unwrap();
        let e = err(load_manifest(&fx.path("empty.json"), None));
        assert_eq!(
            e.to_string(),
            format!("{}: empty manifest", display("empty.json"))
        );

        fs::write(
            fx.path("junk.json"),
            [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0xff, 0xfe],
        )
        .unwrap();
        let e = err(load_manifest(&fx.path("junk.json"), None));
        assert_eq!(e.to_string(), format!("{}: {BINARY}", display("junk.json")));

        fs::write(fx.path("latin1.yaml"), b"name: caf\xe9\n").unwrap();
        let e = err(load_manifest(&fx.path("latin1.yaml"), None));
        assert_eq!(
            e.to_string(),
            format!(
                "{}: not a text file (invalid UTF-8 at byte 9)",
                display("latin1.yaml")
            )
        );

        // Sparse: 100 MB on paper, nothing on disk; only 4 MiB + 1 byte is read.
        let big = fs::File::create(fx.path("big.json")).unwrap();
        big.set_len(100 * 1024 * 1024).unwrap();
        let e = err(load_manifest(&fx.path("big.json"), None));
        assert_eq!(e.kind(), ManifestErrorKind::Read);
        assert_eq!(
            e.to_string(),
            format!("{}: manifest larger than 4 MiB", display("big.json"))
        );
    }

    #[test]
    fn errors_are_one_line() {
        let fx = Fixture::new();
        let text = edit(&fx.seed(), r#""compress": true"#, r#""compress": "a\nb""#);
        let e = err(fx.parse("m.json", &text));
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().ends_with(r#"found string "a\nb""#), "{e}");
        let long = "x".repeat(500);
        let text = edit(
            &fx.seed(),
            r#""compress": true"#,
            &format!(r#""compress": "{long}""#),
        );
        assert!(
            err(fx.parse("m.json", &text)).to_string().len()
                < 240 + fx.path("m.json").as_os_str().len()
        );
    }

    // ---- names ----------------------------------------------------------------------------------

    #[test]
    fn job_names_come_from_the_vm_name_or_the_file_stem() {
        assert_eq!(
            job_name(Some("Web Server 01"), Path::new("/x/m.json")),
            "Web_Server_01"
        );
        assert_eq!(
            job_name(Some("../../etc"), Path::new("/x/m.json")),
            "_.._etc"
        );
        assert_eq!(
            job_name(Some("  "), Path::new("/x/y/photon.json")),
            "photon"
        );
        assert_eq!(job_name(None, Path::new("..json")), "job");
    }

    #[test]
    fn locations_are_stripped_from_parser_messages() {
        assert_eq!(
            strip_locations("expected value at line 3 column 16"),
            "expected value"
        );
        assert_eq!(
            strip_locations("did not find ',' at line 2 column 1, while parsing a flow sequence at line 1 column 4"),
            "did not find ',', while parsing a flow sequence"
        );
        assert_eq!(strip_locations("no location here"), "no location here");
    }

    // ---- the shipped examples -------------------------------------------------------------------

    /// The examples are valid once their placeholder paths point at real files, with no warnings.
    #[test]
    fn shipped_examples_are_valid() {
        let fx = Fixture::new();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let placeholder = "/var/lib/h2k/images/";
        for name in [
            "seed-example.json",
            "artifact-example.json",
            "artifact-example.yaml",
        ] {
            let text = fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.contains(placeholder), "{name}");
            for file in ["photon.vmdk", "web01-boot.vmdk", "web01-data.vmdk"] {
                fx.disk(file);
            }
            let text = text.replace(placeholder, &format!("{}/", fx.dir.path().display()));
            let plan = fx.parse(name, &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(plan.warnings.is_empty(), "{name}: {:?}", plan.warnings);
            // Unedited, the only complaint is the placeholder source path.
            let e = err(load_manifest(&dir.join(name), None));
            assert!(e.message().contains("/var/lib/h2k/images/"), "{e}");
            assert!(e.message().ends_with("no such file"), "{e}");
        }
        let json = fx
            .parse(
                "a.json",
                &fs::read_to_string(dir.join("artifact-example.json"))
                    .unwrap()
                    .replace(placeholder, &format!("{}/", fx.dir.path().display())),
            )
            .unwrap();
        let yaml = fx
            .parse(
                "a.yaml",
                &fs::read_to_string(dir.join("artifact-example.yaml"))
                    .unwrap()
                    .replace(placeholder, &format!("{}/", fx.dir.path().display())),
            )
            .unwrap();
        assert_eq!(json.disks, yaml.disks);
        assert_eq!(json.fix, yaml.fix);
        assert_eq!(json.convert, yaml.convert);
        assert_eq!(json.validate, yaml.validate);
        assert_eq!(json.vm, yaml.vm);
    }

    // ---- hostile inputs -----------------------------------------------------------------------

    #[test]
    fn trust_backing_files_is_read_in_both_dialects() {
        let fx = Fixture::new();
        assert!(!fx.parse("m.json", &fx.seed()).unwrap().trust_backing_files);
        let seed = edit(
            &fx.seed(),
            r#""source_type": "vmdk","#,
            r#""source_type": "vmdk", "trust_backing_files": true,"#,
        );
        assert!(fx.parse("m.json", &seed).unwrap().trust_backing_files);
        let artifact = edit(
            &fx.artifact(),
            r#""pipeline": {"#,
            r#""pipeline": {"load": {"trust_backing_files": true},"#,
        );
        let plan = fx.parse("m.json", &artifact).unwrap();
        assert!(plan.trust_backing_files);
        assert!(
            plan.warnings.iter().all(|w| !w.contains("load")),
            "{:?}",
            plan.warnings
        );
        let wrong = edit(
            &fx.artifact(),
            r#""pipeline": {"#,
            r#""pipeline": {"load": {"trust_backing_files": "yes"},"#,
        );
        assert_eq!(
            err(fx.parse("m.json", &wrong)).key(),
            Some("pipeline.load.trust_backing_files")
        );
    }

    #[test]
    fn duplicate_json_keys_are_refused_with_their_path() {
        let fx = Fixture::new();
        let text = edit(&fx.artifact(), r#""cpu": 4,"#, r#""cpu": 4, "cpu": 8,"#);
        let e = err(fx.parse("m.json", &text));
        assert_eq!(e.kind(), ManifestErrorKind::Syntax);
        assert!(e.to_string().contains("duplicate key vm.cpu"), "{e}");
        let text = edit(
            &fx.artifact(),
            r#""label": "OS","#,
            r#""label": "OS", "label": "x","#,
        );
        assert!(err(fx.parse("m.json", &text))
            .to_string()
            .contains("duplicate key disks[1].label"));
    }

    fn many_disks(fx: &Fixture, count: usize) -> String {
        let source = fx.disk("d.vmdk");
        let disks: Vec<String> = (0..count)
            .map(|i| {
                format!(
                    r#"{{"id":"d{i}","source_format":"vmdk","bytes":1,"local_path":"{source}"}}"#
                )
            })
            .collect();
        format!(
            r#"{{"manifest_version":"1.0","disks":[{}],"output":{{"directory":"out"}}}}"#,
            disks.join(",")
        )
    }

    #[test]
    fn disks_are_capped() {
        let fx = Fixture::new();
        let plan = fx.parse("m.json", &many_disks(&fx, MAX_DISKS)).unwrap();
        assert_eq!(plan.disks.len(), MAX_DISKS);
        let e = err(fx.parse("m.json", &many_disks(&fx, MAX_DISKS + 1)));
        assert_eq!(e.key(), Some("disks"));
        assert!(e.message().contains("65"), "{e}");
    }

    #[test]
    fn control_characters_are_refused_where_they_name_things() {
        let fx = Fixture::new();
        let text = edit(&fx.artifact(), r#""label": "OS""#, r#""label": "O\u0000S""#);
        assert_eq!(err(fx.parse("m.json", &text)).key(), Some("disks[1].label"));
        let text = edit(
            &fx.artifact(),
            r#""directory": "out""#,
            r#""directory": "o\nut""#,
        );
        assert_eq!(
            err(fx.parse("m.json", &text)).key(),
            Some("output.directory")
        );
    }

    #[test]
    fn outputs_through_symlinks_are_refused() {
        let fx = Fixture::new();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), fx.path("out")).unwrap();
        let e = err(fx.parse("m.json", &fx.artifact()));
        assert!(e.message().contains("is a symlink"), "{e}");
        assert!(fs::read_dir(elsewhere.path()).unwrap().next().is_none());
    }

    #[test]
    fn special_files_are_refused_as_sources() {
        assert!(check_source("k", "/dev/zero")
            .unwrap_err()
            .message
            .contains("character device"));
        assert!(check_source("k", "/proc/self/mem")
            .unwrap_err()
            .message
            .contains("pseudo-file"));
        assert!(check_source("k", "nbd+unix:///x?socket=/run/s.sock").is_ok());
        assert!(check_source("k", "nbd://").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "[ -~\\x00-\\x1f]{0,12}".prop_map(Value::String),
                prop::sample::select(vec!["1.0", "/dev/zero", "disks", "../x", "nbd://h/e"])
                    .prop_map(|s| Value::String(s.into())),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                let keys = prop::sample::select(vec![
                    "version",
                    "manifest_version",
                    "pipeline",
                    "load",
                    "source_path",
                    "disks",
                    "id",
                    "local_path",
                    "output",
                    "filename",
                    "directory",
                    "convert",
                    "output_path",
                    "bytes",
                    "source_format",
                    "metadata",
                    "name",
                    "x",
                ]);
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(keys.prop_map(String::from), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn assert_one_line_naming(e: &ManifestError, file: &Path) {
            let text = e.to_string();
            assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
            assert!(text.starts_with(&file.display().to_string()), "{text:?}");
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(600))]

            #[test]
            fn arbitrary_values_never_panic(value in json_value(), yaml in any::<bool>()) {
                let fx = Fixture::new();
                let (name, text) = if yaml {
                    ("m.yaml", serde_yaml_ng::to_string(&value).unwrap())
                } else {
                    ("m.json", value.to_string())
                };
                if let Err(e) = fx.parse(name, &text) {
                    assert_one_line_naming(&e, &fx.path(name));
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), yaml in any::<bool>()) {
                let fx = Fixture::new();
                let name = if yaml { "m.yaml" } else { "m.json" };
                fs::write(fx.path(name), &bytes).unwrap();
                if let Err(e) = load_manifest(&fx.path(name), None) {
                    assert_one_line_naming(&e, &fx.path(name));
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(150))]

            #[test]
            fn valid_manifests_keep_outputs_inside(
                ids in prop::collection::btree_set("[a-z0-9_-]{1,8}", 1..5),
                dir in "[a-z]{1,6}(/[a-z]{1,6})?",
                filename in proptest::option::of("[a-z]{1,6}(/[a-z]{1,6})?(\\.qcow2)?"),
            ) {
                let fx = Fixture::new();
                let source = fx.disk("src.vmdk");
                let disks: Vec<Value> = ids
                    .iter()
                    .map(|id| serde_json::json!({
                        "id": id, "source_format": "vmdk", "bytes": 1, "local_path": source,
                    }))
                    .collect();
                let mut output = serde_json::json!({"directory": dir});
                if let Some(f) = &filename {
                    output["filename"] = Value::String(f.clone());
                }
                let text = serde_json::json!({
                    "manifest_version": "1.0", "disks": disks, "output": output,
                })
                .to_string();
                match fx.parse("m.json", &text) {
                    Ok(plan) => {
                        prop_assert_eq!(plan.disks.len(), ids.len());
                        for disk in &plan.disks {
                            prop_assert!(disk.output.starts_with(&plan.output_dir));
                            prop_assert!(disk.output != plan.output_dir);
                        }
                    }
                    // A filename may name another disk's default output: that clash is the only refusal.
                    Err(e) => prop_assert!(e.message().contains("is also the output of"), "{}", e),
                }
            }
        }
    }
}
