//! Hostile sources must be refused in LOAD, by the real binary, fast, with one line naming
//! the file and the offending entry, and without touching the source. No appliance is launched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "setup failed: {script}");
}

fn sha(p: &Path) -> Option<String> {
    // Only regular files: reading a FIFO case would block the test itself.
    std::fs::symlink_metadata(p).ok().filter(|m| m.is_file())?;
    std::fs::read(p)
        .ok()
        .map(|b| format!("{:x}", Sha256::digest(b)))
}

const QCOW: &str = "qemu-img create -q -f qcow2 -u";
const FLAT: &str = "printf '# Disk DescriptorFile\\nversion=1\\nCID=fffffffe\\nparentCID=ffffffff\\ncreateType=\"monolithicFlat\"\\nRW 2048 FLAT \"%s\" 0\\n'";

/// (source name, setup script, words the stderr line must contain)
fn corpus() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("shadow.qcow2", format!("{QCOW} -F raw -b /etc/shadow shadow.qcow2 10M"), "/etc/shadow"),
        ("passwd.qcow2", format!("{QCOW} -F raw -b /etc/passwd passwd.qcow2 10M"), "outside the source's directory"),
        ("dotdot.qcow2", format!("{QCOW} -F raw -b ../../../../etc/passwd dotdot.qcow2 10M"), "../../../../etc/passwd"),
        ("sym.qcow2", format!("ln -s /etc/passwd l.img && {QCOW} -F raw -b l.img sym.qcow2 10M"), "l.img"),
        ("json.qcow2", format!("{QCOW} -F raw -b 'json:{{\"file\":{{\"driver\":\"file\",\"filename\":\"/etc/passwd\"}}}}' json.qcow2 10M"), "json:"),
        ("nbd.qcow2", format!("{QCOW} -F raw -b nbd://127.0.0.1:9/x nbd.qcow2 10M"), "names a protocol"),
        ("http.qcow2", format!("{QCOW} -F raw -b http://127.0.0.1:9/x http.qcow2 10M"), "names a protocol"),
        ("file.qcow2", format!("{QCOW} -F raw -b file:/etc/passwd file.qcow2 10M"), "names a protocol"),
        ("missing.qcow2", format!("{QCOW} -F raw -b nothere.img missing.qcow2 10M"), "nothere.img"),
        ("ext-abs.vmdk", format!("{FLAT} /etc/passwd > ext-abs.vmdk"), "extent \"/etc/passwd\""),
        ("ext-rel.vmdk", format!("{FLAT} ../../etc/passwd > ext-rel.vmdk"), "../../etc/passwd"),
        ("ext-sym.vmdk", format!("ln -s /etc/passwd e.img && {FLAT} e.img > ext-sym.vmdk"), "e.img"),
        ("ext-nbd.vmdk", format!("{FLAT} nbd://127.0.0.1:9 > ext-nbd.vmdk"), "names a protocol"),
        ("diff.vmdk", "printf '# Disk DescriptorFile\\nparentFileNameHint=\"/etc/passwd\"\\n' > diff.vmdk".into(), "differencing"),
        ("fifo", "mkfifo fifo".into(), "FIFO"),
        ("dir", "mkdir dir".into(), "directory"),
        ("trunc.qcow2", "printf 'QFI\\373\\0\\0\\0\\3' > trunc.qcow2".into(), "truncated"),
        ("datafile.qcow2", "qemu-img create -q -f qcow2 -o data_file=d.raw datafile.qcow2 10M".into(), "external data file"),
        ("long.qcow2", format!("qemu-img create -q -f raw c0.img 1M && for i in $(seq 1 17); do {QCOW} -F $([ $i = 1 ] && echo raw || echo qcow2) -b c$((i-1)).$([ $i = 1 ] && echo img || echo qcow2) c$i.qcow2 1M; done && ln c17.qcow2 long.qcow2"), "long.qcow2"),
        ("vhd-diff.vhd", "qemu-img create -q -f vpc base.vhd 10M && python3 -c \"import sys;b=bytearray(open('base.vhd','rb').read());f=len(b)-512;b[f+60:f+64]=(4).to_bytes(4,'big');open('vhd-diff.vhd','wb').write(b)\"".into(), "differencing"),
        ("sock", "python3 -c \"import socket;s=socket.socket(socket.AF_UNIX);s.bind('sock')\"".into(), "socket"),
    ]
}

