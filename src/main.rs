//! The `h2k-guest` command line. Errors end here as one line and an exit status
//! (1 = the job failed, 2 = the command line was wrong).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use h2k_guest::accel::AccelChoice;
use h2k_guest::appliance::ApplianceOptions;
use h2k_guest::pipeline::{self, RunOptions};
use h2k_guest::plan::{CompressionType, OutputFormat, Plan};
use h2k_guest::{inspect_cmd, logging, manifest, version};

/// `print!` that returns an error instead of panicking when stdout is closed (`| head -1`):
/// main turns a broken pipe into a quiet exit 0.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

#[derive(Parser, Debug)]
#[command(name = "h2k-guest", version = version::LONG,
          about = "Repair a Linux VM disk from VMware (or another hypervisor) offline and write a KVM-ready image")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Args, Debug, Clone)]
struct GlobalArgs {
    /// Accelerator for QEMU: auto uses KVM when it works, else TCG.
    #[arg(
        long,
        global = true,
        env = "H2K_ACCEL",
        default_value = "auto",
        ignore_case = true
    )]
    accel: AccelChoice,
    /// More output: -v info and the appliance's console, -vv debug.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Show the operating systems on a disk and how they boot.
    Inspect {
        /// Disk image (vmdk, qcow2, raw, vhd, vhdx, vdi) or an nbd:// URI.
        disk: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Image format, when it should not be detected.
        #[arg(long)]
        format: Option<String>,
        /// Follow backing files and VMDK extents outside the disk's directory (noted in the report).
        #[arg(long)]
        trust_backing_files: bool,
    },
    /// Repair a guest and write a KVM-ready image (from a manifest, or DISK -o OUT).
    Fix(Box<FixArgs>),
    /// Work with manifests.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    /// Watch a spool directory and fix every manifest dropped into DIR/to_be_processed/.
    ///
    /// DIR/to_be_processed/ → processing/ → processed/YYYY-MM-DD/NAME (+ NAME.report.json) or
    /// failed/YYYY-MM-DD/NAME (+ NAME.error.json); outputs go to OUTPUT_DIR/YYYY-MM-DD/JOB/.
    /// Submit atomically: write the manifest under a dotfile or *.tmp name (or elsewhere on the
    /// same file system) and rename it to NAME.json, or use `h2k-guest workflow submit`.
    /// SIGTERM/SIGINT: no new work, running jobs aborted and re-queued (--on-stop finish: let
    /// them finish), exit 0. A daemon killed with -9 loses nothing: the next start re-queues
    /// its jobs.
    Daemon(DaemonArgs),
    /// Look at a daemon's spool directory (status, queue, list) or submit a manifest to it.
    Workflow {
        #[command(subcommand)]
        command: WorkflowCommand,
    },
    /// Check an image with qemu-img check, boot it (--boot) until a login prompt, or boot it
    /// with a probe (--boot --probe) that reports whether the guest came up whole.
    ///
    /// With --probe, "whole" means: multi-user.target reached; every --expect-iface interface
    /// present and up (with its address when one is given); at least one non-loopback
    /// interface up with an IPv4 address, and a default route; every /etc/fstab file system
    /// (not noauto) mounted; every /etc/fstab swap (not noauto) active; no failed unit;
    /// `systemctl is-system-running` says running; with --expect-agent, the QEMU guest agent
    /// answers guest-sync, guest-info and guest-ping on org.qemu.guest_agent.0. The exit
    /// status is non-zero otherwise.
    Validate {
        /// Disk image (qcow2, vmdk, raw, vhd, vhdx, vdi) or an nbd:// URI; never written.
        image: String,
        /// Boot it under QEMU on a throw-away overlay and wait for `login:` on the serial console.
        #[arg(long)]
        boot: bool,
        /// Firmware: auto picks UEFI when the disk has an EFI system partition.
        #[arg(long, default_value = "auto", requires = "boot", value_parser = ["auto", "bios", "uefi"])]
        firmware: String,
        /// Seconds to wait for the login prompt.
        #[arg(long, value_name = "S", default_value_t = 300, requires = "boot")]
        timeout: u64,
        /// Disk controller: virtio, virtio-scsi, pvscsi (VMware's), lsi, sata.
        #[arg(long, default_value = "virtio", requires = "boot", ignore_case = true)]
        bus: h2k_guest::validate::Bus,
        /// Image format, when it should not be detected.
        #[arg(long)]
        format: Option<String>,
        /// Keep the guest's serial console in FILE (default: a temp file, kept on failure).
        #[arg(long, value_name = "FILE", requires = "boot")]
        console_log: Option<PathBuf>,
        /// Put a one-shot probe unit into the throw-away overlay (one appliance launch), boot
        /// it and read the probe's report from the serial console (no credentials needed);
        /// --timeout then bounds the wait for that report.
        #[arg(long, requires = "boot")]
        probe: bool,
        /// Another disk of the VM, attached after IMAGE in the order given (repeatable).
        #[arg(long = "disk", value_name = "EXTRA_IMAGE", requires = "probe")]
        disks: Vec<String>,
        /// One NIC with this MAC (repeatable, in PCI order); default: one NIC with QEMU's
        /// default MAC 52:54:00:12:34:56. User-mode networking: DHCP 10.0.2.15, gateway 10.0.2.2.
        #[arg(long = "mac", value_name = "MAC", requires = "probe",
              value_parser = h2k_guest::validate::parse_mac)]
        macs: Vec<String>,
        /// An interface that must be up, with this address when given (repeatable),
        /// e.g. ens192=10.0.2.15/24.
        #[arg(
            long = "expect-iface",
            value_name = "NAME[=ADDR/PREFIX]",
            requires = "probe"
        )]
        expect_ifaces: Vec<h2k_guest::validate::ExpectIface>,
        /// The QEMU guest agent must answer on its virtio-serial port org.qemu.guest_agent.0
        /// (the guest is not whole otherwise).
        #[arg(long, requires = "probe")]
        expect_agent: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// Check a manifest without running anything: print the plan it describes, or the error.
    Validate {
        file: PathBuf,
        /// Directory relative output paths resolve under (default: the manifest's directory).
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Print the resolved plan as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct FixArgs {
    /// Source disk (vmdk, qcow2, raw, vhd, vhdx, vdi) or nbd:// URI; instead of --manifest.
    #[arg(conflicts_with = "manifest", required_unless_present_any = ["manifest", "batch"])]
    disk: Option<String>,
    /// A manifest (seed format or HyperSDK Artifact Manifest v1.0; JSON or YAML).
    #[arg(short, long)]
    manifest: Option<PathBuf>,
    /// Output image (required with DISK; with --manifest, overrides the boot disk's output).
    #[arg(short, long, required_unless_present_any = ["manifest", "batch"])]
    output: Option<PathBuf>,
    /// Directory relative manifest outputs resolve under (default: the manifest's directory).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Source image format (default: detected).
    #[arg(long)]
    format: Option<String>,
    /// Output format.
    #[arg(long, value_parser = ["qcow2", "raw"])]
    output_format: Option<String>,
    /// Compress the qcow2 output.
    #[arg(long)]
    compress: bool,
    /// qcow2 compression algorithm (zlib for readers older than QEMU 5.1).
    #[arg(long, value_parser = ["zstd", "zlib"])]
    compression_type: Option<String>,
    /// fstab rewrite mode.
    #[arg(long, value_parser = ["stabilize-all", "bypath-only", "noop"])]
    fstab_mode: Option<String>,
    /// Leave GRUB alone.
    #[arg(long)]
    no_grub: bool,
    /// Regenerate grub.cfg with the guest's grub-mkconfig even when patching its kernel lines
    /// in place is enough.
    #[arg(long)]
    regenerate_grub: bool,
    /// Leave the initramfs alone.
    #[arg(long)]
    no_initramfs: bool,
    /// Rebuild the initramfs even when virtio drivers are already in it.
    #[arg(long)]
    force_initramfs: bool,
    /// How virtio gets into the initramfs: `rebuild` with the guest's own tool, `append` the
    /// missing modules (with a fresh module index) to the existing image, or `auto`: append
    /// when the extended image verifies, else rebuild (default: auto, or the manifest's
    /// `initramfs_strategy`).
    #[arg(long, value_name = "rebuild|append|auto")]
    initramfs: Option<String>,
    /// Remove VMware Tools (open-vm-tools) from the guest.
    #[arg(long)]
    remove_vmware_tools: bool,
    /// Install qemu-guest-agent offline: fetched for the guest's release by the host's apt
    /// (Debian 11, 12, 13 on amd64; others are refused before anything is written) and
    /// installed with the guest's own dpkg. H2K_DEBIAN_MIRROR / H2K_DEBIAN_SECURITY choose
    /// the mirrors. With --boot-check the agent must then answer.
    #[arg(long)]
    install_guest_agent: bool,
    /// Network continuity: keep-names pins each interface name the guest configures to its
    /// KVM NIC with a systemd .link file; rename rewrites the configuration to the names given
    /// with --nic (or nics[].target_name); leave changes nothing and warns about lost names.
    #[arg(long, value_parser = ["keep-names", "rename", "leave"], conflicts_with = "no_network_cleanup")]
    network: Option<String>,
    /// The MAC a VMware NIC gets on KVM (and, for --network rename, its new interface name):
    /// OLD_MAC=NEW_MAC[,name=NEWNAME]. Repeatable; by default a NIC keeps its MAC.
    #[arg(long, value_name = "OLD_MAC=NEW_MAC[,name=NEWNAME]")]
    nic: Vec<String>,
    /// Change no network configuration (the same as --network leave).
    #[arg(long)]
    no_network_cleanup: bool,
    /// Do not trim free space before the copy.
    #[arg(long)]
    no_trim: bool,
    /// Keep FILE.h2k-orig copies of changed guest files.
    #[arg(long)]
    backup: bool,
    /// Skip `qemu-img check` of the output.
    #[arg(long)]
    no_check: bool,
    /// After converting, boot the output on virtio-blk until a login prompt (fails the job if not).
    #[arg(long)]
    boot_check: bool,
    /// With --boot-check: an interface the guest must have up, with this address when given
    /// (repeatable; added to the manifest's validate.expect_ifaces), e.g. ens192=10.0.2.15/24.
    #[arg(long = "expect-iface", value_name = "NAME[=ADDR/PREFIX]")]
    expect_ifaces: Vec<h2k_guest::validate::ExpectIface>,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
    /// Follow backing files and VMDK extents outside the source's directory (recorded in the report).
    #[arg(long)]
    trust_backing_files: bool,
    /// Record the source's sha256 in the report.
    #[arg(long)]
    checksum: bool,
    /// Where to write the report (default: OUTPUT.report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    batch: h2k_guest::batch::BatchArgs,
}

fn appliance_options(g: &GlobalArgs) -> ApplianceOptions {
    ApplianceOptions {
        accel: g.accel,
        verbose: g.verbose > 0,
        ..ApplianceOptions::default()
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Commands::Daemon(args) = &cli.command {
        return daemon_cmd(args, &cli.global); // the daemon installs its own logger
    }
    logging::init(cli.global.verbose.max(1), None).context("cannot set up logging")?;
    match cli.command {
        Commands::Inspect {
            disk,
            json,
            format,
            trust_backing_files,
        } => {
            let cancel = stop_on_signals()?;
            let report = inspect_cmd::inspect_disk(
                &disk,
                format.as_deref(),
                trust_backing_files,
                &appliance_options(&cli.global),
                cli.global.quiet,
                &cancel,
            )
            .map_err(|e| match stop_signal_name() {
                Some(sig) => anyhow::anyhow!("{disk}: interrupted by {sig}"),
                None => e.into(),
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out!("{}", inspect_cmd::render_table(&report));
            }
            Ok(())
        }
        Commands::Fix(args) => fix(*args, &cli.global),
        Commands::Daemon(_) => unreachable!("handled above"),
        Commands::Workflow { command } => workflow_cmd(command),
        Commands::Manifest {
            command:
                ManifestCommand::Validate {
                    file,
                    output_dir,
                    json,
                },
        } => {
            let plan = manifest::load_manifest(&file, output_dir.as_deref())?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                out!("{}", describe_plan(&plan));
            }
            Ok(())
        }
        Commands::Validate {
            image,
            boot,
            firmware,
            timeout,
            bus,
            format,
            console_log,
            probe,
            disks,
            macs,
            expect_ifaces,
            expect_agent,
            json,
        } => {
            use h2k_guest::validate;
            if !boot {
                let check = validate::check_image_as(&image, format.as_deref())?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&check)?);
                } else if check.clean {
                    outln!("{}", check.summary());
                }
                anyhow::ensure!(check.clean, "{}", check.summary());
                return Ok(());
            }
            let boot_opts = validate::BootOptions {
                image,
                format,
                bus,
                firmware: firmware.parse().map_err(anyhow::Error::msg)?,
                accel: cli.global.accel,
                timeout: std::time::Duration::from_secs(timeout),
                console_log,
                cancel: Some(cancel_on_signals()?),
                ..Default::default()
            };
            if probe {
                let outcome = validate::probe_check(&validate::ProbeOptions {
                    boot: boot_opts,
                    extra_disks: disks,
                    nics: macs.into_iter().map(Some).collect(),
                    expect_ifaces,
                    expect_agent,
                })?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&outcome)?);
                } else if outcome.whole() {
                    outln!("{}", outcome.summary());
                }
                anyhow::ensure!(outcome.whole(), "{}", outcome.summary());
                return Ok(());
            }
            let outcome = validate::boot_check(&boot_opts)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&outcome)?);
            } else if outcome.booted {
                outln!("{}", outcome.summary());
            }
            anyhow::ensure!(outcome.booted, "{}", outcome.summary());
            Ok(())
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot resolve path", p.display()))
}

