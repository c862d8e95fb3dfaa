//! What to append to an initramfs image (pure): the virtio modules it lacks, the depmod tree
//! that indexes them together with the image's own modules, and the image's copies of guest
//! configuration files this run changed.
//!
//! The copies matter as much as the modules: initramfs-tools and dracut copy `.link` files,
//! udev rules, modprobe.d and initramfs-tools' `conf.d` into the image, and a stale copy can
//! rename the NIC or wait for a resume device that is gone. Each changed guest file is
//! mapped to where the image's generator put it ([`image_targets`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::fix::initramfs_verify::{module_name, ModuleDeps};

/// A `.link` that matches nothing: what a removed guest `.link` becomes in the image (an
/// appended archive cannot delete a file, and an empty `.link` is not inert everywhere).
pub const INERT_LINK: &str =
    "# removed by h2k-guest: this .link pinned a NIC that does not exist on KVM\n[Match]\nOriginalName=h2k-guest-removed\n";

/// The image's module directory for `kver` (`usr/lib/modules/KVER` or `lib/modules/KVER`):
/// where its `modules.dep` is.
pub fn module_dir(paths: &[String], kver: &str) -> Option<String> {
    [
        format!("usr/lib/modules/{kver}"),
        format!("lib/modules/{kver}"),
    ]
    .into_iter()
    .find(|d| {
        let dep = format!("{d}/modules.dep");
        paths.contains(&dep)
    })
}

/// Names of the modules built into the kernel (`modules.builtin` text).
pub fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(module_name).collect()
}

/// A module path as modules.dep gives it, safe to use as a path below a module directory:
/// relative, no `..`, no empty component, no byte a shell list or a name would trip on.
pub fn safe_module_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'/' | b',')
        })
}

/// The guest-kernel paths (relative to its module directory) of `wanted` and everything they
/// need that is neither in the image nor built in. Err names a wanted module the kernel has
/// neither as a module nor built in.
pub fn modules_to_add(
    image: &ModuleDeps,
    guest: &ModuleDeps,
    builtin: &BTreeSet<String>,
    wanted: &[&str],
) -> Result<Vec<String>, String> {
    let mut add = BTreeSet::new();
    for m in wanted {
        if builtin.contains(*m) {
            continue;
        }
        let Some(path) = guest.path_of(m) else {
            return Err(format!(
                "{m} is neither a module of the guest's kernel nor built in"
            ));
        };
        for p in std::iter::once(path.to_string()).chain(guest.dependencies(m)) {
            if !safe_module_path(&p) {
                return Err(format!(
                    "the guest's modules.dep names an unsafe path {p:?}"
                ));
            }
            let name = module_name(&p).unwrap_or_default();
            if image.path_of(&name).is_none() && !builtin.contains(&name) {
                add.insert(p);
            }
        }
    }
    Ok(add.into_iter().collect())
}

/// The symlinks of the depmod tree, `(name in the tree, guest path relative to its module
/// directory)`: every module of the image under the name the image gives it, and every
/// added module under its own. Err names an image module the guest's kernel does not have
/// (the image was not made from this tree: appending would index a mix).
pub fn depmod_links(
    image: &ModuleDeps,
    guest: &ModuleDeps,
    added: &[String],
) -> Result<Vec<(String, String)>, String> {
    let mut links = Vec::new();
    for (name, path) in image.modules() {
        let Some(target) = guest.path_of(name) else {
            return Err(format!(
                "the image's module {name} ({path}) is not in the guest's modules.dep"
            ));
        };
        if !safe_module_path(path) || !safe_module_path(target) {
            return Err(format!(
                "unsafe module path {path:?} / {target:?} in a modules.dep"
            ));
        }
        links.push((path.to_string(), target.to_string()));
    }
    links.extend(added.iter().map(|p| (p.clone(), p.clone())));
    links.sort();
    links.dedup();
    Ok(links)
}

/// A guest file changed by this run: its path and its content now (None: removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedFile {
    pub path: String,
    pub content: Option<Vec<u8>>,
}

