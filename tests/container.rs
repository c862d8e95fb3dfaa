//! The container image of `scripts/build-container.sh` (debootstrap + the .deb, `podman import`,
//! no registry) runs a real `h2k-guest fix` of the debian12-bios fixture with podman: the fixture
//! directory bind-mounted read-only, an output directory read-write, /dev/kvm passed when the
//! host has it (TCG inside otherwise). On the host the output must pass `qemu-img check`, the
//! report must say success with the repairs of a VMware guest, and the source must be unchanged.
//! Root only (debootstrap, podman). One appliance launch inside the container.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{fixture, read_json, sha256_file, tail, vm_lock};

/// The podman flags this machine needs (see README "Container"): runc, because crun 1.8 refuses
/// the hybrid cgroup layout (the unified hierarchy here has a controller: "cgroups in hybrid
/// mode not supported, drop all controllers from cgroupv2"); explicit rlimits, because the
/// sandbox has no CAP_SYS_RESOURCE and podman's defaults (nofile 1048576) cannot be set
/// ("setrlimit RLIMIT_NOFILE: Operation not permitted"); no network (a fix needs none).
fn podman_run() -> Command {
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

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[test]
fn the_container_fixes_the_bios_fixture() {
    let deb = common::deb_package();
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(common::repo_root().join("scripts/build-container.sh"))
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-container.sh: {}\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    let image = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("an image name")
        .to_string();
    eprintln!("{image} built in {:.0} s", t.elapsed().as_secs_f64());
    assert_eq!(
        image,
        format!("localhost/h2k-guest:{}", env!("CARGO_PKG_VERSION"))
    );

    // The image's entrypoint is the packaged binary of this build.
    let v = podman_run().arg(&image).arg("--version").output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(
        String::from_utf8(v.stdout).unwrap(),
        String::from_utf8(common::h2k(["--version"]).output.stdout).unwrap()
    );

    let vmdk = fixture("debian12-bios");
    let facts = common::fixture_facts(&vmdk);
    let before = sha256_file(&vmdk);
    let fixtures = vmdk.parent().unwrap();
    let name = vmdk.file_name().unwrap().to_str().unwrap();
    let outdir = tempfile::tempdir().unwrap();

    let mut run = podman_run();
    run.arg("-v")
        .arg(format!("{}:/in:ro", fixtures.display()))
        .arg("-v")
        .arg(format!("{}:/out", outdir.path().display()));
    if kvm_usable() {
        run.args(["--device", "/dev/kvm"]);
    } else {
        // What scripts/fixtures/lib.sh's run_guestfish does: libguestfs's direct backend on TCG.
        run.args([
            "-e",
            "H2K_ACCEL=tcg",
            "-e",
            "LIBGUESTFS_BACKEND_SETTINGS=force_tcg",
        ]);
    }
    run.arg(&image).args([
        "--quiet",
        "fix",
        &format!("/in/{name}"),
        "-o",
        "/out/vm.qcow2",
    ]);
    let _vm = vm_lock();
    let t = Instant::now();
    let res = run.output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        res.status.success(),
        "podman run … fix: {}\n{}",
        res.status,
        tail(&String::from_utf8_lossy(&res.stderr), 40)
    );
    eprintln!("fix in the container: {secs:.0} s");

    let output = outdir.path().join("vm.qcow2");
    assert!(output.is_file(), "no {} on the host", output.display());
    assert_eq!(sha256_file(&vmdk), before, "the source disk was modified");
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let report = read_json(&outdir.path().join("vm.qcow2.report.json"));
    assert_eq!(report["status"], "success", "{report:#}");
    assert_eq!(report["os"]["distro"], "debian");
    assert_eq!(report["appliance"]["launches"], 1);
    let accel = report["appliance"]["accelerator"].as_str().unwrap();
    assert_eq!(accel, if kvm_usable() { "kvm" } else { "tcg" });
    // The repairs a VMware-era guest needs were made (not a no-op copy): fstab by UUID and virtio
    // in the initramfs.
    let fix = |name: &str| {
        report["fixes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name} record"))
            .clone()
    };
    let root_uuid = facts["partitions"][0]["uuid"].as_str().unwrap();
    let fstab = fix("fstab");
    assert_eq!(fstab["status"], "changed");
    assert!(fstab["files"][0]["diff"]
        .as_str()
        .unwrap()
        .contains(&format!("+UUID={root_uuid}")));
    assert_eq!(fix("initramfs")["status"], "changed");
    // The job ran inside the container: its paths are the container's.
    assert!(
        report["sources"][0]
            .to_string()
            .contains(&format!("\"/in/{name}\"")),
        "{}",
        report["sources"][0]
    );
    assert!(
        Path::new(&outdir.path().join("vm.qcow2"))
            .metadata()
            .unwrap()
            .len()
            > 1 << 20
    );
}
