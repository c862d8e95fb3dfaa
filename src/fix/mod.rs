//! FIX: the guest repairs, each a small unit that reads a guest file, computes the new text
//! with a pure function (unit-tested in its module), writes it back and records the diff.
//!
//! All steps run in the one appliance the pipeline launched, on the writable overlay; the
//! guest's own binaries (grub-mkconfig, update-initramfs, dracut) run chrooted in it.

pub mod dracut_conf;
pub mod fstab;
pub mod fstab_apply;
pub mod grub;
pub mod grub_apply;
pub mod guest_agent;
pub mod guest_agent_fetch;
pub mod initramfs;
pub mod initramfs_append;
pub mod initramfs_conf_apply;
pub mod initramfs_verify;
pub mod modprobe_conf;
pub mod network;
pub mod photon;
#[cfg(test)]
mod proptests;
pub mod record;
pub mod resume;
pub mod resume_apply;
pub mod systemd_boot;
pub mod text;
pub mod uefi_fallback;
pub mod vmware_tools;

use std::path::Path;
use std::time::Instant;

use crate::guestfs::{Guestfs, GuestfsError};
use crate::inspect::OsInfo;
pub use record::{unified_diff, FileChange, FixRecord, FixStatus, NicChoice};

#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("{step}: {path}: {cause}")]
    File {
        step: &'static str,
        path: String,
        cause: GuestfsError,
    },
    #[error("{step}: {cause}")]
    Guestfs {
        step: &'static str,
        cause: GuestfsError,
    },
    #[error("{step}: {message}")]
    Failed { step: &'static str, message: String },
    #[error("{step}: dpkg -i in the guest exited with {status}: {last_lines}")]
    Dpkg {
        step: &'static str,
        status: String,
        last_lines: String,
    },
}

/// What every fix step gets: the appliance, what inspection found, and job-wide choices.
pub struct Guest<'a> {
    pub g: &'a Guestfs,
    pub os: &'a OsInfo,
    /// Number of disks attached (device-name guesses are only safe with one).
    pub disk_count: usize,
    /// Keep `PATH.h2k-orig` next to every changed file.
    pub backup: bool,
    /// The job's private work directory on the host (downloads for the guest go there).
    pub work_dir: &'a Path,
}

impl Guest<'_> {
    /// Wrap a libguestfs error with the step it happened in.
    pub fn err(step: &'static str) -> impl Fn(GuestfsError) -> FixError {
        move |cause| FixError::Guestfs { step, cause }
    }

    /// Read `path`, let `transform` compute the new text, and write it back if it changed.
    /// Returns the change (with its diff) or None when the text is already right.
    pub fn edit_file(
        &self,
        step: &'static str,
        path: &str,
        note: &str,
        transform: impl FnOnce(&str) -> String,
    ) -> Result<Option<FileChange>, FixError> {
        self.edit_file_noted(step, path, |old| (transform(old), note.to_string()))
    }

    /// [`Guest::edit_file`] for the pure transforms that return a [`text::Rewrite`]: its
    /// warnings are added to `warnings` (prefixed with the path) and its changes become the
    /// note. The file is read once.
    pub fn rewrite_file(
        &self,
        step: &'static str,
        path: &str,
        warnings: &mut Vec<String>,
        transform: impl FnOnce(&str) -> text::Rewrite,
    ) -> Result<Option<FileChange>, FixError> {
        self.edit_file_noted(step, path, |old| {
            let rewrite = transform(old);
            warnings.extend(rewrite.warnings_about(path));
            let note = rewrite
                .changes
                .iter()
                .map(|c| format!("{}: {} → {}", c.field, c.old, c.new))
                .collect::<Vec<_>>()
                .join("; ");
            (rewrite.text, note)
        })
    }

    fn edit_file_noted(
        &self,
        step: &'static str,
        path: &str,
        transform: impl FnOnce(&str) -> (String, String),
    ) -> Result<Option<FileChange>, FixError> {
        let file_err = |cause| FixError::File {
            step,
            path: path.to_string(),
            cause,
        };
        let old = self.g.read_to_string(path).map_err(file_err)?;
        let (new, note) = transform(&old);
        if new == old {
            return Ok(None);
        }
        if self.backup {
            self.g
                .cp(path, &format!("{path}.h2k-orig"))
                .map_err(file_err)?;
        }
        self.g.write(path, new.as_bytes()).map_err(file_err)?;
        Ok(Some(FileChange {
            path: path.to_string(),
            diff: unified_diff(path, &old, &new),
            note,
        }))
    }

    /// Write `text` to `path`, creating it (and its directory) when missing. Returns the
    /// change, or None when the file already holds exactly `text`.
    pub fn write_file(
        &self,
        step: &'static str,
        path: &str,
        text: &str,
        note: &str,
    ) -> Result<Option<FileChange>, FixError> {
        if self.is_file(step, path)? {
            return self.edit_file(step, path, note, |_| text.to_string());
        }
        let file_err = |cause| FixError::File {
            step,
            path: path.to_string(),
            cause,
        };
        if let Some((dir, _)) = path.rsplit_once('/').filter(|(d, _)| !d.is_empty()) {
            self.g.mkdir_p(dir).map_err(file_err)?;
        }
        self.g.write(path, text.as_bytes()).map_err(file_err)?;
        Ok(Some(FileChange {
            path: path.to_string(),
            diff: unified_diff(path, "", text),
            note: note.to_string(),
        }))
    }

    /// Delete a guest file, recording its old content as the diff.
    pub fn remove_file(
        &self,
        step: &'static str,
        path: &str,
        note: &str,
    ) -> Result<FileChange, FixError> {
        let file_err = |cause| FixError::File {
            step,
            path: path.to_string(),
            cause,
        };
        let old = self.g.read_to_string(path).map_err(file_err)?;
        if self.backup {
            self.g
                .mv(path, &format!("{path}.h2k-orig"))
                .map_err(file_err)?;
        } else {
            self.g.rm(path).map_err(file_err)?;
        }
        Ok(FileChange {
            path: path.to_string(),
            diff: unified_diff(path, &old, ""),
            note: note.to_string(),
        })
    }

    pub fn is_file(&self, step: &'static str, path: &str) -> Result<bool, FixError> {
        self.g.is_file(path).map_err(|cause| FixError::File {
            step,
            path: path.into(),
            cause,
        })
    }

    /// The first of `candidates` that exists in the guest.
    pub fn find_binary(&self, candidates: &[&str]) -> Option<String> {
        candidates
            .iter()
            .find(|p| self.g.is_file(p).unwrap_or(false))
            .map(|s| s.to_string())
    }
}

