//! The pure part: plan + report → domain XML, over the cases that differ (firmware, disks,
//! NICs, agent, accelerator, names that need escaping). Every XML is parsed back.

use std::path::PathBuf;

use super::domain::{domain_name, target_dev, DomainSpec, DomainType};
use super::*;
use crate::fix::{FixRecord, FixStatus, NicChoice};
use crate::plan::{Firmware, LibvirtNetwork, NicPlan, OutputFormat};
use crate::report::OutputRecord;

fn plan(disks: usize) -> Plan {
    let mut p = Plan::for_single_disk("/src/web01.vmdk", None, PathBuf::from("/out/web01.qcow2"));
    for i in 1..disks {
        let mut d = p.disks[0].clone();
        d.id = format!("data{i}");
        d.source = format!("/src/data{i}.vmdk");
        d.output = PathBuf::from(format!("/out/data{i}.qcow2"));
        p.disks.push(d);
    }
    p.libvirt.xml = true;
    p
}

/// The report of a successful run of `plan`: every disk written.
fn report(plan: &Plan) -> Report {
    let mut r = Report::new(plan);
    for d in &plan.disks {
        r.outputs.push(OutputRecord {
            disk_id: d.id.clone(),
            path: d.output.clone(),
            format: plan.convert.format.as_str().into(),
            compressed: false,
            bytes: 1,
            virtual_size: 1,
            check: None,
        });
    }
    r
}

fn fix(name: &str, status: FixStatus, nics: Vec<NicChoice>) -> FixRecord {
    FixRecord {
        name: name.into(),
        status,
        summary: String::new(),
        files: Vec::new(),
        seconds: 0.0,
        nics,
    }
}

/// What inspection found, as the report holds it.
fn os(firmware: &str) -> crate::inspect::OsInfo {
    serde_json::from_value(serde_json::json!({
        "root": "/dev/sda1", "type": "linux", "distro": "debian", "product_name": "Debian 12",
        "major_version": 12, "minor_version": 0, "arch": "x86_64", "osinfo": null,
        "package_format": "deb", "package_management": "apt", "hostname": "web01",
        "mountpoints": [], "filesystems": [], "kernels": [], "default_kernel": null,
        "bootloader": {"kind": "grub2", "config": null, "bls": false},
        "firmware": {"kind": firmware, "evidence": "EFI system partition /dev/sda1"},
        "initramfs_tool": "initramfs-tools", "virtio_blk_in_default_initramfs": true
    }))
    .unwrap()
}

fn xml(plan: &Plan, report: &Report, t: DomainType) -> (String, DomainSpec, Vec<String>) {
    let (spec, warnings) = DomainSpec::of_job(plan, report, t);
    let xml = render(&spec).unwrap_or_else(|e| panic!("{e}"));
    roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    (xml, spec, warnings)
}

/// `(element, attribute) → value` of every element named `name`.
fn attrs(xml: &str, name: &str, attr: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name(name))
        .filter_map(|n| n.attribute(attr).map(str::to_string))
        .collect()
}

fn texts(xml: &str, name: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name(name))
        .map(|n| n.text().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn bios_guest_with_one_disk_and_nothing_said_about_nics() {
    let p = plan(1);
    let (x, spec, warnings) = xml(&p, &report(&p), DomainType::Qemu);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        x.starts_with("<domain type=\"qemu\">\n  <name>web01</name>"),
        "{x}"
    );
    assert_eq!(texts(&x, "vcpu"), ["2"]);
    assert_eq!(texts(&x, "memory"), ["2048"]);
    assert_eq!(attrs(&x, "memory", "unit"), ["MiB"]);
    assert_eq!(attrs(&x, "os", "firmware"), Vec::<String>::new());
    assert_eq!(attrs(&x, "type", "machine"), ["q35"]);
    assert_eq!(spec.firmware_from, "default");
    assert_eq!(attrs(&x, "source", "file"), ["/out/web01.qcow2"]);
    assert_eq!(attrs(&x, "driver", "type"), ["qcow2"]);
    assert_eq!(attrs(&x, "target", "dev"), ["vda"]);
    assert_eq!(attrs(&x, "target", "bus"), ["virtio"]);
    assert_eq!(attrs(&x, "boot", "order"), ["1"]);
    // One NIC, its MAC left to libvirt, on the default network.
    assert_eq!(attrs(&x, "interface", "type"), ["network"]);
    assert_eq!(attrs(&x, "mac", "address"), Vec::<String>::new());
    assert_eq!(attrs(&x, "source", "network"), ["default"]);
    assert_eq!(attrs(&x, "model", "type"), ["virtio", "vga"]);
    assert_eq!(attrs(&x, "serial", "type"), ["pty"]);
    assert_eq!(attrs(&x, "log", "file"), Vec::<String>::new());
    assert_eq!(attrs(&x, "console", "type"), ["pty"]);
    assert_eq!(attrs(&x, "channel", "type"), Vec::<String>::new());
    assert_eq!(attrs(&x, "rng", "model"), ["virtio"]);
    assert_eq!(texts(&x, "backend"), ["/dev/urandom"]);
    assert_eq!(attrs(&x, "cpu", "mode"), ["maximum"]);
    assert!(
        texts(&x, "description")[0].contains("from /src/web01.vmdk"),
        "{x}"
    );
}