fn plan_from_args(args: &FixArgs) -> Result<Plan> {
    let mut plan = match (&args.manifest, &args.disk) {
        (Some(m), _) => {
            let out_dir = args.output_dir.as_deref().map(absolute).transpose()?;
            let mut plan = manifest::load_manifest(m, out_dir.as_deref())?;
            if let Some(o) = &args.output {
                let o = absolute(o)?;
                if let Some(parent) = o.parent() {
                    plan.output_dir = parent.to_path_buf();
                }
                plan.disks[0].output = o;
            }
            plan
        }
        (None, Some(disk)) => {
            let source = if disk.starts_with("nbd") {
                disk.clone()
            } else {
                absolute(Path::new(disk))?.display().to_string()
            };
            let output = absolute(
                args.output
                    .as_deref()
                    .expect("clap requires --output with DISK"),
            )?;
            Plan::for_single_disk(&source, args.format.clone(), output)
        }
        (None, None) => unreachable!("clap requires DISK or --manifest"),
    };
    if args.manifest.is_some() && args.format.is_some() {
        plan.disks[0].format = args.format.clone();
    }
    if let Some(f) = &args.output_format {
        plan.convert.format = if f == "raw" {
            OutputFormat::Raw
        } else {
            OutputFormat::Qcow2
        };
    }
    if args.compress {
        plan.convert.compress = true;
    }
    if let Some(t) = &args.compression_type {
        plan.convert.compression_type = if t == "zlib" {
            CompressionType::Zlib
        } else {
            CompressionType::Zstd
        };
    }
    if let Some(m) = &args.fstab_mode {
        plan.fix.fstab_mode = m.parse().map_err(anyhow::Error::msg)?;
    }
    plan.fix.update_grub &= !args.no_grub;
    plan.fix.regenerate_grub |= args.regenerate_grub;
    plan.fix.initramfs &= !args.no_initramfs;
    plan.fix.force_initramfs |= args.force_initramfs;
    if let Some(s) = &args.initramfs {
        plan.fix.initramfs_strategy = s
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--initramfs: {e}"))?;
    }
    plan.fix.remove_vmware_tools |= args.remove_vmware_tools;
    plan.fix.guest_agent |= args.install_guest_agent;
    plan.fix.network_cleanup &= !args.no_network_cleanup;
    if let Some(mode) = &args.network {
        plan.fix.network = mode.parse().map_err(anyhow::Error::msg)?;
        plan.fix.network_cleanup = true;
    }
    h2k_guest::plan::merge_nic_flags(&mut plan.fix.nics, &args.nic).map_err(anyhow::Error::msg)?;
    plan.fix.trim &= !args.no_trim;
    plan.fix.backup |= args.backup;
    plan.validate.check_image_integrity &= !args.no_check;
    plan.validate.boot |= args.boot_check;
    plan.validate
        .expect_ifaces
        .extend(args.expect_ifaces.iter().cloned());
    anyhow::ensure!(
        args.expect_ifaces.is_empty() || plan.validate.boot,
        "--expect-iface applies to the boot check: add --boot-check (or validate.boot to the manifest)"
    );
    plan.trust_backing_files |= args.trust_backing_files;
    Ok(plan)
}