/// Where an image holds the copy of guest file `guest_path`, or would have put it had it
/// been there when the image was made; empty when the image carries no copy.
pub fn image_targets(guest_path: &str, paths: &[String]) -> Vec<String> {
    let Some((dir, name)) = guest_path.rsplit_once('/') else {
        return Vec::new();
    };
    let rel = guest_path.trim_start_matches('/');
    let with_name = |suffix: &str| -> Vec<String> {
        paths
            .iter()
            .filter(|p| p.ends_with(&format!("{suffix}/{name}")))
            .cloned()
            .collect()
    };
    // The directory the image keeps such files in (`etc/…` first: /etc overrides /usr/lib).
    let home_of = |suffix: &str, ext: &str| -> Option<String> {
        let mut dirs: Vec<&str> = paths
            .iter()
            .filter(|p| p.ends_with(ext))
            .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
            .filter(|d| d.ends_with(suffix))
            .collect();
        dirs.sort_by_key(|d| (!d.starts_with("etc/"), d.len()));
        dirs.first().map(|d| d.to_string())
    };
    let existing_or_home = |suffix: &str, ext: &str| -> Vec<String> {
        let existing = with_name(suffix);
        if !existing.is_empty() {
            return existing;
        }
        home_of(suffix, ext)
            .map(|d| vec![format!("{d}/{name}")])
            .unwrap_or_default()
    };
    match dir {
        "/etc/systemd/network" if name.ends_with(".link") => {
            existing_or_home("systemd/network", ".link")
        }
        "/etc/udev/rules.d" if name.ends_with(".rules") => {
            existing_or_home("udev/rules.d", ".rules")
        }
        "/etc/modprobe.d" if name.ends_with(".conf") => {
            let existing = with_name("modprobe.d");
            if !existing.is_empty() {
                existing
            } else if paths.iter().any(|p| p.contains("modprobe.d")) {
                vec![format!("etc/modprobe.d/{name}")]
            } else {
                Vec::new()
            }
        }
        "/etc/initramfs-tools/conf.d" => {
            if paths
                .iter()
                .any(|p| p == "conf/conf.d" || p.starts_with("conf/conf.d/"))
            {
                vec![format!("conf/conf.d/{name}")]
            } else {
                Vec::new()
            }
        }
        "/etc/initramfs-tools" if name == "initramfs.conf" => paths
            .iter()
            .filter(|p| *p == "conf/initramfs.conf")
            .cloned()
            .collect(),
        _ => paths.iter().filter(|p| *p == rel).cloned().collect(),
    }
}

/// The image files to write for the changed guest files: image path → content. A removed
/// file becomes an inert one ([`INERT_LINK`] for a `.link`, empty otherwise). When the
/// initramfs-tools resume configuration changed, the image's `zz-resume-auto` (written by the
/// resume hook only when no device was configured) is emptied so the new setting is the one
/// read.
pub fn overlay(changed: &[ChangedFile], paths: &[String]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for c in changed {
        for target in image_targets(&c.path, paths) {
            let data = match &c.content {
                Some(d) => d.clone(),
                None if target.ends_with(".link") => INERT_LINK.as_bytes().to_vec(),
                None => Vec::new(),
            };
            out.insert(target, data);
        }
    }
    let resume_auto = "conf/conf.d/zz-resume-auto";
    if changed
        .iter()
        .any(|c| c.path.starts_with("/etc/initramfs-tools/conf.d/"))
        && paths.iter().any(|p| p == resume_auto)
        && !changed.iter().any(|c| c.path.ends_with("/zz-resume-auto"))
    {
        out.insert(resume_auto.to_string(), Vec::new());
    }
    out
}

