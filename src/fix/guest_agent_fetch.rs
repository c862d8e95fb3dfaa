//! The host side of `--install-guest-agent`: which Debian release the guest runs (refused
//! unless it can be served), and qemu-guest-agent with exactly the packages the guest lacks,
//! downloaded by the host's apt in a private tree whose dpkg status is the guest's own.
//!
//! The decisions and the apt tree's text are pure (unit-tested); apt runs through
//! [`crate::process`] so a SIGTERM kills it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{reduce_stderr, Command, ProcessError};

/// The package `--install-guest-agent` installs.
pub const PACKAGE: &str = "qemu-guest-agent";
/// Debian's archive keyring on the host (package debian-archive-keyring).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";
/// The releases served: version and codename.
pub const SERVED: [(u32, &str); 3] = [(11, "bullseye"), (12, "bookworm"), (13, "trixie")];
/// One apt run may take this long (a slow mirror) before it is killed.
const APT_LIMIT: Duration = Duration::from_secs(900);

/// What can be served, for the refusal.
pub fn served_text() -> String {
    let list: Vec<String> = SERVED.iter().map(|(v, c)| format!("{v} ({c})")).collect();
    format!(
        "Debian {} and {} on amd64",
        list[..list.len() - 1].join(", "),
        list[list.len() - 1]
    )
}

/// A Debian release the packages can be fetched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebianRelease {
    pub version: u32,
    pub codename: &'static str,
    /// dpkg's architecture name.
    pub arch: &'static str,
}

/// The value of `key` in an os-release text (quotes removed), if set and not empty.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        let v = v.trim().trim_matches(['"', '\'']).trim();
        (k.trim() == key && !v.is_empty()).then(|| v.to_string())
    })
}

/// The release the guest runs, from its `/etc/os-release`, `/etc/debian_version` and the
/// architecture inspection found; Err is the one-line refusal.
pub fn debian_release(
    os_release: Option<&str>,
    debian_version: Option<&str>,
    arch: &str,
) -> Result<DebianRelease, String> {
    let text = os_release.unwrap_or("");
    let id = os_release_field(text, "ID");
    let version_id = os_release_field(text, "VERSION_ID");
    let codename = os_release_field(text, "VERSION_CODENAME");
    let debian_version = debian_version.map(str::trim).filter(|v| !v.is_empty());
    let described = describe(text, id.as_deref(), version_id.as_deref(), debian_version);
    let refuse = |why: &str| {
        format!(
            "the guest runs {described}{why}: qemu-guest-agent can be installed offline for {} only",
            served_text()
        )
    };
    if id.as_deref() != Some("debian") {
        return Err(refuse(""));
    }
    // VERSION_ID first; a point release's /etc/debian_version ("12.5") when it is missing.
    let version: Option<u32> = version_id
        .as_deref()
        .or_else(|| debian_version.filter(|v| v.starts_with(|c: char| c.is_ascii_digit())))
        .and_then(|v| v.split('.').next()?.parse().ok());
    let served = match (version, codename.as_deref()) {
        (Some(v), _) => SERVED.iter().find(|(n, _)| *n == v),
        // testing/unstable ("trixie/sid") have a codename but no version: not a release.
        (None, Some(_)) => None,
        (None, None) => None,
    };
    let Some(&(version, name)) = served else {
        return Err(refuse(""));
    };
    if let Some(c) = codename.as_deref().filter(|c| *c != name) {
        return Err(refuse(&format!(
            " (VERSION_CODENAME={c} does not match Debian {version})"
        )));
    }
    let arch = match arch {
        "x86_64" | "amd64" => "amd64",
        other => return Err(refuse(&format!(" on {other}"))),
    };
    Ok(DebianRelease {
        version,
        codename: name,
        arch,
    })
}

fn describe(
    os_release: &str,
    id: Option<&str>,
    version_id: Option<&str>,
    debian_version: Option<&str>,
) -> String {
    let pretty = os_release_field(os_release, "PRETTY_NAME");
    match (pretty, id) {
        (Some(p), Some(id)) => {
            format!("{p} (ID={id}, VERSION_ID={})", version_id.unwrap_or("none"))
        }
        (None, Some(id)) => format!("ID={id} VERSION_ID={}", version_id.unwrap_or("none")),
        (_, None) => match debian_version {
            Some(v) => format!("an unknown release (no ID in /etc/os-release; debian_version {v})"),
            None => "an unknown release (no ID in /etc/os-release)".into(),
        },
    }
}

