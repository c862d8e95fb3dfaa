//! Running the guest: the wait loop and [`boot_check`].

use super::*;

// ---------------------------------------------------------------------------------------------
// Running the guest
// ---------------------------------------------------------------------------------------------

pub(crate) const POLL: Duration = Duration::from_millis(200);
/// After a fatal (not yet conclusive) line: time for the more specific one to follow.
pub(crate) const SETTLE: Duration = Duration::from_secs(8);
/// After a suspect line: this much console silence makes it a failure.
pub(crate) const SUSPECT_SILENCE: Duration = Duration::from_secs(60);
/// The initramfs silent this long, its root not mounted: it waits for a device it has no driver
/// for (dracut says so only when its initqueue gives up, 2-4 minutes in under TCG). A healthy
/// initramfs prints something every few seconds.
pub(crate) const INITRAMFS_SILENCE: Duration = Duration::from_secs(90);
/// A KVM QEMU that dies this early under `--accel auto` is retried under TCG.
pub(crate) const KVM_EARLY_EXIT: Duration = Duration::from_secs(15);
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(60);
pub(crate) const LAST_LINES: usize = 15;

/// SIGINT/SIGTERM flag for callers that pass no `cancel`: installed once per process; the
/// first signal sets it, a second one takes the default action (exit).
pub(crate) fn signal_flag() -> Option<Arc<AtomicBool>> {
    static FLAG: OnceLock<Option<Arc<AtomicBool>>> = OnceLock::new();
    FLAG.get_or_init(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&flag)).ok()?;
            signal_hook::flag::register(sig, Arc::clone(&flag)).ok()?;
        }
        Some(flag)
    })
    .clone()
}

/// What ends a successful run: a login prompt, or the probe's line (see [`probe_check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Goal {
    Login,
    Probe,
}

/// How one QEMU run ended.
pub(crate) enum Ended {
    Login {
        prompt: String,
        seconds: f64,
    },
    Probe {
        report: Box<GuestReport>,
        seconds: f64,
    },
    Failed(BootFailure),
    /// QEMU exited with an error status (`early`: within [`KVM_EARLY_EXIT`]).
    QemuError {
        reason: String,
        early: bool,
    },
    Interrupted,
}

pub(crate) struct Run {
    pub(crate) ended: Ended,
    pub(crate) stage: Stage,
    pub(crate) last_lines: Vec<String>,
    /// The login prompt and when it came (a probe run goes on past it).
    pub(crate) login: Option<(String, f64)>,
    /// The guest agent's answer, asked after the probe's line while QEMU still runs (only
    /// when the spec has its socket).
    pub(crate) agent: Option<AgentCheck>,
}

pub(crate) fn failure(
    finding: &Finding,
    device: Option<String>,
    bus: Bus,
    seconds: f64,
) -> BootFailure {
    let mut reason = match (&finding.kind, &device) {
        (FailureKind::RootDeviceMissing, Some(d)) => {
            format!("root device {d} never appeared")
        }
        (kind, Some(d)) if *kind == FailureKind::EmergencyShell => {
            format!("{} (waiting for {d})", kind.describe())
        }
        (kind, _) => kind.describe().to_string(),
    };
    if bus.is_virtio()
        && matches!(
            finding.kind,
            FailureKind::RootDeviceMissing | FailureKind::EmergencyShell
        )
    {
        reason += " (the initramfs probably lacks virtio drivers: `h2k-guest fix` adds them)";
    }
    BootFailure {
        kind: finding.kind,
        reason,
        console_line: Some(finding.line.clone()),
        device,
        seconds,
    }
}

pub(crate) fn run_guest(
    spec: &GuestSpec,
    stderr_path: &Path,
    timeout: Duration,
    cancel: &[Arc<AtomicBool>],
    image: &str,
    goal: Goal,
) -> Result<Run, ValidateError> {
    let qemu = accel::qemu_system_binary();
    if !qemu.contains('/') && process::in_path(&qemu).is_none() {
        return Err(ValidateError::Spawn {
            tool: qemu,
            reason: "not found in PATH: install qemu-system-x86 (scripts/setup.sh does)".into(),
        });
    }
    watch_guest(
        process::qemu_system(),
        spec,
        stderr_path,
        timeout,
        cancel,
        image,
        goal,
    )
}

