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
    /// The qcow2 overlay.
    pub disk: PathBuf,
    pub serial_log: PathBuf,
}

/// A path inside a QEMU `key=value,…` option (commas are doubled).
pub(crate) fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

pub fn qemu_args(spec: &GuestSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    let q35 = spec.firmware == Firmware::Uefi || spec.bus == Bus::Sata;
    push("-name");
    push("h2k-validate");
    push("-machine");
    // graphics=off: SeaBIOS prints on the serial port ("No bootable device.").
    push(if q35 {
        "q35,graphics=off"
    } else {
        "pc,graphics=off"
    });
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
    push("-drive");
    push(&format!(
        "file={},format=qcow2,if=none,id=disk0,cache=unsafe",
        opt_path(&spec.disk)
    ));
    let scsi = |ctrl: &str| {
        vec![
            "-device".to_string(),
            format!("{ctrl},id=scsi0"),
            "-device".to_string(),
            "scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0".to_string(),
        ]
    };
    let disk = match spec.bus {
        Bus::Virtio => vec![
            "-device".to_string(),
            "virtio-blk-pci,drive=disk0,bootindex=0".to_string(),
        ],
        Bus::VirtioScsi => scsi("virtio-scsi-pci"),
        Bus::Pvscsi => scsi("pvscsi"),
        Bus::Lsi => scsi("lsi53c895a"),
        Bus::Sata => vec![
            "-device".to_string(),
            "ide-hd,drive=disk0,bus=ide.0,bootindex=0".to_string(),
        ],
    };
    for s in &disk {
        push(s);
    }
    // No option ROM: the firmware must not fall back to network boot.
    push("-netdev");
    push("user,id=net0");
    push("-device");
    push(&format!("{},netdev=net0,romfile=", spec.bus.nic_model()));
    a.push("-serial".into());
    let mut serial = OsString::from("file:");
    serial.push(&spec.serial_log);
    a.push(serial);
    a
}
