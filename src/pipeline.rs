//! One VM, end to end: SANITY → LOAD → INSPECT → FIX → CONVERT → VALIDATE, with one appliance
//! launch, a report of every stage, and nothing left behind on failure: the source is only
//! ever a read-only backing file, temp files live in a hidden directory beside the outputs
//! that is removed on every path, and outputs appear under their final names only when whole.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::appliance::{Appliance, ApplianceError, ApplianceOptions, Drive};
use crate::convert::{self, ConvertError, NbdExport};
use crate::fix::{self, FixError, Guest};
use crate::guestfs::{DriveOptions, GuestfsError};
use crate::inspect::{self, InspectError};
use crate::load::{self, LoadError, Source};
use crate::plan::Plan;
use crate::report::{ApplianceRecord, OutputRecord, Report, SourceRecord};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Sanity(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: checksum mismatch: manifest says {expected}, file has {actual}")]
    Checksum {
        path: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    #[error("{disk}: {cause}")]
    Inspect { disk: String, cause: InspectError },
    #[error(transparent)]
    Fix(#[from] FixError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("{0}")]
    Validate(String),
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    #[error("appliance: {0}")]
    Guestfs(#[from] GuestfsError),
    #[error("interrupted")]
    Cancelled,
}

/// How to run (not what to do: that is the [`Plan`]).
#[derive(Clone)]
pub struct RunOptions {
    pub appliance: ApplianceOptions,
    pub quiet: bool,
    /// Set by SIGINT/SIGTERM handlers (or the daemon); checked between steps.
    pub cancel: Arc<AtomicBool>,
    /// Compute the source's sha256 for the report even when the manifest gives none.
    pub checksum: bool,
    /// Replace existing outputs instead of refusing.
    pub overwrite: bool,
    /// Where to write the report; default `<first output>.report.json`.
    pub report_path: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            appliance: ApplianceOptions::default(),
            quiet: false,
            cancel: Arc::new(AtomicBool::new(false)),
            checksum: false,
            overwrite: false,
            report_path: None,
        }
    }
}

/// A failed job: which stage, why, and the report as far as it got (already written).
#[derive(Debug)]
pub struct JobFailure {
    pub stage: String,
    pub error: PipelineError,
    pub report: Report,
    pub report_path: PathBuf,
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stage: {}", self.stage, self.error)
    }
}

impl std::error::Error for JobFailure {}

/// The report's default location.
pub fn default_report_path(plan: &Plan) -> PathBuf {
    match plan.disks.first() {
        Some(d) => {
            let mut s = d.output.as_os_str().to_owned();
            s.push(".report.json");
            PathBuf::from(s)
        }
        None => plan
            .output_dir
            .join(format!("{}.report.json", plan.job_name)),
    }
}

/// Run the whole job; the report is written on success and on failure.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<Report, Box<JobFailure>> {
    let mut report = Report::new(plan);
    let report_path = opts
        .report_path
        .clone()
        .unwrap_or_else(|| default_report_path(plan));
    let mut stage = String::from("sanity");
    let mut created_dirs = Vec::new();
    let result = run_stages(plan, opts, &mut report, &mut stage, &mut created_dirs);
    match result {
        Ok(()) => {
            report.finish(None);
            // With --overwrite the old report described the output just replaced: replace it
            // too. Otherwise never clobber (a file given with --report, an earlier run's).
            let written = if opts.overwrite && opts.report_path.is_none() {
                report.write_replacing(&report_path)
            } else {
                report.write_new(&report_path)
            };
            if let Err(e) = written {
                report.finish(Some((
                    "report".into(),
                    format!("cannot write {}: {e}", report_path.display()),
                )));
                return Err(Box::new(JobFailure {
                    stage: "report".into(),
                    error: PipelineError::Sanity(format!(
                        "cannot write report {}: {e}",
                        report_path.display()
                    )),
                    report,
                    report_path,
                }));
            }
            Ok(report)
        }
        Err(error) => {
            report.finish(Some((stage.clone(), error.to_string())));
            // Refused before anything was written: the directories this run made for its
            // outputs go again (deepest first), and no report is left in them.
            let early = matches!(stage.as_str(), "sanity" | "load");
            // Refused before the output directory existed (an OVA's bad descriptor): there is
            // nowhere to put a report, and nothing to clean up.
            let no_dir = !report_path.parent().is_some_and(Path::is_dir);
            if early && (!created_dirs.is_empty() || no_dir) {
                for dir in created_dirs.iter().rev() {
                    let _ = std::fs::remove_dir(dir);
                }
                return Err(Box::new(JobFailure {
                    stage,
                    error,
                    report,
                    report_path,
                }));
            }
            let report_path = match report.write_new(&report_path) {
                Ok(written) => written,
                Err(e) => {
                    log::warn!(
                        "cannot write the failure report {}: {e}",
                        report_path.display()
                    );
                    report_path
                }
            };
            Err(Box::new(JobFailure {
                stage,
                error,
                report,
                report_path,
            }))
        }
    }
}

