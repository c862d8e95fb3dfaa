//! `validate --boot --probe`: boot throw-away overlays with a one-shot probe unit in them and
//! read how the guest came up from its serial console.

use super::*;

use crate::appliance::{Appliance, ApplianceOptions, Drive};
use crate::guestfs::{DriveOptions, Guestfs};

/// The probe script, run by the guest's `/bin/sh` (see the file for what it reports).
pub const PROBE_SCRIPT: &str = include_str!("probe.sh");
pub const PROBE_SCRIPT_PATH: &str = "/usr/local/libexec/h2k-probe";
pub const PROBE_UNIT_PATH: &str = "/etc/systemd/system/h2k-probe.service";
const PROBE_UNIT_LINK: &str = "/etc/systemd/system/multi-user.target.wants/h2k-probe.service";
/// QEMU gives the first NIC without a MAC this one (and counts up for the next ones).
pub const QEMU_DEFAULT_MAC: &str = "52:54:00:12:34:56";

/// The unit that runs the probe once multi-user.target is reached. Type=simple, not oneshot:
/// an activating oneshot keeps its start job queued, and `is-system-running` would then say
/// "starting" for as long as the probe waits for it to stop saying so.
pub fn probe_unit() -> String {
    format!(
        "[Unit]\n\
         Description=h2k-guest boot probe (validate --probe; this disk is a throw-away overlay)\n\
         After=multi-user.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart=/bin/sh {PROBE_SCRIPT_PATH}\n\
         StandardOutput=journal\n\
         StandardError=journal\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// What [`probe_check`] boots and what it expects.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// The boot disk (`boot.image`) and how to boot it; `boot.format` applies to it only.
    pub boot: BootOptions,
    /// More disks, attached after the boot disk in this order (formats detected).
    pub extra_disks: Vec<String>,
    /// One NIC each, with this MAC or QEMU's default; empty: one NIC with QEMU's default.
    pub nics: Vec<Option<String>>,
    pub expect_ifaces: Vec<ExpectIface>,
    /// The QEMU guest agent must answer on its virtio-serial port (which is attached only then).
    pub expect_agent: bool,
}

/// The probe's part of a [`ProbeOutcome`].
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Every disk booted, boot disk first.
    pub disks: Vec<String>,
    /// The NICs' MACs, in PCI order.
    pub nics: Vec<String>,
    /// The guest root the probe was written to (appliance device name).
    pub root: String,
    /// Whether the probe's line was read.
    pub reached: bool,
    /// Seconds from QEMU's start to the probe's line.
    pub seconds_to_probe: Option<f64>,
    pub whole: bool,
    /// What kept the guest from being whole (empty when whole).
    pub problems: Vec<String>,
    /// What "whole" means.
    pub whole_means: Vec<String>,
    pub expect_ifaces: Vec<ExpectIface>,
    /// The guest agent's handshake (only tried when expected).
    pub agent: AgentCheck,
    /// The guest's own report (None when the probe never ran).
    pub guest: Option<GuestReport>,
}

/// The result of one probe run: the boot as [`boot_check`] reports it (`booted` means the
/// probe's line was read), and the probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeOutcome {
    #[serde(flatten)]
    pub boot: BootOutcome,
    pub probe: ProbeResult,
}

impl ProbeOutcome {
    pub fn whole(&self) -> bool {
        self.probe.whole
    }

    /// One line for people: whole (and how fast), what was missing, or why it never got there.
    pub fn summary(&self) -> String {
        let b = &self.boot;
        let p = &self.probe;
        let how = format!("bus {}, {}, {}", b.bus, firmware_name(b.firmware), b.accel);
        let disks = match p.disks.len() {
            0 | 1 => String::new(),
            n => format!(" (+{} disks)", n - 1),
        };
        if let Some(guest) = p.guest.as_ref().filter(|_| p.reached) {
            if !p.whole {
                return format!(
                    "{}{disks}: not whole on {}: {}",
                    b.image,
                    b.bus,
                    p.problems.join("; ")
                );
            }
            let network: Vec<String> = guest
                .interfaces
                .iter()
                .filter(|i| !i.is_loopback() && i.is_up() && !i.ipv4.is_empty())
                .map(|i| format!("{} {}", i.name, i.ipv4.join(" ")))
                .collect();
            let agent = match &p.agent.version {
                Some(v) if p.agent.answered => format!("; guest agent {v}"),
                _ => String::new(),
            };
            return format!(
                "{}{disks}: whole on {how} after {:.1} s (multi-user at {}; {} mounts, {} swaps; \
                 {}; default route via {}{agent})",
                b.image,
                p.seconds_to_probe.unwrap_or(b.seconds),
                guest
                    .multi_user_seconds
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| "? s".into()),
                guest.mounts.len(),
                guest.swaps.len(),
                network.join(", "),
                guest
                    .default_route
                    .as_ref()
                    .map(|r| r.via.as_str())
                    .unwrap_or("?"),
            );
        }
        match (&b.failure, &b.login_prompt) {
            (Some(f), Some(_)) => {
                let mut o = format!("{}{disks}: no probe result on {how}: {}", b.image, f.reason);
                if let Some(log) = &b.console_log {
                    o += &format!(" (console log: {})", log.display());
                }
                o
            }
            _ => b.summary(),
        }
    }
}

