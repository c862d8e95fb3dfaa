//! `h2k-guest fix`: its flags, the plan they make (over a manifest's), and the run.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use h2k_guest::manifest;
use h2k_guest::metrics::text::TextfileMetrics;
use h2k_guest::metrics::{JobOutcome, JobSample};
use h2k_guest::pipeline::{self, RunOptions};
use h2k_guest::plan::{CompressionType, OutputFormat, Plan};

use super::signals::{stop_on_signals, stop_signal_name};
use super::{absolute, appliance_options, GlobalArgs};

#[derive(Args, Debug)]
pub struct FixArgs {
    /// Source disk (vmdk, qcow2, raw, vhd, vhdx, vdi), an OVA (all its disks, in its OVF's
    /// order; OUTPUT is the first, the others OUTPUT-diskN) or nbd:// URI; instead of --manifest.
    #[arg(conflicts_with = "manifest", required_unless_present_any = ["manifest", "batch"])]
    pub disk: Option<String>,
    /// A manifest (seed format or HyperSDK Artifact Manifest v1.0; JSON or YAML).
    #[arg(short, long)]
    pub manifest: Option<PathBuf>,
    /// Output image (required with DISK; with --manifest, overrides the boot disk's output).
    #[arg(short, long, required_unless_present_any = ["manifest", "batch"])]
    pub output: Option<PathBuf>,
    /// Directory relative manifest outputs resolve under (default: the manifest's directory).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Source image format (default: detected).
    #[arg(long)]
    pub format: Option<String>,
    /// Output format.
    #[arg(long, value_parser = ["qcow2", "raw"])]
    pub output_format: Option<String>,
    /// Compress the qcow2 output.
    #[arg(long)]
    pub compress: bool,
    /// qcow2 compression algorithm (zlib for readers older than QEMU 5.1).
    #[arg(long, value_parser = ["zstd", "zlib"])]
    pub compression_type: Option<String>,
    /// fstab rewrite mode.
    #[arg(long, value_parser = ["stabilize-all", "bypath-only", "noop"])]
    pub fstab_mode: Option<String>,
    /// Leave GRUB alone.
    #[arg(long)]
    pub no_grub: bool,
    /// Regenerate grub.cfg with the guest's grub-mkconfig even when patching its kernel lines
    /// in place is enough.
    #[arg(long)]
    pub regenerate_grub: bool,
    /// Leave the initramfs alone.
    #[arg(long)]
    pub no_initramfs: bool,
    /// Rebuild the initramfs even when virtio drivers are already in it.
    #[arg(long)]
    pub force_initramfs: bool,
    /// How virtio gets into the initramfs: `rebuild` with the guest's own tool, `append` the
    /// missing modules (with a fresh module index) to the existing image, or `auto`: append
    /// when the extended image verifies, else rebuild (default: auto, or the manifest's
    /// `initramfs_strategy`).
    #[arg(long, value_name = "rebuild|append|auto")]
    pub initramfs: Option<String>,
    /// Remove VMware Tools (open-vm-tools) from the guest.
    #[arg(long)]
    pub remove_vmware_tools: bool,
    /// Install qemu-guest-agent offline: fetched for the guest's release by the host's apt
    /// (Debian 11, 12, 13 on amd64; others are refused before anything is written) and
    /// installed with the guest's own dpkg. H2K_DEBIAN_MIRROR / H2K_DEBIAN_SECURITY choose
    /// the mirrors. With --boot-check the agent must then answer.
    #[arg(long)]
    pub install_guest_agent: bool,
    /// Network continuity: keep-names pins each interface name the guest configures to its
    /// KVM NIC with a systemd .link file; rename rewrites the configuration to the names given
    /// with --nic (or nics[].target_name); leave changes nothing and warns about lost names.
    #[arg(long, value_parser = ["keep-names", "rename", "leave"], conflicts_with = "no_network_cleanup")]
    pub network: Option<String>,
    /// The MAC a VMware NIC gets on KVM (and, for --network rename, its new interface name):
    /// OLD_MAC=NEW_MAC[,name=NEWNAME]. Repeatable; by default a NIC keeps its MAC.
    #[arg(long, value_name = "OLD_MAC=NEW_MAC[,name=NEWNAME]")]
    pub nic: Vec<String>,
    /// Change no network configuration (the same as --network leave).
    #[arg(long)]
    pub no_network_cleanup: bool,
    /// Do not trim free space before the copy.
    #[arg(long)]
    pub no_trim: bool,
    /// Keep FILE.h2k-orig copies of changed guest files.
    #[arg(long)]
    pub backup: bool,
    /// Skip `qemu-img check` of the output.
    #[arg(long)]
    pub no_check: bool,
    /// After converting, boot the output on virtio-blk until a login prompt (fails the job if not).
    #[arg(long)]
    pub boot_check: bool,
    /// With --boot-check: an interface the guest must have up, with this address when given
    /// (repeatable; added to the manifest's validate.expect_ifaces), e.g. ens192=10.0.2.15/24.
    #[arg(long = "expect-iface", value_name = "NAME[=ADDR/PREFIX]")]
    pub expect_ifaces: Vec<h2k_guest::validate::ExpectIface>,
    /// Replace an existing output.
    #[arg(long)]
    pub overwrite: bool,
    /// Follow backing files and VMDK extents outside the source's directory (recorded in the report).
    #[arg(long)]
    pub trust_backing_files: bool,
    /// Record the source's sha256 in the report.
    #[arg(long)]
    pub checksum: bool,
    /// Where to write the report (default: OUTPUT.report.json).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write Prometheus metrics of this run (with --batch: of every VM, rewritten after each)
    /// to PATH (*.prom) for node_exporter's textfile collector; written on failure too.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
    /// When the job succeeds, write a libvirt domain XML for the outputs (default
    /// OUTPUT_DIR/JOB.xml; give a path as --libvirt-xml=PATH): virtio disks in boot order,
    /// the NICs with the MACs the network step chose, a serial console, an RNG, the
    /// guest-agent channel when the agent is in the guest; type kvm where KVM works, else qemu.
    #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub libvirt_xml: Option<String>,
    /// Also define the domain with `virsh -c URI define` (default qemu:///system; give one
    /// as --libvirt-define=URI). Implies --libvirt-xml.
    #[arg(long, value_name = "URI", num_args = 0..=1, require_equals = true,
          default_missing_value = h2k_guest::plan::DEFAULT_LIBVIRT_URI)]
    pub libvirt_define: Option<String>,
    /// What the domain's NICs attach to: network:NAME (default network:default),
    /// bridge:NAME, or user (user-mode networking, no host setup).
    #[arg(long, value_name = "network:NAME|bridge:NAME|user")]
    pub libvirt_network: Option<String>,
    /// Log the domain's serial console to this file (`<log file=…/>`; libvirt writes it while
    /// the VM runs).
    #[arg(long, value_name = "PATH")]
    pub libvirt_console_log: Option<PathBuf>,
    /// vCPUs of the domain (default: the manifest's vm.cpu, else the OVA's OVF, else 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub vcpus: Option<u32>,
    /// Memory of the domain in MiB (default: the manifest's vm.mem_gb, else the OVA's OVF,
    /// else 2048).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(128..=(64 << 20)))]
    pub memory_mib: Option<u64>,
    #[command(flatten)]
    pub batch: h2k_guest::batch::BatchArgs,
}

