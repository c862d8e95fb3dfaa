//! `h2k-guest inspect`: one read-only appliance, every OS root reported.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::appliance::{Appliance, ApplianceError, ApplianceOptions, Drive};
use crate::guestfs::DriveOptions;
use crate::inspect::{self, InspectError, OsInfo};
use crate::load::{self, LoadError, Source, SourceInfo};

#[derive(Debug, thiserror::Error)]
pub enum InspectCmdError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{disk}: {cause}")]
    Appliance { disk: String, cause: ApplianceError },
    #[error("{disk}: {cause}")]
    Inspect { disk: String, cause: InspectError },
    /// SIGINT/SIGTERM: the caller names the signal.
    #[error("{disk}: interrupted")]
    Interrupted { disk: String },
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub tool_version: String,
    pub libguestfs_version: String,
    pub source: SourceInfo,
    /// An OVA's other disks, in the descriptor's order (the first is `source`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_disks: Vec<SourceInfo>,
    /// An OVA's OVF descriptor: its name and the VM's hardware.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovf: Option<OvfSummary>,
    pub accelerator: crate::accel::Accel,
    pub accelerator_reason: String,
    pub appliance_launch_seconds: f64,
    pub operating_systems: Vec<OsInfo>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct OvfSummary {
    pub descriptor: String,
    pub hardware: load::ovf::OvfHardware,
}

/// Inspect `disk`; `quiet` hides the appliance spinner (as `--quiet` asks);
/// `trust_backing_files` lifts the backing-file/extent policy as it does for `fix`.
/// `cancel` is set on SIGINT/SIGTERM, whose handler also kills the children (as for `fix`;
/// the caller reports the signal, whatever error the dead children made).
pub fn inspect_disk(
    disk: &str,
    format: Option<&str>,
    trust_backing_files: bool,
    opts: &ApplianceOptions,
    quiet: bool,
    cancel: &AtomicBool,
) -> Result<InspectReport, InspectCmdError> {
    // libguestfs forks the appliance's QEMU itself, out of the signal handler's sight once
    // it has looked: no launch starts after a signal.
    let go_on = || match cancel.load(Ordering::SeqCst) {
        true => Err(InspectCmdError::Interrupted { disk: disk.into() }),
        false => Ok(()),
    };
    let source = Source::parse(disk);
    let mut warnings = Vec::new();
    // An OVA: every disk of the package, in its descriptor's order, and the VM's hardware.
    let package = match &source {
        Source::Ova { ova, .. } => load::ova::open(ova)?.map(|p| (ova.clone(), p)),
        _ => None,
    };
    let sources = match &package {
        Some((ova, p)) => {
            warnings.extend(p.warnings.iter().cloned());
            p.disks
                .iter()
                .map(|m| Source::Ova {
                    ova: ova.clone(),
                    member: m.name.clone(),
                    offset: m.offset,
                    size: m.size,
                })
                .collect()
        }
        None => vec![source],
    };
    let mut infos = Vec::new();
    for s in &sources {
        let info = load::probe_with(s, format, trust_backing_files)?;
        if trust_backing_files && info.chain.len() > 1 {
            warnings.push(trusted_backing_warning(&info));
        }
        infos.push(info);
    }
    // libguestfs cannot open a byte range of an OVA; a throw-away overlay can (its backing
    // file is the json: name of the member).
    let overlay_dir = tempfile::tempdir().map_err(|e| LoadError::Overlay {
        path: "temp dir".into(),
        reason: e.to_string(),
    })?;
    let mut drives = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        drives.push(match &info.source {
            Source::Ova { .. } => {
                let overlay = overlay_dir.path().join(format!("ova{i}.qcow2"));
                load::create_overlay(info, &overlay)?;
                Drive {
                    path: overlay.display().to_string(),
                    options: DriveOptions {
                        readonly: true,
                        format: Some("qcow2".into()),
                        ..Default::default()
                    },
                }
            }
            _ => drive_for(info, true),
        });
    }
    go_on()?;
    let spinner = crate::progress::Spinner::new("starting the libguestfs appliance", quiet);
    let app = Appliance::launch(&drives, opts).map_err(|cause| InspectCmdError::Appliance {
        disk: disk.into(),
        cause,
    });
    spinner.finish();
    let app = app?;
    let wrap = |cause: InspectError| InspectCmdError::Inspect {
        disk: disk.into(),
        cause,
    };
    let disks = inspect::scan_disks(&app.g).map_err(|e| wrap(e.into()))?;
    let roots = inspect::find_roots(&app.g, &disks).map_err(wrap)?;
    let mut oses = Vec::new();
    for root in &roots {
        go_on()?;
        warnings.extend(inspect::mount_guest(&app.g, root).map_err(wrap)?);
        oses.push(inspect::inspect_root(&app.g, root, &disks).map_err(wrap)?);
        app.g.umount_all().map_err(|e| wrap(e.into()))?;
    }
    let mut infos = infos.into_iter();
    let info = infos.next().expect("at least one disk");
    Ok(InspectReport {
        tool_version: crate::version::TOOL.into(),
        libguestfs_version: crate::version::LIBGUESTFS.into(),
        source: info,
        other_disks: infos.collect(),
        ovf: package
            .and_then(|(_, p)| p.ovf)
            .map(|(descriptor, d)| OvfSummary {
                descriptor,
                hardware: d.hardware,
            }),
        accelerator: app.accel,
        accelerator_reason: app.accel_reason.clone(),
        appliance_launch_seconds: app.launch_seconds,
        operating_systems: oses,
        warnings,
    })
}