/// The probe's problems as the outcome records them (no report: the boot failure says it).
fn judge(guest: Option<&GuestReport>, expect: &[ExpectIface]) -> (bool, Vec<String>) {
    match guest {
        Some(r) => {
            let problems = whole_problems(r, expect);
            (problems.is_empty(), problems)
        }
        None => (false, vec!["the probe never reported".to_string()]),
    }
}

/// The agent's part of the outcome: what it answered when it was expected and asked, with
/// the state of its unit in the guest when it did not.
fn agent_verdict(
    expected: bool,
    answer: Option<AgentCheck>,
    guest: Option<&GuestReport>,
) -> AgentCheck {
    let mut check = match (expected, answer) {
        (false, _) => return AgentCheck::not_checked(),
        (true, Some(answer)) => answer,
        (true, None) => AgentCheck {
            expected: true,
            error: Some("not asked: the probe never reported".into()),
            ..AgentCheck::default()
        },
    };
    let unit = guest.map_or("", |g| g.agent_unit.as_str());
    if !check.answered && !unit.is_empty() {
        let error = check.error.get_or_insert_with(|| "no reply".into());
        error.push_str(&format!(" (qemu-guest-agent.service in the guest: {unit})"));
    }
    check
}

/// One disk, opened as the read-only backing file of an overlay in `dir`.
fn overlay_for(
    image: &str,
    format: Option<&str>,
    dir: &Path,
    index: usize,
) -> Result<(Source, SourceInfo, PathBuf), ValidateError> {
    let source = absolute_source(image);
    let info = load::probe(&source, format)?;
    let overlay = dir.join(format!("overlay{index}.qcow2"));
    load::create_overlay(&info, &overlay)?;
    Ok((source, info, overlay))
}

/// Mount the guest's root (as inspection finds it) and write the probe unit, its symlink in
/// multi-user.target.wants and the script. Returns the root.
fn install_probe(g: &Guestfs) -> Result<String, String> {
    let disks = crate::inspect::scan_disks(g).map_err(|e| e.to_string())?;
    let roots = crate::inspect::find_roots(g, &disks).map_err(|e| e.to_string())?;
    let root = roots
        .iter()
        .find(|r| r.os_type == "linux")
        .unwrap_or(&roots[0]);
    for warning in crate::inspect::mount_guest(g, root).map_err(|e| e.to_string())? {
        log::warn!("{warning}");
    }
    let systemd = g.is_dir("/etc/systemd").map_err(|e| e.to_string())?;
    if !systemd {
        return Err(format!(
            "the guest on {} has no /etc/systemd: the probe runs as a systemd unit",
            root.device
        ));
    }
    let step = |what: &str, r: Result<(), crate::guestfs::GuestfsError>| {
        r.map_err(|e| format!("{what}: {}", e.message))
    };
    step(
        "mkdir",
        g.command(&[
            "mkdir",
            "-p",
            "/etc/systemd/system/multi-user.target.wants",
            "/usr/local/libexec",
        ])
        .map(drop),
    )?;
    step(
        PROBE_SCRIPT_PATH,
        g.write(PROBE_SCRIPT_PATH, PROBE_SCRIPT.as_bytes()),
    )?;
    step(PROBE_SCRIPT_PATH, g.chmod(0o755, PROBE_SCRIPT_PATH))?;
    step(
        PROBE_UNIT_PATH,
        g.write(PROBE_UNIT_PATH, probe_unit().as_bytes()),
    )?;
    step(PROBE_UNIT_PATH, g.chmod(0o644, PROBE_UNIT_PATH))?;
    step(
        PROBE_UNIT_LINK,
        g.command(&["ln", "-sf", PROBE_UNIT_PATH, PROBE_UNIT_LINK])
            .map(drop),
    )?;
    // The directories with what is in them: mkdir -p may have made them.
    let written = [
        "/usr/local/libexec",
        "/etc/systemd/system/multi-user.target.wants",
        PROBE_UNIT_PATH,
    ];
    if let Some(policy) = super::selinux::label_written_files(g, &written)? {
        log::info!("the probe's files are labelled for the guest's SELinux policy {policy}");
    }
    Ok(root.device.clone())
}

