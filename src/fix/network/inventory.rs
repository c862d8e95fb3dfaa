//! Which network interfaces a guest configures, read from its configuration files: pure
//! parsers over the file texts (untrusted guest data: they never panic, unknown lines are
//! skipped), merged into one list of interfaces with their MAC, addressing and files.

use std::collections::BTreeMap;

use serde_yaml_ng::Value as Yaml;

use crate::plan::normalize_mac;

/// What a guest file is, which decides the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `/etc/network/interfaces` and what it sources.
    Ifupdown,
    /// `/etc/netplan/*.yaml`.
    Netplan,
    /// `/etc/NetworkManager/system-connections/*.nmconnection`.
    NmKeyfile,
    /// `/etc/sysconfig/network-scripts/ifcfg-*`, `/etc/sysconfig/network/ifcfg-*`.
    Ifcfg,
    /// `/etc/systemd/network/*.network`.
    NetworkdNetwork,
    /// `/etc/systemd/network/*.link` (a pin when it sets `Name=`).
    NetworkdLink,
    /// `/etc/udev/rules.d/*.rules` (persistent-net rules are pins).
    UdevRules,
}

impl Format {
    /// Files that configure interfaces (as opposed to pins that only name them).
    pub fn is_config(self) -> bool {
        !matches!(self, Format::NetworkdLink | Format::UdevRules)
    }
}

/// One guest file as read.
#[derive(Debug, Clone)]
pub struct GuestFile {
    pub path: String,
    pub format: Format,
    pub text: String,
}

/// Whether an interface is a NIC (needs a name on the new hardware) or made from others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ethernet,
    /// vlan, bond, bridge, team, …: named by its own configuration, not by hardware.
    Virtual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addressing {
    /// manual, none, or not said in this file.
    Unknown,
    Dhcp,
    Static,
}

impl Addressing {
    pub fn as_str(self) -> &'static str {
        match self {
            Addressing::Unknown => "unconfigured",
            Addressing::Dhcp => "dhcp",
            Addressing::Static => "static",
        }
    }
}

/// One statement about an interface in one file. `name` None: the file matches its NIC by
/// MAC only (an NM keyfile without interface-name, a netplan MAC match without set-name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub name: Option<String>,
    pub mac: Option<String>,
    pub kind: Kind,
    pub addressing: Addressing,
}

/// A rule that gives a NIC its name: a udev persistent-net rule or a `.link` with `Name=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub path: String,
    pub format: Format,
    pub name: String,
    pub mac: Option<String>,
    /// `Driver=` of a `.link` (`virtio_net` in the ones h2k-guest writes without a MAC).
    pub driver: Option<String>,
    /// 1-based line of a udev rule.
    pub line: Option<usize>,
}

/// An interface the guest configures, merged over all its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Its MAC as recorded in a config file, else in a pin.
    pub mac: Option<String>,
    pub kind: Kind,
    pub addressing: Addressing,
    /// Config files that mention it (pins are in [`Inventory::pins`]).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub interfaces: Vec<Interface>,
    pub pins: Vec<Pin>,
    /// MACs config files match on without naming the interface: (mac, path).
    pub mac_only: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

impl Inventory {
    pub fn ethernets(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces.iter().filter(|i| i.kind == Kind::Ethernet)
    }
}

