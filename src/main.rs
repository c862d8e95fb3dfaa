//! The `h2k-guest` command line. Errors end here as one line and an exit status
//! (1 = the job failed, 2 = the command line was wrong).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use h2k_guest::accel::AccelChoice;
use h2k_guest::appliance::ApplianceOptions;
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

mod cli;

use cli::fix::FixArgs;
use cli::service::{DaemonArgs, WorkflowCommand};
use cli::signals::{stop_on_signals, stop_signal_name, STOP_SIGNAL};

#[derive(Parser, Debug)]
#[command(name = "h2k-guest", version = version::LONG,
          about = "Repair a Linux VM disk from VMware (or another hypervisor) offline and write a KVM-ready image")]
pub(crate) struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct GlobalArgs {
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
pub(crate) enum Commands {
    /// Show the operating systems on a disk and how they boot.
    Inspect {
        /// Disk image (vmdk, qcow2, raw, vhd, vhdx, vdi), an OVA (every disk, with its OVF
        /// hardware) or an nbd:// URI.
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
    Validate(cli::validate::ValidateArgs),
    /// [packaging] Print the completion script for SHELL on stdout.
    ///
    /// For packagers and users; nothing is run. Install it where the shell looks, e.g.
    /// bash: /usr/share/bash-completion/completions/h2k-guest; zsh:
    /// /usr/share/zsh/vendor-completions/_h2k-guest; fish:
    /// /usr/share/fish/vendor_completions.d/h2k-guest.fish (the .deb ships these three).
    #[command(display_order = 900)]
    Completions(cli::docs::CompletionsArgs),
    /// [packaging] Write the man pages (h2k-guest.1, h2k-guest-fix.1, ...) into DIR.
    ///
    /// One page per subcommand, nested ones as h2k-guest-workflow-submit.1; the written
    /// paths are printed. Read one with `man -l DIR/h2k-guest-fix.1`.
    #[command(display_order = 901)]
    Manpages(cli::docs::ManpagesArgs),
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

pub(crate) fn appliance_options(g: &GlobalArgs) -> ApplianceOptions {
    ApplianceOptions {
        accel: g.accel,
        verbose: g.verbose > 0,
        ..ApplianceOptions::default()
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Commands::Daemon(args) = &cli.command {
        return cli::service::daemon(args, &cli.global); // the daemon installs its own logger
    }
    // Text generated from the parser itself: no logging, no signals.
    match &cli.command {
        Commands::Completions(args) => return cli::docs::completions(args),
        Commands::Manpages(args) => return cli::docs::manpages(args),
        _ => {}
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
        Commands::Fix(args) => cli::fix::run(*args, &cli.global),
        Commands::Daemon(_) => unreachable!("handled above"),
        Commands::Workflow { command } => cli::service::workflow(command),
        Commands::Manifest {
            command:
                ManifestCommand::Validate {
                    file,
                    output_dir,
                    json,
                },
        } => {
            let mut plan = manifest::load_manifest(&file, output_dir.as_deref())?;
            // An OVA's disks and hardware, as the run will see them (its OVF is read here).
            if let Some(expanded) = h2k_guest::load::ova::expand_plan(&plan)? {
                plan = expanded;
            }
            if json {
                outln!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                out!("{}", cli::fix::describe_plan(&plan));
            }
            Ok(())
        }
        Commands::Validate(args) => cli::validate::run(args, &cli.global),
        Commands::Completions(_) | Commands::Manpages(_) => unreachable!("handled above"),
    }
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot resolve path", p.display()))
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
