//! Put the virtio drivers into the initramfs of the kernel the guest boots.
//!
//! A VMware guest's initramfs holds the drivers for the disk it saw there (pvscsi, mptspi,
//! ahci); on KVM the root disk sits behind virtio_blk/virtio_pci, and without them in the
//! initramfs the kernel never finds its root ("Gave up waiting for root file system device").
//! The guest's own tool rebuilds it inside the appliance: dracut with `--add-drivers`, or
//! initramfs-tools with `/etc/initramfs-tools/modules`. Both config files are also written so
//! the guest's next kernel update keeps the drivers, and whatever in the guest's
//! configuration omits or blocks them is lifted first ([`super::initramfs_conf_apply`]). The
//! rebuilt image is verified on the host: modules, dependencies and configuration of the image
//! itself ([`super::initramfs_verify`]).

use std::time::Instant;

use super::initramfs_append::{self as append, AppendError};
use super::initramfs_conf_apply as conf;
use super::{record, skipped, FixError, Guest};
use super::{FileChange, FixRecord};
use crate::inspect::{self, InitramfsTool, Kernel};
use crate::plan::InitramfsStrategy;

/// Drivers that must be in the initramfs for a virtio disk and NIC.
pub const REQUIRED: &[&str] = &["virtio_blk", "virtio_scsi", "virtio_pci", "virtio_net"];
/// Loaded as dependencies where modular; listed so they are present on every layout.
pub const ALSO: &[&str] = &["virtio_ring", "virtio"];

const STEP: &str = "initramfs";
const INITRAMFS_TOOLS_MODULES: &str = "/etc/initramfs-tools/modules";
/// Sorts after the drop-ins a template usually has (`10-…` to `90-…`), so that its lifting of
/// virtio omissions runs after theirs; the drop-ins themselves are fixed as well.
pub const DRACUT_CONF: &str = "/etc/dracut.conf.d/99-h2k-guest-virtio.conf";

/// `/etc/initramfs-tools/modules` with every module of `modules` listed once (kept order,
/// comments untouched, missing ones appended under one explanatory comment).
pub fn ensure_modules_listed(text: &str, modules: &[&str]) -> String {
    let listed: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&str> = modules
        .iter()
        .copied()
        .filter(|m| !listed.contains(m))
        .collect();
    if missing.is_empty() {
        return text.to_string();
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# added by h2k-guest: virtio drivers for booting on KVM\n");
    for m in missing {
        out.push_str(m);
        out.push('\n');
    }
    out
}

/// The dracut drop-in that keeps virtio drivers in future initramfs images. dracut drops any
/// driver matching `omit_drivers` even when it is in `add_drivers`, so virtio patterns are
/// also taken out of an `omit_drivers` set by earlier drop-ins (this one sorts after the usual ones).
/// `read -a` splits without glob expansion, so patterns like `virtio.*` stay literal.
pub fn dracut_conf(modules: &[&str]) -> String {
    format!(
        "# added by h2k-guest: virtio drivers for booting on KVM\n\
add_drivers+=\" {} \"\n\
read -r -a _h2k_omit <<< \"$omit_drivers\"\n\
omit_drivers=\" \"\n\
for _h2k_d in \"${{_h2k_omit[@]}}\"; do\n\
    case \"$_h2k_d\" in virtio*) ;; *) omit_drivers+=\"$_h2k_d \" ;; esac\n\
done\n\
unset _h2k_omit _h2k_d\n",
        modules.join(" ")
    )
}

/// zstd at level 1 where the guest has it, else gzip at level 1 (gzip is always there).
pub fn fast_compressor(guest: &Guest) -> String {
    match guest.find_binary(&["/usr/bin/zstd", "/bin/zstd"]) {
        Some(zstd) => format!("{zstd} -1 -T0 -q"),
        None => "gzip -1 -n".into(),
    }
}

/// Whether `kernel` already boots on virtio: every required driver present or built in.
pub fn has_required(kernel: &Kernel) -> bool {
    REQUIRED
        .iter()
        .all(|m| kernel.virtio_modules.iter().any(|k| k == m))
}

/// The kernels to rebuild: the default one (the one GRUB boots) only, so the cost is one
/// rebuild, not one per installed kernel; others lacking virtio are named in a warning.
pub fn select_kernels<'a>(
    kernels: &'a [Kernel],
    default: Option<&str>,
) -> (Vec<&'a Kernel>, Vec<&'a Kernel>) {
    let chosen: Vec<&Kernel> = kernels
        .iter()
        .filter(|k| Some(k.version.as_str()) == default)
        .collect();
    let others: Vec<&Kernel> = kernels
        .iter()
        .filter(|k| Some(k.version.as_str()) != default && !has_required(k))
        .collect();
    (chosen, others)
}

