//! The text h2k-guest writes: the `.link` files that keep a name, and the token-level edits
//! of configuration files (a name or a MAC replaced where it stands; every other byte kept).

/// OUIs VMware assigns to virtual NICs.
pub const VMWARE_OUIS: &[&str] = &["00:50:56", "00:0c:29", "00:05:69", "00:1c:14"];

/// Whether a MAC (normalized) is one VMware assigns.
pub fn is_vmware_mac(mac: &str) -> bool {
    let mac = mac.to_ascii_lowercase();
    VMWARE_OUIS.iter().any(|oui| mac.starts_with(oui))
}

/// `ens160`, `ens192`, `ens224`, `ens256`, … (their functions `ens161`, …, and Workstation's
/// `ens33`): names systemd derives from VMware's PCI slot numbers. QEMU's PCI slots stop at
/// 31, so no KVM NIC gets one.
pub fn is_vmware_slot_name(name: &str) -> bool {
    name.strip_prefix("ens")
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|slot| slot >= 32)
}

/// How a written `.link` recognizes the NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMatch {
    Mac(String),
    /// The one virtio NIC (used only when the mapping is unambiguous).
    VirtioDriver,
}

/// Where the `.link` that keeps `name` goes (10-: before the distribution's 99-default.link).
pub fn link_path(name: &str) -> String {
    format!("/etc/systemd/network/10-h2k-{name}.link")
}

/// Where the `.link` that gives `name` to the one virtio NIC goes, after [`link_path`]'s (only
/// the first `.link` that matches a NIC applies).
pub fn fallback_link_path(name: &str) -> String {
    format!("/etc/systemd/network/11-h2k-{name}-virtio.link")
}

