//! `h2k-guest daemon` and `h2k-guest workflow`: the spool service and its readers.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::GlobalArgs;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// YAML configuration with the seed's keys (manifest_workflow_dir, output_dir,
    /// max_concurrent_jobs, log_file, verbose; also on_stop, max_attempts, max_manifest_bytes).
    /// Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Spool directory (to_be_processed/, processing/, processed/, failed/ are made in it)
    /// [default: the config's manifest_workflow_dir, else $H2K_WORKFLOW_DIR, else
    /// /var/lib/h2k-guest/workflow].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where outputs go, as OUTPUT_DIR/YYYY-MM-DD/JOB/ [default: /var/lib/h2k-guest/output].
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Jobs run at once (each in its own appliance) [default: 1].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Also log to FILE.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// On SIGTERM/SIGINT: abort running jobs (re-queued) or let them finish [default: abort].
    #[arg(long, value_enum)]
    pub on_stop: Option<h2k_guest::daemon::OnStop>,
    /// Tries of one manifest (daemon crashes included) before it is filed as failed [default: 3].
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// POST job events (claimed, finished, failed) as JSON to URL; repeatable. Replaces the
    /// config's webhooks: list.
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
    /// Sign every --webhook body (X-H2K-Signature: sha256=HMAC) with the key in PATH.
    #[arg(long, value_name = "PATH", requires = "webhooks")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464; `:9464` is
    /// every IPv4 interface). Replaces the config's metrics_listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Keep the metrics in PATH (*.prom) for node_exporter's textfile collector, rewritten
    /// atomically after each job and every 15 s. Replaces the config's metrics_textfile.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SpoolArgs {
    /// Spool directory [default: the config's manifest_workflow_dir, else $H2K_WORKFLOW_DIR,
    /// else /var/lib/h2k-guest/workflow].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Take the spool directory from the daemon's configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
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

pub fn daemon(args: &DaemonArgs, global: &GlobalArgs) -> Result<()> {
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
        metrics_listen: args.metrics_listen.clone(),
        metrics_textfile: args.metrics_textfile.clone(),
    };
    let (cfg, warnings) = daemon::resolve(&overrides)?;
    Ok(daemon::run(cfg, warnings)?)
}

pub fn workflow(cmd: WorkflowCommand) -> Result<()> {
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
