//! INSPECT, pure: what operating system a root holds, from the few files that say so.
//!
//! libguestfs's `inspect_os` learns the same facts by mounting every filesystem and parsing
//! config files through Augeas, which costs 6–9 s of a TCG appliance; these functions take the
//! files' texts instead (read in `roots.rs`) and are the same on every guest that has
//! `/etc/os-release` (every systemd distribution). Names follow libguestfs's (`debian`, `rhel`,
//! `opensuse`, …) so reports read the same whichever path found the root.

use super::photon::{parse_os_release, release_value, version_numbers};

/// What a root's files say about its operating system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsFacts {
    pub distro: String,
    pub product_name: String,
    pub major_version: i32,
    pub minor_version: i32,
    pub arch: String,
    pub osinfo: Option<String>,
    pub package_format: String,
    pub package_management: String,
    pub hostname: String,
}

/// The texts `facts` needs, as read from a mounted root (None: absent or unreadable).
#[derive(Debug, Clone, Default)]
pub struct ReleaseFiles {
    pub os_release: Option<String>,
    /// `/etc/debian_version` ("12.5"): Debian's os-release has no minor version.
    pub debian_version: Option<String>,
    /// `/etc/hostname`, else SUSE's `/etc/HOSTNAME`.
    pub hostname: Option<String>,
    /// `/etc/sysconfig/network` (older Red Hat family: `HOSTNAME=`).
    pub sysconfig_network: Option<String>,
    /// The first bytes of a native executable (`/usr/bin/ls`, …).
    pub elf_header: Option<Vec<u8>>,
}

/// The facts, or None when there is no os-release to read them from (the caller then asks
/// libguestfs, which also knows the release files of distributions older than systemd).
pub fn facts(files: &ReleaseFiles) -> Option<OsFacts> {
    let release = parse_os_release(files.os_release.as_deref()?);
    let get = |k: &str| release_value(&release, k).filter(|v| !v.is_empty());
    let id = get("ID")?.to_ascii_lowercase();
    let id_like = get("ID_LIKE").unwrap_or("").to_ascii_lowercase();
    let distro = distro_of(&id, &id_like);
    let (mut major, mut minor) = get("VERSION_ID").map(version_numbers).unwrap_or((0, 0));
    if distro == "debian" {
        // "12.5" in debian_version; "trixie/sid" on testing says nothing.
        if let Some((ma, mi)) = files.debian_version.as_deref().and_then(debian_numbers) {
            if major == 0 || major == ma {
                (major, minor) = (ma, mi);
            }
        }
    }
    let family = family_of(&distro, &id_like);
    Some(OsFacts {
        product_name: get("PRETTY_NAME")
            .or(get("NAME"))
            .unwrap_or(&distro)
            .to_string(),
        major_version: major,
        minor_version: minor,
        arch: files
            .elf_header
            .as_deref()
            .and_then(elf_arch)
            .unwrap_or("unknown")
            .to_string(),
        osinfo: osinfo_of(&distro, major, minor),
        package_format: package_format_of(family).to_string(),
        package_management: package_management_of(&distro, family, major).to_string(),
        hostname: hostname_of(
            files.hostname.as_deref(),
            files.sysconfig_network.as_deref(),
        )
        .unwrap_or_else(|| "unknown".into()),
        distro,
    })
}