#[test]
fn uefi_guest_with_three_raw_disks_and_two_nics() {
    let mut p = plan(3);
    p.convert.format = OutputFormat::Raw;
    p.vm.cpu = Some(4);
    p.vm.mem_gb = Some(1.5);
    p.vm.firmware = Some(Firmware::Uefi);
    p.fix.nics = vec![
        NicPlan::parse_flag("00:50:56:AA:00:01=52:54:00:00:00:01").unwrap(),
        NicPlan {
            mac: Some("00:50:56:aa:00:02".into()),
            ..NicPlan::default()
        },
    ];
    let mut r = report(&p);
    r.os = Some(os("uefi"));
    let (x, spec, warnings) = xml(&p, &r, DomainType::Qemu);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(spec.firmware_from, "declared");
    assert_eq!(attrs(&x, "os", "firmware"), ["efi"]);
    assert_eq!(
        attrs(&x, "feature", "name")[..2],
        ["secure-boot", "enrolled-keys"]
    );
    assert_eq!(attrs(&x, "feature", "enabled"), ["no", "no"]);
    assert_eq!(texts(&x, "vcpu"), ["4"]);
    assert_eq!(texts(&x, "memory"), ["1536"]);
    assert_eq!(
        attrs(&x, "source", "file"),
        ["/out/web01.qcow2", "/out/data1.qcow2", "/out/data2.qcow2"]
    );
    assert_eq!(attrs(&x, "driver", "type"), ["raw", "raw", "raw"]);
    let targets = attrs(&x, "target", "dev");
    assert_eq!(targets, ["vda", "vdb", "vdc"]);
    assert_eq!(attrs(&x, "boot", "order"), ["1", "2", "3"]);
    // The target MAC where one is given, else the MAC kept.
    assert_eq!(
        attrs(&x, "mac", "address"),
        ["52:54:00:00:00:01", "00:50:56:aa:00:02"]
    );
    assert_eq!(attrs(&x, "interface", "type"), ["network", "network"]);
}

#[test]
fn a_firmware_that_disagrees_with_the_disk_is_noted_and_a_detected_one_used() {
    let mut p = plan(1);
    p.vm.firmware = Some(Firmware::Bios);
    let mut r = report(&p);
    r.os = Some(os("uefi"));
    let (_, spec, warnings) = xml(&p, &r, DomainType::Qemu);
    assert_eq!(spec.firmware, Firmware::Bios);
    assert!(
        warnings[0]
            .contains("declared bios but its disk looks uefi (EFI system partition /dev/sda1)"),
        "{warnings:?}"
    );
    p.vm.firmware = None;
    let (x, spec, _) = xml(&p, &r, DomainType::Qemu);
    assert_eq!(
        (spec.firmware, spec.firmware_from),
        (Firmware::Uefi, "detected")
    );
    assert_eq!(attrs(&x, "os", "firmware"), ["efi"]);
}

