//! The boot repairs of a Photon OS guest, in place of GRUB's and the initramfs's for the
//! other distributions.
//!
//! Photon's installer writes grub.cfg once and says not to regenerate it; everything that
//! changes per kernel is in GRUB environment blocks and in the kernel's dracut registration.
//! So: grub.cfg is never written (and checked byte-identical), grub2-mkconfig never runs; the
//! kernel `/boot/photon.cfg` boots must have virtio drivers (else another installed flavour is
//! linked, or the fix is refused); `photon_cmdline`/`user_cmdline` change only when they name
//! an unstable device; the virtio drivers are registered in
//! `/var/lib/initramfs/kernel/<ver>` and the image is rebuilt from that list with the guest's
//! dracut, as Photon's `mkinitrd` does, then verified.

pub mod cmdline;
pub mod driver_list;

pub mod kernel_choice;

use std::time::Instant;

use super::initramfs::{self, ALSO, REQUIRED};
use super::initramfs_conf_apply as conf;
use super::{record, skipped, unified_diff, FileChange, FixError, FixRecord, Guest};
use crate::fix::grub::Resolve;
use crate::inspect::photon::{confined_boot_path, PhotonBoot, DRIVER_LIST_DIR, PHOTON_CFG};
use crate::inspect::InitramfsTool;
use crate::plan::InitramfsStrategy;
use kernel_choice::{choose, missing_drivers, Candidate, Choice};

const GRUB_STEP: &str = "grub";
const INITRAMFS_STEP: &str = "initramfs";

fn failed(step: &'static str, message: String) -> FixError {
    FixError::Failed { step, message }
}

/// The boot records of a Photon guest: "grub" (kernel choice and command line), then
/// "initramfs" (driver list and rebuild) for the kernel chosen. `force` rebuilds even when
/// the image already boots virtio (asked for, or the network naming changed).
pub fn run(
    guest: &Guest,
    photon: &PhotonBoot,
    plan: &crate::plan::FixPlan,
    force: bool,
    earlier: &[String],
    warnings: &mut Vec<String>,
) -> Result<Vec<FixRecord>, FixError> {
    let mut records = Vec::new();
    if !plan.update_grub && !plan.initramfs {
        records.push(skipped(GRUB_STEP, "disabled"));
        records.push(skipped(INITRAMFS_STEP, "disabled"));
        return Ok(records);
    }
    let booted = photon.kernel.clone().ok_or_else(|| {
        failed(
            GRUB_STEP,
            format!("{PHOTON_CFG} names no kernel (photon_linux=vmlinuz-<version>)"),
        )
    })?;
    let kernel = if plan.update_grub {
        let (rec, kernel) = run_grub(guest, photon, &booted, plan.regenerate_grub, warnings)?;
        records.push(rec);
        kernel
    } else {
        records.push(skipped(GRUB_STEP, "disabled"));
        booted
    };
    if plan.initramfs {
        let how = Rebuild {
            force,
            strategy: plan.initramfs_strategy,
            earlier,
        };
        records.push(run_initramfs(guest, &kernel, &how, warnings)?);
    } else {
        records.push(skipped(INITRAMFS_STEP, "disabled"));
    }
    Ok(records)
}

/// Every installed kernel with a `/boot/linux-*.cfg` and a vmlinuz, with the drivers it lacks.
/// The booted kernel comes first even when photon.cfg is a plain file of its own.
fn candidates(guest: &Guest, photon: &PhotonBoot) -> Vec<Candidate> {
    let mut cfgs: Vec<(String, String, String)> = Vec::new();
    if let (Some(version), Some(cfg)) = (&photon.kernel, &photon.photon_cfg) {
        let flavour = photon.flavour.clone().unwrap_or_else(|| "linux".into());
        cfgs.push((version.clone(), flavour, cfg.clone()));
    }
    for k in &photon.kernel_cfgs {
        if !cfgs.iter().any(|(v, _, _)| *v == k.version) {
            cfgs.push((k.version.clone(), k.flavour.clone(), k.path.clone()));
        }
    }
    cfgs.into_iter()
        .filter(|(v, _, _)| guest.os.kernels.iter().any(|x| &x.version == v))
        .map(|(version, flavour, cfg)| Candidate {
            missing: missing_drivers(
                &conf::kernel_file(guest, &version, "modules.dep"),
                &conf::kernel_file(guest, &version, "modules.builtin"),
                REQUIRED,
            ),
            version,
            flavour,
            cfg,
        })
        .collect()
}

