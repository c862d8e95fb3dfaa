//! `h2k-guest completions SHELL` and `h2k-guest manpages DIR`: shell completion scripts and
//! man pages generated from the clap definitions, for packagers (`scripts/build-deb.sh` puts
//! them into the .deb). Nothing here touches a disk image.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Directory the pages are written to (created when missing; existing pages replaced).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The completion script for `shell`, as bytes (generated in memory: clap_complete panics on
/// a write error, and a closed stdout must stay a quiet exit).
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "h2k-guest", &mut buf);
    if shell == Shell::Bash {
        buf = fix_bash_case_labels(&buf);
    }
    buf
}

/// clap_complete's bash script (4.6.12) spells the state of a subcommand of a hyphenated
/// binary two ways: the word loop sets `h2k__guest__subcmd__fix`, the case arms match
/// `h2k__subcmd__guest__subcmd__fix`, so no subcommand's options ever complete
/// (clap-rs/clap#6421, open). The arms are respelled the way the loop spells them.
fn fix_bash_case_labels(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("h2k__subcmd__guest__subcmd__", "h2k__guest__subcmd__")
        .into_bytes()
}

pub fn completions(args: &CompletionsArgs) -> Result<()> {
    std::io::stdout()
        .lock()
        .write_all(&completion_script(args.shell))?;
    Ok(())
}

pub fn manpages(args: &ManpagesArgs) -> Result<()> {
    for page in write_manpages(&args.dir)? {
        outln!("{}", page.display());
    }
    Ok(())
}

/// Writes `h2k-guest.1` and one page per subcommand, nested ones included
/// (`h2k-guest-workflow-submit.1`), into `dir`; returns the files written, parents first.
pub fn write_manpages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    // build() gives every subcommand its display name (h2k-guest-workflow-submit), its bin
    // name for the synopsis (h2k-guest workflow submit) and the global flags.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    write_tree(&root, dir, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("h2k-guest {}", h2k_guest::version::TOOL))
        .manual("h2k-guest manual");
    let path = dir.join(man.get_filename());
    let mut text = Vec::new();
    man.render(&mut text)?;
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand path, as the page name it should get (h2k-guest-workflow-submit).
    fn page_names(cmd: &Command, prefix: &str, out: &mut Vec<String>) {
        out.push(format!("{prefix}.1"));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() != "help" {
                page_names(sub, &format!("{prefix}-{}", sub.get_name()), out);
            }
        }
    }

    #[test]
    fn every_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_manpages(dir.path()).unwrap();
        let mut expected = Vec::new();
        page_names(&Cli::command(), "h2k-guest", &mut expected);
        for name in [
            "h2k-guest.1",
            "h2k-guest-fix.1",
            "h2k-guest-daemon.1",
            "h2k-guest-workflow-submit.1",
            "h2k-guest-manifest-validate.1",
            "h2k-guest-completions.1",
        ] {
            assert!(expected.contains(&name.to_string()), "{name} not a command");
        }
        let mut got: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        let mut on_disk: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, expected);
    }

    #[test]
    fn a_subcommand_page_has_its_own_title_synopsis_and_the_global_flags() {
        let dir = tempfile::tempdir().unwrap();
        write_manpages(dir.path()).unwrap();
        let fix = std::fs::read_to_string(dir.path().join("h2k-guest-fix.1")).unwrap();
        assert!(fix.contains("\n.TH h2k-guest-fix 1 "), "{}", &fix[..120]);
        assert!(
            fix.contains("h2k\\-guest fix"),
            "synopsis names the command"
        );
        assert!(fix.contains("\\-\\-manifest"));
        assert!(
            fix.contains("\\-\\-accel"),
            "global flags are on every page"
        );
        let submit =
            std::fs::read_to_string(dir.path().join("h2k-guest-workflow-submit.1")).unwrap();
        assert!(submit.contains("h2k\\-guest workflow submit"));
    }

    /// What bash offers for the command line `words` (the last word is being completed), with
    /// the script sourced into a real bash and its completion function called as bash would.
    fn bash_complete(script: &[u8], words: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h2k-guest.bash");
        std::fs::write(&file, script).unwrap();
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'\n\
             COMP_WORDS=({})\n\
             COMP_CWORD={}\n\
             _h2k__guest h2k-guest '{}' '{}'\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            file.display(),
            quoted.join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn bash_completes_fix_and_its_manifest_flag() {
        let bash = completion_script(Shell::Bash);
        let text = String::from_utf8(bash.clone()).unwrap();
        assert!(
            text.contains("complete -F _h2k__guest"),
            "registers the function"
        );
        assert_eq!(bash_complete(&bash, &["h2k-guest", "fi"]), ["fix"]);
        let opts = bash_complete(&bash, &["h2k-guest", "fix", "--man"]);
        assert_eq!(opts, ["--manifest"]);
        // Nested subcommands too, and only their own flags.
        let submit = bash_complete(&bash, &["h2k-guest", "workflow", "submit", "--"]);
        assert!(submit.contains(&"--dir".to_string()), "{submit:?}");
        assert!(!submit.contains(&"--manifest".to_string()), "{submit:?}");
    }

    #[test]
    fn clap_completes_no_subcommand_flag_without_the_label_fix() {
        // The control: if this starts failing, clap_complete fixed #6421 and the respelling
        // can go.
        let mut raw = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "h2k-guest", &mut raw);
        assert!(bash_complete(&raw, &["h2k-guest", "fix", "--man"]).is_empty());
    }

    #[test]
    fn every_shell_gets_a_script() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let s = String::from_utf8(completion_script(shell)).unwrap();
            assert!(s.contains("manifest"), "{shell}: no --manifest");
            assert!(s.contains("workflow"), "{shell}: no workflow");
        }
    }
}