fn check_cancel(opts: &RunOptions) -> Result<(), PipelineError> {
    if opts.cancel.load(Ordering::SeqCst) {
        Err(PipelineError::Cancelled)
    } else {
        Ok(())
    }
}

fn run_stages(
    plan: &Plan,
    opts: &RunOptions,
    report: &mut Report,
    stage: &mut String,
    created_dirs: &mut Vec<PathBuf>,
) -> Result<(), PipelineError> {
    // An OVA becomes one disk per VMDK of the package, with the OVF's hardware: from here on
    // the expanded plan is the job's (and the report's).
    *stage = "load".into();
    let expanded = load::ova::expand_plan(plan)?;
    let plan = match &expanded {
        Some(p) => {
            for w in &p.warnings[plan.warnings.len().min(p.warnings.len())..] {
                log::warn!("{w}");
                report.warnings.push(w.clone());
            }
            report.plan = p.clone();
            p
        }
        None => plan,
    };
    *stage = "sanity".into();
    report.stage("sanity", |_| sanity(plan, opts, created_dirs))?;
    check_cancel(opts)?;

    *stage = "load".into();
    // Work directories of runs killed with SIGKILL are removed here, by the next run.
    for stale in crate::workdir::sweep_stale(&plan.output_dir) {
        log::info!("removed the abandoned work directory {}", stale.display());
    }
    let workdir = crate::workdir::WorkDir::create(&plan.output_dir).map_err(|e| {
        PipelineError::Sanity(format!(
            "{}: cannot create a work directory: {e}",
            plan.output_dir.display()
        ))
    })?;
    let overlays = report.stage("load", |r| load_sources(plan, opts, r, workdir.path()))?;
    check_cancel(opts)?;

    *stage = "appliance".into();
    let drives: Vec<Drive> = overlays
        .iter()
        .map(|o| Drive {
            path: o.display().to_string(),
            options: DriveOptions {
                format: Some("qcow2".into()),
                discard: Some("besteffort".into()),
                ..Default::default()
            },
        })
        .collect();
    let mut app_opts = opts.appliance.clone();
    app_opts.identifier = plan
        .job_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    if app_opts.identifier.is_empty() {
        app_opts.identifier = "h2k".into();
    }
    let spinner = crate::progress::Spinner::new("starting the libguestfs appliance", opts.quiet);
    let app = report.stage("appliance", |_| Appliance::launch(&drives, &app_opts));
    spinner.finish();
    let app = app?;
    *stage = "inspect".into();
    report.appliance = Some(ApplianceRecord {
        accelerator: app.accel,
        reason: app.accel_reason.clone(),
        launches: app.launches,
        launch_seconds: app.launch_seconds,
        vcpus: app_opts.vcpus,
        memory_mib: app_opts.memory_mib,
    });
    log::info!(
        "appliance up in {:.1} s ({}: {})",
        app.launch_seconds,
        app.accel,
        app.accel_reason
    );
    let boot_disk = plan.disks[0].source.clone();
    let inspect_err = |cause: InspectError| PipelineError::Inspect {
        disk: boot_disk.clone(),
        cause,
    };
    let os = report.stage("inspect", |r| -> Result<_, PipelineError> {
        let disks = r
            .timed("filesystems", || inspect::scan_disks(&app.g))
            .map_err(|e| inspect_err(e.into()))?;
        let roots = r
            .timed("roots", || inspect::find_roots(&app.g, &disks))
            .map_err(inspect_err)?;
        if roots.len() > 1 {
            r.warnings.push(format!(
                "{} operating systems found; fixing the first ({})",
                roots.len(),
                roots[0].device
            ));
        }
        let mount_warnings = r
            .timed("mount", || inspect::mount_guest(&app.g, &roots[0]))
            .map_err(inspect_err)?;
        r.warnings.extend(mount_warnings);
        let mut parts = Vec::new();
        let os = inspect::inspect_root_timed(&app.g, &roots[0], &disks, &mut parts)
            .map_err(inspect_err)?;
        for (name, seconds) in parts {
            r.stage_part(name, seconds);
        }
        Ok(os)
    })?;
    if let Some(t) = report.timeline.last() {
        let parts: Vec<String> = t
            .parts
            .iter()
            .map(|p| format!("{} {:.1} s", p.name, p.seconds))
            .collect();
        log::info!("inspect took {}", parts.join(", "));
    }
    log::info!(
        "found {} ({} {}.{}), {} firmware, {}",
        os.product_name,
        os.distro,
        os.major_version,
        os.minor_version,
        os.firmware.kind,
        os.bootloader.kind
    );
    if os.os_type != "linux" {
        return Err(PipelineError::Sanity(format!(
            "the guest is {} ({}); h2k-guest converts Linux guests only",
            os.os_type, os.product_name
        )));
    }
    report.os = Some(os.clone());
    check_cancel(opts)?;

    *stage = "fix".into();
    report.stage("fix", |r| -> Result<(), PipelineError> {
        let guest = Guest {
            g: &app.g,
            os: &os,
            disk_count: overlays.len(),
            backup: plan.fix.backup,
            work_dir: workdir.path(),
        };
        let mut warnings = Vec::new();
        let records = fix::apply_all(&guest, &plan.fix, &mut warnings)?;
        for rec in &records {
            log::info!("fix {}: {:?}: {}", rec.name, rec.status, rec.summary);
        }
        r.fixes = records;
        r.warnings.extend(warnings);
        if plan.fix.trim {
            for m in &os.mountpoints {
                if let Err(e) = app.g.fstrim(&m.mountpoint) {
                    log::debug!("fstrim {} skipped: {e}", m.mountpoint);
                }
            }
        }
        Ok(())
    })?;
    // Unmount, sync and stop the appliance before anything reads the overlay.
    app.finish()?;
    check_cancel(opts)?;

    if plan.convert.enabled {
        *stage = "convert".into();
        report.stage("convert", |r| {
            convert_all(plan, opts, r, &overlays, workdir.path())
        })?;
    }
    check_cancel(opts)?;

    if plan.validate.enabled && plan.convert.enabled {
        *stage = "validate".into();
        report.stage("validate", |r| validate_outputs(plan, opts, r))?;
    }
    check_cancel(opts)?;

    // Last, so a domain is written (and defined) only for a job that succeeded.
    if plan.libvirt_xml_path().is_some() {
        *stage = "libvirt".into();
        report.stage("libvirt", |r| -> Result<(), PipelineError> {
            if let Some((record, warnings)) = crate::libvirt::write_domain(plan, r, opts.overwrite)?
            {
                r.warnings.extend(warnings);
                r.libvirt = Some(record);
            }
            Ok(())
        })?;
    }
    drop(workdir);
    Ok(())
}