/// Where the packages come from: `H2K_DEBIAN_MIRROR` and `H2K_DEBIAN_SECURITY`, else
/// deb.debian.org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    pub main: String,
    pub security: String,
}

impl Mirrors {
    pub fn from_env() -> Mirrors {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Mirrors {
            main: var("H2K_DEBIAN_MIRROR", DEFAULT_MIRROR),
            security: var("H2K_DEBIAN_SECURITY", DEFAULT_SECURITY),
        }
    }
}

/// The private tree's sources.list: the release, its updates and its security suite.
pub fn sources_list(release: &DebianRelease, mirrors: &Mirrors, keyring: &str) -> String {
    let c = release.codename;
    let signed = format!("[arch={} signed-by={keyring}]", release.arch);
    format!(
        "deb {signed} {main} {c} main\n\
         deb {signed} {main} {c}-updates main\n\
         deb {signed} {security} {c}-security main\n",
        main = mirrors.main.trim_end_matches('/'),
        security = mirrors.security.trim_end_matches('/'),
    )
}

/// The `-o` options that confine apt to `tree` (nothing of the host's apt configuration,
/// lists, cache or dpkg status is read or written) with the guest's dpkg status.
pub fn apt_options(tree: &Path, guest_status: &Path, arch: &str, as_root: bool) -> Vec<String> {
    let t = tree.display();
    let mut o = vec![
        format!("Dir={t}"),
        format!("Dir::Etc={t}/etc"),
        format!("Dir::Etc::sourcelist={t}/etc/sources.list"),
        format!("Dir::Etc::sourceparts={t}/etc/sources.list.d"),
        format!("Dir::Etc::parts={t}/etc/apt.conf.d"),
        format!("Dir::Etc::preferences={t}/etc/preferences"),
        format!("Dir::Etc::preferencesparts={t}/etc/preferences.d"),
        format!("Dir::Etc::trusted={t}/etc/trusted.gpg"),
        format!("Dir::Etc::trustedparts={t}/etc/trusted.gpg.d"),
        format!("Dir::State={t}/state"),
        format!("Dir::State::status={}", guest_status.display()),
        format!("Dir::Cache={t}/cache"),
        format!("Dir::Cache::archives={t}/archives"),
        format!("Dir::Log={t}/log"),
        format!("APT::Architecture={arch}"),
        format!("APT::Architectures={arch}"),
        "Acquire::Languages=none".into(),
        "Debug::NoLocking=1".into(),
        "APT::Install-Recommends=0".into(),
    ];
    if as_root {
        // The tree is the job's private work directory, which the _apt user cannot enter.
        o.push("APT::Sandbox::User=root".into());
    }
    o.into_iter().flat_map(|v| ["-o".to_string(), v]).collect()
}

/// The directories the tree needs before apt runs.
pub fn tree_dirs(tree: &Path) -> Vec<PathBuf> {
    [
        "etc/sources.list.d",
        "etc/apt.conf.d",
        "etc/preferences.d",
        "etc/trusted.gpg.d",
        "state/lists/partial",
        "cache",
        "archives/partial",
        "log",
    ]
    .iter()
    .map(|d| tree.join(d))
    .collect()
}

/// One downloaded package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebFile {
    pub path: PathBuf,
    pub package: String,
    pub version: String,
}

/// Package and version from an archive file name `NAME_VERSION_ARCH.deb` (apt writes the
/// epoch's `:` as `%3a`).
pub fn parse_deb_file_name(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".deb")?;
    let mut parts = stem.splitn(3, '_');
    let package = parts.next()?.to_string();
    let version = parts.next()?.replace("%3a", ":").replace("%3A", ":");
    parts.next()?;
    (!package.is_empty() && !version.is_empty()).then_some((package, version))
}