pub fn plan_from_args(args: &FixArgs) -> Result<Plan> {
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
    libvirt_from_args(args, &mut plan)?;
    Ok(plan)
}

/// The `--libvirt-*`, `--vcpus` and `--memory-mib` flags, over the manifest's settings.
fn libvirt_from_args(args: &FixArgs, plan: &mut Plan) -> Result<()> {
    if let Some(path) = &args.libvirt_xml {
        plan.libvirt.xml = true;
        if !path.is_empty() {
            plan.libvirt.xml_path = Some(absolute(Path::new(path))?);
        }
    }
    if let Some(uri) = &args.libvirt_define {
        anyhow::ensure!(
            h2k_guest::plan::valid_libvirt_uri(uri),
            "--libvirt-define={uri:?}: not a libvirt URI (qemu:///system, qemu+ssh://HOST/system)"
        );
        plan.libvirt.define = Some(uri.clone());
    }
    if let Some(n) = &args.libvirt_network {
        plan.libvirt.network = n
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--libvirt-network {e}"))?;
    }
    if let Some(log) = &args.libvirt_console_log {
        plan.libvirt.console_log = Some(absolute(log)?);
    }
    if let Some(n) = args.vcpus {
        plan.vm.cpu = Some(n);
    }
    if let Some(mib) = args.memory_mib {
        plan.vm.mem_gb = Some(mib as f64 / 1024.0);
    }
    let domain_only = [
        (args.libvirt_network.is_some(), "--libvirt-network"),
        (args.libvirt_console_log.is_some(), "--libvirt-console-log"),
        (args.vcpus.is_some(), "--vcpus"),
        (args.memory_mib.is_some(), "--memory-mib"),
    ];
    if plan.libvirt_xml_path().is_none() {
        if let Some((_, flag)) = domain_only.iter().find(|(given, _)| *given) {
            anyhow::bail!(
                "{flag} applies to the libvirt domain: add --libvirt-xml (or pipeline.libvirt to the manifest)"
            );
        }
    }
    Ok(())
}