/// The signal that stopped this run (0: none), for the exit status.
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Ctrl-C / SIGTERM set the cancel flag (the job stops at the next safe point and cleans
/// up); a second one exits at once.
fn cancel_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// [`cancel_on_signals`], and the first signal also kills every child at once, so a `fix`
/// stops within a moment in any stage (it fails fast on its dead children and cleans up;
/// exit status 128 + the signal).
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = cancel_on_signals()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
            h2k_guest::process::stop_all_children();
        }
    });
    Ok(flag)
}

/// "SIGTERM" for a stopped run.
fn stop_signal_name() -> Option<&'static str> {
    match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        signal_hook::consts::SIGINT => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

fn fix(args: FixArgs, global: &GlobalArgs) -> Result<()> {
    if args.batch.batch.is_some() {
        let opts = h2k_guest::batch::BatchOptions {
            appliance: appliance_options(global),
            quiet: global.quiet,
            output_dir: args.output_dir.as_deref().map(absolute).transpose()?,
            overwrite: args.overwrite,
            checksum: args.checksum,
            cancel: stop_on_signals()?,
        };
        std::process::exit(h2k_guest::batch::run_cli(&args.batch, opts));
    }
    let plan = plan_from_args(&args)?;
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    let opts = RunOptions {
        appliance: appliance_options(global),
        quiet: global.quiet,
        cancel: stop_on_signals()?,
        checksum: args.checksum,
        overwrite: args.overwrite,
        report_path: args.report.as_deref().map(absolute).transpose()?,
    };
    match pipeline::run(&plan, &opts) {
        Ok(report) => {
            out!("{}", h2k_guest::report::summary(&report));
            let path = report
                .written_path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| {
                    opts.report_path
                        .clone()
                        .unwrap_or_else(|| pipeline::default_report_path(&plan))
                });
            outln!("report: {}", path.display());
            Ok(())
        }
        Err(f) => {
            // Stopped children make their own errors; the cause is the signal.
            let cause = match stop_signal_name() {
                Some(sig) => format!("interrupted by {sig}"),
                None => f.error.to_string(),
            };
            Err(
                anyhow::anyhow!("{cause} (report: {})", f.report_path.display())
                    .context(format!("{} failed in the {} stage", plan.job_name, f.stage)),
            )
        }
    }
}

