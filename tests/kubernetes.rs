//! `deploy/kubernetes/`: every resource validates against the Kubernetes schemas offline
//! (kubernetes-validate from PyPI, run in a network namespace with no network), broken copies
//! are rejected (the control that the validator validates), the variants built from their
//! kustomize patches validate too, and the Job is consistent with its ConfigMaps, volumes and
//! the crate's version. The pod's entrypoint: tests/kubernetes_entrypoint.rs.
//!
//! No appliance, no VM: the manifests are checked, not run on a cluster.

mod common;
mod k8s_support;

use k8s_support::{
    base, base_resources, configmap_key, deploy, kind_name, list_entries, yaml_docs,
};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Value};

/// The oldest Kubernetes the Job is for (backoffLimitPerIndex, FailIndex: beta, on by default)
/// and the newest the validator ships.
const K8S_VERSIONS: [&str; 2] = ["1.29", "1.37"];

/// Install the validator once per test process (a no-op when setup.sh already did).
fn validator_ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new("bash")
            .arg(common::repo_root().join("scripts/k8s-validate.sh"))
            .arg("--install")
            .output()
            .expect("run scripts/k8s-validate.sh --install");
        assert!(
            out.status.success(),
            "installing the validator failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    });
}

struct Verdict {
    ok: bool,
    /// "kind/name" of every resource the validator passed.
    passed: BTreeSet<String>,
    output: String,
}

/// `kubernetes-validate --strict -k VERSION FILES` with no network at all (`unshare -n`): ok
/// only with exit 0 and no ERROR, WARN (a kind it has no schema for) or FATAL line.
fn validate(version: &str, files: &[PathBuf]) -> Verdict {
    validator_ready();
    let out = Command::new("unshare")
        .arg("-n")
        .arg("bash")
        .arg(common::repo_root().join("scripts/k8s-validate.sh"))
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .expect("run the validator");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = output
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(&format!("against version {version}")))
        .filter_map(|l| l.split(" for resource ").nth(1))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let complaint = output
        .lines()
        .any(|l| l.starts_with("ERROR") || l.starts_with("WARN") || l.starts_with("FATAL"));
    Verdict {
        ok: out.status.success() && !complaint,
        passed,
        output,
    }
}

/// What `kubectl kustomize VARIANT` makes: the base's resources with the variant's JSON 6902
/// patches applied to the resources their target names (kind, and name when given).
fn build_variant(variant: &Path) -> Vec<Value> {
    let k = &yaml_docs(&variant.join("kustomization.yaml"))[0];
    assert_eq!(
        k["resources"],
        json!(["../../base"]),
        "{}",
        variant.display()
    );
    let mut docs: Vec<Value> = base_resources().iter().flat_map(|f| yaml_docs(f)).collect();
    for p in k["patches"].as_array().expect("patches") {
        let target = &p["target"];
        let ops: serde_yaml_ng::Value = serde_yaml_ng::from_str(p["patch"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{}: patch: {e}", variant.display()));
        let patch: json_patch::Patch = serde_json::from_value(serde_json::to_value(ops).unwrap())
            .unwrap_or_else(|e| panic!("{}: patch: {e}", variant.display()));
        let mut hits = 0;
        for d in docs.iter_mut().filter(|d| {
            d["kind"] == target["kind"]
                && (target["name"].is_null() || d["metadata"]["name"] == target["name"])
        }) {
            json_patch::patch(d, &patch)
                .unwrap_or_else(|e| panic!("{}: {e} on {}", variant.display(), kind_name(d)));
            hits += 1;
        }
        assert_eq!(
            hits,
            1,
            "{}: patch target {target} matched {hits} resources",
            variant.display()
        );
    }
    docs
}

fn write_docs(dir: &Path, name: &str, docs: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string_pretty(d).unwrap())
        .collect();
    std::fs::write(&path, text.join("\n---\n")).unwrap();
    path
}

fn the_job(docs: &[Value]) -> Value {
    docs.iter()
        .find(|d| d["kind"] == "Job")
        .cloned()
        .expect("a Job")
}

fn container(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]["containers"][0]
}

