//! Boot layouts other than Debian's GRUB (`scripts/make-layout.sh`): Photon OS 5's — the
//! installer-written `/boot/grub2/grub.cfg`, the `photon.cfg` environment block, PARTUUID, the
//! per-kernel dracut driver list — on Debian packages, and a Debian 13 guest booting with
//! systemd-boot and BLS entries. Each: whole on its VMware bus (the control), failing on virtio
//! unfixed, whole on virtio after `fix`; on Photon, grub.cfg byte for byte the same. The seed's
//! own scenario (its daemon configuration and manifest format) runs on `photon5-uefi`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::probe::{
    assert_fails_on_virtio, assert_whole, fix, fix_record, has_ipv4, interface, probe,
};
use common::{bin, h2k, layout, read_json, sha256_file, vm_lock};

const PHOTON_BIOS_MAC: &str = "00:50:56:8a:1b:41";
const PHOTON_UEFI_MAC: &str = "00:50:56:8a:1b:42";
const BLS_MAC: &str = "00:50:56:8a:1b:51";

/// sha256 of FILE in partition PART of each image, all read by one appliance (the appliance may
/// name the disks in either order: compare the set, not the positions).
fn sha_in_each(images: &[(&Path, &str)], part: u32, file: &str) -> Vec<String> {
    let mut args: Vec<String> = vec!["--ro".into()];
    for (img, format) in images {
        args.push(format!("--format={format}"));
        args.push("-a".into());
        args.push(img.display().to_string());
    }
    let mut script = String::from("run\n");
    for i in 0..images.len() {
        let disk = (b'a' + i as u8) as char;
        script.push_str(&format!(
            "mount-ro /dev/sd{disk}{part} /\nchecksum sha256 {file}\numount-all\n"
        ));
    }
    let mut child = Command::new("guestfish")
        .args(&args)
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guestfish");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "guestfish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn inspect_json(image: &Path) -> serde_json::Value {
    let run = h2k(["inspect".as_ref(), "--json".as_ref(), image.as_os_str()]);
    assert!(run.success(), "inspect failed:\n{}", run.describe());
    run.json()
}

/// The Photon facts every Photon test checks: inspection names it, the fixed guest is whole on
/// virtio on eth0 (net.ifnames=0) with its DHCP address, grub.cfg unchanged.
fn photon_fixed_whole(src: &Path, out: &Path, report: &serde_json::Value, new_mac: &str) {
    let grub = fix_record(report, "grub").to_string();
    assert!(
        !grub.contains("\"diff\":\"--- a/boot/grub2/grub.cfg"),
        "grub.cfg must never be rewritten on Photon: {grub}"
    );
    let shas = sha_in_each(&[(src, "vmdk"), (out, "qcow2")], 2, "/boot/grub2/grub.cfg");
    assert_eq!(shas.len(), 2, "{shas:?}");
    assert_eq!(shas[0], shas[1], "grub.cfg differs after fix");
    let (run, json) = probe(&[out], "virtio", &[new_mac], &["eth0"]);
    assert_whole("fixed on virtio", &run, &json);
    assert!(has_ipv4(interface(&json, "eth0").unwrap(), "10.0.2.15"));
}

#[test]
fn photon5_bios_is_recognised_and_comes_up_whole_on_virtio_with_grub_cfg_untouched() {
    let _vm = vm_lock();
    let src = layout("photon5-bios");
    let sha = sha256_file(&src);
    let (run, json) = probe(&[&src], "pvscsi", &[PHOTON_BIOS_MAC], &["eth0"]);
    assert_whole("control: unfixed on pvscsi", &run, &json);
    assert_fails_on_virtio(&src, PHOTON_BIOS_MAC);

    let info = inspect_json(&src);
    let text = info.to_string();
    assert!(
        text.contains("\"photon\""),
        "inspect must say photon: {info:#}"
    );
    eprintln!("inspect: {}", common::tail(&text, 5));
    common::keep_artifact("photon5-bios.inspect.json", &format!("{info:#}"));

    let new_mac = "52:54:00:4b:00:41";
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = fix(&src, dir.path(), &[]);
    photon_fixed_whole(&src, &out, &report, new_mac);
    assert_eq!(sha256_file(&src), sha, "the source changed");
}

/// `h2k-guest daemon --config CFG`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workflow_queue(spool: &Path) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["workflow", "queue", "--json", "--dir"])
        .arg(spool)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn photon5_uefi_through_the_seed_daemon_scenario_comes_up_whole_on_virtio() {
    let _vm = vm_lock();
    let src = layout("photon5-uefi");
    let sha = sha256_file(&src);
    let (run, json) = probe(&[&src], "sata", &[PHOTON_UEFI_MAC], &["eth0"]);
    assert_whole("control: unfixed on SATA", &run, &json);
    assert_fails_on_virtio(&src, PHOTON_UEFI_MAC);

    // The seed's daemon configuration (its keys and values, paths of our own) and manifest.
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("photon-sudo-test");
    let output = root.path().join("photon-sudo-output");
    let log = root.path().join("photon-sudo-daemon.log");
    let cfg = root.path().join("daemon.yaml");
    fs::write(
        &cfg,
        format!(
            "command: daemon\ndaemon: true\nmanifest_workflow_mode: true\nmanifest_workflow_dir: {}\noutput_dir: {}\nmax_concurrent_jobs: 1\nlog_file: {}\nverbose: 2\n",
            spool.display(),
            output.display(),
            log.display()
        ),
    )
    .unwrap();
    let manifest = root.path().join("photon.json");
    fs::write(
        &manifest,
        serde_json::json!({
            "version": "1.0",
            "pipeline": {
                "load": {"source_type": "vmdk", "source_path": src},
                "inspect": {"enabled": true, "detect_os": true},
                "fix": {"fstab": {"enabled": true, "mode": "stabilize-all"},
                        "grub": {"enabled": true},
                        "initramfs": {"enabled": true, "regenerate": true}},
                "convert": {"output_format": "qcow2", "compress": true,
                            "output_path": "photon-converted.qcow2"}
            }
        })
        .to_string(),
    )
    .unwrap();
    let daemon = Daemon(
        Command::new(bin())
            .args(["daemon", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait = |what: &str, limit: Duration, f: &mut dyn FnMut() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < limit,
                "{what} not within {limit:?}; daemon log:\n{}",
                common::tail(&fs::read_to_string(&log).unwrap_or_default(), 40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait("daemon ready", Duration::from_secs(30), &mut || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("daemon ready"))
    });
    let submitted = Instant::now();
    let sub = Command::new(bin())
        .args(["workflow", "submit"])
        .arg(&manifest)
        .arg("--dir")
        .arg(&spool)
        .output()
        .unwrap();
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    // The queue shows it move: waiting or running, then processed.
    let mut seen = Vec::new();
    wait(
        "the job to be processed",
        Duration::from_secs(1200),
        &mut || {
            let q = workflow_queue(&spool);
            let state = format!(
                "to_be_processed={} processing={} processed_today={} failed_today={}",
                q["to_be_processed"], q["processing"], q["processed_today"], q["failed_today"]
            );
            if seen.last() != Some(&state) {
                eprintln!("workflow queue: {state}");
                seen.push(state);
            }
            assert_ne!(q["failed_today"], 1, "the job failed: {q}");
            q["processed_today"] == 1
        },
    );
    let wall = submitted.elapsed();
    assert!(
        seen.iter().any(|s| s.contains("processing=1")),
        "the queue never showed the job running: {seen:?}"
    );
    drop(daemon);

    let today = chrono_today();
    let processed = spool.join("processed").join(&today);
    assert!(
        processed.join("photon.json").is_file(),
        "manifest not in {}",
        processed.display()
    );
    let report = read_json(&processed.join("photon.json.report.json"));
    assert_eq!(report["status"], "success", "{report}");
    let job_dir = output.join(&today).join("photon");
    let out: PathBuf = job_dir.join("photon-converted.qcow2");
    assert!(out.is_file(), "no output at {}", out.display());
    let timeline = common::timeline(&report);
    let line = format!(
        "seed scenario: {:.1} s from submit to processed; stages: {}",
        wall.as_secs_f64(),
        timeline.join(", ")
    );
    eprintln!("{line}");
    common::keep_artifact("seed-scenario.txt", &line);
    common::keep_artifact("seed-scenario.report.json", &format!("{report:#}"));
    let out_report_path = job_dir.join("photon-converted.qcow2.report.json");
    let fix_report = if out_report_path.is_file() {
        read_json(&out_report_path)
    } else {
        report.clone()
    };
    photon_fixed_whole(&src, &out, &fix_report, PHOTON_UEFI_MAC);
    assert_eq!(sha256_file(&src), sha, "the source changed");
}

/// Today's date as the daemon names its dated directories (UTC, YYYY-MM-DD).
fn chrono_today() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn debian13_systemd_boot_guest_with_bls_entries_comes_up_whole_on_virtio() {
    let _vm = vm_lock();
    let src = layout("debian13-uefi-systemd-boot");
    let sha = sha256_file(&src);
    let (run, json) = probe(&[&src], "sata", &[BLS_MAC], &["ens192"]);
    assert_whole("control: unfixed on SATA", &run, &json);
    assert_fails_on_virtio(&src, BLS_MAC);

    let new_mac = "52:54:00:4b:00:51";
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = fix(
        &src,
        dir.path(),
        &["--nic", &format!("{BLS_MAC}={new_mac}")],
    );
    let boot = fix_record(&report, "systemd-boot").to_string();
    assert!(
        boot.contains("loader/entries/") && boot.contains("UUID="),
        "the entries' root= must become a UUID: {boot}"
    );
    // The guest's own initramfs-tools hook may already have copied the rebuilt image to the
    // ESP (then nothing is left to refresh); the virtio boot below is what proves the entry
    // loads an image with virtio.
    eprintln!(
        "systemd-boot step: {}",
        fix_record(&report, "systemd-boot")["summary"]
    );
    eprintln!(
        "initramfs step: {}",
        fix_record(&report, "initramfs")["summary"]
    );
    let (run, json) = probe(&[&out], "virtio", &[new_mac], &["ens192"]);
    assert_whole("fixed on virtio with a new MAC", &run, &json);
    assert!(has_ipv4(interface(&json, "ens192").unwrap(), "10.0.2.15"));
    assert_eq!(sha256_file(&src), sha, "the source changed");
}