/// os-release `ID` → the distro name libguestfs uses; other IDs are kept (sanitised).
pub fn distro_of(id: &str, id_like: &str) -> String {
    let known = match id {
        "ol" => "oraclelinux",
        "sles" | "sled" | "sles_sap" => "sles",
        "arch" => "archlinux",
        "alpine" => "alpinelinux",
        "kali" => "kalilinux",
        "scientific" => "scientificlinux",
        "void" => "voidlinux",
        "altlinux" => "altlinux",
        id if id == "opensuse" || id.starts_with("opensuse-") => "opensuse",
        _ => "",
    };
    if !known.is_empty() {
        return known.into();
    }
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(32)
        .collect();
    match clean.as_str() {
        "" if id_like.split_whitespace().any(|l| l == "debian") => "debian".into(),
        "" => "unknown".into(),
        _ => clean,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Debian,
    RedHat,
    Suse,
    Photon,
    Arch,
    Alpine,
    Other,
}

fn family_of(distro: &str, id_like: &str) -> Family {
    let named = |d: &str| match d {
        "debian" | "ubuntu" | "linuxmint" | "kalilinux" | "raspbian" | "pop" => {
            Some(Family::Debian)
        }
        "rhel" | "centos" | "fedora" | "rocky" | "almalinux" | "oraclelinux"
        | "scientificlinux" | "amzn" | "circle" | "eurolinux" | "mariner" | "azurelinux" => {
            Some(Family::RedHat)
        }
        "sles" | "opensuse" | "suse" => Some(Family::Suse),
        "photon" => Some(Family::Photon),
        "archlinux" | "arch" | "manjaro" => Some(Family::Arch),
        "alpinelinux" | "alpine" => Some(Family::Alpine),
        _ => None,
    };
    named(distro)
        .or_else(|| id_like.split_whitespace().find_map(named))
        .unwrap_or(Family::Other)
}

fn package_format_of(family: Family) -> &'static str {
    match family {
        Family::Debian => "deb",
        Family::RedHat | Family::Suse | Family::Photon => "rpm",
        Family::Arch => "pacman",
        Family::Alpine => "apk",
        Family::Other => "unknown",
    }
}

fn package_management_of(distro: &str, family: Family, major: i32) -> &'static str {
    match family {
        Family::Debian => "apt",
        Family::RedHat if distro == "fedora" => "dnf",
        Family::RedHat if distro == "amzn" && major == 2 => "yum",
        Family::RedHat if major >= 8 || distro == "amzn" || distro == "azurelinux" => "dnf",
        Family::RedHat => "yum",
        Family::Suse => "zypper",
        Family::Photon => "tdnf",
        Family::Arch => "pacman",
        Family::Alpine => "apk",
        Family::Other => "unknown",
    }
}

/// libosinfo's short id for the releases whose scheme is regular; None otherwise.
fn osinfo_of(distro: &str, major: i32, minor: i32) -> Option<String> {
    if major <= 0 {
        return None;
    }
    match distro {
        "debian" | "fedora" => Some(format!("{distro}{major}")),
        "ubuntu" => Some(format!("ubuntu{major}.{minor:02}")),
        "rhel" | "rocky" | "almalinux" | "oraclelinux" => Some(format!("{distro}{major}.{minor}")),
        "centos" if major >= 8 => Some(format!("centos-stream{major}")),
        "centos" => Some(format!("centos{major}")),
        "opensuse" if major >= 15 => Some(format!("opensuse{major}.{minor}")),
        "sles" => Some(format!("sles{major}sp{minor}")),
        _ => None,
    }
}

/// "12.5\n" → (12, 5); "trixie/sid" → None.
fn debian_numbers(text: &str) -> Option<(i32, i32)> {
    let first = text.lines().next()?.trim();
    let major: i32 = first.split('.').next()?.parse().ok()?;
    Some(version_numbers(first)).filter(|_| major > 0)
}

/// The guest's hostname: the first word of `/etc/hostname`, else `HOSTNAME=` of
/// `/etc/sysconfig/network`. Comments and empty files say nothing.
pub fn hostname_of(etc_hostname: Option<&str>, sysconfig_network: Option<&str>) -> Option<String> {
    let valid = |s: &str| {
        let s = s.trim().trim_matches(['"', '\'']);
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        ok.then(|| s.to_string())
    };
    let from_file = etc_hostname.and_then(|t| {
        t.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .and_then(|l| l.split_whitespace().next())
            .and_then(valid)
    });
    from_file.or_else(|| {
        sysconfig_network?
            .lines()
            .filter_map(|l| l.trim().strip_prefix("HOSTNAME="))
            .next_back()
            .and_then(valid)
    })
}

