//! Manifest reading: seed format and HyperSDK Artifact Manifest v1.0, JSON or YAML → [`crate::plan::Plan`].
//!
//! Both dialects are parsed into a `serde_json::Value` (YAML too) and walked by hand, so every
//! error names its key path (`disks[1].id`) and every unknown key is a warning, never a failure.
//! Source files are checked for existence here so `h2k-guest manifest validate` catches a wrong
//! path before an appliance is launched. `manifests/README.md` documents every key.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::plan::{
    CompressionType, ConvertPlan, Dialect, DiskPlan, DiskType, Firmware, FixPlan, FstabMode,
    NicPlan, OutputFormat, Plan, ValidatePlan, VmPlan,
};

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
    let fail =
        |message: String| ManifestError::new(path, ManifestErrorKind::Read, None, None, message);
    let meta = fs::metadata(path).map_err(|e| fail(io_reason(&e)))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not a manifest file".into()));
    }
    let file = fs::File::open(path).map_err(|e| fail(io_reason(&e)))?;
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
        serde_json::from_str(text).map_err(|e| {
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

// ---------------------------------------------------------------------------------------------
// Walking the value

/// A problem at a key path (empty = the whole document); `parse_manifest` adds the file name.
struct Bad {
    key: String,
    message: String,
}

type Res<T> = Result<T, Bad>;

fn bad(key: &str, message: impl Into<String>) -> Bad {
    Bad {
        key: key.to_string(),
        message: message.into(),
    }
}

fn expected(key: &str, what: &str, found: &Value) -> Bad {
    bad(key, format!("expected {what}, found {}", describe(found)))
}

fn missing(key: &str) -> Bad {
    bad(key, "missing required key")
}

fn describe(value: &Value) -> String {
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
fn quote(s: &str) -> String {
    const MAX_CHARS: usize = 100;
    if s.chars().count() > MAX_CHARS {
        let head: String = s.chars().take(MAX_CHARS).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

fn join(parent: &str, key: &str) -> String {
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

fn one_of<T>(choices: &[(&str, T)]) -> String {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// An object at a key path.
struct Obj<'v> {
    path: String,
    map: &'v Map<String, Value>,
}

impl<'v> Obj<'v> {
    /// Type-check `value` as an object and warn about every key not in `known`.
    fn open(
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

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// `null` counts as absent: YAML reads an empty value (`key:`) as null.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn object(&self, key: &str, known: &[&str], w: &mut Vec<String>) -> Res<Option<Obj<'v>>> {
        self.get(key)
            .map(|v| Obj::open(self.key(key), v, known, w))
            .transpose()
    }

    fn required_object(&self, key: &str, known: &[&str], w: &mut Vec<String>) -> Res<Obj<'v>> {
        self.object(key, known, w)?
            .ok_or_else(|| missing(&self.key(key)))
    }

    /// An object with free-form keys (metadata, tags): type-checked, keys never flagged.
    fn free_object(&self, key: &str) -> Res<Option<Obj<'v>>> {
        self.object(key, &[], &mut Vec::new())
    }

    fn array(&self, key: &str) -> Res<Option<&'v Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(expected(&self.key(key), "an array", other)),
        }
    }

    fn bool(&self, key: &str) -> Res<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(expected(&self.key(key), "a boolean", other)),
        }
    }

    fn str(&self, key: &str) -> Res<Option<&'v str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(expected(&self.key(key), "a string", other)),
        }
    }

    fn required_str(&self, key: &str) -> Res<&'v str> {
        self.str(key)?.ok_or_else(|| missing(&self.key(key)))
    }

    fn uint(&self, key: &str) -> Res<Option<u64>> {
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

    fn u32(&self, key: &str) -> Res<Option<u32>> {
        match self.uint(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| bad(&self.key(key), format!("{n} is out of range"))),
        }
    }

    fn number(&self, key: &str) -> Res<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
                _ => Err(expected(&self.key(key), "a non-negative number", v)),
            },
            Some(other) => Err(expected(&self.key(key), "a non-negative number", other)),
        }
    }

    fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)]) -> Res<Option<T>> {
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
    fn set_bool(&self, key: &str, target: &mut bool) -> Res<()> {
        if let Some(b) = self.bool(key)? {
            *target = b;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared vocabulary

const FSTAB_MODES: &[(&str, FstabMode)] = &[
    ("stabilize-all", FstabMode::StabilizeAll),
    ("bypath-only", FstabMode::BypathOnly),
    ("noop", FstabMode::Noop),
];

/// Output format names, with the extension each gives a file name that lacks one.
const OUTPUT_FORMATS: &[(&str, (OutputFormat, &str))] = &[
    ("qcow2", (OutputFormat::Qcow2, "qcow2")),
    ("raw", (OutputFormat::Raw, "raw")),
    ("img", (OutputFormat::Raw, "img")),
];

const COMPRESSION_TYPES: &[(&str, CompressionType)] = &[
    ("zstd", CompressionType::Zstd),
    ("zlib", CompressionType::Zlib),
];

/// Extensions taken as "the name already has an image extension": anything else gets one added.
const IMAGE_EXTENSIONS: &[&str] = &["qcow2", "qcow", "raw", "img", "vmdk", "vdi", "vhd", "vhdx"];

const NBD_SCHEMES: &[&str] = &["nbd://", "nbd+unix://", "nbd+tcp://"];

const VALIDATE_KEYS: &[&str] = &["enabled", "check_image_integrity", "boot", "boot_timeout"];

fn check_version(key: &str, value: &Value) -> Res<()> {
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

fn output_format(obj: &Obj, key: &str) -> Res<Option<(OutputFormat, &'static str)>> {
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

fn compress_level(obj: &Obj, key: &str) -> Res<Option<u8>> {
    match obj.uint(key)? {
        None => Ok(None),
        Some(n @ 1..=9) => Ok(Some(n as u8)),
        Some(n) => Err(bad(
            &obj.key(key),
            format!("{n} is out of range (expected 1 to 9)"),
        )),
    }
}

fn validate_plan(obj: Option<Obj>) -> Res<ValidatePlan> {
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
    }
    Ok(plan)
}

/// Warn about settings that cannot take effect, and drop compression where qemu-img would refuse it.
fn settle_convert(convert: &mut ConvertPlan, path: &str, w: &mut Vec<String>) {
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

/// A source: an absolute path to an existing file, or an NBD URI (not checked here).
fn check_source(key: &str, given: &str) -> Res<String> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    if NBD_SCHEMES.iter().any(|scheme| given.starts_with(scheme)) {
        return Ok(given.to_string());
    }
    if given.contains("://") {
        return Err(bad(
            key,
            format!(
                "{}: unsupported URI (only nbd://, nbd+unix:// and nbd+tcp:// URIs, or absolute paths)",
                quote(given)
            ),
        ));
    }
    if !Path::new(given).is_absolute() {
        return Err(bad(
            key,
            format!("{} is not an absolute path", quote(given)),
        ));
    }
    match fs::metadata(given) {
        Ok(meta) if meta.is_dir() => Err(bad(
            key,
            format!("{given}: is a directory, not a disk image"),
        )),
        Ok(_) => Ok(given.to_string()),
        Err(e) => Err(bad(key, format!("{given}: {}", io_reason(&e)))),
    }
}

fn is_nbd(source: &str) -> bool {
    NBD_SCHEMES.iter().any(|scheme| source.starts_with(scheme))
}

// ---------------------------------------------------------------------------------------------
// Output paths

fn output_root(origin: &Path, output_dir: Option<&Path>) -> PathBuf {
    let dir = match output_dir {
        Some(dir) => dir,
        None => origin
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    };
    absolute(dir)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        normalize(&cwd.join(path))
    }
}

/// Resolve `.` and `..` without touching the filesystem (`..` at `/` stays at `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
        }
    }
    out
}

