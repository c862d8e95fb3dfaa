//! Fault injection on a real fix of the BIOS fixture: the tool is killed (SIGKILL) at moments
//! spread over its timeline, its output directory fills up during CONVERT, and its qemu-nbd dies
//! mid-copy. Whatever happens: the source's sha256 is unchanged, nothing incomplete appears
//! under the final output name, no QEMU program of the run is left running, and the next run in
//! the same directory leaves no work directory behind.
//!
//! `H2K_FAULT_MOMENTS` (default 3, the CI sample) sets how many SIGKILL moments are tried;
//! `scripts/fault-inject.sh` runs 20 and prints the table.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, one_error_line, sha256_file, vm_lock};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `h2k-guest fix SRC -o DIR/x.qcow2 -q [EXTRA]`, with TMPDIR inside `dir` so that every child of
/// the run (the appliance's QEMU, qemu-nbd, qemu-img) names `dir` on its command line.
fn spawn_fix(src: &Path, dir: &Path, extra: &[&str]) -> Child {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    Command::new(common::bin())
        .arg("fix")
        .arg(src)
        .arg("-o")
        .arg(dir.join("out").join("x.qcow2"))
        .args(["-q", "--overwrite"])
        .args(extra)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn h2k-guest fix")
}

/// Processes (other than us) whose command line mentions `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push(format!("{name}: {}", cmd.trim()));
        }
    }
    found
}

/// Waits (bounded) until no process names `dir`; returns what is still running after that.
fn leftovers_after(dir: &Path, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = processes_naming(dir);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn out_dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("out"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn image_is_complete(path: &Path) -> bool {
    Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// After a failed run: no `.part`, no work directory, nothing under the final name, no QEMU
/// program of the run still running, the source unchanged.
fn assert_failed_run_left_nothing(dir: &Path, src: &Path, before: &str) {
    let names = out_dir_names(dir);
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".part") && !n.starts_with(".h2k-guest-") && n != "x.qcow2"),
        "left behind: {names:?}"
    );
    assert!(leftovers_after(dir, Duration::from_secs(20)).is_empty());
    assert_eq!(sha256_file(src), before);
}

fn work_dirs(dir: &Path) -> Vec<String> {
    out_dir_names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".h2k-guest-"))
        .collect()
}

/// A complete run in `dir`: the control (it must succeed), the timeline length, and the proof that
/// work directories left by killed runs are gone afterwards.
fn complete_run(src: &Path, dir: &Path) -> f64 {
    let start = Instant::now();
    let out = spawn_fix(src, dir, &[]).wait_with_output().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "control run failed: {stderr}");
    let out_path = dir.join("out").join("x.qcow2");
    assert!(
        image_is_complete(&out_path),
        "control output fails qemu-img check"
    );
    assert_eq!(
        work_dirs(dir),
        Vec::<String>::new(),
        "work dirs after a complete run"
    );
    seconds
}

