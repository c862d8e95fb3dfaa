//! The initramfs generators' configuration, in the guest: keep the virtio drivers from being
//! omitted (dracut) or blocked (modprobe.d) before the rebuild, and verify the rebuilt image on
//! the host with [`super::initramfs_verify`].

use super::dracut_conf::{effective, lift_omissions, omitted, read_order};
use super::initramfs_verify::{verify_image, wanted, Generator, ModuleDeps, Verified};
use super::modprobe_conf::lift_blocks;
use super::text::Rewrite;
use super::{FileChange, FixError, Guest};
use crate::inspect::InitramfsTool;

const STEP: &str = "initramfs";

/// Drivers kept out of every omission and blacklist besides those the rebuild adds.
pub const KEPT: &[&str] = &["virtio_console"];

/// `/lib/modules/KVER/<file>` of the guest (or `/usr/lib/modules`), "" when absent.
pub fn kernel_file(guest: &Guest, kver: &str, file: &str) -> String {
    [
        format!("/lib/modules/{kver}/{file}"),
        format!("/usr/lib/modules/{kver}/{file}"),
    ]
    .iter()
    .find_map(|p| guest.g.read_to_string(p).ok())
    .unwrap_or_default()
}

/// `modules` and everything they need, by the guest kernel's own modules.dep.
pub fn needed_modules(guest: &Guest, kver: &str, modules: &[&str]) -> Vec<String> {
    ModuleDeps::parse(&kernel_file(guest, kver, "modules.dep")).with_dependencies(modules)
}

fn glob_sorted(guest: &Guest, pattern: &str) -> Result<Vec<String>, FixError> {
    let mut v = guest.g.glob_expand(pattern).map_err(Guest::err(STEP))?;
    v.retain(|p| guest.g.is_file(p).unwrap_or(false));
    v.sort();
    Ok(v)
}

/// Apply `transform` to `path` in /etc; for a packaged file elsewhere (`/usr/lib/...`) that
/// /etc does not already override, write the transformed copy under `etc_dir` with the same
/// name, which the tool reads instead.
fn fix_or_override(
    guest: &Guest,
    path: &str,
    etc_dir: &str,
    warnings: &mut Vec<String>,
    transform: &dyn Fn(&str) -> Rewrite,
) -> Result<Option<FileChange>, FixError> {
    if path.starts_with("/etc/") {
        return guest.rewrite_file(STEP, path, warnings, transform);
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    let over = format!("{etc_dir}/{name}");
    if guest.is_file(STEP, &over)? {
        return Ok(None);
    }
    let text = guest
        .g
        .read_to_string(path)
        .map_err(|cause| FixError::File {
            step: STEP,
            path: path.into(),
            cause,
        })?;
    let rewrite = transform(&text);
    if !rewrite.is_changed() {
        return Ok(None);
    }
    warnings.extend(rewrite.warnings_about(path));
    guest
        .g
        .write(&over, rewrite.text.as_bytes())
        .map_err(|cause| FixError::File {
            step: STEP,
            path: over.clone(),
            cause,
        })?;
    let what: Vec<String> = rewrite
        .changes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.old))
        .collect();
    Ok(Some(FileChange {
        path: over.clone(),
        diff: super::unified_diff(&over, &text, &rewrite.text),
        note: format!("overrides {path} without {}", what.join("; ")),
    }))
}

/// Rewrite the guest's configuration so that none of `needed` is omitted or blocked, then
/// check the effective configuration. Returns the changes and what the effective
/// configuration is (for the report).
pub fn prepare(
    guest: &Guest,
    tool: InitramfsTool,
    needed: &[&str],
    rebuild_adds: &[&str],
    warnings: &mut Vec<String>,
) -> Result<(Vec<FileChange>, Vec<String>), FixError> {
    let mut files = Vec::new();
    let mut notes = Vec::new();
    let lift_modprobe = |t: &str| lift_blocks(t, needed);
    for dir in ["/usr/lib/modprobe.d", "/lib/modprobe.d", "/etc/modprobe.d"] {
        for path in glob_sorted(guest, &format!("{dir}/*.conf"))? {
            files.extend(fix_or_override(
                guest,
                &path,
                "/etc/modprobe.d",
                warnings,
                &lift_modprobe,
            )?);
        }
    }
    match tool {
        InitramfsTool::Dracut => {
            let lift = |t: &str| lift_omissions(t, needed);
            let usr = glob_sorted(guest, "/usr/lib/dracut/dracut.conf.d/*.conf")?;
            let etc: Vec<String> = glob_sorted(guest, "/etc/dracut.conf.d/*.conf")?
                .into_iter()
                .filter(|p| p != super::initramfs::DRACUT_CONF)
                .collect();
            let etc_conf = guest
                .is_file(STEP, "/etc/dracut.conf")?
                .then_some("/etc/dracut.conf");
            for path in read_order(etc_conf, &usr, &etc) {
                files.extend(fix_or_override(
                    guest,
                    &path,
                    "/etc/dracut.conf.d",
                    warnings,
                    &lift,
                )?);
            }
            // Read again: what dracut will source now (our own drop-in left out, so the
            // check does not lean on it).
            let etc: Vec<String> = glob_sorted(guest, "/etc/dracut.conf.d/*.conf")?
                .into_iter()
                .filter(|p| p != super::initramfs::DRACUT_CONF)
                .collect();
            let mut texts = Vec::new();
            for path in read_order(etc_conf, &usr, &etc) {
                let text = guest.g.read_to_string(&path).unwrap_or_default();
                texts.push((path, text));
            }
            notes.push(
                check_dracut(&texts, rebuild_adds, needed).map_err(|message| FixError::Failed {
                    step: STEP,
                    message,
                })?,
            );
        }
        InitramfsTool::InitramfsTools => {
            let mut texts = Vec::new();
            let mut paths = vec!["/etc/initramfs-tools/initramfs.conf".to_string()];
            paths.extend(glob_sorted(guest, "/etc/initramfs-tools/conf.d/*")?);
            for path in paths {
                if let Ok(text) = guest.g.read_to_string(&path) {
                    texts.push((path, text));
                }
            }
            notes.push(modules_policy(&texts));
        }
        _ => {}
    }
    Ok((files, notes))
}

