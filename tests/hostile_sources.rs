//! Hostile sources must be refused in LOAD, by the real binary, fast, with one line naming
//! the file and the offending entry, and without touching the source. No appliance is launched.

mod common;

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
        ("vhdx-diff.vhdx", "qemu-img create -q -f vhdx vhdx-diff.vhdx 10M".into(), "relative_path \"..\\\\..\\\\etc\\\\shadow\""),
        ("vhdx-bit.vhdx", "qemu-img create -q -f vhdx vhdx-bit.vhdx 10M".into(), "differencing VHDX"),
        ("lie.qcow2", format!("qemu-img create -q -f raw base.img 1M && {QCOW} -F qcow2 -b base.img lie.qcow2 10M"), "\"base.img\" is recorded as qcow2 but its header says raw"),
        ("qed.img", "qemu-img create -q -f qed qed.img 10M".into(), "unsupported image format \"qed\""),
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
    make_differencing_vhdx(
        &base.join("vhdx-diff.vhdx"),
        &[
            ("parent_linkage", "{0b9a3c5e-1d2f-4e6a-8b7c-9d0e1f2a3b4c}"),
            ("relative_path", "..\\..\\etc\\shadow"),
            ("absolute_win32_path", "C:\\VMs\\base.vhdx"),
        ],
    );
    make_differencing_vhdx(&base.join("vhdx-bit.vhdx"), &[]);
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

/// A VHDX GUID's on-disk bytes (first three groups little-endian).
fn vhdx_guid(d1: u32, d2: u16, d3: u16, d4: u64) -> Vec<u8> {
    let mut g = d1.to_le_bytes().to_vec();
    g.extend(d2.to_le_bytes());
    g.extend(d3.to_le_bytes());
    g.extend(d4.to_be_bytes());
    g
}

