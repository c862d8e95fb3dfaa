//! `--install-guest-agent`: qemu-guest-agent installed offline into a Debian guest.
//!
//! Two halves, because nothing may be written before a refusal: [`prepare`] runs before the
//! first fix (reads the guest's release and dpkg status, downloads the packages on the host,
//! see [`super::guest_agent_fetch`]); [`install`] runs after the network step and before the
//! initramfs rebuild, and installs them with the guest's own dpkg inside the appliance.

use std::time::Instant;

use super::guest_agent_fetch::{self as fetch, DebFile, DebianRelease, PACKAGE};
use super::{unified_diff, FileChange, FixError, FixRecord, FixStatus, Guest};

pub const STEP: &str = "guest-agent";
/// Where the packages wait inside the guest while dpkg installs them (removed after).
const GUEST_TMP: &str = "/var/tmp/h2k-guest-agent";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// The marker after which the install script prints dpkg's exit status.
const EXIT_MARKER: &str = "h2k-dpkg-exit=";
/// How many of dpkg's last lines a failure quotes.
const DPKG_TAIL: usize = 8;

/// What [`prepare`] found.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// The guest has the agent already: nothing to fetch or install.
    AlreadyInstalled { version: String },
    /// Downloaded for the guest's release; `old_status` is its dpkg status before.
    Fetched {
        release: DebianRelease,
        debs: Vec<DebFile>,
        old_status: String,
        seconds: f64,
    },
}

fn failed(message: String) -> FixError {
    FixError::Failed {
        step: STEP,
        message,
    }
}

