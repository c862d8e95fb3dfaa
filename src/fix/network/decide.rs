//! What the network step does, decided from the inventory, the mode and the NIC plan: which
//! files to write or remove, and one line per interface for the record. Pure.

use std::collections::BTreeMap;

use super::inventory::{Format, GuestFile, Interface, Inventory, Pin};
use super::render::{
    drop_lines, is_vmware_mac, is_vmware_slot_name, link_path, render_link, replace_mac,
    replace_name, LinkMatch,
};
use crate::plan::{normalize_mac, NetworkMode, NicPlan};

/// A guest file to write whole (new, or the edited text of an existing one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub path: String,
    pub text: String,
    pub note: String,
}

/// A guest file to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub path: String,
    pub note: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub writes: Vec<Write>,
    pub removals: Vec<Removal>,
    /// One line per configured interface: old name/MAC → new name/MAC, and how.
    pub outcomes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Working copies of the files being edited, with the notes of each edit.
struct Edits<'a> {
    originals: BTreeMap<&'a str, &'a GuestFile>,
    texts: BTreeMap<String, (String, Vec<String>)>,
}

impl<'a> Edits<'a> {
    fn new(files: &'a [GuestFile]) -> Self {
        Edits {
            originals: files.iter().map(|f| (f.path.as_str(), f)).collect(),
            texts: BTreeMap::new(),
        }
    }

    fn text(&self, path: &str) -> Option<&str> {
        match self.texts.get(path) {
            Some((t, _)) => Some(t),
            None => self.originals.get(path).map(|f| f.text.as_str()),
        }
    }

    fn set(&mut self, path: &str, text: String, note: String) {
        let entry = self
            .texts
            .entry(path.to_string())
            .or_insert_with(|| (String::new(), Vec::new()));
        entry.0 = text;
        entry.1.push(note);
    }

    /// Changed texts, in path order; a text equal to the file's own is no write.
    fn into_writes(self) -> Vec<Write> {
        let originals = self.originals;
        self.texts
            .into_iter()
            .filter(|(path, (text, _))| originals.get(path.as_str()).map(|f| &f.text) != Some(text))
            .map(|(path, (text, notes))| Write {
                path,
                text,
                note: notes.join("; "),
            })
            .collect()
    }
}

/// The KVM MAC of each old MAC that changes (normalized; an equal target is no change).
fn new_macs(nics: &[NicPlan]) -> BTreeMap<String, String> {
    nics.iter()
        .filter_map(|n| {
            let old = normalize_mac(n.mac.as_deref()?)?;
            let new = normalize_mac(n.target_mac.as_deref()?)?;
            (old != new).then_some((old, new))
        })
        .collect()
}

fn describe(name: &str, mac: Option<&str>) -> String {
    match mac {
        Some(mac) => format!("{name} ({mac})"),
        None => format!("{name} (MAC unknown)"),
    }
}

/// The NIC plan entry for an interface: by MAC, or the only one when the guest configures one
/// NIC and the plan has one.
fn nic_for<'n>(iface: &Interface, nics: &'n [NicPlan], ethernets: usize) -> Option<&'n NicPlan> {
    match &iface.mac {
        Some(mac) => nics
            .iter()
            .find(|n| n.mac.as_deref().and_then(normalize_mac).as_deref() == Some(mac.as_str())),
        None if ethernets == 1 && nics.len() == 1 => nics.first(),
        None => None,
    }
}

pub fn decide(
    files: &[GuestFile],
    inv: &Inventory,
    mode: NetworkMode,
    nics: &[NicPlan],
) -> Result<Decision, String> {
    let mut d = Decision::default();
    let ethernets: Vec<&Interface> = inv.ethernets().collect();
    let macs = new_macs(nics);
    for old in macs.keys() {
        let known = inv.interfaces.iter().any(|i| i.mac.as_ref() == Some(old))
            || inv.pins.iter().any(|p| p.mac.as_ref() == Some(old))
            || inv.mac_only.iter().any(|(m, _)| m == old);
        if !known {
            d.warnings.push(format!(
                "network: no configuration of the guest names MAC {old} (given a new MAC)"
            ));
        }
    }
    match mode {
        NetworkMode::Leave => {
            leave(inv, &ethernets, &macs, &mut d);
            return Ok(d);
        }
        NetworkMode::KeepNames => keep_names(files, inv, &ethernets, nics, &macs, &mut d),
        NetworkMode::Rename => rename(files, inv, &ethernets, nics, &macs, &mut d)?,
    }
    Ok(d)
}