/// `earlier` lists the guest files the steps before this one changed: the image's copies of
/// them must be current too (the append strategy replaces them, a rebuild copies them anew).
pub fn run(
    guest: &Guest,
    force: bool,
    strategy: InitramfsStrategy,
    earlier: &[String],
    warnings: &mut Vec<String>,
) -> Result<FixRecord, FixError> {
    let started = Instant::now();
    let os = guest.os;
    let (chosen, others) = select_kernels(&os.kernels, os.default_kernel.as_deref());
    for k in others {
        warnings.push(format!(
            "kernel {} is not the default and its initramfs lacks virtio drivers; it will not boot on virtio",
            k.version
        ));
    }
    let Some(kernel) = chosen.first().copied() else {
        return Ok(skipped(STEP, "no kernel found in /boot"));
    };
    let all: Vec<&str> = REQUIRED.iter().chain(ALSO).copied().collect();
    let kept: Vec<&str> = all.iter().chain(conf::KEPT).copied().collect();
    let needed = conf::needed_modules(guest, &kernel.version, &kept);
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    let supported = matches!(
        os.initramfs_tool,
        InitramfsTool::Dracut | InitramfsTool::InitramfsTools
    );
    let (mut files, notes) = if supported {
        conf::prepare(guest, os.initramfs_tool, &needed, &all, warnings)?
    } else {
        (Vec::new(), Vec::new())
    };
    let mut rebuild_reason = None;
    if has_required(kernel) && !force {
        // The file names are there; rebuild anyway unless the image proves it boots virtio
        // (and the configuration it was made with was not just changed).
        let proven = match &kernel.initramfs {
            // Everything built in and no image: nothing to rebuild.
            None => true,
            Some(_) if !supported => true,
            Some(_) if !files.is_empty() => {
                rebuild_reason = Some("its configuration was changed".to_string());
                false
            }
            Some(image) => {
                match conf::verify(guest, image, &kernel.version, REQUIRED, os.initramfs_tool) {
                    // Not readable on the host (Ok(None)): the file names are all there is.
                    Ok(_) => true,
                    Err(reasons) => {
                        rebuild_reason = Some(reasons.join("; "));
                        false
                    }
                }
            }
        };
        if proven {
            return Ok(skipped(
                STEP,
                &format!(
                    "initramfs of {} already has {}; no rebuild needed",
                    kernel.version,
                    REQUIRED.join(", ")
                ),
            ));
        }
    }
    let Some(initramfs) = kernel.initramfs.clone() else {
        return Err(FixError::Failed {
            step: STEP,
            message: format!("kernel {} has no initramfs in /boot", kernel.version),
        });
    };

    // (tool, how it compresses, argv)
    let (tool, compression, rebuild): (&str, String, Vec<String>) = match os.initramfs_tool {
        InitramfsTool::InitramfsTools => {
            if let Some(c) = guest.edit_file(
                STEP,
                INITRAMFS_TOOLS_MODULES,
                "virtio drivers listed for initramfs-tools",
                |t| ensure_modules_listed(t, &all),
            )? {
                files.push(c);
            }
            // mkinitramfs compresses at level 9 unless COMPRESSLEVEL is set (zstd -9 is ~6 of
            // the ~16 s rebuild under TCG). The environment only fills the default: a
            // COMPRESSLEVEL the guest sets in initramfs.conf or conf.d still wins, and the
            // guest's own later rebuilds use its own setting.
            (
                "update-initramfs",
                "compression level 1 unless the guest's initramfs.conf sets COMPRESSLEVEL".into(),
                vec![
                    "env".into(),
                    "COMPRESSLEVEL=1".into(),
                    "update-initramfs".into(),
                    "-u".into(),
                    "-k".into(),
                    kernel.version.clone(),
                ],
            )
        }
        InitramfsTool::Dracut => {
            let conf = dracut_conf(&all);
            let old = guest.g.read_to_string(DRACUT_CONF).unwrap_or_default();
            if old != conf {
                guest
                    .g
                    .write(DRACUT_CONF, conf.as_bytes())
                    .map_err(Guest::err(STEP))?;
                files.push(FileChange {
                    path: DRACUT_CONF.into(),
                    diff: super::unified_diff(DRACUT_CONF, &old, &conf),
                    note: "virtio drivers kept in future dracut images".into(),
                });
            }
            let mut argv: Vec<String> = vec![
                "dracut".into(),
                "--force".into(),
                "--add-drivers".into(),
                all.join(" "),
            ];
            // Debian's dracut compresses with `gzip -9` by default, most of the rebuild's time
            // under TCG. A fast level of a compressor every distribution kernel reads keeps the
            // image small at a fraction of the cost; the guest's own setting applies again to
            // its future rebuilds.
            let compressor = fast_compressor(guest);
            argv.extend(["--compress".into(), compressor.clone()]);
            argv.extend(["--kver".into(), kernel.version.clone(), initramfs.clone()]);
            ("dracut", format!("compressed with `{compressor}`"), argv)
        }
        other => {
            return Err(FixError::Failed {
                step: STEP,
                message: format!(
                    "cannot rebuild the initramfs: unsupported tool {other:?} in the guest"
                ),
            })
        }
    };

    let mut append_declined = None;
    if strategy != InitramfsStrategy::Rebuild {
        let target = AppendTarget {
            kernel: &kernel.version,
            initramfs: &initramfs,
            tool: os.initramfs_tool,
            tool_name: tool,
            strategy,
        };
        let unproven = rebuild_reason.as_deref();
        match try_append(guest, &target, earlier, files, unproven, &notes, started)? {
            Ok(done) => return Ok(done),
            Err((why, kept)) => {
                append_declined = Some(why);
                files = kept;
            }
        }
    }

    // Keep the old image until the new one is verified; put it back if anything fails.
    let saved = format!("{initramfs}.h2k-old");
    guest.g.cp(&initramfs, &saved).map_err(Guest::err(STEP))?;
    let t = Instant::now();
    log::info!("rebuilding {initramfs} for {} ({})", kernel.version, tool);
    let outcome = guest
        .g
        .command(&rebuild)
        .map_err(|cause| FixError::Failed {
            step: STEP,
            message: format!("{} failed: {}", tool, cause.message),
        })
        .and_then(|_| verify_rebuilt(guest, &initramfs, &kernel.version, os.initramfs_tool));
    match outcome {
        Ok(found) => {
            if guest.backup {
                guest
                    .g
                    .mv(&saved, &format!("{initramfs}.h2k-orig"))
                    .map_err(Guest::err(STEP))?;
            } else {
                guest.g.rm(&saved).map_err(Guest::err(STEP))?;
            }
            let mut note = format!(
                "rebuilt with {} ({}) in {:.1} s; {found}",
                tool,
                compression,
                t.elapsed().as_secs_f64(),
            );
            if let Some(why) = &rebuild_reason {
                note.push_str(&format!("; rebuilt although the drivers were there: {why}"));
            }
            if let Some(why) = &append_declined {
                note.push_str(&format!(
                    "; rebuilt because appending was not possible: {why}"
                ));
            }
            for n in &notes {
                note.push_str("; ");
                note.push_str(n);
            }
            files.push(FileChange {
                path: initramfs.clone(),
                diff: String::new(),
                note,
            });
            Ok(record(
                STEP,
                started,
                files,
                format!(
                    "virtio drivers added to the initramfs of {}",
                    kernel.version
                ),
            ))
        }
        Err(e) => {
            let _ = guest.g.mv(&saved, &initramfs);
            Err(e)
        }
    }
}

