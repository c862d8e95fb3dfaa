//! Record what this binary was built against, so `--version` and every report can name it:
//! the libguestfs version (passed up from guestfs-sys's pkg-config probe) and the git commit.

use std::process::Command;

fn main() {
    let libguestfs = std::env::var("DEP_GUESTFS_VERSION").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=H2K_LIBGUESTFS_VERSION={libguestfs}");

    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let commit = if dirty && commit != "unknown" {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=H2K_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