/// The report's note that the chain was followed on the user's word (`fix` words it the same).
fn trusted_backing_warning(info: &SourceInfo) -> String {
    let files: Vec<&str> = info.chain[1..]
        .iter()
        .map(|l| l.filename.as_str())
        .collect();
    format!(
        "backing files trusted: {} ({})",
        info.source,
        files.join(", ")
    )
}

/// How to attach a probed source: by its detected format, or over NBD.
pub fn drive_for(info: &SourceInfo, readonly: bool) -> Drive {
    match &info.source {
        Source::File(p) => Drive {
            path: p.display().to_string(),
            options: DriveOptions {
                readonly,
                format: Some(info.format.clone()),
                ..Default::default()
            },
        },
        Source::Ova { .. } => unreachable!("OVA members are attached through an overlay"),
        Source::Nbd(uri) => {
            let (server, export) = nbd_server_and_export(uri);
            Drive {
                path: export,
                options: DriveOptions {
                    readonly,
                    format: Some(info.format.clone()),
                    protocol: Some("nbd".into()),
                    servers: vec![server],
                    ..Default::default()
                },
            }
        }
    }
}

/// Split an NBD URI into libguestfs's server string and export name.
/// `nbd+unix:///exp?socket=/s` → ("unix:/s", "exp"); `nbd://host:10809/exp` → ("tcp:host:10809", "exp").
pub fn nbd_server_and_export(uri: &str) -> (String, String) {
    if let Some(rest) = uri.strip_prefix("nbd+unix://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let export = path.trim_start_matches('/').to_string();
        let socket = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("socket="))
            .unwrap_or("")
            .to_string();
        return (format!("unix:{socket}"), export);
    }
    let rest = uri
        .trim_start_matches("nbd+tcp://")
        .trim_start_matches("nbd://");
    let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
    (format!("tcp:{hostport}"), export.to_string())
}

