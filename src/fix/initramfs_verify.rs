//! Does a rebuilt initramfs really bring up a virtio disk? (pure, over an image read on the
//! host with [`crate::initramfs_image::read_image`]).
//!
//! Why: "a file named virtio_blk.ko is in the image" proved nothing. The check matched the
//! base name anywhere in the listing, for any kernel version, without the modules it needs
//! and without the image's own configuration, so an image whose driver could not load was
//! reported as fixed. Here every needed module is looked up in the image's own
//! `modules.dep` for the kernel it boots, its file and all its dependencies must be in the
//! image, no modprobe.d file in the image may block it, and for dracut neither the command
//! line dracut recorded in the image (`build-parameter.txt`) nor its `etc/cmdline.d` may omit
//! or blacklist it. The resume device the image will wait for must be stable as well.

use std::collections::{BTreeMap, BTreeSet};

use super::dracut_conf::{build_parameters, omit_drivers_arguments, omits};
use super::modprobe_conf::effective_blocks;
use super::resume::{effective_resume, is_stable_resume, last_resume_word};
use crate::initramfs_image::ImageFiles;

/// The files of an image whose contents the checks read.
pub fn wanted(path: &str) -> bool {
    path.ends_with("/modules.dep")
        || path.ends_with("/modules.builtin")
        || (path.contains("modprobe.d/") && path.ends_with(".conf"))
        || path.starts_with("conf/")
        || path.starts_with("etc/cmdline.d/")
        || path.ends_with("lib/dracut/build-parameter.txt")
}

/// `kernel/drivers/block/virtio_blk.ko.xz` → `virtio_blk` (dashes as underscores, as modprobe).
pub fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (file.len() > stem.len() && !stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// A kernel's `modules.dep`: module name → (its path, the paths of what it needs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleDeps {
    by_name: BTreeMap<String, (String, Vec<String>)>,
}

impl ModuleDeps {
    pub fn parse(text: &str) -> ModuleDeps {
        let mut by_name = BTreeMap::new();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if let Some(name) = module_name(path) {
                let deps = deps.split_whitespace().map(str::to_string).collect();
                by_name.insert(name, (path.to_string(), deps));
            }
        }
        ModuleDeps { by_name }
    }

    /// Every module listed: (name, path), by name.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_name
            .iter()
            .map(|(n, (p, _))| (n.as_str(), p.as_str()))
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|(p, _)| p.as_str())
    }

    /// The paths `name` needs (all of them, not only the direct ones).
    pub fn dependencies(&self, name: &str) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = self
            .by_name
            .get(name)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        while let Some(path) = todo.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            if let Some(dep) = module_name(&path) {
                if let Some((_, more)) = self.by_name.get(&dep) {
                    todo.extend(more.iter().cloned());
                }
            }
            out.push(path);
        }
        out.sort();
        out
    }

    /// `names` and every module they need, by name.
    pub fn with_dependencies(&self, names: &[&str]) -> Vec<String> {
        let mut all: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        for n in names {
            all.extend(self.dependencies(n).iter().filter_map(|p| module_name(p)));
        }
        all.into_iter().collect()
    }
}

/// What a verified image holds, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `virtio_blk (+virtio, virtio_ring)`, `virtio_pci (built in)`.
    pub modules: Vec<String>,
    /// The resume device the image waits for, and the file that says so.
    pub resume: Option<(String, String)>,
}

/// Which generator made the image (what it records differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    Dracut,
    InitramfsTools,
}

