//! The Debian package on this machine: `scripts/build-deb.sh` packages the binary this test run
//! built, `dpkg -i` installs it with the real dpkg (its Depends must be satisfied by what
//! scripts/setup.sh installed), the installed files are used — `/usr/bin/h2k-guest --version`,
//! `man -w` and `man` of the pages, the bash completion, `systemd-analyze verify` of the
//! installed unit — and `dpkg --purge` removes it, leaving nothing behind. Root only (dpkg).
//! No appliance: the cost is the packaging (xz of the binary) and dpkg.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

const BIN: &str = "/usr/bin/h2k-guest";
const UNIT: &str = "/usr/lib/systemd/system/h2k-guest.service";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("MANWIDTH", "100")
        .env("PAGER", "cat")
        .env_remove("MANPAGER")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg_status() -> String {
    let out = run("dpkg-query", &["-W", "-f=${Status}", "h2k-guest"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Purges the package when the test ends, a failing one included.
struct Installed;
impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "h2k-guest"]);
    }
}

#[test]
fn the_deb_installs_its_files_runs_and_purges_cleanly() {
    assert!(
        !dpkg_status().starts_with("install"),
        "h2k-guest is already installed here ({}); this test installs and purges its own \
         build: run `dpkg --purge h2k-guest` first",
        dpkg_status()
    );
    assert!(!Path::new(BIN).exists(), "{BIN} exists outside the package");
    let deb = common::deb_package();

    let fields = ok(
        "dpkg-deb",
        &["-f", deb.to_str().unwrap(), "Package", "Depends"],
    );
    eprintln!("{fields}");
    for dep in [
        "libguestfs0 (>=",
        "libguestfs-tools",
        "qemu-utils",
        "qemu-system-x86",
        "ovmf",
        "linux-image-amd64",
    ] {
        assert!(fields.contains(dep), "Depends lacks {dep}: {fields}");
    }

    let t = Instant::now();
    let _purge = Installed;
    ok("dpkg", &["-i", deb.to_str().unwrap()]);
    eprintln!("dpkg -i: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(dpkg_status(), "install ok installed");

    // The installed binary is the one this run built.
    let version = ok(BIN, &["--version"]);
    assert_eq!(
        version,
        String::from_utf8(common::h2k(["--version"]).output.stdout).unwrap()
    );
    assert!(
        version.starts_with(&format!("h2k-guest {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // The man pages, found by man's own search path and readable.
    assert_eq!(
        ok("man", &["-w", "h2k-guest"]).trim(),
        "/usr/share/man/man1/h2k-guest.1.gz"
    );
    assert_eq!(
        ok("man", &["-w", "h2k-guest-fix"]).trim(),
        "/usr/share/man/man1/h2k-guest-fix.1.gz"
    );
    assert_eq!(
        ok("man", &["-w", "h2k-guest-workflow-submit"]).trim(),
        "/usr/share/man/man1/h2k-guest-workflow-submit.1.gz"
    );
    let page = ok("man", &["h2k-guest-fix"]);
    assert!(page.contains("--manifest"), "{page}");

    // The bash completion where bash-completion loads it from, completing fix's flags.
    let reply = ok(
        "bash",
        &[
            "--norc",
            "-c",
            "source /usr/share/bash-completion/completions/h2k-guest
             COMP_WORDS=(h2k-guest fix --man); COMP_CWORD=2
             _h2k__guest h2k-guest --man fix
             echo \"${COMPREPLY[*]}\"",
        ],
    );
    assert_eq!(reply.trim(), "--manifest");
    for f in [
        "/usr/share/zsh/vendor-completions/_h2k-guest",
        "/usr/share/fish/vendor_completions.d/h2k-guest.fish",
        "/usr/share/doc/h2k-guest/examples/daemon.yaml.example",
        "/usr/share/doc/h2k-guest/copyright",
    ] {
        assert!(Path::new(f).is_file(), "{f} not installed");
    }

    // The unit is installed, names the installed binary, verifies, and is not enabled.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/h2k-guest daemon"),
        "{unit}"
    );
    let out = run("systemd-analyze", &["verify", UNIT]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "verify: {text}"
    );
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/h2k-guest.service").exists());

    // Purge: every file gone, man no longer finds the page (the control of the checks above).
    let t = Instant::now();
    ok("dpkg", &["--purge", "h2k-guest"]);
    eprintln!("dpkg --purge: {:.1} s", t.elapsed().as_secs_f64());
    assert!(!Path::new(BIN).exists());
    assert!(!Path::new(UNIT).exists());
    assert!(!run("man", &["-w", "h2k-guest-fix"]).status.success());
    assert!(!Path::new("/usr/share/doc/h2k-guest").exists());
    let status = dpkg_status();
    assert!(
        status.is_empty() || status == "unknown ok not-installed",
        "dpkg still knows the package: {status}"
    );
}