pub fn run(args: FixArgs, global: &GlobalArgs) -> Result<()> {
    let textfile = args
        .metrics_textfile
        .as_deref()
        .map(|p| h2k_guest::metrics::check_textfile("--metrics-textfile", p))
        .transpose()?
        .map(TextfileMetrics::new);
    if args.batch.batch.is_some() {
        let opts = h2k_guest::batch::BatchOptions {
            appliance: appliance_options(global),
            quiet: global.quiet,
            output_dir: args.output_dir.as_deref().map(absolute).transpose()?,
            overwrite: args.overwrite,
            checksum: args.checksum,
            cancel: stop_on_signals()?,
            metrics: textfile,
        };
        std::process::exit(h2k_guest::batch::run_cli(&args.batch, opts));
    }
    let started = std::time::Instant::now();
    let mut sample = None;
    let result = run_single(&args, global, &mut sample);
    if let Some(t) = &textfile {
        // Failed before the pipeline ran (the manifest, a flag): a failed job of that length.
        let (outcome, sample) = sample.unwrap_or_else(|| {
            (
                JobOutcome::Failed,
                JobSample::new(started.elapsed().as_secs_f64(), None),
            )
        });
        t.record(Some(outcome), &sample);
    }
    result
}

/// One VM; `sample` gets the outcome and metrics of the pipeline run, once it has run.
fn run_single(
    args: &FixArgs,
    global: &GlobalArgs,
    sample: &mut Option<(JobOutcome, JobSample)>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let plan = plan_from_args(args)?;
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
    let result = pipeline::run(&plan, &opts);
    let (outcome, report) = match &result {
        Ok(r) => (JobOutcome::Success, r),
        Err(f) => (JobOutcome::Failed, &f.report),
    };
    *sample = Some((
        outcome,
        JobSample::new(started.elapsed().as_secs_f64(), Some(report)),
    ));
    match result {
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
            // A run refused before its output directory existed wrote no report.
            let report = match f.report.written_path() {
                Some(path) => format!(" (report: {})", path.display()),
                None => String::new(),
            };
            Err(anyhow::anyhow!("{cause}{report}")
                .context(format!("{} failed in the {} stage", plan.job_name, f.stage)))
        }
    }
}