/// `create_dir_all` that records each directory it had to make (outermost first).
fn create_dirs_recorded(dir: &Path, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => created.push(d.to_path_buf()),
            // Another job of the same batch made it in between: it is that job's to clean up.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether two paths name the same file (device and inode), however they are spelled.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn sanity(plan: &Plan, opts: &RunOptions, created: &mut Vec<PathBuf>) -> Result<(), PipelineError> {
    load::require_tool(crate::process::QEMU_IMG)?;
    if plan.convert.enabled {
        load::require_tool(crate::process::QEMU_NBD)?;
    }
    if plan.disks.is_empty() {
        return Err(PipelineError::Sanity("the plan names no disk".into()));
    }
    let dir = &plan.output_dir;
    create_dirs_recorded(dir, created).map_err(|e| {
        PipelineError::Sanity(format!(
            "{}: cannot create the output directory: {e}",
            dir.display()
        ))
    })?;
    if nix::unistd::access(
        dir.as_path(),
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_err()
    {
        return Err(PipelineError::Sanity(format!(
            "{}: output directory is not writable",
            dir.display()
        )));
    }
    for d in &plan.disks {
        let out = &d.output;
        if let Some(parent) = out.parent() {
            create_dirs_recorded(parent, created).map_err(|e| {
                PipelineError::Sanity(format!("{}: cannot create: {e}", parent.display()))
            })?;
        }
        // By identity, not by spelling: `..`, symlinks and hard links all reach the same inode.
        if Path::new(&d.source) == out.as_path() || same_file(Path::new(&d.source), out) {
            return Err(PipelineError::Sanity(format!(
                "{}: output would overwrite the source disk",
                out.display()
            )));
        }
        if plan.convert.enabled && out.exists() && !opts.overwrite {
            return Err(PipelineError::Sanity(format!(
                "{}: output already exists (remove it or pass --overwrite)",
                out.display()
            )));
        }
    }
    crate::libvirt::check_plan(plan, opts.overwrite)
        .map_err(|e| PipelineError::Sanity(e.to_string()))?;
    Ok(())
}

/// sha256 of a file, as "sha256:<hex>".
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_of(std::fs::File::open(path)?, &AtomicBool::new(false))
}

