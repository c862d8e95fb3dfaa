//! podman for tests/container.rs and tests/container_pod.rs: the image of
//! `scripts/build-container.sh` and the flags this machine needs to run it. (Needs the test's
//! `mod common` and `mod k8s_support`.)
#![allow(dead_code)]

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// The podman flags this machine needs (see README "Container"): runc, because crun 1.8 refuses
/// the hybrid cgroup layout (the unified hierarchy here has a controller: "cgroups in hybrid
/// mode not supported, drop all controllers from cgroupv2"); explicit rlimits, because the
/// sandbox has no CAP_SYS_RESOURCE and podman's defaults (nofile 1048576) cannot be set
/// ("setrlimit RLIMIT_NOFILE: Operation not permitted"); no network (a fix needs none).
pub fn podman_run() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=32768:32768",
        "--network",
        "none",
    ]);
    c
}

/// KVM as h2k-guest decides it (a real KVM_CREATE_VM probe, not just an openable /dev/kvm:
/// this machine has one that opens and does not work).
pub fn kvm_usable() -> bool {
    h2k_guest::accel::kvm_usable().is_ok()
}

/// The Job's one container, from deploy/kubernetes/base/job.yaml.
pub fn job_container() -> Value {
    let job = &crate::k8s_support::yaml_docs(&crate::k8s_support::base().join("job.yaml"))[0];
    let containers = job["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("job.yaml: spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "job.yaml: one container expected");
    let mut c = containers[0].clone();
    c["podSecurityContext"] = job["spec"]["template"]["spec"]["securityContext"].clone();
    c
}

/// podman flags for the container's securityContext (and the pod's runAsUser/runAsGroup).
pub fn security_flags(c: &Value) -> Vec<String> {
    let sc = &c["securityContext"];
    let mut flags = Vec::new();
    for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        flags.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        flags.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    if sc["allowPrivilegeEscalation"] == false {
        flags.push("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"] == true {
        // Kubernetes mounts no tmpfs of its own on a read-only root: only the pod's volumes
        // are writable.
        flags.push("--read-only".into());
        flags.push("--read-only-tmpfs=false".into());
    }
    let pod = &c["podSecurityContext"];
    let user = pod["runAsUser"].as_u64().unwrap_or(0);
    let group = pod["runAsGroup"].as_u64().unwrap_or(0);
    flags.push(format!("--user={user}:{group}"));
    flags
}

/// The image of this build's .deb (`scripts/build-container.sh`; cached roots make a rebuild
/// about a minute), checked to be the one deploy/kubernetes/base/job.yaml runs. Its name.
pub fn build_image() -> String {
    let deb = crate::common::deb_package();
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(crate::common::repo_root().join("scripts/build-container.sh"))
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-container.sh: {}\n{}",
        out.status,
        crate::common::tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    let image = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("an image name")
        .to_string();
    eprintln!("TIMING {image} built in {:.0} s", t.elapsed().as_secs_f64());
    assert_eq!(
        job_container()["image"].as_str(),
        Some(image.as_str()),
        "job.yaml names another image than build-container.sh builds"
    );
    image
}
