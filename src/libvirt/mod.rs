//! The libvirt domain of a finished job: its XML written beside the outputs (atomically, only
//! when the job succeeded) and, when asked, defined with `virsh -c URI define`.
//!
//! [`domain`] is the pure part (plan + report → spec → XML); this module writes the file,
//! runs virsh through [`crate::process`] and records what it did in the report.

pub mod domain;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::accel::Accel;
use crate::plan::Plan;
use crate::process;
use crate::report::{LibvirtRecord, Report};
pub use domain::{render, DomainSpec, DomainType, MACHINE};

/// `virsh define` talks to a local or remote daemon; a minute is plenty.
const VIRSH_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("libvirt: the {what} {value:?} cannot go into the domain XML: {why}")]
    Unrepresentable {
        what: String,
        value: String,
        why: String,
    },
    #[error("libvirt: cannot render the domain XML: {0}")]
    Render(String),
    #[error("libvirt: no converted disk to put in the domain (convert is off)")]
    NoDisks,
    #[error("{path}: cannot write the domain XML: {reason}")]
    Write { path: String, reason: String },
    #[error("{path}: already exists (remove it or pass --overwrite)")]
    Exists { path: String },
    #[error("virsh not found in PATH: install libvirt-clients to define the domain")]
    NoVirsh,
    #[error("virsh -c {uri} define {path}: {reason}")]
    Define {
        uri: String,
        path: String,
        reason: String,
    },
}

/// `kvm` when the job's appliance ran under KVM (the accelerator probe said it works), else
/// `qemu`.
pub fn domain_type_of(report: &Report) -> DomainType {
    let accel = match &report.appliance {
        Some(a) => a.accelerator,
        None => crate::accel::AccelChoice::Auto.resolve().accel,
    };
    match accel {
        Accel::Kvm => DomainType::Kvm,
        Accel::Tcg => DomainType::Qemu,
    }
}

/// Refuse early (before any work) what would make the libvirt step fail at the end: no
/// outputs, or an XML file in the way.
pub fn check_plan(plan: &Plan, overwrite: bool) -> Result<(), LibvirtError> {
    let Some(path) = plan.libvirt_xml_path() else {
        return Ok(());
    };
    if !plan.convert.enabled {
        return Err(LibvirtError::NoDisks);
    }
    if plan.disks.iter().any(|d| d.output == path) {
        return Err(LibvirtError::Write {
            path: path.display().to_string(),
            reason: "it is also a disk's output".into(),
        });
    }
    if plan.libvirt.define.is_some() && process::in_path("virsh").is_none() {
        return Err(LibvirtError::NoVirsh);
    }
    if !overwrite && std::fs::symlink_metadata(&path).is_ok() {
        return Err(LibvirtError::Exists {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// Write the domain XML of the finished job (and define it when asked); None when the plan
/// asks for no XML. The file appears under its name only once it is whole (and defined).
pub fn write_domain(
    plan: &Plan,
    report: &Report,
    overwrite: bool,
) -> Result<Option<(LibvirtRecord, Vec<String>)>, LibvirtError> {
    let Some(path) = plan.libvirt_xml_path() else {
        return Ok(None);
    };
    if report.outputs.is_empty() {
        return Err(LibvirtError::NoDisks);
    }
    let (spec, warnings) = DomainSpec::of_job(plan, report, domain_type_of(report));
    let xml = render(&spec)?;
    let shown = path.display().to_string();
    let write_err = |e: std::io::Error| LibvirtError::Write {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".h2k-")
        .suffix(".xml.part")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(xml.as_bytes()).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    let defined = match &plan.libvirt.define {
        Some(uri) => {
            define(uri, tmp.path(), &shown)?;
            Some(uri.clone())
        }
        None => None,
    };
    let persisted = if overwrite {
        tmp.persist(&path)
    } else {
        tmp.persist_noclobber(&path)
    };
    persisted.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => LibvirtError::Exists {
            path: shown.clone(),
        },
        _ => write_err(e.error),
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    log::info!(
        "libvirt domain {} written to {shown}{}",
        spec.name,
        defined
            .as_deref()
            .map(|u| format!(" and defined on {u}"))
            .unwrap_or_default()
    );
    let record = LibvirtRecord {
        xml: path,
        name: spec.name,
        domain_type: spec.domain_type.as_str().into(),
        machine: MACHINE.into(),
        firmware: spec.firmware,
        firmware_from: spec.firmware_from.into(),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        disks: spec.disks.into_iter().map(|d| d.path).collect(),
        nics: spec.nics,
        guest_agent_channel: spec.guest_agent,
        defined,
    };
    Ok(Some((record, warnings)))
}

/// `virsh -c URI define FILE`; `shown` is the name the user knows the file by.
pub fn define(uri: &str, file: &Path, shown: &str) -> Result<(), LibvirtError> {
    if process::in_path("virsh").is_none() {
        return Err(LibvirtError::NoVirsh);
    }
    let fail = |reason: String| LibvirtError::Define {
        uri: uri.to_string(),
        path: shown.to_string(),
        reason,
    };
    let out = process::virsh()
        .args(["-q", "-c", uri, "define"])
        .arg(file)
        .output_with_timeout(VIRSH_LIMIT)
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(virsh_reason(&String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// virsh's last `error: …` line, which names the cause ("Failed to define domain from X" is
/// only the first).
pub fn virsh_reason(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("error: "))
        .filter(|l| !l.starts_with("Failed to define domain from"))
        .collect();
    match errors.last() {
        Some(l) => l.to_string(),
        None => process::reduce_stderr(stderr).unwrap_or_else(|| "failed".into()),
    }
}