/// The architecture an ELF header is built for, in `uname -m` spelling.
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let class64 = match header[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match header[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let bytes = [header[18], header[19]];
    let machine = if little {
        u16::from_le_bytes(bytes)
    } else {
        u16::from_be_bytes(bytes)
    };
    Some(match (machine, class64, little) {
        (62, true, _) => "x86_64",
        (3, false, _) => "i386",
        (183, true, _) => "aarch64",
        (40, false, _) => "armv7l",
        (21, true, true) => "ppc64le",
        (21, true, false) => "ppc64",
        (20, false, _) => "ppc",
        (22, true, _) => "s390x",
        (243, true, _) => "riscv64",
        (258, true, _) => "loongarch64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(os_release: &str) -> ReleaseFiles {
        ReleaseFiles {
            os_release: Some(os_release.into()),
            elf_header: Some(elf(2, 1, 62)),
            hostname: Some("web01\n".into()),
            ..ReleaseFiles::default()
        }
    }

    fn elf(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', class, data, 1];
        h.resize(18, 0);
        let m = if data == 1 {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        h.extend_from_slice(&m);
        h.resize(64, 0);
        h
    }

    const DEBIAN12: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";

    #[test]
    fn debian_takes_its_minor_version_from_debian_version() {
        let mut f = files(DEBIAN12);
        f.debian_version = Some("12.15\n".into());
        let facts = facts(&f).unwrap();
        assert_eq!(facts.distro, "debian");
        assert_eq!((facts.major_version, facts.minor_version), (12, 15));
        assert_eq!(facts.product_name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(facts.osinfo.as_deref(), Some("debian12"));
        assert_eq!(facts.package_format, "deb");
        assert_eq!(facts.package_management, "apt");
        assert_eq!(facts.arch, "x86_64");
        assert_eq!(facts.hostname, "web01");
    }

    #[test]
    fn debian_testing_has_no_numbers_in_debian_version() {
        let mut f = files("ID=debian\nPRETTY_NAME=\"Debian GNU/Linux trixie/sid\"\n");
        f.debian_version = Some("trixie/sid\n".into());
        let facts = facts(&f).unwrap();
        assert_eq!((facts.major_version, facts.minor_version), (0, 0));
        assert_eq!(facts.osinfo, None);
    }

    #[test]
    fn a_debian_version_of_another_release_is_not_believed() {
        let mut f = files(DEBIAN12);
        f.debian_version = Some("11.9\n".into());
        let facts = facts(&f).unwrap();
        assert_eq!((facts.major_version, facts.minor_version), (12, 0));
    }

    #[test]
    fn the_families_of_common_vmware_templates() {
        let cases = [
            (
                "ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n",
                "ubuntu",
                "deb",
                "apt",
                Some("ubuntu22.04"),
            ),
            (
                "ID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.2\"\n",
                "rhel",
                "rpm",
                "dnf",
                Some("rhel9.2"),
            ),
            (
                "ID=\"centos\"\nID_LIKE=\"rhel fedora\"\nVERSION_ID=\"7\"\n",
                "centos",
                "rpm",
                "yum",
                Some("centos7"),
            ),
            (
                "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"8.9\"\n",
                "rocky",
                "rpm",
                "dnf",
                Some("rocky8.9"),
            ),
            (
                "ID=\"almalinux\"\nVERSION_ID=\"9.3\"\n",
                "almalinux",
                "rpm",
                "dnf",
                Some("almalinux9.3"),
            ),
            (
                "ID=\"ol\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"8.8\"\n",
                "oraclelinux",
                "rpm",
                "dnf",
                Some("oraclelinux8.8"),
            ),
            (
                "ID=fedora\nVERSION_ID=39\n",
                "fedora",
                "rpm",
                "dnf",
                Some("fedora39"),
            ),
            (
                "ID=\"sles\"\nID_LIKE=\"suse\"\nVERSION_ID=\"15.4\"\n",
                "sles",
                "rpm",
                "zypper",
                Some("sles15sp4"),
            ),
            (
                "ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\nVERSION_ID=\"15.5\"\n",
                "opensuse",
                "rpm",
                "zypper",
                Some("opensuse15.5"),
            ),
            ("ID=photon\nVERSION_ID=5.0\n", "photon", "rpm", "tdnf", None),
            (
                "ID=\"amzn\"\nID_LIKE=\"centos rhel fedora\"\nVERSION_ID=\"2\"\n",
                "amzn",
                "rpm",
                "yum",
                None,
            ),
            ("ID=arch\n", "archlinux", "pacman", "pacman", None),
            (
                "ID=alpine\nVERSION_ID=3.19.1\n",
                "alpinelinux",
                "apk",
                "apk",
                None,
            ),
            (
                "ID=mydistro\nID_LIKE=\"rhel fedora\"\nVERSION_ID=9\n",
                "mydistro",
                "rpm",
                "dnf",
                None,
            ),
            ("ID=plan9\n", "plan9", "unknown", "unknown", None),
        ];
        for (text, distro, format, management, osinfo) in cases {
            let f = facts(&files(text)).unwrap();
            assert_eq!(f.distro, distro, "{text}");
            assert_eq!(f.package_format, format, "{text}");
            assert_eq!(f.package_management, management, "{text}");
            assert_eq!(f.osinfo.as_deref(), osinfo, "{text}");
        }
    }

    #[test]
    fn no_os_release_or_no_id_leaves_it_to_libguestfs() {
        assert_eq!(facts(&ReleaseFiles::default()), None);
        assert_eq!(facts(&files("NAME=x\n")), None);
        assert_eq!(facts(&files("ID=\n")), None);
    }

    #[test]
    fn hostile_ids_are_sanitised() {
        let f = facts(&files("ID=\"../../etc;rm -rf\"\n")).unwrap();
        assert_eq!(f.distro, "....etcrm-rf");
        let long = format!("ID={}\n", "a".repeat(500));
        assert_eq!(facts(&files(&long)).unwrap().distro.len(), 32);
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname_of(Some("web01\n"), None).as_deref(), Some("web01"));
        assert_eq!(
            hostname_of(Some("# comment\n\n  db.example.com  \n"), None).as_deref(),
            Some("db.example.com")
        );
        assert_eq!(hostname_of(Some(""), None), None);
        assert_eq!(
            hostname_of(
                Some("\n"),
                Some("NETWORKING=yes\nHOSTNAME=\"old.example\"\n")
            )
            .as_deref(),
            Some("old.example")
        );
        assert_eq!(hostname_of(None, Some("HOSTNAME=a b\n")), None);
        assert_eq!(hostname_of(Some("bad\u{1b}name\n"), None), None);
    }

    #[test]
    fn elf_machines() {
        assert_eq!(elf_arch(&elf(2, 1, 62)), Some("x86_64"));
        assert_eq!(elf_arch(&elf(1, 1, 3)), Some("i386"));
        assert_eq!(elf_arch(&elf(2, 1, 183)), Some("aarch64"));
        assert_eq!(elf_arch(&elf(2, 1, 21)), Some("ppc64le"));
        assert_eq!(elf_arch(&elf(2, 2, 21)), Some("ppc64"));
        assert_eq!(elf_arch(&elf(2, 2, 22)), Some("s390x"));
        assert_eq!(elf_arch(&elf(2, 1, 243)), Some("riscv64"));
        assert_eq!(elf_arch(&elf(2, 1, 9999)), None);
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
        assert_eq!(elf_arch(&elf(2, 1, 62)[..19]), None);
        assert_eq!(elf_arch(&elf(3, 1, 62)), None);
    }

    proptest::proptest! {
        #[test]
        fn any_release_files_give_bounded_facts(
            os_release in ".{0,400}",
            debian in ".{0,40}",
            host in ".{0,80}",
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let f = ReleaseFiles {
                os_release: Some(os_release),
                debian_version: Some(debian),
                hostname: Some(host),
                sysconfig_network: None,
                elf_header: Some(header),
            };
            if let Some(facts) = facts(&f) {
                proptest::prop_assert!(facts.distro.len() <= 32);
                proptest::prop_assert!(!facts.distro.is_empty());
                proptest::prop_assert!(facts.hostname.chars().all(|c| !c.is_control()));
            }
        }
    }
}
