//! The container image of `scripts/build-container.sh` (debootstrap + the .deb, `podman import`,
//! no registry) runs a real conversion of the debian12-bios fixture with podman, **as the pod of
//! deploy/kubernetes/base/job.yaml runs**: the Job's command (the ConfigMap's entrypoint), its
//! env, its securityContext (capabilities dropped but the ones it adds back, no new privileges,
//! read-only root, user 0), its volume mounts (wave list + entrypoint read-only, sources
//! read-only, outputs, /tmp and /var/tmp as empty directories) and JOB_COMPLETION_INDEX=0, all
//! read from the YAML, so a change to the Job that breaks the pod breaks this test. /dev/kvm is
//! passed when the host has a usable one (TCG inside otherwise, as in variants/tcg).
//! On the host the output must pass `qemu-img check`, the report must say success with the
//! repairs of a VMware guest, the wave's done marker must exist, and the source must be
//! unchanged. Root only (debootstrap, podman). One appliance launch inside the container.

mod common;
mod k8s_support;
mod podman_support;

use std::fs;
use std::process::Command;
use std::time::Instant;

use common::{fixture, read_json, sha256_file, tail, vm_lock};
use podman_support::{build_image, job_container, kvm_usable, podman_run, security_flags};

/// One VM of a wave through the Job's pod as podman runs it.
#[test]
fn the_jobs_pod_converts_the_bios_fixture_in_the_container() {
    let image = build_image();
    let container = job_container();

    // The pod's volumes, as host directories.
    let vmdk = fixture("debian12-bios");
    let facts = common::fixture_facts(&vmdk);
    let before = sha256_file(&vmdk);
    let name = vmdk.file_name().unwrap().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = |n: &str| {
        let d = work.path().join(n);
        fs::create_dir_all(&d).unwrap();
        d
    };
    let wave = dir("wave");
    fs::write(
        wave.join("manifests.txt"),
        "# one VM of a wave\nmanifests/web01.json\n",
    )
    .unwrap();
    fs::write(
        wave.join("entrypoint.sh"),
        k8s_support::configmap_key("configmap-entrypoint.yaml", "entrypoint.sh"),
    )
    .unwrap();
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let mount_path = |volume: &str| -> String {
        mounts
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("job.yaml: no volumeMount {volume}"))
            .to_string()
    };
    let sources = dir("sources");
    fs::create_dir_all(sources.join("manifests")).unwrap();
    let in_pod_disk = format!("{}/disks/{name}", mount_path("sources"));
    fs::write(
        sources.join("manifests/web01.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "manifest_version": "1.0",
            "source": {"provider": "vsphere", "vm_name": "web01"},
            "vm": {"cpu": 2, "mem_gb": 1, "firmware": "bios"},
            "disks": [{"id": "boot", "source_format": "vmdk", "local_path": in_pod_disk,
                       "bytes": vmdk.metadata().unwrap().len(),
                       "checksum": format!("sha256:{before}"), "boot_order_hint": 0,
                       "disk_type": "boot"}]
        }))
        .unwrap(),
    )
    .unwrap();
    fs::create_dir_all(sources.join("disks")).unwrap();
    let host_dirs = [
        ("wave", wave.clone()),
        ("sources", sources.clone()),
        ("outputs", dir("outputs")),
        ("tmp", dir("tmp")),
        ("var-tmp", dir("var-tmp")),
    ];

    // Everything but the securityContext; `pod(flags)` is the pod with those.
    let mut rest: Vec<String> = Vec::new();
    for m in mounts {
        let volume = m["name"].as_str().unwrap();
        let host = &host_dirs
            .iter()
            .find(|(n, _)| *n == volume)
            .unwrap_or_else(|| panic!("job.yaml mounts a volume {volume} this test does not know"))
            .1;
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        rest.push("-v".into());
        rest.push(format!(
            "{}:{}{ro}",
            host.display(),
            m["mountPath"].as_str().unwrap()
        ));
    }
    // The disk inside the read-only sources volume (a PVC in the cluster).
    rest.push("-v".into());
    rest.push(format!(
        "{}:{}/disks:ro",
        vmdk.parent().unwrap().display(),
        mount_path("sources")
    ));
    for e in container["env"].as_array().into_iter().flatten() {
        let (k, mut v) = (e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        if k == "H2K_ACCEL" && !kvm_usable() {
            v = "tcg"; // what variants/tcg patches in
        }
        rest.push("-e".into());
        rest.push(format!("{k}={v}"));
    }
    rest.push("-e".into());
    rest.push("JOB_COMPLETION_INDEX=0".into());
    if kvm_usable() {
        rest.push("--device=/dev/kvm".into());
    }
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("job.yaml: command")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    rest.push(format!("--entrypoint={}", command[0]));
    rest.push(image.clone());
    rest.extend(command[1..].iter().map(|c| c.to_string()));
    let pod = |security: &[String]| {
        let mut c = podman_run();
        c.args(security).args(&rest);
        c
    };

    // Control: with every capability dropped and none added back the pod cannot even build
    // the appliance (supermin must chown what it unpacks), so the capabilities the Job adds
    // are what makes the run below work.
    let _vm = vm_lock();
    let bare: Vec<String> = security_flags(&container)
        .into_iter()
        .filter(|f| !f.starts_with("--cap-add="))
        .collect();
    let control = pod(&bare).output().unwrap();
    let control_err = String::from_utf8_lossy(&control.stderr);
    assert!(
        !control.status.success()
            && control_err.contains("failed in the appliance stage")
            && control_err.contains("supermin exited with error"),
        "control: the pod without the added capabilities: {}\n{}",
        control.status,
        tail(&control_err, 20)
    );
    eprintln!(
        "control (no capabilities): {}: {}",
        control.status,
        common::one_error_line(&control_err)
    );
    fs::remove_dir_all(host_dirs[2].1.join("web01")).unwrap();
    let mut run = pod(&security_flags(&container));
    eprintln!("podman {:?}", run.get_args().collect::<Vec<_>>());
    let t = Instant::now();
    let res = run.output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        res.status.success(),
        "the Job's pod under podman: {}\n{}{}",
        res.status,
        tail(&String::from_utf8_lossy(&res.stdout), 10),
        tail(&stderr, 40)
    );
    eprintln!("TIMING the pod's conversion: {secs:.0} s");

    let outdir = host_dirs[2].1.join("web01");
    assert!(
        outdir.join(".h2k-wave-done").is_file(),
        "no done marker in {}",
        outdir.display()
    );
    let report_path = fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".report.json"))
        .unwrap_or_else(|| panic!("no report in {}", outdir.display()));
    let report = read_json(&report_path);
    assert_eq!(report["status"], "success", "{report:#}");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report:#}");
    assert_eq!(sha256_file(&vmdk), before, "the source disk was modified");
    let outputs = report["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "{report:#}");
    let in_pod = outputs[0]["path"].as_str().unwrap();
    let rel = in_pod
        .strip_prefix(&format!("{}/", mount_path("outputs")))
        .unwrap_or_else(|| panic!("output {in_pod} is not on the outputs volume"));
    let output = host_dirs[2].1.join(rel);
    assert!(output.is_file(), "no {} on the host", output.display());
    assert!(output.metadata().unwrap().len() > 1 << 20);
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
    // Read inside the pod, by its paths.
    assert!(
        report["sources"][0].to_string().contains(&in_pod_disk),
        "{}",
        report["sources"][0]
    );
}