/// A `.link` giving the NIC `matcher` recognizes the name `name`. The text depends only on
/// these two, so writing it again changes nothing.
pub fn render_link(matcher: &LinkMatch, name: &str) -> String {
    let match_line = match matcher {
        LinkMatch::Mac(mac) => format!("MACAddress={mac}"),
        LinkMatch::VirtioDriver => "Driver=virtio_net".to_string(),
    };
    format!(
        "# Written by h2k-guest: keeps the interface name this guest's network configuration uses.\n\
         [Match]\n{match_line}\n\n[Link]\nName={name}\n"
    )
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `text` with every whole-word `old` interface name replaced by `new` (`ens192.100` and
/// `ens192:1` count, `vens1920` does not); the number of replacements.
pub fn replace_name(text: &str, old: &str, new: &str) -> (String, usize) {
    replace_tokens(text, old, new, false, is_name_char)
}

/// `text` with every `old` MAC (any case) replaced by `new`, written in the case the file used.
pub fn replace_mac(text: &str, old: &str, new: &str) -> (String, usize) {
    replace_tokens(text, old, new, true, |c| c.is_ascii_hexdigit() || c == ':')
}

fn replace_tokens(
    text: &str,
    old: &str,
    new: &str,
    ignore_case: bool,
    word_char: impl Fn(char) -> bool,
) -> (String, usize) {
    if old.is_empty() {
        return (text.to_string(), 0);
    }
    let haystack = if ignore_case {
        text.to_ascii_lowercase()
    } else {
        text.to_string()
    };
    let needle = if ignore_case {
        old.to_ascii_lowercase()
    } else {
        old.to_string()
    };
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = haystack[from..].find(&needle) {
        let at = from + found;
        let end = at + needle.len();
        from = end;
        let before = text[..at].chars().next_back();
        let after = text[end..].chars().next();
        if before.is_some_and(&word_char) || after.is_some_and(&word_char) {
            continue;
        }
        let original = &text[at..end];
        out.push_str(&text[copied..at]);
        let upper = original.chars().any(|c| c.is_ascii_uppercase())
            && !original.chars().any(|c| c.is_ascii_lowercase());
        if ignore_case && upper {
            out.push_str(&new.to_ascii_uppercase());
        } else {
            out.push_str(new);
        }
        copied = end;
        count += 1;
    }
    out.push_str(&text[copied..]);
    (out, count)
}

/// udev rules text without the given (1-based) lines, and without the generator's
/// `# PCI device …` comment directly above each of them.
pub fn drop_lines(text: &str, lines: &[usize]) -> String {
    let all: Vec<&str> = text.split_inclusive('\n').collect();
    let mut keep = vec![true; all.len()];
    for &n in lines {
        let Some(i) = n.checked_sub(1).filter(|&i| i < all.len()) else {
            continue;
        };
        keep[i] = false;
        if i > 0 && all[i - 1].trim_start().starts_with("# PCI device") {
            keep[i - 1] = false;
        }
    }
    all.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(l, _)| *l)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_text_is_exact() {
        assert_eq!(
            render_link(&LinkMatch::Mac("52:54:00:12:34:56".into()), "ens192"),
            "# Written by h2k-guest: keeps the interface name this guest's network configuration uses.\n\
             [Match]\nMACAddress=52:54:00:12:34:56\n\n[Link]\nName=ens192\n"
        );
        let driver = render_link(&LinkMatch::VirtioDriver, "ens160");
        assert!(driver.contains("\n[Match]\nDriver=virtio_net\n\n[Link]\nName=ens160\n"));
        assert_eq!(
            link_path("ens192"),
            "/etc/systemd/network/10-h2k-ens192.link"
        );
    }

    #[test]
    fn names_are_replaced_as_whole_words() {
        let t = "auto ens192\niface ens192 inet dhcp\niface ens192.100 inet manual\n\
                 iface ens192:1 inet static\n# vens1920 ens1920 xens192\n";
        let (out, n) = replace_name(t, "ens192", "enp1s0");
        assert_eq!(n, 4);
        assert_eq!(
            out,
            "auto enp1s0\niface enp1s0 inet dhcp\niface enp1s0.100 inet manual\n\
             iface enp1s0:1 inet static\n# vens1920 ens1920 xens192\n"
        );
        assert_eq!(replace_name(&out, "ens192", "enp1s0").1, 0);
        assert_eq!(replace_name("x", "", "y"), ("x".to_string(), 0));
    }

    #[test]
    fn macs_are_replaced_in_any_case_keeping_the_file_style() {
        let t = "HWADDR=00:50:56:AA:BB:CC\nmac-address=00:50:56:aa:bb:cc\nx=00:50:56:aa:bb:cc:dd\n";
        let (out, n) = replace_mac(t, "00:50:56:aa:bb:cc", "52:54:00:01:02:03");
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "HWADDR=52:54:00:01:02:03\nmac-address=52:54:00:01:02:03\nx=00:50:56:aa:bb:cc:dd\n"
        );
        let (upper, _) = replace_mac(
            "HWADDR=00:50:56:AA:BB:CC\n",
            "00:50:56:aa:bb:cc",
            "52:54:00:ab:cd:ef",
        );
        assert_eq!(upper, "HWADDR=52:54:00:AB:CD:EF\n");
    }

    #[test]
    fn dropping_a_rule_takes_its_generator_comment() {
        let t = "# header\n\n# PCI device 0x15ad:0x07b0 (vmxnet3)\nSUBSYSTEM==\"net\", NAME=\"ens192\"\nother\n";
        assert_eq!(drop_lines(t, &[4]), "# header\n\nother\n");
        assert_eq!(drop_lines(t, &[0, 99]), t);
    }

    #[test]
    fn vmware_macs_and_slot_names() {
        assert!(is_vmware_mac("00:0C:29:AA:BB:CC"));
        assert!(is_vmware_mac("00:05:69:01:02:03"));
        assert!(!is_vmware_mac("52:54:00:01:02:03"));
        for n in [
            "ens160", "ens192", "ens224", "ens256", "ens161", "ens193", "ens33",
        ] {
            assert!(is_vmware_slot_name(n), "{n}");
        }
        for n in ["ens3", "ens31", "enp1s0", "eth0", "ens", "ens19x"] {
            assert!(!is_vmware_slot_name(n), "{n}");
        }
    }
}