/// The MACs the guest will see: as asked, and QEMU's default for the others (it counts up
/// from 52:54:00:12:34:56 over the NICs it has to choose one for).
pub fn effective_macs(nics: &[Option<String>]) -> Vec<String> {
    let default_nic = [None];
    let nics = if nics.is_empty() {
        &default_nic[..]
    } else {
        nics
    };
    let mut defaulted = 0;
    nics.iter()
        .map(|mac| match mac {
            Some(mac) => mac.clone(),
            None => {
                defaulted += 1;
                format!("52:54:00:12:34:{:02x}", 0x55 + defaulted)
            }
        })
        .collect()
}

/// Boot the disks with the probe in them; see the module documentation.
///
/// A guest that does not come up whole is an `Ok` outcome (`probe.whole` false); `Err` means
/// the check itself could not run (not an image, no OS to put the probe in, QEMU or OVMF
/// missing, interrupted, …). The images are never written: the appliance and QEMU both work
/// on overlays in a temporary directory that is removed on every path.
pub fn probe_check(opts: &ProbeOptions) -> Result<ProbeOutcome, ValidateError> {
    let t0 = Instant::now();
    let bopts = &opts.boot;
    let disk_count = 1 + opts.extra_disks.len();
    if disk_count > bus_capacity(bopts.bus) {
        return Err(ValidateError::Probe {
            image: bopts.image.clone(),
            reason: format!(
                "{disk_count} disks do not fit on the {} controller (at most {})",
                bopts.bus,
                bus_capacity(bopts.bus)
            ),
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix("h2k-validate-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory"))?;
    let (source, info, boot_overlay) =
        overlay_for(&bopts.image, bopts.format.as_deref(), tmp.path(), 0)?;
    let image = source.qemu_name();
    let mut disks = vec![image.clone()];
    let mut overlays = vec![boot_overlay];
    for (i, extra) in opts.extra_disks.iter().enumerate() {
        let (s, _, overlay) = overlay_for(extra, None, tmp.path(), i + 1)?;
        disks.push(s.qemu_name());
        overlays.push(overlay);
    }
    let (firmware, firmware_reason, ovmf) =
        choose_firmware(bopts.firmware, bopts.bus, &source, &info, tmp.path())?;
    let mut cancel: Vec<Arc<AtomicBool>> = bopts.cancel.iter().cloned().collect();
    if cancel.is_empty() {
        cancel.extend(signal_flag());
    }

    // One appliance launch on the overlays: the probe goes into the guest, nothing else.
    let drives: Vec<Drive> = overlays
        .iter()
        .map(|o| Drive {
            path: o.display().to_string(),
            options: DriveOptions {
                format: Some("qcow2".into()),
                ..Default::default()
            },
        })
        .collect();
    let app_opts = ApplianceOptions {
        accel: bopts.accel,
        identifier: "h2k-probe".into(),
        ..Default::default()
    };
    log::info!("{image}: writing the probe into a throw-away overlay");
    let probe_err = |reason: String| ValidateError::Probe {
        image: image.clone(),
        reason,
    };
    let app = Appliance::launch(&drives, &app_opts).map_err(|e| probe_err(e.to_string()))?;
    let root = match install_probe(&app.g) {
        Ok(root) => root,
        Err(reason) => {
            drop(app);
            return Err(probe_err(reason));
        }
    };
    app.finish()
        .map_err(|e| probe_err(format!("closing the appliance: {e}")))?;
    if cancel.iter().any(|c| c.load(Ordering::SeqCst)) {
        return Err(ValidateError::Interrupted { image });
    }

    let (mut spec, mut accel_reason) = guest_spec(
        bopts,
        firmware,
        ovmf,
        overlays,
        opts.nics.clone(),
        tmp.path(),
    );
    if opts.expect_agent {
        spec.agent_socket = Some(tmp.path().join("qga.sock"));
    }
    log::info!(
        "{image}: booting {disk_count} disk(s) with {} NIC(s) on bus {} ({}: {firmware_reason}; \
         {}: {accel_reason}); waiting up to {} s for the probe",
        opts.nics.len().max(1),
        bopts.bus,
        firmware_name(firmware),
        spec.accel,
        bopts.timeout.as_secs()
    );
    let stderr_path = tmp.path().join("qemu.stderr");
    let mut run = run_with_fallback(
        &mut spec,
        &mut accel_reason,
        bopts,
        &stderr_path,
        &cancel,
        &image,
        Goal::Probe,
    )?;

    let mut boot = outcome_before_ending(
        &mut run,
        &image,
        &info,
        bopts,
        &spec,
        firmware_reason,
        accel_reason,
    );
    let mut guest = None;
    let mut seconds_to_probe = None;
    match run.ended {
        Ended::Probe { report, seconds } => {
            boot.booted = true;
            guest = Some(*report);
            seconds_to_probe = Some(seconds);
        }
        Ended::Failed(f) => boot.failure = Some(f),
        Ended::Login { .. } => unreachable!("a probe run goes on past the login prompt"),
        Ended::QemuError { reason, .. } => {
            return Err(ValidateError::Qemu {
                image,
                bus: bopts.bus,
                reason,
            })
        }
        Ended::Interrupted => return Err(ValidateError::Interrupted { image }),
    }
    let (mut whole, mut problems) = judge(guest.as_ref(), &opts.expect_ifaces);
    let agent = agent_verdict(opts.expect_agent, run.agent.take(), guest.as_ref());
    if guest.is_some() {
        let console = fs::read(&spec.serial_log).unwrap_or_default();
        let stalls = boot_stalls(&String::from_utf8_lossy(&console));
        whole &= stalls.is_empty();
        problems.extend(stalls);
    }
    if let Some(problem) = agent.problem().filter(|_| guest.is_some()) {
        whole = false;
        problems.push(problem);
    }
    if !whole && boot.console_log.is_none() {
        boot.console_log = keep_console_log(&spec.serial_log, &image, bopts.bus);
    }
    boot.seconds = t0.elapsed().as_secs_f64();
    Ok(ProbeOutcome {
        boot,
        probe: ProbeResult {
            disks,
            nics: effective_macs(&opts.nics),
            root,
            reached: guest.is_some(),
            seconds_to_probe,
            whole,
            problems,
            whole_means: WHOLE_MEANS.iter().map(|s| s.to_string()).collect(),
            expect_ifaces: opts.expect_ifaces.clone(),
            agent,
            guest,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;

    fn two_by_two(bus: Bus, firmware: Firmware) -> String {
        let spec = GuestSpec {
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 1024,
            firmware,
            ovmf: (firmware == Firmware::Uefi)
                .then(|| (PathBuf::from("/o/CODE.fd"), PathBuf::from("/t/VARS.fd"))),
            bus,
            disks: vec![
                PathBuf::from("/t/overlay0.qcow2"),
                PathBuf::from("/t/overlay1.qcow2"),
            ],
            nics: vec![Some("00:50:56:ab:cd:ef".into()), None],
            serial_log: PathBuf::from("/t/console.log"),
            agent_socket: None,
        };
        qemu_args(&spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn two_disks_and_two_nics_on_every_bus() {
        let drives = "-drive file=/t/overlay0.qcow2,format=qcow2,if=none,id=disk0,cache=unsafe \
                      -drive file=/t/overlay1.qcow2,format=qcow2,if=none,id=disk1,cache=unsafe";
        for bus in Bus::ALL {
            let firmware = if bus.uefi_bootable() {
                Firmware::Uefi
            } else {
                Firmware::Bios
            };
            let a = two_by_two(bus, firmware);
            assert!(a.contains(drives), "{bus}: {a}");
            let disks = match bus {
                Bus::Virtio => "-device virtio-blk-pci,drive=disk0,bootindex=0 \
                                -device virtio-blk-pci,drive=disk1"
                    .to_string(),
                Bus::Sata => "-device ide-hd,drive=disk0,bus=ide.0,bootindex=0 \
                              -device ide-hd,drive=disk1,bus=ide.1"
                    .to_string(),
                scsi => format!(
                    "-device {},id=scsi0{} -device scsi-hd,drive=disk0,bus=scsi0.0,bootindex=0 \
                     -device scsi-hd,drive=disk1,bus=scsi0.0",
                    match scsi {
                        Bus::VirtioScsi => "virtio-scsi-pci",
                        Bus::Pvscsi => "pvscsi",
                        _ => "lsi53c895a",
                    },
                    if scsi == Bus::Pvscsi {
                        ",bus=vmslot0"
                    } else {
                        ""
                    }
                ),
            };
            assert!(a.contains(&disks), "{bus}: {a}");
            assert_eq!(a.matches("bootindex").count(), 1, "{bus}: {a}");
            let model = bus.nic_model();
            let nics = if bus.vmware_like() {
                format!(
                    "-netdev user,id=net0 -device pcie-root-port,id=vmslot1,chassis=2,slot=192 \
                     -device {model},netdev=net0,romfile=,mac=00:50:56:ab:cd:ef,bus=vmslot1 \
                     -netdev user,id=net1 -device pcie-root-port,id=vmslot2,chassis=3,slot=224 \
                     -device {model},netdev=net1,romfile=,bus=vmslot2 -serial"
                )
            } else {
                format!(
                    "-netdev user,id=net0 -device {model},netdev=net0,romfile=,mac=00:50:56:ab:cd:ef \
                     -netdev user,id=net1 -device {model},netdev=net1,romfile= -serial"
                )
            };
            assert!(a.contains(&nics), "{bus}: {a}");
            // Disks before NICs: the disk controllers get the lower PCI slots.
            assert!(a.find("disk1").unwrap() < a.find("net0").unwrap());
        }
        assert!(bus_capacity(Bus::Sata) == 6 && bus_capacity(Bus::Lsi) == 7);
    }

    #[test]
    fn the_agent_port_comes_last_and_only_when_expected() {
        let without = two_by_two(Bus::Virtio, Firmware::Bios);
        assert!(!without.contains("virtserialport"), "{without}");
        let spec = GuestSpec {
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 512,
            firmware: Firmware::Bios,
            ovmf: None,
            bus: Bus::Virtio,
            disks: vec![PathBuf::from("/t/overlay0.qcow2")],
            nics: vec![None],
            serial_log: PathBuf::from("/t/console.log"),
            agent_socket: Some(PathBuf::from("/t/a,b/qga.sock")),
        };
        let a: Vec<String> = qemu_args(&spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let tail = a[a.len() - 6..].join(" ");
        assert_eq!(
            tail,
            "-device virtio-serial-pci,id=h2kserial \
             -chardev socket,id=h2kqga,path=/t/a,,b/qga.sock,server=on,wait=off \
             -device virtserialport,bus=h2kserial.0,chardev=h2kqga,name=org.qemu.guest_agent.0"
        );
        // The NIC keeps the slot it has without the port (its name depends on it).
        let joined = a.join(" ");
        assert!(joined.find("virtio-net-pci").unwrap() < joined.find("virtio-serial-pci").unwrap());
    }

    #[test]
    fn default_macs_count_up_like_qemu() {
        assert_eq!(effective_macs(&[]), vec![QEMU_DEFAULT_MAC]);
        assert_eq!(
            effective_macs(&[None, Some("00:50:56:00:00:01".into()), None]),
            vec![
                "52:54:00:12:34:56",
                "00:50:56:00:00:01",
                "52:54:00:12:34:57"
            ]
        );
    }

    #[test]
    fn the_unit_runs_the_script_after_multi_user() {
        let unit = probe_unit();
        for line in [
            "After=multi-user.target",
            "WantedBy=multi-user.target",
            "Type=simple",
            &format!("ExecStart=/bin/sh {PROBE_SCRIPT_PATH}"),
        ] {
            assert!(unit.lines().any(|l| l == line), "{line}: {unit}");
        }
        assert!(
            !unit.contains(PROBE_PREFIX),
            "the unit's name would look like a report"
        );
        assert!(PROBE_UNIT_LINK.ends_with("multi-user.target.wants/h2k-probe.service"));
    }

    fn write_script(dir: &Path) -> PathBuf {
        let script = dir.join("h2k-probe");
        fs::write(&script, PROBE_SCRIPT).unwrap();
        script
    }

    fn shells() -> Vec<&'static str> {
        ["sh", "dash", "bash"]
            .into_iter()
            .filter(|s| crate::process::in_path(s).is_some())
            .collect()
    }

    #[test]
    fn the_script_is_posix_sh() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path());
        for shell in shells() {
            let out = crate::process::Command::new(shell)
                .arg("-n")
                .arg(&script)
                .output_with_timeout(Duration::from_secs(20))
                .unwrap();
            assert!(
                out.status.success(),
                "{shell} -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The host has no running systemd: only the shape of the report is checked, and the
    /// escaping of what a hostile fstab holds.
    #[test]
    fn the_script_prints_one_valid_report() {
        let dir = tempfile::tempdir().unwrap();
        let script = write_script(dir.path());
        let fstab = dir.path().join("fstab");
        fs::write(
            &fstab,
            b"# comment\n\
              UUID=0b7f / ext4 errors=remount-ro 0 1\n\
              /dev/sdb1\t/srv/a\\040b\"c\\\\d ext4 defaults 0 2\n\
              /dev/nonexistent-swap none swap sw 0 0\n\
              /dev/sr0 /media/cdrom udf,iso9660 user,noauto 0 0\n\
              LABEL=x\x01\x1b\x7f\xc3\xa9 /data ext4 nofail 0 2\n",
        )
        .unwrap();
        for shell in shells() {
            let out_file = dir.path().join(format!("out-{shell}"));
            let out = crate::process::Command::new("env")
                .arg(format!("H2K_PROBE_OUT={}", out_file.display()))
                .arg(format!("H2K_PROBE_FSTAB={}", fstab.display()))
                .args([
                    "H2K_PROBE_WAIT=0",
                    "H2K_PROBE_NET_WAIT=0",
                    "H2K_PROBE_REPEAT=2",
                    "H2K_PROBE_GAP=0",
                ])
                .arg(shell)
                .arg(&script)
                .output_with_timeout(Duration::from_secs(60))
                .unwrap();
            assert!(out.status.success(), "{shell}: {out:?}");
            let console = fs::read(&out_file).unwrap();
            let text = String::from_utf8_lossy(&console);
            assert_eq!(text.matches(PROBE_PREFIX).count(), 2, "{shell}: {text}");
            let line = text.lines().find(|l| l.starts_with(PROBE_PREFIX)).unwrap();
            let (count, json) = line[PROBE_PREFIX.len()..].split_once(' ').unwrap();
            assert_eq!(count.parse::<usize>().unwrap(), json.len(), "{shell}");
            let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
            for key in [
                "probe_version",
                "multi_user",
                "multi_user_seconds",
                "uptime_seconds",
                "system_state",
                "waited_seconds",
                "failed_units",
                "mounts",
                "swaps",
                "active_swaps",
                "interfaces",
                "default_route",
                "default_route6",
                "cmdline",
                "hostname",
                "os",
                "agent_unit",
                "missing_tools",
            ] {
                assert!(v.get(key).is_some(), "{shell}: no {key} in {json}");
            }
            let r = find_probe_report(&console).expect("the scanner reads it");
            let mounts: Vec<(&str, &str)> = r
                .mounts
                .iter()
                .map(|m| (m.spec.as_str(), m.mountpoint.as_str()))
                .collect();
            assert_eq!(
                mounts,
                vec![
                    ("UUID=0b7f", "/"),
                    ("/dev/sdb1", "/srv/a\\040b\"c\\\\d"),
                    ("LABEL=x\u{1}\u{1b}\u{7f}é", "/data"),
                ],
                "{shell}"
            );
            assert!(r.mounts[0].mounted, "{shell}: / is mounted on any host");
            assert!(!r.mounts[1].mounted);
            assert_eq!(r.swaps.len(), 1);
            assert!(!r.swaps[0].active);
            assert!(r.interfaces.iter().any(|i| i.name == "lo"), "{shell}");
            assert_eq!(
                r.cmdline,
                fs::read_to_string("/proc/cmdline").unwrap().trim_end()
            );
            if let Ok(release) = fs::read_to_string("/etc/os-release") {
                let pretty = release
                    .lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .unwrap_or_default()
                    .trim_matches(['"', '\'']);
                assert_eq!(r.os, pretty, "{shell}");
            }
        }
    }

    fn outcome(guest: Option<GuestReport>, failure: Option<BootFailure>) -> ProbeOutcome {
        let (whole, problems) = judge(guest.as_ref(), &[]);
        ProbeOutcome {
            boot: BootOutcome {
                image: "/o/x.qcow2".into(),
                format: "qcow2".into(),
                bus: Bus::Virtio,
                firmware: Firmware::Bios,
                firmware_reason: "MBR partition table".into(),
                accel: Accel::Tcg,
                accel_reason: "KVM not usable".into(),
                booted: guest.is_some(),
                stage: Stage::System,
                seconds_to_login: Some(40.0),
                login_prompt: Some("h2k login:".into()),
                failure,
                seconds: 80.0,
                console_log: None,
                last_console_lines: vec![],
            },
            probe: ProbeResult {
                disks: vec!["/o/x.qcow2".into(), "/o/y.qcow2".into()],
                nics: effective_macs(&[]),
                root: "/dev/sda1".into(),
                reached: guest.is_some(),
                seconds_to_probe: guest.as_ref().map(|_| 45.5),
                whole,
                problems,
                whole_means: WHOLE_MEANS.iter().map(|s| s.to_string()).collect(),
                expect_ifaces: vec![],
                agent: AgentCheck::not_checked(),
                guest,
            },
        }
    }

    fn guest() -> GuestReport {
        let mut r: GuestReport = serde_json::from_str(r#"{"probe_version":1}"#).unwrap();
        r.multi_user = true;
        r.multi_user_seconds = Some(31.25);
        r.system_state = "running".into();
        r.interfaces.push(Interface {
            name: "ens3".into(),
            mac: QEMU_DEFAULT_MAC.into(),
            operstate: "up".into(),
            admin_up: true,
            driver: "virtio_net".into(),
            ipv4: vec!["10.0.2.15/24".into()],
            ipv6: vec![],
        });
        r.default_route = Some(Route {
            via: "10.0.2.2".into(),
            dev: "ens3".into(),
        });
        r
    }

    #[test]
    fn summaries_and_json_shape() {
        let o = outcome(Some(guest()), None);
        assert!(o.whole());
        let s = o.summary();
        assert!(
            s.starts_with("/o/x.qcow2 (+1 disks): whole on bus virtio, bios, tcg after 45.5 s"),
            "{s}"
        );
        assert!(s.contains("multi-user at 31.2 s") || s.contains("multi-user at 31.3 s"));
        assert!(
            s.contains("ens3 10.0.2.15/24; default route via 10.0.2.2"),
            "{s}"
        );
        assert_eq!(
            serde_json::to_value(&o.probe.agent).unwrap(),
            serde_json::json!({"expected": false, "answered": false, "version": null,
                               "error": "not checked (not expected)"})
        );
        let mut answered = o.clone();
        answered.probe.agent = agent_verdict(
            true,
            Some(AgentCheck {
                expected: true,
                answered: true,
                version: Some("7.2.19".into()),
                error: None,
            }),
            Some(&guest()),
        );
        assert!(
            answered
                .summary()
                .ends_with("default route via 10.0.2.2; guest agent 7.2.19)"),
            "{}",
            answered.summary()
        );
        let never = agent_verdict(true, None, None);
        assert_eq!(
            never.problem().as_deref(),
            Some("guest agent did not answer on org.qemu.guest_agent.0: not asked: the probe never reported")
        );
        let mut no_unit = guest();
        no_unit.agent_unit = "not-found".into();
        let silent = AgentCheck {
            expected: true,
            error: Some("no reply to guest-sync within 45 s".into()),
            ..AgentCheck::default()
        };
        assert_eq!(
            agent_verdict(true, Some(silent), Some(&no_unit))
                .problem()
                .as_deref(),
            Some(
                "guest agent did not answer on org.qemu.guest_agent.0: no reply to guest-sync \
                 within 45 s (qemu-guest-agent.service in the guest: not-found)"
            )
        );
        assert_eq!(
            agent_verdict(false, None, Some(&no_unit)),
            AgentCheck::not_checked()
        );
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["booted"], true);
        assert_eq!(v["bus"], "virtio");
        assert_eq!(v["probe"]["whole"], true);
        assert_eq!(v["probe"]["guest"]["interfaces"][0]["name"], "ens3");
        assert_eq!(v["probe"]["nics"][0], QEMU_DEFAULT_MAC);

        let mut g = guest();
        g.failed_units = vec!["networking.service".into()];
        g.system_state = "degraded".into();
        g.interfaces.clear();
        g.default_route = None;
        let o = ProbeOutcome {
            probe: ProbeResult {
                expect_ifaces: vec!["ens192".parse().unwrap()],
                ..outcome(None, None).probe
            },
            ..outcome(Some(g.clone()), None)
        };
        let (whole, problems) = judge(Some(&g), &o.probe.expect_ifaces);
        let o = ProbeOutcome {
            probe: ProbeResult {
                whole,
                problems,
                reached: true,
                guest: Some(g),
                ..o.probe
            },
            ..o
        };
        assert_eq!(
            o.summary(),
            "/o/x.qcow2 (+1 disks): not whole on virtio: interface ens192 missing (the guest \
             has no other); no interface up with an IPv4 address; no default route; failed \
             units: networking.service"
        );

        // Login seen, no probe line: the boot failure, worded for the probe.
        let f = BootFailure {
            kind: FailureKind::Timeout,
            reason: "login prompt after 40.0 s but no H2K-PROBE line within 300 s".into(),
            console_line: None,
            device: None,
            seconds: 300.0,
        };
        let o = outcome(None, Some(f));
        assert!(!o.whole());
        assert_eq!(o.probe.problems, vec!["the probe never reported"]);
        assert!(
            o.summary()
                .starts_with("/o/x.qcow2 (+1 disks): no probe result on bus virtio, bios, tcg: login prompt after 40.0 s"),
            "{}",
            o.summary()
        );
        // No login either: exactly boot_check's failure line.
        let mut o = o;
        o.boot.login_prompt = None;
        assert_eq!(o.summary(), o.boot.summary());
    }
}

#[cfg(test)]
mod run_tests {
    //! The probe's wait loop against a stand-in for QEMU: a script that writes a console.
    use super::*;
    use crate::accel::Accel;

    /// A "QEMU" that appends `console` (printf format) to its `-serial file:` and then sleeps
    /// until it is killed.
    fn fake_qemu(dir: &Path, console: &str) -> process::Command {
        let script = dir.join("qemu-fake");
        fs::write(
            &script,
            format!(
                "while [ $# -gt 0 ]; do [ \"$1\" = -serial ] && log=${{2#file:}}; shift; done\n\
                 printf '{console}' >>\"$log\"\nexec sleep 60\n"
            ),
        )
        .unwrap();
        let mut cmd = process::Command::new("sh");
        cmd.arg(script);
        cmd
    }

    fn spec(dir: &Path) -> GuestSpec {
        GuestSpec {
            accel: Accel::Tcg,
            cpus: 1,
            memory_mib: 256,
            firmware: Firmware::Bios,
            ovmf: None,
            bus: Bus::Virtio,
            disks: vec![dir.join("overlay0.qcow2")],
            nics: vec![],
            serial_log: dir.join("console.log"),
            agent_socket: None,
        }
    }

    fn run(console: &str, goal: Goal, timeout: Duration) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let cmd = fake_qemu(dir.path(), console);
        let start = Instant::now();
        let run = watch_guest(
            cmd,
            &spec(dir.path()),
            &dir.path().join("qemu.stderr"),
            timeout,
            &[],
            "x.qcow2",
            goal,
        )
        .unwrap();
        assert!(start.elapsed() < timeout + Duration::from_secs(5));
        run
    }

    const LOGIN_THEN_PROBE: &str = "Welcome to Debian GNU/Linux 12!\\r\\n\\r\\nh2k login: \
                                    \\r\\nH2K-PROBE 19 {\"probe_version\":1}\\r\\n";

    #[test]
    fn a_probe_run_goes_past_the_login_prompt_to_the_report() {
        let r = run(LOGIN_THEN_PROBE, Goal::Probe, Duration::from_secs(20));
        match r.ended {
            Ended::Probe { report, .. } => assert_eq!(report.probe_version, 1),
            _ => panic!("expected the probe's report"),
        }
        assert_eq!(r.login.map(|(p, _)| p).as_deref(), Some("h2k login:"));
        // The same console under the login goal ends at the prompt.
        let r = run(LOGIN_THEN_PROBE, Goal::Login, Duration::from_secs(20));
        assert!(matches!(r.ended, Ended::Login { ref prompt, .. } if prompt == "h2k login:"));
    }

    #[test]
    fn a_login_without_a_probe_line_times_out_saying_so() {
        let r = run(
            "Welcome to Debian GNU/Linux 12!\\r\\n\\r\\nh2k login: ",
            Goal::Probe,
            Duration::from_secs(2),
        );
        match r.ended {
            Ended::Failed(f) => {
                assert_eq!(f.kind, FailureKind::Timeout);
                assert!(f.reason.starts_with("login prompt after "), "{}", f.reason);
                assert!(
                    f.reason.contains("no H2K-PROBE line within 2 s"),
                    "{}",
                    f.reason
                );
            }
            _ => panic!("expected a timeout"),
        }
    }

    #[test]
    fn a_failed_boot_ends_a_probe_run_early() {
        let r = run(
            "[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\\r\\n",
            Goal::Probe,
            Duration::from_secs(30),
        );
        match r.ended {
            Ended::Failed(f) => assert_eq!(f.kind, FailureKind::KernelPanic),
            _ => panic!("expected the panic"),
        }
    }
}
