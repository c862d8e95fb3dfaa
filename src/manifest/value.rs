//! The typed walker over a parsed manifest value, the vocabulary both dialects share, and names.

use std::path::Path;

use serde_json::{Map, Value};

use crate::plan::{
    CompressionType, ConvertPlan, ExpectIface, FstabMode, OutputFormat, ValidatePlan,
};

// Walking the value

/// A problem at a key path (empty = the whole document); `parse_manifest` adds the file name.
pub(super) struct Bad {
    pub(super) key: String,
    pub(super) message: String,
}

pub(super) type Res<T> = Result<T, Bad>;

pub(super) fn bad(key: &str, message: impl Into<String>) -> Bad {
    Bad {
        key: key.to_string(),
        message: message.into(),
    }
}

pub(super) fn expected(key: &str, what: &str, found: &Value) -> Bad {
    bad(key, format!("expected {what}, found {}", describe(found)))
}

pub(super) fn missing(key: &str) -> Bad {
    bad(key, "missing required key")
}

pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A value for a message: quoted, escaped (so it stays on one line) and cut at 100 characters.
pub(super) fn quote(s: &str) -> String {
    const MAX_CHARS: usize = 100;
    if s.chars().count() > MAX_CHARS {
        let head: String = s.chars().take(MAX_CHARS).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

pub(super) fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

pub(super) fn one_of<T>(choices: &[(&str, T)]) -> String {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// An object at a key path.
pub(super) struct Obj<'v> {
    pub(super) path: String,
    pub(super) map: &'v Map<String, Value>,
}

impl<'v> Obj<'v> {
    /// Type-check `value` as an object and warn about every key not in `known`.
    pub(super) fn open(
        path: String,
        value: &'v Value,
        known: &[&str],
        warnings: &mut Vec<String>,
    ) -> Res<Self> {
        let map = value
            .as_object()
            .ok_or_else(|| expected(&path, "an object", value))?;
        for key in map.keys() {
            // JSON has no comments; `"comment": "…"` is the usual stand-in, so it is never flagged.
            if !known.contains(&key.as_str()) && key != "comment" {
                warnings.push(format!("unknown key {} (ignored)", join(&path, key)));
            }
        }
        Ok(Obj { path, map })
    }

    pub(super) fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// `null` counts as absent: YAML reads an empty value (`key:`) as null.
    pub(super) fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn object(
        &self,
        key: &str,
        known: &[&str],
        w: &mut Vec<String>,
    ) -> Res<Option<Obj<'v>>> {
        self.get(key)
            .map(|v| Obj::open(self.key(key), v, known, w))
            .transpose()
    }

    pub(super) fn required_object(
        &self,
        key: &str,
        known: &[&str],
        w: &mut Vec<String>,
    ) -> Res<Obj<'v>> {
        self.object(key, known, w)?
            .ok_or_else(|| missing(&self.key(key)))
    }

    /// An object with free-form keys (metadata, tags): type-checked, keys never flagged.
    pub(super) fn free_object(&self, key: &str) -> Res<Option<Obj<'v>>> {
        self.object(key, &[], &mut Vec::new())
    }

    pub(super) fn array(&self, key: &str) -> Res<Option<&'v Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(expected(&self.key(key), "an array", other)),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Res<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(expected(&self.key(key), "a boolean", other)),
        }
    }

    pub(super) fn str(&self, key: &str) -> Res<Option<&'v str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(expected(&self.key(key), "a string", other)),
        }
    }

    pub(super) fn required_str(&self, key: &str) -> Res<&'v str> {
        self.str(key)?.ok_or_else(|| missing(&self.key(key)))
    }

    pub(super) fn uint(&self, key: &str) -> Res<Option<u64>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let not_uint = || expected(&self.key(key), "a non-negative integer", value);
        let Value::Number(n) = value else {
            return Err(not_uint());
        };
        if let Some(u) = n.as_u64() {
            return Ok(Some(u));
        }
        match n.as_f64() {
            // Some writers emit 2.0 for 2.
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
            _ => Err(not_uint()),
        }
    }

    pub(super) fn u32(&self, key: &str) -> Res<Option<u32>> {
        match self.uint(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| bad(&self.key(key), format!("{n} is out of range"))),
        }
    }

    pub(super) fn number(&self, key: &str) -> Res<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
                _ => Err(expected(&self.key(key), "a non-negative number", v)),
            },
            Some(other) => Err(expected(&self.key(key), "a non-negative number", other)),
        }
    }

    pub(super) fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Res<Option<T>> {
        let Some(s) = self.str(key)? else {
            return Ok(None);
        };
        match choices.iter().find(|(name, _)| *name == s) {
            Some((_, value)) => Ok(Some(*value)),
            None => Err(bad(
                &self.key(key),
                format!("unknown value {} (expected {})", quote(s), one_of(choices)),
            )),
        }
    }

    /// Set `target` from a boolean key when the key is present.
    pub(super) fn set_bool(&self, key: &str, target: &mut bool) -> Res<()> {
        if let Some(b) = self.bool(key)? {
            *target = b;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared vocabulary

pub(super) const FSTAB_MODES: &[(&str, FstabMode)] = &[
    ("stabilize-all", FstabMode::StabilizeAll),
    ("bypath-only", FstabMode::BypathOnly),
    ("noop", FstabMode::Noop),
];

/// Output format names, with the extension each gives a file name that lacks one.
pub(super) const OUTPUT_FORMATS: &[(&str, (OutputFormat, &str))] = &[
    ("qcow2", (OutputFormat::Qcow2, "qcow2")),
    ("raw", (OutputFormat::Raw, "raw")),
    ("img", (OutputFormat::Raw, "img")),
];

pub(super) const COMPRESSION_TYPES: &[(&str, CompressionType)] = &[
    ("zstd", CompressionType::Zstd),
    ("zlib", CompressionType::Zlib),
];

/// Extensions taken as "the name already has an image extension": anything else gets one added.
pub(super) const IMAGE_EXTENSIONS: &[&str] =
    &["qcow2", "qcow", "raw", "img", "vmdk", "vdi", "vhd", "vhdx"];

pub(super) const NBD_SCHEMES: &[&str] = &["nbd://", "nbd+unix://", "nbd+tcp://"];

pub(super) const VALIDATE_KEYS: &[&str] = &[
    "enabled",
    "check_image_integrity",
    "boot",
    "boot_timeout",
    "expect_ifaces",
];

pub(super) fn check_version(key: &str, value: &Value) -> Res<()> {
    let supported = match value {
        Value::String(s) => s == "1.0",
        // YAML reads an unquoted `1.0` as a number.
        Value::Number(n) => n.as_f64() == Some(1.0),
        _ => false,
    };
    match value {
        _ if supported => Ok(()),
        Value::String(s) => Err(bad(
            key,
            format!("unsupported version {} (expected \"1.0\")", quote(s)),
        )),
        Value::Number(n) => Err(bad(
            key,
            format!("unsupported version {n} (expected \"1.0\")"),
        )),
        other => Err(expected(key, "a version string such as \"1.0\"", other)),
    }
}

pub(super) fn output_format(obj: &Obj, key: &str) -> Res<Option<(OutputFormat, &'static str)>> {
    if obj.str(key)? == Some("vdi") {
        return Err(bad(
            &obj.key(key),
            format!(
                "vdi output is not supported (expected {})",
                one_of(OUTPUT_FORMATS)
            ),
        ));
    }
    obj.choice(key, OUTPUT_FORMATS)
}

pub(super) fn compress_level(obj: &Obj, key: &str) -> Res<Option<u8>> {
    match obj.uint(key)? {
        None => Ok(None),
        Some(n @ 1..=9) => Ok(Some(n as u8)),
        Some(n) => Err(bad(
            &obj.key(key),
            format!("{n} is out of range (expected 1 to 9)"),
        )),
    }
}

pub(super) fn validate_plan(obj: Option<Obj>) -> Res<ValidatePlan> {
    let mut plan = ValidatePlan::default();
    if let Some(v) = obj {
        plan.enabled = v.bool("enabled")?.unwrap_or(true);
        v.set_bool("check_image_integrity", &mut plan.check_image_integrity)?;
        v.set_bool("boot", &mut plan.boot)?;
        match v.uint("boot_timeout")? {
            Some(0) => return Err(bad(&v.key("boot_timeout"), "must be at least 1 (seconds)")),
            Some(secs) => plan.boot_timeout_secs = secs,
            None => {}
        }
        plan.expect_ifaces = expect_ifaces(&v)?;
    }
    Ok(plan)
}

/// `expect_ifaces: ["ens192", "ens224=10.0.2.15/24"]`, read by `validate --expect-iface`'s parser.
fn expect_ifaces(v: &Obj) -> Res<Vec<ExpectIface>> {
    let Some(items) = v.array("expect_ifaces")? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("{}[{i}]", v.key("expect_ifaces"));
        let given = item
            .as_str()
            .ok_or_else(|| expected(&key, "a string NAME or NAME=ADDR/PREFIX", item))?;
        let parsed = given.parse::<ExpectIface>().map_err(|e| {
            // The parser names the value unshortened; a manifest's may be long.
            let reason = e.strip_prefix(&format!("{given:?}: ")).unwrap_or(&e);
            bad(&key, format!("{}: {reason}", quote(given)))
        })?;
        out.push(parsed);
    }
    Ok(out)
}

/// Warn about settings that cannot take effect, and drop compression where qemu-img would refuse it.
pub(super) fn settle_convert(convert: &mut ConvertPlan, path: &str, w: &mut Vec<String>) {
    if convert.compress && convert.format == OutputFormat::Raw {
        w.push(format!(
            "{}: compression applies to qcow2 only (ignored for raw output)",
            join(path, "compress")
        ));
        convert.compress = false;
    }
    if !convert.enabled {
        w.push(format!(
            "{} is false: no converted image will be written",
            join(path, "enabled")
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Names

pub(super) fn job_name(name: Option<&str>, origin: &Path) -> String {
    let stem = || {
        origin
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let raw = name
        .filter(|n| !n.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(stem);
    crate::plan::sanitize_job_name(&raw)
}

/// A disk id (`^[a-zA-Z0-9_-]+$`) from the source file name; NBD sources get `disk-0`.
pub(super) fn disk_id_from_source(source: &str) -> String {
    if is_nbd(source) {
        return "disk-0".into();
    }
    let stem = Path::new(source)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        "disk-0".into()
    } else {
        id
    }
}

pub(super) fn valid_disk_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `sha256:<64 hex>`, hex lowercased.
pub(super) fn normalize_checksum(given: &str) -> Option<String> {
    let hex = given.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `XX:XX:XX:XX:XX:XX` or `XX-XX-XX-XX-XX-XX`.
pub(super) fn valid_mac(mac: &str) -> bool {
    let groups: Vec<&str> = mac.split([':', '-']).collect();
    groups.len() == 6
        && groups
            .iter()
            .all(|g| g.len() == 2 && g.chars().all(|c| c.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------
// Dialects

pub(super) fn is_nbd(source: &str) -> bool {
    NBD_SCHEMES.iter().any(|scheme| source.starts_with(scheme))
}

/// NUL, newlines and other control characters have no business in paths, ids or names: they
/// truncate C strings in libguestfs and forge lines in logs and reports.
pub(super) fn no_control_chars(key: &str, given: &str) -> Res<()> {
    match given.chars().position(char::is_control) {
        None => Ok(()),
        Some(at) => Err(bad(
            key,
            format!("{} contains a control character at {at}", quote(given)),
        )),
    }
}