/// The inventory of a set of guest files.
pub fn scan(files: &[GuestFile]) -> Inventory {
    let mut inv = Inventory::default();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for file in files {
        let mentions = match file.format {
            Format::Ifupdown => parse_ifupdown(&file.text).mentions,
            Format::Netplan => match parse_netplan(&file.text) {
                Ok(m) => m,
                Err(e) => {
                    inv.warnings
                        .push(format!("{}: not read as netplan YAML: {e}", file.path));
                    Vec::new()
                }
            },
            Format::NmKeyfile => parse_nm_keyfile(&file.text),
            Format::Ifcfg => parse_ifcfg(&file.path, &file.text),
            Format::NetworkdNetwork => parse_networkd_network(&file.text),
            Format::NetworkdLink => {
                inv.pins.extend(parse_link(&file.path, &file.text));
                Vec::new()
            }
            Format::UdevRules => {
                inv.pins.extend(parse_udev_rules(&file.path, &file.text));
                Vec::new()
            }
        };
        for m in mentions {
            let Some(name) = m.name.filter(|n| n != "lo") else {
                if let Some(mac) = m.mac {
                    inv.mac_only.push((mac, file.path.clone()));
                }
                continue;
            };
            let at = *by_name.entry(name.clone()).or_insert_with(|| {
                inv.interfaces.push(Interface {
                    name: name.clone(),
                    mac: None,
                    kind: Kind::Ethernet,
                    addressing: Addressing::Unknown,
                    files: Vec::new(),
                });
                inv.interfaces.len() - 1
            });
            let iface = &mut inv.interfaces[at];
            if m.kind == Kind::Virtual {
                iface.kind = Kind::Virtual;
            }
            iface.addressing = iface.addressing.max(m.addressing);
            if !iface.files.contains(&file.path) {
                iface.files.push(file.path.clone());
            }
            match (&iface.mac, m.mac) {
                (None, Some(mac)) => iface.mac = Some(mac),
                (Some(known), Some(mac)) if *known != mac => inv.warnings.push(format!(
                    "{}: {} is given MAC {mac} here and {known} elsewhere; using {known}",
                    file.path, iface.name
                )),
                _ => {}
            }
        }
    }
    // A pin tells the MAC of a name the configs do not record; a MAC-only config belongs
    // to the interface that MAC names.
    for iface in &mut inv.interfaces {
        if iface.mac.is_none() {
            iface.mac = inv
                .pins
                .iter()
                .find(|p| p.name == iface.name && p.mac.is_some())
                .and_then(|p| p.mac.clone());
        }
    }
    let mut unclaimed = Vec::new();
    for (mac, path) in std::mem::take(&mut inv.mac_only) {
        match inv
            .interfaces
            .iter_mut()
            .find(|i| i.mac.as_deref() == Some(mac.as_str()))
        {
            Some(iface) if !iface.files.contains(&path) => iface.files.push(path),
            Some(_) => {}
            None => unclaimed.push((mac, path)),
        }
    }
    inv.mac_only = unclaimed;
    inv
}

/// Kind from the name alone: vlans (`ens192.100`) and the usual virtual device prefixes.
pub fn kind_by_name(name: &str) -> Kind {
    const VIRTUAL: &[&str] = &[
        "bond", "br", "vlan", "team", "virbr", "docker", "veth", "tun", "tap", "wg", "ppp", "lo",
        "dummy", "vxlan", "macvlan", "ovs",
    ];
    let alpha: String = name
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    if name.contains('.') || VIRTUAL.contains(&alpha.as_str()) {
        Kind::Virtual
    } else {
        Kind::Ethernet
    }
}

fn mention(name: &str, kind: Kind) -> Mention {
    Mention {
        name: Some(name.to_string()),
        mac: None,
        kind,
        addressing: Addressing::Unknown,
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '!'])
}

// ---------------------------------------------------------------------------------------------
// ifupdown

/// What `/etc/network/interfaces` (or a file it sources) says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ifupdown {
    pub mentions: Vec<Mention>,
    pub sources: Vec<IfupdownSource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfupdownSource {
    /// `source PATTERN` (a glob; relative to the file's directory).
    Glob(String),
    /// `source-directory DIR`: its files named `[A-Za-z0-9_-]+`.
    Directory(String),
}

/// Logical lines: comments (`#` first) dropped, `\`-continued lines joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        if pending.is_empty() && line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                out.push(std::mem::take(&mut pending));
            }
        }
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    out
}

