//! The `h2k-guest` command line. Errors end here as one line and an exit status
//! (1 = the job failed, 2 = the command line was wrong).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use h2k_guest::accel::AccelChoice;
use h2k_guest::appliance::ApplianceOptions;
use h2k_guest::{inspect_cmd, logging, version};

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
    #[arg(long, global = true, env = "H2K_ACCEL", default_value = "auto")]
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
    },
}

fn appliance_options(g: &GlobalArgs) -> ApplianceOptions {
    ApplianceOptions {
        accel: g.accel,
        verbose: g.verbose > 0,
        ..ApplianceOptions::default()
    }
}

fn run(cli: Cli) -> Result<()> {
    logging::init(cli.global.verbose.max(1), None).context("cannot set up logging")?;
    match cli.command {
        Commands::Inspect { disk, json, format } => {
            let report = inspect_cmd::inspect_disk(
                &disk,
                format.as_deref(),
                &appliance_options(&cli.global),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect_cmd::render_table(&report));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h2k-guest: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