/// `web01.ovf: VM web01, 2 vCPUs, 1536 MiB, uefi, NICs 00:50:56:ab:cd:01 on VM Network`.
pub fn ovf_line(ovf: &OvfSummary) -> String {
    let hw = &ovf.hardware;
    let mut parts = Vec::new();
    if let Some(n) = &hw.name {
        parts.push(format!("VM {n}"));
    }
    if let Some(c) = hw.cpus {
        parts.push(format!("{c} vCPUs"));
    }
    if let Some(m) = hw.memory_mib {
        parts.push(format!("{m} MiB"));
    }
    if let Some(f) = hw.firmware {
        parts.push(f.to_string());
    }
    if !hw.nics.is_empty() {
        let nics: Vec<String> = hw
            .nics
            .iter()
            .map(|n| {
                let mac = n.mac.as_deref().unwrap_or("(no MAC)");
                match &n.network {
                    Some(net) => format!("{mac} on {net}"),
                    None => mac.to_string(),
                }
            })
            .collect();
        parts.push(format!("NICs {}", nics.join(", ")));
    }
    if parts.is_empty() {
        parts.push("no hardware described".into());
    }
    format!("{}: {}", ovf.descriptor, parts.join(", "))
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// The human-readable table printed without `--json`.
pub fn render_table(r: &InspectReport) -> String {
    let mut o = String::new();
    let size_gib = r.source.virtual_size as f64 / (1u64 << 30) as f64;
    o += &format!(
        "Source:       {} ({}, {:.2} GiB virtual)\n",
        r.source.source, r.source.format, size_gib
    );
    for (i, d) in r.other_disks.iter().enumerate() {
        o += &format!(
            "Disk {}:       {} ({}, {:.2} GiB virtual)\n",
            i + 2,
            d.source,
            d.format,
            d.virtual_size as f64 / (1u64 << 30) as f64
        );
    }
    if let Some(ovf) = &r.ovf {
        o += &format!("OVF:          {}\n", ovf_line(ovf));
    }
    o += &format!(
        "Appliance:    {} ({}), launched in {:.1} s\n",
        r.accelerator, r.accelerator_reason, r.appliance_launch_seconds
    );
    for os in &r.operating_systems {
        o += &format!("\nRoot:         {}\n", os.root);
        o += &format!(
            "Product:      {} ({} {} {}.{}, {})\n",
            os.product_name, os.os_type, os.distro, os.major_version, os.minor_version, os.arch
        );
        o += &format!(
            "Packages:     {} / {}\n",
            os.package_format, os.package_management
        );
        o += &format!("Hostname:     {}\n", os.hostname);
        o += &format!(
            "Firmware:     {} ({})\n",
            os.firmware.kind, os.firmware.evidence
        );
        o += &format!(
            "Bootloader:   {}{}{}\n",
            os.bootloader.kind,
            os.bootloader
                .config
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            if os.bootloader.bls {
                ", BLS entries"
            } else {
                ""
            }
        );
        if let Some(photon) = &os.photon {
            o += &photon_lines(photon);
        }
        o += &format!(
            "Initramfs:    {}\n",
            serde_json::to_value(os.initramfs_tool)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        );
        o += &format!(
            "virtio_blk:   {} in the default kernel's initramfs\n",
            match os.virtio_blk_in_default_initramfs {
                Some(true) => "present",
                Some(false) => "MISSING",
                None => "unknown",
            }
        );
        o += "Mountpoints:\n";
        for m in &os.mountpoints {
            o += &format!("  {:<14} {}\n", m.mountpoint, m.device);
        }
        o += "Filesystems:\n";
        for f in &os.filesystems {
            o += &format!(
                "  {:<24} {:<6} uuid={} label={}\n",
                f.device,
                f.fs_type,
                opt(&f.uuid),
                opt(&f.label)
            );
        }
        o += "Kernels:\n";
        for k in &os.kernels {
            let default = if os.default_kernel.as_deref() == Some(k.version.as_str()) {
                " (default)"
            } else {
                ""
            };
            o += &format!(
                "  {}{}  initramfs={}  virtio=[{}]\n",
                k.version,
                default,
                opt(&k.initramfs),
                k.virtio_modules.join(",")
            );
        }
    }
    for w in &r.warnings {
        o += &format!("warning: {w}\n");
    }
    o
}

/// The Photon boot facts of the table: who wrote grub.cfg, what photon.cfg boots.
fn photon_lines(p: &crate::inspect::photon::PhotonBoot) -> String {
    let mut o = String::new();
    let cfg = match (&p.photon_cfg, p.photon_cfg_is_link) {
        (Some(target), true) => format!("/boot/photon.cfg → {target}"),
        (Some(file), false) => file.clone(),
        (None, _) => "no /boot/photon.cfg".into(),
    };
    o += &format!(
        "Photon boot:  {}, {cfg}\n",
        if p.installer_grub_cfg {
            "grub.cfg written by the installer (DO NOT OVERWRITE)"
        } else {
            "grub.cfg without the installer's marker"
        }
    );
    o += &format!(
        "              kernel {} ({}), root={}\n",
        opt(&p.kernel),
        opt(&p.flavour),
        opt(&p.root_partition)
    );
    o += &format!("              photon_cmdline={}\n", opt(&p.photon_cmdline));
    let mut extra: Vec<&str> = Vec::new();
    if p.user_cfg {
        extra.push("user.cfg");
    }
    if p.systemd_cfg {
        extra.push("systemd.cfg");
    }
    o += &format!(
        "              driver lists: [{}]{}\n",
        p.driver_lists.join(", "),
        if extra.is_empty() {
            String::new()
        } else {
            format!("; {}", extra.join(", "))
        }
    );
    for u in &p.unreadable {
        o += &format!("              unreadable: {u}\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photon_boot_facts_are_shown() {
        let p = crate::inspect::photon::PhotonBoot {
            installer_grub_cfg: true,
            root_partition: Some("PARTUUID=8a1c".into()),
            photon_cfg: Some("/boot/linux-esx-6.1.10-11.ph5-esx.cfg".into()),
            photon_cfg_is_link: true,
            photon_linux: Some("vmlinuz-6.1.10-11.ph5-esx".into()),
            photon_initrd: Some("initrd.img-6.1.10-11.ph5-esx".into()),
            photon_cmdline: Some("init=/lib/systemd/systemd ro".into()),
            kernel: Some("6.1.10-11.ph5-esx".into()),
            flavour: Some("linux-esx".into()),
            kernel_cfgs: vec![],
            driver_lists: vec!["6.1.10-11.ph5-esx".into()],
            user_cfg: true,
            systemd_cfg: false,
            unreadable: vec![],
        };
        assert_eq!(
            photon_lines(&p),
            "Photon boot:  grub.cfg written by the installer (DO NOT OVERWRITE), /boot/photon.cfg → /boot/linux-esx-6.1.10-11.ph5-esx.cfg\n              kernel 6.1.10-11.ph5-esx (linux-esx), root=PARTUUID=8a1c\n              photon_cmdline=init=/lib/systemd/systemd ro\n              driver lists: [6.1.10-11.ph5-esx]; user.cfg\n"
        );
        let empty = photon_lines(&crate::inspect::photon::PhotonBoot::default());
        assert!(
            empty.starts_with(
                "Photon boot:  grub.cfg without the installer's marker, no /boot/photon.cfg\n"
            ),
            "{empty}"
        );
    }

    #[test]
    fn a_trusted_chain_is_noted_as_fix_notes_it() {
        let layer = |f: &str| load::ImageLayer {
            filename: f.into(),
            format: "qcow2".into(),
            virtual_size: 1,
            actual_size: None,
            backing_filename: None,
            format_specific: None,
        };
        let info = SourceInfo {
            source: Source::File("/v/top.qcow2".into()),
            format: "qcow2".into(),
            virtual_size: 1,
            actual_size: None,
            vmdk_subformat: None,
            chain: vec![layer("/v/top.qcow2"), layer("/etc/base.qcow2")],
        };
        assert_eq!(
            trusted_backing_warning(&info),
            "backing files trusted: /v/top.qcow2 (/etc/base.qcow2)"
        );
    }

    #[test]
    fn nbd_uris_split_into_server_and_export() {
        assert_eq!(
            nbd_server_and_export("nbd+unix:///disk?socket=/run/x.sock"),
            ("unix:/run/x.sock".into(), "disk".into())
        );
        assert_eq!(
            nbd_server_and_export("nbd+unix://?socket=/s"),
            ("unix:/s".into(), "".into())
        );
        assert_eq!(
            nbd_server_and_export("nbd://127.0.0.1:10809/vm1"),
            ("tcp:127.0.0.1:10809".into(), "vm1".into())
        );
        assert_eq!(
            nbd_server_and_export("nbd://host"),
            ("tcp:host".into(), "".into())
        );
    }
}