#[test]
fn sigkill_at_moments_over_the_timeline_loses_nothing() {
    let src = fixture("debian12-bios");
    let before = sha256_file(&src);
    let moments: usize = std::env::var("H2K_FAULT_MOMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = tempfile::tempdir().unwrap();
    let _vm = vm_lock();

    let total = complete_run(&src, dir.path());
    std::fs::remove_file(dir.path().join("out/x.qcow2")).unwrap();
    let _ = std::fs::remove_file(dir.path().join("out/x.qcow2.report.json"));
    eprintln!("faults: complete run {total:.1} s; {moments} SIGKILL moments");
    eprintln!(
        "faults: | # | kill at (s) | left running | under final name | work dirs before next run |"
    );

    let mut failures = Vec::new();
    for k in 0..moments {
        // Spread over (0, 0.9·total): early (appliance), middle (inspect, fix), then CONVERT.
        let at = total * 0.9 * (k as f64 + 1.0) / moments as f64;
        let mut child = spawn_fix(&src, dir.path(), &[]);
        let start = Instant::now();
        let mut ended_first = false;
        let part = dir.path().join("out/x.qcow2.part");
        // The last moment is "CONVERT has begun" (the .part exists), whenever that is: the copy is
        // a few seconds of the timeline and a sample of three would rarely land in it.
        let in_convert = k + 1 == moments;
        let due = |t: f64| if in_convert { part.exists() } else { t >= at };
        while !due(start.elapsed().as_secs_f64()) {
            if child.try_wait().unwrap().is_some() {
                ended_first = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(if in_convert { 2 } else { 20 }));
        }
        let at = start.elapsed().as_secs_f64();
        if !ended_first {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        }
        let _ = child.wait();
        let left = leftovers_after(dir.path(), Duration::from_secs(20));
        let final_path = dir.path().join("out/x.qcow2");
        let under_final = if final_path.exists() {
            if image_is_complete(&final_path) {
                "complete image"
            } else {
                "INCOMPLETE"
            }
        } else {
            "nothing"
        };
        let stale = work_dirs(dir.path()).len();
        eprintln!(
            "faults: | {} | {at:.1}{} | {} | {under_final} | {stale} |",
            k + 1,
            if ended_first { " (ended first)" } else { "" },
            left.len()
        );
        if !left.is_empty() {
            failures.push(format!("kill at {at:.1} s left running: {left:?}"));
            for l in &left {
                if let Some(pid) = l.split(':').next().and_then(|p| p.parse().ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if under_final == "INCOMPLETE" {
            failures.push(format!(
                "kill at {at:.1} s left an incomplete {final_path:?}"
            ));
        }
        let _ = std::fs::remove_file(&final_path);
        assert_eq!(
            sha256_file(&src),
            before,
            "source changed after kill at {at:.1} s"
        );
    }
    // The next run cleans what the killed ones could not.
    complete_run(&src, dir.path());
    assert_eq!(sha256_file(&src), before);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A tmpfs output directory too small for the image: the run fails with a clear error naming the
/// output and the lack of space (LOAD's free-space check, from `qemu-img measure`, stops it before
/// any appliance), and no `.part` or work directory is left.
#[test]
fn full_output_filesystem_during_convert_is_a_clear_error_and_leaves_no_partial() {
    let src = fixture("debian12-bios");
    let before = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Enough for the overlay and the fixes, not for the ~750 MiB image.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=300m", "h2k-enospc"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs (the tests run as root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(out.clone());
    let _vm = vm_lock();
    let run = spawn_fix(&src, dir.path(), &["--no-initramfs", "--no-grub"])
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains("x.qcow2") && line.to_lowercase().contains("space"),
        "the error names the output and the cause: {line}"
    );
    assert_failed_run_left_nothing(dir.path(), &src, &before);
}

/// qemu-nbd dies in the middle of the copy: a clear error, no partial output.
#[test]
fn qemu_nbd_killed_mid_convert_is_a_clear_error_and_leaves_no_partial() {
    let src = fixture("debian12-bios");
    let before = sha256_file(&src);
    let dir = tempfile::tempdir().unwrap();
    let _vm = vm_lock();
    // Raw output: 2 GiB to write, so the copy is long enough to be caught.
    let mut child = spawn_fix(
        &src,
        dir.path(),
        &["--no-initramfs", "--no-grub", "--output-format", "raw"],
    );
    let part = dir.path().join("out/x.qcow2.part");
    let start = Instant::now();
    while !part.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "convert never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "fix ended before convert"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let nbd: Vec<i32> = processes_naming(dir.path())
        .iter()
        .filter(|l| l.contains("qemu-nbd"))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    assert!(!nbd.is_empty(), "no qemu-nbd found for the run");
    for pid in nbd {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = one_error_line(&stderr);
    assert!(line.contains("convert") || line.contains("nbd"), "{line}");
    assert_failed_run_left_nothing(dir.path(), &src, &before);
}