pub fn parse_ifupdown(text: &str) -> Ifupdown {
    let mut out = Ifupdown::default();
    // Index into `out.mentions` of the stanza being read.
    let mut stanza: Option<usize> = None;
    for line in logical_lines(text) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&keyword, args)) = words.split_first() else {
            continue;
        };
        match keyword {
            "auto" | "allow-auto" | "allow-hotplug" | "no-auto-down" | "no-scripts" => {
                stanza = None;
                for name in args {
                    let base = name.split(':').next().unwrap_or(name);
                    out.mentions.push(mention(base, kind_by_name(base)));
                }
            }
            k if k.starts_with("allow-") => stanza = None,
            "iface" => {
                let name = args.first().copied().unwrap_or_default();
                let base = name.split(':').next().unwrap_or(name);
                if base.is_empty() {
                    stanza = None;
                    continue;
                }
                let method = args.get(2).copied().unwrap_or_default();
                let mut m = mention(base, kind_by_name(base));
                m.addressing = match method {
                    "static" => Addressing::Static,
                    "dhcp" | "auto" => Addressing::Dhcp,
                    _ => Addressing::Unknown,
                };
                out.mentions.push(m);
                stanza = Some(out.mentions.len() - 1);
            }
            "mapping" => stanza = None,
            "source" => {
                stanza = None;
                out.sources
                    .extend(args.iter().map(|p| IfupdownSource::Glob(p.to_string())));
            }
            "source-directory" => {
                stanza = None;
                out.sources.extend(
                    args.iter()
                        .map(|p| IfupdownSource::Directory(p.to_string())),
                );
            }
            option => {
                let Some(at) = stanza else { continue };
                match option {
                    "hwaddress" => {
                        let mac = args.iter().find_map(|a| normalize_mac(a));
                        out.mentions[at].mac = mac;
                    }
                    "bond-slaves" | "bond_slaves" | "slaves" | "bridge_ports" | "bridge-ports"
                    | "bond-primary" | "vlan-raw-device" | "vlan_raw_device" => {
                        out.mentions[at].kind = Kind::Virtual;
                        let members: Vec<Mention> = args
                            .iter()
                            .filter(|a| !matches!(**a, "none" | "all" | "regex"))
                            .filter(|a| !has_glob(a))
                            .map(|a| mention(a, kind_by_name(a)))
                            .collect();
                        out.mentions.extend(members);
                    }
                    "address" | "gateway" | "netmask" => {
                        let m = &mut out.mentions[at];
                        m.addressing = m.addressing.max(Addressing::Static);
                    }
                    o if (o.starts_with("bond-") || o.starts_with("bridge"))
                        && !matches!(o, "bond-master" | "bond_master") =>
                    {
                        out.mentions[at].kind = Kind::Virtual;
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// netplan

fn yaml_str(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn yaml_true(v: Option<&Yaml>) -> bool {
    match v {
        Some(Yaml::Bool(b)) => *b,
        Some(Yaml::String(s)) => matches!(s.as_str(), "yes" | "true" | "on"),
        _ => false,
    }
}

pub fn parse_netplan(text: &str) -> Result<Vec<Mention>, String> {
    let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let Some(network) = doc.get("network") else {
        return Ok(out);
    };
    for (section, kind) in [
        ("ethernets", Kind::Ethernet),
        ("bonds", Kind::Virtual),
        ("bridges", Kind::Virtual),
        ("vlans", Kind::Virtual),
    ] {
        let Some(Yaml::Mapping(devices)) = network.get(section) else {
            continue;
        };
        for (id, cfg) in devices {
            let Some(id) = yaml_str(id) else { continue };
            let matcher = cfg.get("match");
            let set_name = cfg.get("set-name").and_then(yaml_str);
            let match_name = matcher.and_then(|m| m.get("name")).and_then(yaml_str);
            let mac = matcher
                .and_then(|m| m.get("macaddress"))
                .and_then(yaml_str)
                .and_then(|m| normalize_mac(&m));
            let name = match (set_name, matcher) {
                (Some(n), _) => Some(n),
                (None, Some(_)) => match_name.filter(|n| !has_glob(n)),
                (None, None) => Some(id),
            };
            let mut addressing = Addressing::Unknown;
            if yaml_true(cfg.get("dhcp4")) || yaml_true(cfg.get("dhcp6")) {
                addressing = Addressing::Dhcp;
            }
            if matches!(cfg.get("addresses"), Some(Yaml::Sequence(a)) if !a.is_empty()) {
                addressing = Addressing::Static;
            }
            if name.is_none() && mac.is_none() {
                continue; // a pattern match: follows whatever the NIC is called
            }
            out.push(Mention {
                kind: if kind == Kind::Ethernet {
                    name.as_deref().map_or(Kind::Ethernet, kind_by_name)
                } else {
                    kind
                },
                name,
                mac,
                addressing,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// INI-like files: NetworkManager keyfiles, systemd .network/.link

/// `(section, key, value)` of every `key=value` line; `#`/`;` comments skipped.
fn ini(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with(['#', ';']) || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

pub fn parse_nm_keyfile(text: &str) -> Vec<Mention> {
    let entries = ini(text);
    let get = |sections: &[&str], key: &str| {
        entries
            .iter()
            .find(|(s, k, _)| sections.contains(&s.as_str()) && k == key)
            .map(|(_, _, v)| v.clone())
    };
    let name = get(&["connection"], "interface-name").filter(|n| !n.is_empty());
    let mac = get(&["ethernet", "802-3-ethernet"], "mac-address").and_then(|m| normalize_mac(&m));
    let kind = match get(&["connection"], "type").as_deref() {
        None | Some("ethernet" | "802-3-ethernet") => Kind::Ethernet,
        Some(_) => Kind::Virtual,
    };
    let mut addressing = match get(&["ipv4"], "method").as_deref() {
        Some("auto") => Addressing::Dhcp,
        Some("manual") => Addressing::Static,
        _ => Addressing::Unknown,
    };
    if entries
        .iter()
        .any(|(s, k, _)| s == "ipv4" && k.starts_with("address"))
    {
        addressing = Addressing::Static;
    }
    if name.is_none() && mac.is_none() {
        return Vec::new();
    }
    vec![Mention {
        kind: if kind == Kind::Ethernet {
            name.as_deref().map_or(kind, kind_by_name)
        } else {
            kind
        },
        name,
        mac,
        addressing,
    }]
}

/// Space-separated `Name=`/`MACAddress=` values of every `[Match]` line with `key`.
fn match_values(entries: &[(String, String, String)], key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(s, k, _)| s == "Match" && k == key)
        .flat_map(|(_, _, v)| v.split_whitespace().map(str::to_string))
        .collect()
}

pub fn parse_networkd_network(text: &str) -> Vec<Mention> {
    let entries = ini(text);
    let macs: Vec<String> = match_values(&entries, "MACAddress")
        .into_iter()
        .chain(match_values(&entries, "PermanentMACAddress"))
        .filter_map(|m| normalize_mac(&m))
        .collect();
    let names: Vec<String> = match_values(&entries, "Name")
        .into_iter()
        .filter(|n| !has_glob(n))
        .collect();
    let mut addressing = Addressing::Unknown;
    for (s, k, v) in &entries {
        if s == "Network" && k == "DHCP" && matches!(v.as_str(), "yes" | "true" | "ipv4" | "ipv6") {
            addressing = addressing.max(Addressing::Dhcp);
        }
        if (s == "Network" || s == "Address") && k == "Address" {
            addressing = Addressing::Static;
        }
    }
    let mac = (macs.len() == 1).then(|| macs[0].clone());
    if names.is_empty() {
        return macs
            .into_iter()
            .map(|m| Mention {
                name: None,
                mac: Some(m),
                kind: Kind::Ethernet,
                addressing,
            })
            .collect();
    }
    names
        .iter()
        .map(|n| Mention {
            name: Some(n.clone()),
            mac: if names.len() == 1 { mac.clone() } else { None },
            kind: kind_by_name(n),
            addressing,
        })
        .collect()
}

pub fn parse_link(path: &str, text: &str) -> Option<Pin> {
    let entries = ini(text);
    let name = entries
        .iter()
        .rev()
        .find(|(s, k, _)| s == "Link" && k == "Name")
        .map(|(_, _, v)| v.clone())
        .filter(|n| !n.is_empty())?;
    let macs: Vec<String> = match_values(&entries, "MACAddress")
        .into_iter()
        .chain(match_values(&entries, "PermanentMACAddress"))
        .filter_map(|m| normalize_mac(&m))
        .collect();
    let driver = match_values(&entries, "Driver").into_iter().next();
    Some(Pin {
        path: path.to_string(),
        format: Format::NetworkdLink,
        name,
        mac: (macs.len() == 1).then(|| macs[0].clone()),
        driver,
        line: None,
    })
}

// ---------------------------------------------------------------------------------------------
// ifcfg (RHEL, SUSE)

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

pub fn parse_ifcfg(path: &str, text: &str) -> Vec<Mention> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.trim().to_string(), unquote(v).to_string());
        }
    }
    let from_file = path
        .rsplit('/')
        .next()
        .and_then(|f| f.strip_prefix("ifcfg-"))
        .unwrap_or_default();
    let name = vars
        .get("DEVICE")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| from_file.to_string());
    if name.is_empty() || name == "lo" {
        return Vec::new();
    }
    let virtual_type = matches!(
        vars.get("TYPE").map(|t| t.to_ascii_lowercase()).as_deref(),
        Some("bond" | "bridge" | "vlan" | "team")
    ) || vars.get("VLAN").is_some_and(|v| v == "yes")
        || vars.get("BONDING_MASTER").is_some_and(|v| v == "yes")
        || vars.contains_key("BONDING_OPTS");
    let mut addressing = match vars
        .get("BOOTPROTO")
        .map(|b| b.to_ascii_lowercase())
        .as_deref()
    {
        Some("dhcp" | "bootp" | "dhcp4" | "dhcp6" | "auto") => Addressing::Dhcp,
        Some("static") => Addressing::Static,
        _ => Addressing::Unknown,
    };
    if vars.keys().any(|k| k.starts_with("IPADDR")) {
        addressing = Addressing::Static;
    }
    vec![Mention {
        mac: vars.get("HWADDR").and_then(|m| normalize_mac(m)),
        kind: if virtual_type {
            Kind::Virtual
        } else {
            kind_by_name(&name)
        },
        name: Some(name),
        addressing,
    }]
}

// ---------------------------------------------------------------------------------------------
// udev rules

/// The value of `KEY=="…"` (match) or `KEY="…"`/`KEY:="…"` (assign) in a udev rule line.
fn udev_value<'a>(line: &'a str, key: &str, assign: bool) -> Option<&'a str> {
    let mut from = 0;
    while let Some(found) = line[from..].find(key) {
        let at = from + found;
        from = at + key.len();
        let before_ok = line[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c == ',' || c.is_whitespace());
        let rest = &line[at + key.len()..];
        let op_len = if assign {
            if rest.starts_with("=\"") {
                1
            } else if rest.starts_with(":=\"") {
                2
            } else {
                continue;
            }
        } else if rest.starts_with("==\"") {
            2
        } else {
            continue;
        };
        if !before_ok {
            continue;
        }
        let value = &rest[op_len + 1..];
        return value.find('"').map(|end| &value[..end]);
    }
    None
}

pub fn parse_udev_rules(path: &str, text: &str) -> Vec<Pin> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
        .filter_map(|(i, line)| {
            let mac = normalize_mac(udev_value(line, "ATTR{address}", false)?)?;
            let name = udev_value(line, "NAME", true)?;
            (!name.is_empty()).then(|| Pin {
                path: path.to_string(),
                format: Format::UdevRules,
                name: name.to_string(),
                mac: Some(mac),
                driver: None,
                line: Some(i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, format: Format, text: &str) -> GuestFile {
        GuestFile {
            path: path.into(),
            format,
            text: text.into(),
        }
    }

    fn names(ms: &[Mention]) -> Vec<(Option<&str>, Kind, Addressing)> {
        ms.iter()
            .map(|m| (m.name.as_deref(), m.kind, m.addressing))
            .collect()
    }

    /// The fixture's /etc/network/interfaces (scripts/make-fixture.sh).
    const FIXTURE_INTERFACES: &str =
        "# This file describes the network interfaces available on your system\n\
# and how to activate them. For more information, see interfaces(5).\n\
\n\
source /etc/network/interfaces.d/*\n\
\n\
# The loopback network interface\n\
auto lo\n\
iface lo inet loopback\n\
\n\
# The primary network interface\n\
allow-hotplug ens192\n\
iface ens192 inet dhcp\n";

    const FIXTURE_UDEV: &str = "# This file was automatically generated by the /lib/udev/write_net_rules\n\
# program, run by the persistent-net-generator.rules rules file.\n\
#\n\
# You can modify it, as long as you keep each rule on a single line.\n\
\n\
# PCI device 0x15ad:0x07b0 (vmxnet3)\n\
SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{address}==\"00:50:56:9A:12:34\", ATTR{dev_id}==\"0x0\", ATTR{type}==\"1\", KERNEL==\"eth*\", NAME=\"ens192\"\n";

    #[test]
    fn ifupdown_fixture_configures_ens192_by_dhcp_and_sources_interfaces_d() {
        let parsed = parse_ifupdown(FIXTURE_INTERFACES);
        assert_eq!(
            parsed.sources,
            [IfupdownSource::Glob("/etc/network/interfaces.d/*".into())]
        );
        let inv = scan(&[
            file(
                "/etc/network/interfaces",
                Format::Ifupdown,
                FIXTURE_INTERFACES,
            ),
            file(
                "/etc/udev/rules.d/70-persistent-net.rules",
                Format::UdevRules,
                FIXTURE_UDEV,
            ),
        ]);
        assert_eq!(
            inv.interfaces,
            [Interface {
                name: "ens192".into(),
                mac: Some("00:50:56:9a:12:34".into()),
                kind: Kind::Ethernet,
                addressing: Addressing::Dhcp,
                files: vec!["/etc/network/interfaces".into()],
            }]
        );
        assert_eq!(inv.pins.len(), 1);
        assert_eq!(inv.pins[0].line, Some(7));
        assert_eq!(inv.pins[0].name, "ens192");
    }

    #[test]
    fn ifupdown_static_vlan_bond_continuations_and_hwaddress() {
        let text = "auto ens160 ens192\n\
iface ens160 inet static\n\
    address 192.0.2.10/24\n\
    gateway 192.0.2.1\n\
    dns-nameservers 192.0.2.53 \\\n\
        192.0.2.54\n\
    hwaddress ether 00:50:56:AA:BB:CC\n\
iface ens160.100 inet manual\n\
    vlan-raw-device ens160\n\
# iface commented0 inet dhcp\n\
auto bond0\n\
iface bond0 inet dhcp\n\
    bond-slaves ens224 ens256\n\
    bond-mode active-backup\n\
iface ens224 inet manual\n\
    bond-master bond0\n\
iface ens192:1 inet static\n\
    address 198.51.100.2/24\n\
source-directory interfaces.d\n";
        let p = parse_ifupdown(text);
        assert_eq!(
            p.sources,
            [IfupdownSource::Directory("interfaces.d".into())]
        );
        let inv = scan(&[file("/etc/network/interfaces", Format::Ifupdown, text)]);
        let got: Vec<(&str, Kind, Addressing)> = inv
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.kind, i.addressing))
            .collect();
        assert_eq!(
            got,
            [
                ("ens160", Kind::Ethernet, Addressing::Static),
                ("ens192", Kind::Ethernet, Addressing::Static),
                ("ens160.100", Kind::Virtual, Addressing::Unknown),
                ("bond0", Kind::Virtual, Addressing::Dhcp),
                ("ens224", Kind::Ethernet, Addressing::Unknown),
                ("ens256", Kind::Ethernet, Addressing::Unknown),
            ]
        );
        assert_eq!(inv.interfaces[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert!(!inv
            .interfaces
            .iter()
            .any(|i| i.name.starts_with("commented")));
    }

    #[test]
    fn ifupdown_crlf_and_garbage_do_not_confuse() {
        let p = parse_ifupdown("iface\r\nauto\r\nallow-hotplug eth0\r\niface eth0 inet dhcp\r\n\\");
        assert_eq!(
            names(&p.mentions),
            [
                (Some("eth0"), Kind::Ethernet, Addressing::Unknown),
                (Some("eth0"), Kind::Ethernet, Addressing::Dhcp)
            ]
        );
    }

    #[test]
    fn netplan_ethernets_match_set_name_and_bonds() {
        let text = r#"network:
  version: 2
  renderer: networkd
  ethernets:
    ens192:
      dhcp4: true
    lan:
      match:
        macaddress: "00:50:56:AA:BB:01"
      set-name: ens224
      addresses: [192.0.2.5/24]
    bymac:
      match:
        macaddress: 00:50:56:aa:bb:02
      dhcp4: yes
    any:
      match:
        name: "en*"
      dhcp4: true
  bonds:
    bond0:
      interfaces: [ens192]
  vlans:
    vlan10:
      id: 10
      link: ens224
"#;
        let m = parse_netplan(text).unwrap();
        assert_eq!(
            names(&m),
            [
                (Some("ens192"), Kind::Ethernet, Addressing::Dhcp),
                (Some("ens224"), Kind::Ethernet, Addressing::Static),
                (None, Kind::Ethernet, Addressing::Dhcp),
                (Some("bond0"), Kind::Virtual, Addressing::Unknown),
                (Some("vlan10"), Kind::Virtual, Addressing::Unknown),
            ]
        );
        assert_eq!(m[1].mac.as_deref(), Some("00:50:56:aa:bb:01"));
        assert_eq!(m[2].mac.as_deref(), Some("00:50:56:aa:bb:02"));
        assert!(parse_netplan("network: [").is_err());
        assert_eq!(parse_netplan("# empty\n").unwrap(), []);
        let inv = scan(&[file("/etc/netplan/01.yaml", Format::Netplan, "network: {")]);
        assert!(inv.warnings[0].starts_with("/etc/netplan/01.yaml: not read as netplan"));
    }

    #[test]
    fn nm_keyfiles_with_and_without_interface_name() {
        let named = "[connection]\nid=Wired\ntype=ethernet\ninterface-name=ens192\n\n\
[ethernet]\nmac-address=00:50:56:AA:BB:CC\n\n[ipv4]\naddress1=192.0.2.7/24,192.0.2.1\nmethod=manual\n";
        assert_eq!(
            parse_nm_keyfile(named),
            [Mention {
                name: Some("ens192".into()),
                mac: Some("00:50:56:aa:bb:cc".into()),
                kind: Kind::Ethernet,
                addressing: Addressing::Static,
            }]
        );
        let mac_only = "[connection]\nid=x\ntype=802-3-ethernet\n[802-3-ethernet]\nmac-address=00:50:56:aa:bb:dd\n[ipv4]\nmethod=auto\n";
        let m = parse_nm_keyfile(mac_only);
        assert_eq!(m[0].name, None);
        assert_eq!(m[0].addressing, Addressing::Dhcp);
        assert_eq!(parse_nm_keyfile("[connection]\ntype=ethernet\n"), []);
        let bond = parse_nm_keyfile("[connection]\ntype=bond\ninterface-name=bond0\n");
        assert_eq!(bond[0].kind, Kind::Virtual);
    }

    #[test]
    fn ifcfg_rhel_and_suse() {
        let rhel = "# Generated\nTYPE=Ethernet\nDEVICE=\"ens192\"\nHWADDR=00:50:56:AA:BB:CC\nBOOTPROTO=none\nIPADDR=192.0.2.9\nPREFIX=24\nONBOOT=yes\n";
        let m = parse_ifcfg("/etc/sysconfig/network-scripts/ifcfg-ens192", rhel);
        assert_eq!(m[0].name.as_deref(), Some("ens192"));
        assert_eq!(m[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(m[0].addressing, Addressing::Static);
        let suse = "BOOTPROTO='dhcp'\nSTARTMODE='auto'\n";
        let m = parse_ifcfg("/etc/sysconfig/network/ifcfg-eth0", suse);
        assert_eq!(
            names(&m),
            [(Some("eth0"), Kind::Ethernet, Addressing::Dhcp)]
        );
        assert_eq!(
            parse_ifcfg("/etc/sysconfig/network/ifcfg-lo", "BOOTPROTO=static\n"),
            []
        );
        let vlan = parse_ifcfg("/x/ifcfg-v", "DEVICE=ens192.5\nVLAN=yes\n");
        assert_eq!(vlan[0].kind, Kind::Virtual);
        let bond = parse_ifcfg("/x/ifcfg-team", "DEVICE=team0\nTYPE=Bond\n");
        assert_eq!(bond[0].kind, Kind::Virtual);
    }

    #[test]
    fn networkd_network_and_link_files() {
        let net = "[Match]\nName=ens192\n\n[Network]\nAddress=192.0.2.3/24\nGateway=192.0.2.1\nDNS=192.0.2.53\n";
        assert_eq!(
            names(&parse_networkd_network(net)),
            [(Some("ens192"), Kind::Ethernet, Addressing::Static)]
        );
        let by_mac = "[Match]\nMACAddress=00:50:56:AA:BB:CC\n[Network]\nDHCP=yes\n";
        let m = parse_networkd_network(by_mac);
        assert_eq!(m[0].name, None);
        assert_eq!(m[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(parse_networkd_network("[Match]\nName=en*\n"), []);
        let link = "[Match]\nMACAddress=00:50:56:01:02:03\n\n[Link]\nName=ens192\n";
        let pin = parse_link("/etc/systemd/network/10-x.link", link).unwrap();
        assert_eq!(pin.name, "ens192");
        assert_eq!(pin.mac.as_deref(), Some("00:50:56:01:02:03"));
        assert_eq!(
            parse_link(
                "/y.link",
                "[Match]\nOriginalName=*\n\n[Link]\nNamePolicy=kernel\n"
            ),
            None
        );
        let driver = parse_link(
            "/z.link",
            "[Match]\nDriver=virtio_net\n[Link]\nName=ens192\n",
        );
        assert_eq!(driver.unwrap().driver.as_deref(), Some("virtio_net"));
    }

    #[test]
    fn udev_rules_need_a_mac_match_and_a_name_assignment() {
        let text = "# SUBSYSTEM==\"net\", ATTR{address}==\"00:50:56:00:00:01\", NAME=\"old\"\n\
SUBSYSTEM==\"net\", ATTR{address}==\"00:0c:29:00:00:02\", NAME:=\"lan0\"\n\
SUBSYSTEM==\"net\", ATTR{address}==\"00:0c:29:00:00:03\", NAME==\"match-only\"\n\
SUBSYSTEM==\"net\", ENV{NAME}=\"x\", ATTR{address}==\"not-a-mac\", NAME=\"bad\"\n\
SUBSYSTEM==\"net\", KERNEL==\"eth*\", NAME=\"no-mac\"\n";
        let pins = parse_udev_rules("/r", text);
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].name, "lan0");
        assert_eq!(pins[0].line, Some(2));
    }

    #[test]
    fn mac_only_configs_join_the_interface_their_mac_names() {
        let inv = scan(&[
            file(
                "/etc/network/interfaces",
                Format::Ifupdown,
                "iface ens192 inet dhcp\n",
            ),
            file(
                "/etc/udev/rules.d/70-persistent-net.rules",
                Format::UdevRules,
                FIXTURE_UDEV,
            ),
            file(
                "/etc/NetworkManager/system-connections/a.nmconnection",
                Format::NmKeyfile,
                "[connection]\ntype=ethernet\n[ethernet]\nmac-address=00:50:56:9a:12:34\n",
            ),
            file(
                "/etc/NetworkManager/system-connections/b.nmconnection",
                Format::NmKeyfile,
                "[connection]\ntype=ethernet\n[ethernet]\nmac-address=00:50:56:9a:00:00\n",
            ),
        ]);
        assert_eq!(inv.interfaces[0].files.len(), 2);
        assert_eq!(
            inv.mac_only,
            [(
                "00:50:56:9a:00:00".to_string(),
                "/etc/NetworkManager/system-connections/b.nmconnection".to_string()
            )]
        );
    }

    #[test]
    fn conflicting_macs_for_one_name_warn() {
        let inv = scan(&[
            file(
                "/a",
                Format::Ifcfg,
                "DEVICE=eth0\nHWADDR=00:50:56:00:00:01\n",
            ),
            file(
                "/b",
                Format::Ifcfg,
                "DEVICE=eth0\nHWADDR=00:50:56:00:00:02\n",
            ),
        ]);
        assert_eq!(inv.interfaces.len(), 1);
        assert_eq!(inv.interfaces[0].mac.as_deref(), Some("00:50:56:00:00:01"));
        assert!(
            inv.warnings[0].contains("00:50:56:00:00:02"),
            "{:?}",
            inv.warnings
        );
    }
}
