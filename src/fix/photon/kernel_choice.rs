//! Which installed kernel a Photon guest boots on KVM (pure).
//!
//! linux-esx is built for VMware's virtual hardware and may have no virtio drivers at all
//! (vmware/photon #992); no initramfs rebuild can add drivers its `/lib/modules` lacks. Such a
//! kernel is replaced, in `/boot/photon.cfg`, by another installed flavour that has them, or
//! the fix is refused naming the kernel and the remedy.

use std::collections::BTreeSet;

use crate::fix::initramfs_verify::module_name;
use crate::inspect::compare_kernel_versions;

/// One installed kernel, as the choice needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: String,
    /// `linux`, `linux-esx`, …
    pub flavour: String,
    /// Its `/boot/linux-….cfg`.
    pub cfg: String,
    /// Drivers of the required set it has neither as module nor built in.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The kernel photon.cfg boots has the drivers.
    Keep,
    /// Boot this one instead (index into the candidates).
    Switch(usize),
    /// Nothing installed boots on virtio: the one-line reason.
    Refuse(String),
}

/// The drivers of `required` a kernel lacks, by its `modules.dep` and `modules.builtin`
/// (both "" when its `/lib/modules/<ver>` is absent: then it lacks all of them).
pub fn missing_drivers(modules_dep: &str, modules_builtin: &str, required: &[&str]) -> Vec<String> {
    let mut have: BTreeSet<String> = modules_builtin.lines().filter_map(module_name).collect();
    have.extend(
        modules_dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(path, _)| module_name(path.trim())),
    );
    required
        .iter()
        .map(|r| r.replace('-', "_"))
        .filter(|r| !have.contains(r))
        .collect()
}

/// Keep `current` when it has every driver, else switch to the newest other kernel that has
/// them (a `linux` flavour first), else refuse.
pub fn choose(current: &str, candidates: &[Candidate]) -> Choice {
    let Some(now) = candidates.iter().find(|c| c.version == current) else {
        return Choice::Refuse(format!(
            "/boot/photon.cfg boots kernel {current}, which is not installed (no /boot/vmlinuz-{current})"
        ));
    };
    if now.missing.is_empty() {
        return Choice::Keep;
    }
    let best = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.version != current && c.missing.is_empty())
        .max_by(|(_, a), (_, b)| {
            (a.flavour == "linux")
                .cmp(&(b.flavour == "linux"))
                .then_with(|| compare_kernel_versions(&a.version, &b.version))
        });
    match best {
        Some((i, _)) => Choice::Switch(i),
        None => Choice::Refuse(format!(
            "kernel {} ({}) has no {} in /lib/modules/{} and no other installed kernel has them: install the `linux` flavour in the guest (tdnf install linux) and fix again",
            now.version,
            now.flavour,
            now.missing.join(", "),
            now.version
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: &[&str] = &["virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net"];

    fn cand(version: &str, flavour: &str, missing: &[&str]) -> Candidate {
        Candidate {
            version: version.into(),
            flavour: flavour.into(),
            cfg: format!("/boot/{flavour}-{version}.cfg"),
            missing: missing.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn drivers_found_as_modules_or_built_in() {
        let dep = "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz\nkernel/drivers/net/virtio_net.ko:\nkernel/drivers/scsi/virtio_scsi.ko.zst:\n";
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\n";
        assert!(missing_drivers(dep, builtin, REQUIRED).is_empty());
        assert_eq!(
            missing_drivers(dep, "", REQUIRED),
            vec!["virtio_pci".to_string()]
        );
        assert_eq!(missing_drivers("", "", REQUIRED).len(), 4);
        assert_eq!(
            missing_drivers("kernel/a/virtio-blk.ko:\n", "", &["virtio_blk"]),
            Vec::<String>::new(),
            "dashes count as underscores"
        );
        assert_eq!(
            missing_drivers("garbage line\n\n:\n", "not a module\n", &["virtio_blk"]),
            vec!["virtio_blk".to_string()]
        );
    }

    #[test]
    fn a_kernel_with_the_drivers_is_kept() {
        let c = vec![cand("6.1.10-11.ph5", "linux", &[])];
        assert_eq!(choose("6.1.10-11.ph5", &c), Choice::Keep);
    }

    #[test]
    fn esx_without_virtio_switches_to_the_linux_flavour() {
        let c = vec![
            cand(
                "6.1.10-11.ph5-esx",
                "linux-esx",
                &["virtio_blk", "virtio_pci"],
            ),
            cand("6.1.10-11.ph5", "linux", &[]),
        ];
        assert_eq!(choose("6.1.10-11.ph5-esx", &c), Choice::Switch(1));
    }

    #[test]
    fn the_linux_flavour_wins_then_the_newest() {
        let c = vec![
            cand("6.1.10-11.ph5-esx", "linux-esx", &["virtio_blk"]),
            cand("6.1.90-1.ph5-rt", "linux-rt", &[]),
            cand("6.1.10-11.ph5", "linux", &[]),
            cand("6.1.75-2.ph5", "linux", &[]),
            cand("6.1.99-1.ph5", "linux", &["virtio_net"]),
        ];
        assert_eq!(choose("6.1.10-11.ph5-esx", &c), Choice::Switch(3));
        let only_rt = vec![c[0].clone(), c[1].clone()];
        assert_eq!(choose("6.1.10-11.ph5-esx", &only_rt), Choice::Switch(1));
    }

    #[test]
    fn nothing_with_virtio_is_refused_naming_kernel_and_remedy() {
        let c = vec![
            cand(
                "6.1.10-11.ph5-esx",
                "linux-esx",
                &["virtio_blk", "virtio_pci"],
            ),
            cand("6.1.8-1.ph5-esx", "linux-esx", &["virtio_blk"]),
        ];
        let Choice::Refuse(msg) = choose("6.1.10-11.ph5-esx", &c) else {
            panic!("expected a refusal");
        };
        assert_eq!(
            msg,
            "kernel 6.1.10-11.ph5-esx (linux-esx) has no virtio_blk, virtio_pci in /lib/modules/6.1.10-11.ph5-esx and no other installed kernel has them: install the `linux` flavour in the guest (tdnf install linux) and fix again"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn an_unknown_current_kernel_is_refused() {
        assert!(matches!(
            choose("6.1.10-11.ph5", &[]),
            Choice::Refuse(m) if m.contains("6.1.10-11.ph5")
        ));
    }
}
