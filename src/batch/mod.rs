//! `h2k-guest fix --batch FILE|DIR -j N`: many manifests, up to N at once (each job the usual
//! pipeline with its own appliance), a progress line per running job, a JSON batch report, and
//! resume: VMs whose earlier output and report match are skipped.

mod list;
mod report;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

pub use list::{
    looks_like_batch, parse_absolute_batch, parse_batch_file, read_batch, BatchEntry, BatchError,
};
pub use report::{report_outputs, resume_decision, BatchReport, Resume, VmOutcome, VmResult};

use crate::logging::JobCtx;
use crate::metrics::{JobOutcome, JobSample};
use crate::pipeline::{self, RunOptions};

/// The batch flags of `fix`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BatchArgs {
    /// Run every manifest a batch lists: a JSON or YAML file with a list of manifest paths
    /// (relative to it; or `manifests: [...]`), or a directory of *.json manifests.
    #[arg(long, value_name = "FILE|DIR", conflicts_with_all = ["manifest", "disk", "output", "report"])]
    pub batch: Option<PathBuf>,
    /// With --batch: jobs run at once, each in its own appliance.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 1, requires = "batch",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// With --batch: where to write the batch report [default: OUTPUT_DIR or the current
    /// directory, /batch-report.json]. A second run reads it to skip VMs already done.
    #[arg(long, value_name = "PATH", requires = "batch")]
    pub batch_report: Option<PathBuf>,
}

/// What every job of the batch shares with `fix`.
pub struct BatchOptions {
    pub appliance: crate::appliance::ApplianceOptions,
    pub quiet: bool,
    /// `--output-dir`: relative manifest outputs resolve under it.
    pub output_dir: Option<PathBuf>,
    pub overwrite: bool,
    pub checksum: bool,
    pub cancel: Arc<AtomicBool>,
    /// `--metrics-textfile`: every VM's metrics, the file rewritten after each.
    pub metrics: Option<crate::metrics::text::TextfileMetrics>,
}

/// Exit status: 0 all good, 1 some failed, 2 the batch itself is unusable.
pub fn run_cli(args: &BatchArgs, opts: BatchOptions) -> i32 {
    let Some(batch) = &args.batch else { return 2 };
    let entries = match read_batch(batch) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("h2k-guest: error: {e}");
            return 2;
        }
    };
    let base = opts
        .output_dir
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    let report_path = args
        .batch_report
        .clone()
        .unwrap_or_else(|| base.join("batch-report.json"));
    let report_path = std::path::absolute(&report_path).unwrap_or(report_path);
    let batch_abs = std::path::absolute(batch).unwrap_or_else(|_| batch.clone());
    let report = run_batch(
        &batch_abs,
        &entries,
        usize::from(args.jobs),
        &report_path,
        &opts,
    );
    if let Err(e) = report.write(&report_path) {
        eprintln!(
            "h2k-guest: error: {}: cannot write the batch report: {e}",
            report_path.display()
        );
        return 1;
    }
    print!("{}", render_table(&report));
    println!("batch report: {}", report_path.display());
    if report.failed > 0 {
        eprintln!(
            "h2k-guest: error: {} of {} failed",
            report.failed, report.total
        );
        return 1;
    }
    0
}

