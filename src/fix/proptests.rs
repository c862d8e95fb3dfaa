//! Property tests of the pure transforms that read untrusted guest text: whatever the guest
//! wrote, they never panic, applying one twice equals applying it once, line structure is
//! kept, and lines that name no device (comments included) come out byte for byte.

use proptest::prelude::*;

use super::fstab::{rewrite_crypttab, rewrite_fstab, DeviceMap, FstabMode};
use super::grub::{rewrite_bls_entry, rewrite_default_grub, rewrite_grub_cfg_cmdlines};
use super::network::decide::decide;
use super::network::inventory::{self, Format, GuestFile};
use super::text::Rewrite;
use crate::plan::{NetworkMode, NicPlan};

const UUID: &str = "1b2c3d4e-0000-4000-8000-000000000001";

/// Fragments real files are made of, mixed with arbitrary text.
fn line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/dev/sda1".to_string()),
        Just("/dev/sdb".to_string()),
        Just("/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part1".to_string()),
        Just("/dev/disk/by-id/scsi-36000c29-part2".to_string()),
        Just("/dev/nvme0n1p3".to_string()),
        Just(format!("UUID={UUID}")),
        Just("/".to_string()),
        Just("/boot".to_string()),
        Just("swap".to_string()),
        Just("ext4".to_string()),
        Just("defaults".to_string()),
        Just("root=/dev/sda1".to_string()),
        Just("resume=/dev/sda2".to_string()),
        Just("GRUB_CMDLINE_LINUX=\"".to_string()),
        Just("GRUB_CMDLINE_LINUX_DEFAULT='".to_string()),
        Just("GRUB_DISABLE_LINUX_UUID=true".to_string()),
        Just("options".to_string()),
        Just("linux".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("#".to_string()),
        Just("none".to_string()),
        "[ \t]{0,2}".prop_map(String::from),
        "\\PC{0,12}".prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.join(" "))
}

fn text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((line(), any::<bool>()), 0..10),
        any::<bool>(),
    )
        .prop_map(|(lines, last_newline)| {
            let mut t = String::new();
            for (l, crlf) in &lines {
                t.push_str(l.replace(['\n', '\r'], " ").as_str());
                t.push_str(if *crlf { "\r\n" } else { "\n" });
            }
            if !last_newline && t.ends_with('\n') {
                t.pop();
                if t.ends_with('\r') {
                    t.pop();
                }
            }
            t
        })
}

fn map() -> DeviceMap {
    DeviceMap::default()
        .with_spec("/dev/sda1", UUID)
        .with_spec("/dev/sda2", UUID)
        .with_spec(
            "/dev/disk/by-path/pci-0000:03:00.0-scsi-0:0:0:0-part1",
            UUID,
        )
        .with_mountpoint("/boot", UUID)
}

fn resolve(dev: &str) -> Option<String> {
    dev.starts_with("/dev/sda").then(|| UUID.to_string())
}

/// Same number of lines; a line that names no device (and that `may_change` does not
/// allow) is unchanged, byte for byte, comments included.
fn check_kept(before: &str, after: &Rewrite, may_change: impl Fn(&str) -> bool) {
    let old: Vec<&str> = before.split_inclusive('\n').collect();
    let new: Vec<&str> = after.text.split_inclusive('\n').collect();
    assert_eq!(old.len(), new.len(), "{before:?} → {:?}", after.text);
    for (o, n) in old.iter().zip(&new) {
        if !o.contains("/dev/") && !may_change(o) {
            assert_eq!(o, n);
        }
        if o.trim_start().starts_with('#') {
            assert_eq!(o, n, "comment changed");
        }
    }
}