/// Turn a VHDX made by qemu-img into a differencing one: set the file parameters' "has
/// parent" bit and, when `parents` is not empty, add a parent locator item holding them.
/// (The metadata table has no checksum, so qemu-img's layout is patched in place.)
fn make_differencing_vhdx(path: &Path, parents: &[(&str, &str)]) {
    let mut f = std::fs::read(path).unwrap();
    let u16_at = |f: &[u8], o: usize| u16::from_le_bytes(f[o..o + 2].try_into().unwrap());
    let u32_at = |f: &[u8], o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
    let metadata_region = vhdx_guid(0x8B7CA206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);
    let file_parameters = vhdx_guid(0xCAA16737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
    let parent_locator = vhdx_guid(0xA8D35F2D, 0xB30B, 0x454D, 0xABF7_D3D8_4834_AB0C);
    let rt = 192 << 10;
    assert_eq!(&f[rt..rt + 4], b"regi");
    let meta = (0..u32_at(&f, rt + 8) as usize)
        .map(|i| rt + 16 + i * 32)
        .find(|&e| f[e..e + 16] == metadata_region[..])
        .map(|e| u64::from_le_bytes(f[e + 16..e + 24].try_into().unwrap()) as usize)
        .expect("metadata region");
    assert_eq!(&f[meta..meta + 8], b"metadata");
    let count = u16_at(&f, meta + 10) as usize;
    let mut free = 64 << 10;
    for i in 0..count {
        let e = meta + 32 + i * 32;
        let (off, len) = (u32_at(&f, e + 16) as usize, u32_at(&f, e + 20) as usize);
        free = free.max(off + len);
        if f[e..e + 16] == file_parameters[..] {
            f[meta + off + 4] |= 2; // HasParent
        }
    }
    if !parents.is_empty() {
        let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        let mut item = vhdx_guid(0xB04AEFB7, 0xD19E, 0x4A81, 0xB789_25B8_E944_5913);
        item.extend([0, 0]);
        item.extend((parents.len() as u16).to_le_bytes());
        let mut strings = Vec::new();
        let mut next = 20 + 12 * parents.len();
        for (k, v) in parents {
            let (k, v) = (utf16(k), utf16(v));
            item.extend((next as u32).to_le_bytes());
            item.extend(((next + k.len()) as u32).to_le_bytes());
            item.extend((k.len() as u16).to_le_bytes());
            item.extend((v.len() as u16).to_le_bytes());
            next += k.len() + v.len();
            strings.extend(k);
            strings.extend(v);
        }
        item.extend(strings);
        let off = free.div_ceil(8) * 8;
        let e = meta + 32 + count * 32;
        f[e..e + 16].copy_from_slice(&parent_locator);
        f[e + 16..e + 20].copy_from_slice(&(off as u32).to_le_bytes());
        f[e + 20..e + 24].copy_from_slice(&(item.len() as u32).to_le_bytes());
        f[e + 24..e + 28].copy_from_slice(&6u32.to_le_bytes()); // IsRequired | IsVirtualDisk
        f[meta + off..meta + off + item.len()].copy_from_slice(&item);
        f[meta + 10..meta + 12].copy_from_slice(&((count + 1) as u16).to_le_bytes());
    }
    std::fs::write(path, f).unwrap();
}

/// A qemu-img that logs its arguments to `log` before running the real one, and refuses
/// `create` (so `fix` stops in LOAD, after every LOAD call, before any appliance).
fn logging_qemu_img(dir: &Path, log: &Path) -> PathBuf {
    let prelude = format!(
        "printf '%s\\n' \"$*\" >> '{}'\nif [ \"$1\" = create ]; then echo 'qemu-img: create refused by the test' >&2; exit 1; fi\n",
        log.display()
    );
    common::wrapped_qemu_img(dir, &prelude)
}

/// Every qemu-img call LOAD (and `validate`) makes names the format it opens (`-f`, and `-F`
/// for the overlay's backing file): nothing is probed.
#[test]
fn every_qemu_img_call_carries_an_explicit_format() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sh(
        d,
        "printf '\\125\\252' | dd of=disk.raw bs=1 seek=510 conv=notrunc 2>/dev/null && truncate -s 10M disk.raw \
         && qemu-img create -q -f qcow2 -F raw -b disk.raw top.qcow2 \
         && qemu-img convert -O vmdk disk.raw d.vmdk && qemu-img convert -O vhdx disk.raw d.vhdx \
         && qemu-img convert -O vpc disk.raw d.vhd && qemu-img convert -O vdi disk.raw d.vdi && mkdir out",
    );
    let log = d.join("argv.log");
    let bin = logging_qemu_img(d, &log);
    let path = common::path_with_first(&bin);
    for image in [
        "disk.raw",
        "top.qcow2",
        "d.vmdk",
        "d.vhdx",
        "d.vhd",
        "d.vdi",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_h2k-guest"))
            .arg("validate")
            .arg(d.join(image))
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_h2k-guest"))
        .arg("fix")
        .arg(d.join("top.qcow2"))
        .arg("-o")
        .arg(d.join("out/x.qcow2"))
        .env("PATH", &path)
        .env("H2K_ACCEL", "tcg")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("create refused by the test"),
        "{stderr}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert!(calls.len() >= 13, "{calls:#?}");
    for call in &calls {
        assert!(call.contains(" -f "), "no -f: qemu-img {call}");
    }
    let create = calls.iter().find(|c| c.starts_with("create")).unwrap();
    assert!(create.contains(" -F qcow2 "), "{create}");
    for (image, format) in [
        ("disk.raw", "raw"),
        ("top.qcow2", "qcow2"),
        ("d.vmdk", "vmdk"),
        ("d.vhdx", "vhdx"),
        ("d.vhd", "vpc"),
        ("d.vdi", "vdi"),
    ] {
        assert!(
            calls.iter().any(|c| c.starts_with("info")
                && c.contains(&format!("-f {format} {}", d.join(image).display()))),
            "{image} not opened as {format}: {calls:#?}"
        );
    }
}

/// A declared format must agree with the header: one line naming the file and both formats.
#[test]
fn a_declared_format_that_disagrees_with_the_header_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sh(
        d,
        "qemu-img create -q -f qcow2 disk.qcow2 10M && qemu-img create -q -f vhdx plain.vhdx 10M",
    );
    for (image, declared, detected) in [
        ("disk.qcow2", "raw", "qcow2"),
        ("disk.qcow2", "vmdk", "qcow2"),
        ("plain.vhdx", "vhd", "vhdx"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_h2k-guest"))
            .args(["inspect", "--format", declared])
            .arg(d.join(image))
            .env("H2K_ACCEL", "tcg")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{image} as {declared}: accepted");
        let line = stderr.lines().last().unwrap_or_default();
        assert!(
            line.contains(image)
                && line.contains(&format!(
                    "the declared format is {declared} but its header says {detected}"
                )),
            "{stderr}"
        );
    }
    // A plain VHDX made by qemu-img passes the VHDX metadata reader.
    let src = h2k_guest::load::Source::File(d.join("plain.vhdx"));
    let info = h2k_guest::load::probe(&src, Some("vhdx")).unwrap();
    assert_eq!(info.format, "vhdx");
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
