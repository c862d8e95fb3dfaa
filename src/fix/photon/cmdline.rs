//! Photon's kernel command line (pure): what goes into `photon_cmdline` / `user_cmdline`.
//!
//! The installer's grub.cfg boots `linux … root=$rootpartition $photon_cmdline
//! $systemd_cmdline … $user_cmdline`, and the kernel takes the last `root=`. grub.cfg itself is
//! never rewritten; a `root=`/`resume=` naming a VMware-era device in the env blocks becomes
//! `UUID=` ([`crate::fix::grub::rewrite_cmdline`]), and an unstable `set rootpartition=` in
//! grub.cfg is overridden by a `root=UUID=…` appended to `photon_cmdline`.

use crate::devices::is_unstable_device;
use crate::fix::grub::{rewrite_cmdline, unstable_root, Resolve};
use crate::grub_env::{EnvBlock, EnvBlockError, Layout};

/// The new command line, what changed (`(old, new)`, new "" when removed) and what was left.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdlineFix {
    pub text: String,
    pub changes: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

fn has_root(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w.trim_matches(['"', '\'']).starts_with("root="))
}

/// `variable`'s value made stable; `root_partition` is grub.cfg's `set rootpartition=`, given
/// for `photon_cmdline` (which follows it on the kernel line) and None for the others.
pub fn fix_cmdline(
    variable: &str,
    cmdline: &str,
    root_partition: Option<&str>,
    resolve: &dyn Resolve,
) -> CmdlineFix {
    let (mut text, mut changes) = rewrite_cmdline(cmdline, resolve);
    let mut warnings = Vec::new();
    for (old, new) in &changes {
        if new.is_empty() {
            warnings.push(format!(
                "{variable}: {old} names no swap area that exists on KVM; removed (no resume from hibernation)"
            ));
        }
    }
    if let Some(dev) = unstable_root(&text) {
        warnings.push(format!(
            "{variable}: no UUID known for root={dev}; left unchanged, the device may not exist on KVM"
        ));
    }
    if let Some(rp) = root_partition.filter(|rp| is_unstable_device(rp)) {
        if !has_root(&text) {
            match resolve.uuid(rp) {
                Some(uuid) => {
                    let new = format!("root=UUID={uuid}");
                    if !text.is_empty() && !text.ends_with([' ', '\t']) {
                        text.push(' ');
                    }
                    text.push_str(&new);
                    changes.push((format!("rootpartition={rp} (grub.cfg)"), new));
                }
                None => warnings.push(format!(
                    "grub.cfg: set rootpartition={rp} and no UUID known for it; the root device may not exist on KVM"
                )),
            }
        }
    }
    CmdlineFix {
        text,
        changes,
        warnings,
    }
}

/// An environment block with its command-line variables made stable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEdit {
    /// The block as it is to be written (the input itself when nothing changed).
    pub bytes: Vec<u8>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// [`fix_cmdline`] on each of `variables` (name, grub.cfg's rootpartition for it) present in