/// Run the entries, `jobs` at a time; the report of the run (not yet written).
pub fn run_batch(
    batch: &Path,
    entries: &[BatchEntry],
    jobs: usize,
    report_path: &Path,
    opts: &BatchOptions,
) -> BatchReport {
    let started = Instant::now();
    let started_at = crate::util::now_rfc3339();
    let previous = BatchReport::read(report_path);
    let display = Display::new(opts.quiet, entries.len());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<VmResult>>> = Mutex::new(vec![None; entries.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, entries.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(entry) = entries.get(i) else { break };
                let prev = previous
                    .as_ref()
                    .and_then(|p| p.vms.iter().find(|v| v.manifest == entry.manifest));
                let r = run_one(entry, prev, opts, &display);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    display.finish();
    let vms: Vec<VmResult> = results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect();
    let count = |o: VmOutcome| vms.iter().filter(|v| v.outcome == o).count();
    BatchReport {
        batch: batch.to_path_buf(),
        tool_version: crate::version::TOOL.into(),
        started_at,
        ended_at: crate::util::now_rfc3339(),
        jobs,
        total: vms.len(),
        succeeded: count(VmOutcome::Success),
        failed: count(VmOutcome::Failed),
        skipped: count(VmOutcome::Skipped),
        duration_seconds: round(started.elapsed().as_secs_f64()),
        vms,
    }
}

fn run_one(
    entry: &BatchEntry,
    prev: Option<&VmResult>,
    opts: &BatchOptions,
    display: &Display,
) -> VmResult {
    let started = Instant::now();
    let stem = entry
        .manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let r = VmResult {
        vm: crate::plan::sanitize_job_name(&stem),
        manifest: entry.manifest.clone(),
        manifest_sha256: sha256_of(&entry.manifest),
        outcome: VmOutcome::Failed,
        outputs: Vec::new(),
        report: None,
        duration_seconds: 0.0,
        failed_stage: None,
        error: None,
        skipped_because: None,
    };
    let ctx = JobCtx::new(&r.vm);
    let _scope = crate::logging::enter(Arc::clone(&ctx));
    let mut sample = None;
    let r = run_vm(entry, prev, opts, display, r, &ctx, started, &mut sample);
    if let Some(m) = &opts.metrics {
        // A skipped VM did not run: not a job. A failed one without a pipeline run (its
        // manifest did not load) counts with its duration only.
        let outcome = match r.outcome {
            VmOutcome::Success => Some(JobOutcome::Success),
            VmOutcome::Failed => Some(JobOutcome::Failed),
            VmOutcome::Skipped => None,
        };
        if let Some(outcome) = outcome {
            let sample = sample.unwrap_or_else(|| JobSample::new(r.duration_seconds, None));
            m.record(Some(outcome), &sample);
        }
    }
    r
}

/// [`run_one`] but the metrics; `sample` gets the metrics of the pipeline run, if it ran.
#[allow(clippy::too_many_arguments)]
fn run_vm(
    entry: &BatchEntry,
    prev: Option<&VmResult>,
    opts: &BatchOptions,
    display: &Display,
    mut r: VmResult,
    ctx: &Arc<JobCtx>,
    started: Instant,
    sample: &mut Option<JobSample>,
) -> VmResult {
    if opts.cancel.load(Ordering::SeqCst) {
        r.failed_stage = Some("manifest".into());
        r.error = Some("interrupted before it started".into());
        display.done(&r);
        return r;
    }
    let plan = match crate::manifest::load_manifest(&entry.manifest, opts.output_dir.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            r.failed_stage = Some("manifest".into());
            r.error = Some(first_line(&e.to_string()));
            r.duration_seconds = round(started.elapsed().as_secs_f64());
            display.done(&r);
            return r;
        }
    };
    r.vm = plan.job_name.clone();
    let report_path = pipeline::default_report_path(&plan);
    r.report = Some(report_path.clone());
    r.outputs = plan.disks.iter().map(|d| d.output.clone()).collect();
    let vm_report = std::fs::read(&report_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Resume::Skip(why) = resume_decision(prev, &r.manifest_sha256, vm_report.as_ref(), &|p| {
        p.exists()
    }) {
        r.outcome = VmOutcome::Skipped;
        r.outputs = vm_report.as_ref().map(report_outputs).unwrap_or_default();
        r.skipped_because = Some(why);
        display.done(&r);
        return r;
    }
    let bar = display.start(&r.vm, Arc::clone(ctx));
    let run_opts = RunOptions {
        appliance: opts.appliance.clone(),
        quiet: true,
        cancel: Arc::clone(&opts.cancel),
        checksum: opts.checksum,
        overwrite: opts.overwrite,
        report_path: None,
    };
    if let Some(m) = &opts.metrics {
        m.metrics.job_started();
        m.write();
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pipeline::run(&plan, &run_opts)
    }));
    if let Some(m) = &opts.metrics {
        m.metrics.job_ended();
    }
    let elapsed = started.elapsed().as_secs_f64();
    *sample = match &result {
        Ok(Ok(report)) => Some(JobSample::new(elapsed, Some(report))),
        Ok(Err(f)) => Some(JobSample::new(elapsed, Some(&f.report))),
        Err(_) => None,
    };
    match result {
        Ok(Ok(report)) => {
            r.outcome = VmOutcome::Success;
            r.outputs = report.outputs.iter().map(|o| o.path.clone()).collect();
            if let Some(p) = report.written_path() {
                r.report = Some(p.to_path_buf());
            }
        }
        Ok(Err(f)) => {
            r.failed_stage = Some(f.stage.clone());
            r.error = Some(first_line(&f.error.to_string()));
            r.report = Some(f.report_path.clone()).filter(|p| p.exists());
            r.outputs.retain(|p| p.exists());
        }
        Err(_) => {
            r.failed_stage = Some(ctx.stage().0);
            r.error = Some("internal error (please report): the job panicked".into());
            r.report = None;
            r.outputs.clear();
        }
    }
    r.duration_seconds = round(started.elapsed().as_secs_f64());
    display.end(bar);
    display.done(&r);
    r
}

