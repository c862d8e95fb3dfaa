//! The OVF descriptor of an OVA, read: which disks the VM has and in which order, and its
//! hardware (CPUs, memory, firmware, NICs with their MACs). Pure: text in, facts out.
//!
//! The descriptor is untrusted input. Its size is capped before it is read
//! ([`MAX_OVF_BYTES`]), a DTD is refused (so no entity, internal or external, is ever
//! expanded), the node count is capped, and every error names the element at fault
//! (`VirtualHardwareSection/Item[2]/VirtualQuantity: …`). Elements and attributes are matched
//! by local name, so OVF 1.x (`ovf:`/`rasd:`) and 2.0 (`sasd:`/`epasd:`) read alike, and
//! VMware's `vmw:Config` is found whatever its prefix.

use roxmltree::{Document, Node, ParsingOptions};
use serde::Serialize;

use crate::plan::{normalize_mac, Firmware};

/// An ovftool descriptor is 10-100 KiB; anything this large is not one.
pub const MAX_OVF_BYTES: u64 = 4 << 20;
/// Elements, attributes and text nodes together.
const MAX_NODES: u32 = 200_000;
/// VMware allows 10 NICs and 60 disks per VM.
const MAX_NICS: usize = 64;
const MAX_DISKS: usize = 64;
/// Values quoted in messages are cut here.
const QUOTE_CHARS: usize = 60;

/// `ELEMENT: MESSAGE`, one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{element}: {message}")]
pub struct OvfError {
    /// Where: `References/File[2]`, `VirtualHardwareSection/Item[4]/VirtualQuantity`, `XML`.
    pub element: String,
    pub message: String,
}

fn err(element: impl Into<String>, message: impl Into<String>) -> OvfError {
    let one_line = |s: String| s.replace(['\n', '\r'], " ");
    OvfError {
        element: one_line(element.into()),
        message: one_line(message.into()),
    }
}

/// The VM's hardware as the OVF describes it; absent facts stay `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct OvfHardware {
    /// `VirtualSystem/Name` (else its `ovf:id`).
    pub name: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub firmware: Option<Firmware>,
    /// Ethernet items in document order.
    pub nics: Vec<OvfNic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct OvfNic {
    /// Normalized (`00:50:56:aa:bb:cc`) when the OVF records one.
    pub mac: Option<String>,
    /// `Connection`: the VMware network it was on.
    pub network: Option<String>,
    /// `ResourceSubType`: VmxNet3, E1000, …
    pub model: Option<String>,
}

/// One disk with content: the file in the package that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OvfDisk {
    /// `DiskSection/Disk/@diskId` (or the file id when an item names the file directly).
    pub disk_id: String,
    /// `References/File/@href`: the tar member's name.
    pub href: String,
    /// `capacity` × `capacityAllocationUnits`, when given.
    pub capacity_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Descriptor {
    pub hardware: OvfHardware,
    /// Boot disk first: the disk items of the hardware section in document order, then disks
    /// of the DiskSection no item names; without either, the References' `.vmdk` files.
    pub disks: Vec<OvfDisk>,
    /// Things skipped (blank disks, a second hardware section, …), one line each.
    pub warnings: Vec<String>,
}

