//! `h2k-guest validate`: qemu-img check, a boot to `login:`, or a boot with the probe.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use h2k_guest::validate;

use super::signals::cancel_on_signals;
use super::GlobalArgs;

/// Check an image with qemu-img check, boot it (--boot) until a login prompt, or boot it
/// with a probe (--boot --probe) that reports whether the guest came up whole.
///
/// With --probe, "whole" means: multi-user.target reached; every --expect-iface interface
/// present and up (with its address when one is given); at least one non-loopback
/// interface up with an IPv4 address, and a default route; every /etc/fstab file system
/// (not noauto) mounted; every /etc/fstab swap (not noauto) active; no failed unit;
/// `systemctl is-system-running` says running; with --expect-agent, the QEMU guest agent
/// answers guest-sync, guest-info and guest-ping on org.qemu.guest_agent.0. The exit
/// status is non-zero otherwise.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Disk image (qcow2, vmdk, raw, vhd, vhdx, vdi) or an nbd:// URI; never written.
    pub image: String,
    /// Boot it under QEMU on a throw-away overlay and wait for `login:` on the serial console.
    #[arg(long)]
    pub boot: bool,
    /// Firmware: auto picks UEFI when the disk has an EFI system partition.
    #[arg(long, default_value = "auto", requires = "boot", value_parser = ["auto", "bios", "uefi"])]
    pub firmware: String,
    /// Seconds to wait for the login prompt.
    #[arg(long, value_name = "S", default_value_t = 300, requires = "boot")]
    pub timeout: u64,
    /// Disk controller: virtio, virtio-scsi, pvscsi (VMware's), lsi, sata.
    #[arg(long, default_value = "virtio", requires = "boot", ignore_case = true)]
    pub bus: validate::Bus,
    /// Image format, when it should not be detected.
    #[arg(long)]
    pub format: Option<String>,
    /// Keep the guest's serial console in FILE (default: a temp file, kept on failure).
    #[arg(long, value_name = "FILE", requires = "boot")]
    pub console_log: Option<PathBuf>,
    /// Put a one-shot probe unit into the throw-away overlay (one appliance launch), boot
    /// it and read the probe's report from the serial console (no credentials needed);
    /// --timeout then bounds the wait for that report.
    #[arg(long, requires = "boot")]
    pub probe: bool,
    /// Another disk of the VM, attached after IMAGE in the order given (repeatable).
    #[arg(long = "disk", value_name = "EXTRA_IMAGE", requires = "probe")]
    pub disks: Vec<String>,
    /// One NIC with this MAC (repeatable, in PCI order); default: one NIC with QEMU's
    /// default MAC 52:54:00:12:34:56. User-mode networking: DHCP 10.0.2.15, gateway 10.0.2.2.
    #[arg(long = "mac", value_name = "MAC", requires = "probe",
          value_parser = validate::parse_mac)]
    pub macs: Vec<String>,
    /// An interface that must be up, with this address when given (repeatable),
    /// e.g. ens192=10.0.2.15/24.
    #[arg(
        long = "expect-iface",
        value_name = "NAME[=ADDR/PREFIX]",
        requires = "probe"
    )]
    pub expect_ifaces: Vec<validate::ExpectIface>,
    /// The QEMU guest agent must answer on its virtio-serial port org.qemu.guest_agent.0
    /// (the guest is not whole otherwise).
    #[arg(long, requires = "probe")]
    pub expect_agent: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ValidateArgs, global: &GlobalArgs) -> Result<()> {
    let ValidateArgs {
        image,
        boot,
        firmware,
        timeout,
        bus,
        format,
        console_log,
        probe,
        disks,
        macs,
        expect_ifaces,
        expect_agent,
        json,
    } = args;
    if !boot {
        let check = validate::check_image_as(&image, format.as_deref())?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&check)?);
        } else if check.clean {
            outln!("{}", check.summary());
        }
        anyhow::ensure!(check.clean, "{}", check.summary());
        return Ok(());
    }
    let boot_opts = validate::BootOptions {
        image,
        format,
        bus,
        firmware: firmware.parse().map_err(anyhow::Error::msg)?,
        accel: global.accel,
        timeout: std::time::Duration::from_secs(timeout),
        console_log,
        cancel: Some(cancel_on_signals()?),
        ..Default::default()
    };
    if probe {
        let outcome = validate::probe_check(&validate::ProbeOptions {
            boot: boot_opts,
            extra_disks: disks,
            nics: macs.into_iter().map(Some).collect(),
            expect_ifaces,
            expect_agent,
        })?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&outcome)?);
        } else if outcome.whole() {
            outln!("{}", outcome.summary());
        }
        anyhow::ensure!(outcome.whole(), "{}", outcome.summary());
        return Ok(());
    }
    let outcome = validate::boot_check(&boot_opts)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else if outcome.booted {
        outln!("{}", outcome.summary());
    }
    anyhow::ensure!(outcome.booted, "{}", outcome.summary());
    Ok(())
}