/// Check `image` boots a virtio disk with kernel `kver` (`builtin` is that kernel's
/// `modules.builtin`). Err holds every reason it would not.
pub fn verify_image(
    image: &ImageFiles,
    kver: &str,
    builtin: &str,
    required: &[&str],
    generator: Generator,
) -> Result<Verified, Vec<String>> {
    let paths: BTreeSet<&str> = image.paths.iter().map(String::as_str).collect();
    let text = |p: &str| {
        image
            .files
            .get(p)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let mut reasons = Vec::new();
    let builtin: BTreeSet<String> = builtin.lines().filter_map(module_name).collect();

    let dirs = [
        format!("usr/lib/modules/{kver}/"),
        format!("lib/modules/{kver}/"),
    ];
    let dep_file = dirs
        .iter()
        .find(|d| image.files.contains_key(&format!("{d}modules.dep")));
    let deps = dep_file
        .and_then(|d| text(&format!("{d}modules.dep")))
        .map(|t| ModuleDeps::parse(&t))
        .unwrap_or_default();
    let mut modules = Vec::new();
    let mut needed: Vec<String> = Vec::new();
    for m in required {
        needed.push(m.to_string());
        if builtin.contains(*m) {
            modules.push(format!("{m} (built in)"));
            continue;
        }
        if dep_file.is_none() {
            reasons.push(format!(
                "{m}: the image has no modules.dep for kernel {kver}{}",
                other_kernels(&image.paths, m, kver)
            ));
            continue;
        }
        let Some(path) = deps.path_of(m) else {
            reasons.push(format!(
                "{m}: not in the image's modules.dep for {kver}{}",
                other_kernels(&image.paths, m, kver)
            ));
            continue;
        };
        // Merged-/usr images hold the files under usr/lib, others under lib; either counts.
        let in_image = |p: &str| {
            let rel = p.trim_start_matches('/');
            paths.contains(rel)
                || dirs
                    .iter()
                    .any(|d| paths.contains(format!("{d}{rel}").as_str()))
        };
        if !in_image(path) {
            reasons.push(format!(
                "{m}: modules.dep lists {path} but the image has no such file"
            ));
            continue;
        }
        let all = deps.dependencies(m);
        let missing: Vec<&String> = all.iter().filter(|p| !in_image(p)).collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().filter_map(|p| module_name(p)).collect();
            reasons.push(format!(
                "{m}: needs {} which the image lacks",
                names.join(", ")
            ));
            continue;
        }
        let dep_names: Vec<String> = all.iter().filter_map(|p| module_name(p)).collect();
        needed.extend(dep_names.iter().cloned());
        modules.push(if dep_names.is_empty() {
            m.to_string()
        } else {
            format!("{m} (+{})", dep_names.join(", "))
        });
    }
    let needed_refs: Vec<&str> = needed.iter().map(String::as_str).collect();

    let modprobe: Vec<(&str, String)> = image
        .files
        .keys()
        .filter(|p| p.contains("modprobe.d/"))
        .filter_map(|p| text(p).map(|t| (p.as_str(), t)))
        .collect();
    let modprobe_refs: Vec<(&str, &str)> = modprobe.iter().map(|(p, t)| (*p, t.as_str())).collect();
    for (path, block) in effective_blocks(&modprobe_refs, &needed_refs) {
        reasons.push(format!(
            "{}: blocked by `{}` in the image's {path}",
            block.module, block.rule
        ));
    }

    let resume = match generator {
        Generator::Dracut => {
            for p in [
                "usr/lib/dracut/build-parameter.txt",
                "lib/dracut/build-parameter.txt",
            ] {
                let Some(t) = text(p) else { continue };
                for entry in omit_drivers_arguments(&build_parameters(&t)) {
                    for word in entry.split_whitespace() {
                        for m in needed_refs.iter().filter(|m| omits(word, m)) {
                            reasons.push(format!(
                                "{m}: omitted by --omit-drivers {word} recorded in {p}"
                            ));
                        }
                    }
                }
            }
            let mut resume = None;
            for (p, t) in image
                .files
                .iter()
                .filter(|(p, _)| p.starts_with("etc/cmdline.d/"))
            {
                let t = String::from_utf8_lossy(t);
                for word in t.split_whitespace() {
                    if let Some((key, list)) = word.split_once('=') {
                        if matches!(
                            key,
                            "rd.driver.blacklist" | "module_blacklist" | "modprobe.blacklist"
                        ) {
                            for m in list.split(',').map(|m| m.replace('-', "_")) {
                                if needed.contains(&m) {
                                    reasons.push(format!(
                                        "{m}: blacklisted by {word} in the image's {p}"
                                    ));
                                }
                            }
                        }
                    }
                }
                if let Some(r) = last_resume_word(&t) {
                    resume = Some((r, p.clone()));
                }
            }
            resume
        }
        Generator::InitramfsTools => {
            let mut conf: Vec<(&str, String)> = Vec::new();
            if let Some(t) = text("conf/initramfs.conf") {
                conf.push(("conf/initramfs.conf", t));
            }
            for (p, t) in image
                .files
                .iter()
                .filter(|(p, _)| p.starts_with("conf/conf.d/"))
            {
                conf.push((p.as_str(), String::from_utf8_lossy(t).into_owned()));
            }
            let refs: Vec<(&str, &str)> = conf.iter().map(|(p, t)| (*p, t.as_str())).collect();
            effective_resume(&refs).map(|(v, p)| (v, p.to_string()))
        }
    };
    if let Some((value, path)) = &resume {
        if !is_stable_resume(value) {
            reasons.push(format!(
                "the image waits for resume device {value} ({path}), which will not exist on KVM"
            ));
        }
    }
    if reasons.is_empty() {
        Ok(Verified { modules, resume })
    } else {
        Err(reasons)
    }
}

