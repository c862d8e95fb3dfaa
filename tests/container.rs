//! The container image of `scripts/build-container.sh` (debootstrap + this build's .deb,
//! `podman import`, no registry) is built and runs: its h2k-guest is this build's, and it is the
//! image deploy/kubernetes/base/job.yaml names. Needs no guest image, so scripts/test.sh runs it
//! while the fixtures build; it leaves the runtime root cached for tests/container_pod.rs, which
//! runs a conversion in it. Root only (debootstrap, podman).

mod common;
mod k8s_support;
mod podman_support;

use podman_support::{build_image, podman_run};

#[test]
fn the_image_is_built_offline_and_runs_this_build() {
    let image = build_image();
    let v = podman_run()
        .arg("--entrypoint=h2k-guest")
        .arg(&image)
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(
        String::from_utf8(v.stdout).unwrap(),
        String::from_utf8(common::h2k(["--version"]).output.stdout).unwrap()
    );
}
