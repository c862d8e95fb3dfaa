//! The host half of `--install-guest-agent` for real: the host's apt, confined to a private
//! tree, downloads qemu-guest-agent and exactly what a given dpkg status lacks. Needs the
//! network and apt-get (a Debian host), no appliance and no QEMU.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use h2k_guest::fix::guest_agent_fetch::{self as fetch, DebianRelease, Mirrors, PACKAGE};

/// The packages a dpkg status lists as installed.
fn installed(status: &str) -> BTreeSet<String> {
    status
        .split("\n\n")
        .filter(|s| s.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("Package: ")))
        .map(str::to_string)
        .collect()
}

fn release(version: u32) -> DebianRelease {
    let text = format!("ID=debian\nVERSION_ID=\"{version}\"\n");
    fetch::debian_release(Some(&text), None, "x86_64").unwrap()
}

/// Download for `status` into a fresh tree; checks what every run must hold and returns the
/// package names.
fn download_for(release: &DebianRelease, status_text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    std::fs::write(&status, status_text).unwrap();
    let tree = dir.path().join("tree");
    let start = Instant::now();
    let debs = fetch::download(release, &Mirrors::from_env(), &tree, &status)
        .unwrap_or_else(|e| panic!("{}: {e}", release.codename));
    let names: Vec<String> = debs.iter().map(|d| d.package.clone()).collect();
    eprintln!(
        "{}: {} package(s) in {:.1} s: {}",
        release.codename,
        debs.len(),
        start.elapsed().as_secs_f64(),
        debs.iter()
            .map(|d| format!("{} {}", d.package, d.version))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let agent = debs
        .iter()
        .find(|d| d.package == PACKAGE)
        .expect("the agent");
    assert!(agent.path.is_file() && agent.path.starts_with(&tree));
    // Exactly what the status lacks: nothing it has installed is fetched again.
    let have = installed(status_text);
    for d in &debs {
        assert!(
            !have.contains(&d.package),
            "{} is installed already",
            d.package
        );
    }
    // The status given was not touched by apt.
    assert_eq!(std::fs::read_to_string(&status).unwrap(), status_text);
    names
}

#[test]
fn the_hosts_own_status_needs_little_more_than_the_agent() {
    let host = Path::new("/var/lib/dpkg/status");
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let Ok(release) = fetch::debian_release(Some(&os_release), None, std::env::consts::ARCH) else {
        eprintln!("not a Debian 11/12/13 host: nothing to compare the host's status with");
        return;
    };
    let status = std::fs::read_to_string(host).unwrap();
    let names = download_for(&release, &status);
    assert!(names.contains(&PACKAGE.to_string()));
}

/// The debootstrap trees the fixtures are built from (minbase: no GLib), when the fixture
/// cache has them.
fn debootstrap_statuses() -> Vec<(u32, String)> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_default()
        .join("h2k-guest/debootstrap");
    let mut found = Vec::new();
    for (version, codename) in fetch::SERVED {
        let Some(tar) = std::fs::read_dir(&cache).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{codename}-")) && n.ends_with(".tar"))
            })
        }) else {
            continue;
        };
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg("./var/lib/dpkg/status")
            .output()
            .unwrap();
        if out.status.success() {
            found.push((version, String::from_utf8_lossy(&out.stdout).into_owned()));
        }
    }
    found
}

#[test]
fn a_minimal_debian_tree_gets_the_agent_and_its_libraries_for_its_own_release() {
    let statuses = debootstrap_statuses();
    if statuses.is_empty() {
        eprintln!("no debootstrap tree in the fixture cache (scripts/make-fixture.sh makes them)");
        return;
    }
    for (version, status) in statuses {
        let r = release(version);
        let names = download_for(&r, &status);
        // minbase has no GLib: the closure is computed from the tree's status, not the host's.
        assert!(
            names.iter().any(|n| n.starts_with("libglib2.0-0")),
            "{}: {names:?}",
            r.codename
        );
    }
}