/// Lossy text of an env block without its `#` padding, for the diff.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.rfind('\n') {
        Some(i) if text[i + 1..].bytes().all(|b| b == b'#') => text[..=i].to_string(),
        _ => text.into_owned(),
    }
}

/// Fix `variables` of the env block at `path`; None when nothing needed to change.
fn edit_env_block(
    guest: &Guest,
    path: &str,
    variables: &[(&str, Option<&str>)],
    resolve: &dyn Resolve,
    warnings: &mut Vec<String>,
) -> Result<Option<FileChange>, FixError> {
    let file_err = |cause| FixError::File {
        step: GRUB_STEP,
        path: path.to_string(),
        cause,
    };
    let old = guest.g.read_file(path).map_err(file_err)?;
    let edit = cmdline::fix_env_block(&old, variables, resolve)
        .map_err(|e| failed(GRUB_STEP, format!("{path}: {e}; left unchanged")))?;
    warnings.extend(edit.warnings.iter().map(|w| format!("{path}: {w}")));
    if edit.bytes == old {
        return Ok(None);
    }
    if guest.backup {
        guest
            .g
            .cp(path, &format!("{path}.h2k-orig"))
            .map_err(file_err)?;
    }
    guest.g.write(path, &edit.bytes).map_err(file_err)?;
    Ok(Some(FileChange {
        path: path.to_string(),
        diff: unified_diff(path, &shown(&old), &shown(&edit.bytes)),
        note: edit.notes.join("; "),
    }))
}

/// Choose the kernel (switching photon.cfg when the booted one has no virtio drivers), make
/// the env blocks' command lines stable, and check grub.cfg was not touched. Returns the
/// record and the kernel that will boot.
fn run_grub(
    guest: &Guest,
    photon: &PhotonBoot,
    booted: &str,
    regenerate: bool,
    warnings: &mut Vec<String>,
) -> Result<(FixRecord, String), FixError> {
    let started = Instant::now();
    let grub_cfg = crate::inspect::photon::GRUB_CFG;
    let grub_before = guest.g.read_file(grub_cfg).ok();
    if regenerate {
        warnings.push(format!(
            "{grub_cfg}: not regenerated although asked: Photon's installer wrote it once and grub2-mkconfig would replace its photon.cfg boot"
        ));
    }
    let mut files = Vec::new();
    let all = candidates(guest, photon);
    let (kernel, cfg) = match choose(booted, &all) {
        Choice::Keep => {
            let cfg = photon
                .photon_cfg
                .clone()
                .ok_or_else(|| failed(GRUB_STEP, format!("{PHOTON_CFG} is missing")))?;
            (booted.to_string(), cfg)
        }
        Choice::Refuse(message) => return Err(failed(GRUB_STEP, message)),
        Choice::Switch(i) => {
            let to = &all[i];
            if !photon.photon_cfg_is_link {
                return Err(failed(
                    GRUB_STEP,
                    format!(
                        "kernel {booted} has no virtio drivers and {PHOTON_CFG} is not a symlink to switch to {}: link it to {} in the guest and fix again",
                        to.version, to.cfg
                    ),
                ));
            }
            let old_target = guest
                .g
                .readlink(PHOTON_CFG)
                .map_err(Guest::err(GRUB_STEP))?;
            let target = to.cfg.rsplit('/').next().unwrap_or(&to.cfg).to_string();
            confined_boot_path(&target)
                .ok_or_else(|| failed(GRUB_STEP, format!("odd kernel cfg name {}", to.cfg)))?;
            guest
                .g
                .ln_sf(&target, PHOTON_CFG)
                .map_err(Guest::err(GRUB_STEP))?;
            let missing = all
                .iter()
                .find(|c| c.version == booted)
                .map(|c| c.missing.join(", "))
                .unwrap_or_default();
            let note = format!(
                "kernel {booted} ({}) has no {missing}: now boots {} ({}), the installed kernel that has them",
                photon.flavour.as_deref().unwrap_or("?"),
                to.version,
                to.flavour
            );
            warnings.push(format!("{PHOTON_CFG}: {note}"));
            files.push(FileChange {
                path: PHOTON_CFG.into(),
                diff: unified_diff(
                    PHOTON_CFG,
                    &format!("symlink → {old_target}\n"),
                    &format!("symlink → {target}\n"),
                ),
                note,
            });
            (to.version.clone(), to.cfg.clone())
        }
    };
    let resolve = super::grub_apply::GuestResolve(guest);
    let root_partition = photon.root_partition.as_deref();
    files.extend(edit_env_block(
        guest,
        &cfg,
        &[("photon_cmdline", root_partition)],
        &resolve,
        warnings,
    )?);
    if photon.user_cfg {
        files.extend(edit_env_block(
            guest,
            crate::inspect::photon::USER_CFG,
            &[("user_cmdline", None)],
            &resolve,
            warnings,
        )?);
    }
    // Never written above; checked so that a report can say so.
    let grub_after = guest.g.read_file(grub_cfg).ok();
    if grub_before != grub_after {
        return Err(failed(
            GRUB_STEP,
            format!("{grub_cfg} changed during the Photon boot fix"),
        ));
    }
    let grub_note = match grub_before {
        Some(_) => format!("{grub_cfg} left byte-identical"),
        None => format!("no {grub_cfg}"),
    };
    let summary = if files.is_empty() {
        format!("kernel {kernel} boots on virtio with its command line as it was; {grub_note}")
    } else {
        format!("kernel {kernel} via {cfg}; {grub_note}")
    };
    Ok((record(GRUB_STEP, started, files, summary), kernel))
}