/// A running job's bar: (id, bar, the job whose stage it shows).
type JobBars = Arc<Mutex<Vec<(usize, ProgressBar, Arc<JobCtx>)>>>;

/// Progress: one bar per running job on a terminal, plain lines otherwise.
struct Display {
    multi: Option<MultiProgress>,
    total: usize,
    finished: AtomicUsize,
    /// Bars and the job they follow, refreshed by a ticker thread.
    bars: JobBars,
    next_bar: AtomicUsize,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Display {
    fn new(quiet: bool, total: usize) -> Display {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let bars: JobBars = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = multi.as_ref().map(|_| {
            let (bars, stop) = (Arc::clone(&bars), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (_, bar, ctx) in bars.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                        bar.set_message(ctx.stage().0);
                        bar.tick();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        Display {
            multi,
            total,
            finished: AtomicUsize::new(0),
            bars,
            next_bar: AtomicUsize::new(0),
            stop,
            ticker: Mutex::new(ticker),
        }
    }

    fn start(&self, vm: &str, ctx: Arc<JobCtx>) -> Option<(usize, ProgressBar)> {
        let Some(multi) = &self.multi else {
            log::info!("{vm}: started");
            return None;
        };
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>24} {spinner} {elapsed_precise} {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(vm.to_string());
        let id = self.next_bar.fetch_add(1, Ordering::SeqCst);
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, bar.clone(), ctx));
        Some((id, bar))
    }

    fn end(&self, bar: Option<(usize, ProgressBar)>) {
        if let (Some((id, bar)), Some(multi)) = (bar, &self.multi) {
            self.bars
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(i, _, _)| *i != id);
            bar.finish_and_clear();
            multi.remove(&bar);
        }
    }

    fn done(&self, r: &VmResult) {
        let n = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        let line = format!("[{n}/{}] {}", self.total, outcome_line(r));
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn outcome_line(r: &VmResult) -> String {
    match r.outcome {
        VmOutcome::Success => format!("{}: success in {:.1} s", r.vm, r.duration_seconds),
        VmOutcome::Skipped => format!(
            "{}: skipped ({})",
            r.vm,
            r.skipped_because.as_deref().unwrap_or("")
        ),
        VmOutcome::Failed => format!(
            "{}: failed in the {} stage after {:.1} s: {}",
            r.vm,
            r.failed_stage.as_deref().unwrap_or("?"),
            r.duration_seconds,
            r.error.as_deref().unwrap_or("")
        ),
    }
}

/// The table printed at the end: one row per VM.
pub fn render_table(rep: &BatchReport) -> String {
    let width = rep.vms.iter().map(|v| v.vm.len()).max().unwrap_or(2).max(2);
    let mut o = format!(
        "{:<width$}  {:<8}  {:>9}  OUTPUT / ERROR\n",
        "VM", "OUTCOME", "SECONDS"
    );
    for v in &rep.vms {
        let outcome = match v.outcome {
            VmOutcome::Success => "success",
            VmOutcome::Failed => "failed",
            VmOutcome::Skipped => "skipped",
        };
        let detail = match v.outcome {
            VmOutcome::Failed => format!(
                "{}: {}",
                v.failed_stage.as_deref().unwrap_or("?"),
                v.error.as_deref().unwrap_or("")
            ),
            _ => v
                .outputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        o += &format!(
            "{:<width$}  {outcome:<8}  {:>9.1}  {detail}\n",
            v.vm, v.duration_seconds
        );
    }
    o += &format!(
        "{} VMs: {} succeeded, {} failed, {} skipped in {:.1} s ({} at once)\n",
        rep.total, rep.succeeded, rep.failed, rep.skipped, rep.duration_seconds, rep.jobs
    );
    o
}

fn sha256_of(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!("sha256:{:x}", Sha256::digest(&bytes)),
        Err(_) => String::new(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
