//! Reading a batch: a JSON or YAML file listing manifest paths (relative to the file), or a
//! directory of `*.json` manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A batch that cannot be run; one line naming the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a batch file: {reason} (expected a list of manifest paths, or manifests: [...])", path.display())]
    Syntax { path: PathBuf, reason: String },
    #[error("{}: {entry}: {reason}", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{}: no manifests in the batch", .0.display())]
    Empty(PathBuf),
}

/// One VM of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    /// The manifest, absolute.
    pub manifest: PathBuf,
    /// Where it was listed (`manifests[2]`, or the file name in a directory batch).
    pub label: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchFile {
    List(Vec<serde_yaml_ng::Value>),
    Object {
        manifests: Vec<serde_yaml_ng::Value>,
    },
}

/// The entries of a batch file or directory, in order (a directory's sorted by name).
pub fn read_batch(path: &Path) -> Result<Vec<BatchEntry>, BatchError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let read_err = |source| BatchError::Read {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(read_err)?;
    let entries = if meta.is_dir() {
        read_dir_batch(&path)?
    } else {
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        parse_batch_file(&path, &text)?
    };
    if entries.is_empty() {
        return Err(BatchError::Empty(path));
    }
    Ok(entries)
}

fn read_dir_batch(dir: &Path) -> Result<Vec<BatchEntry>, BatchError> {
    let rd = std::fs::read_dir(dir).map_err(|source| BatchError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.') && !n.ends_with(".report.json"))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| BatchEntry {
            manifest: dir.join(&n),
            label: n,
        })
        .collect())
}

/// Parse a batch file's text (JSON is YAML too); entries resolve against its directory.
pub fn parse_batch_file(path: &Path, text: &str) -> Result<Vec<BatchEntry>, BatchError> {
    parse_entries(path, text, Some(path.parent().unwrap_or(Path::new("/"))))
}

/// Parse a batch whose entries must be absolute paths (one dropped in the daemon's spool has
/// no directory of its own to resolve them against); `path` names it in errors.
pub fn parse_absolute_batch(path: &Path, text: &str) -> Result<Vec<BatchEntry>, BatchError> {
    parse_entries(path, text, None)
}

/// Whether a file's text is a batch (a list, or an object with `manifests:` and none of a
/// manifest's version keys) rather than one VM's manifest.
pub fn looks_like_batch(text: &str) -> bool {
    use serde_yaml_ng::Value;
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Sequence(_)) => true,
        Ok(Value::Mapping(m)) => {
            m.contains_key("manifests")
                && !m.contains_key("version")
                && !m.contains_key("manifest_version")
        }
        _ => false,
    }
}

fn parse_entries(
    path: &Path,
    text: &str,
    base: Option<&Path>,
) -> Result<Vec<BatchEntry>, BatchError> {
    let syntax = |reason: String| BatchError::Syntax {
        path: path.to_path_buf(),
        reason,
    };
    let file: BatchFile =
        serde_yaml_ng::from_str(text).map_err(|e| syntax(one_line(&e.to_string())))?;
    let values = match file {
        BatchFile::List(v) | BatchFile::Object { manifests: v } => v,
    };
    let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let label = format!("manifests[{i}]");
        let bad = |reason: String| BatchError::Entry {
            path: path.to_path_buf(),
            entry: label.clone(),
            reason,
        };
        let rel = match v {
            serde_yaml_ng::Value::String(s) if !s.trim().is_empty() => s.clone(),
            serde_yaml_ng::Value::String(_) => return Err(bad("empty path".into())),
            other => {
                return Err(bad(format!(
                    "expected a manifest path (a string), found {}",
                    kind(other)
                )))
            }
        };
        let manifest = match base {
            Some(b) => b.join(&rel),
            None if Path::new(&rel).is_absolute() => PathBuf::from(&rel),
            None => {
                return Err(bad(format!(
                    "{rel}: a relative path; a batch in the spool must list absolute paths"
                )))
            }
        };
        match std::fs::metadata(&manifest) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(bad(format!("{rel}: not a regular file"))),
            Err(e) => return Err(bad(format!("{rel}: {e}"))),
        }
        let key = std::fs::canonicalize(&manifest).unwrap_or_else(|_| manifest.clone());
        if let Some(first) = seen.insert(key, label.clone()) {
            return Err(bad(format!("{rel}: listed twice (also {first})")));
        }
        out.push(BatchEntry { manifest, label });
    }
    Ok(out)
}

