//! Every child program (qemu-img, qemu-nbd, qemu-system, the KVM probe) runs through here.
//!
//! A child gets
//! - its own process group, so a terminal's Ctrl-C reaches only us and we decide how to stop it;
//! - a parent-death signal: it is started as `setpriv --pdeathsig KILL -- PROGRAM …`
//!   (util-linux), which sets `PR_SET_PDEATHSIG` and then execs the program, so the pid stays
//!   the program's. We do not call `prctl` in a `pre_exec` hook because that needs `unsafe`,
//!   which this crate allows only in `guestfs.rs`. Without setpriv in PATH the child runs
//!   directly (it then survives a `kill -9` of the tool). The kernel sends the signal when the
//!   *thread* that spawned the child ends, so a child must be spawned and waited for on the
//!   same thread (every caller does);
//! - a kill of its whole group and a reap when its [`Child`] is dropped, on every path;
//! - an entry in a registry of pids while it runs, so the KVM-launch watchdog in
//!   [`crate::appliance`] never takes it for a hung libguestfs QEMU.
//!
//! [`reduce_stderr`] turns a child's stderr into the one-line reason errors quote.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdout, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// QEMU's disk image tool.
pub const QEMU_IMG: &str = "qemu-img";
/// QEMU's NBD server.
pub const QEMU_NBD: &str = "qemu-nbd";
const QEMU_SYSTEM: &str = "qemu-system-x86_64";

/// `qemu-system-x86_64`, or what `H2K_QEMU` names.
pub fn qemu_system_program() -> String {
    std::env::var("H2K_QEMU").unwrap_or_else(|_| QEMU_SYSTEM.into())
}

/// A `qemu-img` command to add arguments to.
pub fn qemu_img() -> Command {
    Command::new(QEMU_IMG)
}

/// A `qemu-nbd` command to add arguments to.
pub fn qemu_nbd() -> Command {
    Command::new(QEMU_NBD)
}

/// A `virsh` (libvirt's client) command to add arguments to.
pub fn virsh() -> Command {
    Command::new("virsh")
}

/// A `qemu-system-x86_64` (or `H2K_QEMU`) command to add arguments to.
pub fn qemu_system() -> Command {
    Command::new(qemu_system_program())
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("waiting for {tool}: {source}")]
    Wait {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} did not finish within {} s", .limit.as_secs_f64())]
    TimedOut { tool: String, limit: Duration },
}

/// The first file called `tool` in PATH.
pub fn in_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

fn setpriv() -> Option<&'static PathBuf> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = in_path("setpriv");
            if found.is_none() {
                log::debug!("setpriv not in PATH: children will not die with us on SIGKILL");
            }
            found
        })
        .as_ref()
}

/// Pids of the children spawned here that are not reaped yet.
static REGISTRY: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn registry() -> MutexGuard<'static, BTreeSet<u32>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `pid` is a live child spawned through this module.
pub fn is_registered(pid: u32) -> bool {
    registry().contains(&pid)
}

/// Run `f` with the registered pids while no child can be spawned here (spawning holds the
/// same lock), so a child not in the set was not started by this module.
pub fn with_registry<R>(f: impl FnOnce(&BTreeSet<u32>) -> R) -> R {
    f(&registry())
}

/// Set by [`stop_all_children`]: no child is started any more.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How a SIGTERM/SIGINT is honoured at once: refuse new children, SIGKILL the group of every
/// child started here and every QEMU this process forked itself (libguestfs's appliance).
/// The stages then fail fast on their dead children and clean up as on any error.
pub fn stop_all_children() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    with_registry(|ours| {
        for pid in ours {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    });
    for pid in qemu_children() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// PIDs of the QEMU processes this process forked itself, not through this module
/// (libguestfs's direct backend starts the appliance's QEMU that way).
pub fn qemu_children() -> BTreeSet<i32> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "PID (COMM) STATE PPID …": COMM may hold spaces, so split at the last ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            is_qemu_command_name(comm) && rest.split_whitespace().nth(1) == Some(me.as_str())
        })
        .collect()
}

/// A child program's command line, wrapped as the module documentation says.
pub struct Command {
    inner: std::process::Command,
    tool: String,
    program: PathBuf,
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        let program = program.as_ref();
        let mut inner = match setpriv() {
            Some(setpriv) => {
                let mut c = std::process::Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => std::process::Command::new(program),
        };
        inner.process_group(0).stdin(Stdio::null());
        Command {
            inner,
            tool: program.to_string_lossy().into_owned(),
            program: PathBuf::from(program),
        }
    }