/// The line of apt's stderr that says why: the first failed fetch (it names the mirror and
/// the cause), else the last line.
pub fn apt_reason(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .map(str::trim)
        .find(|l| l.contains("Failed to fetch"))
        .map(|l| {
            l.trim_start_matches("E: ")
                .trim_start_matches("W: ")
                .to_string()
        })
        .or_else(|| reduce_stderr(stderr))
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
    #[error("apt-get {step} (host apt, private tree {tree}): {reason}")]
    Apt {
        step: &'static str,
        tree: String,
        reason: String,
    },
    #[error("{0}")]
    Process(#[from] ProcessError),
}

/// Download qemu-guest-agent and what the guest (whose dpkg status is `guest_status`) lacks
/// for `release` into `tree/archives`. Returns the packages, sorted by name.
pub fn download(
    release: &DebianRelease,
    mirrors: &Mirrors,
    tree: &Path,
    guest_status: &Path,
) -> Result<Vec<DebFile>, FetchError> {
    let io = |what: String| {
        move |e: std::io::Error| FetchError::Io {
            what,
            reason: e.to_string(),
        }
    };
    for dir in tree_dirs(tree) {
        std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    }
    if !Path::new(DEBIAN_KEYRING).is_file() {
        return Err(FetchError::Io {
            what: DEBIAN_KEYRING.into(),
            reason: "missing: install debian-archive-keyring on the host".into(),
        });
    }
    let list = tree.join("etc/sources.list");
    std::fs::write(&list, sources_list(release, mirrors, DEBIAN_KEYRING))
        .map_err(io(list.display().to_string()))?;
    let options = apt_options(
        tree,
        guest_status,
        release.arch,
        nix::unistd::geteuid().is_root(),
    );
    let apt = |step: &'static str, args: &[&str]| -> Result<String, FetchError> {
        let mut cmd = Command::new("apt-get");
        cmd.args(&options).args(args);
        log::debug!("running {cmd:?}");
        let out = cmd.output_with_timeout(APT_LIMIT)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(FetchError::Apt {
                step,
                tree: tree.display().to_string(),
                reason: apt_reason(&stderr)
                    .unwrap_or_else(|| format!("exited with {}", out.status)),
            });
        }
        Ok(stdout)
    };
    // Without --error-on=any an unreachable mirror is only a warning, and the install then
    // says the package does not exist.
    apt("update", &["-q", "--error-on=any", "update"])?;
    apt(
        "install --download-only",
        &[
            "-q",
            "-y",
            "--download-only",
            "--no-install-recommends",
            "install",
            PACKAGE,
        ],
    )?;
    let archives = tree.join("archives");
    let mut debs = Vec::new();
    for entry in std::fs::read_dir(&archives).map_err(io(archives.display().to_string()))? {
        let entry = entry.map_err(io(archives.display().to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((package, version)) = parse_deb_file_name(&name) {
            debs.push(DebFile {
                path: entry.path(),
                package,
                version,
            });
        }
    }
    debs.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(debs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                            VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";

    #[test]
    fn debian_11_12_13_are_served() {
        let r = debian_release(Some(BOOKWORM), Some("12.5\n"), "x86_64").unwrap();
        assert_eq!((r.version, r.codename, r.arch), (12, "bookworm", "amd64"));
        for (v, c) in SERVED {
            let text = format!("ID=debian\nVERSION_ID=\"{v}\"\nVERSION_CODENAME={c}\n");
            assert_eq!(
                debian_release(Some(&text), None, "x86_64")
                    .unwrap()
                    .codename,
                c
            );
        }
        // No VERSION_ID: the point release in /etc/debian_version says which.
        let r = debian_release(Some("ID=debian\n"), Some("11.9"), "x86_64").unwrap();
        assert_eq!(r.codename, "bullseye");
    }

    #[test]
    fn everything_else_is_refused_in_one_line_naming_the_release() {
        let cases = [
            (
                "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\n",
                "Ubuntu 22.04.4 LTS (ID=ubuntu, VERSION_ID=22.04)",
            ),
            (
                "PRETTY_NAME=\"Red Hat Enterprise Linux 9.3 (Plow)\"\nID=\"rhel\"\nVERSION_ID=\"9.3\"\n",
                "Red Hat Enterprise Linux 9.3 (Plow) (ID=rhel, VERSION_ID=9.3)",
            ),
            (
                "NAME=\"VMware Photon OS\"\nVERSION_ID=5.0\nID=photon\n",
                "ID=photon VERSION_ID=5.0",
            ),
            (
                "PRETTY_NAME=\"Debian GNU/Linux 10 (buster)\"\nVERSION_ID=\"10\"\nVERSION_CODENAME=buster\nID=debian\n",
                "Debian GNU/Linux 10 (buster) (ID=debian, VERSION_ID=10)",
            ),
            (
                "PRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\nVERSION_CODENAME=trixie\nID=debian\n",
                "Debian GNU/Linux trixie/sid (ID=debian, VERSION_ID=none)",
            ),
            ("", "an unknown release (no ID in /etc/os-release)"),
        ];
        for (text, named) in cases {
            let why = debian_release(Some(text), None, "x86_64").unwrap_err();
            assert!(why.contains(named), "{why}");
            assert!(
                why.ends_with("Debian 11 (bullseye), 12 (bookworm) and 13 (trixie) on amd64 only"),
                "{why}"
            );
            assert_eq!(why.lines().count(), 1, "{why}");
        }
        let why = debian_release(None, Some("bookworm/sid"), "x86_64").unwrap_err();
        assert!(why.contains("debian_version bookworm/sid"), "{why}");
        let why = debian_release(Some(BOOKWORM), None, "aarch64").unwrap_err();
        assert!(
            why.contains("ID=debian, VERSION_ID=12) on aarch64"),
            "{why}"
        );
        let mixed = BOOKWORM.replace("VERSION_CODENAME=bookworm", "VERSION_CODENAME=trixie");
        let why = debian_release(Some(&mixed), None, "x86_64").unwrap_err();
        assert!(
            why.contains("VERSION_CODENAME=trixie does not match Debian 12"),
            "{why}"
        );
    }

    #[test]
    fn the_sources_list_names_release_updates_and_security() {
        let r = debian_release(Some(BOOKWORM), None, "x86_64").unwrap();
        let m = Mirrors {
            main: "http://mirror.example/debian/".into(),
            security: "http://sec.example/debian-security".into(),
        };
        assert_eq!(
            sources_list(&r, &m, DEBIAN_KEYRING),
            "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm-updates main\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://sec.example/debian-security bookworm-security main\n"
        );
    }

    #[test]
    fn apt_is_confined_to_the_tree_with_the_guests_status() {
        let o = apt_options(Path::new("/w/ga"), Path::new("/w/ga/status"), "amd64", true);
        assert!(o.chunks(2).all(|p| p[0] == "-o"), "{o:?}");
        let values: Vec<&str> = o.iter().skip(1).step_by(2).map(String::as_str).collect();
        for want in [
            "Dir=/w/ga",
            "Dir::State::status=/w/ga/status",
            "Dir::Cache::archives=/w/ga/archives",
            "Dir::Etc::parts=/w/ga/etc/apt.conf.d",
            "Dir::Etc::trustedparts=/w/ga/etc/trusted.gpg.d",
            "APT::Architecture=amd64",
            "APT::Sandbox::User=root",
        ] {
            assert!(values.contains(&want), "{want}: {values:?}");
        }
        // Every path apt is pointed at is inside the tree.
        assert!(values
            .iter()
            .filter_map(|v| v.split_once('=').map(|(_, p)| p))
            .filter(|p| p.starts_with('/'))
            .all(|p| p.starts_with("/w/ga")));
        assert!(
            !apt_options(Path::new("/t"), Path::new("/s"), "amd64", false)
                .iter()
                .any(|v| v.starts_with("APT::Sandbox"))
        );
    }

    #[test]
    fn archive_names_give_package_and_version() {
        assert_eq!(
            parse_deb_file_name("qemu-guest-agent_1%3a7.2+dfsg-7+deb12u18+b3_amd64.deb"),
            Some(("qemu-guest-agent".into(), "1:7.2+dfsg-7+deb12u18+b3".into()))
        );
        assert_eq!(
            parse_deb_file_name("liburing2_2.3-3_amd64.deb"),
            Some(("liburing2".into(), "2.3-3".into()))
        );
        for bad in [
            "lock",
            "partial",
            "x_1.deb",
            "_1_amd64.deb",
            "a_1_amd64.deb.part",
        ] {
            assert_eq!(parse_deb_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn apt_failures_name_the_failed_fetch() {
        let update = "E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n\
                      E: Failed to fetch http://127.0.0.1:9/debian-security/dists/bookworm-security/InRelease  Unable to connect to 127.0.0.1:9:\n\
                      E: Some index files failed to download. They have been ignored, or old ones used instead.\n";
        assert_eq!(
            apt_reason(update).as_deref(),
            Some("Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)")
        );
        assert_eq!(
            apt_reason("Reading package lists...\nE: Unable to locate package qemu-guest-agent\n")
                .as_deref(),
            Some("E: Unable to locate package qemu-guest-agent")
        );
    }

    #[test]
    fn os_release_values_lose_their_quotes() {
        let t = "ID='debian'\nVERSION_ID=\"12\"\n# ID=ubuntu\nEMPTY=\n";
        assert_eq!(os_release_field(t, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_field(t, "VERSION_ID").as_deref(), Some("12"));
        assert_eq!(os_release_field(t, "EMPTY"), None);
        assert_eq!(os_release_field(t, "NAME"), None);
    }
}
