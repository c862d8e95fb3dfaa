//! The libvirt side of a plan: where the domain XML goes, whether to define it, what its NICs
//! attach to.

use std::path::PathBuf;

use serde::Serialize;

use super::valid_interface_name;

/// The libvirt domain written beside the outputs when the job succeeds (`fix --libvirt-xml`,
/// `--libvirt-define`, manifest `pipeline.libvirt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct LibvirtPlan {
    /// Write the domain XML.
    pub xml: bool,
    /// Where; None = `<directory of the boot disk's output>/<job>.xml`.
    pub xml_path: Option<PathBuf>,
    /// Define the domain with `virsh -c URI define` (writes the XML too).
    pub define: Option<String>,
    /// What the NICs attach to.
    pub network: LibvirtNetwork,
    /// The serial console's log file (`<log file=…/>`), which libvirt writes while the VM runs.
    pub console_log: Option<PathBuf>,
}

/// The libvirt URI `--libvirt-define` uses without one.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";

/// Where a NIC of the libvirt domain attaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "name")]
pub enum LibvirtNetwork {
    /// A libvirt virtual network (`network:NAME`; default `network:default`).
    Network(String),
    /// A host bridge (`bridge:NAME`).
    Bridge(String),
    /// User-mode networking (`user`): no host setup, outbound only.
    User,
}

impl Default for LibvirtNetwork {
    fn default() -> Self {
        LibvirtNetwork::Network("default".into())
    }
}

impl std::fmt::Display for LibvirtNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LibvirtNetwork::Network(n) => write!(f, "network:{n}"),
            LibvirtNetwork::Bridge(b) => write!(f, "bridge:{b}"),
            LibvirtNetwork::User => f.write_str("user"),
        }
    }
}

impl std::str::FromStr for LibvirtNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name_ok = |n: &str| {
            (1..=64).contains(&n.len())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
        };
        match s.split_once(':') {
            _ if s == "user" => Ok(LibvirtNetwork::User),
            Some(("network", n)) if name_ok(n) => Ok(LibvirtNetwork::Network(n.into())),
            Some(("bridge", b)) if valid_interface_name(b) => Ok(LibvirtNetwork::Bridge(b.into())),
            _ => Err(format!(
                "{s:?}: expected network:NAME, bridge:NAME or user (names of A-Z a-z 0-9 _ . - :)"
            )),
        }
    }
}

/// A libvirt connection URI h2k-guest passes to `virsh -c`: `driver[+transport]://…`, no
/// spaces or control characters.
pub fn valid_libvirt_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
        && s.len() <= 1024
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl super::Plan {
    /// Where the libvirt domain XML goes, when one is to be written.
    pub fn libvirt_xml_path(&self) -> Option<PathBuf> {
        if !self.libvirt.xml && self.libvirt.define.is_none() {
            return None;
        }
        let default = || {
            let dir = self
                .disks
                .first()
                .and_then(|d| d.output.parent())
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(&self.output_dir);
            dir.join(format!("{}.xml", self.job_name))
        };
        Some(self.libvirt.xml_path.clone().unwrap_or_else(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    #[test]
    fn libvirt_xml_goes_beside_the_boot_disk_unless_placed() {
        let mut p = Plan::for_single_disk("/src/vm.vmdk", None, PathBuf::from("/out/web.qcow2"));
        assert_eq!(p.libvirt_xml_path(), None);
        p.libvirt.define = Some(DEFAULT_LIBVIRT_URI.into());
        assert_eq!(p.libvirt_xml_path(), Some(PathBuf::from("/out/web.xml")));
        p.libvirt.xml_path = Some(PathBuf::from("/etc/libvirt/x.xml"));
        assert_eq!(
            p.libvirt_xml_path(),
            Some(PathBuf::from("/etc/libvirt/x.xml"))
        );
    }

    #[test]
    fn libvirt_networks_and_uris_parse() {
        assert_eq!(
            "network:default".parse::<LibvirtNetwork>(),
            Ok(LibvirtNetwork::default())
        );
        assert_eq!(
            "bridge:br0".parse::<LibvirtNetwork>(),
            Ok(LibvirtNetwork::Bridge("br0".into()))
        );
        assert_eq!("user".parse::<LibvirtNetwork>(), Ok(LibvirtNetwork::User));
        for bad in [
            "",
            "network:",
            "bridge:a b",
            "nat",
            "network:x/y",
            "bridge:averyveryverylongname",
        ] {
            assert!(bad.parse::<LibvirtNetwork>().is_err(), "{bad}");
        }
        for n in [LibvirtNetwork::User, LibvirtNetwork::Bridge("br0".into())] {
            assert_eq!(n.to_string().parse::<LibvirtNetwork>(), Ok(n));
        }
        assert!(valid_libvirt_uri("qemu:///system"));
        assert!(valid_libvirt_uri("qemu+ssh://root@host/system"));
        assert!(valid_libvirt_uri("qemu+unix:///system?socket=/tmp/s"));
        for bad in [
            "system",
            "qemu:///sys tem",
            "://x",
            "qe mu:///system",
            "qemu:///\n",
        ] {
            assert!(!valid_libvirt_uri(bad), "{bad:?}");
        }
    }
}