/// The image the initramfs step works on.
pub struct AppendTarget<'a> {
    pub kernel: &'a str,
    pub initramfs: &'a str,
    pub tool: InitramfsTool,
    /// The guest's generator as the report names it (`update-initramfs`, `dracut`).
    pub tool_name: &'a str,
    /// `append` (a failed append fails the step) or `auto` (it falls back to a rebuild).
    pub strategy: InitramfsStrategy,
}

/// The append strategy for `target`: Ok(Ok(record)) when appended (or nothing was needed);
/// Ok(Err((reason, files))) when `auto` declines and the caller rebuilds; an error when
/// `append` was demanded and is not possible. `files` are the step's changes so far and
/// `extra` notes for the image's entry. `changed` lists the guest files this run changed.
pub fn try_append(
    guest: &Guest,
    target: &AppendTarget,
    earlier: &[String],
    mut files: Vec<FileChange>,
    unproven: Option<&str>,
    notes: &[String],
    started: Instant,
) -> Result<Result<FixRecord, (String, Vec<FileChange>)>, FixError> {
    // The image must carry fresh copies of what earlier steps and this one changed.
    let mut changed: Vec<String> = earlier.to_vec();
    changed.extend(files.iter().map(|f| f.path.clone()));
    let mut extra: Vec<String> = unproven
        .iter()
        .map(|why| format!("the image was not proven: {why}"))
        .collect();
    extra.extend(notes.iter().cloned());
    let (changed, extra) = (&changed[..], &extra[..]);
    let t = Instant::now();
    let all: Vec<&str> = REQUIRED.iter().chain(ALSO).copied().collect();
    let outcome = append::append(
        guest,
        target.kernel,
        target.initramfs,
        target.tool,
        &all,
        REQUIRED,
        changed,
    );
    match outcome {
        Ok(None) => Ok(Ok(record(
            STEP,
            started,
            files,
            format!(
                "initramfs of {} already has the virtio drivers and carries no copy of a file this run changed: nothing appended",
                target.kernel
            ),
        ))),
        Ok(Some(a)) => {
            let mut note = append::note(&a, t.elapsed().as_secs_f64());
            for n in extra {
                note.push_str("; ");
                note.push_str(n);
            }
            files.push(FileChange {
                path: target.initramfs.to_string(),
                diff: String::new(),
                note,
            });
            Ok(Ok(record(
                STEP,
                started,
                files,
                format!(
                    "virtio drivers appended to the initramfs of {} ({}'s configuration includes them for its next rebuild)",
                    target.kernel, target.tool_name
                ),
            )))
        }
        Err(AppendError::Fix(e)) => Err(e),
        Err(AppendError::Unsuitable(why)) if target.strategy == InitramfsStrategy::Append => {
            Err(FixError::Failed {
                step: STEP,
                message: format!(
                    "cannot append to {} (--initramfs append): {why}",
                    target.initramfs
                ),
            })
        }
        Err(AppendError::Unsuitable(why)) => {
            log::info!("{}: not appending ({why}); rebuilding", target.initramfs);
            Ok(Err((why, files)))
        }
    }
}

