//! What the network step does, decided from the inventory, the mode and the NIC plan: which
//! files to write or remove, and one line per interface for the record. Pure.

use std::collections::BTreeMap;

use super::inventory::{Format, GuestFile, Interface, Inventory, Kind, Pin};
use super::render::{
    drop_lines, fallback_link_path, is_vmware_mac, is_vmware_slot_name, link_path, render_link,
    replace_mac, replace_name, LinkMatch,
};
use crate::fix::record::NicChoice;
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
    /// Each configured ethernet interface and the MAC its NIC has on KVM.
    pub nics: Vec<NicChoice>,
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

/// The NIC plan entry for an interface: by its old MAC (or its new one, after an earlier run),
/// or the only one when the guest configures one NIC and the plan has one.
fn nic_for<'n>(iface: &Interface, nics: &'n [NicPlan], ethernets: usize) -> Option<&'n NicPlan> {
    let is = |m: &Option<String>, mac: &str| {
        m.as_deref().and_then(normalize_mac).as_deref() == Some(mac)
    };
    match &iface.mac {
        Some(mac) => nics
            .iter()
            .find(|n| is(&n.mac, mac))
            .or_else(|| nics.iter().find(|n| is(&n.target_mac, mac))),
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
        NetworkMode::Leave => leave(inv, &ethernets, &macs, &mut d),
        NetworkMode::KeepNames => keep_names(files, inv, &ethernets, nics, &macs, &mut d),
        NetworkMode::Rename => rename(files, inv, &ethernets, nics, &macs, &mut d)?,
    }
    for iface in inv.interfaces.iter().filter(|i| i.kind == Kind::Virtual) {
        d.outcomes.push(format!(
            "{}: virtual ({}), named by its own configuration in {}",
            iface.name,
            iface.addressing.as_str(),
            iface.files.join(", ")
        ));
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
        d.nics.push(NicChoice {
            interface: iface.name.clone(),
            mac: iface.mac.clone(),
        });
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
        d.nics.push(NicChoice {
            interface: iface.name.clone(),
            mac: match &matcher {
                LinkMatch::Mac(mac) => Some(mac.clone()),
                LinkMatch::VirtioDriver => None,
            },
        });
        let path = link_path(&iface.name);
        let how = match &matcher {
            LinkMatch::Mac(mac) => format!("{} ({mac})", iface.name),
            LinkMatch::VirtioDriver => format!("{} (the virtio NIC)", iface.name),
        };
        // The MAC only assumed kept, one NIC: if the new VM gives it another MAC after all,
        // the one virtio NIC still gets the name (a .link matching only applies when the
        // MAC one did not).
        let mac_given = iface.mac.as_ref().is_some_and(|m| macs.contains_key(m))
            || nic.is_some_and(|n| n.target_mac.is_some());
        let fallback = (matches!(matcher, LinkMatch::Mac(_))
            && !mac_given
            && ethernets.len() == 1
            && nics.len() <= 1)
            .then(|| fallback_link_path(&iface.name));
        let also = fallback
            .as_ref()
            .map(|f| format!(" (and {f} on the one virtio NIC if its MAC changes)"))
            .unwrap_or_default();
        d.outcomes.push(format!(
            "{} → {how}, {}: kept by {path}{also}; configured in {}",
            describe(&iface.name, iface.mac.as_deref()),
            iface.addressing.as_str(),
            iface.files.join(", ")
        ));
        edits.set(
            &path,
            render_link(&matcher, &iface.name),
            format!("keeps the name {}", iface.name),
        );
        if let Some(f) = fallback {
            edits.set(
                &f,
                render_link(&LinkMatch::VirtioDriver, &iface.name),
                format!(
                    "keeps the name {} on a virtio NIC with a new MAC",
                    iface.name
                ),
            );
            written.push(f);
        }
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
        d.nics.push(NicChoice {
            interface: new.clone(),
            mac: target.clone(),
        });
        d.outcomes.push(format!(
            "{} → {}, {}: configuration renamed in {}",
            describe(&iface.name, iface.mac.as_deref()),
            describe(new, target.as_deref()),
            iface.addressing.as_str(),
            iface.files.join(", ")
        ));
    }
    let old_names: Vec<String> = renames.iter().map(|(i, _)| i.name.clone()).collect();
    remove_pins(inv, &old_names, macs, &[], &mut edits, d);
    rewrite_macs(files, macs, &mut edits);
    d.writes = edits.into_writes();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::inventory::scan;
    use super::*;

    const INTERFACES: &str = "/etc/network/interfaces";
    const UDEV: &str = "/etc/udev/rules.d/70-persistent-net.rules";
    const MAC: &str = "00:50:56:9a:12:34";
    const NEW: &str = "52:54:00:12:34:56";

    fn file(path: &str, format: Format, text: &str) -> GuestFile {
        GuestFile {
            path: path.into(),
            format,
            text: text.into(),
        }
    }

    fn debian(iface_text: &str) -> Vec<GuestFile> {
        vec![
            file(INTERFACES, Format::Ifupdown, iface_text),
            file(
                UDEV,
                Format::UdevRules,
                &format!(
                    "# generated\n\n# PCI device 0x15ad:0x07b0 (vmxnet3)\n\
                     SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{{address}}==\"{MAC}\", KERNEL==\"eth*\", NAME=\"ens192\"\n\
                     # PCI device 0x8086:0x100e (e1000)\n\
                     SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{{address}}==\"52:54:00:aa:aa:aa\", NAME=\"eth9\"\n"
                ),
            ),
        ]
    }

    const DHCP: &str =
        "auto lo\niface lo inet loopback\n\nallow-hotplug ens192\niface ens192 inet dhcp\n";

    fn nic(mac: &str, target: Option<&str>, name: Option<&str>) -> NicPlan {
        NicPlan {
            mac: Some(mac.into()),
            network: None,
            target_mac: target.map(str::to_string),
            target_name: name.map(str::to_string),
        }
    }

    fn run(files: &[GuestFile], mode: NetworkMode, nics: &[NicPlan]) -> Result<Decision, String> {
        decide(files, &scan(files), mode, nics)
    }

    /// The guest files after the decision is carried out.
    fn applied(files: &[GuestFile], d: &Decision) -> Vec<GuestFile> {
        let mut out: Vec<GuestFile> = files
            .iter()
            .filter(|f| !d.removals.iter().any(|r| r.path == f.path))
            .cloned()
            .collect();
        for w in &d.writes {
            match out.iter_mut().find(|f| f.path == w.path) {
                Some(f) => f.text = w.text.clone(),
                None => out.push(file(&w.path, Format::NetworkdLink, &w.text)),
            }
        }
        out
    }

    fn write<'d>(d: &'d Decision, path: &str) -> &'d Write {
        d.writes
            .iter()
            .find(|w| w.path == path)
            .unwrap_or_else(|| panic!("no write of {path}: {d:#?}"))
    }

    fn assert_idempotent(files: &[GuestFile], mode: NetworkMode, nics: &[NicPlan]) {
        let once = applied(files, &run(files, mode, nics).unwrap());
        let again = run(&once, mode, nics).unwrap();
        assert!(
            again.writes.is_empty() && again.removals.is_empty(),
            "second run changed something: {again:#?}"
        );
    }

    #[test]
    fn keep_names_pins_the_fixture_name_to_the_kept_mac() {
        let files = debian(DHCP);
        let d = run(&files, NetworkMode::KeepNames, &[]).unwrap();
        let link = write(&d, "/etc/systemd/network/10-h2k-ens192.link");
        assert_eq!(
            link.text,
            render_link(&LinkMatch::Mac(MAC.into()), "ens192")
        );
        let udev = write(&d, UDEV);
        assert!(
            !udev.text.contains("ens192") && !udev.text.contains("vmxnet3"),
            "{}",
            udev.text
        );
        assert!(udev.text.contains("NAME=\"eth9\"") && udev.text.contains("(e1000)"));
        assert!(!d.writes.iter().any(|w| w.path == INTERFACES));
        // The MAC is only assumed kept and there is one NIC: the virtio NIC gets the name
        // even with another MAC.
        assert_eq!(
            write(&d, "/etc/systemd/network/11-h2k-ens192-virtio.link").text,
            render_link(&LinkMatch::VirtioDriver, "ens192")
        );
        assert_eq!(d.writes.len(), 3);
        assert!(d.removals.is_empty());
        assert!(
            d.outcomes[0].contains(&format!("ens192 ({MAC}) → ens192 ({MAC}), dhcp: kept by /etc/systemd/network/10-h2k-ens192.link")),
            "{:?}",
            d.outcomes
        );
        assert!(d
            .outcomes
            .iter()
            .any(|o| o.contains("removed the udev rule pinning ens192")));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // The libvirt domain gives the NIC the MAC the name is kept on.
        assert_eq!(
            d.nics,
            [NicChoice {
                interface: "ens192".into(),
                mac: Some(MAC.into())
            }]
        );
        assert_idempotent(&files, NetworkMode::KeepNames, &[]);
    }

    #[test]
    fn keep_names_with_a_new_mac_rewrites_macs_and_keeps_addresses_byte_for_byte() {
        let keyfile = "[connection]\nid=lan\ntype=ethernet\ninterface-name=ens192\n\n[ethernet]\nmac-address=00:50:56:9A:12:34\n\n\
                       [ipv4]\naddress1=192.0.2.7/24,192.0.2.1\ndns=192.0.2.53;\nmethod=manual\n";
        let nm = "/etc/NetworkManager/system-connections/lan.nmconnection";
        let static_ifupdown = "auto ens192\niface ens192 inet static\n  address 192.0.2.7/24\n  gateway 192.0.2.1\n  dns-nameservers 192.0.2.53\n";
        let mut files = debian(static_ifupdown);
        files.push(file(nm, Format::NmKeyfile, keyfile));
        let nics = [nic(MAC, Some(NEW), None)];
        let d = run(&files, NetworkMode::KeepNames, &nics).unwrap();
        assert_eq!(
            write(&d, "/etc/systemd/network/10-h2k-ens192.link").text,
            render_link(&LinkMatch::Mac(NEW.into()), "ens192")
        );
        let nm_write = write(&d, nm);
        assert_eq!(
            nm_write.text,
            keyfile.replace("00:50:56:9A:12:34", "52:54:00:12:34:56")
        );
        assert!(nm_write.note.contains(&format!("MAC {MAC} → {NEW}")));
        assert!(
            !d.writes.iter().any(|w| w.path == INTERFACES),
            "static config untouched"
        );
        assert!(
            d.outcomes[0].contains(&format!("→ ens192 ({NEW}), static")),
            "{:?}",
            d.outcomes
        );
        assert_eq!(d.nics[0].mac.as_deref(), Some(NEW));
        assert_idempotent(&files, NetworkMode::KeepNames, &nics);
    }

    #[test]
    fn keep_names_without_a_mac_uses_the_virtio_driver_when_unambiguous() {
        let files = vec![file(INTERFACES, Format::Ifupdown, DHCP)];
        let d = run(&files, NetworkMode::KeepNames, &[]).unwrap();
        assert_eq!(
            write(&d, "/etc/systemd/network/10-h2k-ens192.link").text,
            render_link(&LinkMatch::VirtioDriver, "ens192")
        );
        assert!(d.outcomes[0].contains("ens192 (MAC unknown) → ens192 (the virtio NIC)"));
        assert_eq!(d.nics[0].mac, None);
        assert_idempotent(&files, NetworkMode::KeepNames, &[]);
        // One NIC in the plan with its KVM MAC: matched by that MAC instead.
        let one = [nic("00:50:56:00:00:09", Some(NEW), None)];
        let d = run(&files, NetworkMode::KeepNames, &one).unwrap();
        assert_eq!(
            write(&d, "/etc/systemd/network/10-h2k-ens192.link").text,
            render_link(&LinkMatch::Mac(NEW.into()), "ens192")
        );
    }

    #[test]
    fn keep_names_warns_when_it_cannot_be_unambiguous() {
        let two = "auto ens192 ens224\niface ens192 inet dhcp\niface ens224 inet dhcp\n";
        let files = vec![file(INTERFACES, Format::Ifupdown, two)];
        let d = run(&files, NetworkMode::KeepNames, &[]).unwrap();
        assert!(d.writes.is_empty(), "{:?}", d.writes);
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("ens192 has no MAC recorded"));
        // One NIC in the plan but no MAC for the interface: still ambiguous with two NICs.
        let one = vec![file(INTERFACES, Format::Ifupdown, DHCP)];
        let d = run(
            &one,
            NetworkMode::KeepNames,
            &[
                nic("00:50:56:00:00:01", None, None),
                nic("00:50:56:00:00:02", None, None),
            ],
        )
        .unwrap();
        assert!(d.writes.is_empty());
        assert!(
            d.warnings[0].contains("(2 in the plan)"),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn keep_names_replaces_vmware_link_pins_and_keeps_its_own() {
        let old_link = "/etc/systemd/network/50-vmware.link";
        let own = "/etc/systemd/network/10-h2k-ens192.link";
        let files = vec![
            file(INTERFACES, Format::Ifupdown, DHCP),
            file(
                old_link,
                Format::NetworkdLink,
                "[Match]\nMACAddress=00:50:56:01:02:03\n\n[Link]\nName=ens192\n",
            ),
            file(
                own,
                Format::NetworkdLink,
                &render_link(&LinkMatch::Mac("00:50:56:01:02:03".into()), "ens192"),
            ),
            file(
                "/etc/systemd/network/11-h2k-ens192-virtio.link",
                Format::NetworkdLink,
                &render_link(&LinkMatch::VirtioDriver, "ens192"),
            ),
        ];
        let d = run(&files, NetworkMode::KeepNames, &[]).unwrap();
        assert_eq!(d.removals.len(), 1);
        assert_eq!(d.removals[0].path, old_link);
        assert!(
            d.writes.is_empty(),
            "own link already right: {:?}",
            d.writes
        );
    }

    #[test]
    fn keep_names_ifcfg_hwaddr_uppercase_and_netplan_macaddress_follow_the_new_mac() {
        let ifcfg = "DEVICE=ens192\nHWADDR=00:50:56:9A:12:34\nBOOTPROTO=static\nIPADDR=192.0.2.9\nPREFIX=24\n";
        let netplan = "network:\n  ethernets:\n    lan:\n      match:\n        macaddress: 00:50:56:9a:12:34\n      set-name: ens192\n      dhcp4: true\n";
        let files = vec![
            file(
                "/etc/sysconfig/network-scripts/ifcfg-ens192",
                Format::Ifcfg,
                ifcfg,
            ),
            file("/etc/netplan/50-lan.yaml", Format::Netplan, netplan),
        ];
        let nics = [nic(MAC, Some(NEW), None)];
        let d = run(&files, NetworkMode::KeepNames, &nics).unwrap();
        assert_eq!(
            write(&d, "/etc/sysconfig/network-scripts/ifcfg-ens192").text,
            "DEVICE=ens192\nHWADDR=52:54:00:12:34:56\nBOOTPROTO=static\nIPADDR=192.0.2.9\nPREFIX=24\n"
        );
        assert!(write(&d, "/etc/netplan/50-lan.yaml")
            .text
            .contains("macaddress: 52:54:00:12:34:56"));
        assert!(
            !d.writes.iter().any(|w| w.path.contains("virtio")),
            "a new MAC given: no fallback"
        );
        assert_idempotent(&files, NetworkMode::KeepNames, &nics);
        // The MAC kept (no target): nothing but the .link files.
        let d = run(&files, NetworkMode::KeepNames, &[]).unwrap();
        assert!(
            d.writes.iter().all(|w| w.path.ends_with(".link")),
            "{:?}",
            d.writes
        );
        assert_idempotent(&files, NetworkMode::KeepNames, &[]);
    }

    #[test]
    fn unknown_nic_mac_warns() {
        let files = debian(DHCP);
        let d = run(
            &files,
            NetworkMode::KeepNames,
            &[nic("00:50:56:00:00:77", Some(NEW), None)],
        )
        .unwrap();
        assert!(
            d.warnings.iter().any(|w| w.contains("00:50:56:00:00:77")),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn rename_rewrites_names_everywhere_and_removes_the_pins() {
        let text = "auto ens192\niface ens192 inet static\n  address 192.0.2.7/24\n\
                    auto ens192.100\niface ens192.100 inet manual\n  vlan-raw-device ens192\n";
        let files = debian(text);
        let nics = [nic(MAC, None, Some("enp1s0"))];
        let d = run(&files, NetworkMode::Rename, &nics).unwrap();
        assert_eq!(
            write(&d, INTERFACES).text,
            "auto enp1s0\niface enp1s0 inet static\n  address 192.0.2.7/24\n\
             auto enp1s0.100\niface enp1s0.100 inet manual\n  vlan-raw-device enp1s0\n"
        );
        assert!(!write(&d, UDEV).text.contains("ens192"));
        assert!(!d.writes.iter().any(|w| w.path.ends_with(".link")));
        assert!(
            d.outcomes[0].contains(&format!(
                "ens192 ({MAC}) → enp1s0 ({MAC}), static: configuration renamed in {INTERFACES}"
            )),
            "{:?}",
            d.outcomes
        );
        assert_idempotent(&files, NetworkMode::Rename, &nics);
    }

    #[test]
    fn rename_without_a_target_name_is_a_clear_error() {
        let files = debian(DHCP);
        let err = run(&files, NetworkMode::Rename, &[]).unwrap_err();
        assert!(
            err.contains(&format!("no new name for ens192 ({MAC})")),
            "{err}"
        );
        assert!(err.contains("--nic OLD_MAC=NEW_MAC,name=NEWNAME"), "{err}");
    }

    #[test]
    fn rename_can_swap_two_names_and_refuses_a_clash() {
        let text = "iface eth0 inet dhcp\n  hwaddress 00:50:56:00:00:01\niface eth1 inet static\n  hwaddress 00:50:56:00:00:02\n";
        let files = vec![file(INTERFACES, Format::Ifupdown, text)];
        let nics = [
            nic("00:50:56:00:00:01", None, Some("eth1")),
            nic("00:50:56:00:00:02", None, Some("eth0")),
        ];
        let d = run(&files, NetworkMode::Rename, &nics).unwrap();
        assert_eq!(
            write(&d, INTERFACES).text,
            "iface eth1 inet dhcp\n  hwaddress 00:50:56:00:00:01\niface eth0 inet static\n  hwaddress 00:50:56:00:00:02\n"
        );
        let clash = "iface eth0 inet dhcp\n  hwaddress 00:50:56:00:00:01\niface bond0 inet dhcp\n  bond-slaves none\n";
        let files = vec![file(INTERFACES, Format::Ifupdown, clash)];
        let err = run(
            &files,
            NetworkMode::Rename,
            &[nic("00:50:56:00:00:01", None, Some("bond0"))],
        )
        .unwrap_err();
        assert!(err.contains("already configures bond0"), "{err}");
    }

    #[test]
    fn leave_changes_nothing_and_warns_about_lost_names() {
        let files = vec![file(INTERFACES, Format::Ifupdown, DHCP)];
        let d = run(&files, NetworkMode::Leave, &[]).unwrap();
        assert!(d.writes.is_empty() && d.removals.is_empty());
        assert!(
            d.warnings[0].contains("ens192 is a VMware PCI slot name and nothing pins it"),
            "{:?}",
            d.warnings
        );
        let pinned = debian(DHCP);
        let d = run(&pinned, NetworkMode::Leave, &[]).unwrap();
        assert!(
            d.warnings.is_empty(),
            "MAC kept: the pin still holds: {:?}",
            d.warnings
        );
        let d = run(&pinned, NetworkMode::Leave, &[nic(MAC, Some(NEW), None)]).unwrap();
        assert!(d.writes.is_empty());
        assert!(
            d.warnings[0].contains(&format!(
                "pinned to MAC {MAC} by {UDEV}, but the NIC gets {NEW}"
            )),
            "{:?}",
            d.warnings
        );
        let eth0 = vec![file(
            INTERFACES,
            Format::Ifupdown,
            "auto eth0\niface eth0 inet dhcp\n",
        )];
        assert!(run(&eth0, NetworkMode::Leave, &[])
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn no_network_configuration_still_drops_vmware_pins() {
        let files = vec![debian(DHCP).remove(1)];
        let d = run(&files, NetworkMode::KeepNames, &[]).unwrap();
        assert!(
            d.outcomes.iter().all(|o| o.starts_with("removed")),
            "{:?}",
            d.outcomes
        );
        assert!(!write(&d, UDEV).text.contains("00:50:56"));
    }
}