/// The effective dracut configuration of `texts` (in the order dracut reads them), for the
/// report; Err when it still omits one of `needed` (`rebuild_adds`: the rebuild's
/// `--add-drivers`, which dracut's own correction takes into account).
pub fn check_dracut(
    texts: &[(String, String)],
    rebuild_adds: &[&str],
    needed: &[&str],
) -> Result<String, String> {
    let eff = effective(texts);
    let left = omitted(&eff, rebuild_adds, needed);
    if !left.is_empty() {
        let what: Vec<String> = left
            .iter()
            .map(|o| format!("{} (by {})", o.module, o.entry))
            .collect();
        return Err(format!(
            "the guest's dracut configuration still omits {}",
            what.join(", ")
        ));
    }
    let summary = eff.summary();
    Ok(if summary.is_empty() {
        "dracut effective: defaults".to_string()
    } else {
        format!("dracut effective: {}", summary.join("; "))
    })
}

/// The `MODULES=` policy initramfs-tools uses (`texts`: initramfs.conf, then conf.d/* by name).
pub fn modules_policy(texts: &[(String, String)]) -> String {
    let eff = effective(texts);
    let modules = eff.get("MODULES");
    format!(
        "initramfs-tools MODULES={} ({}); the virtio drivers are listed in /etc/initramfs-tools/modules, which every policy includes",
        if modules.is_empty() { "most" } else { modules },
        eff.set_by
            .get("MODULES")
            .map_or("default".to_string(), |v| v.join(", "))
    )
}

/// Read `initramfs` on the host and verify it for kernel `kver` (see
/// [`super::initramfs_verify`]). Err(reasons) when it would not boot a virtio disk; Ok(None)
/// when the image cannot be read on the host (a compression not decoded here).
pub fn verify(
    guest: &Guest,
    initramfs: &str,
    kver: &str,
    required: &[&str],
    tool: InitramfsTool,
) -> Result<Option<Verified>, Vec<String>> {
    let generator = match tool {
        InitramfsTool::Dracut => Generator::Dracut,
        _ => Generator::InitramfsTools,
    };
    let image = match read_on_host(guest, initramfs) {
        Ok(image) => image,
        Err(why) => {
            log::warn!("{initramfs}: cannot read the image on the host: {why}");
            return Ok(None);
        }
    };
    let builtin = kernel_file(guest, kver, "modules.builtin");
    verify_image(&image, kver, &builtin, required, generator).map(Some)
}

fn read_on_host(guest: &Guest, path: &str) -> Result<crate::initramfs_image::ImageFiles, String> {
    let tmp = tempfile::Builder::new()
        .prefix("h2k-initramfs-")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary file: {e}"))?;
    let size = guest.g.filesize(path).map_err(|e| e.to_string())?;
    crate::initramfs_image::check_image_size(size).map_err(|e| e.to_string())?;
    guest
        .g
        .download(path, tmp.path())
        .map_err(|e| e.to_string())?;
    crate::initramfs_image::read_image_from_file(tmp.path(), wanted).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn dracut_check_reports_the_effective_settings_or_what_is_still_omitted() {
        let ok = texts(&[(
            "/etc/dracut.conf.d/10-vmware.conf",
            "hostonly=\"yes\"\nomit_drivers+=\" floppy \"\n",
        )]);
        let note = check_dracut(&ok, &["virtio_blk"], &["virtio_blk"]).unwrap();
        assert!(
            note.contains("hostonly=\"yes\" (/etc/dracut.conf.d/10-vmware.conf:1)"),
            "{note}"
        );
        assert!(note.contains("omit_drivers=\"floppy\""), "{note}");
        let bad = texts(&[(
            "/etc/dracut.conf.d/90-x.conf",
            "omit_drivers+=\" virtio.* \"\n",
        )]);
        let err = check_dracut(&bad, &["virtio_blk"], &["virtio_blk", "virtio_ring"]).unwrap_err();
        assert_eq!(
            err,
            "the guest's dracut configuration still omits virtio_blk (by virtio.*), virtio_ring (by virtio.*)"
        );
        assert_eq!(
            check_dracut(&[], &[], &["virtio_blk"]).unwrap(),
            "dracut effective: defaults"
        );
    }

    #[test]
    fn modules_policy_is_the_last_setting() {
        let t = texts(&[
            ("/etc/initramfs-tools/initramfs.conf", "MODULES=most\n"),
            ("/etc/initramfs-tools/conf.d/driver-policy", "MODULES=dep\n"),
        ]);
        assert!(modules_policy(&t).starts_with(
            "initramfs-tools MODULES=dep (/etc/initramfs-tools/conf.d/driver-policy:1)"
        ));
        assert!(modules_policy(&[]).starts_with("initramfs-tools MODULES=most (default)"));
    }
}
