//! The libvirt domain of a converted VM: what it is made of ([`DomainSpec::of_job`], from
//! the plan and the job's report) and its XML ([`render`]). Both pure.

use std::io;
use std::path::{Path, PathBuf};

use quick_xml::events::BytesText;
use quick_xml::Writer;
use serde::Serialize;

use super::LibvirtError;
use crate::plan::{normalize_mac, Firmware, LibvirtNetwork, Plan};
use crate::report::Report;

/// When neither the manifest nor the OVF says.
pub const DEFAULT_VCPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 2048;
/// q35 for both firmwares: PCIe, and what OVMF needs; a BIOS guest boots on it alike.
pub const MACHINE: &str = "q35";
/// Libvirt keeps files named after the domain (`NAME_VARS.fd`): stay well inside NAME_MAX.
const MAX_NAME_CHARS: usize = 200;

/// `<domain type=…>`: `kvm` where KVM works, else `qemu` (TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainType {
    Kvm,
    Qemu,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    pub path: PathBuf,
    /// qcow2 or raw.
    pub format: String,
}

/// Everything the domain XML says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub description: String,
    pub domain_type: DomainType,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// Why that firmware: `declared` (manifest or OVF), `detected` (inspection), `default`.
    pub firmware_from: &'static str,
    /// Boot disk first; each gets `<boot order=N>` in this order.
    pub disks: Vec<DomainDisk>,
    /// One per NIC: its MAC, or None where libvirt may pick one.
    pub nics: Vec<Option<String>>,
    pub network: LibvirtNetwork,
    pub console_log: Option<PathBuf>,
    /// The virtio-serial channel `org.qemu.guest_agent.0`.
    pub guest_agent: bool,
}

/// A domain name libvirt takes: the VM's name (or the job's) without `/` or control
/// characters, trimmed, at most 200 characters.
pub fn domain_name(plan: &Plan) -> String {
    let clean = |s: &str| -> String {
        let s: String = s
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        s.trim().chars().take(MAX_NAME_CHARS).collect()
    };
    plan.vm
        .name
        .as_deref()
        .map(clean)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| clean(&plan.job_name))
}

impl DomainSpec {
    /// The domain of a finished job: its outputs in plan order, the VM's hardware from the
    /// plan (manifest, then OVF) with defaults, the firmware declared (else the one inspection
    /// found), the NICs of the plan with the MACs the network step chose, the agent channel
    /// when the agent is in the guest. Remarks (a firmware the disk does not match) are
    /// returned beside it.
    pub fn of_job(
        plan: &Plan,
        report: &Report,
        domain_type: DomainType,
    ) -> (DomainSpec, Vec<String>) {
        let mut warnings = Vec::new();
        let detected = report.os.as_ref().map(|o| &o.firmware);
        let (firmware, firmware_from) = match (plan.vm.firmware, detected) {
            (Some(declared), Some(found)) => {
                if declared != found.kind {
                    warnings.push(format!(
                        "libvirt: the VM is declared {declared} but its disk looks {} ({}); the domain boots it with {declared}",
                        found.kind, found.evidence
                    ));
                }
                (declared, "declared")
            }
            (Some(declared), None) => (declared, "declared"),
            (None, Some(found)) => (found.kind, "detected"),
            (None, None) => (Firmware::Bios, "default"),
        };
        let sources: Vec<String> = plan
            .disks
            .iter()
            .map(|d| match &d.ova_member {
                Some(m) => format!("{} ({m})", d.source),
                None => d.source.clone(),
            })
            .collect();
        let spec = DomainSpec {
            name: domain_name(plan),
            description: format!(
                "Converted by h2k-guest {} (job {}, {}) from {}",
                crate::version::TOOL,
                plan.job_name,
                report.started_at,
                sources.join(", ")
            ),
            domain_type,
            vcpus: plan.vm.cpu.filter(|&n| n > 0).unwrap_or(DEFAULT_VCPUS),
            memory_mib: plan
                .vm
                .memory_mib()
                .map(|m| m.max(128))
                .unwrap_or(DEFAULT_MEMORY_MIB),
            firmware,
            firmware_from,
            disks: report
                .outputs
                .iter()
                .map(|o| DomainDisk {
                    path: o.path.clone(),
                    format: o.format.clone(),
                })
                .collect(),
            nics: nic_macs(plan, report),
            network: plan.libvirt.network.clone(),
            console_log: plan.libvirt.console_log.clone(),
            guest_agent: report.guest_agent_present(),
        };
        (spec, warnings)
    }
}