/// the block `old`; other variables and lines are kept byte for byte. Err when `old` is not a
/// block, or the result does not fit it.
pub fn fix_env_block(
    old: &[u8],
    variables: &[(&str, Option<&str>)],
    resolve: &dyn Resolve,
) -> Result<EnvEdit, EnvBlockError> {
    let mut block = EnvBlock::parse(old)?;
    let mut edit = EnvEdit {
        bytes: Vec::new(),
        notes: Vec::new(),
        warnings: Vec::new(),
    };
    for (var, root_partition) in variables {
        // An absent photon_cmdline still carries the override of an unstable rootpartition.
        let value = match (block.get(var), root_partition) {
            (Some(v), _) => v.to_string(),
            (None, Some(_)) => String::new(),
            (None, None) => continue,
        };
        let fix = fix_cmdline(var, &value, *root_partition, resolve);
        edit.warnings.extend(fix.warnings);
        if fix.changes.is_empty() {
            continue;
        }
        block.set(var, &fix.text)?;
        for (o, n) in &fix.changes {
            let n = if n.is_empty() { "(removed)" } else { n };
            edit.notes.push(format!("{var}: {o} → {n}"));
        }
    }
    if edit.notes.is_empty() {
        edit.bytes = old.to_vec();
        return Ok(edit);
    }
    edit.bytes = block.serialize()?;
    edit.notes.push(match block.layout() {
        Layout::Padded(size) => format!("environment block kept at {size} bytes"),
        Layout::Unpadded => format!(
            "unpadded as the kernel package wrote it, now {} bytes",
            edit.bytes.len()
        ),
    });
    Ok(edit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0b9e4e0c-5a8c-4a5e-8f0e-3c8d1b2a7f11";
    const SWAP: &str = "5c1d7e2f-1111-4222-8333-944455566677";

    struct Disks;
    impl Resolve for Disks {
        fn uuid(&self, device: &str) -> Option<String> {
            (device == "/dev/sda3").then(|| UUID.to_string())
        }
        fn swap_uuid(&self, device: &str) -> Option<String> {
            (device == "/dev/sda2").then(|| SWAP.to_string())
        }
    }

    const PHOTON: &str = "init=/lib/systemd/systemd ro loglevel=3 quiet no-vmw-sta";

    #[test]
    fn the_installer_cmdline_needs_nothing() {
        let f = fix_cmdline(
            "photon_cmdline",
            PHOTON,
            Some("PARTUUID=8a1c6d2e-0d4f-4b7e-9c51-2f1e4b9b7a10"),
            &Disks,
        );
        assert_eq!(f.text, PHOTON);
        assert!(f.changes.is_empty() && f.warnings.is_empty());
        let none = fix_cmdline("photon_cmdline", PHOTON, None, &Disks);
        assert_eq!(none.text, PHOTON);
    }

    #[test]
    fn device_names_become_uuids_and_partuuid_stays() {
        let f = fix_cmdline(
            "photon_cmdline",
            &format!("{PHOTON} root=/dev/sda3 resume=/dev/sda2"),
            Some("PARTUUID=x"),
            &Disks,
        );
        assert_eq!(
            f.text,
            format!("{PHOTON} root=UUID={UUID} resume=UUID={SWAP}")
        );
        assert_eq!(f.changes.len(), 2);
        let kept = fix_cmdline("photon_cmdline", "root=PARTUUID=abc ro", None, &Disks);
        assert_eq!(kept.text, "root=PARTUUID=abc ro");
        assert!(kept.changes.is_empty());
    }

    #[test]
    fn an_unstable_rootpartition_is_overridden_from_the_env_block() {
        let f = fix_cmdline("photon_cmdline", PHOTON, Some("/dev/sda3"), &Disks);
        assert_eq!(f.text, format!("{PHOTON} root=UUID={UUID}"));
        assert_eq!(
            f.changes,
            vec![(
                "rootpartition=/dev/sda3 (grub.cfg)".to_string(),
                format!("root=UUID={UUID}")
            )]
        );
        let again = fix_cmdline("photon_cmdline", &f.text, Some("/dev/sda3"), &Disks);
        assert_eq!(again.text, f.text, "idempotent");
        assert!(again.changes.is_empty());
        let empty = fix_cmdline("photon_cmdline", "", Some("/dev/sda3"), &Disks);
        assert_eq!(empty.text, format!("root=UUID={UUID}"));
    }

    #[test]
    fn a_root_on_the_cmdline_already_wins_over_rootpartition() {
        let f = fix_cmdline(
            "photon_cmdline",
            "ro root=LABEL=photon",
            Some("/dev/sda3"),
            &Disks,
        );
        assert_eq!(f.text, "ro root=LABEL=photon");
        assert!(f.changes.is_empty());
    }

    #[test]
    fn what_cannot_be_resolved_is_left_with_a_warning() {
        let f = fix_cmdline(
            "photon_cmdline",
            "root=/dev/sdq1",
            Some("/dev/sdq1"),
            &Disks,
        );
        assert_eq!(f.text, "root=/dev/sdq1");
        assert!(f.changes.is_empty());
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0].contains("root=/dev/sdq1"));
        let rp = fix_cmdline("photon_cmdline", "ro", Some("/dev/sdq1"), &Disks);
        assert_eq!(rp.text, "ro");
        assert!(rp.warnings[0].starts_with("grub.cfg: set rootpartition=/dev/sdq1"));
    }

    fn padded(body: &str) -> Vec<u8> {
        let mut b = format!("# GRUB Environment Block\n{body}").into_bytes();
        b.resize(1024, b'#');
        b
    }

    #[test]
    fn env_block_edit_changes_only_the_cmdline_and_keeps_1024_bytes() {
        let old = padded(&format!(
            "photon_cmdline={PHOTON} root=/dev/sda3\nphoton_linux=vmlinuz-6.1.0-18-amd64\nphoton_initrd=initrd.img-6.1.0-18-amd64\n"
        ));
        let e = fix_env_block(&old, &[("photon_cmdline", Some("PARTUUID=x"))], &Disks).unwrap();
        assert_eq!(e.bytes.len(), 1024);
        assert_eq!(
            e.bytes,
            padded(&format!(
                "photon_cmdline={PHOTON} root=UUID={UUID}\nphoton_linux=vmlinuz-6.1.0-18-amd64\nphoton_initrd=initrd.img-6.1.0-18-amd64\n"
            ))
        );
        assert_eq!(
            e.notes,
            vec![
                format!("photon_cmdline: root=/dev/sda3 → root=UUID={UUID}"),
                "environment block kept at 1024 bytes".to_string()
            ]
        );
        let again =
            fix_env_block(&e.bytes, &[("photon_cmdline", Some("PARTUUID=x"))], &Disks).unwrap();
        assert_eq!(again.bytes, e.bytes);
        assert!(again.notes.is_empty());
    }

    #[test]
    fn env_block_without_the_variable_or_need_is_returned_as_is() {
        let old = padded(&format!("photon_cmdline={PHOTON}\n"));
        let e = fix_env_block(&old, &[("photon_cmdline", Some("PARTUUID=x"))], &Disks).unwrap();
        assert_eq!(e.bytes, old);
        let e = fix_env_block(&old, &[("user_cmdline", None)], &Disks).unwrap();
        assert_eq!(e.bytes, old);
        assert!(e.notes.is_empty() && e.warnings.is_empty());
    }

    #[test]
    fn an_absent_photon_cmdline_is_added_only_for_an_unstable_rootpartition() {
        let old = padded("photon_linux=vmlinuz-6.1\n");
        let stable = fix_env_block(&old, &[("photon_cmdline", Some("PARTUUID=x"))], &Disks);
        assert_eq!(stable.unwrap().bytes, old);
        let e = fix_env_block(&old, &[("photon_cmdline", Some("/dev/sda3"))], &Disks).unwrap();
        assert_eq!(
            e.bytes,
            padded(&format!(
                "photon_linux=vmlinuz-6.1\nphoton_cmdline=root=UUID={UUID}\n"
            ))
        );
    }

    #[test]
    fn env_block_unpadded_grows_and_the_full_one_is_refused() {
        let old = format!("# GRUB Environment Block\nphoton_cmdline={PHOTON}\n");
        let e = fix_env_block(
            old.as_bytes(),
            &[("photon_cmdline", Some("/dev/sda3"))],
            &Disks,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(e.bytes.clone()).unwrap(),
            format!("# GRUB Environment Block\nphoton_cmdline={PHOTON} root=UUID={UUID}\n")
        );
        assert!(e.notes.last().unwrap().starts_with("unpadded"));
        let full = padded(&format!(
            "photon_cmdline=root=/dev/sda3 {}\n",
            "x".repeat(960)
        ));
        assert!(matches!(
            fix_env_block(&full, &[("photon_cmdline", None)], &Disks),
            Err(EnvBlockError::TooSmall { .. })
        ));
        assert!(matches!(
            fix_env_block(b"photon_cmdline=x\n", &[("photon_cmdline", None)], &Disks),
            Err(EnvBlockError::NoHeader)
        ));
    }

    #[test]
    fn a_resume_without_swap_is_removed_with_a_warning() {
        let f = fix_cmdline("user_cmdline", "resume=/dev/sdb1 quiet", None, &Disks);
        assert_eq!(f.text, "quiet");
        assert_eq!(
            f.changes,
            vec![("resume=/dev/sdb1".to_string(), String::new())]
        );
        assert!(f.warnings[0].starts_with("user_cmdline: resume=/dev/sdb1"));
    }
}