fn escapes(key: &str, given: &str, root: &Path) -> Bad {
    bad(
        key,
        format!(
            "{} escapes the output directory {}",
            quote(given),
            root.display()
        ),
    )
}

/// A directory inside `root` (or `root` itself).
fn resolve_dir(key: &str, given: &str, root: &Path) -> Res<PathBuf> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    let dir = normalize(&root.join(given));
    if dir.starts_with(root) {
        Ok(dir)
    } else {
        Err(escapes(key, given, root))
    }
}

/// An output file: relative to `base`, confined to `root`, given the format's extension if it has none.
fn resolve_output(
    key: &str,
    given: &str,
    base: &Path,
    root: &Path,
    (format, ext): (OutputFormat, &str),
    w: &mut Vec<String>,
) -> Res<PathBuf> {
    if given.is_empty() {
        return Err(bad(key, "empty path"));
    }
    // Joining an absolute path replaces `base`, so both kinds go through the same confinement check.
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
    let existing = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .filter(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
    match existing {
        Some(existing) => {
            let fits = match format {
                OutputFormat::Qcow2 => existing == "qcow2",
                OutputFormat::Raw => existing == "raw" || existing == "img",
            };
            if !fits {
                w.push(format!(
                    "{key}: extension .{existing} does not match the output format {}",
                    format.as_str()
                ));
            }
            Ok(path)
        }
        None => {
            let mut name = path.into_os_string();
            name.push(".");
            name.push(ext);
            Ok(PathBuf::from(name))
        }
    }
}

/// Lexically equal, or the same file once symlinks are resolved (as far as the paths exist).
fn same_file(a: &Path, b: &Path) -> bool {
    if normalize(a) == normalize(b) {
        return true;
    }
    let real = |p: &Path| {
        fs::canonicalize(p).ok().or_else(|| {
            let parent = fs::canonicalize(p.parent()?).ok()?;
            Some(parent.join(p.file_name()?))
        })
    };
    matches!((real(a), real(b)), (Some(x), Some(y)) if x == y)
}

/// One disk's source and output, with the keys to blame when they clash.
struct Placement<'a> {
    source: &'a str,
    source_key: String,
    output: &'a Path,
    /// The key that named the output, if the manifest named it.
    output_key: Option<String>,
    label: String,
}