/// What the schema cannot say about the Job (it has no enum for completionMode, say) and what
/// ties it to its ConfigMaps, volumes and the crate's version. Empty when all holds.
fn job_problems(job: &Value, docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let spec = &job["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(job);
    let mut want = |ok: bool, what: &str| {
        if !ok {
            p.push(what.to_string());
        }
    };
    want(
        spec["completionMode"] == "Indexed",
        "completionMode is not Indexed",
    );
    let entries = list_entries(&configmap_key("configmap-manifests.yaml", "manifests.txt"));
    want(
        spec["completions"] == json!(entries.len()),
        &format!(
            "completions is not the {} entries of manifests.txt",
            entries.len()
        ),
    );
    want(
        spec["parallelism"].as_u64().is_some_and(|n| n >= 1)
            && spec["parallelism"].as_u64() <= spec["completions"].as_u64(),
        "parallelism is not 1..=completions",
    );
    want(
        spec["backoffLimitPerIndex"].is_u64(),
        "no backoffLimitPerIndex",
    );
    want(
        spec["ttlSecondsAfterFinished"].is_u64(),
        "no ttlSecondsAfterFinished",
    );
    want(
        pod["restartPolicy"] == "Never",
        "podFailurePolicy needs restartPolicy Never",
    );
    for rule in spec["podFailurePolicy"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if !rule["onExitCodes"].is_null() {
            want(
                rule["onExitCodes"]["containerName"] == c["name"],
                "podFailurePolicy names another container",
            );
        }
    }
    want(
        c["image"] == format!("localhost/h2k-guest:{}", env!("CARGO_PKG_VERSION")),
        "the image is not localhost/h2k-guest:<the crate's version>",
    );
    want(
        c["command"] == json!(["/bin/sh", "/etc/h2k-wave/entrypoint.sh"]),
        "the command is not the entrypoint",
    );
    let mount = |name: &str| {
        c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .map(|m| m["mountPath"].clone())
            .unwrap_or(Value::Null)
    };
    // The entrypoint's defaults are these paths.
    want(
        mount("wave") == "/etc/h2k-wave",
        "the wave ConfigMaps are not at /etc/h2k-wave",
    );
    want(
        mount("sources") == "/h2k/sources",
        "sources are not at /h2k/sources",
    );
    want(
        mount("outputs") == "/h2k/out",
        "outputs are not at /h2k/out",
    );
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let projected: Vec<Value> = volume("wave")["projected"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["configMap"]["name"].clone())
        .collect();
    for claim in [
        volume("sources")["persistentVolumeClaim"]["claimName"].clone(),
        volume("outputs")["persistentVolumeClaim"]["claimName"].clone(),
    ]
    .iter()
    .chain(&projected)
    {
        want(
            docs.iter().any(|d| {
                ["PersistentVolumeClaim", "ConfigMap"].contains(&d["kind"].as_str().unwrap_or(""))
                    && d["metadata"]["name"] == *claim
            }),
            &format!("the Job uses {claim}, which is not among the resources"),
        );
    }
    want(
        projected.len() == 2,
        "the wave volume does not project both ConfigMaps",
    );
    want(
        volume("sources")["persistentVolumeClaim"]["readOnly"] == true,
        "sources are not mounted read-only",
    );
    p
}

#[test]
fn every_resource_validates_offline_against_the_schemas() {
    let t = Instant::now();
    let files = base_resources();
    // The kustomization lists every resource file of the base, and nothing else is there.
    let on_disk: BTreeSet<PathBuf> = std::fs::read_dir(base())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    assert_eq!(
        on_disk,
        files.iter().cloned().collect(),
        "base/ vs its kustomization.yaml"
    );
    let expected: BTreeSet<String> = files
        .iter()
        .flat_map(|f| yaml_docs(f))
        .map(|d| kind_name(&d))
        .collect();
    assert_eq!(expected.len(), 6, "{expected:?}");
    for v in K8S_VERSIONS {
        let verdict = validate(v, &files);
        assert!(verdict.ok, "Kubernetes {v}:\n{}", verdict.output);
        assert_eq!(
            verdict.passed, expected,
            "Kubernetes {v}:\n{}",
            verdict.output
        );
    }
    let docs: Vec<Value> = files.iter().flat_map(|f| yaml_docs(f)).collect();
    let problems = job_problems(&the_job(&docs), &docs);
    assert!(problems.is_empty(), "{problems:?}");
    // One namespace for all, the one the kustomization sets.
    let ns = &yaml_docs(&base().join("kustomization.yaml"))[0]["namespace"];
    for d in &docs {
        let own = if d["kind"] == "Namespace" {
            &d["metadata"]["name"]
        } else {
            &d["metadata"]["namespace"]
        };
        assert_eq!(own, ns, "{}", kind_name(d));
    }
    eprintln!(
        "validated {} resources against {K8S_VERSIONS:?} in {:.1} s",
        expected.len(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn broken_copies_are_rejected() {
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let docs = yaml_docs(&base().join("job.yaml"));
    let job = the_job(&docs);
    let broken = |name: &str, f: &dyn Fn(&mut Value)| {
        let mut j = job.clone();
        f(&mut j);
        (
            name.to_string(),
            write_docs(tmp.path(), &format!("{name}.json"), &[j]),
        )
    };
    let cases = [
        broken("completions-string", &|j| {
            j["spec"]["completions"] = json!("three")
        }),
        broken("typo-field", &|j| {
            let v = j["spec"]
                .as_object_mut()
                .unwrap()
                .remove("backoffLimitPerIndex")
                .unwrap();
            j["spec"]["backoffLimitPerIndx"] = v;
        }),
        broken("no-container-name", &|j| {
            j["spec"]["template"]["spec"]["containers"][0]
                .as_object_mut()
                .unwrap()
                .remove("name");
        }),
        broken("memory-list", &|j| {
            j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] =
                json!(["3Gi"])
        }),
        // A kind with no schema is only a warning to kubernetes-validate (exit 0): validate()
        // must still call it a failure.
        broken("unknown-kind", &|j| j["kind"] = json!("Jobb")),
    ];
    for (name, file) in &cases {
        let verdict = validate("1.29", std::slice::from_ref(file));
        assert!(!verdict.ok, "{name} was accepted:\n{}", verdict.output);
        assert!(verdict.passed.is_empty(), "{name}:\n{}", verdict.output);
    }
    // The field names the validator points at.
    let v = validate("1.29", std::slice::from_ref(&cases[0].1));
    assert!(
        v.output
            .contains("spec.completions: 'three' is not of type"),
        "{}",
        v.output
    );
    let v = validate("1.29", std::slice::from_ref(&cases[1].1));
    assert!(
        v.output.contains("'backoffLimitPerIndx' was unexpected"),
        "{}",
        v.output
    );
    // Kubernetes 1.27 had no backoffLimitPerIndex (nor podReplacementPolicy, nor an optional
    // onPodConditions): the shipped Job fails there, and a copy without the last two fails on
    // the first.
    let v = validate("1.27", &[base().join("job.yaml")]);
    assert!(
        !v.ok && v.output.contains("against version 1.27"),
        "{}",
        v.output
    );
    let mut old = job.clone();
    for newer in ["podFailurePolicy", "podReplacementPolicy"] {
        old["spec"].as_object_mut().unwrap().remove(newer);
    }
    let v = validate("1.27", &[write_docs(tmp.path(), "old.json", &[old])]);
    assert!(
        !v.ok && v.output.contains("'backoffLimitPerIndex' was unexpected"),
        "{}",
        v.output
    );
    // completionMode has no enum in the schemas: a typo there passes them, so the Job's own
    // checks catch it.
    let mut typo = job.clone();
    typo["spec"]["completionMode"] = json!("Indexd");
    let all: Vec<Value> = base_resources().iter().flat_map(|f| yaml_docs(f)).collect();
    assert_eq!(job_problems(&typo, &all), ["completionMode is not Indexed"]);
    let mut more = job.clone();
    more["spec"]["completions"] = json!(4);
    assert_eq!(
        job_problems(&more, &all),
        ["completions is not the 3 entries of manifests.txt"]
    );
    eprintln!(
        "{} broken copies rejected in {:.1} s",
        cases.len() + 3,
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn the_variants_build_and_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let base_docs: Vec<Value> = base_resources().iter().flat_map(|f| yaml_docs(f)).collect();
    let base_job = the_job(&base_docs);
    let kvm = "devices.kubevirt.io/kvm";
    assert_eq!(container(&base_job)["resources"]["limits"][kvm], "1");

    let priv_docs = build_variant(&deploy().join("variants/privileged-kvm"));
    let tcg_docs = build_variant(&deploy().join("variants/tcg"));
    for (name, docs) in [("privileged-kvm", &priv_docs), ("tcg", &tcg_docs)] {
        let file = write_docs(tmp.path(), &format!("{name}.json"), docs);
        for v in K8S_VERSIONS {
            let verdict = validate(v, std::slice::from_ref(&file));
            assert!(verdict.ok, "{name} on Kubernetes {v}:\n{}", verdict.output);
            assert_eq!(verdict.passed.len(), 6, "{name}:\n{}", verdict.output);
        }
        let job = the_job(docs);
        assert!(
            job_problems(&job, docs).is_empty(),
            "{name}: {:?}",
            job_problems(&job, docs)
        );
        assert!(
            container(&job)["resources"]["limits"][kvm].is_null(),
            "{name} still asks for {kvm}"
        );
    }

    let job = the_job(&priv_docs);
    let c = container(&job);
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(c["securityContext"]["allowPrivilegeEscalation"].is_null());
    let vols = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(vols
        .iter()
        .any(|v| v["hostPath"] == json!({"path": "/dev/kvm", "type": "CharDevice"})));
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/dev/kvm"));
    let ns = priv_docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    let job = the_job(&tcg_docs);
    let c = container(&job);
    assert_eq!(c["env"][0], json!({"name": "H2K_ACCEL", "value": "tcg"}));
    assert_eq!(c["resources"]["limits"]["cpu"], "4");
    assert_eq!(
        c["securityContext"],
        container(&base_job)["securityContext"]
    );
    // Nothing else changed.
    let others = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] != "Job")
            .cloned()
            .collect()
    };
    assert_eq!(others(&tcg_docs), others(&base_docs));
}
