//! SIGTERM and SIGINT are honoured at once: `h2k-guest fix` on the BIOS fixture, signalled
//! during LOAD (no appliance: the checksum, or a qemu-img that takes its time) and during the
//! appliance launch, exits within seconds with 128 + the signal and one error line, and leaves
//! no child process, no output, no `.part` and no work directory. `inspect` is stopped the
//! same way.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a signalled run may take to exit.
const HONOURED_WITHIN: Duration = Duration::from_secs(3);

/// (pid, ppid, comm) of every process.
fn processes() -> Vec<(i32, i32, String)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" {
            let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
            all.push((pid, ppid, comm));
        }
    }
    all
}

/// Every live descendant of `root`, with its command name.
fn descendants(root: i32) -> Vec<(i32, String)> {
    let all = processes();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &all {
            if *ppid == parent {
                found.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Processes whose command line names `dir` (the run's output and work directory).
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    processes()
        .into_iter()
        .filter_map(|(pid, _, comm)| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(&needle) && pid != std::process::id() as i32)
                .then(|| format!("{pid} {comm}: {cmdline}"))
        })
        .collect()
}

/// A `qemu-img` that sleeps before running the real one: LOAD then lasts as long as a test
/// needs, inside a child of the run.
fn slow_qemu_img(dir: &Path) -> PathBuf {
    common::wrapped_qemu_img(dir, "sleep 60\n")
}

struct Run {
    child: Child,
    out_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// `h2k-guest fix FIXTURE -o OUT/x.qcow2 EXTRA…`, stderr captured.
fn start(extra: &[&str], slow_qemu_img_tool: bool) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut cmd = Command::new(common::bin());
    cmd.arg("fix")
        .arg(common::fixture("debian12-bios"))
        .arg("-o")
        .arg(out_dir.join("x.qcow2"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if slow_qemu_img_tool {
        let bin = slow_qemu_img(tmp.path());
        cmd.env("PATH", common::path_with_first(&bin));
    }
    Run {
        child: cmd.spawn().unwrap(),
        out_dir,
        _tmp: tmp,
    }
}

/// Wait (up to `limit`) for a descendant whose command name starts with `prefix`.
fn wait_for_descendant(run: &Run, prefix: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if descendants(run.child.id() as i32)
            .iter()
            .any(|(_, comm)| comm.starts_with(prefix))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Send `signal`, then check everything the module documentation promises. `stage`: what
/// was stopped; `named`: how the error line may name it; `leaves`: the only files the run
/// may leave in its output directory.
fn signal_and_check(mut run: Run, signal: Signal, stage: &str, named: &[&str], leaves: &[&str]) {
    let pid = run.child.id() as i32;
    let children = descendants(pid);
    let sent = Instant::now();
    kill(Pid::from_raw(pid), signal).unwrap();
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(60) {
            let _ = run.child.kill();
            panic!("{signal}: still running 60 s after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        took <= HONOURED_WITHIN,
        "{signal} during {stage}: exit took {:.1} s\n{}",
        took.as_secs_f64(),
        common::tail(&stderr, 20)
    );
    assert_eq!(
        status.code(),
        Some(128 + signal as i32),
        "{signal} during {stage}: {status}\n{stderr}"
    );
    let line = common::one_error_line(&stderr);
    assert!(
        line.contains(&format!("interrupted by {signal}"))
            && named.iter().any(|s| line.contains(s)),
        "{line}"
    );
    // Killed children take a moment to go (libguestfs's recovery helper polls its QEMU).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && children.iter().any(|(p, _)| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = children.iter().filter(|(p, _)| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "{signal} during {stage}: left running: {left:?}"
    );
    let naming = processes_naming(&run.out_dir);
    assert!(naming.is_empty(), "{signal} during {stage}: {naming:#?}");
    let entries: Vec<String> = std::fs::read_dir(&run.out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let unexpected: Vec<&String> = entries
        .iter()
        .filter(|n| !leaves.contains(&n.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{signal} during {stage}: left in the output directory: {unexpected:?}"
    );
}

/// The failure report is the one file a failed `fix` writes.
const FIX_LEAVES: &[&str] = &["x.qcow2.report.json"];

/// During LOAD's sha256 of the source (no child process) and during a qemu-img call.
#[test]
fn a_signal_during_load_stops_the_run_at_once() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let stopped_in_load = |run| {
            signal_and_check(
                run,
                signal,
                "load",
                &["failed in the load stage"],
                FIX_LEAVES,
            )
        };
        let run = start(&["--checksum"], false);
        // The debug build's sha256 of the fixture takes seconds; LOAD is still hashing.
        std::thread::sleep(Duration::from_millis(500));
        stopped_in_load(run);

        let run = start(&[], true);
        assert!(
            wait_for_descendant(&run, "qemu-img", Duration::from_secs(20)),
            "LOAD never started qemu-img"
        );
        stopped_in_load(run);
    }
}

/// During the libguestfs launch: its QEMU is killed, the launch fails at once.
#[test]
fn a_signal_during_the_appliance_launch_stops_the_run_at_once() {
    let _vm = common::vm_lock();
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let run = start(&[], false);
        assert!(
            wait_for_descendant(&run, "qemu-system", Duration::from_secs(120)),
            "the appliance's QEMU never started"
        );
        signal_and_check(
            run,
            signal,
            "the appliance launch",
            &["failed in the appliance stage"],
            FIX_LEAVES,
        );
    }
}

/// `inspect` is stopped as `fix` is: here in LOAD, in a qemu-img that takes its time (no
/// appliance). Its error line names the disk and the signal.
#[test]
fn a_signal_stops_inspect_at_once() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let tmp = tempfile::tempdir().unwrap();
        let out_dir = tmp.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let disk = out_dir.join("disk.qcow2");
        common::empty_qcow2(&disk, "10M");
        let bin = slow_qemu_img(tmp.path());
        let child = Command::new(common::bin())
            .arg("inspect")
            .arg(&disk)
            .env("PATH", common::path_with_first(&bin))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let run = Run {
            child,
            out_dir,
            _tmp: tmp,
        };
        assert!(
            wait_for_descendant(&run, "qemu-img", Duration::from_secs(20)),
            "inspect never started qemu-img"
        );
        let named = format!("{}: interrupted by {signal}", disk.display());
        signal_and_check(run, signal, "inspect's load", &[&named], &["disk.qcow2"]);
    }
}
