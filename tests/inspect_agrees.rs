//! h2k-guest's own root detection against libguestfs's `inspect_os`, in one appliance per
//! guest: the same root, the same mountpoints, the same release, architecture and hostname on
//! every guest the project builds — and libguestfs decides when the quick look cannot (the
//! control: a root whose os-release was removed).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{fixture, guest, layout, variant, vm_lock};
use h2k_guest::appliance::{Appliance, ApplianceOptions, Drive};
use h2k_guest::guestfs::DriveOptions;
use h2k_guest::inspect::{self, roots, Root};

fn drive(path: &Path, format: &str, readonly: bool) -> Drive {
    Drive {
        path: path.to_string_lossy().into_owned(),
        options: DriveOptions {
            readonly,
            format: Some(format.into()),
            protocol: None,
            servers: vec![],
            cachemode: None,
            discard: None,
        },
    }
}

fn mountpoints(root: &Root) -> BTreeSet<(String, String)> {
    root.mountpoints.iter().cloned().collect()
}

/// Own detection and libguestfs's on the appliance's disks; asserts they agree.
fn assert_agree(app: &Appliance, name: &str) {
    let disks = inspect::scan_disks(&app.g).unwrap();
    let own = roots::own_roots(&app.g, &disks)
        .unwrap()
        .unwrap_or_else(|why| panic!("{name}: own detection deferred: {why}"));
    let theirs = roots::libguestfs_roots(&app.g, &disks, "test").unwrap();
    assert_eq!(own.len(), 1, "{name}: {own:#?}");
    assert_eq!(theirs.len(), 1, "{name}: {theirs:#?}");
    let (own, theirs) = (&own[0], &theirs[0]);
    eprintln!("{name}: own {own:?}\n{name}: libguestfs {theirs:?}");
    assert_eq!(own.device, theirs.device, "{name}: root");
    assert_eq!(own.os_type, theirs.os_type, "{name}");
    assert_eq!(mountpoints(own), mountpoints(theirs), "{name}: mountpoints");
    assert_eq!(own.facts.arch, theirs.facts.arch, "{name}");
    assert_eq!(own.facts.hostname, theirs.facts.hostname, "{name}");
    if theirs.facts.distro == "unknown" {
        // libguestfs does not know Photon OS; the fix pipeline reads its os-release itself.
        assert_eq!(own.facts.distro, "photon", "{name}");
        assert_eq!(own.facts.package_management, "tdnf", "{name}");
    } else {
        let f = |r: &Root| {
            (
                r.facts.distro.clone(),
                r.facts.major_version,
                r.facts.minor_version,
                r.facts.package_format.clone(),
                r.facts.package_management.clone(),
                r.facts.osinfo.clone(),
            )
        };
        assert_eq!(f(own), f(theirs), "{name}");
    }
}

fn single(name: &str, path: PathBuf) {
    let _vm = vm_lock();
    let app =
        Appliance::launch(&[drive(&path, "vmdk", true)], &ApplianceOptions::default()).unwrap();
    assert_agree(&app, name);
    app.finish().unwrap();
}

#[test]
fn own_detection_agrees_on_the_lvm_xfs_guest_with_labels_and_mapper_names() {
    single("debian11-bios-xfs-nm", guest("debian11-bios-xfs-nm"));
}

#[test]
fn own_detection_agrees_on_the_uefi_lvm_guest_with_a_by_path_esp() {
    single(
        "debian12-uefi-dracut-lvm",
        fixture("debian12-uefi-dracut-lvm"),
    );
}

#[test]
fn own_detection_agrees_on_btrfs_subvolumes() {
    single(
        "debian13-uefi-btrfs-netplan",
        guest("debian13-uefi-btrfs-netplan"),
    );
}

#[test]
fn own_detection_agrees_on_photon() {
    single("photon5-uefi", layout("photon5-uefi"));
}

#[test]
fn own_detection_agrees_on_two_disks() {
    let boot = variant("debian12-bios-twodisk");
    let data = boot.with_file_name("debian12-bios-twodisk-data.vmdk");
    let _vm = vm_lock();
    let app = Appliance::launch(
        &[drive(&boot, "vmdk", true), drive(&data, "vmdk", true)],
        &ApplianceOptions::default(),
    )
    .unwrap();
    assert_agree(&app, "debian12-bios-twodisk");
    app.finish().unwrap();
}

#[test]
fn libguestfs_decides_when_the_root_has_no_os_release() {
    let source = fixture("debian12-bios");
    let tmp = tempfile::tempdir().unwrap();
    let overlay = tmp.path().join("overlay.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b"])
        .arg(&source)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success());
    let _vm = vm_lock();
    let app = Appliance::launch(
        &[drive(&overlay, "qcow2", false)],
        &ApplianceOptions::default(),
    )
    .unwrap();
    assert_agree(&app, "debian12-bios");
    let disks = inspect::scan_disks(&app.g).unwrap();
    let own = inspect::find_roots(&app.g, &disks).unwrap();
    assert_eq!(own[0].found_by, "h2k-guest");

    app.g.mount("/dev/sda1", "/").unwrap();
    app.g.rm_f("/etc/os-release").unwrap();
    app.g.rm_f("/usr/lib/os-release").unwrap();
    app.g.umount_all().unwrap();
    let why = roots::own_roots(&app.g, &disks).unwrap().unwrap_err();
    assert!(why.contains("without os-release"), "{why}");
    let roots = inspect::find_roots(&app.g, &disks).unwrap();
    assert!(
        roots[0].found_by.starts_with("libguestfs ("),
        "{}",
        roots[0].found_by
    );
    // libguestfs still knows it from /etc/debian_version.
    assert_eq!(roots[0].device, "/dev/sda1");
    assert_eq!(roots[0].facts.distro, "debian");
    assert_eq!(roots[0].facts.major_version, 12);
    app.finish().unwrap();
    assert!(source.exists());
}
