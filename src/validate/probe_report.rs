//! The probe's report (pure): finding its JSON line in console bytes, and judging whether the
//! guest came up whole.

use super::*;

use serde::Deserialize;

/// What starts the probe's line on the console; nothing else a guest prints contains it.
pub const PROBE_PREFIX: &str = "H2K-PROBE ";

/// A console line longer than this is no probe line (the probe's is a few KiB).
const MAX_PROBE_LINE: usize = 1024 * 1024;

/// What counts as "whole", in the order the problems are listed (also in `--help`).
pub const WHOLE_MEANS: [&str; 9] = [
    "multi-user.target reached",
    "every --expect-iface interface present and up, with its address when one is given",
    "at least one non-loopback interface up with an IPv4 address, and a default route",
    "every /etc/fstab file system (not noauto) mounted",
    "every /etc/fstab swap (not noauto) active",
    "no failed unit",
    "`systemctl is-system-running` says running",
    "no boot stall on the serial console (the initramfs giving up on a resume or root device, a systemd job timing out on a device)",
    "with --expect-agent (or an agent installed by this run): the QEMU guest agent answers guest-sync, guest-info and guest-ping on org.qemu.guest_agent.0",
];

/// Console lines that mean the boot waited for something that never came: the guest still
/// comes up, tens of seconds late, which "reaches multi-user" alone does not show.
const STALL_MARKERS: [&str; 4] = [
    "Gave up waiting for suspend/resume device",
    "Gave up waiting for root file system device",
    "Timed out waiting for device",
    "Dependency failed for",
];

/// The stalls the serial console shows, one entry each (the console line, trimmed).
pub fn boot_stalls(console: &str) -> Vec<String> {
    let mut stalls: Vec<String> = Vec::new();
    // systemd colours its status lines: the escapes are not part of what it says.
    let console = super::console::clean_terminal(console);
    for line in console.lines() {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c.is_control());
        if let Some(m) = STALL_MARKERS.iter().find(|m| line.contains(**m)) {
            let at = line.find(m).unwrap_or(0);
            let text = format!(
                "boot stall: {}",
                line[at..].chars().take(120).collect::<String>()
            );
            if !stalls.contains(&text) {
                stalls.push(text);
            }
        }
    }
    stalls
}