/// What the rebuilt image was verified to hold, for the note; an error of the step when it
/// would not boot a virtio disk.
pub fn verify_rebuilt(
    guest: &Guest,
    initramfs: &str,
    kver: &str,
    tool: InitramfsTool,
) -> Result<String, FixError> {
    match conf::verify(guest, initramfs, kver, REQUIRED, tool) {
        Ok(Some(v)) => {
            let mut text = format!("verified in the image for {kver}: {}", v.modules.join(", "));
            match v.resume {
                Some((value, path)) => text.push_str(&format!("; resume device {value} ({path})")),
                None => text.push_str("; no resume device"),
            }
            Ok(text)
        }
        Ok(None) => {
            // Not readable on the host: the file names the guest's lister gives are all we have.
            let found = inspect::virtio_in_boot(guest.g, kver, Some(initramfs)).modules;
            let missing: Vec<&str> = REQUIRED
                .iter()
                .copied()
                .filter(|m| !found.iter().any(|f| f == m))
                .collect();
            if missing.is_empty() {
                Ok(format!(
                    "now contains {} (file names only: the image could not be read on the host)",
                    found.join(", ")
                ))
            } else {
                Err(FixError::Failed {
                    step: STEP,
                    message: format!("rebuilt {initramfs} still lacks {}", missing.join(", ")),
                })
            }
        }
        Err(reasons) => Err(FixError::Failed {
            step: STEP,
            message: format!(
                "rebuilt {initramfs} would not boot on virtio: {}",
                reasons.join("; ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(v: &str, mods: &[&str]) -> Kernel {
        Kernel {
            version: v.into(),
            vmlinuz: format!("/boot/vmlinuz-{v}"),
            initramfs: Some(format!("/boot/initrd.img-{v}")),
            virtio_modules: mods.iter().map(|s| s.to_string()).collect(),
            has_virtio_blk: Some(mods.contains(&"virtio_blk")),
            initramfs_listed_by: Some("host".into()),
        }
    }

    #[test]
    fn modules_file_gets_missing_modules_appended_once() {
        let debian_default = "# List of modules that you want to include in your initramfs.\n#\n# Syntax:  module_name [args ...]\n";
        let out = ensure_modules_listed(debian_default, &["virtio_blk", "virtio_pci"]);
        assert!(out.starts_with(debian_default));
        assert!(out.ends_with(
            "# added by h2k-guest: virtio drivers for booting on KVM\nvirtio_blk\nvirtio_pci\n"
        ));
        assert_eq!(
            ensure_modules_listed(&out, &["virtio_blk", "virtio_pci"]),
            out,
            "idempotent"
        );
    }

    #[test]
    fn modules_already_listed_with_args_or_spaces_count() {
        let text = "virtio_blk\n  virtio_pci force=1\n# virtio_net\n";
        let out = ensure_modules_listed(text, &["virtio_blk", "virtio_pci", "virtio_net"]);
        assert_eq!(
            out,
            format!("{text}# added by h2k-guest: virtio drivers for booting on KVM\nvirtio_net\n")
        );
    }

    #[test]
    fn file_without_trailing_newline_is_extended_cleanly() {
        let out = ensure_modules_listed("sd_mod", &["virtio_blk"]);
        assert_eq!(
            out,
            "sd_mod\n# added by h2k-guest: virtio drivers for booting on KVM\nvirtio_blk\n"
        );
        assert_eq!(
            ensure_modules_listed("", &["virtio_blk"]),
            "# added by h2k-guest: virtio drivers for booting on KVM\nvirtio_blk\n"
        );
    }

    /// Source the drop-in with bash after a config that omits virtio, as dracut does.
    fn dracut_sees(earlier_conf: &str) -> (String, String) {
        let script = format!(
            "{earlier_conf}\n{}\necho \"add=[$add_drivers]\"; echo \"omit=[$omit_drivers]\"",
            dracut_conf(&["virtio_blk", "virtio_pci"])
        );
        let dir = tempfile::tempdir().unwrap();
        // A file a glob like virtio.* would match: the drop-in must not expand it.
        std::fs::write(dir.path().join("virtio.x"), "").unwrap();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        (
            lines.next().unwrap().to_string(),
            lines.next().unwrap().to_string(),
        )
    }

    #[test]
    fn dracut_conf_adds_drivers_and_lifts_virtio_omissions() {
        let (add, omit) =
            dracut_sees("add_drivers+=\" ahci \"\nomit_drivers+=\" virtio.* floppy \"");
        assert_eq!(add, "add=[ ahci  virtio_blk virtio_pci ]");
        assert_eq!(omit, "omit=[ floppy ]");
    }

    #[test]
    fn dracut_conf_without_earlier_omissions_is_harmless() {
        let (add, omit) = dracut_sees("");
        assert_eq!(add, "add=[ virtio_blk virtio_pci ]");
        assert_eq!(omit.trim(), "omit=[ ]");
    }

    #[test]
    fn only_the_default_kernel_is_rebuilt() {
        let ks = vec![
            kernel("6.1.0-9-amd64", &[]),
            kernel("6.1.0-18-amd64", &["virtio_blk"]),
        ];
        let (chosen, others) = select_kernels(&ks, Some("6.1.0-18-amd64"));
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].version, "6.1.0-18-amd64");
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].version, "6.1.0-9-amd64");
    }

    #[test]
    fn required_means_all_four() {
        assert!(!has_required(&kernel(
            "v",
            &["virtio_blk", "virtio_pci", "virtio_scsi"]
        )));
        assert!(has_required(&kernel(
            "v",
            &[
                "virtio_blk",
                "virtio_pci",
                "virtio_scsi",
                "virtio_net",
                "virtio"
            ]
        )));
    }
}
