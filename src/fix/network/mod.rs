//! Network continuity: the interfaces the guest configures keep working on the KVM NIC.
//!
//! On VMware the guest names its NIC after VMware's PCI slot (`ens192`) or pins a name to the
//! VMware MAC (udev persistent-net rules, `.link` files); its configuration (ifupdown,
//! netplan, NetworkManager, ifcfg, networkd) uses that name. On KVM the virtio NIC would get
//! another name and the guest no network. This step reads every such file
//! ([`inventory`]), decides per `--network` mode ([`decide`]), and writes the `.link` files
//! and edits ([`render`]). It runs before the initramfs rebuild so the udev hook copies the
//! new `.link` files into the image.

pub mod decide;
pub mod inventory;
pub mod render;

use std::collections::BTreeSet;
use std::time::Instant;

use super::{record, FixError, Guest};
use super::{FileChange, FixRecord};
use crate::plan::FixPlan;
use inventory::{Format, GuestFile, IfupdownSource};

pub use render::{is_vmware_mac, VMWARE_OUIS};

const STEP: &str = "network";

/// A guest with more network files than this is not a real one; the cap bounds the work.
const MAX_FILES: usize = 512;

/// An override of udev's rule that applies `.link` files (how some templates turn naming off).
const MASKED_LINK_RULES: &str = "/etc/udev/rules.d/80-net-setup-link.rules";

/// Where each format lives (ifupdown is followed from /etc/network/interfaces instead).
const GLOBS: &[(&str, Format)] = &[
    ("/etc/netplan/*.yaml", Format::Netplan),
    (
        "/etc/NetworkManager/system-connections/*.nmconnection",
        Format::NmKeyfile,
    ),
    ("/etc/sysconfig/network-scripts/ifcfg-*", Format::Ifcfg),
    ("/etc/sysconfig/network/ifcfg-*", Format::Ifcfg),
    ("/etc/systemd/network/*.network", Format::NetworkdNetwork),
    ("/etc/systemd/network/*.link", Format::NetworkdLink),
    ("/etc/udev/rules.d/*.rules", Format::UdevRules),
];

/// Backups and package-manager leftovers the tools skip (and ours, `.h2k-orig`).
fn is_leftover(path: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".h2k-orig",
        "~",
        ".bak",
        ".orig",
        ".rpmnew",
        ".rpmsave",
        ".dpkg-old",
        ".dpkg-dist",
        ".dpkg-new",
    ];
    SUFFIXES.iter().any(|s| path.ends_with(s))
}

/// `pattern` of a `source` line, absolute (relative ones are relative to the file's directory).
fn resolve_source(file: &str, pattern: &str) -> String {
    if pattern.starts_with('/') {
        return pattern.to_string();
    }
    let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{dir}/{pattern}")
}

/// run-parts names: what `source-directory` reads.
fn is_run_parts_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

struct Collector<'a, 'g> {
    guest: &'a Guest<'g>,
    files: Vec<GuestFile>,
    seen: BTreeSet<String>,
}

impl Collector<'_, '_> {
    fn glob(&self, pattern: &str) -> Result<Vec<String>, FixError> {
        let mut paths = self
            .guest
            .g
            .glob_expand(pattern)
            .map_err(Guest::err(STEP))?;
        paths.sort();
        Ok(paths)
    }

    /// Read `path` as `format` unless seen, a leftover, not a regular file, or over the cap.
    fn add(&mut self, path: &str, format: Format) -> Result<Option<String>, FixError> {
        if self.files.len() >= MAX_FILES || is_leftover(path) || self.seen.contains(path) {
            return Ok(None);
        }
        if !self.guest.is_file(STEP, path)? {
            return Ok(None);
        }
        self.seen.insert(path.to_string());
        let text = self
            .guest
            .g
            .read_to_string(path)
            .map_err(|cause| FixError::File {
                step: STEP,
                path: path.to_string(),
                cause,
            })?;
        self.files.push(GuestFile {
            path: path.to_string(),
            format,
            text: text.clone(),
        });
        Ok(Some(text))
    }