#[test]
fn the_network_steps_macs_fill_the_nics_the_plan_did_not_name() {
    let p = plan(1);
    let mut r = report(&p);
    r.fixes.push(fix(
        "network",
        FixStatus::Changed,
        vec![
            NicChoice {
                interface: "ens192".into(),
                mac: Some("00:50:56:9A:12:34".into()),
            },
            NicChoice {
                interface: "ens224".into(),
                mac: None,
            },
        ],
    ));
    let (x, _, _) = xml(&p, &r, DomainType::Qemu);
    assert_eq!(attrs(&x, "mac", "address"), ["00:50:56:9a:12:34"]);
    // A planned NIC without a MAC takes it; a planned MAC is not repeated.
    let mut p = plan(1);
    p.vm.nics = vec![
        NicPlan {
            network: Some("VM Network".into()),
            ..NicPlan::default()
        },
        NicPlan {
            mac: Some("00:50:56:9a:12:34".into()),
            ..NicPlan::default()
        },
    ];
    r.fixes[0].nics.push(NicChoice {
        interface: "ens256".into(),
        mac: Some("00:50:56:00:00:03".into()),
    });
    let (x, _, _) = xml(&p, &r, DomainType::Qemu);
    assert_eq!(
        attrs(&x, "mac", "address"),
        ["00:50:56:00:00:03", "00:50:56:9a:12:34"]
    );
}

#[test]
fn the_agent_channel_is_there_only_when_the_agent_is() {
    let p = plan(1);
    let mut r = report(&p);
    r.fixes
        .push(fix("guest-agent", FixStatus::Skipped, Vec::new()));
    let (x, _, _) = xml(&p, &r, DomainType::Qemu);
    assert!(!x.contains("org.qemu.guest_agent.0"), "{x}");
    for status in [FixStatus::Changed, FixStatus::Unchanged] {
        r.fixes[0].status = status;
        let (x, spec, _) = xml(&p, &r, DomainType::Qemu);
        assert!(spec.guest_agent);
        assert_eq!(attrs(&x, "channel", "type"), ["unix"]);
        assert_eq!(attrs(&x, "target", "name"), ["org.qemu.guest_agent.0"]);
    }
}

#[test]
fn kvm_domains_pass_the_host_cpu_through() {
    let p = plan(1);
    let (x, _, _) = xml(&p, &report(&p), DomainType::Kvm);
    assert!(x.starts_with("<domain type=\"kvm\">"));
    assert_eq!(attrs(&x, "cpu", "mode"), ["host-passthrough"]);
    assert!(!x.contains("svm"), "{x}");
}

#[test]
fn networks_bridges_user_mode_and_the_console_log() {
    let mut p = plan(1);
    p.libvirt.network = LibvirtNetwork::Bridge("br0".into());
    p.libvirt.console_log = Some(PathBuf::from("/var/log/h2k/web01 & co.log"));
    let (x, _, _) = xml(&p, &report(&p), DomainType::Qemu);
    assert_eq!(attrs(&x, "interface", "type"), ["bridge"]);
    assert_eq!(attrs(&x, "source", "bridge"), ["br0"]);
    assert_eq!(attrs(&x, "log", "file"), ["/var/log/h2k/web01 & co.log"]);
    assert!(x.contains("web01 &amp; co.log"), "{x}");
    p.libvirt.network = LibvirtNetwork::User;
    let (x, _, _) = xml(&p, &report(&p), DomainType::Qemu);
    assert_eq!(attrs(&x, "interface", "type"), ["user"]);
    assert_eq!(attrs(&x, "source", "network"), Vec::<String>::new());
    p.libvirt.network = LibvirtNetwork::Network("wan-1".into());
    let (x, _, _) = xml(&p, &report(&p), DomainType::Qemu);
    assert_eq!(attrs(&x, "source", "network"), ["wan-1"]);
}