/// initramfs-tools' `conf/modules` (the modules its init loads by name) with `modules`
/// listed once each.
pub fn conf_modules(old: &str, modules: &[&str]) -> String {
    let listed: BTreeSet<&str> = old
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut out = old.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for m in modules {
        if !listed.contains(m) {
            out.push_str(m);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_DEP: &str = "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/scsi/scsi_mod.ko:\n\
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
kernel/net/core/failover.ko:\n\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/scsi/vmw_pvscsi.ko: kernel/drivers/scsi/scsi_mod.ko\n\
kernel/fs/ext4/ext4.ko.xz:\n";

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unsafe_module_paths_are_refused() {
        for good in [
            "kernel/drivers/block/virtio_blk.ko",
            "updates/dkms/x-1.ko.xz",
            "extra/a+b,c.ko",
        ] {
            assert!(safe_module_path(good), "{good}");
        }
        for bad in [
            "",
            "/etc/shadow",
            "../../x.ko",
            "kernel//x.ko",
            "kernel/./x.ko",
            "a\tb.ko",
            "a b.ko",
            "a\nb",
            "k/$(x).ko",
        ] {
            assert!(!safe_module_path(bad), "{bad}");
        }
        let guest = ModuleDeps::parse("kernel/virtio_blk.ko: ../../../etc/x.ko\n");
        let err = modules_to_add(
            &ModuleDeps::default(),
            &guest,
            &BTreeSet::new(),
            &["virtio_blk"],
        )
        .unwrap_err();
        assert!(err.contains("unsafe path"), "{err}");
        let image = ModuleDeps::parse("../evil.ko:\n");
        let guest = ModuleDeps::parse("kernel/evil.ko:\n");
        assert!(depmod_links(&image, &guest, &[])
            .unwrap_err()
            .contains("unsafe"));
    }

    #[test]
    fn the_image_module_directory_is_where_its_modules_dep_is() {
        let p = paths(&["usr/lib/modules/6.1.0-1/modules.dep", "lib"]);
        assert_eq!(
            module_dir(&p, "6.1.0-1").as_deref(),
            Some("usr/lib/modules/6.1.0-1")
        );
        let p = paths(&["lib/modules/5.10.0-9/modules.dep"]);
        assert_eq!(
            module_dir(&p, "5.10.0-9").as_deref(),
            Some("lib/modules/5.10.0-9")
        );
        assert_eq!(module_dir(&p, "6.1.0-1"), None, "another kernel's index");
        assert_eq!(
            module_dir(&paths(&["usr/lib/modules/6.1.0-1"]), "6.1.0-1"),
            None
        );
    }

    #[test]
    fn modules_to_add_are_the_closure_minus_what_the_image_or_kernel_has() {
        let guest = ModuleDeps::parse(GUEST_DEP);
        let image = ModuleDeps::parse(
            "kernel/drivers/scsi/scsi_mod.ko:\nkernel/drivers/scsi/vmw_pvscsi.ko: kernel/drivers/scsi/scsi_mod.ko\n",
        );
        let none = BTreeSet::new();
        let add = modules_to_add(
            &image,
            &guest,
            &none,
            &["virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net"],
        )
        .unwrap();
        assert_eq!(
            add,
            vec![
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/scsi/virtio_scsi.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/core/failover.ko",
            ]
        );
        // Built in: nothing to add for it, its dependencies neither.
        let builtin = builtin_names("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/block/virtio_blk.ko\n");
        let add = modules_to_add(&image, &guest, &builtin, &["virtio_blk", "virtio"]).unwrap();
        assert!(add.is_empty(), "{add:?}");
        let err = modules_to_add(&image, &guest, &none, &["virtio_foo"]).unwrap_err();
        assert_eq!(
            err,
            "virtio_foo is neither a module of the guest's kernel nor built in"
        );
    }

    #[test]
    fn depmod_links_keep_the_image_names_and_refuse_a_foreign_module() {
        let guest = ModuleDeps::parse(GUEST_DEP);
        // The image stores ext4 decompressed; the guest tree has it as .ko.xz.
        let image = ModuleDeps::parse("kernel/fs/ext4/ext4.ko:\n");
        let links = depmod_links(
            &image,
            &guest,
            &["kernel/drivers/block/virtio_blk.ko".into()],
        )
        .unwrap();
        assert_eq!(
            links,
            vec![
                (
                    "kernel/drivers/block/virtio_blk.ko".to_string(),
                    "kernel/drivers/block/virtio_blk.ko".to_string()
                ),
                (
                    "kernel/fs/ext4/ext4.ko".to_string(),
                    "kernel/fs/ext4/ext4.ko.xz".to_string()
                ),
            ]
        );
        let foreign = ModuleDeps::parse("kernel/drivers/x/nvidia.ko:\n");
        assert_eq!(
            depmod_links(&foreign, &guest, &[]).unwrap_err(),
            "the image's module nvidia (kernel/drivers/x/nvidia.ko) is not in the guest's modules.dep"
        );
    }

    const TOOLS_IMAGE: &[&str] = &[
        "conf/conf.d",
        "conf/conf.d/resume",
        "conf/modules",
        "etc/modprobe.d",
        "usr/lib/modprobe.d/aliases.conf",
        "usr/lib/systemd/network/99-default.link",
        "usr/lib/udev/rules.d/70-persistent-net.rules",
        "usr/lib/udev/rules.d/60-block.rules",
        "etc/fstab",
    ];

    #[test]
    fn changed_files_map_to_where_initramfs_tools_copied_them() {
        let p = paths(TOOLS_IMAGE);
        let t = |g: &str| image_targets(g, &p);
        assert_eq!(
            t("/etc/udev/rules.d/70-persistent-net.rules"),
            vec!["usr/lib/udev/rules.d/70-persistent-net.rules"]
        );
        assert_eq!(
            t("/etc/udev/rules.d/10-new.rules"),
            vec!["usr/lib/udev/rules.d/10-new.rules"]
        );
        assert_eq!(
            t("/etc/systemd/network/10-h2k-ens192.link"),
            vec!["usr/lib/systemd/network/10-h2k-ens192.link"]
        );
        assert_eq!(
            t("/etc/systemd/network/99-default.link"),
            vec!["usr/lib/systemd/network/99-default.link"]
        );
        assert_eq!(
            t("/etc/modprobe.d/aliases.conf"),
            vec!["usr/lib/modprobe.d/aliases.conf"]
        );
        assert_eq!(
            t("/etc/modprobe.d/vmware.conf"),
            vec!["etc/modprobe.d/vmware.conf"]
        );
        assert_eq!(
            t("/etc/initramfs-tools/conf.d/resume"),
            vec!["conf/conf.d/resume"]
        );
        assert_eq!(t("/etc/fstab"), vec!["etc/fstab"]);
        assert!(t("/etc/default/grub").is_empty());
        assert!(t("/etc/network/interfaces").is_empty());
        assert!(
            t("/etc/systemd/network/10-x.network").is_empty(),
            "not a .link"
        );
    }

    #[test]
    fn dracut_images_keep_etc_paths() {
        let p = paths(&[
            "etc/systemd/network/10-old.link",
            "usr/lib/systemd/network/99-default.link",
            "etc/modprobe.d/blacklist.conf",
        ]);
        assert_eq!(
            image_targets("/etc/systemd/network/20-new.link", &p),
            vec!["etc/systemd/network/20-new.link"]
        );
        assert_eq!(
            image_targets("/etc/modprobe.d/blacklist.conf", &p),
            vec!["etc/modprobe.d/blacklist.conf"]
        );
        // No udev rules in the image: a new rules file is not copied in.
        assert!(image_targets("/etc/udev/rules.d/70-x.rules", &p).is_empty());
        // No initramfs-tools conf.d in a dracut image.
        assert!(image_targets("/etc/initramfs-tools/conf.d/resume", &p).is_empty());
    }

    #[test]
    fn overlay_makes_removed_files_inert_and_clears_the_automatic_resume() {
        let mut p = paths(TOOLS_IMAGE);
        p.push("conf/conf.d/zz-resume-auto".into());
        p.push("usr/lib/systemd/network/10-vmware-pin.link".into());
        let changed = vec![
            ChangedFile {
                path: "/etc/systemd/network/10-vmware-pin.link".into(),
                content: None,
            },
            ChangedFile {
                path: "/etc/udev/rules.d/70-persistent-net.rules".into(),
                content: None,
            },
            ChangedFile {
                path: "/etc/initramfs-tools/conf.d/resume".into(),
                content: Some(b"RESUME=UUID=abc\n".to_vec()),
            },
            ChangedFile {
                path: "/etc/default/grub".into(),
                content: Some(b"x".to_vec()),
            },
        ];
        let o = overlay(&changed, &p);
        assert_eq!(
            o.keys().collect::<Vec<_>>(),
            vec![
                "conf/conf.d/resume",
                "conf/conf.d/zz-resume-auto",
                "usr/lib/systemd/network/10-vmware-pin.link",
                "usr/lib/udev/rules.d/70-persistent-net.rules",
            ]
        );
        assert_eq!(o["conf/conf.d/zz-resume-auto"], b"");
        assert_eq!(
            o["usr/lib/systemd/network/10-vmware-pin.link"],
            INERT_LINK.as_bytes()
        );
        assert_eq!(o["usr/lib/udev/rules.d/70-persistent-net.rules"], b"");
        assert_eq!(o["conf/conf.d/resume"], b"RESUME=UUID=abc\n");
        assert!(overlay(&[], &p).is_empty());
    }

    #[test]
    fn conf_modules_lists_each_module_once() {
        assert_eq!(
            conf_modules("vmw_pvscsi\n", &["virtio_blk", "vmw_pvscsi"]),
            "vmw_pvscsi\nvirtio_blk\n"
        );
        assert_eq!(conf_modules("", &["virtio_blk"]), "virtio_blk\n");
        assert_eq!(
            conf_modules("a opt=1", &["a", "b"]),
            "a opt=1\nb\n",
            "arguments kept, no newline added twice"
        );
    }
}