fn leave(
    inv: &Inventory,
    ethernets: &[&Interface],
    macs: &BTreeMap<String, String>,
    d: &mut Decision,
) {
    for iface in ethernets {
        let pins: Vec<&Pin> = inv.pins.iter().filter(|p| p.name == iface.name).collect();
        let moved = pins.iter().find_map(|p| {
            p.mac
                .as_ref()
                .and_then(|m| macs.get(m).map(|new| (p, m, new)))
        });
        if let Some((pin, old, new)) = moved {
            d.warnings.push(format!(
                "network: {} is pinned to MAC {old} by {}, but the NIC gets {new} on KVM: the name will not exist there",
                iface.name, pin.path
            ));
        } else if pins.is_empty() && is_vmware_slot_name(&iface.name) {
            d.warnings.push(format!(
                "network: {} is a VMware PCI slot name and nothing pins it: the virtio NIC will get another name",
                iface.name
            ));
        }
        d.outcomes.push(format!(
            "{}: left as configured",
            describe(&iface.name, iface.mac.as_deref())
        ));
    }
}

/// Rewrite the changed MACs in every configuration file (pins are replaced, not edited).
fn rewrite_macs(files: &[GuestFile], macs: &BTreeMap<String, String>, edits: &mut Edits) {
    for file in files.iter().filter(|f| f.format.is_config()) {
        for (old, new) in macs {
            let Some(text) = edits.text(&file.path) else {
                continue;
            };
            let (out, n) = replace_mac(text, old, new);
            if n > 0 {
                edits.set(&file.path, out, format!("MAC {old} → {new}"));
            }
        }
    }
}

/// Remove the pins on `superseded` names, on VMware MACs and on MACs that change, except
/// the files this run writes itself.
fn remove_pins(
    inv: &Inventory,
    superseded: &[String],
    macs: &BTreeMap<String, String>,
    written: &[String],
    edits: &mut Edits,
    d: &mut Decision,
) {
    let mut udev_lines: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for pin in &inv.pins {
        if written.contains(&pin.path) {
            continue;
        }
        let on_old_mac = pin
            .mac
            .as_deref()
            .is_some_and(|m| is_vmware_mac(m) || macs.contains_key(m));
        if !(on_old_mac || superseded.contains(&pin.name)) {
            continue;
        }
        let what = describe(&pin.name, pin.mac.as_deref());
        match (pin.format, pin.line) {
            (Format::UdevRules, Some(line)) => {
                udev_lines.entry(&pin.path).or_default().push(line);
                d.outcomes.push(format!(
                    "removed the udev rule pinning {what} ({}:{line})",
                    pin.path
                ));
            }
            _ => {
                if !d.removals.iter().any(|r| r.path == pin.path) {
                    d.removals.push(Removal {
                        path: pin.path.clone(),
                        note: format!("removed: pinned {what}, a NIC that will not exist on KVM"),
                    });
                    d.outcomes
                        .push(format!("removed the .link pinning {what} ({})", pin.path));
                }
            }
        }
    }
    for (path, lines) in udev_lines {
        if let Some(text) = edits.text(path) {
            let out = drop_lines(text, &lines);
            edits.set(
                path,
                out,
                format!("dropped {} rule(s) pinning old NICs", lines.len()),
            );
        }
    }
}

