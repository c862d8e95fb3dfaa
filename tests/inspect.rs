//! `h2k-guest inspect` and `--version` on real guests in a real appliance, and the one-line
//! errors for inputs that are not guests.

mod common;

use std::path::Path;

use common::{fixture, fixture_facts, h2k, one_error_line, vm_lock};

#[test]
fn version_names_the_libguestfs_it_was_built_against() {
    let run = h2k(["--version"]);
    assert!(run.success(), "{}", run.describe());
    let pkg = std::process::Command::new("pkg-config")
        .args(["--modversion", "libguestfs"])
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&pkg.stdout).trim().to_string();
    assert!(!expected.is_empty());
    assert!(
        run.stdout().contains(&format!("libguestfs {expected}")),
        "{}",
        run.stdout()
    );
}

fn os_of(json: &serde_json::Value) -> &serde_json::Value {
    let oses = json["operating_systems"]
        .as_array()
        .expect("operating_systems");
    assert_eq!(oses.len(), 1, "{json:#}");
    &oses[0]
}

#[test]
fn inspect_reports_the_bios_fixture_as_built() {
    let disk = fixture("debian12-bios");
    let facts = fixture_facts(&disk);
    let _vm = vm_lock();
    let run = h2k([Path::new("inspect"), Path::new("--json"), &disk]);
    assert!(run.success(), "{}", run.describe());
    let json = run.json();
    assert_eq!(json["source"]["format"], "vmdk");
    assert_eq!(json["source"]["vmdk_subformat"], "monolithicSparse");
    let os = os_of(&json);
    assert_eq!(os["type"], "linux");
    assert_eq!(os["distro"], "debian");
    assert_eq!(os["major_version"], 12);
    assert_eq!(os["arch"], "x86_64");
    assert_eq!(os["package_format"], "deb");
    assert_eq!(os["hostname"], facts["hostname"]);
    assert_eq!(os["firmware"]["kind"], "bios");
    assert_eq!(os["bootloader"]["kind"], "grub2");
    assert_eq!(os["bootloader"]["config"], "/boot/grub/grub.cfg");
    assert_eq!(os["initramfs_tool"], "initramfs-tools");
    let kver = facts["kernel_version"].as_str().unwrap();
    assert_eq!(os["default_kernel"], kver);
    assert_eq!(
        os["kernels"][0]["initramfs"],
        format!("/boot/initrd.img-{kver}")
    );
    // The control for the whole product: the exported guest has no virtio in its initramfs.
    assert_eq!(os["virtio_blk_in_default_initramfs"], false);
    // Read by h2k-guest's own lister (zstd), not the slower fallback in the appliance.
    assert_eq!(os["kernels"][0]["initramfs_listed_by"], "host");
    let root_uuid = facts["partitions"][0]["uuid"].as_str().unwrap();
    let fss = os["filesystems"].as_array().unwrap();
    assert!(
        fss.iter()
            .any(|f| f["device"] == "/dev/sda1" && f["type"] == "ext4" && f["uuid"] == root_uuid),
        "{fss:?}"
    );
    assert!(
        fss.iter()
            .any(|f| f["device"] == "/dev/sda2" && f["type"] == "swap"),
        "{fss:?}"
    );
    assert_eq!(
        os["mountpoints"],
        serde_json::json!([{"mountpoint": "/", "device": "/dev/sda1"}])
    );
    // auto chose an accelerator by itself and said why (TCG on hosts where KVM aborts).
    assert!(
        json["accelerator"] == "tcg" || json["accelerator"] == "kvm",
        "{}",
        json["accelerator"]
    );
    assert!(!json["accelerator_reason"].as_str().unwrap_or("").is_empty());
}

#[test]
fn inspect_reports_the_uefi_dracut_lvm_fixture_and_its_table() {
    let disk = fixture("debian12-uefi-dracut-lvm");
    let facts = fixture_facts(&disk);
    let _vm = vm_lock();
    let run = h2k([Path::new("inspect"), Path::new("--json"), &disk]);
    assert!(run.success(), "{}", run.describe());
    let json = run.json();
    let os = os_of(&json);
    assert_eq!(os["distro"], "debian");
    assert_eq!(os["firmware"]["kind"], "uefi", "{:#}", os["firmware"]);
    assert_eq!(os["initramfs_tool"], "dracut");
    assert_eq!(os["bootloader"]["kind"], "grub2");
    assert_eq!(os["virtio_blk_in_default_initramfs"], false);
    assert_eq!(os["kernels"][0]["initramfs_listed_by"], "host");
    assert_eq!(os["default_kernel"], facts["kernel_version"]);
    let mps = os["mountpoints"].as_array().unwrap();
    let dev_of = |mp: &str| {
        mps.iter()
            .find(|m| m["mountpoint"] == mp)
            .map(|m| m["device"].as_str().unwrap().to_string())
    };
    // /boot is named by /dev/disk/by-path in fstab; inspect resolves it to the partition.
    assert_eq!(dev_of("/boot").as_deref(), Some("/dev/sda2"), "{mps:?}");
    assert_eq!(dev_of("/boot/efi").as_deref(), Some("/dev/sda1"), "{mps:?}");
    let root = dev_of("/").unwrap();
    assert!(
        root.contains("vg0") && root.contains("root"),
        "LVM root expected, got {root}"
    );
    // The text table says the same in words.
    let table = h2k([Path::new("inspect"), &disk]);
    assert!(table.success(), "{}", table.describe());
    let out = table.stdout();
    assert!(out.contains("Firmware:     uefi"), "{out}");
    assert!(out.contains("Initramfs:    dracut"), "{out}");
    assert!(out.contains("virtio_blk:   MISSING"), "{out}");
}

#[test]
fn inspect_of_a_text_file_is_one_line_and_exit_1_without_an_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "this is not a disk\n").unwrap();
    let run = h2k([Path::new("inspect"), &file]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = one_error_line(&run.stderr());
    assert!(
        line.contains(&file.display().to_string()) && line.contains("not a disk image"),
        "{line}"
    );
    assert!(
        run.seconds < 5.0,
        "refused before any appliance launch, took {:.1} s",
        run.seconds
    );
}

#[test]
fn inspect_of_missing_file_directory_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.vmdk");
    let run = h2k([Path::new("inspect"), &missing]);
    assert_eq!(run.code(), Some(1));
    let line = one_error_line(&run.stderr());
    assert!(
        line.contains("nope.vmdk") && line.contains("no such file"),
        "{line}"
    );

    let run = h2k([Path::new("inspect"), dir.path()]);
    assert_eq!(run.code(), Some(1));
    assert!(one_error_line(&run.stderr()).contains("is a directory"));

    let run = h2k(["inspect"]);
    assert_eq!(
        run.code(),
        Some(2),
        "usage errors exit 2: {}",
        run.describe()
    );
}

#[test]
fn inspect_of_a_truncated_vmdk_names_the_file() {
    let src = fixture("debian12-bios");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.vmdk");
    let mut head = vec![0u8; 64 * 1024];
    use std::io::Read;
    std::fs::File::open(&src)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    std::fs::write(&broken, &head).unwrap();
    let run = h2k([Path::new("inspect"), &broken]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = one_error_line(&run.stderr());
    assert!(line.contains("broken.vmdk"), "{line}");
}

#[test]
fn inspect_of_a_blank_disk_says_no_operating_system() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&blank)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let _vm = vm_lock();
    let run = h2k([Path::new("inspect"), &blank]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = one_error_line(&run.stderr());
    assert!(
        line.contains("blank.qcow2") && line.contains("no operating system found"),
        "{line}"
    );
}
