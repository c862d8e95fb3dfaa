//! SELinux labels for the files the probe writes into the guest's overlay.
//!
//! A file written through the appliance gets no `security.selinux` label; a guest that loads
//! its policy at boot then sees it as `unlabeled_t`, and in enforcing mode systemd may not
//! read the unit or run the script. So when the guest's `/etc/selinux/config` turns SELinux
//! on and its policy's `file_contexts` is there, the probe's files are labelled as the policy
//! says before the guest boots.
//!
//! How: the guest's own `setfiles`, run in the appliance chrooted into the guest (as the fixes
//! run the guest's dracut and grub-mkconfig). Not libguestfs's `setfiles`/`selinux_relabel`:
//! they run the appliance's `setfiles`, which the appliance has only when it was built with
//! policycoreutils (this host's has none: its supermin package list holds libselinux1 only),
//! and they would need a new binding. Not `setxattr` with a context from `matchpathcon`:
//! that re-does setfiles' lookup by hand through a deprecated tool. A guest with a policy
//! installed has `setfiles` (policycoreutils comes with every SELinux policy package), of the
//! same version as the policy it reads.

use crate::guestfs::Guestfs;

const CONFIG: &str = "/etc/selinux/config";
/// `/etc/selinux/config` is a few hundred bytes; a larger one is not read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// What `/etc/selinux/config` asks for at boot when SELinux is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SelinuxConfig {
    /// `SELINUX=enforcing` (else permissive).
    pub enforcing: bool,
    /// `SELINUXTYPE=`: the policy's directory under `/etc/selinux`.
    pub policy: String,
}

impl SelinuxConfig {
    /// Where the policy says which label a path gets.
    pub fn file_contexts(&self) -> String {
        format!("/etc/selinux/{}/contexts/files/file_contexts", self.policy)
    }
}

/// The config's `SELINUX=` and `SELINUXTYPE=` (the last of each counts, as for the shell that
/// the file's syntax borrows from). None when SELinux is disabled, the mode is unknown, or the
/// policy is missing or not a plain directory name.
pub(crate) fn parse_config(text: &str) -> Option<SelinuxConfig> {
    let mut mode = None;
    let mut policy = None;
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        match key.trim() {
            "SELINUX" => mode = Some(value.to_ascii_lowercase()),
            "SELINUXTYPE" => policy = Some(value.to_string()),
            _ => {}
        }
    }
    let enforcing = match mode.as_deref() {
        Some("enforcing") => true,
        Some("permissive") => false,
        _ => return None,
    };
    let policy = policy.filter(|p| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    })?;
    Some(SelinuxConfig { enforcing, policy })
}

/// Label `paths` (directories with what is below them) in the mounted guest when its SELinux
/// is on. Returns the policy used, None when there was nothing to do. An error only when the
/// guest enforces: permissive mode runs unlabelled files, so there a failure is a warning.
pub(crate) fn label_written_files(g: &Guestfs, paths: &[&str]) -> Result<Option<String>, String> {
    let readable = g.is_file(CONFIG).unwrap_or(false)
        && g.filesize(CONFIG).is_ok_and(|n| n <= MAX_CONFIG_BYTES);
    if !readable {
        return Ok(None);
    }
    let Some(config) = g.read_to_string(CONFIG).ok().and_then(|t| parse_config(&t)) else {
        return Ok(None);
    };
    let contexts = config.file_contexts();
    let outcome = if g.is_file(&contexts).unwrap_or(false) {
        // -F: the whole context (user and role too), as a relabel at boot would set it.
        let mut argv = vec!["setfiles", "-F", contexts.as_str()];
        argv.extend_from_slice(paths);
        g.command(&argv)
            .map(|_| Some(config.policy.clone()))
            .map_err(|e| format!("setfiles {contexts}: {}", e.message))
    } else {
        Err(format!("SELinux is on but {contexts} is missing"))
    };
    match outcome {
        Err(reason) if !config.enforcing => {
            log::warn!("the probe's files are not labelled ({reason}); the guest is permissive");
            Ok(None)
        }
        Err(reason) => Err(format!(
            "cannot label the probe's files for the guest's enforcing SELinux: {reason}"
        )),
        labelled => labelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(enforcing: bool, policy: &str) -> Option<SelinuxConfig> {
        Some(SelinuxConfig {
            enforcing,
            policy: policy.into(),
        })
    }

    #[test]
    fn the_shipped_configs_are_read() {
        // Fedora/RHEL's file, comments and all.
        let fedora = "# This file controls the state of SELinux on the system.\n\
                      # SELINUX= can take one of these three values:\n\
                      #     enforcing - SELinux security policy is enforced.\n\
                      SELINUX=enforcing\n\
                      # SELINUXTYPE= can take one of these three values:\n\
                      SELINUXTYPE=targeted\n";
        assert_eq!(parse_config(fedora), on(true, "targeted"));
        let parsed = parse_config(fedora).unwrap();
        assert_eq!(
            parsed.file_contexts(),
            "/etc/selinux/targeted/contexts/files/file_contexts"
        );
        // Debian's selinux-basics.
        assert_eq!(
            parse_config("SELINUX=permissive\nSELINUXTYPE=default\nSETLOCALDEFS=0\n"),
            on(false, "default")
        );
        assert_eq!(
            parse_config("  SELINUX = \"Enforcing\"\n\tSELINUXTYPE='mls'\n"),
            on(true, "mls")
        );
        // The last assignment counts.
        assert_eq!(
            parse_config("SELINUX=disabled\nSELINUXTYPE=targeted\nSELINUX=permissive\n"),
            on(false, "targeted")
        );
    }

    #[test]
    fn nothing_to_label_when_off_unknown_or_without_a_plain_policy() {
        for text in [
            "",
            "SELINUX=disabled\nSELINUXTYPE=targeted\n",
            "SELINUX=enforcing\n",
            "SELINUX=enforcing\nSELINUXTYPE=\n",
            "SELINUX=on\nSELINUXTYPE=targeted\n",
            "#SELINUX=enforcing\nSELINUXTYPE=targeted\n",
            "SELINUX=enforcing\nSELINUXTYPE=../../tmp\n",
            "SELINUX=enforcing\nSELINUXTYPE=..\n",
            "SELINUX=enforcing\nSELINUXTYPE=targeted mls\n",
            "\u{0}\u{ff}binary",
        ] {
            assert_eq!(parse_config(text), None, "{text:?}");
        }
    }
}