fn describe_plan(plan: &Plan) -> String {
    let mut o = format!("manifest ok: {:?} job {:?}\n", plan.dialect, plan.job_name);
    for d in &plan.disks {
        o += &format!(
            "  disk {}: {} ({}) -> {}\n",
            d.id,
            d.source,
            d.format.as_deref().unwrap_or("auto"),
            d.output.display()
        );
    }
    o += &format!(
        "  fix: {} (fstab {:?}, grub {}, initramfs {}, vmware-tools removal {}{})\n",
        plan.fix.enabled,
        plan.fix.fstab_mode,
        plan.fix.update_grub,
        plan.fix.initramfs,
        plan.fix.remove_vmware_tools,
        if plan.fix.guest_agent {
            ", guest agent install"
        } else {
            ""
        }
    );
    o += &format!("  network: {}", plan.fix.network.as_str());
    for n in &plan.fix.nics {
        let old = n.mac.as_deref().unwrap_or("?");
        let new = n.target_mac.as_deref().unwrap_or(old);
        o += &format!(", NIC {old} → {new}");
        if let Some(name) = &n.target_name {
            o += &format!(" as {name}");
        }
    }
    o += "\n";
    o += &format!(
        "  convert: {} to {} (compress {})\n",
        plan.convert.enabled,
        plan.convert.format.as_str(),
        plan.convert.compress
    );
    let v = &plan.validate;
    o += &format!(
        "  validate: {} (image check {}, boot check {}, timeout {} s",
        v.enabled, v.check_image_integrity, v.boot, v.boot_timeout_secs
    );
    if !v.expect_ifaces.is_empty() {
        let ifaces: Vec<String> = v.expect_ifaces.iter().map(|e| e.to_string()).collect();
        o += &format!(", expect interfaces {}", ifaces.join(", "));
    }
    o += ")\n";
    for w in &plan.warnings {
        o += &format!("  warning: {w}\n");
    }
    o
}

