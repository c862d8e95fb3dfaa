//! `h2k-guest fix` end to end on real VMware-style guests: the output boots to a login prompt
//! on virtio-blk (the unfixed fixture does not: see tests/boot.rs), the source is unchanged
//! byte for byte, the report lists the changes. And the failure paths leave nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, fixture_facts, h2k, one_error_line, read_json, sha256_file, vm_lock};

/// Nothing but `keep` is left in `dir`: no `.part`, no hidden work directory.
fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        names,
        expected,
        "unexpected files left in {}",
        dir.display()
    );
}

fn fix_record<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["fixes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no fix {name}"))
}

/// The report's note on /boot/grub/grub.cfg ("" when it was not changed).
fn grub_cfg_note(report: &serde_json::Value) -> String {
    fix_record(report, "grub")["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/boot/grub/grub.cfg")
        .map(|f| f["note"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn boot_on_virtio(image: &Path) {
    let run = h2k([
        Path::new("validate"),
        Path::new("--boot"),
        Path::new("--bus"),
        Path::new("virtio"),
        Path::new("--timeout"),
        Path::new("300"),
        image,
    ]);
    assert!(
        run.success(),
        "fixed guest did not boot on virtio:\n{}",
        run.describe()
    );
    assert!(run.stdout().contains("login"), "{}", run.describe());
    eprintln!("{}", run.stdout().trim());
}

fn qemu_img_check_clean(image: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["check-errors"], 0, "{v:#}");
    assert!(v.get("corruptions").is_none_or(|c| c == 0), "{v:#}");
}

#[test]
fn bios_fixture_fixed_from_a_seed_manifest_boots_on_virtio() {
    let src = fixture("debian12-bios");
    let facts = fixture_facts(&src);
    let before = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("photon-like.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "version": "1.0",
            "pipeline": {
                "load": {"source_type": "vmdk", "source_path": src},
                "inspect": {"enabled": true, "detect_os": true},
                "fix": {
                    "fstab": {"enabled": true, "mode": "stabilize-all"},
                    "grub": {"enabled": true},
                    "initramfs": {"enabled": true, "regenerate": true}
                },
                "convert": {"output_format": "qcow2", "compress": true, "output_path": "bios-kvm.qcow2"}
            }
        })
        .to_string(),
    )
    .unwrap();
    let _vm = vm_lock();
    let run = h2k([
        Path::new("fix"),
        Path::new("--checksum"),
        Path::new("--manifest"),
        &manifest,
    ]);
    assert!(run.success(), "{}", run.describe());
    eprintln!("fix took {:.1} s\n{}", run.seconds, run.stdout());

    let out = dir.path().join("bios-kvm.qcow2");
    let report_path = dir.path().join("bios-kvm.qcow2.report.json");
    assert_only(
        dir.path(),
        &[
            "photon-like.json",
            "bios-kvm.qcow2",
            "bios-kvm.qcow2.report.json",
        ],
    );
    assert_eq!(sha256_file(&src), before, "the source disk was modified");

    let report: serde_json::Value = read_json(&report_path);
    assert_eq!(report["status"], "success");
    assert_eq!(report["sources"][0]["sha256"], format!("sha256:{before}"));
    assert_eq!(report["os"]["distro"], "debian");
    let stages: Vec<&str> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "sanity",
            "load",
            "appliance",
            "inspect",
            "fix",
            "convert",
            "validate"
        ]
    );
    assert_eq!(
        report["appliance"]["launches"], 1,
        "exactly one appliance launch per VM"
    );

    let root_uuid = facts["partitions"][0]["uuid"].as_str().unwrap();
    let fstab = fix_record(&report, "fstab");
    assert_eq!(fstab["status"], "changed");
    let diff = fstab["files"][0]["diff"].as_str().unwrap();
    assert!(
        diff.contains("-/dev/sda1") && diff.contains(&format!("+UUID={root_uuid}")),
        "{diff}"
    );
    assert_eq!(fix_record(&report, "initramfs")["status"], "changed");
    let grub = fix_record(&report, "grub");
    assert_eq!(grub["status"], "changed");
    let grub_files: Vec<&str> = grub["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        grub_files.contains(&"/etc/default/grub") && grub_files.contains(&"/boot/grub/grub.cfg"),
        "{grub_files:?}"
    );
    assert!(
        grub_cfg_note(&report).contains("patched in place"),
        "by default grub.cfg is patched, not regenerated: {}",
        grub_cfg_note(&report)
    );
    assert_eq!(fix_record(&report, "network")["status"], "changed");
    assert_eq!(report["outputs"][0]["compressed"], true);

    qemu_img_check_clean(&out);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&out)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");

    boot_on_virtio(&out);
    assert_eq!(
        sha256_file(&src),
        before,
        "the source disk was modified by the boot check"
    );
}

