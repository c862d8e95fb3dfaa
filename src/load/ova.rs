//! OVA packages, read in place: the tar's members are located (never unpacked), the OVF
//! descriptor parsed ([`super::ovf`]), and a plan naming an OVA expanded to one disk per
//! VMDK of the package, in the descriptor's order, with the VM's hardware filled in where the
//! manifest gave none.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ovf::{self, Descriptor, OvfHardware};
use super::{policy, LoadError};
use crate::plan::{normalize_mac, DiskType, NicPlan, Plan};

/// A tar with more members than this is not an export.
const MAX_MEMBERS: usize = 10_000;
/// A VM with more disks than this is not a real export (as for manifests).
const MAX_DISKS: usize = crate::manifest::MAX_DISKS;

/// A regular file inside an OVA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaMember {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// The regular-file members of a tar, in archive order; None when `path` is not a tar.
fn members(path: &Path) -> Option<Vec<OvaMember>> {
    // Non-blocking, regular files only: a FIFO must not hang here.
    let mut f = policy::open_source(path).ok()?;
    let mut head = [0u8; 512];
    if f.read_exact(&mut head).is_err() || &head[257..262] != b"ustar" {
        return None;
    }
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut archive = tar::Archive::new(f);
    let entries = archive.entries().ok()?;
    Some(
        entries
            .take(MAX_MEMBERS)
            .flatten()
            .filter(|e| e.header().entry_type().is_file())
            .filter_map(|e| {
                Some(OvaMember {
                    name: e.path().ok()?.to_string_lossy().into_owned(),
                    offset: e.raw_file_position(),
                    size: e.size(),
                })
            })
            .collect(),
    )
}

fn is_vmdk(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".vmdk")
}

/// The `.vmdk` members of a tar (OVA) file, in archive order; empty when it is not a tar.
pub fn ova_disks(path: &Path) -> Vec<OvaMember> {
    members(path)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| is_vmdk(&m.name))
        .collect()
}

/// The member called `name` (as the descriptor or the plan names it; a leading `./` is
/// ignored on either side).
pub fn member(path: &Path, name: &str) -> Result<OvaMember, LoadError> {
    let strip = |s: &str| s.trim_start_matches("./").to_string();
    members(path)
        .ok_or_else(|| LoadError::Format {
            path: path.display().to_string(),
            reason: "not an OVA (tar) package".into(),
        })?
        .into_iter()
        .find(|m| strip(&m.name) == strip(name))
        .ok_or_else(|| LoadError::Format {
            path: path.display().to_string(),
            reason: format!("no member {name:?} in the package"),
        })
}

/// What an OVA holds.
#[derive(Debug, Clone)]
pub struct OvaPackage {
    /// The descriptor's member name and what it says (None: the package has no `.ovf`).
    pub ovf: Option<(String, Descriptor)>,
    /// The disks to convert, boot disk first: the descriptor's order (archive order without
    /// a descriptor, or when it lists no disk).
    pub disks: Vec<OvaMember>,
    pub warnings: Vec<String>,
}