    /// The program's name as errors show it.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.inner.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    /// stdin is null unless set here.
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.inner.stdin(cfg);
        self
    }

    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.inner.stdout(cfg);
        self
    }

    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.inner.stderr(cfg);
        self
    }

    /// The program's arguments (without the setpriv wrapper), for logs and tests.
    pub fn get_args(&self) -> Vec<OsString> {
        let all: Vec<OsString> = self.inner.get_args().map(OsStr::to_owned).collect();
        match all.iter().position(|a| a == "--") {
            Some(i) if setpriv().is_some() => all[i + 2..].to_vec(),
            _ => all,
        }
    }

    pub fn spawn(&mut self) -> Result<Child, ProcessError> {
        if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ProcessError::Spawn {
                tool: self.tool.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "stopping on a signal",
                ),
            });
        }
        // Through setpriv a missing program would only show as setpriv's exit status; fail
        // the spawn as a direct one would.
        let found = if self.program.components().count() > 1 {
            self.program.is_file()
        } else {
            in_path(&self.tool).is_some()
        };
        if !found {
            return Err(ProcessError::Spawn {
                tool: self.tool.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut registered = registry();
        let inner = self.inner.spawn().map_err(|source| ProcessError::Spawn {
            tool: self.tool.clone(),
            source,
        })?;
        registered.insert(inner.id());
        Ok(Child {
            inner,
            tool: self.tool.clone(),
            reaped: false,
        })
    }

    /// Run to completion capturing stdout and stderr (no time limit).
    pub fn output(&mut self) -> Result<Output, ProcessError> {
        self.output_with_timeout(NO_LIMIT)
    }

    /// Run to completion capturing stdout and stderr; past `limit` the child's group is
    /// killed and the result is [`ProcessError::TimedOut`].
    pub fn output_with_timeout(&mut self, limit: Duration) -> Result<Output, ProcessError> {
        self.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.spawn()?;
        let out_reader = drain(child.take_stdout());
        let err_reader = drain(child.take_stderr());
        let status = child.wait_timeout(limit);
        if !matches!(status, Ok(Some(_))) {
            child.kill();
        }
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        match status? {
            Some(status) => Ok(Output {
                status,
                stdout,
                stderr,
            }),
            None => Err(ProcessError::TimedOut {
                tool: self.tool.clone(),
                limit,
            }),
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// A running child; dropping it kills its process group and reaps it.
pub struct Child {
    inner: std::process::Child,
    tool: String,
    reaped: bool,
}

/// Long enough to mean "no limit" without overflowing an `Instant`.
const NO_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
const WAIT_POLL: Duration = Duration::from_millis(20);

impl Child {
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    pub fn tool(&self) -> &str {
        &self.tool
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.inner.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.inner.stderr.take()
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        let status = self.inner.try_wait().map_err(|source| ProcessError::Wait {
            tool: self.tool.clone(),
            source,
        })?;
        if status.is_some() {
            self.mark_reaped();
        }
        Ok(status)
    }

    /// Wait up to `limit`; None when the child is still running then.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(WAIT_POLL.min(deadline - now));
        }
    }

    /// SIGKILL the child's process group and reap the child.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // Not reaped yet, so the group id (the child's pid) cannot have been reused.
        let _ = killpg(Pid::from_raw(self.inner.id() as i32), Signal::SIGKILL);
        let _ = self.inner.wait();
        self.mark_reaped();
    }

    fn mark_reaped(&mut self) {
        if !self.reaped {
            self.reaped = true;
            registry().remove(&self.inner.id());
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process's command name (`/proc/PID/stat`'s comm, at most 15 bytes) is one of the
/// QEMU programs: how the appliance watchdog recognises the QEMU libguestfs started.
pub fn is_qemu_command_name(comm: &str) -> bool {
    comm.starts_with("qemu")
}

/// One line saying why a child failed, from its stderr: the last non-blank line that is not
/// a warning, without the `program: ` prefix QEMU's tools put on their messages. None when
/// stderr says nothing.
pub fn reduce_stderr(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("warning:"))
        .map(|l| strip_program_prefix(l).to_string())
}

/// `qemu-img: Could not open …` → `Could not open …` (also `/usr/bin/qemu-system-x86_64: …`).
fn strip_program_prefix(line: &str) -> &str {
    match line.split_once(": ") {
        Some((prefix, rest))
            if !prefix.contains(char::is_whitespace)
                && prefix
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.starts_with("qemu")) =>
        {
            rest
        }
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A zombie is dead for our purposes (it holds no resources but its pid).
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z"),
            Err(_) => false,
        }
    }

    fn wait_until_dead(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn spawns_registers_and_drop_kills_and_reaps() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(alive(pid));
        assert!(is_registered(pid));
        assert!(with_registry(|r| r.contains(&pid)));
        drop(child);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "killed and reaped: no zombie left"
        );
        assert!(!is_registered(pid));
    }

    #[test]
    fn drop_kills_the_whole_group() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.take_stdout().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let grandchild: u32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
        assert!(alive(grandchild));
        drop(child);
        assert!(
            wait_until_dead(grandchild),
            "grandchild {grandchild} survived"
        );
    }

    #[test]
    fn a_child_in_its_own_group() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
    }

    #[test]
    fn timed_wait_expires_and_kills() {
        let start = Instant::now();
        let err = Command::new("sleep")
            .arg("30")
            .output_with_timeout(Duration::from_millis(300))
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err
            .to_string()
            .contains("sleep did not finish within 0.3 s"));
    }

    #[test]
    fn output_with_timeout_captures_both_streams() {
        let out = Command::new("sh")
            .args(["-c", "echo out; echo 'qemu-img: broken' >&2; exit 3"])
            .output_with_timeout(Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(
            reduce_stderr(&String::from_utf8_lossy(&out.stderr)).as_deref(),
            Some("broken")
        );
    }

    #[test]
    fn spawn_failure_names_the_tool() {
        for program in ["/nonexistent/qemu-img", "no-such-qemu-img"] {
            let err = Command::new(program).spawn().err().unwrap();
            assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
            assert!(err
                .to_string()
                .starts_with(&format!("cannot run {program}: ")));
        }
    }

    #[test]
    fn children_die_when_the_spawning_thread_ends() {
        if setpriv().is_none() {
            return;
        }
        let pid = std::thread::spawn(|| {
            let child = Command::new("sleep").arg("30").spawn().unwrap();
            let pid = child.id();
            // setpriv sets the signal just before it execs sleep; a thread that ends before
            // that is not noticed (the kernel's rule), so wait for the exec.
            let comm = format!("/proc/{pid}/comm");
            while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Not dropped: only the parent-death signal can stop it.
            std::mem::forget(child);
            pid
        })
        .join()
        .unwrap();
        assert!(wait_until_dead(pid), "pid {pid} outlived its parent thread");
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        registry().remove(&pid);
    }

    #[test]
    fn qemu_children_are_this_process_qemus_only() {
        let dir = tempfile::tempdir().unwrap();
        let fake_qemu = dir.path().join("qemu-h2k-test");
        std::os::unix::fs::symlink(in_path("sleep").unwrap(), &fake_qemu).unwrap();
        let qemu = Command::new(&fake_qemu).arg("30").spawn().unwrap();
        let other = Command::new("sleep").arg("30").spawn().unwrap();
        // Through setpriv the name is the program's only once it has exec'd.
        let comm = format!("/proc/{}/comm", qemu.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "qemu-h2k-test" {
            assert!(Instant::now() < deadline, "never exec'd");
            std::thread::sleep(Duration::from_millis(5));
        }
        let found = qemu_children();
        assert!(found.contains(&(qemu.id() as i32)), "{found:?}");
        assert!(!found.contains(&(other.id() as i32)), "{found:?}");
        assert!(!found.contains(&(std::process::id() as i32)));
    }

    #[test]
    fn program_arguments_hide_the_wrapper() {
        let mut c = qemu_img();
        c.args(["info", "x"]);
        assert_eq!(c.get_args(), vec![OsString::from("info"), "x".into()]);
        assert_eq!(c.tool(), QEMU_IMG);
    }

    #[test]
    fn stderr_reduces_to_one_line() {
        assert_eq!(
            reduce_stderr("qemu-img: Could not open 'x': No such file\n\n").as_deref(),
            Some("Could not open 'x': No such file")
        );
        assert_eq!(
            reduce_stderr(
                "/usr/bin/qemu-system-x86_64: -drive file=a: Could not open\nwarning: host lacks x\n"
            )
            .as_deref(),
            Some("-drive file=a: Could not open")
        );
        assert_eq!(
            reduce_stderr("Failed to find: thing").as_deref(),
            Some("Failed to find: thing")
        );
        assert_eq!(reduce_stderr(" \n\n"), None);
    }
}