#[derive(Args, Debug)]
struct DaemonArgs {
    /// YAML configuration with the seed's keys (manifest_workflow_dir, output_dir,
    /// max_concurrent_jobs, log_file, verbose; also on_stop, max_attempts, max_manifest_bytes).
    /// Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Spool directory (to_be_processed/, processing/, processed/, failed/ are made in it)
    /// [default: the config's manifest_workflow_dir, else $H2K_WORKFLOW_DIR, else
    /// /var/lib/h2k-guest/workflow].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Where outputs go, as OUTPUT_DIR/YYYY-MM-DD/JOB/ [default: /var/lib/h2k-guest/output].
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Jobs run at once (each in its own appliance) [default: 1].
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Also log to FILE.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// On SIGTERM/SIGINT: abort running jobs (re-queued) or let them finish [default: abort].
    #[arg(long, value_enum)]
    on_stop: Option<h2k_guest::daemon::OnStop>,
    /// Tries of one manifest (daemon crashes included) before it is filed as failed [default: 3].
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// POST job events (claimed, finished, failed) as JSON to URL; repeatable. Replaces the
    /// config's webhooks: list.
    #[arg(long = "webhook", value_name = "URL")]
    webhooks: Vec<String>,
    /// Sign every --webhook body (X-H2K-Signature: sha256=HMAC) with the key in PATH.
    #[arg(long, value_name = "PATH", requires = "webhooks")]
    webhook_secret_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SpoolArgs {
    /// Spool directory [default: the config's manifest_workflow_dir, else $H2K_WORKFLOW_DIR,
    /// else /var/lib/h2k-guest/workflow].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Take the spool directory from the daemon's configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum WorkflowCommand {
    /// Is a daemon running on the spool (pid, since when, jobs with stage and elapsed time)?
    Status {
        #[command(flatten)]
        spool: SpoolArgs,
        #[arg(long)]
        json: bool,
    },
    /// Counts: to be processed, processing, processed today, failed today.
    Queue {
        #[command(flatten)]
        spool: SpoolArgs,
        #[arg(long)]
        json: bool,
    },
    /// Jobs with their status and duration (filed ones, then processing and queued).
    List {
        #[command(flatten)]
        spool: SpoolArgs,
        /// Only failed jobs.
        #[arg(long, conflicts_with = "processed")]
        failed: bool,
        /// Only processed jobs.
        #[arg(long)]
        processed: bool,
        /// Only jobs filed on or after DATE (YYYY-MM-DD, UTC).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Live view of queue depth and running jobs (plain lines when not a terminal).
    Watch(h2k_guest::workflow_watch::WatchArgs),
    /// Submit manifests atomically (copied under a hidden temp name, then renamed in).
    Submit {
        #[arg(required = true, value_name = "MANIFEST")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        spool: SpoolArgs,
    },
}

fn daemon_cmd(args: &DaemonArgs, global: &GlobalArgs) -> Result<()> {
    use h2k_guest::daemon;
    let overrides = daemon::Overrides {
        config: args.config.clone(),
        dir: args.dir.clone(),
        output_dir: args.output_dir.clone(),
        jobs: args.jobs,
        log_file: args.log_file.clone(),
        verbose: global.verbose,
        on_stop: args.on_stop,
        max_attempts: args.max_attempts,
        accel: global.accel,
        webhooks: args.webhooks.clone(),
        webhook_secret_file: args.webhook_secret_file.clone(),
    };
    let (cfg, warnings) = daemon::resolve(&overrides)?;
    Ok(daemon::run(cfg, warnings)?)
}

fn workflow_cmd(cmd: WorkflowCommand) -> Result<()> {
    use h2k_guest::daemon::spool::Spool;
    use h2k_guest::workflow;
    let spool_of = |a: &SpoolArgs| -> Result<Spool> {
        let dir = h2k_guest::daemon::spool_dir(a.dir.as_deref(), a.config.as_deref())?;
        Ok(Spool::new(&dir))
    };
    match cmd {
        WorkflowCommand::Status { spool, json } => {
            let st = workflow::status(&spool_of(&spool)?)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                out!("{}", workflow::render_status(&st));
            }
        }
        WorkflowCommand::Queue { spool, json } => {
            let q = workflow::queue(&spool_of(&spool)?)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&q)?);
            } else {
                out!("{}", workflow::render_queue(&q));
            }
        }
        WorkflowCommand::List {
            spool,
            failed,
            processed,
            since,
            json,
        } => {
            let filter = workflow::ListFilter { failed, processed };
            let entries = workflow::list(&spool_of(&spool)?, filter, since.as_deref())?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                out!("{}", workflow::render_list(&entries));
            }
        }
        WorkflowCommand::Watch(args) => h2k_guest::workflow_watch::run(&args)?,
        WorkflowCommand::Submit { files, spool } => {
            let sp = spool_of(&spool)?;
            for f in &files {
                let dest = workflow::submit(&sp, f)?;
                outln!("submitted {} as {}", f.display(), dest.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h2k-guest: error: {e:#}");
            match STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst) {
                0 => ExitCode::from(1),
                sig => ExitCode::from(128 + sig as u8),
            }
        }
    }
}