#[test]
fn hostile_sources_are_refused_in_load() {
    let bin = env!("CARGO_BIN_EXE_h2k-guest");
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("a/b/c/d");
    std::fs::create_dir_all(&base).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    for (name, script, expect) in corpus() {
        sh(&base, &script);
        cases.push((base.join(name), expect));
    }
    cases.push((PathBuf::from("/dev/zero"), "character device"));
    cases.push((PathBuf::from("/proc/self/mem"), "mem"));
    for (src, expect) in cases {
        let before = sha(&src);
        let started = Instant::now();
        let out = Command::new(bin)
            .arg("inspect")
            .arg(&src)
            .env("H2K_ACCEL", "tcg")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: accepted", src.display());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}: too slow",
            src.display()
        );
        let line = stderr.lines().last().unwrap_or_default();
        assert!(
            line.contains(expect),
            "{}: {expect:?} not in {stderr}",
            src.display()
        );
        let fname = src.file_name().unwrap().to_string_lossy();
        assert!(line.contains(&*fname), "{}: line {line:?}", src.display());
        assert_eq!(sha(&src), before, "{}: source changed", src.display());
    }
}

#[test]
fn a_backing_file_in_the_same_directory_passes_load() {
    let tmp = tempfile::tempdir().unwrap();
    sh(
        tmp.path(),
        "qemu-img create -q -f raw base.img 10M && qemu-img create -q -f qcow2 -F raw -b base.img top.qcow2",
    );
    let src = h2k_guest::load::Source::File(tmp.path().join("top.qcow2"));
    let info = h2k_guest::load::probe(&src, None).unwrap();
    assert_eq!(info.chain.len(), 2);
    // Trusted: the policy is lifted even for a backing outside the directory.
    sh(
        tmp.path(),
        "qemu-img create -q -f qcow2 -u -F raw -b /etc/hostname out.qcow2 10M",
    );
    let src = h2k_guest::load::Source::File(tmp.path().join("out.qcow2"));
    assert!(h2k_guest::load::probe(&src, None).is_err());
    let trusted = h2k_guest::load::probe_with(&src, None, true).unwrap();
    assert_eq!(trusted.chain.len(), 2);
}

fn fix(args: &[&std::ffi::OsStr]) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_h2k-guest"))
        .arg("fix")
        .args(args)
        .env("H2K_ACCEL", "tcg")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stderr, started.elapsed())
}

/// `fix` refusals that happen before LOAD opens anything: each in one line, within seconds
/// (no appliance), the source unchanged, nothing left behind.
#[test]
fn fix_refuses_outputs_that_are_the_source_or_escape_and_leaves_no_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sh(d, "mkdir -p src out && qemu-img create -q -f qcow2 src/disk.qcow2 10M && ln -s ../src/disk.qcow2 out/link.qcow2");
    let src = d.join("src/disk.qcow2");
    let before = sha(&src);
    // The same file through `..` and through a symlink, with --overwrite.
    for out in [d.join("out/../src/disk.qcow2"), d.join("out/link.qcow2")] {
        let (ok, stderr, took) = fix(&[
            src.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--overwrite".as_ref(),
        ]);
        assert!(!ok, "{}: accepted", out.display());
        assert!(took < Duration::from_secs(5), "{}: too slow", out.display());
        let line = stderr.lines().last().unwrap_or_default();
        assert!(
            line.contains("overwrite the source"),
            "{}: {stderr}",
            out.display()
        );
        assert_eq!(sha(&src), before);
    }
    // A refused source with an output in directories that do not exist yet: none are left.
    sh(
        d,
        "qemu-img create -q -f qcow2 -u -F raw -b /etc/shadow src/shadow.qcow2 10M",
    );
    let out = d.join("out/no/such/dir/x.qcow2");
    let (ok, stderr, took) = fix(&[
        d.join("src/shadow.qcow2").as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!ok && took < Duration::from_secs(5), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("/etc/shadow"),
        "{stderr}"
    );
    assert!(
        !d.join("out/no").exists(),
        "created directories were left: {stderr}"
    );
}

/// A manifest checksum is verified before anything else reads the image: a hostile image with
/// a wrong checksum fails on the checksum, not on what its header says.
#[test]
fn the_manifest_checksum_is_checked_before_the_image_is_parsed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sh(
        d,
        "mkdir out && qemu-img create -q -f qcow2 -u -F raw -b /etc/shadow evil.qcow2 10M",
    );
    let manifest = d.join("m.json");
    let body = serde_json::json!({
        "manifest_version": "1.0",
        "disks": [{"id": "d0", "source_format": "qcow2", "bytes": std::fs::metadata(d.join("evil.qcow2")).unwrap().len(),
                   "local_path": d.join("evil.qcow2"), "checksum": format!("sha256:{}", "0".repeat(64)), "disk_type": "boot"}],
        "output": {"directory": d.join("out")}
    });
    std::fs::write(&manifest, serde_json::to_vec(&body).unwrap()).unwrap();
    let (ok, stderr, took) = fix(&["--manifest".as_ref(), manifest.as_os_str()]);
    assert!(!ok && took < Duration::from_secs(10), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains("checksum mismatch") && line.contains("evil.qcow2"),
        "{stderr}"
    );
}