/// ` (the image has it only for 6.1.0-9-amd64)` when `module` is there for other kernels.
fn other_kernels(paths: &[String], module: &str, kver: &str) -> String {
    let others: BTreeSet<&str> = paths
        .iter()
        .filter(|p| module_name(p).as_deref() == Some(module))
        .filter_map(|p| {
            let rest = p
                .strip_prefix("usr/")
                .unwrap_or(p)
                .strip_prefix("lib/modules/")?;
            rest.split('/').next()
        })
        .filter(|v| *v != kver)
        .collect();
    if others.is_empty() {
        String::new()
    } else {
        format!(
            " (the image has it only for {})",
            others.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "6.1.0-18-amd64";
    const REQ: &[&str] = &["virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net"];
    const DEP: &str = "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/scsi/virtio_scsi.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/net/core/failover.ko.xz kernel/drivers/net/net_failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
";

    /// An image with modules.dep for `K` and every module file it lists, except `skip`.
    fn image(dir: &str, skip: &[&str], extra: &[(&str, &str)]) -> ImageFiles {
        let mut img = ImageFiles::default();
        let base = format!("{dir}/modules/{K}/");
        for line in DEP.lines() {
            let path = line.split(':').next().unwrap();
            if !skip.iter().any(|s| module_name(path).as_deref() == Some(s)) {
                img.paths.push(format!("{base}{path}"));
            }
        }
        img.paths.push(format!("{base}modules.dep"));
        img.files
            .insert(format!("{base}modules.dep"), DEP.as_bytes().to_vec());
        for (p, t) in extra {
            img.paths.push(p.to_string());
            img.files.insert(p.to_string(), t.as_bytes().to_vec());
        }
        img
    }

    fn check(img: &ImageFiles, generator: Generator) -> Result<Verified, Vec<String>> {
        verify_image(img, K, "", REQ, generator)
    }

    #[test]
    fn module_names_of_paths() {
        assert_eq!(
            module_name("a/virtio_blk.ko.xz").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(module_name("virtio-pci.ko").as_deref(), Some("virtio_pci"));
        assert_eq!(module_name("a/modules.dep"), None);
        assert_eq!(module_name(".ko"), None);
    }

    #[test]
    fn dependencies_are_followed_transitively() {
        let deps = ModuleDeps::parse(DEP);
        let net: Vec<String> = deps
            .dependencies("virtio_net")
            .iter()
            .filter_map(|p| module_name(p))
            .collect();
        assert_eq!(
            net,
            vec!["net_failover", "virtio", "virtio_ring", "failover"]
        );
        let all = deps.with_dependencies(&["virtio_pci"]);
        assert_eq!(
            all,
            vec![
                "virtio",
                "virtio_pci",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_ring"
            ]
        );
        assert!(ModuleDeps::parse("garbage\n:\n x: y")
            .path_of("x")
            .is_none());
    }

    #[test]
    fn complete_image_passes_for_both_layouts() {
        for dir in ["usr/lib", "lib"] {
            let v = check(&image(dir, &[], &[]), Generator::Dracut).unwrap();
            assert_eq!(v.modules.len(), 4);
            assert!(
                v.modules[0].starts_with("virtio_blk (+virtio, virtio_ring)"),
                "{:?}",
                v.modules
            );
            assert_eq!(v.resume, None);
        }
    }

    #[test]
    fn a_missing_dependency_fails_with_its_name() {
        let err = check(
            &image("usr/lib", &["virtio_pci_modern_dev"], &[]),
            Generator::Dracut,
        )
        .unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].contains("virtio_pci: needs virtio_pci_modern_dev"),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_module_file_fails() {
        let err = check(&image("usr/lib", &["virtio_blk"], &[]), Generator::Dracut).unwrap_err();
        assert!(err[0].contains("virtio_blk: modules.dep lists"), "{err:?}");
    }

    #[test]
    fn modules_of_another_kernel_do_not_count() {
        let mut img = ImageFiles::default();
        img.paths
            .push("usr/lib/modules/6.1.0-9-amd64/kernel/drivers/block/virtio_blk.ko".into());
        let err = check(&img, Generator::Dracut).unwrap_err();
        assert_eq!(err.len(), 4);
        assert!(
            err[0].contains("no modules.dep for kernel 6.1.0-18-amd64"),
            "{err:?}"
        );
        assert!(err[0].contains("only for 6.1.0-9-amd64"), "{err:?}");
    }

    #[test]
    fn built_in_modules_need_no_file() {
        let img = ImageFiles::default();
        let builtin = "kernel/drivers/block/virtio_blk.ko\nkernel/drivers/scsi/virtio_scsi.ko\nkernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/net/virtio_net.ko\n";
        let v = verify_image(&img, K, builtin, REQ, Generator::InitramfsTools).unwrap();
        assert_eq!(v.modules[0], "virtio_blk (built in)");
    }

    #[test]
    fn a_blacklist_in_the_image_fails_unless_overridden() {
        let bl = [("usr/lib/modprobe.d/vmware.conf", "blacklist virtio_ring\n")];
        let err = check(&image("usr/lib", &[], &bl), Generator::InitramfsTools).unwrap_err();
        assert!(
            err.iter()
                .all(|e| e.contains("virtio_ring: blocked by `blacklist virtio_ring`")),
            "{err:?}"
        );
        let lifted = [
            bl[0],
            (
                "etc/modprobe.d/vmware.conf",
                "# h2k-guest: blacklist virtio_ring\n",
            ),
        ];
        assert!(check(&image("usr/lib", &[], &lifted), Generator::InitramfsTools).is_ok());
    }

    #[test]
    fn dracut_recorded_omissions_and_blacklists_fail() {
        let omit = [(
            "usr/lib/dracut/build-parameter.txt",
            " --force --omit-drivers 'virtio_blk floppy' --kver '6.1'",
        )];
        let err = check(&image("usr/lib", &[], &omit), Generator::Dracut).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].contains("omitted by --omit-drivers virtio_blk"),
            "{err:?}"
        );
        let bl = [(
            "etc/cmdline.d/10-x.conf",
            "rd.driver.blacklist=floppy,virtio-pci quiet",
        )];
        let err = check(&image("usr/lib", &[], &bl), Generator::Dracut).unwrap_err();
        assert!(
            err[0].contains("virtio_pci: blacklisted by rd.driver.blacklist"),
            "{err:?}"
        );
    }

    #[test]
    fn resume_device_in_the_image_is_reported_and_checked() {
        let ok = [
            ("conf/conf.d/resume", "RESUME=UUID=abc\n"),
            ("conf/initramfs.conf", "RESUME=/dev/sda2\n"),
        ];
        let v = check(&image("usr/lib", &[], &ok), Generator::InitramfsTools).unwrap();
        assert_eq!(
            v.resume,
            Some(("UUID=abc".into(), "conf/conf.d/resume".into()))
        );
        let bad = [("conf/conf.d/resume", "RESUME=/dev/sda2\n")];
        let err = check(&image("usr/lib", &[], &bad), Generator::InitramfsTools).unwrap_err();
        assert!(err[0].contains("resume device /dev/sda2"), "{err:?}");
        let dracut = [("etc/cmdline.d/90-resume.conf", " resume=/dev/sdb2 ")];
        let err = check(&image("usr/lib", &[], &dracut), Generator::Dracut).unwrap_err();
        assert!(err[0].contains("resume device /dev/sdb2"), "{err:?}");
    }

    /// `H2K_REAL_INITRAMFS=/boot/initrd.img-V H2K_REAL_KVER=V cargo test -- --ignored real_image`
    #[test]
    #[ignore = "reads a real image named by H2K_REAL_INITRAMFS"]
    fn real_image() {
        let path = std::env::var("H2K_REAL_INITRAMFS").unwrap();
        let kver = std::env::var("H2K_REAL_KVER").unwrap();
        let started = std::time::Instant::now();
        let img = crate::initramfs_image::read_image_from_file(path.as_ref(), wanted).unwrap();
        let builtin = std::fs::read_to_string(format!("/lib/modules/{kver}/modules.builtin"))
            .unwrap_or_default();
        let kept: usize = img.files.values().map(Vec::len).sum();
        println!(
            "{} paths, {} files kept ({kept} bytes), read in {:.2} s",
            img.paths.len(),
            img.files.len(),
            started.elapsed().as_secs_f64()
        );
        println!("kept: {:?}", img.files.keys().collect::<Vec<_>>());
        println!(
            "{:#?}",
            verify_image(&img, &kver, &builtin, REQ, Generator::InitramfsTools)
        );
    }

    #[test]
    fn wanted_picks_the_configuration_files() {
        for p in [
            "usr/lib/modules/6.1/modules.dep",
            "lib/modules/6.1/modules.builtin",
            "etc/modprobe.d/x.conf",
            "usr/lib/modprobe.d/x.conf",
            "conf/conf.d/resume",
            "conf/initramfs.conf",
            "etc/cmdline.d/01-default.conf",
            "usr/lib/dracut/build-parameter.txt",
        ] {
            assert!(wanted(p), "{p}");
        }
        for p in [
            "usr/bin/sh",
            "usr/lib/modules/6.1/kernel/a.ko",
            "etc/modprobe.d/README",
        ] {
            assert!(!wanted(p), "{p}");
        }
    }
}
