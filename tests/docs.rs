//! The man pages the binary writes render with the system's man (man-db + groff) without a
//! warning, and read like pages of this tool. No appliance, no guest: well under a second.

mod common;

use std::process::Command;

fn render(page: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("--warnings")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env_remove("MANPAGER")
        .env("PAGER", "cat")
        .output()
        .expect("man (package man-db; scripts/setup.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man -l {}: {stderr}", page.display());
    assert!(
        stderr.trim().is_empty(),
        "groff warned about {}: {stderr}",
        page.display()
    );
    plain(&String::from_utf8_lossy(&out.stdout))
}

/// grotty's overstrikes removed (`N\bN` bold, `_\bx` underline) and runs of blanks from
/// justification squeezed to one.
fn plain(text: &str) -> String {
    let mut chars: Vec<char> = Vec::new();
    for c in text.chars() {
        if c == '\u{8}' {
            chars.pop();
        } else {
            chars.push(c);
        }
    }
    let s: String = chars.into_iter().collect();
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn man_renders_the_written_pages() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("manpages")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    let fix = dir.path().join("h2k-guest-fix.1");
    assert!(
        listed.lines().any(|l| l == fix.to_str().unwrap()),
        "{listed}"
    );

    let text = render(&fix);
    assert!(text.contains("h2k-guest-fix(1)"), "{text}");
    assert!(text.contains("NAME"), "{text}");
    assert!(
        text.contains("h2k-guest-fix - Repair a guest and write a KVM-ready image"),
        "{text}"
    );
    assert!(text.contains("-m, --manifest <MANIFEST>"), "{text}");

    let top = render(&dir.path().join("h2k-guest.1"));
    assert!(top.contains("h2k-guest(1)"), "{top}");
    for sub in [
        "h2k-guest-fix(1)",
        "h2k-guest-daemon(1)",
        "h2k-guest-workflow(1)",
    ] {
        assert!(top.contains(sub), "the main page refers to {sub}: {top}");
    }
}
