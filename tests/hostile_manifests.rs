//! Hostile manifests through the real binary: each must be refused by `manifest validate` with one
//! stderr line naming the file and the key, leaving the output directory untouched, and
//! `fix --manifest` must refuse the same input before any appliance is launched.
//! No appliance or QEMU is started here.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// One scratch layout per case: `out/` (the output dir), a small qcow2 source, a dir outside `out/`.
struct Fixture {
    _tmp: TempDir,
    root: PathBuf,
    out: PathBuf,
    source: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().to_path_buf();
        let out = root.join("out");
        let outside = root.join("outside");
        fs::create_dir(&out).unwrap();
        fs::create_dir(&outside).unwrap();
        let source = root.join("src.qcow2");
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&source)
            .arg("1M")
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            // Only stat'ed by validation: a plain file serves as well.
            fs::write(&source, b"not really qcow2").unwrap();
        }
        Fixture {
            _tmp: tmp,
            root,
            out,
            source,
            outside,
        }
    }

    fn src(&self) -> String {
        self.source.display().to_string()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn seed(&self, source: &str, convert: &str) -> PathBuf {
        let source = serde_json::to_string(source).unwrap();
        self.write(
            "m.json",
            &format!(
                r#"{{"version":"1.0","pipeline":{{"load":{{"source_path":{source}}},"convert":{{{convert}}}}}}}"#
            ),
        )
    }

    fn artifact(&self, disks: &str, extra: &str) -> PathBuf {
        self.write(
            "m.json",
            &format!(r#"{{"manifest_version":"1.0","disks":[{disks}]{extra}}}"#),
        )
    }

    fn disk(&self, id: &str, more: &str) -> String {
        let src = serde_json::to_string(&self.src()).unwrap();
        format!(r#"{{"id":"{id}","source_format":"qcow2","bytes":1,"local_path":{src}{more}}}"#)
    }
}

struct Case {
    name: &'static str,
    make: fn(&Fixture) -> PathBuf,
    /// Must appear in the one stderr line, beside the manifest's file name.
    needle: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "seed output through a symlinked dir",
            make: |f| {
                symlink(&f.outside, f.out.join("evil")).unwrap();
                f.seed(&f.src(), r#""output_path":"evil/x.qcow2""#)
            },
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "artifact filename through a symlinked dir",
            make: |f| {
                symlink(&f.outside, f.out.join("evil")).unwrap();
                f.artifact(
                    &f.disk("d0", ""),
                    r#","output":{"filename":"evil/x.qcow2"}"#,
                )
            },
            needle: "output.filename",
        },
        Case {
            name: "artifact output.directory is a symlink",
            make: |f| {
                symlink(&f.outside, f.out.join("evil")).unwrap();
                f.artifact(&f.disk("d0", ""), r#","output":{"directory":"evil"}"#)
            },
            needle: "disks[0]",
        },
        Case {
            name: "seed output name is an existing symlink",
            make: |f| {
                symlink(f.outside.join("target"), f.out.join("x.qcow2")).unwrap();
                f.seed(&f.src(), r#""output_path":"x.qcow2""#)
            },
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "seed output escapes with ..",
            make: |f| f.seed(&f.src(), r#""output_path":"../x.qcow2""#),
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "seed output absolute outside",
            make: |f| f.seed(&f.src(), r#""output_path":"/etc/x.qcow2""#),
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "too many disks",
            make: |f| {
                let disks: Vec<String> = (0..65).map(|i| f.disk(&format!("d{i}"), "")).collect();
                f.artifact(&disks.join(","), "")
            },
            needle: "disks: lists 65 disks",
        },
        Case {
            name: "duplicate disk ids",
            make: |f| f.artifact(&format!("{},{}", f.disk("d0", ""), f.disk("d0", "")), ""),
            needle: "disks[1].id",
        },
        Case {
            name: "duplicate top-level JSON key",
            make: |f| {
                let src = serde_json::to_string(&f.src()).unwrap();
                f.write(
                    "m.json",
                    &format!(r#"{{"version":"1.0","version":"1.0","pipeline":{{"load":{{"source_path":{src}}}}}}}"#),
                )
            },
            needle: "duplicate key version",
        },
        Case {
            name: "duplicate nested JSON key",
            make: |f| {
                let src = serde_json::to_string(&f.src()).unwrap();
                f.write(
                    "m.json",
                    &format!(r#"{{"version":"1.0","pipeline":{{"load":{{"source_path":{src},"source_path":"/etc/passwd"}}}}}}"#),
                )
            },
            needle: "duplicate key pipeline.load.source_path",
        },
        Case {
            name: "duplicate JSON key inside disks[]",
            make: |f| f.artifact(&f.disk("d0", r#","id":"d1""#), ""),
            needle: "duplicate key disks[0].id",
        },
        Case {
            name: "duplicate YAML key",
            make: |f| {
                f.write(
                    "m.yaml",
                    &format!(
                        "version: '1.0'\nversion: '1.0'\npipeline:\n  load:\n    source_path: {}\n",
                        f.src()
                    ),
                )
            },
            needle: "version",
        },
        Case {
            name: "NUL in output path",
            make: |f| f.seed(&f.src(), r#""output_path":"x\u0000.qcow2""#),
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "newline in output path",
            make: |f| f.seed(&f.src(), r#""output_path":"x\n.qcow2""#),
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "control character in seed source path",
            make: |f| f.seed(&format!("{}\u{1b}[2J", f.src()), ""),
            needle: "pipeline.load.source_path",
        },
        Case {
            name: "NUL in artifact local_path",
            make: |f| {
                f.artifact(
                    r#"{"id":"d0","source_format":"qcow2","bytes":1,"local_path":"/tmp/a\u0000b"}"#,
                    "",
                )
            },
            needle: "disks[0].local_path",
        },
        Case {
            name: "control character in disk id",
            make: |f| f.artifact(&f.disk("d\\u0007", ""), ""),
            needle: "disks[0].id",
        },
        Case {
            name: "control character in metadata.name",
            make: |f| {
                let src = serde_json::to_string(&f.src()).unwrap();
                f.write(
                    "m.json",
                    &format!(r#"{{"version":"1.0","metadata":{{"name":"a\nb"}},"pipeline":{{"load":{{"source_path":{src}}}}}}}"#),
                )
            },
            needle: "metadata.name",
        },
        Case {
            name: "control character in source.vm_name",
            make: |f| f.artifact(&f.disk("d0", ""), r#","source":{"vm_name":"vm\r1"}"#),
            needle: "source.vm_name",
        },
        Case {
            name: "control character in output.filename",
            make: |f| f.artifact(&f.disk("d0", ""), r#","output":{"filename":"a\tb.qcow2"}"#),
            needle: "output.filename",
        },
        Case {
            name: "control character in disk label",
            make: |f| f.artifact(&f.disk("d0", r#","label":"x\u001by""#), ""),
            needle: "disks[0].label",
        },
        Case {
            name: "control character in output.directory",
            make: |f| f.artifact(&f.disk("d0", ""), r#","output":{"directory":"a\u0000"}"#),
            needle: "output.directory",
        },
        Case {
            name: "manifest is a FIFO",
            make: |f| {
                let path = f.root.join("m.json");
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
                path
            },
            needle: "is a FIFO",
        },
        Case {
            name: "manifest is a character device",
            make: |f| {
                let path = f.root.join("m.json");
                symlink("/dev/zero", &path).unwrap();
                path
            },
            needle: "is a character device",
        },
        Case {
            name: "manifest is a directory",
            make: |f| {
                let path = f.root.join("m.json");
                fs::create_dir(&path).unwrap();
                path
            },
            needle: "is a directory",
        },
        Case {
            name: "manifest over the size cap",
            make: |f| f.write("m.json", &" ".repeat(4 * 1024 * 1024 + 1)),
            needle: "larger than 4 MiB",
        },
        Case {
            name: "manifest with a NUL byte",
            make: |f| f.write("m.json", "{\"version\":\"1.0\"\0}"),
            needle: "binary file",
        },
        Case {
            name: "seed source /dev/zero",
            make: |f| f.seed("/dev/zero", ""),
            needle: "pipeline.load.source_path: /dev/zero: is a character device",
        },
        Case {
            name: "seed source /proc/self/mem",
            make: |f| f.seed("/proc/self/mem", ""),
            needle: "pipeline.load.source_path: /proc/self/mem",
        },
        Case {
            name: "seed source is a FIFO",
            make: |f| {
                let fifo = f.root.join("disk.fifo");
                nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
                f.seed(&fifo.display().to_string(), "")
            },
            needle: "pipeline.load.source_path",
        },
        Case {
            name: "seed source is a socket",
            make: |f| {
                let sock = f.root.join("disk.sock");
                std::mem::forget(std::os::unix::net::UnixListener::bind(&sock).unwrap());
                f.seed(&sock.display().to_string(), "")
            },
            needle: "is a socket",
        },
        Case {
            name: "seed source is a directory",
            make: |f| f.seed(&f.outside.display().to_string(), ""),
            needle: "pipeline.load.source_path",
        },
        Case {
            name: "artifact local_path /dev/zero",
            make: |f| {
                f.artifact(
                    r#"{"id":"d0","source_format":"raw","bytes":1,"local_path":"/dev/zero"}"#,
                    "",
                )
            },
            needle: "disks[0].local_path",
        },
        Case {
            name: "nbd URI without a host",
            make: |f| f.seed("nbd:///export", ""),
            needle: "pipeline.load.source_path",
        },
        Case {
            name: "nbd+unix URI without a socket",
            make: |f| f.seed("nbd+unix:///export", ""),
            needle: "pipeline.load.source_path",
        },
        Case {
            name: "unsupported URI scheme",
            make: |f| f.seed("http://example.com/disk.qcow2", ""),
            needle: "pipeline.load.source_path",
        },
        Case {
            name: "output would overwrite the source",
            make: |f| {
                let inside = f.out.join("src.qcow2");
                fs::copy(&f.source, &inside).unwrap();
                f.seed(
                    &inside.display().to_string(),
                    r#""output_path":"src.qcow2""#,
                )
            },
            needle: "pipeline.convert.output_path",
        },
        Case {
            name: "two disks share an output",
            make: |f| {
                f.artifact(
                    &format!("{},{}", f.disk("d0", ""), f.disk("d1", "")),
                    r#","output":{"filename":"d1.qcow2"}"#,
                )
            },
            needle: "disks[1]",
        },
    ]
}

/// Run the binary, failing the test if it has not exited within `limit`.
fn run_within(limit: Duration, args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_h2k-guest"))
        .args(args)
        .env("H2K_ACCEL", "tcg")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("h2k-guest {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
}

fn assert_refused(case: &Case, manifest: &Path, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}: accepted; stderr {stderr}",
        case.name
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: not one stderr line: {stderr:?}",
        case.name
    );
    let file = manifest.display().to_string();
    assert!(
        lines[0].contains(&file),
        "{}: {:?} lacks {file}",
        case.name,
        lines[0]
    );
    assert!(
        lines[0].contains(case.needle),
        "{}: {:?} lacks {:?}",
        case.name,
        lines[0],
        case.needle
    );
}

#[test]
fn validate_refuses_every_hostile_manifest() {
    let cases = cases();
    assert!(cases.len() >= 30);
    for case in &cases {
        let f = Fixture::new();
        let manifest = (case.make)(&f);
        let before = listing(&f.out);
        let out = run_within(
            Duration::from_secs(10),
            &[
                "manifest".as_ref(),
                "validate".as_ref(),
                "--output-dir".as_ref(),
                f.out.as_os_str(),
                manifest.as_os_str(),
            ],
        );
        assert_refused(case, &manifest, &out);
        assert_eq!(listing(&f.out), before, "{}: output dir changed", case.name);
        assert!(
            listing(&f.outside).is_empty(),
            "{}: wrote outside",
            case.name
        );
    }
}

#[test]
fn fix_refuses_hostile_manifests_before_launching_anything() {
    let chosen = [
        "seed output through a symlinked dir",
        "duplicate nested JSON key",
        "manifest is a FIFO",
        "seed source /dev/zero",
        "too many disks",
        "NUL in output path",
    ];
    for case in cases().iter().filter(|c| chosen.contains(&c.name)) {
        let f = Fixture::new();
        let manifest = (case.make)(&f);
        let before = listing(&f.out);
        // Parsing fails in milliseconds; an appliance boot would take far longer than this.
        let out = run_within(
            Duration::from_secs(5),
            &[
                "fix".as_ref(),
                "--manifest".as_ref(),
                manifest.as_os_str(),
                "--output-dir".as_ref(),
                f.out.as_os_str(),
            ],
        );
        assert_refused(case, &manifest, &out);
        assert_eq!(listing(&f.out), before, "{}: output dir changed", case.name);
        assert!(
            listing(&f.outside).is_empty(),
            "{}: wrote outside",
            case.name
        );
    }
}