    /// /etc/network/interfaces and everything it sources, in the order ifupdown reads them.
    fn ifupdown(&mut self) -> Result<(), FixError> {
        let mut queue = vec!["/etc/network/interfaces".to_string()];
        while let Some(path) = queue.pop() {
            let Some(text) = self.add(&path, Format::Ifupdown)? else {
                continue;
            };
            for source in inventory::parse_ifupdown(&text).sources.into_iter().rev() {
                match source {
                    IfupdownSource::Glob(p) => {
                        let mut found = self.glob(&resolve_source(&path, &p))?;
                        found.reverse();
                        queue.extend(found);
                    }
                    IfupdownSource::Directory(d) => {
                        let dir = resolve_source(&path, &d);
                        if !self.guest.g.is_dir(&dir).unwrap_or(false) {
                            continue;
                        }
                        let mut names = self.guest.g.ls(&dir).map_err(Guest::err(STEP))?;
                        names.retain(|n| is_run_parts_name(n));
                        names.sort();
                        queue.extend(names.iter().rev().map(|n| format!("{dir}/{n}")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every network file of the guest, read.
fn collect(guest: &Guest) -> Result<Vec<GuestFile>, FixError> {
    let mut c = Collector {
        guest,
        files: Vec::new(),
        seen: BTreeSet::new(),
    };
    c.ifupdown()?;
    for (pattern, format) in GLOBS {
        for path in c.glob(pattern)? {
            c.add(&path, *format)?;
        }
    }
    Ok(c.files)
}

pub fn run(
    guest: &Guest,
    plan: &FixPlan,
    warnings: &mut Vec<String>,
) -> Result<FixRecord, FixError> {
    let started = Instant::now();
    let mode = plan.network_mode();
    let files = collect(guest)?;
    let inv = inventory::scan(&files);
    let decision =
        decide::decide(&files, &inv, mode, &plan.nics).map_err(|message| FixError::Failed {
            step: STEP,
            message,
        })?;
    warnings.extend(inv.warnings.iter().map(|w| format!("network: {w}")));
    warnings.extend(decision.warnings.iter().cloned());
    let writes_links = decision.writes.iter().any(|w| w.path.ends_with(".link"));
    if writes_links && guest.g.exists(MASKED_LINK_RULES).unwrap_or(false) {
        // Usually a symlink to /dev/null: udev then applies no .link file at all.
        warnings.push(format!(
            "network: {MASKED_LINK_RULES} overrides the rule that applies .link files; the names written may not be applied"
        ));
    }
    let mut changes: Vec<FileChange> = Vec::new();
    for w in &decision.writes {
        if let Some(c) = guest.write_file(STEP, &w.path, &w.text, &w.note)? {
            changes.push(c);
        }
    }
    for r in &decision.removals {
        changes.push(guest.remove_file(STEP, &r.path, &r.note)?);
    }
    let summary = if decision.outcomes.is_empty() {
        format!("{}: no configured network interface found", mode.as_str())
    } else {
        format!("{}: {}", mode.as_str(), decision.outcomes.join("; "))
    };
    let mut rec = record(STEP, started, changes, summary);
    rec.nics = decision.nics;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_resolve_against_the_file_directory() {
        assert_eq!(
            resolve_source("/etc/network/interfaces", "interfaces.d/*"),
            "/etc/network/interfaces.d/*"
        );
        assert_eq!(
            resolve_source("/etc/network/interfaces.d/a", "/etc/network/b"),
            "/etc/network/b"
        );
    }

    #[test]
    fn backups_and_non_run_parts_names_are_skipped() {
        for p in [
            "/etc/sysconfig/network-scripts/ifcfg-eth0.h2k-orig",
            "/etc/sysconfig/network-scripts/ifcfg-eth0.bak",
            "/etc/network/interfaces.d/eth0~",
            "/etc/netplan/01.yaml.dpkg-old",
        ] {
            assert!(is_leftover(p), "{p}");
        }
        assert!(!is_leftover("/etc/sysconfig/network-scripts/ifcfg-eth0"));
        assert!(is_run_parts_name("50-cloud_init"));
        assert!(!is_run_parts_name("eth0.cfg"));
        assert!(!is_run_parts_name(""));
    }
}