fn keep_names(
    files: &[GuestFile],
    inv: &Inventory,
    ethernets: &[&Interface],
    nics: &[NicPlan],
    macs: &BTreeMap<String, String>,
    d: &mut Decision,
) {
    let mut edits = Edits::new(files);
    let mut pinned = Vec::new();
    let mut written = Vec::new();
    for iface in ethernets {
        let nic = nic_for(iface, nics, ethernets.len());
        let target = match &iface.mac {
            Some(mac) => Some(macs.get(mac).unwrap_or(mac).clone()),
            None => nic.and_then(|n| {
                n.target_mac
                    .as_deref()
                    .or(n.mac.as_deref())
                    .and_then(normalize_mac)
            }),
        };
        let matcher = match target {
            Some(mac) => LinkMatch::Mac(mac),
            None if ethernets.len() == 1 && nics.len() <= 1 => LinkMatch::VirtioDriver,
            None => {
                d.warnings.push(format!(
                    "network: {} has no MAC recorded and the guest configures {} NICs ({} in the plan): \
                     its name cannot be kept unambiguously; give --nic OLD_MAC=NEW_MAC or nics[].mac",
                    iface.name,
                    ethernets.len(),
                    nics.len()
                ));
                d.outcomes.push(format!(
                    "{}: not pinned (ambiguous)",
                    describe(&iface.name, None)
                ));
                continue;
            }
        };
        let path = link_path(&iface.name);
        let how = match &matcher {
            LinkMatch::Mac(mac) => format!("{} ({mac})", iface.name),
            LinkMatch::VirtioDriver => format!("{} (the virtio NIC)", iface.name),
        };
        d.outcomes.push(format!(
            "{} → {how}, {}: kept by {path}",
            describe(&iface.name, iface.mac.as_deref()),
            iface.addressing.as_str()
        ));
        edits.set(
            &path,
            render_link(&matcher, &iface.name),
            format!("keeps the name {}", iface.name),
        );
        pinned.push(iface.name.clone());
        written.push(path);
    }
    remove_pins(inv, &pinned, macs, &written, &mut edits, d);
    rewrite_macs(files, macs, &mut edits);
    d.writes = edits.into_writes();
}

fn rename(
    files: &[GuestFile],
    inv: &Inventory,
    ethernets: &[&Interface],
    nics: &[NicPlan],
    macs: &BTreeMap<String, String>,
    d: &mut Decision,
) -> Result<(), String> {
    let mut renames: Vec<(&Interface, String)> = Vec::new();
    let mut missing = Vec::new();
    for iface in ethernets {
        let already = nics
            .iter()
            .any(|n| n.target_name.as_deref() == Some(iface.name.as_str()));
        match nic_for(iface, nics, ethernets.len()).and_then(|n| n.target_name.clone()) {
            Some(new) => renames.push((iface, new)),
            // Renamed by an earlier run (its MAC may have been only in a pin it removed).
            None if already => renames.push((iface, iface.name.clone())),
            None => missing.push(describe(&iface.name, iface.mac.as_deref())),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "--network rename: no new name for {} (give nics[].target_name or --nic OLD_MAC=NEW_MAC,name=NEWNAME)",
            missing.join(", ")
        ));
    }
    for (iface, new) in &renames {
        let clash = inv
            .interfaces
            .iter()
            .any(|i| i.name == *new && !renames.iter().any(|(r, _)| r.name == i.name));
        if clash {
            return Err(format!(
                "--network rename: {} → {new}, but the guest already configures {new}",
                iface.name
            ));
        }
    }
    let mut edits = Edits::new(files);
    // Through placeholders, so that swapping two names works.
    let placeholder = |i: usize| format!("h2k-rename-{i}");
    let changing: Vec<(usize, &(&Interface, String))> = renames
        .iter()
        .enumerate()
        .filter(|(_, (iface, new))| iface.name != *new)
        .collect();
    for file in files.iter().filter(|f| f.format.is_config()) {
        let Some(mut text) = edits.text(&file.path).map(str::to_string) else {
            continue;
        };
        let mut notes = Vec::new();
        for (i, (iface, new)) in &changing {
            let (out, n) = replace_name(&text, &iface.name, &placeholder(*i));
            if n > 0 {
                notes.push(format!("{} → {new}", iface.name));
            }
            text = out;
        }
        for (i, (_, new)) in &changing {
            text = replace_name(&text, &placeholder(*i), new).0;
        }
        if !notes.is_empty() {
            if file.format == Format::Ifcfg {
                d.warnings.push(format!(
                    "network: {}: renamed inside; the file keeps its name",
                    file.path
                ));
            }
            edits.set(&file.path, text, format!("renamed {}", notes.join(", ")));
        }
    }
    for (iface, new) in &renames {
        let nic = nic_for(iface, nics, ethernets.len());
        let target = iface
            .mac
            .as_ref()
            .map(|m| macs.get(m).unwrap_or(m).clone())
            .or_else(|| nic.and_then(|n| n.target_mac.clone()));
        d.outcomes.push(format!(
            "{} → {}, {}: configuration renamed",
            describe(&iface.name, iface.mac.as_deref()),
            describe(new, target.as_deref()),
            iface.addressing.as_str()
        ));
    }
    let old_names: Vec<String> = renames.iter().map(|(i, _)| i.name.clone()).collect();
    remove_pins(inv, &old_names, macs, &[], &mut edits, d);
    rewrite_macs(files, macs, &mut edits);
    d.writes = edits.into_writes();
    Ok(())
}