/// Register the virtio drivers for `kernel`, then rebuild and verify its image unless it is
/// proven to boot virtio already.
/// How the initramfs step may renew the image.
struct Rebuild<'a> {
    /// Even when the drivers are there.
    force: bool,
    strategy: InitramfsStrategy,
    /// Guest files changed by the steps before.
    earlier: &'a [String],
}

fn run_initramfs(
    guest: &Guest,
    kernel: &str,
    how: &Rebuild,
    warnings: &mut Vec<String>,
) -> Result<FixRecord, FixError> {
    let force = how.force;
    let started = Instant::now();
    if guest.os.initramfs_tool != InitramfsTool::Dracut {
        return Err(failed(
            INITRAMFS_STEP,
            format!(
                "no dracut in the guest to rebuild the initramfs of {kernel} (Photon builds it with dracut)"
            ),
        ));
    }
    let all: Vec<&str> = REQUIRED.iter().chain(ALSO).copied().collect();
    let list_path = format!("{DRIVER_LIST_DIR}/{kernel}");
    let old_list = if guest.is_file(INITRAMFS_STEP, &list_path)? {
        guest
            .g
            .read_to_string(&list_path)
            .map_err(Guest::err(INITRAMFS_STEP))?
    } else {
        warnings.push(format!(
            "{list_path}: missing; created, so that Photon's mkinitrd rebuilds kernel {kernel} with virtio too"
        ));
        String::new()
    };
    let (new_list, added) = driver_list::register_drivers(&old_list, &all)
        .map_err(|e| failed(INITRAMFS_STEP, format!("{list_path}: {e}")))?;
    let mut files = Vec::new();
    if !added.is_empty() {
        files.extend(guest.write_file(
            INITRAMFS_STEP,
            &list_path,
            &new_list,
            &format!(
                "registered for Photon's mkinitrd: {} added",
                added.join(", ")
            ),
        )?);
    }
    let kept: Vec<&str> = all.iter().chain(conf::KEPT).copied().collect();
    let needed = conf::needed_modules(guest, kernel, &kept);
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    let (conf_files, notes) = conf::prepare(guest, InitramfsTool::Dracut, &needed, &all, warnings)?;
    files.extend(conf_files);

    let initrd = format!("/boot/initrd.img-{kernel}");
    let info = guest.os.kernels.iter().find(|k| k.version == kernel);
    let exists = guest.is_file(INITRAMFS_STEP, &initrd)?;
    let drivers_there = exists && info.is_some_and(initramfs::has_required);
    let mut rebuild_reason: Option<String> = None;
    if drivers_there && !force {
        if !files.is_empty() {
            // As for the other distributions: the image was made with what was just changed.
            rebuild_reason = Some("its driver list or dracut configuration was changed".into());
        } else {
            match conf::verify(guest, &initrd, kernel, REQUIRED, InitramfsTool::Dracut) {
                Ok(v) => {
                    let how = match v {
                        Some(_) => "verified in the image",
                        None => "by the file names its lister gives",
                    };
                    return Ok(skipped(
                        INITRAMFS_STEP,
                        &format!(
                            "initramfs of {kernel} already has {} ({how}); {list_path} lists them; no rebuild needed",
                            REQUIRED.join(", ")
                        ),
                    ));
                }
                Err(reasons) => rebuild_reason = Some(reasons.join("; ")),
            }
        }
    }

    let mut append_declined = None;
    if exists && how.strategy != InitramfsStrategy::Rebuild {
        let target = initramfs::AppendTarget {
            kernel,
            initramfs: &initrd,
            tool: InitramfsTool::Dracut,
            tool_name: "dracut",
            strategy: how.strategy,
        };
        match initramfs::try_append(
            guest,
            &target,
            how.earlier,
            files,
            rebuild_reason.as_deref(),
            &notes,
            started,
        )? {
            Ok(done) => return Ok(done),
            Err((why, kept)) => {
                append_declined = Some(why);
                files = kept;
            }
        }
    }

    let list_args = driver_list::split_args(&new_list)
        .map_err(|e| failed(INITRAMFS_STEP, format!("{list_path}: {e}")))?;
    let compressor = initramfs::fast_compressor(guest);
    // Photon's mkinitrd runs `dracut -H -f <list> <image> <kver>`; -H is left out: inside the
    // appliance, host-only would describe the appliance, not the guest.
    let mut argv: Vec<String> = vec!["dracut".into(), "--force".into()];
    argv.extend(list_args);
    argv.extend([
        "--compress".into(),
        compressor.clone(),
        "--kver".into(),
        kernel.to_string(),
        initrd.clone(),
    ]);
    let saved = format!("{initrd}.h2k-old");
    if exists {
        guest
            .g
            .cp(&initrd, &saved)
            .map_err(Guest::err(INITRAMFS_STEP))?;
    }
    let t = Instant::now();
    log::info!("rebuilding {initrd} for {kernel} (dracut, arguments from {list_path})");
    let outcome = guest
        .g
        .command(&argv)
        .map_err(|cause| failed(INITRAMFS_STEP, format!("dracut failed: {}", cause.message)))
        .and_then(|_| initramfs::verify_rebuilt(guest, &initrd, kernel, InitramfsTool::Dracut));
    let found = match outcome {
        Ok(found) => found,
        Err(e) => {
            if exists {
                let _ = guest.g.mv(&saved, &initrd);
            }
            return Err(e);
        }
    };
    if exists {
        if guest.backup {
            guest
                .g
                .mv(&saved, &format!("{initrd}.h2k-orig"))
                .map_err(Guest::err(INITRAMFS_STEP))?;
        } else {
            guest.g.rm(&saved).map_err(Guest::err(INITRAMFS_STEP))?;
        }
    }
    let mut note = format!(
        "rebuilt with the guest's dracut, arguments from {list_path} as Photon's mkinitrd passes them (compressed with `{compressor}`) in {:.1} s; {found}",
        t.elapsed().as_secs_f64()
    );
    if let Some(why) = rebuild_reason {
        note.push_str(&format!("; rebuilt although the drivers were there: {why}"));
    }
    if let Some(why) = append_declined {
        note.push_str(&format!(
            "; rebuilt because appending was not possible: {why}"
        ));
    }
    for n in &notes {
        note.push_str("; ");
        note.push_str(n);
    }
    files.push(FileChange {
        path: initrd,
        diff: String::new(),
        note,
    });
    Ok(record(
        INITRAMFS_STEP,
        started,
        files,
        format!("virtio drivers added to the initramfs of {kernel}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_of_env_blocks_leave_the_padding_out() {
        let mut raw = b"# GRUB Environment Block\nx=1\n".to_vec();
        raw.resize(1024, b'#');
        assert_eq!(shown(&raw), "# GRUB Environment Block\nx=1\n");
        assert_eq!(
            shown(b"# GRUB Environment Block\nx=1\n"),
            "# GRUB Environment Block\nx=1\n"
        );
        assert_eq!(shown(b"no newline"), "no newline");
        assert_eq!(shown(b""), "");
    }
}