/// The guest's own account of how it came up, as the probe script prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestReport {
    /// Required: an object without it is not the probe's.
    pub probe_version: u32,
    #[serde(default)]
    pub multi_user: bool,
    /// Monotonic seconds from kernel start to multi-user.target (systemd's timestamp).
    #[serde(default)]
    pub multi_user_seconds: Option<f64>,
    /// /proc/uptime when the probe ran.
    #[serde(default)]
    pub uptime_seconds: Option<f64>,
    /// `systemctl is-system-running` after waiting while it said starting.
    #[serde(default)]
    pub system_state: String,
    #[serde(default)]
    pub waited_seconds: u32,
    #[serde(default)]
    pub network_waited_seconds: u32,
    #[serde(default)]
    pub failed_units: Vec<String>,
    /// The last journal line of each of the first failed units: why it failed.
    #[serde(default)]
    pub failed_unit_logs: Vec<UnitLog>,
    #[serde(default)]
    pub mounts: Vec<FstabMount>,
    #[serde(default)]
    pub swaps: Vec<FstabSwap>,
    /// /proc/swaps.
    #[serde(default)]
    pub active_swaps: Vec<String>,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub default_route: Option<Route>,
    #[serde(default)]
    pub default_route6: Option<Route>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub hostname: String,
    /// PRETTY_NAME from /etc/os-release.
    #[serde(default)]
    pub os: String,
    /// systemd's state of qemu-guest-agent.service: `not-found`, `active`, `inactive`, …
    /// (empty without systemctl, or from an older probe).
    #[serde(default)]
    pub agent_unit: String,
    /// Tools the probe looked for and did not find (their checks are then best effort).
    #[serde(default)]
    pub missing_tools: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitLog {
    pub unit: String,
    #[serde(default)]
    pub last_line: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FstabMount {
    pub spec: String,
    pub mountpoint: String,
    #[serde(default)]
    pub fstype: String,
    #[serde(default)]
    pub options: String,
    pub mounted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FstabSwap {
    pub spec: String,
    /// The device (or file) the spec resolved to; empty when it did not resolve.
    #[serde(default)]
    pub device: String,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// /sys/class/net/NAME/operstate: up, down, unknown, …
    #[serde(default)]
    pub operstate: String,
    /// IFF_UP.
    #[serde(default)]
    pub admin_up: bool,
    #[serde(default)]
    pub driver: String,
    /// ADDR/PREFIX.
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub ipv6: Vec<String>,
}

impl Interface {
    /// Up: the kernel says so, or (drivers without carrier reporting) it is administratively
    /// up with an unknown state.
    pub fn is_up(&self) -> bool {
        self.operstate == "up" || (self.operstate == "unknown" && self.admin_up)
    }

    pub fn is_loopback(&self) -> bool {
        self.name == "lo"
    }

    fn has_address(&self, want: &str) -> bool {
        let addresses = self.ipv4.iter().chain(&self.ipv6);
        if want.contains('/') {
            addresses.into_iter().any(|a| a == want)
        } else {
            addresses
                .into_iter()
                .any(|a| a.split('/').next() == Some(want))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    #[serde(default)]
    pub via: String,
    #[serde(default)]
    pub dev: String,
}

/// Defined with the plan, which carries the manifest's `validate.expect_ifaces`.
pub use crate::plan::ExpectIface;

/// `--mac`: six colon-separated hex bytes, not multicast (QEMU refuses those for a NIC).
pub fn parse_mac(s: &str) -> Result<String, String> {
    let bytes: Vec<&str> = s.split(':').collect();
    let hex = bytes.len() == 6
        && bytes
            .iter()
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
    if !hex {
        return Err(format!("{s:?} is not a MAC address (XX:XX:XX:XX:XX:XX)"));
    }
    if u8::from_str_radix(bytes[0], 16).is_ok_and(|b| b & 1 == 1) {
        return Err(format!(
            "{s:?} is a multicast address (odd first byte); a NIC needs a unicast one"
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// Finds the probe's line, `H2K-PROBE <bytes> {json}`, in the serial console as it comes.
/// A getty or the kernel may cut through a line, even inside a JSON string where the result
/// would still parse: the byte count makes such a copy fail, and the first copy (the probe
/// writes it more than once) whose count and JSON both check out wins. The search works on
/// the raw bytes, so terminal escapes around the line do not matter; escapes inside it can
/// only come from something cutting through it.
#[derive(Debug, Default)]
pub struct ProbeScanner {
    partial: Vec<u8>,
    found: Option<GuestReport>,
    /// Lines with the prefix that did not check out (cut, interleaved, truncated).
    rejected: usize,
}

impl ProbeScanner {
    pub fn new() -> ProbeScanner {
        ProbeScanner::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.found.is_some() {
            return;
        }
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.scan_line(&line[..end]);
            if self.found.is_some() {
                self.partial.clear();
                return;
            }
        }
        if self.partial.len() > MAX_PROBE_LINE {
            self.partial.clear();
        }
    }

    fn scan_line(&mut self, line: &[u8]) {
        let prefix = PROBE_PREFIX.as_bytes();
        let mut from = 0;
        while let Some(at) = line[from..].windows(prefix.len()).position(|w| w == prefix) {
            from += at + prefix.len();
            match parse_counted(&line[from..]) {
                Some(report) => {
                    self.found = Some(report);
                    return;
                }
                None => self.rejected += 1,
            }
        }
    }

    /// The report, once a line parsed (taken: later calls return None).
    pub fn take(&mut self) -> Option<GuestReport> {
        self.found.take()
    }

    pub fn rejected(&self) -> usize {
        self.rejected
    }
}

/// `<bytes> {json}…`: exactly that many bytes of JSON after the count and a space.
fn parse_counted(rest: &[u8]) -> Option<GuestReport> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 7 || rest.get(digits) != Some(&b' ') {
        return None;
    }
    let len: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let body = rest.get(digits + 1..digits + 1 + len)?;
    serde_json::from_str(&String::from_utf8_lossy(body)).ok()
}

/// The probe's line for a JSON text (what the script prints; for tests and tools).
pub fn probe_line(json: &str) -> String {
    format!("{PROBE_PREFIX}{} {json}", json.len())
}

/// The first probe report in a whole console capture.
pub fn find_probe_report(console: &[u8]) -> Option<GuestReport> {
    let mut scanner = ProbeScanner::new();
    scanner.push(console);
    scanner.push(b"\n");
    scanner.take()
}

/// What keeps the guest from being whole (empty: whole), in the order of [`WHOLE_MEANS`].
pub fn whole_problems(r: &GuestReport, expect: &[ExpectIface]) -> Vec<String> {
    let mut problems = Vec::new();
    if !r.multi_user {
        problems.push("multi-user.target not reached".to_string());
    }
    for want in expect {
        let Some(iface) = r.interfaces.iter().find(|i| i.name == want.name) else {
            let others: Vec<&str> = r
                .interfaces
                .iter()
                .filter(|i| !i.is_loopback())
                .map(|i| i.name.as_str())
                .collect();
            problems.push(format!(
                "interface {} missing (the guest has {})",
                want.name,
                if others.is_empty() {
                    "no other".to_string()
                } else {
                    others.join(", ")
                }
            ));
            continue;
        };
        if !iface.is_up() {
            problems.push(format!(
                "interface {} is {}",
                iface.name,
                if iface.operstate.is_empty() {
                    "not up"
                } else {
                    &iface.operstate
                }
            ));
        }
        if let Some(addr) = want.address.as_deref().filter(|a| !iface.has_address(a)) {
            let has: Vec<&str> = iface
                .ipv4
                .iter()
                .chain(&iface.ipv6)
                .map(String::as_str)
                .collect();
            problems.push(format!(
                "interface {} lacks {addr} (has {})",
                iface.name,
                if has.is_empty() {
                    "no address".to_string()
                } else {
                    has.join(", ")
                }
            ));
        }
    }
    let networked = r
        .interfaces
        .iter()
        .any(|i| !i.is_loopback() && i.is_up() && !i.ipv4.is_empty());
    if !networked {
        problems.push("no interface up with an IPv4 address".to_string());
    }
    if r.default_route.is_none() {
        problems.push("no default route".to_string());
    }
    let unmounted: Vec<String> = r
        .mounts
        .iter()
        .filter(|m| !m.mounted)
        .map(|m| format!("{} ({})", m.mountpoint, m.spec))
        .collect();
    if !unmounted.is_empty() {
        problems.push(format!("not mounted: {}", unmounted.join(", ")));
    }
    let inactive: Vec<&str> = r
        .swaps
        .iter()
        .filter(|s| !s.active)
        .map(|s| s.spec.as_str())
        .collect();
    if !inactive.is_empty() {
        problems.push(format!("swap not active: {}", inactive.join(", ")));
    }
    if !r.failed_units.is_empty() {
        let why: Vec<String> = r
            .failed_unit_logs
            .iter()
            .filter(|l| !l.last_line.trim().is_empty())
            .map(|l| format!("{}: {}", l.unit, l.last_line.trim()))
            .collect();
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join("; "))
        };
        problems.push(format!("failed units: {}{why}", r.failed_units.join(", ")));
    }
    // "degraded" is what failed units make it; say it only when nothing above explains it.
    let explained = r.system_state == "degraded" && !r.failed_units.is_empty();
    if r.system_state != "running" && !explained {
        problems.push(match r.system_state.as_str() {
            "starting" | "initializing" => format!(
                "the system was still {} after {} s",
                r.system_state, r.waited_seconds
            ),
            "" => "systemctl is-system-running said nothing".to_string(),
            state => format!("systemctl is-system-running: {state}"),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_stalls_are_found_once_each_and_ordinary_consoles_have_none() {
        let console = "Begin: Running /scripts/local-premount ... Gave up waiting for suspend/resume device\r\n\
            [  OK  ] Reached target multi-user.target\n\
            [ TIME ] Timed out waiting for device dev-sdb1.device - /dev/sdb1.\n\
            [DEPEND] Dependency failed for srv.mount - /srv.\n\
            Gave up waiting for suspend/resume device\n";
        let s = boot_stalls(console);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].contains("resume device"));
        assert!(s[1].contains("dev-sdb1.device"));
        assert!(s[2].contains("srv.mount"));
        assert!(boot_stalls("[  OK  ] Started ssh.service\nh2k login: \n").is_empty());
        // As systemd colours it on the serial console.
        let coloured = "[\x1b[0;1;38:5:185mDEPEND\x1b[0m] Dependency failed for \x1b[0;1;39msystemd-netw…\x1b[0mistent Storage in systemd-networkd.\r\n";
        assert_eq!(
            boot_stalls(coloured),
            ["boot stall: Dependency failed for systemd-netw…istent Storage in systemd-networkd."]
        );
        assert!(boot_stalls("").is_empty());
    }

    const REPORT: &str = r#"{"probe_version":1,"multi_user":true,"multi_user_seconds":21.5,"uptime_seconds":23.1,"system_state":"running","waited_seconds":0,"network_waited_seconds":0,"failed_units":[],"mounts":[{"spec":"UUID=0b7f","mountpoint":"/","fstype":"ext4","options":"errors=remount-ro","mounted":true},{"spec":"/dev/sdb1","mountpoint":"/srv","fstype":"ext4","options":"defaults","mounted":true}],"swaps":[{"spec":"UUID=77aa","device":"/dev/vda5","active":true}],"active_swaps":["/dev/vda5"],"interfaces":[{"name":"lo","mac":"00:00:00:00:00:00","operstate":"unknown","admin_up":true,"driver":"","ipv4":["127.0.0.1/8"],"ipv6":["::1/128"]},{"name":"ens192","mac":"52:54:00:12:34:56","operstate":"up","admin_up":true,"driver":"virtio_net","ipv4":["10.0.2.15/24"],"ipv6":["fec0::5054:ff:fe12:3456/64"]}],"default_route":{"via":"10.0.2.2","dev":"ens192"},"default_route6":null,"cmdline":"BOOT_IMAGE=/vmlinuz root=UUID=0b7f ro console=ttyS0,115200n8 quote=\"a\\b\"","hostname":"h2k-bios","missing_tools":[]}"#;

    fn report() -> GuestReport {
        serde_json::from_str(REPORT).unwrap()
    }

    fn scan(chunks: &[&[u8]]) -> Option<GuestReport> {
        let mut s = ProbeScanner::new();
        for c in chunks {
            s.push(c);
        }
        s.take()
    }

    #[test]
    fn finds_the_line_in_a_noisy_console() {
        let console = format!(
            "\x1b[0;32m  OK  \x1b[0m] Reached target multi-user.target.\r\n\
             Starting h2k-probe.service - h2k-guest boot probe...\r\n\
             \r\n{}\r\n\r\nDebian GNU/Linux 12 h2k-bios ttyS0\r\n\r\nh2k-bios login: ",
            probe_line(REPORT)
        );
        let r = scan(&[console.as_bytes()]).expect("found");
        assert_eq!(r, report());
        assert_eq!(r.cmdline.rsplit(' ').next(), Some("quote=\"a\\b\""));
        assert_eq!(find_probe_report(console.as_bytes()), Some(report()));
    }

    #[test]
    fn a_line_split_across_chunks_and_a_prompt_before_it() {
        let line = format!("h2k-bios login: {}\r\n", probe_line(REPORT));
        let bytes = line.as_bytes();
        let mut s = ProbeScanner::new();
        for chunk in bytes.chunks(7) {
            assert!(s.take().is_none());
            s.push(chunk);
        }
        assert_eq!(s.take(), Some(report()));
        assert_eq!(s.take(), None, "taken once");
    }

    #[test]
    fn interleaved_getty_output_spoils_one_copy_the_next_one_counts() {
        let (head, tail) = REPORT.split_at(200);
        let len = REPORT.len();
        let console = format!(
            "\r\nH2K-PROBE {len} {head}\r\nDebian GNU/Linux 12 h2k-bios ttyS0\r\n\r\nh2k-bios login: {tail}\r\n\
             \r\n{}\r\n",
            probe_line(REPORT)
        );
        let mut s = ProbeScanner::new();
        s.push(console.as_bytes());
        assert_eq!(s.rejected(), 1);
        assert_eq!(s.take(), Some(report()));
        // A kernel message cut into a JSON string without a newline: it would still parse,
        // the byte count rejects it.
        let (head, tail) = REPORT.split_at(300);
        let cut = format!("H2K-PROBE {len} {head}[   31.2] random: crng init done{tail}\n");
        let json_start = cut.find('{').unwrap();
        assert!(serde_json::from_str::<GuestReport>(&cut[json_start..cut.len() - 1]).is_ok());
        assert_eq!(scan(&[cut.as_bytes()]), None);
        let dropped = format!("H2K-PROBE {len} {}{}\n", &REPORT[..300], &REPORT[310..]);
        assert_eq!(scan(&[dropped.as_bytes()]), None);
    }

    #[test]
    fn truncated_unterminated_and_foreign_lines_are_not_reports() {
        let truncated = format!("{}\r\n", &probe_line(REPORT)[..REPORT.len() - 40]);
        assert_eq!(scan(&[truncated.as_bytes()]), None);
        // Complete JSON but no newline yet: wait for the line to end.
        let unterminated = probe_line(REPORT);
        let mut s = ProbeScanner::new();
        s.push(unterminated.as_bytes());
        assert_eq!(s.take(), None);
        s.push(b"\n");
        assert_eq!(s.take(), Some(report()));
        // Not the probe's object, or no prefix.
        assert_eq!(scan(&[b"H2K-PROBE 7 {\"x\":1}\n"]), None);
        assert_eq!(scan(&[format!("{REPORT}\n").as_bytes()]), None);
        let uncounted = format!("H2K-PROBE {REPORT}\n");
        assert_eq!(scan(&[uncounted.as_bytes()]), None);
        assert_eq!(
            scan(&[
                b"H2K-PROBE\n",
                b"H2K-PROBE \xff\xfe{\n",
                b"H2K-PROBE 99999999 {}\n"
            ]),
            None
        );
        // Trailing bytes after the object (a getty prompt on the same line) are ignored.
        let trailing = format!("{}h2k-bios login: \r\n", probe_line(REPORT));
        assert_eq!(scan(&[trailing.as_bytes()]), Some(report()));
    }

    #[test]
    fn escapes_in_the_console_and_in_the_json() {
        // Colour codes around the line, \u escapes for control characters inside it.
        let line = REPORT.replace(
            "\"hostname\":\"h2k-bios\"",
            "\"hostname\":\"a\\u001bb\\tc\"",
        );
        let console = format!("\x1b[1m\x1b[37m{}\x1b[0m\r\n", probe_line(&line));
        let r = scan(&[console.as_bytes()]).expect("found");
        assert_eq!(r.hostname, "a\u{1b}b\tc");
        // A minimal report: every field but the version has a default.
        let r = scan(&[b"H2K-PROBE 19 {\"probe_version\":1}\n"]).unwrap();
        assert!(!r.multi_user && r.interfaces.is_empty() && r.default_route.is_none());
    }

    #[test]
    fn an_overlong_line_is_dropped_not_kept() {
        let mut s = ProbeScanner::new();
        s.push(b"H2K-PROBE {");
        s.push(&vec![b'x'; MAX_PROBE_LINE + 1]);
        assert!(s.partial.is_empty());
        s.push(format!("\n{}\n", probe_line(REPORT)).as_bytes());
        assert_eq!(s.take(), Some(report()));
    }

    fn expect(s: &str) -> ExpectIface {
        s.parse().unwrap()
    }

    #[test]
    fn a_healthy_guest_is_whole() {
        assert_eq!(whole_problems(&report(), &[]), Vec::<String>::new());
        let wants = [expect("ens192=10.0.2.15/24"), expect("ens192=10.0.2.15")];
        assert_eq!(whole_problems(&report(), &wants), Vec::<String>::new());
        // An "unknown" operstate that is administratively up counts as up.
        let mut r = report();
        r.interfaces[1].operstate = "unknown".into();
        assert!(whole_problems(&r, &[]).is_empty());
    }

    #[test]
    fn each_missing_piece_is_named() {
        let mut r = report();
        r.interfaces.retain(|i| i.name != "ens192");
        r.interfaces.push(Interface {
            name: "enp1s0".into(),
            mac: "52:54:00:12:34:56".into(),
            operstate: "down".into(),
            admin_up: false,
            driver: "virtio_net".into(),
            ipv4: vec![],
            ipv6: vec![],
        });
        r.default_route = None;
        r.failed_units = vec!["networking.service".into()];
        r.system_state = "degraded".into();
        let p = whole_problems(&r, &[expect("ens192")]);
        assert_eq!(
            p,
            vec![
                "interface ens192 missing (the guest has enp1s0)",
                "no interface up with an IPv4 address",
                "no default route",
                "failed units: networking.service",
            ]
        );
        // The journal's reason travels with the unit; a blank line adds nothing.
        r.failed_unit_logs = vec![
            UnitLog {
                unit: "networking.service".into(),
                last_line: "networking.service: Main process exited, code=exited, status=200/CHDIR"
                    .into(),
            },
            UnitLog {
                unit: "dbus.socket".into(),
                last_line: " ".into(),
            },
        ];
        let p = whole_problems(&r, &[expect("ens192")]);
        assert_eq!(
            p[3],
            "failed units: networking.service (networking.service: networking.service: Main process exited, code=exited, status=200/CHDIR)"
        );

        let mut r = report();
        r.multi_user = false;
        r.mounts[1].mounted = false;
        r.swaps[0].active = false;
        r.system_state = "starting".into();
        r.waited_seconds = 90;
        let p = whole_problems(&r, &[expect("ens192=10.0.2.99/24"), expect("lo")]);
        assert_eq!(
            p,
            vec![
                "multi-user.target not reached",
                "interface ens192 lacks 10.0.2.99/24 (has 10.0.2.15/24, fec0::5054:ff:fe12:3456/64)",
                "not mounted: /srv (/dev/sdb1)",
                "swap not active: UUID=77aa",
                "the system was still starting after 90 s",
            ]
        );

        // Degraded without a failed unit listed, an interface that is down.
        let mut r = report();
        r.system_state = "degraded".into();
        r.interfaces[1].operstate = "down".into();
        let p = whole_problems(&r, &[expect("ens192")]);
        assert_eq!(
            p,
            vec![
                "interface ens192 is down",
                "no interface up with an IPv4 address",
                "systemctl is-system-running: degraded",
            ]
        );
        // Loopback alone is no network; an IPv6-only interface is not enough either.
        let mut r = report();
        r.interfaces[1].ipv4.clear();
        assert_eq!(
            whole_problems(&r, &[]),
            vec!["no interface up with an IPv4 address"]
        );
        let mut r = report();
        r.system_state.clear();
        assert_eq!(
            whole_problems(&r, &[]),
            vec!["systemctl is-system-running said nothing"]
        );
    }

    #[test]
    fn parses_expect_iface_and_mac() {
        assert_eq!(
            expect("ens192"),
            ExpectIface {
                name: "ens192".into(),
                address: None
            }
        );
        assert_eq!(
            expect("eth0=fd00::2/64").address.as_deref(),
            Some("fd00::2/64")
        );
        for bad in [
            "",
            "=10.0.2.15",
            "a/b",
            "ens192=10.0.2",
            "ens192=10.0.2.15/xx",
        ] {
            assert!(bad.parse::<ExpectIface>().is_err(), "{bad}");
        }
        assert!("averyveryverylongname".parse::<ExpectIface>().is_err());
        assert_eq!(parse_mac("00:50:56:AB:cd:ef").unwrap(), "00:50:56:ab:cd:ef");
        assert!(parse_mac("00:50:56:ab:cd").is_err());
        assert!(parse_mac("00-50-56-ab-cd-ef").is_err());
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
    }
}