#[test]
fn uefi_dracut_lvm_fixture_fixed_from_an_artifact_yaml_manifest_boots_on_virtio() {
    let src = fixture("debian12-uefi-dracut-lvm");
    let before = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("uefi.yaml");
    std::fs::write(
        &manifest,
        format!(
            "manifest_version: \"1.0\"\n\
             source:\n  provider: vsphere\n  vm_name: h2k-uefi\n\
             vm:\n  cpu: 2\n  mem_gb: 1\n  firmware: uefi\n  os_hint: linux\n\
             disks:\n  - id: boot\n    source_format: vmdk\n    bytes: {}\n    local_path: {}\n    checksum: \"sha256:{before}\"\n    boot_order_hint: 0\n    disk_type: boot\n\
             pipeline:\n  fix:\n    enabled: true\n    fstab_mode: stabilize-all\n    update_grub: true\n    regen_initramfs: true\n  convert:\n    enabled: true\n",
            std::fs::metadata(&src).unwrap().len(),
            src.display()
        ),
    )
    .unwrap();
    let _vm = vm_lock();
    let run = h2k([Path::new("fix"), Path::new("--manifest"), &manifest]);
    assert!(run.success(), "{}", run.describe());
    eprintln!("fix took {:.1} s\n{}", run.seconds, run.stdout());
    let out = dir.path().join("boot.qcow2");
    assert!(out.is_file(), "{}", run.describe());
    assert_eq!(sha256_file(&src), before, "the source disk was modified");

    let report: serde_json::Value = read_json(&dir.path().join("boot.qcow2.report.json"));
    assert_eq!(report["os"]["firmware"]["kind"], "uefi");
    assert_eq!(report["os"]["initramfs_tool"], "dracut");
    let fstab = fix_record(&report, "fstab");
    let diff = fstab["files"][0]["diff"].as_str().unwrap();
    assert!(
        diff.contains("-/dev/disk/by-path/") && diff.contains("-/dev/sda1"),
        "{diff}"
    );
    assert!(
        diff.contains("/dev/mapper/vg0-root"),
        "LVM root kept as it is: {diff}"
    );
    let initramfs = fix_record(&report, "initramfs");
    assert_eq!(initramfs["status"], "changed");
    let note = initramfs["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["note"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        note.contains("dracut") && note.contains("virtio_blk"),
        "{note}"
    );

    qemu_img_check_clean(&out);
    boot_on_virtio(&out);
    assert_eq!(sha256_file(&src), before);
}