pub fn describe_plan(plan: &Plan) -> String {
    let mut o = format!("manifest ok: {:?} job {:?}\n", plan.dialect, plan.job_name);
    for d in &plan.disks {
        let member = d
            .ova_member
            .as_deref()
            .map(|m| format!(" [{m}]"))
            .unwrap_or_default();
        o += &format!(
            "  disk {}: {}{member} ({}) -> {}\n",
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
    if let Some(from) = &plan.vm.hardware_from {
        let v = &plan.vm;
        o += &format!(
            "  hardware (from {from}): {} vCPUs, {} MiB, {} firmware\n",
            v.cpu.map_or("?".into(), |c| c.to_string()),
            v.memory_mib().map_or("?".into(), |m| m.to_string()),
            v.firmware.map_or("unknown".into(), |f| f.to_string())
        );
    }
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
    if let Some(xml) = plan.libvirt_xml_path() {
        let l = &plan.libvirt;
        o += &format!("  libvirt: domain XML {}", xml.display());
        if let Some(uri) = &l.define {
            o += &format!(", defined on {uri}");
        }
        o += &format!(", NICs on {}", l.network);
        if let Some(log) = &l.console_log {
            o += &format!(", console log {}", log.display());
        }
        o += "\n";
    }
    for w in &plan.warnings {
        o += &format!("  warning: {w}\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use h2k_guest::plan::NetworkMode;

    fn plan(extra: &[&str]) -> Result<Plan> {
        let mut argv = vec!["h2k-guest", "fix", "/src/vm.vmdk", "-o", "/out/vm.qcow2"];
        argv.extend_from_slice(extra);
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Commands::Fix(args) => plan_from_args(&args),
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
    fn libvirt_flags_go_into_the_plan() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.libvirt_xml_path(), None);
        let p = plan(&["--libvirt-xml"]).unwrap();
        assert_eq!(p.libvirt_xml_path(), Some(PathBuf::from("/out/vm.xml")));
        let p = plan(&[
            "--libvirt-xml=/etc/libvirt/qemu/vm.xml",
            "--libvirt-define",
            "--libvirt-network",
            "user",
            "--libvirt-console-log",
            "/var/log/vm.log",
            "--vcpus",
            "3",
            "--memory-mib",
            "1536",
        ])
        .unwrap();
        assert_eq!(
            p.libvirt_xml_path(),
            Some(PathBuf::from("/etc/libvirt/qemu/vm.xml"))
        );
        assert_eq!(p.libvirt.define.as_deref(), Some("qemu:///system"));
        assert_eq!(p.libvirt.network, h2k_guest::plan::LibvirtNetwork::User);
        assert_eq!((p.vm.cpu, p.vm.memory_mib()), (Some(3), Some(1536)));
        assert!(describe_plan(&p).contains(
            "libvirt: domain XML /etc/libvirt/qemu/vm.xml, defined on qemu:///system, NICs on \
             user, console log /var/log/vm.log"
        ));
        let p = plan(&["--libvirt-define=qemu+ssh://kvm1/system"]).unwrap();
        assert_eq!(p.libvirt_xml_path(), Some(PathBuf::from("/out/vm.xml")));
        for (args, expected) in [
            (&["--libvirt-define=system"][..], "not a libvirt URI"),
            (
                &["--libvirt-xml", "--libvirt-network", "nat"][..],
                "--libvirt-network \"nat\"",
            ),
            (
                &["--vcpus", "2"][..],
                "--vcpus applies to the libvirt domain",
            ),
            (
                &["--libvirt-xml", "--vcpus", "0"][..],
                "0 is not in 1..=4096",
            ),
        ] {
            let e = format!("{:#}", plan(args).unwrap_err());
            assert!(e.contains(expected), "{args:?}: {e}");
        }
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