/// Build a [`FixRecord`] from a step's file changes.
pub fn record(name: &str, started: Instant, files: Vec<FileChange>, summary: String) -> FixRecord {
    FixRecord {
        name: name.into(),
        status: if files.is_empty() {
            FixStatus::Unchanged
        } else {
            FixStatus::Changed
        },
        summary,
        files,
        seconds: started.elapsed().as_secs_f64(),
        nics: Vec::new(),
    }
}

/// A step that did not run, and why.
pub fn skipped(name: &str, why: &str) -> FixRecord {
    FixRecord {
        name: name.into(),
        status: FixStatus::Skipped,
        summary: why.into(),
        files: Vec::new(),
        seconds: 0.0,
        nics: Vec::new(),
    }
}

/// The guest files the records changed (created, edited or removed), once each.
pub fn changed_paths(records: &[FixRecord]) -> Vec<String> {
    let mut paths: Vec<String> = records
        .iter()
        .flat_map(|r| r.files.iter().map(|f| f.path.clone()))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Run every enabled fix in order. fstab first (the initramfs and GRUB read it), then the
/// resume device of the initramfs configuration, then the network (the initramfs's udev hook
/// copies its `.link` files), then the initramfs, then GRUB (grub-mkconfig lists the rebuilt
/// initramfs), then the optional ones. A Photon guest gets [`photon::run`] in place of the
/// initramfs and GRUB steps.
pub fn apply_all(
    guest: &Guest,
    plan: &crate::plan::FixPlan,
    warnings: &mut Vec<String>,
) -> Result<Vec<FixRecord>, FixError> {
    let mut records = Vec::new();
    if !plan.enabled {
        records.push(skipped("fix", "fix stage disabled"));
        return Ok(records);
    }
    // Refused or fetched before the first write: a guest that cannot be served is not touched.
    let guest_agent = if plan.guest_agent {
        Some(guest_agent::prepare(guest)?)
    } else {
        None
    };
    records.push(fstab_apply::run(guest, plan.fstab_mode, warnings)?);
    // Before the rebuild: the initramfs carries the resume device it waits for.
    let resume = resume_apply::run(guest, warnings)?;
    let resume_changed = resume.status == FixStatus::Changed;
    records.push(resume);
    // Runs in every mode: `leave` (and --no-network-cleanup) still warns about lost names.
    let network = network::run(guest, plan, warnings)?;
    // The image carries copies of the udev rules and `.link` files: a changed network naming
    // must not be undone by stale copies in the initramfs.
    let network_changed = network.status == FixStatus::Changed;
    records.push(network);
    // Before the rebuild: the agent's package triggers run, and the image is made last.
    records.push(match &guest_agent {
        Some(prepared) => guest_agent::install(guest, prepared)?,
        None => skipped(guest_agent::STEP, "not requested"),
    });
    let force_rebuild = plan.force_initramfs || network_changed;
    if !plan.initramfs && resume_changed {
        warnings.push(
            "the resume device was changed in the initramfs configuration, but the initramfs is not rebuilt (disabled): the current image still waits for the old one".into(),
        );
    }
    match &guest.os.photon {
        // Photon's installer wrote grub.cfg once: its kernel choice, command line and
        // driver list are Photon's own files, repaired by its own step.
        Some(photon) => {
            let earlier = changed_paths(&records);
            records.extend(photon::run(
                guest,
                photon,
                plan,
                force_rebuild,
                &earlier,
                warnings,
            )?)
        }
        None => {
            records.push(if plan.initramfs {
                initramfs::run(
                    guest,
                    force_rebuild,
                    plan.initramfs_strategy,
                    &changed_paths(&records),
                    warnings,
                )?
            } else {
                skipped("initramfs", "disabled")
            });
            records.push(if !plan.update_grub {
                skipped("grub", "disabled")
            } else if guest.os.bootloader.kind == crate::inspect::BootloaderKind::SystemdBoot {
                // Its entries and their initramfs copies are on the ESP: after the rebuild.
                systemd_boot::run(guest, warnings)?
            } else {
                grub_apply::run(guest, plan.regenerate_grub, warnings)?
            });
        }
    }
    if plan.update_grub {
        records.push(uefi_fallback::run(guest)?);
    }
    if plan.remove_vmware_tools {
        records.push(vmware_tools::run(guest)?);
    } else {
        records.push(skipped("vmware-tools", "not requested"));
    }
    Ok(records)
}