fn check(before: &str, transform: impl Fn(&str) -> Rewrite, may_change: impl Fn(&str) -> bool) {
    let once = transform(before);
    check_kept(before, &once, may_change);
    let twice = transform(&once.text);
    assert_eq!(twice.text, once.text, "not idempotent on {before:?}");
    assert!(twice.changes.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(800))]

    #[test]
    fn fstab_rewrite_is_safe(t in text()) {
        let m = map();
        for mode in [FstabMode::StabilizeAll, FstabMode::BypathOnly, FstabMode::Noop] {
            check(&t, |x| rewrite_fstab(x, mode, &m), |_| false);
        }
    }

    #[test]
    fn crypttab_rewrite_is_safe(t in text()) {
        let m = map();
        check(&t, |x| rewrite_crypttab(x, FstabMode::StabilizeAll, &m), |_| false);
    }

    #[test]
    fn default_grub_rewrite_is_safe(t in text()) {
        check(&t, |x| rewrite_default_grub(x, &resolve), |l| l.contains("GRUB_DISABLE_LINUX_UUID"));
    }

    #[test]
    fn bls_and_grub_cfg_rewrites_are_safe(t in text()) {
        check(&t, |x| rewrite_bls_entry(x, &resolve), |_| false);
        check(&t, |x| rewrite_grub_cfg_cmdlines(x, &resolve), |_| false);
    }
}

/// Fragments of initramfs generator and modprobe configuration, mixed with arbitrary text.
fn conf_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("omit_drivers+=\"".to_string()),
        Just("omit_drivers='".to_string()),
        Just("omit_drivers=".to_string()),
        Just("add_device+=\"".to_string()),
        Just("kernel_cmdline=\"".to_string()),
        Just("hostonly=yes".to_string()),
        Just("RESUME=".to_string()),
        Just("export RESUME=\"".to_string()),
        Just("MODULES=dep".to_string()),
        Just("virtio_blk".to_string()),
        Just("virtio-pci".to_string()),
        Just("virtio.*".to_string()),
        Just("(".to_string()),
        Just("floppy".to_string()),
        Just("resume=/dev/sda2".to_string()),
        Just("resume=8:2".to_string()),
        Just("/dev/sda2".to_string()),
        Just("/dev/sdc3".to_string()),
        Just("blacklist".to_string()),
        Just("install".to_string()),
        Just("alias".to_string()),
        Just("off".to_string()),
        Just("/bin/false".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just("#".to_string()),
        Just("\n".to_string()),
        "[ \t]{0,2}".prop_map(String::from),
        "\\PC{0,12}".prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

fn swap_lookup(dev: &str) -> super::resume::SwapLookup {
    use super::resume::SwapLookup;
    match dev {
        "/dev/sda2" => SwapLookup::Swap(UUID.into()),
        "/dev/sda1" => SwapLookup::NotSwap("ext4".into()),
        _ => SwapLookup::Unknown,
    }
}

const VIRTIO: &[&str] = &["virtio_blk", "virtio_pci", "virtio_ring", "virtio"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn dracut_conf_transforms_never_panic_and_are_idempotent(t in conf_text()) {
        let _ = super::dracut_conf::assignments(&t);
        let once = super::dracut_conf::lift_omissions(&t, VIRTIO);
        let twice = super::dracut_conf::lift_omissions(&once.text, VIRTIO);
        prop_assert_eq!(&twice.text, &once.text);
        let eff = super::dracut_conf::effective(&[("f".to_string(), once.text.clone())]);
        prop_assert!(super::dracut_conf::omitted(&eff, &[], VIRTIO).is_empty(), "{:?}", once.text);
        let r = super::dracut_conf::rewrite_resume(&t, &swap_lookup);
        let r2 = super::dracut_conf::rewrite_resume(&r.text, &swap_lookup);
        prop_assert_eq!(&r2.text, &r.text);
        let _ = super::dracut_conf::build_parameters(&t);
    }

    #[test]
    fn resume_and_modprobe_transforms_are_safe(t in conf_text()) {
        check(&t, |x| super::resume::rewrite_initramfs_tools_resume(x, &swap_lookup), |l| l.contains("RESUME="));
        check(&t, |x| super::modprobe_conf::lift_blocks(x, VIRTIO), |_| true);
        let (once, _, _) = super::resume::rewrite_resume_words(&t, &swap_lookup);
        let (twice, changes, _) = super::resume::rewrite_resume_words(&once, &swap_lookup);
        prop_assert_eq!(twice, once);
        prop_assert!(changes.is_empty());
    }

    #[test]
    fn image_checks_never_panic(dep in conf_text(), conf in conf_text()) {
        use crate::initramfs_image::ImageFiles;
        let mut img = ImageFiles::default();
        for p in ["usr/lib/modules/6.1/modules.dep", "conf/conf.d/resume", "etc/modprobe.d/a.conf",
                  "etc/cmdline.d/a.conf", "usr/lib/dracut/build-parameter.txt"] {
            img.paths.push(p.to_string());
            let text = if p.ends_with("modules.dep") { &dep } else { &conf };
            img.files.insert(p.to_string(), text.as_bytes().to_vec());
        }
        img.paths.extend(dep.split_whitespace().map(|w| format!("usr/lib/modules/6.1/{w}")));
        for g in [super::initramfs_verify::Generator::Dracut, super::initramfs_verify::Generator::InitramfsTools] {
            let _ = super::initramfs_verify::verify_image(&img, "6.1", &conf, VIRTIO, g);
        }
    }
}

/// Fragments of network configuration files, mixed with arbitrary text.
fn net_line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("auto".to_string()),
        Just("allow-hotplug".to_string()),
        Just("iface".to_string()),
        Just("inet".to_string()),
        Just("dhcp".to_string()),
        Just("static".to_string()),
        Just("source".to_string()),
        Just("source-directory".to_string()),
        Just("bond-slaves".to_string()),
        Just("hwaddress".to_string()),
        Just("ens192".to_string()),
        Just("ens192.100".to_string()),
        Just("eth0".to_string()),
        Just("00:50:56:9A:12:34".to_string()),
        Just("52:54:00:12:34:56".to_string()),
        Just("[Match]".to_string()),
        Just("[Link]".to_string()),
        Just("[connection]".to_string()),
        Just("[ethernet]".to_string()),
        Just("Name=ens192".to_string()),
        Just("MACAddress=00:50:56:9a:12:34".to_string()),
        Just("interface-name=ens192".to_string()),
        Just("mac-address=00:50:56:9a:12:34".to_string()),
        Just("DEVICE=ens192".to_string()),
        Just("HWADDR=00:50:56:9a:12:34".to_string()),
        Just("ATTR{address}==\"00:50:56:9a:12:34\",".to_string()),
        Just("NAME=\"ens192\"".to_string()),
        Just("network:".to_string()),
        Just("  ethernets:".to_string()),
        Just("    ens192:".to_string()),
        Just("      dhcp4: true".to_string()),
        Just("\\".to_string()),
        Just("#".to_string()),
        Just("=".to_string()),
        Just("\"".to_string()),
        "[ \t]{0,2}".prop_map(String::from),
        "\\PC{0,12}".prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|p| p.join(" "))
}