/// Parse a descriptor.
pub fn parse(text: &str) -> Result<Descriptor, OvfError> {
    if text.len() as u64 > MAX_OVF_BYTES {
        return Err(err(
            "XML",
            format!("larger than {} MiB", MAX_OVF_BYTES >> 20),
        ));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options)
        .map_err(|e| err("XML", format!("not a well-formed OVF descriptor: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Envelope" {
        return Err(err(
            root.tag_name().name(),
            "the root element is not an OVF Envelope",
        ));
    }
    let mut out = Descriptor::default();
    if let Some(collection) = child(root, "VirtualSystemCollection") {
        let systems = collection
            .descendants()
            .filter(|n| is(n, "VirtualSystem"))
            .count();
        return Err(err(
            "VirtualSystemCollection",
            format!(
                "a vApp of {systems} virtual systems; h2k-guest converts one VM per OVA (export each VM on its own)"
            ),
        ));
    }
    let files = references(root)?;
    let disks = disk_section(root, &files)?;
    let system = child(root, "VirtualSystem");
    let mut used = Vec::new();
    if let Some(system) = system {
        out.hardware.name = child(system, "Name")
            .and_then(|n| n.text())
            .or_else(|| attr(system, "id"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control));
        let sections: Vec<Node> = children(system, "VirtualHardwareSection").collect();
        if let Some(first) = sections.first() {
            if sections.len() > 1 {
                out.warnings.push(format!(
                    "{} VirtualHardwareSection elements: the first one is read",
                    sections.len()
                ));
            }
            hardware(*first, &files, &disks, &mut out, &mut used)?;
        }
    }
    // Disks the hardware section does not attach (or a descriptor without one).
    for d in &disks {
        if used.contains(&d.disk_id) {
            continue;
        }
        match &d.href {
            Some(href) => {
                if system.is_some() {
                    out.warnings.push(format!(
                        "disk {} ({href}) is attached to no hardware item: added after the others",
                        d.disk_id
                    ));
                }
                push_disk(&mut out.disks, &d.disk_id, href, d.capacity_bytes)?;
            }
            None => out.warnings.push(blank(d)),
        }
    }
    if disks.is_empty() && out.disks.is_empty() {
        for f in &files {
            if f.href.to_ascii_lowercase().ends_with(".vmdk") {
                push_disk(&mut out.disks, &f.id, &f.href, None)?;
            }
        }
    }
    Ok(out)
}

fn blank(d: &SectionDisk) -> String {
    format!(
        "disk {} has no file (a blank disk{}): not converted",
        d.disk_id,
        d.capacity_bytes
            .map(|b| format!(" of {:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default()
    )
}

fn push_disk(
    disks: &mut Vec<OvfDisk>,
    id: &str,
    href: &str,
    capacity_bytes: Option<u64>,
) -> Result<(), OvfError> {
    if disks.len() >= MAX_DISKS {
        return Err(err("DiskSection", format!("more than {MAX_DISKS} disks")));
    }
    if disks.iter().any(|d| d.href == href) {
        return Err(err(
            "References",
            format!("{} holds two disks", quote(href)),
        ));
    }
    disks.push(OvfDisk {
        disk_id: id.to_string(),
        href: href.to_string(),
        capacity_bytes,
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Navigation by local name

fn is(n: &Node, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name
}

fn children<'a, 'i>(n: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(move |c| is(c, name))
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &'static str) -> Option<Node<'a, 'i>> {
    children(n, name).next()
}

/// An attribute by local name, whatever its namespace (`ovf:href`, `vmw:key`, `key`).
fn attr<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.attributes().find(|a| a.name() == name).map(|a| a.value())
}

/// The trimmed text of the child element `name`, when present and not empty.
fn child_text<'a>(n: Node<'a, '_>, name: &'static str) -> Option<&'a str> {
    child(n, name)
        .and_then(|c| c.text())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn quote(s: &str) -> String {
    if s.chars().count() > QUOTE_CHARS {
        let head: String = s.chars().take(QUOTE_CHARS).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// References and DiskSection

struct FileRef {
    id: String,
    href: String,
}

fn references(root: Node) -> Result<Vec<FileRef>, OvfError> {
    let Some(refs) = child(root, "References") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<FileRef> = Vec::new();
    for (i, f) in children(refs, "File").enumerate() {
        let at = format!("References/File[{}]", i + 1);
        let id = attr(f, "id").ok_or_else(|| err(&at, "no ovf:id"))?;
        let href = attr(f, "href").ok_or_else(|| err(&at, "no ovf:href"))?;
        check_href(&at, href)?;
        if let Some(c) = attr(f, "compression").filter(|c| !c.is_empty() && *c != "identity") {
            return Err(err(
                &at,
                format!(
                    "{} is {c}-compressed; a compressed disk cannot be read in place (unpack the OVA and convert the VMDK)",
                    quote(href)
                ),
            ));
        }
        if attr(f, "chunkSize").is_some() {
            return Err(err(
                &at,
                format!(
                    "{} is split into chunks; a chunked disk cannot be read in place",
                    quote(href)
                ),
            ));
        }
        if out.iter().any(|o| o.id == id) {
            return Err(err(&at, format!("duplicate ovf:id {}", quote(id))));
        }
        if out.len() >= 4 * MAX_DISKS {
            return Err(err("References", "too many files"));
        }
        out.push(FileRef {
            id: id.to_string(),
            href: href.to_string(),
        });
    }
    Ok(out)
}

/// A member of the package, by a relative name: no URL, no absolute path, no `..`.
fn check_href(at: &str, href: &str) -> Result<(), OvfError> {
    let bad = |why: &str| Err(err(at, format!("ovf:href {} {why}", quote(href))));
    if href.is_empty() {
        return bad("is empty");
    }
    if href.contains("://") {
        return bad("is a URL; only files inside the OVA are read");
    }
    if href.starts_with('/') || href.split('/').any(|c| c == "..") {
        return bad("leaves the package");
    }
    if href.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

struct SectionDisk {
    disk_id: String,
    /// None: a blank disk (no file).
    href: Option<String>,
    capacity_bytes: Option<u64>,
}

fn disk_section(root: Node, files: &[FileRef]) -> Result<Vec<SectionDisk>, OvfError> {
    let Some(section) = child(root, "DiskSection") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<SectionDisk> = Vec::new();
    for (i, d) in children(section, "Disk").enumerate() {
        let at = format!("DiskSection/Disk[{}]", i + 1);
        let id = attr(d, "diskId").ok_or_else(|| err(&at, "no ovf:diskId"))?;
        if out.iter().any(|o| o.disk_id == id) {
            return Err(err(&at, format!("duplicate ovf:diskId {}", quote(id))));
        }
        let href = match attr(d, "fileRef") {
            None => None,
            Some(r) => Some(
                files
                    .iter()
                    .find(|f| f.id == r)
                    .map(|f| f.href.clone())
                    .ok_or_else(|| {
                        err(
                            &at,
                            format!("ovf:fileRef {} names no References/File", quote(r)),
                        )
                    })?,
            ),
        };
        let capacity_bytes = match attr(d, "capacity") {
            None => None,
            Some(c) => {
                let n: u64 = c.trim().parse().map_err(|_| {
                    err(
                        format!("{at}/@capacity"),
                        format!("{} is not a number", quote(c)),
                    )
                })?;
                let units = attr(d, "capacityAllocationUnits").unwrap_or("byte");
                let factor = units_factor(units).ok_or_else(|| {
                    err(
                        format!("{at}/@capacityAllocationUnits"),
                        format!("{} is not a unit of bytes", quote(units)),
                    )
                })?;
                Some(n.checked_mul(factor).ok_or_else(|| {
                    err(
                        format!("{at}/@capacity"),
                        format!("{c} {units} is too large"),
                    )
                })?)
            }
        };
        if out.len() >= 4 * MAX_DISKS {
            return Err(err("DiskSection", "too many disks"));
        }
        out.push(SectionDisk {
            disk_id: id.to_string(),
            href,
            capacity_bytes,
        });
    }
    Ok(out)
}

/// Bytes per unit: `byte`, `byte * 2^20`, `byte * 10^9`, `KiloBytes`/`MegaBytes`/`GigaBytes`
/// (and their `KB`/`MB`/`GB` short forms, binary as VMware means them).
pub fn units_factor(units: &str) -> Option<u64> {
    let s: String = units
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let named = match s.as_str() {
        "byte" | "bytes" | "b" => Some(1),
        "kilobyte" | "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabyte" | "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabyte" | "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabyte" | "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let rest = s
        .strip_prefix("bytes*")
        .or_else(|| s.strip_prefix("byte*"))?;
    let (base, exp) = rest.split_once('^')?;
    let base: u64 = match base {
        "2" => 2,
        "10" => 10,
        _ => return None,
    };
    let exp: u32 = exp.parse().ok()?;
    base.checked_pow(exp).filter(|_| exp <= 60)
}

// ---------------------------------------------------------------------------------------------
// VirtualHardwareSection

/// DMTF CIM resource types (`rasd:ResourceType`).
const PROCESSOR: u32 = 3;
const MEMORY: u32 = 4;
const ETHERNET: u32 = 10;
const DISK_DRIVE: u32 = 17;
const LOGICAL_DISK: u32 = 31;

fn hardware(
    section: Node,
    files: &[FileRef],
    disks: &[SectionDisk],
    out: &mut Descriptor,
    used: &mut Vec<String>,
) -> Result<(), OvfError> {
    let base = "VirtualHardwareSection";
    // VMware's section-wide settings: firmware, and ethernetN.address in ExtraConfig.
    let mut section_macs: Vec<(usize, String)> = Vec::new();
    for (i, c) in section
        .children()
        .filter(|c| is(c, "Config") || is(c, "ExtraConfig"))
        .enumerate()
    {
        let at = format!("{base}/{}[{}]", c.tag_name().name(), i + 1);
        let (Some(key), value) = (attr(c, "key"), attr(c, "value").unwrap_or("")) else {
            continue;
        };
        if key == "firmware" {
            out.hardware.firmware = Some(firmware(&at, value)?);
        } else if let Some(n) = ethernet_address_key(key) {
            let mac = mac(&at, value)?;
            section_macs.push((n, mac));
        }
    }
    if let Some(f) = attr(section, "firmware") {
        out.hardware.firmware = Some(firmware(&format!("{base}/@firmware"), f)?);
    }
    let mut nics: Vec<OvfNic> = Vec::new();
    let mut index = 0;
    for item in section
        .children()
        .filter(|c| is(c, "Item") || is(c, "StorageItem") || is(c, "EthernetPortItem"))
    {
        index += 1;
        let at = format!("{base}/{}[{index}]", item.tag_name().name());
        let Some(kind) = child_text(item, "ResourceType") else {
            continue;
        };
        let kind: u32 = kind.parse().map_err(|_| {
            err(
                format!("{at}/ResourceType"),
                format!("{} is not a number", quote(kind)),
            )
        })?;
        match kind {
            PROCESSOR => {
                let n = quantity(item, &at)?;
                if !(1..=4096).contains(&n) {
                    return Err(err(
                        format!("{at}/VirtualQuantity"),
                        format!("{n} CPUs is out of range (1 to 4096)"),
                    ));
                }
                out.hardware.cpus = Some(n as u32);
            }
            MEMORY => out.hardware.memory_mib = Some(memory_mib(item, &at, &mut out.warnings)?),
            ETHERNET => {
                if nics.len() >= MAX_NICS {
                    return Err(err(&at, format!("more than {MAX_NICS} network adapters")));
                }
                nics.push(nic(item, &at)?);
            }
            DISK_DRIVE | LOGICAL_DISK => {
                disk_item(item, &at, files, disks, out, used)?;
            }
            _ => {}
        }
    }
    for (n, mac) in section_macs {
        if let Some(nic) = nics.get_mut(n) {
            nic.mac.get_or_insert(mac);
        }
    }
    out.hardware.nics = nics;
    Ok(())
}

/// `ethernet0.address`, `ethernet1.generatedAddress` → the NIC's index.
fn ethernet_address_key(key: &str) -> Option<usize> {
    let rest = key.strip_prefix("ethernet")?;
    let (n, field) = rest.split_once('.')?;
    matches!(field, "address" | "generatedAddress")
        .then(|| n.parse().ok())
        .flatten()
}

fn firmware(at: &str, value: &str) -> Result<Firmware, OvfError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "efi" | "uefi" => Ok(Firmware::Uefi),
        "bios" => Ok(Firmware::Bios),
        _ => Err(err(
            at,
            format!("firmware {} (expected efi or bios)", quote(value)),
        )),
    }
}

fn mac(at: &str, value: &str) -> Result<String, OvfError> {
    normalize_mac(value.trim())
        .ok_or_else(|| err(at, format!("{} is not a MAC address", quote(value))))
}

fn quantity(item: Node, at: &str) -> Result<u64, OvfError> {
    let text = child_text(item, "VirtualQuantity").ok_or_else(|| err(at, "no VirtualQuantity"))?;
    text.parse().map_err(|_| {
        err(
            format!("{at}/VirtualQuantity"),
            format!("{} is not a number", quote(text)),
        )
    })
}

fn memory_mib(item: Node, at: &str, warnings: &mut Vec<String>) -> Result<u64, OvfError> {
    let n = quantity(item, at)?;
    let (units_at, units) = match (
        child_text(item, "AllocationUnits"),
        child_text(item, "VirtualQuantityUnits"),
    ) {
        (Some(u), _) => ("AllocationUnits", u),
        (None, Some(u)) => ("VirtualQuantityUnits", u),
        (None, None) => {
            warnings.push(format!("{at}: memory without AllocationUnits: read as MiB"));
            ("AllocationUnits", "byte * 2^20")
        }
    };
    let factor = units_factor(units).ok_or_else(|| {
        err(
            format!("{at}/{units_at}"),
            format!("{} is not a unit of bytes", quote(units)),
        )
    })?;
    let mib = n
        .checked_mul(factor)
        .map(|bytes| bytes >> 20)
        .filter(|&m| (16..=(64 << 20)).contains(&m))
        .ok_or_else(|| {
            err(
                format!("{at}/VirtualQuantity"),
                format!("{n} × {units} is not a memory size (16 MiB to 64 TiB)"),
            )
        })?;
    Ok(mib)
}

fn nic(item: Node, at: &str) -> Result<OvfNic, OvfError> {
    let mut mac_found = match child_text(item, "Address") {
        Some(a) => Some(mac(&format!("{at}/Address"), a)?),
        None => None,
    };
    if mac_found.is_none() {
        for (i, c) in item.children().filter(|c| is(c, "Config")).enumerate() {
            let key = attr(c, "key").unwrap_or("");
            let is_mac_key =
                key == "address" || key == "macAddress" || ethernet_address_key(key).is_some();
            if is_mac_key {
                let value = attr(c, "value").unwrap_or("");
                mac_found = Some(mac(&format!("{at}/Config[{}]", i + 1), value)?);
                break;
            }
        }
    }
    let text = |name: &'static str| {
        child_text(item, name)
            .filter(|s| !s.chars().any(char::is_control))
            .map(str::to_string)
    };
    Ok(OvfNic {
        mac: mac_found,
        network: text("Connection"),
        model: text("ResourceSubType"),
    })
}

fn disk_item(
    item: Node,
    at: &str,
    files: &[FileRef],
    disks: &[SectionDisk],
    out: &mut Descriptor,
    used: &mut Vec<String>,
) -> Result<(), OvfError> {
    let Some(host) = child_text(item, "HostResource") else {
        return Ok(());
    };
    let host_at = format!("{at}/HostResource");
    let reference = host
        .strip_prefix("ovf:")
        .unwrap_or(host)
        .trim_start_matches('/');
    if let Some(id) = reference.strip_prefix("disk/") {
        let disk = disks.iter().find(|d| d.disk_id == id).ok_or_else(|| {
            err(
                &host_at,
                format!("{} names no DiskSection/Disk", quote(host)),
            )
        })?;
        if used.iter().any(|u| u == id) {
            return Err(err(
                &host_at,
                format!("disk {} is attached twice", quote(id)),
            ));
        }
        used.push(id.to_string());
        match &disk.href {
            Some(href) => push_disk(&mut out.disks, id, href, disk.capacity_bytes)?,
            None => out.warnings.push(blank(disk)),
        }
    } else if let Some(id) = reference.strip_prefix("file/") {
        let file = files.iter().find(|f| f.id == id).ok_or_else(|| {
            err(
                &host_at,
                format!("{} names no References/File", quote(host)),
            )
        })?;
        // A DiskSection entry for the same file is this disk, not another one.
        for d in disks
            .iter()
            .filter(|d| d.href.as_deref() == Some(file.href.as_str()))
        {
            used.push(d.disk_id.clone());
        }
        push_disk(&mut out.disks, id, &file.href, None)?;
    } else {
        return Err(err(
            &host_at,
            format!("{} is neither ovf:/disk/ID nor ovf:/file/ID", quote(host)),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "ovf_tests.rs"]
pub(crate) mod tests;
