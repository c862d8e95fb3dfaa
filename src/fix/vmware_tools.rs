//! Remove VMware Tools (open-vm-tools packages), which only run on VMware and log errors or
//! slow boots elsewhere. Uses the guest's own package manager inside the appliance, offline.

use std::time::Instant;

use super::{record, skipped, FixError, Guest};
use super::{FileChange, FixRecord};

const STEP: &str = "vmware-tools";

/// Package names of VMware Tools across distributions.
pub const PACKAGES: &[&str] = &[
    "open-vm-tools",
    "open-vm-tools-desktop",
    "open-vm-tools-sdmp",
    "open-vm-tools-containerinfo",
];

/// The command that removes `installed` packages with `package_format` ("deb"/"rpm").
pub fn removal_command(package_format: &str, installed: &[String]) -> Option<String> {
    if installed.is_empty() {
        return None;
    }
    let names = installed.join(" ");
    match package_format {
        "deb" => Some(format!(
            "DEBIAN_FRONTEND=noninteractive dpkg --purge {names}"
        )),
        "rpm" => Some(format!("rpm -e --nodeps {names}")),
        _ => None,
    }
}

fn installed_packages(guest: &Guest) -> Vec<String> {
    PACKAGES
        .iter()
        .filter(|p| match guest.os.package_format.as_str() {
            "deb" => {
                guest
                    .g
                    .is_file(&format!("/var/lib/dpkg/info/{p}.list"))
                    .unwrap_or(false)
                    || guest
                        .g
                        .is_file(&format!("/var/lib/dpkg/info/{p}:amd64.list"))
                        .unwrap_or(false)
            }
            "rpm" => guest.g.command(&["rpm", "-q", p]).is_ok(),
            _ => false,
        })
        .map(|p| p.to_string())
        .collect()
}

pub fn run(guest: &Guest) -> Result<FixRecord, FixError> {
    let started = Instant::now();
    let installed = installed_packages(guest);
    let Some(cmd) = removal_command(&guest.os.package_format, &installed) else {
        return Ok(skipped(STEP, "no VMware Tools packages installed"));
    };
    log::info!("removing {}", installed.join(", "));
    let out = guest.g.sh(&cmd).map_err(|e| FixError::Failed {
        step: STEP,
        message: format!("`{cmd}` failed: {}", e.message),
    })?;
    let files = vec![FileChange {
        path: "(packages)".into(),
        diff: String::new(),
        note: format!("{cmd}\n{}", out.trim()),
    }];
    Ok(record(
        STEP,
        started,
        files,
        format!("removed {}", installed.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_command_per_package_format() {
        let pkgs = vec!["open-vm-tools".to_string()];
        assert_eq!(
            removal_command("deb", &pkgs).unwrap(),
            "DEBIAN_FRONTEND=noninteractive dpkg --purge open-vm-tools"
        );
        assert_eq!(
            removal_command("rpm", &pkgs).unwrap(),
            "rpm -e --nodeps open-vm-tools"
        );
        assert_eq!(removal_command("deb", &[]), None);
        assert_eq!(removal_command("pacman", &pkgs), None);
    }
}