fn net_text() -> impl Strategy<Value = String> {
    prop::collection::vec(net_line(), 0..10).prop_map(|lines| lines.join("\n"))
}

const FORMATS: &[(&str, Format)] = &[
    ("/etc/network/interfaces", Format::Ifupdown),
    ("/etc/netplan/01.yaml", Format::Netplan),
    (
        "/etc/NetworkManager/system-connections/a.nmconnection",
        Format::NmKeyfile,
    ),
    ("/etc/sysconfig/network-scripts/ifcfg-ens192", Format::Ifcfg),
    ("/etc/systemd/network/a.network", Format::NetworkdNetwork),
    ("/etc/systemd/network/a.link", Format::NetworkdLink),
    (
        "/etc/udev/rules.d/70-persistent-net.rules",
        Format::UdevRules,
    ),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every parser reads any text, and every mode decides on it without panicking; a
    /// keep-names run on its own output changes nothing more.
    #[test]
    fn network_parsers_and_decisions_never_panic(texts in prop::collection::vec(net_text(), 7)) {
        let files: Vec<GuestFile> = FORMATS
            .iter()
            .zip(&texts)
            .map(|((path, format), text)| GuestFile { path: path.to_string(), format: *format, text: text.clone() })
            .collect();
        inventory::parse_ifupdown(&texts[0]);
        let _ = inventory::parse_netplan(&texts[1]);
        let inv = inventory::scan(&files);
        let nics = [NicPlan {
            mac: Some("00:50:56:9a:12:34".into()),
            target_mac: Some("52:54:00:12:34:56".into()),
            target_name: Some("enp1s0".into()),
            ..NicPlan::default()
        }];
        for mode in [NetworkMode::KeepNames, NetworkMode::Rename, NetworkMode::Leave] {
            let _ = decide(&files, &inv, mode, &nics);
        }
        let once = decide(&files, &inv, NetworkMode::KeepNames, &[]).unwrap();
        let mut after: Vec<GuestFile> = files
            .iter()
            .filter(|f| !once.removals.iter().any(|r| r.path == f.path))
            .cloned()
            .collect();
        for w in &once.writes {
            match after.iter_mut().find(|f| f.path == w.path) {
                Some(f) => f.text = w.text.clone(),
                None => after.push(GuestFile { path: w.path.clone(), format: Format::NetworkdLink, text: w.text.clone() }),
            }
        }
        let again = decide(&after, &inventory::scan(&after), NetworkMode::KeepNames, &[]).unwrap();
        prop_assert!(again.writes.is_empty() && again.removals.is_empty(), "{:?}", again);
    }
}

