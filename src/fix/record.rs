//! What a fix step records: its outcome and each guest file it changed, with the diff. The
//! job report embeds these as they are.

use serde::{Deserialize, Serialize};

/// One changed guest file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    /// Unified diff of the old and new text ("" for binary files such as an initramfs).
    pub diff: String,
    pub note: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FixStatus {
    Changed,
    Unchanged,
    Skipped,
}

impl FixStatus {
    /// The name the report uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FixStatus::Changed => "changed",
            FixStatus::Unchanged => "unchanged",
            FixStatus::Skipped => "skipped",
        }
    }
}

/// The outcome of one fix step (fstab, grub, initramfs, …).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixRecord {
    pub name: String,
    pub status: FixStatus,
    pub summary: String,
    pub files: Vec<FileChange>,
    pub seconds: f64,
    /// The network step's NICs: each configured interface and the MAC its NIC must have on
    /// KVM (what the libvirt domain gives it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicChoice>,
}

/// An interface the guest configures and the MAC its NIC must have on KVM; `mac` None: the
/// one virtio NIC, whatever its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicChoice {
    pub interface: String,
    pub mac: Option<String>,
}

/// A unified diff between two versions of a guest file.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_the_file_and_shows_the_change() {
        let d = unified_diff(
            "/etc/fstab",
            "/dev/sda1 / ext4 defaults 0 1\n",
            "UUID=abc / ext4 defaults 0 1\n",
        );
        assert!(d.contains("--- a/etc/fstab"), "{d}");
        assert!(d.contains("+++ b/etc/fstab"), "{d}");
        assert!(d.contains("-/dev/sda1 / ext4"), "{d}");
        assert!(d.contains("+UUID=abc / ext4"), "{d}");
    }

    #[test]
    fn identical_text_gives_an_empty_diff() {
        assert_eq!(unified_diff("/etc/x", "a\n", "a\n"), "");
    }

    #[test]
    fn status_names_match_serde() {
        for s in [FixStatus::Changed, FixStatus::Unchanged, FixStatus::Skipped] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
