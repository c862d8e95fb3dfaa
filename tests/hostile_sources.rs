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
}