/// Run `cmd` (QEMU, or a stand-in in tests) with the spec's arguments and read its serial
/// console until the goal, a failure, the timeout or a cancel.
pub(crate) fn watch_guest(
    mut cmd: process::Command,
    spec: &GuestSpec,
    stderr_path: &Path,
    timeout: Duration,
    cancel: &[Arc<AtomicBool>],
    image: &str,
    goal: Goal,
) -> Result<Run, ValidateError> {
    File::create(&spec.serial_log).map_err(io_err(spec.serial_log.display()))?;
    if let Some(socket) = &spec.agent_socket {
        // A run retried under TCG must not find the first QEMU's socket.
        let _ = fs::remove_file(socket);
    }
    let stderr = File::create(stderr_path).map_err(io_err(stderr_path.display()))?;
    // The process module gives QEMU its own process group (a terminal's Ctrl-C reaches us,
    // and we stop QEMU), the parent-death signal, and the kill on every path out of here.
    cmd.args(qemu_args(spec))
        .stdout(Stdio::null())
        .stderr(stderr);
    log::debug!("running {cmd:?}");
    let mut qemu_proc = cmd.spawn().map_err(spawn_err)?;
    let start = Instant::now();
    let mut log = File::open(&spec.serial_log).map_err(io_err(spec.serial_log.display()))?;
    let mut console = Console::new();
    let mut probe = ProbeScanner::new();
    let mut login: Option<(String, f64)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_output = start;
    let mut fatal_since: Option<Instant> = None;
    let mut next_progress = start + PROGRESS_EVERY;
    let secs = |t: Instant| t.duration_since(start).as_secs_f64();

    let ended = loop {
        let exited: Option<ExitStatus> = qemu_proc.try_wait().map_err(|e| ValidateError::Io {
            what: "waiting for QEMU".into(),
            reason: match e {
                ProcessError::Wait { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        loop {
            let n = log
                .read(&mut buf)
                .map_err(io_err(spec.serial_log.display()))?;
            if n == 0 {
                break;
            }
            console.push(&buf[..n]);
            if goal == Goal::Probe {
                probe.push(&buf[..n]);
            }
            last_output = Instant::now();
        }
        let now = Instant::now();
        let verdict = console.verdict();
        if let (Verdict::Login(prompt), Goal::Probe, None) = (&verdict, goal, &login) {
            log::info!(
                "{image}: login prompt after {:.1} s; waiting for the probe",
                secs(now)
            );
            login = Some((prompt.clone(), secs(now)));
        }
        if let Some(report) = probe.take() {
            break Ended::Probe {
                report: Box::new(report),
                seconds: secs(now),
            };
        }
        match verdict {
            Verdict::Login(prompt) if goal == Goal::Login => {
                break Ended::Login {
                    prompt,
                    seconds: secs(now),
                }
            }
            Verdict::Login(_) => {}
            Verdict::Failed {
                finding,
                device,
                conclusive,
            } => {
                let since = *fatal_since.get_or_insert(now);
                if conclusive || now.duration_since(since) >= SETTLE || exited.is_some() {
                    // Waiting for the root device without naming it: root= says which.
                    let device = device.or_else(|| {
                        (finding.kind == FailureKind::RootDeviceMissing)
                            .then(|| console.root_arg().map(str::to_string))
                            .flatten()
                    });
                    break Ended::Failed(failure(&finding, device, spec.bus, secs(now)));
                }
            }
            Verdict::Suspect(finding) => {
                if now.duration_since(last_output) >= SUSPECT_SILENCE || exited.is_some() {
                    let device = finding.device.clone();
                    break Ended::Failed(failure(&finding, device, spec.bus, secs(now)));
                }
            }
            Verdict::Running
                if console.stage() == Stage::Initramfs
                    && now.duration_since(last_output) >= INITRAMFS_SILENCE =>
            {
                let finding = Finding {
                    kind: FailureKind::RootDeviceMissing,
                    strength: Strength::Fatal,
                    line: console.last_line().unwrap_or_default(),
                    device: None,
                };
                let device = console.root_arg().map(str::to_string);
                let mut f = failure(&finding, device, spec.bus, secs(now));
                f.reason = format!(
                    "{} (the initramfs printed nothing for {} s without mounting it)",
                    f.reason,
                    INITRAMFS_SILENCE.as_secs()
                );
                break Ended::Failed(f);
            }
            Verdict::Running => {}
        }
        if cancel.iter().any(|c| c.load(Ordering::SeqCst)) {
            break Ended::Interrupted;
        }
        if let Some(status) = exited {
            if status.success() {
                break Ended::Failed(BootFailure {
                    kind: FailureKind::GuestStopped,
                    reason: FailureKind::GuestStopped.describe().into(),
                    console_line: console.last_line(),
                    device: None,
                    seconds: secs(now),
                });
            }
            let text = fs::read_to_string(stderr_path).unwrap_or_default();
            let reason = process::reduce_stderr(&text)
                .unwrap_or_else(|| format!("QEMU exited with {status}"));
            break Ended::QemuError {
                reason,
                early: now.duration_since(start) < KVM_EARLY_EXIT,
            };
        }
        if now.duration_since(start) >= timeout {
            let last = console.last_line();
            let suspect = match console.verdict() {
                Verdict::Suspect(f) => Some(f),
                _ => None,
            };
            let mut reason = match (goal, &login) {
                (Goal::Login, _) => format!("no login prompt within {} s", timeout.as_secs()),
                (Goal::Probe, None) => format!(
                    "no login prompt and no probe result within {} s",
                    timeout.as_secs()
                ),
                (Goal::Probe, Some((_, at))) => format!(
                    "login prompt after {at:.1} s but no {PROBE_PREFIX}line within {} s \
                     (multi-user.target never reached, or h2k-probe.service did not run)",
                    timeout.as_secs()
                ),
            };
            if login.is_none() {
                reason += &timeout_hint(&console, suspect.as_ref());
            }
            break Ended::Failed(BootFailure {
                kind: FailureKind::Timeout,
                reason,
                console_line: last,
                device: suspect.and_then(|f| f.device),
                seconds: secs(now),
            });
        }
        if now >= next_progress {
            next_progress += PROGRESS_EVERY;
            log::info!(
                "{image}: still booting after {:.0} s; console: {}",
                secs(now),
                console.last_line().as_deref().unwrap_or("(nothing yet)")
            );
        }
        std::thread::sleep(POLL);
    };
    let agent = match (&ended, &spec.agent_socket) {
        (Ended::Probe { .. }, Some(socket)) => {
            log::info!("{image}: the probe reported; asking the guest agent on {AGENT_PORT}");
            let check = query_agent(socket, AGENT_DEADLINE, cancel);
            match (&check.version, &check.error) {
                (Some(v), _) => log::info!("{image}: guest agent {v} answered"),
                (_, e) => log::info!("{image}: no guest agent: {}", e.as_deref().unwrap_or("?")),
            }
            Some(check)
        }
        _ => None,
    };
    drop(qemu_proc);
    Ok(Run {
        ended,
        stage: console.stage(),
        last_lines: console.last_lines(LAST_LINES),
        login,
        agent,
    })
}

/// Why a boot that printed no login prompt may have stopped, from what the console showed.
fn timeout_hint(console: &Console, suspect: Option<&Finding>) -> String {
    if console.bytes() == 0 {
        "; the serial console stayed empty (does the guest log to ttyS0? add console=ttyS0 \
         to its kernel command line)"
            .into()
    } else if let Some(f) = suspect {
        format!("; earlier: {:?}", f.line)
    } else if console.stage() == Stage::Initramfs {
        format!(
            "; the guest was still in its initramfs, where it waits for root={}: its storage \
             driver may be missing (dracut waits ~3 min under TCG before it gives up: a longer \
             --timeout shows its verdict)",
            console.root_arg().unwrap_or("?")
        )
    } else if console.stage() == Stage::System {
        "; the guest reached its init system but no getty printed a login prompt on ttyS0 \
         (serial-getty@ttyS0 not running?)"
            .into()
    } else {
        String::new()
    }
}

/// A local path made absolute (the overlay's backing file name must not depend on the
/// directory the overlay lives in); NBD URIs pass through.
/// The firmware, why it was chosen, and OVMF's code and private variable store (UEFI only).
pub(crate) type FirmwareChoiceMade = (Firmware, String, Option<(PathBuf, PathBuf)>);

/// The firmware to boot with (asked for, or read off the partition table) and, for UEFI, OVMF
/// with a private copy of its variable store in `tmp`.
pub(crate) fn choose_firmware(
    choice: FirmwareChoice,
    bus: Bus,
    source: &Source,
    info: &SourceInfo,
    tmp: &Path,
) -> Result<FirmwareChoiceMade, ValidateError> {
    let (firmware, reason) = match choice {
        FirmwareChoice::Bios => (Firmware::Bios, "requested".to_string()),
        FirmwareChoice::Uefi => (Firmware::Uefi, "requested".to_string()),
        FirmwareChoice::Auto => firmware_for(read_partition_table(source, info, tmp)?),
    };
    if firmware == Firmware::Uefi && !bus.uefi_bootable() {
        return Err(ValidateError::NoUefiDriver {
            image: source.qemu_name(),
            bus,
        });
    }
    let ovmf = match firmware {
        Firmware::Uefi => {
            let (code, vars_template) = find_ovmf()?;
            let vars = tmp.join("OVMF_VARS.fd");
            fs::copy(&vars_template, &vars).map_err(io_err(vars_template.display()))?;
            Some((code, vars))
        }
        Firmware::Bios => None,
    };
    Ok((firmware, reason, ovmf))
}

/// The QEMU guest for a boot check of `disks` (overlays, boot disk first) and the reason for
/// its accelerator.
pub(crate) fn guest_spec(
    opts: &BootOptions,
    firmware: Firmware,
    ovmf: Option<(PathBuf, PathBuf)>,
    disks: Vec<PathBuf>,
    nics: Vec<Option<String>>,
    tmp: &Path,
) -> (GuestSpec, String) {
    let resolved = opts.accel.resolve();
    let serial_log = opts
        .console_log
        .clone()
        .unwrap_or_else(|| tmp.join("console.log"));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let spec = GuestSpec {
        accel: resolved.accel,
        cpus: cores.clamp(1, 4),
        memory_mib: opts.memory_mib.max(256),
        firmware,
        ovmf,
        bus: opts.bus,
        disks,
        nics,
        serial_log,
        agent_socket: None,
    };
    (spec, resolved.reason)
}

/// What a boot check reports before its ending is read: what was booted and how, the console's
/// last stage and lines, and the login prompt a probe run went past (takes them from `run`).
pub(crate) fn outcome_before_ending(
    run: &mut Run,
    image: &str,
    info: &SourceInfo,
    opts: &BootOptions,
    spec: &GuestSpec,
    firmware_reason: String,
    accel_reason: String,
) -> BootOutcome {
    let login = run.login.take();
    BootOutcome {
        image: image.to_string(),
        format: info.format.clone(),
        bus: opts.bus,
        firmware: spec.firmware,
        firmware_reason,
        accel: spec.accel,
        accel_reason,
        booted: false,
        stage: run.stage,
        seconds_to_login: login.as_ref().map(|(_, s)| *s),
        login_prompt: login.map(|(p, _)| p),
        failure: None,
        seconds: 0.0,
        console_log: opts.console_log.clone(),
        last_console_lines: std::mem::take(&mut run.last_lines),
    }
}

pub(crate) fn absolute_source(image: &str) -> Source {
    match Source::parse(image) {
        Source::File(p) => Source::File(std::path::absolute(&p).unwrap_or(p)),
        nbd => nbd,
    }
}

/// Boot the image until `login:` or a failure; see the module documentation.
///
/// A guest that does not boot is an `Ok` outcome with `failure` set; `Err` means the check
/// itself could not run (not an image, QEMU or OVMF missing, interrupted, …).
pub fn boot_check(opts: &BootOptions) -> Result<BootOutcome, ValidateError> {
    let t0 = Instant::now();
    let source = absolute_source(&opts.image);
    let image = source.qemu_name();
    let info = load::probe(&source, opts.format.as_deref())?;
    let tmp = tempfile::Builder::new()
        .prefix("h2k-validate-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory"))?;
    let (firmware, firmware_reason, ovmf) =
        choose_firmware(opts.firmware, opts.bus, &source, &info, tmp.path())?;
    let overlay = tmp.path().join("overlay.qcow2");
    load::create_overlay(&info, &overlay)?;

    let mut cancel: Vec<Arc<AtomicBool>> = opts.cancel.iter().cloned().collect();
    if cancel.is_empty() {
        cancel.extend(signal_flag());
    }
    let (mut spec, mut accel_reason) =
        guest_spec(opts, firmware, ovmf, vec![overlay], Vec::new(), tmp.path());
    log::info!(
        "{image}: booting on bus {} ({}: {firmware_reason}; {}: {accel_reason}); waiting up to \
         {} s for a login prompt",
        opts.bus,
        firmware_name(firmware),
        spec.accel,
        opts.timeout.as_secs()
    );
    let stderr_path = tmp.path().join("qemu.stderr");
    let mut run = run_with_fallback(
        &mut spec,
        &mut accel_reason,
        opts,
        &stderr_path,
        &cancel,
        &image,
        Goal::Login,
    )?;

    let mut outcome = outcome_before_ending(
        &mut run,
        &image,
        &info,
        opts,
        &spec,
        firmware_reason,
        accel_reason,
    );
    match run.ended {
        Ended::Login { prompt, seconds } => {
            outcome.booted = true;
            outcome.seconds_to_login = Some(seconds);
            outcome.login_prompt = Some(prompt);
        }
        Ended::Failed(f) => {
            outcome.failure = Some(f);
            if outcome.console_log.is_none() {
                outcome.console_log = keep_console_log(&spec.serial_log, &image, opts.bus);
            }
        }
        Ended::Probe { .. } => unreachable!("a login run does not look for the probe"),
        Ended::QemuError { reason, .. } => {
            return Err(ValidateError::Qemu {
                image,
                bus: opts.bus,
                reason,
            })
        }
        Ended::Interrupted => return Err(ValidateError::Interrupted { image }),
    }
    outcome.seconds = t0.elapsed().as_secs_f64();
    Ok(outcome)
}

/// [`run_guest`], once more under TCG when KVM fails early under `--accel auto`.
pub(crate) fn run_with_fallback(
    spec: &mut GuestSpec,
    accel_reason: &mut String,
    opts: &BootOptions,
    stderr_path: &Path,
    cancel: &[Arc<AtomicBool>],
    image: &str,
    goal: Goal,
) -> Result<Run, ValidateError> {
    loop {
        let run = run_guest(spec, stderr_path, opts.timeout, cancel, image, goal)?;
        match &run.ended {
            Ended::QemuError {
                reason,
                early: true,
            } if spec.accel == Accel::Kvm && opts.accel == AccelChoice::Auto => {
                log::warn!("{image}: QEMU failed under KVM ({reason}); retrying under TCG");
                *accel_reason = format!("KVM failed at boot: {reason}");
                spec.accel = Accel::Tcg;
            }
            _ => return Ok(run),
        }
    }
}

/// Copy a failed boot's console out of the temp directory (which is about to go).
pub(crate) fn keep_console_log(log: &Path, image: &str, bus: Bus) -> Option<PathBuf> {
    let stem = Path::new(image)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let kept = tempfile::Builder::new()
        .prefix(&format!("h2k-guest-console-{stem}-{bus}-"))
        .suffix(".log")
        .tempfile()
        .ok()?;
    fs::copy(log, kept.path()).ok()?;
    kept.keep().ok().map(|(_, p)| p)
}