/// Refuse an output that would overwrite a source, or another disk's output.
fn check_placements(placements: &[Placement]) -> Res<()> {
    for (i, this) in placements.iter().enumerate() {
        for other in placements {
            if !is_nbd(other.source) && same_file(this.output, Path::new(other.source)) {
                let key = this.output_key.as_deref().unwrap_or(&other.source_key);
                return Err(bad(
                    key,
                    format!(
                        "output {} would overwrite the source {} ({}); choose another output path or directory",
                        this.output.display(),
                        other.source,
                        other.label
                    ),
                ));
            }
        }
        for other in &placements[..i] {
            if same_file(this.output, other.output) {
                let key = this
                    .output_key
                    .clone()
                    .unwrap_or_else(|| this.label.clone());
                return Err(bad(
                    &key,
                    format!(
                        "output {} is also the output of {}",
                        this.output.display(),
                        other.label
                    ),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Names

fn job_name(name: Option<&str>, origin: &Path) -> String {
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
fn disk_id_from_source(source: &str) -> String {
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

fn valid_disk_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `sha256:<64 hex>`, hex lowercased.
fn normalize_checksum(given: &str) -> Option<String> {
    let hex = given.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `XX:XX:XX:XX:XX:XX` or `XX-XX-XX-XX-XX-XX`.
fn valid_mac(mac: &str) -> bool {
    let groups: Vec<&str> = mac.split([':', '-']).collect();
    groups.len() == 6
        && groups
            .iter()
            .all(|g| g.len() == 2 && g.chars().all(|c| c.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------
// Dialects

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

const SEED_TOP_KEYS: &[&str] = &["version", "manifest_version", "metadata", "pipeline"];
const SEED_PIPELINE_KEYS: &[&str] = &["load", "inspect", "fix", "convert", "validate"];
const SEED_FIX_KEYS: &[&str] = &[
    "enabled",
    "fstab",
    "grub",
    "initramfs",
    "network",
    "vmware_tools",
    "trim",
    "backup",
];
const SEED_CONVERT_KEYS: &[&str] = &[
    "enabled",
    "output_format",
    "compress",
    "compression_type",
    "compress_level",
    "output_path",
];
const SEED_SOURCE_TYPES: &[(&str, &str)] = &[
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
fn seed_plan(value: &Value, origin: &Path, root: PathBuf, w: &mut Vec<String>) -> Res<Plan> {
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
    let pipeline = top.required_object("pipeline", SEED_PIPELINE_KEYS, w)?;

    let load = pipeline.required_object("load", &["source_type", "source_path"], w)?;
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

    let id = disk_id_from_source(&source);
    let (output, output_key) = match output_path {
        Some((key, given)) => (
            resolve_output(&key, given, &root, &root, format, w)?,
            Some(key),
        ),
        None => (root.join(format!("{id}.{}", format.1)), None),
    };
    check_placements(&[Placement {
        source: &source,
        source_key,
        output: &output,
        output_key,
        label: "pipeline.load.source_path".into(),
    }])?;

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
        }],
        inspect,
        fix,
        convert,
        validate,
        vm: VmPlan {
            name: name.map(str::to_string),
            ..VmPlan::default()
        },
        output_dir: root,
        trust_backing_files: false,
        warnings: Vec::new(),
    })
}

/// Absent sections keep [`FixPlan`]'s defaults; a present section with `enabled: false` turns its fix off.
fn seed_fix(obj: Option<Obj>, w: &mut Vec<String>) -> Res<FixPlan> {
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
    Ok(fix)
}

const ARTIFACT_TOP_KEYS: &[&str] = &[
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
const ARTIFACT_SOURCE_KEYS: &[&str] = &[
    "provider",
    "vm_id",
    "vm_name",
    "datacenter",
    "export_timestamp",
    "export_method",
];
const ARTIFACT_VM_KEYS: &[&str] = &[
    "cpu",
    "mem_gb",
    "firmware",
    "secureboot",
    "os_hint",
    "os_version",
];
const ARTIFACT_DISK_KEYS: &[&str] = &[
    "id",
    "source_format",
    "bytes",
    "local_path",
    "checksum",
    "boot_order_hint",
    "label",
    "disk_type",
];
const ARTIFACT_FIX_KEYS: &[&str] = &[
    "enabled",
    "backup",
    "print_fstab",
    "update_grub",
    "regen_initramfs",
    "fstab_mode",
    "remove_vmware_tools",
    // h2k-guest extensions, for parity with the seed format.
    "force_initramfs",
    "regenerate_grub",
    "network_cleanup",
    "trim",
];
const ARTIFACT_CONVERT_KEYS: &[&str] =
    &["enabled", "compress", "compress_level", "compression_type"];
const ARTIFACT_SOURCE_FORMATS: &[(&str, &str)] = &[
    ("vmdk", "vmdk"),
    ("qcow2", "qcow2"),
    ("raw", "raw"),
    ("vhd", "vhd"),
    ("vhdx", "vhdx"),
    ("vdi", "vdi"),
];
const DISK_TYPES: &[(&str, DiskType)] = &[
    ("boot", DiskType::Boot),
    ("data", DiskType::Data),
    ("unknown", DiskType::Unknown),
];
const FIRMWARES: &[(&str, Option<Firmware>)] = &[
    ("bios", Some(Firmware::Bios)),
    ("uefi", Some(Firmware::Uefi)),
    ("unknown", None),
];

/// HyperSDK Artifact Manifest v1.0 (`"manifest_version": "1.0"`, `disks[]`).
fn artifact_plan(value: &Value, origin: &Path, root: PathBuf, w: &mut Vec<String>) -> Res<Plan> {
    let top = Obj::open(String::new(), value, ARTIFACT_TOP_KEYS, w)?;
    let mut vm = VmPlan::default();

    if let Some(source) = top.object("source", ARTIFACT_SOURCE_KEYS, w)? {
        for key in ARTIFACT_SOURCE_KEYS {
            source.str(key)?;
        }
        vm.provider = source.str("provider")?.map(str::to_string);
        vm.name = source.str("vm_name")?.map(str::to_string);
    }
    if let Some(hw) = top.object("vm", ARTIFACT_VM_KEYS, w)? {
        // The exporter omits zero values; a 0 here means "unknown", not "none".
        vm.cpu = hw.u32("cpu")?.filter(|&n| n > 0);
        vm.mem_gb = hw.number("mem_gb")?.filter(|&n| n > 0.0);
        vm.firmware = hw.choice("firmware", FIRMWARES)?.flatten();
        hw.bool("secureboot")?;
        vm.os_hint = hw.str("os_hint")?.map(str::to_string);
        hw.str("os_version")?;
    }
    if let Some(nics) = top.array("nics")? {
        for (i, item) in nics.iter().enumerate() {
            let nic = Obj::open(format!("nics[{i}]"), item, &["id", "mac", "network"], w)?;
            nic.str("id")?;
            let mac = nic.str("mac")?;
            if let Some(mac) = mac.filter(|m| !valid_mac(m)) {
                return Err(bad(
                    &nic.key("mac"),
                    format!("{} is not a MAC address (XX:XX:XX:XX:XX:XX)", quote(mac)),
                ));
            }
            vm.nics.push(NicPlan {
                mac: mac.map(str::to_string),
                network: nic.str("network")?.map(str::to_string),
            });
        }
    }
    informational(&top, w)?;

    let disks = artifact_disks(&top, w)?;

    let mut inspect = true;
    let mut fix = FixPlan::default();
    let mut convert = ConvertPlan::default();
    let mut validate = ValidatePlan::default();
    let pipeline_keys = &["inspect", "fix", "convert", "validate"];
    if let Some(p) = top.object("pipeline", pipeline_keys, w)? {
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
    check_placements(&placements)?;

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
            })
            .collect(),
        inspect,
        fix,
        convert,
        validate,
        vm,
        output_dir: root,
        trust_backing_files: false,
        warnings: Vec::new(),
    })
}

/// Keys kept for the exporter's own records: type-checked, otherwise ignored, except where
/// ignoring them would surprise (guest configuration injection, dry runs).
fn informational(top: &Obj, w: &mut Vec<String>) -> Res<()> {
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
struct ArtifactDisk {
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
fn artifact_disks(top: &Obj, w: &mut Vec<String>) -> Res<Vec<ArtifactDisk>> {
    let items = top.array("disks")?.ok_or_else(|| missing("disks"))?;
    if items.is_empty() {
        return Err(bad("disks", "must list at least one disk"));
    }
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
        if let Some(first) = disks.iter().find(|other| other.id == id) {
            return Err(bad(
                &d.key("id"),
                format!(
                    "duplicate id {} (also disks[{}].id)",
                    quote(id),
                    first.index
                ),
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
        d.str("label")?;
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
fn artifact_fix(f: &Obj, fix: &mut FixPlan) -> Res<()> {
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
    f.set_bool("regenerate_grub", &mut fix.regenerate_grub)?;
    f.set_bool("network_cleanup", &mut fix.network_cleanup)?;
    f.set_bool("trim", &mut fix.trim)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
    "validate": {"enabled": true, "check_image_integrity": false, "boot": true, "boot_timeout": 90}
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
                boot_timeout_secs: 90
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
                    network: Some("VM Network".into())
                }],
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
}