#[test]
fn missing_source_fails_early_with_the_path_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.qcow2");
    let run = h2k([
        Path::new("fix"),
        Path::new("/nonexistent/vm.vmdk"),
        Path::new("-o"),
        &out,
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = one_error_line(&run.stderr());
    assert!(
        line.contains("/nonexistent/vm.vmdk") && line.contains("no such file"),
        "{line}"
    );
    assert!(line.contains("load stage"), "{line}");
    // Only the failure report is left: no output, no .part, no work directory.
    assert_only(dir.path(), &["out.qcow2.report.json"]);
    let report: serde_json::Value = read_json(&dir.path().join("out.qcow2.report.json"));
    assert_eq!(report["status"], "failed");
    assert_eq!(report["failed_stage"], "load");
}

#[test]
fn truncated_vmdk_is_refused_by_name_before_any_appliance() {
    let src = fixture("debian12-bios");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("cut.vmdk");
    let st = Command::new("head")
        .args(["-c", "3000000"])
        .arg(&src)
        .stdout(std::fs::File::create(&broken).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let run = h2k([
        Path::new("fix"),
        &broken,
        Path::new("-o"),
        &out_dir.join("x.qcow2"),
    ]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = one_error_line(&run.stderr());
    assert!(line.contains("cut.vmdk"), "{line}");
    assert!(
        run.seconds < 10.0,
        "should fail in LOAD, took {:.1} s",
        run.seconds
    );
    assert_only(&out_dir, &["x.qcow2.report.json"]);
}

#[test]
fn manifest_mistakes_are_one_line_naming_file_and_key() {
    let src = fixture("debian12-bios");
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad-json.json", "{\"version\": \"1.0\",".into(), "bad-json.json:"),
        ("wrong-type.json", serde_json::json!({"version": "1.0", "pipeline": {"load": {"source_path": src}, "convert": {"compress": "yes"}}}).to_string(), "pipeline.convert.compress"),
        ("relative.json", serde_json::json!({"version": "1.0", "pipeline": {"load": {"source_path": "vm.vmdk"}}}).to_string(), "pipeline.load.source_path"),
        ("escape.json", serde_json::json!({"version": "1.0", "pipeline": {"load": {"source_path": src}, "convert": {"output_path": "../../etc/x.qcow2"}}}).to_string(), "pipeline.convert.output_path"),
        ("version.json", serde_json::json!({"version": "2.0"}).to_string(), "version"),
        ("bad-id.json", serde_json::json!({"manifest_version": "1.0", "disks": [{"id": "bad id!", "source_format": "vmdk", "local_path": src}]}).to_string(), "disks[0].id"),
    ];
    for (name, text, key) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let run = h2k([Path::new("fix"), Path::new("--manifest"), &path]);
        assert_eq!(run.code(), Some(1), "{name}: {}", run.describe());
        let line = one_error_line(&run.stderr());
        assert!(
            line.contains(name) && line.contains(key),
            "{name}: expected {key:?} in {line}"
        );
        // manifest validate says the same without running anything.
        let v = h2k([Path::new("manifest"), Path::new("validate"), &path]);
        assert_eq!(v.code(), Some(1));
        assert!(one_error_line(&v.stderr()).contains(key));
    }
    let produced: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "qcow2" || e == "part"))
        .collect();
    assert!(produced.is_empty(), "{produced:?}");
}

#[test]
fn unwritable_output_directory_is_refused_in_sanity() {
    let src = fixture("debian12-bios");
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    // Root ignores permission bits, so make the directory really read-only with a ro tmpfs.
    let root = nix::unistd::getuid().is_root();
    if root {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "h2k-ro"])
            .arg(&ro)
            .status()
            .unwrap();
        assert!(st.success(), "mount a read-only tmpfs");
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let run = h2k([Path::new("fix"), &src, Path::new("-o"), &ro.join("x.qcow2")]);
    if root {
        let _ = Command::new("umount").arg(&ro).status();
    }
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = one_error_line(&run.stderr());
    assert!(
        line.contains(&ro.display().to_string()) && line.contains("not writable"),
        "{line}"
    );
}