fn sha256_of(mut f: std::fs::File, cancel: &AtomicBool) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted",
            ));
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

fn load_sources(
    plan: &Plan,
    opts: &RunOptions,
    report: &mut Report,
    workdir: &Path,
) -> Result<Vec<PathBuf>, PipelineError> {
    let mut overlays = Vec::new();
    let mut total_virtual: u64 = 0;
    // None once a measure failed: then the virtual size is all there is to go by.
    let mut total_required: Option<u64> = Some(0);
    for (i, d) in plan.disks.iter().enumerate() {
        let source = Source::of_disk(d)?;
        // The checksum first: nothing else (qemu-img included) reads a file that does not match.
        let mut sha = None;
        if let Some(p) = source.local_file() {
            if let Some(bytes) = d.bytes {
                let actual = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                if actual != bytes {
                    report.warnings.push(format!(
                        "{}: manifest says {bytes} bytes, file has {actual}",
                        p.display()
                    ));
                }
            }
            if d.checksum.is_some() || opts.checksum {
                log::info!("computing sha256 of {}", p.display());
                // Opened through the source policy (non-blocking, regular file or block
                // device) so a FIFO cannot hang the checksum.
                let file = load::policy::open_source(p)?;
                let actual = sha256_of(file, &opts.cancel).map_err(|e| LoadError::Unreadable {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                if let Some(expected) = &d.checksum {
                    if !expected.eq_ignore_ascii_case(&actual) {
                        return Err(PipelineError::Checksum {
                            path: p.display().to_string(),
                            expected: expected.clone(),
                            actual,
                        });
                    }
                }
                sha = Some(actual);
            }
        }
        let info = load::probe_with(&source, d.format.as_deref(), plan.trust_backing_files)?;
        if plan.trust_backing_files && info.chain.len() > 1 {
            let files: Vec<&str> = info.chain[1..]
                .iter()
                .map(|l| l.filename.as_str())
                .collect();
            report.warnings.push(format!(
                "backing files trusted: {} ({})",
                d.source,
                files.join(", ")
            ));
        }
        total_virtual += info.virtual_size;
        let overlay = workdir.join(format!("overlay{i}.qcow2"));
        load::create_overlay(&info, &overlay)?;
        if plan.convert.enabled {
            match load::space::measure_required(&overlay) {
                Ok(bytes) => total_required = total_required.map(|t| t + bytes),
                Err(e) => {
                    log::warn!("{e}; the free-space check counts the virtual size");
                    total_required = None;
                }
            }
        }
        log::info!(
            "{}: {} {} GiB virtual; overlay {}",
            d.source,
            info.format,
            info.virtual_size >> 30,
            overlay.display()
        );
        report.sources.push(SourceRecord {
            id: d.id.clone(),
            info,
            sha256: sha,
        });
        overlays.push(overlay);
    }
    if plan.convert.enabled {
        let stat = nix::sys::statvfs::statvfs(plan.output_dir.as_path()).map_err(|e| {
            PipelineError::Sanity(format!("{}: cannot stat: {e}", plan.output_dir.display()))
        })?;
        let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
        load::space::check(&plan.output_dir, free, total_required, total_virtual)
            .map_err(PipelineError::Sanity)?;
    }
    Ok(overlays)
}

fn convert_all(
    plan: &Plan,
    opts: &RunOptions,
    report: &mut Report,
    overlays: &[PathBuf],
    workdir: &Path,
) -> Result<(), PipelineError> {
    // Every disk's export first, then the copies side by side under one progress bar.
    let mut exports = Vec::new();
    for (i, overlay) in overlays.iter().enumerate() {
        let socket = workdir.join(format!("nbd{i}.sock"));
        exports.push(NbdExport::start(overlay, "qcow2", &socket)?);
    }
    let virtual_size = |i: usize| {
        report
            .sources
            .get(i)
            .map(|s| s.info.virtual_size)
            .unwrap_or(0)
    };
    let jobs: Vec<convert::CopyJob> = plan
        .disks
        .iter()
        .zip(&exports)
        .enumerate()
        .map(|(i, (d, export))| {
            log::info!(
                "converting {} → {} ({})",
                d.id,
                d.output.display(),
                plan.convert.format.as_str()
            );
            convert::CopyJob {
                source_uri: export.uri(),
                output: &d.output,
                weight: virtual_size(i),
            }
        })
        .collect();
    convert::convert_all(
        &jobs,
        &plan.convert,
        &opts.cancel,
        opts.quiet,
        convert::MAX_PARALLEL_COPIES,
    )?;
    drop(exports);
    for (i, d) in plan.disks.iter().enumerate() {
        let bytes = std::fs::metadata(&d.output).map(|m| m.len()).unwrap_or(0);
        report.outputs.push(OutputRecord {
            disk_id: d.id.clone(),
            path: d.output.clone(),
            format: plan.convert.format.as_str().into(),
            compressed: plan.convert.compress
                && plan.convert.format == crate::plan::OutputFormat::Qcow2,
            bytes,
            virtual_size: virtual_size(i),
            check: None,
        });
    }
    Ok(())
}

fn validate_outputs(
    plan: &Plan,
    opts: &RunOptions,
    report: &mut Report,
) -> Result<(), PipelineError> {
    if plan.validate.check_image_integrity {
        for out in report.outputs.iter_mut() {
            let v = crate::validate::check_image(&out.path)
                .map_err(|e| PipelineError::Validate(e.to_string()))?;
            log::info!("{}", v.summary());
            let clean = !v.applicable || v.clean;
            out.check = Some(serde_json::to_value(&v).unwrap_or_default());
            if !clean {
                return Err(PipelineError::Validate(format!(
                    "{}: qemu-img check: {}",
                    out.path.display(),
                    v.summary()
                )));
            }
        }
    }
    // The product's promise, checked: the outputs boot on virtio, with the VM's NICs, and
    // the guest comes up whole (the probe's verdict).
    if plan.validate.boot && !report.outputs.is_empty() {
        let disks: Vec<String> = report
            .outputs
            .iter()
            .map(|o| o.path.display().to_string())
            .collect();
        let probe = crate::validate::ProbeOptions {
            boot: crate::validate::BootOptions {
                image: disks[0].clone(),
                accel: opts.appliance.accel,
                timeout: std::time::Duration::from_secs(plan.validate.boot_timeout_secs),
                cancel: Some(opts.cancel.clone()),
                ..Default::default()
            },
            extra_disks: disks[1..].to_vec(),
            // The NICs the VM has on KVM: the target MAC where one is given, else the kept one.
            nics: if plan.fix.nics.is_empty() {
                &plan.vm.nics
            } else {
                &plan.fix.nics
            }
            .iter()
            .map(|n| n.target_mac.clone().or_else(|| n.mac.clone()))
            .collect(),
            expect_ifaces: plan.validate.expect_ifaces.clone(),
            // An agent this run installed must answer.
            expect_agent: report.guest_agent_present(),
        };
        let outcome = crate::validate::probe_check(&probe)
            .map_err(|e| PipelineError::Validate(e.to_string()))?;
        let summary = outcome.summary();
        log::info!("{summary}");
        let mut record = crate::report::ValidationRecord::from(&outcome.boot);
        record.probe = serde_json::to_value(&outcome.probe).ok();
        report.validation.push(record);
        if !outcome.whole() {
            return Err(PipelineError::Validate(summary));
        }
    }
    Ok(())
}
