//! Make a UEFI guest bootable without firmware variables.
//!
//! On VMware, a UEFI guest usually boots through an NVRAM entry pointing at
//! `\EFI\<distro>\shimx64.efi` (or `grubx64.efi`). Those variables stay behind: on KVM the
//! firmware starts with empty variables and only tries the removable-media path
//! `\EFI\BOOT\BOOTX64.EFI`. When that file is missing, the loader directory is copied there
//! (shim first, since it loads `grubx64.efi` from its own directory; GRUB's `grub.cfg` stub
//! is copied along so GRUB finds its config from the new place).

use std::time::Instant;

use super::{record, skipped, FixError, Guest};
use super::{FileChange, FixRecord};

const STEP: &str = "uefi-fallback";
const ESP_EFI: &str = "/boot/efi/EFI";
const FALLBACK: &str = "BOOTX64.EFI";

/// One file to copy: from `EFI/<vendor>/<name>` to `EFI/BOOT/<target>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: String,
    pub to: String,
}

/// Given the vendor directories on the ESP and their files (names as found, any case), what
/// to copy into `EFI/BOOT`. Empty when `EFI/BOOT/BOOTX64.EFI` already exists or nothing
/// bootable is found. Prefers a vendor with shim (Secure Boot chain), then one with GRUB.
pub fn plan_copies(dirs: &[(String, Vec<String>)]) -> Vec<Copy> {
    let has =
        |files: &[String], name: &str| files.iter().find(|f| f.eq_ignore_ascii_case(name)).cloned();
    if dirs
        .iter()
        .any(|(d, files)| d.eq_ignore_ascii_case("BOOT") && has(files, FALLBACK).is_some())
    {
        return Vec::new();
    }
    let vendors: Vec<&(String, Vec<String>)> = dirs
        .iter()
        .filter(|(d, _)| !d.eq_ignore_ascii_case("BOOT"))
        .collect();
    let pick = vendors
        .iter()
        .find_map(|(d, f)| has(f, "shimx64.efi").map(|e| (d, f, e)))
        .or_else(|| {
            vendors
                .iter()
                .find_map(|(d, f)| has(f, "grubx64.efi").map(|e| (d, f, e)))
        });
    let Some((dir, files, entry)) = pick else {
        return Vec::new();
    };
    let mut copies = vec![Copy {
        from: format!("{dir}/{entry}"),
        to: FALLBACK.into(),
    }];
    for f in files.iter() {
        let lower = f.to_ascii_lowercase();
        // The entry itself is BOOTX64.EFI now; fallback.efi would try to recreate NVRAM entries.
        if *f == entry || lower == "fbx64.efi" || lower.starts_with("boot") {
            continue;
        }
        copies.push(Copy {
            from: format!("{dir}/{f}"),
            to: f.clone(),
        });
    }
    copies
}

pub fn run(guest: &Guest) -> Result<FixRecord, FixError> {
    let started = Instant::now();
    if guest.os.firmware.kind != crate::plan::Firmware::Uefi {
        return Ok(skipped(STEP, "BIOS guest"));
    }
    let g = guest.g;
    if !g.is_dir(ESP_EFI).unwrap_or(false) {
        return Ok(skipped(STEP, "no EFI directory on a mounted ESP"));
    }
    let mut dirs = Vec::new();
    for d in g.ls(ESP_EFI).map_err(Guest::err(STEP))? {
        let path = format!("{ESP_EFI}/{d}");
        if g.is_dir(&path).unwrap_or(false) {
            let files = g
                .ls(&path)
                .map_err(Guest::err(STEP))?
                .into_iter()
                .filter(|f| g.is_file(&format!("{path}/{f}")).unwrap_or(false))
                .collect();
            dirs.push((d, files));
        }
    }
    let copies = plan_copies(&dirs);
    if copies.is_empty() {
        return Ok(skipped(
            STEP,
            "EFI/BOOT/BOOTX64.EFI present (or no loader found)",
        ));
    }
    let boot_dir = dirs
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case("BOOT"))
        .map(|(d, _)| d.clone())
        .unwrap_or_else(|| "BOOT".into());
    let boot_path = format!("{ESP_EFI}/{boot_dir}");
    if !g.is_dir(&boot_path).unwrap_or(false) {
        // An argv, not a shell line: the directory name comes from the guest's ESP.
        g.command(&["mkdir", "-p", boot_path.as_str()])
            .map_err(Guest::err(STEP))?;
    }
    let mut files = Vec::new();
    for c in &copies {
        let to = format!("{boot_path}/{}", c.to);
        g.cp(&format!("{ESP_EFI}/{}", c.from), &to)
            .map_err(|cause| FixError::File {
                step: STEP,
                path: to.clone(),
                cause,
            })?;
        files.push(FileChange {
            path: to,
            diff: String::new(),
            note: format!("copied from {ESP_EFI}/{}", c.from),
        });
    }
    Ok(record(
        STEP,
        started,
        files,
        format!("removable-media boot path created from {}", copies[0].from),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, files: &[&str]) -> (String, Vec<String>) {
        (name.into(), files.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn existing_fallback_means_nothing_to_do() {
        assert!(
            plan_copies(&[d("BOOT", &["BOOTX64.EFI"]), d("debian", &["shimx64.efi"])]).is_empty()
        );
        assert!(plan_copies(&[d("Boot", &["bootx64.efi"])]).is_empty());
    }

    #[test]
    fn shim_is_preferred_and_its_directory_comes_along() {
        let c = plan_copies(&[d(
            "debian",
            &[
                "shimx64.efi",
                "grubx64.efi",
                "mmx64.efi",
                "fbx64.efi",
                "grub.cfg",
                "BOOTX64.CSV",
            ],
        )]);
        assert_eq!(
            c[0],
            Copy {
                from: "debian/shimx64.efi".into(),
                to: "BOOTX64.EFI".into()
            }
        );
        let targets: Vec<&str> = c.iter().map(|c| c.to.as_str()).collect();
        assert_eq!(
            targets,
            ["BOOTX64.EFI", "grubx64.efi", "mmx64.efi", "grub.cfg"]
        );
    }

    #[test]
    fn grub_alone_becomes_the_fallback() {
        let c = plan_copies(&[d("BOOT", &[]), d("centos", &["grubx64.efi", "grub.cfg"])]);
        assert_eq!(
            c[0],
            Copy {
                from: "centos/grubx64.efi".into(),
                to: "BOOTX64.EFI".into()
            }
        );
        assert_eq!(c[1].to, "grub.cfg");
    }

    #[test]
    fn nothing_bootable_means_no_copies() {
        assert!(plan_copies(&[d("Microsoft", &["bootmgfw.efi"])]).is_empty());
        assert!(plan_copies(&[]).is_empty());
    }
}