/// The reader of our stdout went away (`h2k-guest workflow list | head -1`): not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2k_guest::plan::NetworkMode;

    fn plan(extra: &[&str]) -> Result<Plan> {
        let mut argv = vec!["h2k-guest", "fix", "/src/vm.vmdk", "-o", "/out/vm.qcow2"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.command {
            Commands::Fix(args) => plan_from_args(&args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn network_flags_go_into_the_plan() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.fix.network_mode(), NetworkMode::KeepNames);
        let p = plan(&[
            "--network",
            "rename",
            "--nic",
            "00:50:56:AA:BB:CC=52:54:00:01:02:03,name=enp1s0",
            "--nic",
            "00:50:56:aa:bb:dd=00:50:56:aa:bb:dd",
        ])
        .unwrap();
        assert_eq!(p.fix.network_mode(), NetworkMode::Rename);
        assert_eq!(p.fix.nics.len(), 2);
        assert_eq!(p.fix.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(p.fix.nics[0].target_name.as_deref(), Some("enp1s0"));
        let p = plan(&["--no-network-cleanup"]).unwrap();
        assert_eq!(p.fix.network_mode(), NetworkMode::Leave);
    }

    #[test]
    fn expect_iface_flags_go_into_the_boot_check() {
        let p = plan(&[
            "--boot-check",
            "--expect-iface",
            "ens192",
            "--expect-iface",
            "ens224=10.0.2.15/24",
        ])
        .unwrap();
        let given: Vec<String> = p
            .validate
            .expect_ifaces
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(given, ["ens192", "ens224=10.0.2.15/24"]);
        assert!(describe_plan(&p).contains(
            "validate: true (image check true, boot check true, timeout 300 s, expect interfaces \
             ens192, ens224=10.0.2.15/24)"
        ));
        let err = plan(&["--expect-iface", "ens192"]).unwrap_err();
        assert!(err.to_string().contains("add --boot-check"), "{err}");
        let err = plan(&["--boot-check", "--expect-iface", "ens192=10.0.2.300"]).unwrap_err();
        assert!(err.to_string().contains("is not an address"), "{err}");
    }

    #[test]
    fn bad_network_flags_are_refused() {
        assert!(plan(&["--network", "keep"]).is_err());
        assert!(plan(&["--network", "leave", "--no-network-cleanup"]).is_err());
        let err = plan(&["--nic", "00:50:56:aa:bb=52:54:00:01:02:03"]).unwrap_err();
        assert!(err.to_string().contains("is not a MAC address"), "{err}");
        let err = plan(&[
            "--nic",
            "00:50:56:aa:bb:cc=52:54:00:01:02:03",
            "--nic",
            "00:50:56:aa:bb:cc=52:54:00:01:02:04",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }
}