/// Read the package at `path`; None when it is not an OVA (not a tar, or no `.vmdk` in it:
/// LOAD then refuses it by what it is).
pub fn open(path: &Path) -> Result<Option<OvaPackage>, LoadError> {
    let Some(all) = members(path) else {
        return Ok(None);
    };
    let vmdks: Vec<&OvaMember> = all.iter().filter(|m| is_vmdk(&m.name)).collect();
    if vmdks.is_empty() {
        return Ok(None);
    }
    let fail = |reason: String| LoadError::Format {
        path: path.display().to_string(),
        reason,
    };
    let mut warnings = Vec::new();
    // The OVF standard puts the descriptor first; take the first `.ovf` wherever it is.
    let Some(desc_member) = all
        .iter()
        .find(|m| m.name.to_ascii_lowercase().ends_with(".ovf"))
    else {
        return Ok(Some(OvaPackage {
            ovf: None,
            disks: vmdks.into_iter().cloned().collect(),
            warnings,
        }));
    };
    let desc_name = desc_member.name.clone();
    if desc_member.size > ovf::MAX_OVF_BYTES {
        return Err(fail(format!(
            "{desc_name}: {} bytes is too large for an OVF descriptor (at most {} MiB)",
            desc_member.size,
            ovf::MAX_OVF_BYTES >> 20
        )));
    }
    let text = read_member(path, desc_member).map_err(|e| fail(format!("{desc_name}: {e}")))?;
    let descriptor = ovf::parse(&text).map_err(|e| fail(format!("{desc_name}: {e}")))?;
    warnings.extend(
        descriptor
            .warnings
            .iter()
            .map(|w| format!("{desc_name}: {w}")),
    );
    let mut disks = Vec::new();
    for d in &descriptor.disks {
        if !is_vmdk(&d.href) {
            return Err(fail(format!(
                "{desc_name}: disk {} is {:?}; only VMDK disks are read in place",
                d.disk_id, d.href
            )));
        }
        let found = all
            .iter()
            .find(|m| m.name.trim_start_matches("./") == d.href.trim_start_matches("./"))
            .ok_or_else(|| {
                fail(format!(
                    "{desc_name}: disk {} names {:?}, which is not in the package",
                    d.disk_id, d.href
                ))
            })?;
        disks.push(found.clone());
    }
    if disks.is_empty() {
        warnings.push(format!(
            "{desc_name} lists no disk: the .vmdk members are read in archive order"
        ));
        disks = vmdks.into_iter().cloned().collect();
    } else {
        for m in vmdks.into_iter().filter(|m| !disks.contains(m)) {
            warnings.push(format!(
                "{} is not a disk of {desc_name}: not converted",
                m.name
            ));
        }
    }
    Ok(Some(OvaPackage {
        ovf: Some((desc_name, descriptor)),
        disks,
        warnings,
    }))
}