/// The guest's release (refused unless it can be served), whether the agent is there, and
/// the packages it lacks, downloaded into the job's work directory. Writes nothing in the
/// guest.
pub fn prepare(guest: &Guest) -> Result<Prepared, FixError> {
    let started = Instant::now();
    let read = |path: &str| -> Result<Option<String>, FixError> {
        if guest.is_file(STEP, path)? {
            Ok(Some(guest.g.read_to_string(path).map_err(|cause| {
                FixError::File {
                    step: STEP,
                    path: path.into(),
                    cause,
                }
            })?))
        } else {
            Ok(None)
        }
    };
    let os_release = match read("/etc/os-release")? {
        Some(text) => Some(text),
        None => read("/usr/lib/os-release")?,
    };
    let debian_version = read("/etc/debian_version")?;
    let release = fetch::debian_release(
        os_release.as_deref(),
        debian_version.as_deref(),
        &guest.os.arch,
    )
    .map_err(|why| failed(format!("--install-guest-agent: {why}")))?;
    if !guest.is_file(STEP, "/usr/bin/dpkg")? {
        return Err(failed(format!(
            "--install-guest-agent: Debian {} without /usr/bin/dpkg",
            release.version
        )));
    }
    if let Some(version) = installed_version(guest)? {
        return Ok(Prepared::AlreadyInstalled { version });
    }
    let old_status = read(DPKG_STATUS)?.ok_or_else(|| {
        failed(format!(
            "--install-guest-agent: the guest has no {DPKG_STATUS}"
        ))
    })?;
    let tree = guest.work_dir.join("guest-agent");
    std::fs::create_dir_all(&tree).map_err(|e| failed(format!("{}: {e}", tree.display())))?;
    let status = tree.join("guest-dpkg-status");
    std::fs::write(&status, &old_status)
        .map_err(|e| failed(format!("{}: {e}", status.display())))?;
    log::info!(
        "guest-agent: downloading {PACKAGE} and what the guest lacks for Debian {} ({}) with the host's apt",
        release.version,
        release.codename
    );
    let debs = fetch::download(&release, &fetch::Mirrors::from_env(), &tree, &status)
        .map_err(|e| failed(e.to_string()))?;
    if !debs.iter().any(|d| d.package == PACKAGE) {
        return Err(failed(format!(
            "apt downloaded no {PACKAGE} package for {} (got: {})",
            release.codename,
            package_list(&debs)
        )));
    }
    Ok(Prepared::Fetched {
        release,
        debs,
        old_status,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The agent's version when dpkg in the guest says it is installed.
fn installed_version(guest: &Guest) -> Result<Option<String>, FixError> {
    let out = guest
        .g
        .sh(&format!(
            "dpkg-query -W -f '${{Status}} ${{Version}}' {PACKAGE} 2>/dev/null; true"
        ))
        .map_err(Guest::err(STEP))?;
    Ok(parse_installed(&out))
}

/// `dpkg-query -W -f '${Status} ${Version}'` output → the version, when installed.
pub fn parse_installed(out: &str) -> Option<String> {
    let rest = out.trim().strip_prefix("install ok installed")?;
    let version = rest.trim();
    (!version.is_empty()).then(|| version.to_string())
}

/// dpkg's result from the install script's output: Ok, or (exit status, last lines).
pub fn dpkg_outcome(out: &str) -> Result<(), (String, String)> {
    let (log, status) = match out.rfind(EXIT_MARKER) {
        Some(i) => (&out[..i], out[i + EXIT_MARKER.len()..].trim()),
        None => (out, "?"),
    };
    if status == "0" {
        return Ok(());
    }
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(DPKG_TAIL)..].join(" | ");
    Err((status.to_string(), tail))
}

fn package_list(debs: &[DebFile]) -> String {
    debs.iter()
        .map(|d| format!("{} {}", d.package, d.version))
        .collect::<Vec<_>>()
        .join(", ")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Install what [`prepare`] fetched with the guest's dpkg (services are not started: a
/// temporary policy-rc.d says so), remove the temporary files, and check dpkg's verdict.
pub fn install(guest: &Guest, prepared: &Prepared) -> Result<FixRecord, FixError> {
    let started = Instant::now();
    let (debs, old_status, fetch_seconds) = match prepared {
        Prepared::AlreadyInstalled { version } => {
            return Ok(FixRecord {
                name: STEP.into(),
                status: FixStatus::Unchanged,
                summary: format!("{PACKAGE} {version} already installed"),
                files: Vec::new(),
                seconds: 0.0,
                nics: Vec::new(),
            })
        }
        Prepared::Fetched {
            debs,
            old_status,
            seconds,
            ..
        } => (debs, old_status, *seconds),
    };
    let g = guest.g;
    let err = Guest::err(STEP);
    let own_policy = !g.exists(POLICY_RC_D).map_err(&err)?;
    g.mkdir_p(GUEST_TMP).map_err(&err)?;
    let run = || -> Result<String, FixError> {
        let mut paths = Vec::new();
        for (i, deb) in debs.iter().enumerate() {
            let path = format!("{GUEST_TMP}/{i:02}-{}.deb", deb.package);
            g.upload(&deb.path, &path).map_err(|cause| FixError::File {
                step: STEP,
                path: path.clone(),
                cause,
            })?;
            paths.push(quote(&path));
        }
        if own_policy {
            g.write(
                POLICY_RC_D,
                b"#!/bin/sh\n# h2k-guest: no service starts offline\nexit 101\n",
            )
            .map_err(&err)?;
            g.chmod(0o755, POLICY_RC_D).map_err(&err)?;
        }
        g.sh(&format!(
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             DEBIAN_FRONTEND=noninteractive; \
             dpkg --force-confdef --force-confold -i {} 2>&1; echo {EXIT_MARKER}$?",
            paths.join(" ")
        ))
        .map_err(&err)
    };
    let out = run();
    // The temporary files go on every path.
    let cleanup = g
        .command(&["rm", "-rf", GUEST_TMP])
        .map_err(&err)
        .and_then(|_| {
            if own_policy {
                g.rm_f(POLICY_RC_D).map_err(&err).map(drop)
            } else {
                Ok(())
            }
        });
    let out = out?;
    cleanup?;
    if let Err((status, last_lines)) = dpkg_outcome(&out) {
        return Err(FixError::Dpkg {
            step: STEP,
            status,
            last_lines,
        });
    }
    let version = installed_version(guest)?.ok_or_else(|| {
        failed(format!(
            "dpkg -i succeeded but dpkg-query does not list {PACKAGE} as installed"
        ))
    })?;
    let new_status = g.read_to_string(DPKG_STATUS).map_err(&err)?;
    let installed = package_list(debs);
    Ok(FixRecord {
        name: STEP.into(),
        status: FixStatus::Changed,
        summary: format!(
            "{PACKAGE} {version} installed with the guest's dpkg ({} package(s): {installed}; \
             fetched in {fetch_seconds:.1} s)",
            debs.len()
        ),
        files: vec![FileChange {
            path: DPKG_STATUS.into(),
            diff: unified_diff(DPKG_STATUS, old_status, &new_status),
            note: format!("dpkg -i {installed}"),
        }],
        seconds: started.elapsed().as_secs_f64() + fetch_seconds,
        nics: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_says_installed_or_not() {
        assert_eq!(
            parse_installed("install ok installed 1:7.2+dfsg-7+deb12u18+b3").as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        for no in [
            "",
            "deinstall ok config-files 1:7.2+dfsg-7",
            "unknown ok not-installed ",
            "install ok half-configured 1:7.2",
        ] {
            assert_eq!(parse_installed(no), None, "{no:?}");
        }
    }

    #[test]
    fn a_dpkg_failure_quotes_its_last_lines() {
        assert_eq!(
            dpkg_outcome("Selecting previously unselected package x.\nSetting up x (1) ...\nh2k-dpkg-exit=0\n"),
            Ok(())
        );
        let log: String = (1..=12).map(|i| format!("line {i}\n")).collect::<String>()
            + "dpkg: error processing package qemu-guest-agent (--install):\n \
               dependency problems - leaving unconfigured\n\nh2k-dpkg-exit=1\n";
        let (status, tail) = dpkg_outcome(&log).unwrap_err();
        assert_eq!(status, "1");
        assert!(tail.starts_with("line 7 | "), "{tail}");
        assert!(
            tail.ends_with("| dpkg: error processing package qemu-guest-agent (--install): |  dependency problems - leaving unconfigured"),
            "{tail}"
        );
        // No marker: the script never finished.
        assert_eq!(dpkg_outcome("killed").unwrap_err().0, "?");
    }

    #[test]
    fn guest_paths_are_quoted_for_the_shell() {
        assert_eq!(quote("/var/tmp/a b"), "'/var/tmp/a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