/// Bytes of something close to an environment block: the header, then lines of names,
/// `=`, escapes, newlines and `#`, padded or not.
fn env_block_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"photon_cmdline=".to_vec()),
        Just(b"photon_linux=vmlinuz-6.1.10-11.ph5".to_vec()),
        Just(b"root=/dev/sda3".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"\\\\".to_vec()),
        Just(b"\\\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"#".to_vec()),
        Just(b"=".to_vec()),
        "[ -~]{0,10}".prop_map(String::into_bytes),
        "[ -~]{0,10}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    (
        prop::collection::vec(piece, 0..30),
        prop_oneof![
            Just(None),
            Just(Some(1024usize)),
            (0usize..1100).prop_map(Some)
        ],
    )
        .prop_map(|(pieces, pad_to)| {
            let mut b = crate::grub_env::HEADER.as_bytes().to_vec();
            for p in pieces {
                b.extend(p);
            }
            if let Some(n) = pad_to {
                if !b.ends_with(b"\n") {
                    b.push(b'\n');
                }
                if b.len() < n {
                    b.resize(n, b'#');
                }
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn env_block_parse_never_panics_and_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        use crate::grub_env::EnvBlock;
        if let Ok(b) = EnvBlock::parse(&bytes) {
            prop_assert_eq!(b.serialize().unwrap(), bytes.clone());
        }
        let mut with_header = crate::grub_env::HEADER.as_bytes().to_vec();
        with_header.extend(&bytes);
        if let Ok(b) = EnvBlock::parse(&with_header) {
            prop_assert_eq!(b.serialize().unwrap(), with_header);
        }
    }

    #[test]
    fn env_block_edit_keeps_the_size_or_errors(
        bytes in env_block_bytes(),
        name in prop_oneof![Just("photon_cmdline".to_string()), "[a-z_]{1,12}"],
        value in "\\PC{0,40}|[\\\\\n= a-z]{0,40}",
        unset in prop_oneof![Just("photon_linux".to_string()), "[a-z_]{1,8}"],
    ) {
        use crate::grub_env::{EnvBlock, EnvBlockError, Layout, BLOCK_SIZE};
        let Ok(mut b) = EnvBlock::parse(&bytes) else { return Ok(()) };
        let layout = b.layout();
        b.set(&name, &value).unwrap();
        b.unset(&unset);
        match b.serialize() {
            Ok(out) => {
                match layout {
                    Layout::Padded(n) => prop_assert_eq!(out.len(), n),
                    Layout::Unpadded => prop_assert!(out.len() <= BLOCK_SIZE),
                }
                let again = EnvBlock::parse(&out).unwrap();
                if name != unset {
                    prop_assert_eq!(again.get(&name), Some(value.as_str()));
                }
                prop_assert_eq!(again.get(&unset), None);
                prop_assert_eq!(again.serialize().unwrap(), out);
            }
            Err(e) => prop_assert!(matches!(e, EnvBlockError::TooSmall { .. }), "{}", e),
        }
    }

    #[test]
    fn driver_list_registration_is_idempotent(text in "[-a-z_ \"'\\\\\n]{0,60}") {
        use super::photon::driver_list::{added_drivers, register_drivers, split_args};
        let wanted = ["virtio_blk", "virtio_pci", "virtio-net"];
        if let Ok((out, _)) = register_drivers(&text, &wanted) {
            let have = added_drivers(&split_args(&out).unwrap());
            for w in ["virtio_blk", "virtio_pci", "virtio_net"] {
                prop_assert!(have.iter().any(|h| h == w), "{} not in {:?} from {:?}", w, have, out);
            }
            prop_assert_eq!(register_drivers(&out, &wanted).unwrap(), (out.clone(), vec![]));
        }
    }
}