/// A member's bytes as UTF-8 text (its size was capped by the caller).
fn read_member(path: &Path, m: &OvaMember) -> Result<String, String> {
    let mut f = policy::open_source(path).map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(m.offset))
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(m.size as usize);
    f.take(m.size)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 != m.size {
        return Err("cut short (the OVA is truncated)".into());
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `/out/vm.qcow2`, 2 → `/out/vm-disk2.qcow2`.
fn sibling_output(first: &Path, n: usize) -> PathBuf {
    let stem = first
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let name = match first.extension() {
        Some(ext) => format!("{stem}-disk{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-disk{n}"),
    };
    first.with_file_name(name)
}

/// The plan with every OVA disk entry replaced by one entry per disk of the package (in the
/// descriptor's order; the first keeps the entry's id and output, the others get
/// `ID-diskN` and `OUTPUT-diskN.EXT`), and the descriptor's hardware where the plan has none.
/// None when the plan names no OVA.
pub fn expand_plan(plan: &Plan) -> Result<Option<Plan>, LoadError> {
    let mut out = plan.clone();
    out.disks.clear();
    let mut found_ova = false;
    let mut hardware: Option<(String, OvfHardware)> = None;
    for d in &plan.disks {
        let is_nbd = d.source.starts_with("nbd");
        let package = match (&d.ova_member, is_nbd) {
            (None, false) => open(Path::new(&d.source))?,
            _ => None,
        };
        let Some(package) = package else {
            out.disks.push(d.clone());
            continue;
        };
        found_ova = true;
        out.warnings.extend(
            package
                .warnings
                .iter()
                .map(|w| format!("{}: {w}", d.source)),
        );
        for (k, m) in package.disks.iter().enumerate() {
            let mut entry = d.clone();
            entry.ova_member = Some(m.name.clone());
            if k > 0 {
                entry.id = format!("{}-disk{}", d.id, k + 1);
                entry.output = sibling_output(&d.output, k + 1);
                // The checksum and size are the OVA's: checked once, with the first disk.
                entry.checksum = None;
                entry.bytes = None;
                entry.boot_order_hint = None;
                entry.disk_type = DiskType::Unknown;
            }
            out.disks.push(entry);
        }
        if let (None, Some((name, desc))) = (&hardware, &package.ovf) {
            hardware = Some((format!("{}: {name}", d.source), desc.hardware.clone()));
        }
    }
    if !found_ova {
        return Ok(None);
    }
    if out.disks.len() > MAX_DISKS {
        return Err(LoadError::Format {
            path: plan.disks[0].source.clone(),
            reason: format!("{} disks (at most {MAX_DISKS})", out.disks.len()),
        });
    }
    for (i, d) in out.disks.iter().enumerate() {
        if let Some(other) = out.disks[..i].iter().find(|o| o.output == d.output) {
            return Err(LoadError::Format {
                path: d.source.clone(),
                reason: format!(
                    "disk {} would be written to {}, the output of disk {}",
                    d.id,
                    d.output.display(),
                    other.id
                ),
            });
        }
    }
    if let Some((from, hw)) = hardware {
        apply_hardware(&mut out, &from, hw);
    }
    Ok(Some(out))
}

/// The descriptor's facts, where the plan has none. NICs: when the manifest lists none, the
/// OVF's (in its order) become the VM's and the network step's, each keeping a `--nic`
/// entry given for its MAC.
pub fn apply_hardware(plan: &mut Plan, from: &str, hw: OvfHardware) {
    let vm = &mut plan.vm;
    let before = (
        vm.name.clone(),
        vm.cpu,
        vm.mem_gb,
        vm.firmware,
        vm.nics.len(),
    );
    if vm.name.is_none() {
        vm.name = hw.name;
    }
    vm.cpu = vm.cpu.or(hw.cpus);
    vm.mem_gb = vm.mem_gb.or(hw.memory_mib.map(|m| m as f64 / 1024.0));
    vm.firmware = vm.firmware.or(hw.firmware);
    if vm.nics.is_empty() && !hw.nics.is_empty() {
        vm.nics = hw
            .nics
            .iter()
            .map(|n| NicPlan {
                mac: n.mac.clone(),
                network: n.network.clone(),
                ..NicPlan::default()
            })
            .collect();
        let mut given = std::mem::take(&mut plan.fix.nics);
        for nic in &vm.nics {
            let same = |g: &NicPlan| {
                nic.mac.is_some() && g.mac.as_deref().and_then(normalize_mac) == nic.mac
            };
            match given.iter().position(same) {
                Some(i) => {
                    let mut g = given.remove(i);
                    g.network = g.network.or(nic.network.clone());
                    plan.fix.nics.push(g);
                }
                None => plan.fix.nics.push(nic.clone()),
            }
        }
        plan.fix.nics.extend(given);
    }
    let vm = &plan.vm;
    let after = (
        vm.name.clone(),
        vm.cpu,
        vm.mem_gb,
        vm.firmware,
        vm.nics.len(),
    );
    if before != after {
        plan.vm.hardware_from = Some(from.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Firmware;
    use std::fs::File;

    /// A tar of `(name, bytes)` members at `path`.
    pub(crate) fn tar(path: &Path, members: &[(&str, &[u8])]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
    }

    fn ovf() -> String {
        super::super::ovf::tests::OVFTOOL.to_string()
    }

    #[test]
    fn disks_come_in_descriptor_order_and_strays_are_noted() {
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("web01.ova");
        let text = ovf();
        tar(
            &ova,
            &[
                ("web01.ovf", text.as_bytes()),
                ("web01-disk2.vmdk", b"two"),
                ("stray.vmdk", b"x"),
                ("web01-disk1.vmdk", b"one!"),
            ],
        );
        let p = open(&ova).unwrap().unwrap();
        let names: Vec<&str> = p.disks.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["web01-disk1.vmdk", "web01-disk2.vmdk"]);
        assert_eq!(p.disks[0].size, 4);
        assert_eq!(
            p.warnings,
            ["stray.vmdk is not a disk of web01.ovf: not converted"]
        );
        assert_eq!(p.ovf.as_ref().unwrap().1.hardware.cpus, Some(2));
        assert_eq!(member(&ova, "./web01-disk2.vmdk").unwrap().size, 3);
        let e = member(&ova, "nope.vmdk").unwrap_err().to_string();
        assert!(
            e.ends_with("web01.ova: no member \"nope.vmdk\" in the package"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_disk_or_a_bad_descriptor_names_the_ova_and_the_element() {
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("web01.ova");
        let text = ovf();
        tar(
            &ova,
            &[("web01.ovf", text.as_bytes()), ("web01-disk1.vmdk", b"one")],
        );
        let e = open(&ova).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: web01.ovf: disk vmdisk2 names \"web01-disk2.vmdk\", which is not in the package",
                ova.display()
            )
        );
        let bad = text.replace("<rasd:VirtualQuantity>2<", "<rasd:VirtualQuantity>lots<");
        tar(
            &ova,
            &[("web01.ovf", bad.as_bytes()), ("web01-disk1.vmdk", b"one")],
        );
        let e = open(&ova).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: web01.ovf: VirtualHardwareSection/Item[1]/VirtualQuantity: \"lots\" is not a number",
                ova.display()
            )
        );
        tar(&ova, &[("web01.ovf", b"\xff\xfe<"), ("a.vmdk", b"one")]);
        let e = open(&ova).unwrap_err().to_string();
        assert!(
            e.ends_with("web01.ovf: not UTF-8 text (invalid byte at 0)"),
            "{e}"
        );
        // No .vmdk: not an OVA (LOAD names the tar); not a tar at all: not an OVA either.
        tar(&ova, &[("web01.ovf", text.as_bytes())]);
        assert!(open(&ova).unwrap().is_none());
        std::fs::write(&ova, vec![0u8; 4096]).unwrap();
        assert!(open(&ova).unwrap().is_none());
    }

    #[test]
    fn a_plan_naming_an_ova_gets_every_disk_and_the_hardware() {
        let dir = tempfile::tempdir().unwrap();
        let ova = dir.path().join("web01.ova");
        let text = ovf();
        tar(
            &ova,
            &[
                ("web01.ovf", text.as_bytes()),
                ("web01-disk2.vmdk", b"two"),
                ("web01-disk1.vmdk", b"one"),
            ],
        );
        let mut plan = Plan::for_single_disk(
            ova.to_str().unwrap(),
            None,
            dir.path().join("out/web.qcow2"),
        );
        plan.disks[0].checksum = Some("sha256:00".into());
        plan.fix.nics = vec![NicPlan::parse_flag("00:50:56:ab:cd:02=52:54:00:00:00:02").unwrap()];
        let p = expand_plan(&plan).unwrap().unwrap();
        assert_eq!(p.disks.len(), 2);
        assert_eq!(p.disks[0].ova_member.as_deref(), Some("web01-disk1.vmdk"));
        assert_eq!(p.disks[0].output, dir.path().join("out/web.qcow2"));
        assert_eq!(p.disks[0].checksum.as_deref(), Some("sha256:00"));
        assert_eq!(p.disks[1].ova_member.as_deref(), Some("web01-disk2.vmdk"));
        assert_eq!(p.disks[1].id, "web-disk2");
        assert_eq!(p.disks[1].output, dir.path().join("out/web-disk2.qcow2"));
        assert_eq!(p.disks[1].checksum, None);
        assert_eq!(p.vm.cpu, Some(2));
        assert_eq!(p.vm.memory_mib(), Some(1536));
        assert_eq!(p.vm.firmware, Some(Firmware::Uefi));
        assert_eq!(p.vm.name.as_deref(), Some("web01 & co"));
        assert_eq!(
            p.vm.hardware_from,
            Some(format!("{}: web01.ovf", ova.display()))
        );
        // The OVF's NICs in its order; the --nic given for the second keeps its target.
        let macs: Vec<(Option<&str>, Option<&str>)> = p
            .fix
            .nics
            .iter()
            .map(|n| (n.mac.as_deref(), n.target_mac.as_deref()))
            .collect();
        assert_eq!(
            macs,
            [
                (Some("00:50:56:ab:cd:01"), None),
                (Some("00:50:56:ab:cd:02"), Some("52:54:00:00:00:02")),
            ]
        );
        assert_eq!(p.fix.nics[1].network.as_deref(), Some("Backup"));
        // Manifest facts win; an expanded plan expands to itself.
        plan.vm.cpu = Some(8);
        plan.vm.firmware = Some(Firmware::Bios);
        let p = expand_plan(&plan).unwrap().unwrap();
        assert_eq!((p.vm.cpu, p.vm.firmware), (Some(8), Some(Firmware::Bios)));
        assert_eq!(expand_plan(&p).unwrap(), None);
        // Not an OVA: nothing to do.
        let plain = Plan::for_single_disk("/src/x.vmdk", None, PathBuf::from("/o/x.qcow2"));
        assert_eq!(expand_plan(&plain).unwrap(), None);
    }

    #[test]
    fn sibling_outputs_keep_the_extension() {
        assert_eq!(
            sibling_output(Path::new("/o/vm.qcow2"), 2),
            PathBuf::from("/o/vm-disk2.qcow2")
        );
        assert_eq!(
            sibling_output(Path::new("/o/vm"), 3),
            PathBuf::from("/o/vm-disk3")
        );
    }
}