/// The plan's NICs (the network step's list, else the VM's), each with its KVM MAC (the
/// target, else the one it keeps); then the MACs the network step matched interfaces on that
/// the plan did not name, filling NICs without a MAC first. A VM nothing says anything about
/// gets one NIC whose MAC libvirt picks.
fn nic_macs(plan: &Plan, report: &Report) -> Vec<Option<String>> {
    let planned = if plan.fix.nics.is_empty() {
        &plan.vm.nics
    } else {
        &plan.fix.nics
    };
    let mut macs: Vec<Option<String>> = planned
        .iter()
        .map(|n| {
            n.target_mac
                .as_deref()
                .or(n.mac.as_deref())
                .and_then(normalize_mac)
        })
        .collect();
    let chosen = report
        .fixes
        .iter()
        .filter(|f| f.name == "network")
        .flat_map(|f| &f.nics);
    for c in chosen {
        let Some(mac) = c.mac.as_deref().and_then(normalize_mac) else {
            continue;
        };
        if macs.iter().any(|m| m.as_deref() == Some(mac.as_str())) {
            continue;
        }
        match macs.iter_mut().find(|m| m.is_none()) {
            Some(slot) => *slot = Some(mac),
            None => macs.push(Some(mac)),
        }
    }
    if macs.is_empty() {
        macs.push(None);
    }
    macs
}

/// `vda`, …, `vdz`, `vdaa`, … (libvirt's naming).
pub fn target_dev(index: usize) -> String {
    let mut n = index + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("vd{}", String::from_utf8(letters).unwrap_or_default())
}

/// A path as XML text: UTF-8, absolute, no control characters.
fn path_text<'a>(what: &str, p: &'a Path) -> Result<&'a str, LibvirtError> {
    let bad = |why: &str| LibvirtError::Unrepresentable {
        what: what.to_string(),
        value: p.display().to_string(),
        why: why.to_string(),
    };
    let s = p.to_str().ok_or_else(|| bad("not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(bad("it contains a control character"));
    }
    if !p.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    Ok(s)
}

fn text_field(what: &str, s: &str) -> Result<(), LibvirtError> {
    match s.chars().any(|c| c.is_control() && c != '\n') || s.is_empty() {
        false => Ok(()),
        true => Err(LibvirtError::Unrepresentable {
            what: what.to_string(),
            value: s.to_string(),
            why: "empty or with control characters".into(),
        }),
    }
}

type W = Writer<Vec<u8>>;

fn leaf(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attrs.iter().copied())
        .write_empty()?;
    Ok(())
}

fn text(w: &mut W, name: &str, attrs: &[(&str, &str)], value: &str) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attrs.iter().copied())
        .write_text_content(BytesText::new(value))?;
    Ok(())
}

/// The domain XML (libvirt's schema; `virt-xml-validate` accepts it).
pub fn render(spec: &DomainSpec) -> Result<String, LibvirtError> {
    text_field("domain name", &spec.name)?;
    text_field("description", &spec.description)?;
    let disks: Vec<(&str, &str)> = spec
        .disks
        .iter()
        .map(|d| Ok((path_text("disk", &d.path)?, d.format.as_str())))
        .collect::<Result<_, LibvirtError>>()?;
    let log = spec
        .console_log
        .as_deref()
        .map(|p| path_text("console log", p))
        .transpose()?;
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let memory = spec.memory_mib.to_string();
    let vcpus = spec.vcpus.max(1).to_string();
    w.create_element("domain")
        .with_attribute(("type", spec.domain_type.as_str()))
        .write_inner_content(|w| {
            text(w, "name", &[], &spec.name)?;
            text(w, "description", &[], &spec.description)?;
            text(w, "memory", &[("unit", "MiB")], &memory)?;
            text(w, "currentMemory", &[("unit", "MiB")], &memory)?;
            text(w, "vcpu", &[("placement", "static")], &vcpus)?;
            os(w, spec.firmware)?;
            w.create_element("features").write_inner_content(|w| {
                leaf(w, "acpi", &[])?;
                leaf(w, "apic", &[])
            })?;
            cpu(w, spec.domain_type)?;
            w.create_element("clock")
                .with_attribute(("offset", "utc"))
                .write_inner_content(|w| {
                    leaf(w, "timer", &[("name", "rtc"), ("tickpolicy", "catchup")])?;
                    leaf(w, "timer", &[("name", "pit"), ("tickpolicy", "delay")])?;
                    leaf(w, "timer", &[("name", "hpet"), ("present", "no")])
                })?;
            text(w, "on_poweroff", &[], "destroy")?;
            text(w, "on_reboot", &[], "restart")?;
            text(w, "on_crash", &[], "destroy")?;
            w.create_element("pm").write_inner_content(|w| {
                leaf(w, "suspend-to-mem", &[("enabled", "no")])?;
                leaf(w, "suspend-to-disk", &[("enabled", "no")])
            })?;
            w.create_element("devices").write_inner_content(|w| {
                for (i, (path, format)) in disks.iter().enumerate() {
                    disk(w, i, path, format)?;
                }
                for mac in &spec.nics {
                    nic(w, mac.as_deref(), &spec.network)?;
                }
                serial(w, log)?;
                if spec.guest_agent {
                    w.create_element("channel")
                        .with_attribute(("type", "unix"))
                        .write_inner_content(|w| {
                            leaf(
                                w,
                                "target",
                                &[("type", "virtio"), ("name", "org.qemu.guest_agent.0")],
                            )
                        })?;
                }
                w.create_element("rng")
                    .with_attribute(("model", "virtio"))
                    .write_inner_content(|w| {
                        text(w, "backend", &[("model", "random")], "/dev/urandom")
                    })?;
                leaf(w, "memballoon", &[("model", "virtio")])?;
                leaf(
                    w,
                    "graphics",
                    &[
                        ("type", "vnc"),
                        ("port", "-1"),
                        ("autoport", "yes"),
                        ("listen", "127.0.0.1"),
                    ],
                )?;
                w.create_element("video")
                    .write_inner_content(|w| leaf(w, "model", &[("type", "vga")]))?;
                Ok(())
            })?;
            Ok(())
        })
        .map_err(|e| LibvirtError::Render(e.to_string()))?;
    let mut xml =
        String::from_utf8(w.into_inner()).map_err(|e| LibvirtError::Render(e.to_string()))?;
    xml.push('\n');
    Ok(xml)
}

