//! What tests/kubernetes.rs and tests/kubernetes_entrypoint.rs both read: the files of
//! deploy/kubernetes/ as JSON values. (Needs the test's `mod common`.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn deploy() -> PathBuf {
    crate::common::repo_root().join("deploy/kubernetes")
}

pub fn base() -> PathBuf {
    deploy().join("base")
}

/// Every YAML document of a file, as JSON.
pub fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v = serde_yaml_ng::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind_name(r: &Value) -> String {
    format!(
        "{}/{}",
        r["kind"].as_str().unwrap_or("?").to_lowercase(),
        r["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The resource files of the base, as its kustomization lists them.
pub fn base_resources() -> Vec<PathBuf> {
    let k = &yaml_docs(&base().join("kustomization.yaml"))[0];
    k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| base().join(r.as_str().unwrap()))
        .collect()
}

/// The shipped list's entries, by the entrypoint's rule: blank lines and # comments are not.
pub fn list_entries(list: &str) -> Vec<String> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

pub fn configmap_key(file: &str, key: &str) -> String {
    yaml_docs(&base().join(file))[0]["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: no data.{key}"))
        .to_string()
}
