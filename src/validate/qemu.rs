//! The QEMU command line for a boot check (pure).

use super::*;

// ---------------------------------------------------------------------------------------------
// The QEMU command line (pure)
// ---------------------------------------------------------------------------------------------

/// Everything the QEMU command line depends on.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub accel: Accel,
    pub cpus: usize,
    pub memory_mib: u32,
    pub firmware: Firmware,
    /// OVMF code and the guest's private copy of the variable store (UEFI only).
    pub ovmf: Option<(PathBuf, PathBuf)>,
    pub bus: Bus,
    /// The qcow2 overlays, boot disk first; attached in this order on `bus`.
    pub disks: Vec<PathBuf>,
    /// One user-mode NIC each (DHCP 10.0.2.15, gateway 10.0.2.2), with this MAC or QEMU's
    /// default; none means one NIC with QEMU's default MAC.
    pub nics: Vec<Option<String>>,
    pub serial_log: PathBuf,
    /// The unix socket QEMU serves the guest agent's virtio-serial port on (probe runs that
    /// expect the agent); None: no such port.
    pub agent_socket: Option<PathBuf>,
}

/// How many disks a controller takes here (q35's AHCI has six ports, the LSI 53C895A seven
/// targets; the others more than any VM has).
pub fn bus_capacity(bus: Bus) -> usize {
    match bus {
        Bus::Sata => 6,
        Bus::Lsi => 7,
        Bus::Virtio | Bus::VirtioScsi | Bus::Pvscsi => 16,
    }
}

/// The `n`th PCIe root port of a VMware VM: physical slots 160, 192, 224, 256, … (guest
/// interface names `ens160`, `ens192`, …).
fn vmware_slot(n: usize) -> String {
    format!(
        "pcie-root-port,id=vmslot{n},chassis={},slot={}",
        n + 1,
        160 + 32 * n
    )
}

/// A path inside a QEMU `key=value,…` option (commas are doubled).
pub(crate) fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

pub fn qemu_args(spec: &GuestSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    let vmware = spec.bus.vmware_like();
    let q35 = vmware || spec.firmware == Firmware::Uefi;
    push("-name");
    push("h2k-validate");
    push("-machine");
    // graphics=off: SeaBIOS prints on the serial port ("No bootable device.").
    push(if q35 {
        "q35,graphics=off"
    } else {
        "pc,graphics=off"
    });
    if vmware {
        // Native PCIe hotplug: the kernel then numbers each root port's slot by its physical
        // slot number, which is where VMware's names come from (ens160, ens192, …).
        push("-global");
        push("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off");
    }
    match spec.accel {
        Accel::Tcg => {
            push("-accel");
            push("tcg,thread=multi");
            // Every feature TCG has (x86-64-v2+ for RHEL 9 and the like), minus nested
            // virtualisation: with SVM visible the guest loads kvm_amd as its getty starts,
            // and a boot was seen to hang there under TCG.
            push("-cpu");
            push("max,svm=off,vmx=off");
        }
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
    }
    push("-smp");
    push(&spec.cpus.max(1).to_string());
    push("-m");
    push(&spec.memory_mib.to_string());
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-boot",
        "strict=on",
    ] {
        push(s);
    }
    if let Some((code, vars)) = &spec.ovmf {
        push("-drive");
        push(&format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            opt_path(code)
        ));
        push("-drive");
        push(&format!(
            "if=pflash,format=raw,unit=1,file={}",
            opt_path(vars)
        ));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        push("-drive");
        push(&format!(
            "file={},format=qcow2,if=none,id=disk{i},cache=unsafe",
            opt_path(disk)
        ));
    }
    let controller = match spec.bus {
        Bus::VirtioScsi => Some("virtio-scsi-pci"),
        Bus::Pvscsi => Some("pvscsi"),
        Bus::Lsi => Some("lsi53c895a"),
        Bus::Virtio | Bus::Sata => None,
    };
    if let Some(ctrl) = controller {
        if spec.bus == Bus::Pvscsi {
            // VMware's first PCIe slot holds the boot controller.
            push("-device");
            push(&vmware_slot(0));
            push("-device");
            push(&format!("{ctrl},id=scsi0,bus=vmslot0"));
        } else {
            push("-device");
            push(&format!("{ctrl},id=scsi0"));
        }
    }
    // Command-line order is the guest's order: PCI slots (vda, vdb), SCSI targets and AHCI
    // ports are assigned as the devices come.
    for i in 0..spec.disks.len() {
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        push("-device");
        push(&match spec.bus {
            Bus::Virtio => format!("virtio-blk-pci,drive=disk{i}{boot}"),
            Bus::VirtioScsi | Bus::Pvscsi | Bus::Lsi => {
                format!("scsi-hd,drive=disk{i},bus=scsi0.0{boot}")
            }
            Bus::Sata => format!("ide-hd,drive=disk{i},bus=ide.{i}{boot}"),
        });
    }
    let default_nic = [None];
    let nics = if spec.nics.is_empty() {
        &default_nic[..]
    } else {
        &spec.nics[..]
    };
    for (i, mac) in nics.iter().enumerate() {
        push("-netdev");
        push(&format!("user,id=net{i}"));
        // No option ROM: the firmware must not fall back to network boot.
        let mac = mac
            .as_deref()
            .map(|m| format!(",mac={m}"))
            .unwrap_or_default();
        let slot = if vmware {
            push("-device");
            push(&vmware_slot(i + 1));
            format!(",bus=vmslot{}", i + 1)
        } else {
            String::new()
        };
        push("-device");
        push(&format!(
            "{},netdev=net{i},romfile={mac}{slot}",
            spec.bus.nic_model()
        ));
    }
    a.push("-serial".into());
    let mut serial = OsString::from("file:");
    serial.push(&spec.serial_log);
    a.push(serial);
    if let Some(socket) = &spec.agent_socket {
        // Last on the command line: the disks and NICs keep the PCI slots (and so the
        // interface names) they have without it.
        for s in [
            "-device".to_string(),
            "virtio-serial-pci,id=h2kserial".into(),
            "-chardev".into(),
            format!(
                "socket,id=h2kqga,path={},server=on,wait=off",
                opt_path(socket)
            ),
            "-device".into(),
            format!("virtserialport,bus=h2kserial.0,chardev=h2kqga,name={AGENT_PORT}"),
        ] {
            a.push(s.into());
        }
    }
    a
}