fn os(w: &mut W, firmware: Firmware) -> io::Result<()> {
    let attrs: &[(&str, &str)] = match firmware {
        Firmware::Uefi => &[("firmware", "efi")],
        Firmware::Bios => &[],
    };
    w.create_element("os")
        .with_attributes(attrs.iter().copied())
        .write_inner_content(|w| {
            text(
                w,
                "type",
                &[("arch", "x86_64"), ("machine", MACHINE)],
                "hvm",
            )?;
            if firmware == Firmware::Uefi {
                // libvirt picks OVMF from the host's firmware descriptors; a guest exported
                // from VMware is not expected to be signed for Secure Boot.
                w.create_element("firmware").write_inner_content(|w| {
                    leaf(w, "feature", &[("enabled", "no"), ("name", "secure-boot")])?;
                    leaf(
                        w,
                        "feature",
                        &[("enabled", "no"), ("name", "enrolled-keys")],
                    )
                })?;
            }
            Ok(())
        })?;
    Ok(())
}

fn cpu(w: &mut W, domain_type: DomainType) -> io::Result<()> {
    match domain_type {
        DomainType::Kvm => leaf(
            w,
            "cpu",
            &[
                ("mode", "host-passthrough"),
                ("check", "none"),
                ("migratable", "on"),
            ],
        ),
        // Every feature TCG has, minus nested virtualisation (a guest loading kvm_amd under
        // TCG was seen to hang at boot).
        DomainType::Qemu => {
            w.create_element("cpu")
                .with_attributes([("mode", "maximum"), ("migratable", "off")])
                .write_inner_content(|w| {
                    leaf(w, "feature", &[("policy", "disable"), ("name", "svm")])?;
                    leaf(w, "feature", &[("policy", "disable"), ("name", "vmx")])
                })?;
            Ok(())
        }
    }
}

fn disk(w: &mut W, index: usize, path: &str, format: &str) -> io::Result<()> {
    let order = (index + 1).to_string();
    let dev = target_dev(index);
    w.create_element("disk")
        .with_attributes([("type", "file"), ("device", "disk")])
        .write_inner_content(|w| {
            leaf(
                w,
                "driver",
                &[("name", "qemu"), ("type", format), ("discard", "unmap")],
            )?;
            leaf(w, "source", &[("file", path)])?;
            leaf(w, "target", &[("dev", &dev), ("bus", "virtio")])?;
            leaf(w, "boot", &[("order", &order)])
        })?;
    Ok(())
}

fn nic(w: &mut W, mac: Option<&str>, network: &LibvirtNetwork) -> io::Result<()> {
    let kind = match network {
        LibvirtNetwork::Network(_) => "network",
        LibvirtNetwork::Bridge(_) => "bridge",
        LibvirtNetwork::User => "user",
    };
    w.create_element("interface")
        .with_attribute(("type", kind))
        .write_inner_content(|w| {
            if let Some(mac) = mac {
                leaf(w, "mac", &[("address", mac)])?;
            }
            match network {
                LibvirtNetwork::Network(n) => leaf(w, "source", &[("network", n)])?,
                LibvirtNetwork::Bridge(b) => leaf(w, "source", &[("bridge", b)])?,
                LibvirtNetwork::User => {}
            }
            leaf(w, "model", &[("type", "virtio")])
        })?;
    Ok(())
}

fn serial(w: &mut W, log: Option<&str>) -> io::Result<()> {
    w.create_element("serial")
        .with_attribute(("type", "pty"))
        .write_inner_content(|w| {
            if let Some(file) = log {
                leaf(w, "log", &[("file", file), ("append", "off")])?;
            }
            w.create_element("target")
                .with_attributes([("type", "isa-serial"), ("port", "0")])
                .write_inner_content(|w| leaf(w, "model", &[("name", "isa-serial")]))?;
            Ok(())
        })?;
    w.create_element("console")
        .with_attribute(("type", "pty"))
        .write_inner_content(|w| leaf(w, "target", &[("type", "serial"), ("port", "0")]))?;
    Ok(())
}