#[test]
fn sigint_during_convert_removes_part_and_workdir_and_keeps_source() {
    let src = fixture("debian12-bios");
    let before = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.qcow2");
    let part = dir.path().join("x.qcow2.part");
    let _vm = vm_lock();
    // Skip the slow repairs so the convert stage comes quickly; raw output makes it long
    // enough (2 GiB written) to be caught in the middle.
    let mut child = Command::new(common::bin())
        .args([
            "fix",
            "--no-initramfs",
            "--no-grub",
            "--output-format",
            "raw",
            "-q",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !part.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "convert never started"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("fix ended ({st}) before the convert stage");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // 128 + SIGINT, as a shell reports a command stopped by Ctrl-C.
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_only(dir.path(), &["x.qcow2.report.json"]);
    assert_eq!(sha256_file(&src), before);
}

#[test]
fn ova_with_a_stream_optimized_vmdk_is_read_in_place_and_boots_after_fix() {
    let plain = fixture("debian12-bios");
    let stream = plain.with_file_name("debian12-bios-stream.vmdk");
    assert!(
        stream.is_file(),
        "the fixture builder makes a streamOptimized copy"
    );
    let dir = tempfile::tempdir().unwrap();
    // An OVA as ESXi exports it: a tar with the descriptor first, then the disk.
    let ova = dir.path().join("h2k-bios.ova");
    std::fs::write(
        dir.path().join("h2k-bios.ovf"),
        "<?xml version=\"1.0\"?><Envelope/>\n",
    )
    .unwrap();
    std::fs::copy(&stream, dir.path().join("h2k-bios-disk1.vmdk")).unwrap();
    let st = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&ova)
        .args(["h2k-bios.ovf", "h2k-bios-disk1.vmdk"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(dir.path().join("h2k-bios-disk1.vmdk")).unwrap();
    let before = sha256_file(&ova);
    let out = dir.path().join("out.qcow2");
    let _vm = vm_lock();
    // --regenerate-grub: the guest's grub-mkconfig path, booted for real here.
    let run = h2k([
        Path::new("fix"),
        Path::new("--boot-check"),
        Path::new("--regenerate-grub"),
        &ova,
        Path::new("-o"),
        &out,
    ]);
    assert!(run.success(), "{}", run.describe());
    eprintln!("OVA fix + boot check took {:.1} s", run.seconds);
    let report: serde_json::Value = read_json(&dir.path().join("out.qcow2.report.json"));
    assert_eq!(
        report["sources"][0]["source"]["member"],
        "h2k-bios-disk1.vmdk"
    );
    assert_eq!(report["sources"][0]["vmdk_subformat"], "streamOptimized");
    let note = grub_cfg_note(&report);
    assert!(note.contains("regenerated"), "{note}");
    assert_eq!(
        report["validation"][0]["booted"], true,
        "{:#}",
        report["validation"]
    );
    assert_eq!(sha256_file(&ova), before, "the OVA was modified");
    assert_only(
        dir.path(),
        &[
            "h2k-bios.ova",
            "h2k-bios.ovf",
            "out.qcow2",
            "out.qcow2.report.json",
        ],
    );
}

/// A UEFI guest that booted on VMware through an NVRAM entry (`\EFI\debian\grubx64.efi`, no
/// removable-media path) finds nothing to boot under fresh OVMF variables; the fix creates
/// `\EFI\BOOT\BOOTX64.EFI`.
#[test]
fn uefi_guest_without_removable_boot_path_gets_one_and_boots_on_virtio() {
    let fixture_vmdk = fixture("debian12-uefi-dracut-lvm");
    let fixture_sum = sha256_file(&fixture_vmdk);
    let dir = tempfile::tempdir().unwrap();
    // The variant is a standalone qcow2 copy of the fixture (the fixture itself is never
    // written). Not a layer over it: the source policy refuses a backing file outside the
    // source's own directory, as it should.
    let src = dir.path().join("nvram-only.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "vmdk", "-O", "qcow2"])
        .arg(&fixture_vmdk)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let _vm = vm_lock();
    let mut gf = Command::new("guestfish")
        .arg("-a")
        .arg(&src)
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    gf.stdin
        .take()
        .unwrap()
        .write_all(b"run\nmount /dev/sda1 /\nmv /EFI/BOOT /EFI/debian\nmv /EFI/debian/BOOTX64.EFI /EFI/debian/grubx64.efi\n")
        .unwrap();
    assert!(
        gf.wait().unwrap().success(),
        "guestfish could not move the loader"
    );

    // Control: on its own bus, with no NVRAM entry, the firmware finds nothing to boot.
    let control = h2k([
        Path::new("validate"),
        Path::new("--boot"),
        Path::new("--bus"),
        Path::new("sata"),
        Path::new("--timeout"),
        Path::new("120"),
        &src,
    ]);
    assert_eq!(control.code(), Some(1), "{}", control.describe());
    assert!(
        control.stderr().contains("nothing to boot"),
        "{}",
        control.describe()
    );

    let out = dir.path().join("out.qcow2");
    let run = h2k([
        Path::new("fix"),
        Path::new("--boot-check"),
        &src,
        Path::new("-o"),
        &out,
    ]);
    assert!(run.success(), "{}", run.describe());
    let report: serde_json::Value = read_json(&dir.path().join("out.qcow2.report.json"));
    let fallback = fix_record(&report, "uefi-fallback");
    assert_eq!(fallback["status"], "changed", "{fallback:#}");
    assert_eq!(
        fallback["files"][0]["path"],
        "/boot/efi/EFI/BOOT/BOOTX64.EFI"
    );
    assert_eq!(report["validation"][0]["booted"], true);
    assert_eq!(
        sha256_file(&fixture_vmdk),
        fixture_sum,
        "the fixture was modified"
    );
}