#[test]
fn names_and_paths_that_need_escaping_come_back_intact() {
    let mut p = plan(1);
    p.vm.name = Some("  Web <\"01\"> & 'co'/prod\u{7} ".into());
    p.disks[0].output = PathBuf::from("/out/a&b <c>'\"d\".qcow2");
    let (x, spec, _) = xml(&p, &report(&p), DomainType::Qemu);
    assert_eq!(spec.name, "Web <\"01\"> & 'co'_prod");
    assert_eq!(texts(&x, "name"), std::slice::from_ref(&spec.name));
    assert!(
        x.contains("<name>Web &lt;&quot;01&quot;&gt; &amp; &apos;co&apos;_prod</name>")
            || x.contains("<name>Web &lt;\"01\"&gt; &amp; 'co'_prod</name>"),
        "{x}"
    );
    assert_eq!(attrs(&x, "source", "file"), ["/out/a&b <c>'\"d\".qcow2"]);
    // Nothing usable in the VM name: the job's name.
    p.vm.name = Some(" \u{1} ".into());
    assert_eq!(domain_name(&p), "web01");
    p.vm.name = Some("x".repeat(300));
    assert_eq!(domain_name(&p).len(), 200);
}

#[test]
fn paths_xml_cannot_carry_are_refused() {
    let p = plan(1);
    let (mut spec, _) = DomainSpec::of_job(&p, &report(&p), DomainType::Qemu);
    spec.disks[0].path = PathBuf::from("/out/a\nb.qcow2");
    let e = render(&spec).unwrap_err().to_string();
    assert_eq!(
        e,
        "libvirt: the disk \"/out/a\\nb.qcow2\" cannot go into the domain XML: it contains a control character"
    );
    spec.disks[0].path = PathBuf::from("relative.qcow2");
    assert!(render(&spec)
        .unwrap_err()
        .to_string()
        .ends_with("not an absolute path"));
    let mut spec2 = spec.clone();
    spec2.disks.clear();
    spec2.nics.clear();
    // No disk, no NIC: still a well-formed domain (the pure renderer does not judge).
    let x = render(&spec2).unwrap();
    assert_eq!(attrs(&x, "interface", "type"), Vec::<String>::new());
}

#[test]
fn disk_targets_are_named_like_libvirt_names_them() {
    let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
        .iter()
        .map(|&i| target_dev(i))
        .collect();
    assert_eq!(
        names,
        ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa"]
    );
}

#[test]
fn the_plan_is_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan(1);
    p.disks[0].output = dir.path().join("web01.qcow2");
    check_plan(&p, false).unwrap();
    std::fs::write(dir.path().join("web01.xml"), "x").unwrap();
    let e = check_plan(&p, false).unwrap_err().to_string();
    assert!(
        e.ends_with("web01.xml: already exists (remove it or pass --overwrite)"),
        "{e}"
    );
    check_plan(&p, true).unwrap();
    p.libvirt.xml_path = Some(p.disks[0].output.clone());
    assert!(check_plan(&p, true)
        .unwrap_err()
        .to_string()
        .contains("also a disk's output"));
    p.libvirt.xml_path = None;
    p.convert.enabled = false;
    assert!(matches!(check_plan(&p, true), Err(LibvirtError::NoDisks)));
    p.libvirt.xml = false;
    check_plan(&p, false).unwrap();
}

#[test]
fn the_xml_is_written_whole_and_never_over_a_file_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan(1);
    p.disks[0].output = dir.path().join("web01.qcow2");
    let r = report(&p);
    let (record, _) = write_domain(&p, &r, false).unwrap().unwrap();
    assert_eq!(record.xml, dir.path().join("web01.xml"));
    assert_eq!(record.domain_type, domain_type_of(&r).as_str());
    let written = std::fs::read_to_string(&record.xml).unwrap();
    roxmltree::Document::parse(&written).unwrap();
    let e = write_domain(&p, &r, false).unwrap_err().to_string();
    assert!(
        e.ends_with("already exists (remove it or pass --overwrite)"),
        "{e}"
    );
    write_domain(&p, &r, true).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["web01.xml"], "no temp file left");
    p.libvirt.xml = false;
    assert!(write_domain(&p, &r, false).unwrap().is_none());
}

#[test]
fn virsh_errors_come_down_to_their_cause() {
    let stderr = "error: Failed to define domain from /out/.h2k-x.xml.part\n\
                  error: operation failed: domain 'web01' already exists with uuid 1234\n";
    assert_eq!(
        virsh_reason(stderr),
        "operation failed: domain 'web01' already exists with uuid 1234"
    );
    assert_eq!(
        virsh_reason("error: failed to connect to the hypervisor\n"),
        "failed to connect to the hypervisor"
    );
}