fn kind(v: &serde_yaml_ng::Value) -> &'static str {
    use serde_yaml_ng::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(d.path().join(n), "{}").unwrap();
        }
        d
    }

    #[test]
    fn lists_and_objects_in_json_or_yaml() {
        let d = dir_with(&["a.json", "b.yaml"]);
        let f = d.path().join("batch.yaml");
        for text in [
            "- a.json\n- b.yaml\n",
            "manifests: [a.json, b.yaml]\n",
            r#"{"manifests": ["a.json", "b.yaml"]}"#,
            r#"["a.json", "b.yaml"]"#,
        ] {
            let e = parse_batch_file(&f, text).unwrap();
            let got: Vec<PathBuf> = e.into_iter().map(|e| e.manifest).collect();
            assert_eq!(
                got,
                [d.path().join("a.json"), d.path().join("b.yaml")],
                "{text}"
            );
        }
    }

    #[test]
    fn bad_entries_name_the_file_and_the_entry() {
        let d = dir_with(&["a.json"]);
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let f = d.path().join("batch.json");
        let cases = [
            (
                r#"["a.json", 3]"#,
                "manifests[1]: expected a manifest path (a string), found a number",
            ),
            (
                r#"["a.json", "missing.json"]"#,
                "manifests[1]: missing.json: No such file",
            ),
            (
                r#"["a.json", "a.json"]"#,
                "manifests[1]: a.json: listed twice (also manifests[0])",
            ),
            (r#"["sub"]"#, "manifests[0]: sub: not a regular file"),
            (r#"[""]"#, "manifests[0]: empty path"),
            (r#"{"vms": []}"#, "not a batch file"),
        ];
        for (text, want) in cases {
            let e = parse_batch_file(&f, text).unwrap_err().to_string();
            assert!(e.starts_with(&f.display().to_string()), "{e}");
            assert!(e.contains(want), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_directory_batch_takes_its_json_manifests_in_name_order() {
        let d = dir_with(&[
            "b.json",
            "a.json",
            ".hidden.json",
            "x.yaml",
            "a.report.json",
        ]);
        let e = read_batch(d.path()).unwrap();
        let labels: Vec<&str> = e.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["a.json", "b.json"]);
        let empty = tempfile::tempdir().unwrap();
        let err = read_batch(empty.path()).unwrap_err().to_string();
        assert!(err.ends_with("no manifests in the batch"), "{err}");
    }

    #[test]
    fn batches_are_told_from_manifests_and_spool_batches_need_absolute_paths() {
        assert!(looks_like_batch("- /a.json\n"));
        assert!(looks_like_batch(r#"{"manifests": ["/a.json"]}"#));
        assert!(!looks_like_batch(r#"{"version": "1.0", "pipeline": {}}"#));
        assert!(!looks_like_batch(
            r#"{"manifest_version": "1.0", "manifests": [], "disks": []}"#
        ));
        assert!(!looks_like_batch("{not yaml"));
        let d = dir_with(&["a.json"]);
        let a = d.path().join("a.json");
        let f = Path::new("wave.json");
        let e = parse_absolute_batch(f, &format!("[{:?}]", a.display().to_string())).unwrap();
        assert_eq!(e[0].manifest, a);
        let err = parse_absolute_batch(f, r#"["a.json"]"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "wave.json: manifests[0]: a.json: a relative path; a batch in the spool must list absolute paths"
        );
    }
}
