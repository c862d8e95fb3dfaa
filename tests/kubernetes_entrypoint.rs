//! The pod's entrypoint of deploy/kubernetes/ (the script in configmap-entrypoint.yaml, as
//! shipped): the manifest of each index, a bad list or index refused in one line with exit 2,
//! the real h2k-guest's status passed on, done VMs skipped, SIGTERM passed on; under bash and
//! dash. No appliance: the sources are not disk images, so `fix` fails in LOAD.

mod common;
mod k8s_support;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_support::{configmap_key, list_entries};
use serde_json::json;

struct Wave {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Wave {
    /// A sources volume with the three manifests the shipped list names (their sources are
    /// files that are not disk images), an empty outputs volume, and the shipped script.
    fn new() -> Wave {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("sources");
        std::fs::create_dir_all(src.join("manifests")).unwrap();
        std::fs::create_dir_all(src.join("images")).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let entries = list_entries(&configmap_key("configmap-manifests.yaml", "manifests.txt"));
        assert_eq!(
            entries,
            [
                "manifests/web01.json",
                "manifests/web02.json",
                "manifests/db01.yaml"
            ]
        );
        for e in &entries {
            let stem = Path::new(e).file_stem().unwrap().to_str().unwrap();
            let image = src.join(format!("images/{stem}.vmdk"));
            std::fs::write(&image, "not a disk image\n").unwrap();
            let m = json!({"version": "1.0", "pipeline": {
                "load": {"source_path": image},
                "convert": {"output_path": format!("{stem}.qcow2")}}});
            let text = if e.ends_with(".yaml") {
                serde_yaml_ng::to_string(&m).unwrap()
            } else {
                m.to_string()
            };
            std::fs::write(src.join(e), text).unwrap();
        }
        let list = dir.path().join("manifests.txt");
        std::fs::write(
            &list,
            configmap_key("configmap-manifests.yaml", "manifests.txt"),
        )
        .unwrap();
        let script = dir.path().join("entrypoint.sh");
        std::fs::write(
            &script,
            configmap_key("configmap-entrypoint.yaml", "entrypoint.sh"),
        )
        .unwrap();
        Wave { dir, script }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, shell: &str, index: Option<&str>, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(shell);
        c.arg(&self.script)
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("H2K_EXTRA_ARGS")
            .env("H2K_MANIFEST_LIST", self.path("manifests.txt"))
            .env("H2K_SOURCES", self.path("sources"))
            .env("H2K_OUTPUTS", self.path("out"))
            .env("H2K_GUEST", common::bin());
        if let Some(i) = index {
            c.env("JOB_COMPLETION_INDEX", i);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, shell: &str, index: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
        let out = self.command(shell, index, env).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A stand-in for h2k-guest: records its arguments, then runs BODY.
    fn stub(&self, body: &str) -> PathBuf {
        let p = self.path("stub.sh");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(
            f,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$STUB_DIR/args\"\n{body}"
        )
        .unwrap();
        drop(f);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }
}

const SHELLS: [&str; 2] = ["bash", "dash"];

#[test]
fn the_entrypoint_picks_the_manifest_of_its_index() {
    let t = Instant::now();
    for sh in SHELLS {
        let w = Wave::new();
        let out = w.path("out");
        let validate = [("H2K_WAVE_ACTION", "validate")];
        // The first and the last index, through the real `h2k-guest manifest validate`.
        for (index, entry, name) in [
            ("0", "manifests/web01.json", "web01"),
            ("2", "manifests/db01.yaml", "db01"),
        ] {
            let (rc, stdout, stderr) = w.run(sh, Some(index), &validate);
            assert_eq!(rc, 0, "{sh} index {index}: {stdout}{stderr}");
            let n = index.parse::<usize>().unwrap() + 1;
            assert!(
                stdout.contains(&format!(
                    "entry {n} of 3: {entry} -> {}/{name}/",
                    out.display()
                )),
                "{sh}: {stdout}"
            );
            assert!(
                stdout.contains(&format!("manifest ok: SeedV1 job \"{name}\"")),
                "{sh}: {stdout}"
            );
            assert!(
                stdout.contains(&format!("-> {}/{name}/{name}.qcow2", out.display())),
                "{sh}: {stdout}"
            );
        }
        // Out of range, missing, not a number: exit 2 and one line saying so, nothing run.
        let (rc, _, stderr) = w.run(sh, Some("3"), &validate);
        assert_eq!(rc, 2, "{sh}: {stderr}");
        assert!(
            stderr.contains("JOB_COMPLETION_INDEX 3 is out of range")
                && stderr.contains(
                    "lists 3 manifest(s), indexes 0 to 2 (set the Job's completions to 3)"
                ),
            "{sh}: {stderr}"
        );
        let (rc, _, stderr) = w.run(sh, None, &[]);
        assert_eq!(rc, 2, "{sh}: {stderr}");
        assert!(
            stderr.contains("JOB_COMPLETION_INDEX is not set"),
            "{sh}: {stderr}"
        );
        let (rc, _, stderr) = w.run(sh, Some("1x"), &[]);
        assert_eq!(
            (rc, stderr.trim()),
            (2, "h2k-wave: JOB_COMPLETION_INDEX=1x is not a number"),
            "{sh}"
        );
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            0,
            "{sh}: validate wrote to the outputs"
        );
    }
    eprintln!(
        "index selection under {SHELLS:?} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn the_entrypoint_refuses_a_bad_list() {
    let w = Wave::new();
    let list = w.path("manifests.txt");
    for (text, line, says) in [
        (
            "manifests/web01.json\n../etc/x.json\n",
            2,
            "\"../etc/x.json\": .. may not leave the sources volume",
        ),
        (
            "/srv/web01.json\n",
            1,
            "an absolute path; give it relative to the sources volume",
        ),
        (
            "# a\nmanifests/web01.json\nother/web01.yaml\n",
            3,
            "its output directory web01/ is already that of line 2",
        ),
        (
            "\nmy vm.json\n",
            2,
            "only letters, digits and . _ - / may name a manifest",
        ),
        (
            "manifests/.json\n",
            1,
            "no file name to name its output directory after",
        ),
    ] {
        std::fs::write(&list, text).unwrap();
        for sh in SHELLS {
            // Index 0 is fine in every list: the whole list is checked by every pod.
            let (rc, _, stderr) = w.run(sh, Some("0"), &[("H2K_WAVE_ACTION", "validate")]);
            assert_eq!(rc, 2, "{sh} {text:?}: {stderr}");
            let want = format!("h2k-wave: {}:{line}: ", list.display());
            assert!(
                stderr.starts_with(&want) && stderr.contains(says),
                "{sh} {text:?}: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{sh}: {stderr}");
        }
    }
    let gone = w.path("no-such-list.txt");
    let (rc, _, stderr) = w.run(
        "bash",
        Some("0"),
        &[("H2K_MANIFEST_LIST", gone.to_str().unwrap())],
    );
    assert_eq!(rc, 2);
    assert!(
        stderr.contains("no-such-list.txt: cannot read the manifest list"),
        "{stderr}"
    );
    std::fs::write(&list, "# nothing yet\n\n").unwrap();
    let (rc, _, stderr) = w.run("dash", Some("0"), &[]);
    assert_eq!(rc, 2);
    assert!(stderr.contains("lists no manifest"), "{stderr}");
    // Comments, blank lines, CRLF and blanks around an entry are fine.
    std::fs::write(&list, "# x\r\n\r\n  manifests/web02.json \r\n").unwrap();
    let (rc, stdout, stderr) = w.run("dash", Some("0"), &[("H2K_WAVE_ACTION", "validate")]);
    assert_eq!(rc, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("entry 1 of 1: manifests/web02.json"),
        "{stdout}"
    );
    // An entry whose file is not on the volume.
    std::fs::write(&list, "manifests/web09.json\n").unwrap();
    let (rc, _, stderr) = w.run("bash", Some("0"), &[]);
    assert_eq!(rc, 2);
    assert!(
        stderr.contains("manifests/web09.json: no such manifest on the sources volume"),
        "{stderr}"
    );
}

#[test]
fn the_entrypoint_runs_fix_and_marks_what_is_done() {
    for sh in SHELLS {
        let w = Wave::new();
        let outdir = w.path("out/web02");
        let done = outdir.join(".h2k-wave-done");
        // The real h2k-guest fix: the source is not a disk image, so it fails in LOAD (before
        // any appliance) with its own status and report; the VM is not marked done.
        let (rc, _, stderr) = w.run(sh, Some("1"), &[]);
        assert_eq!(rc, 1, "{sh}: {stderr}");
        assert!(
            stderr.contains("web02 failed in the load stage")
                && stderr.contains("not a disk image"),
            "{sh}: {stderr}"
        );
        assert!(
            outdir.join("web02.qcow2.report.json").is_file(),
            "{sh}: no report"
        );
        assert!(!done.exists(), "{sh}");

        // A stand-in that succeeds: the marker is written, and the arguments are the manifest,
        // the per-VM output directory and H2K_EXTRA_ARGS.
        let stub = w.stub("exit 0");
        let stub_env = [
            ("H2K_GUEST", stub.to_str().unwrap()),
            ("STUB_DIR", w.dir.path().to_str().unwrap()),
            ("H2K_EXTRA_ARGS", " --compress   -v "),
        ];
        let (rc, stdout, stderr) = w.run(sh, Some("1"), &stub_env);
        assert_eq!(rc, 0, "{sh}: {stdout}{stderr}");
        let args = std::fs::read_to_string(w.path("args")).unwrap();
        let manifest = w.path("sources/manifests/web02.json");
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            [
                "fix",
                "--manifest",
                manifest.to_str().unwrap(),
                "--output-dir",
                outdir.to_str().unwrap(),
                "--compress",
                "-v"
            ],
            "{sh}"
        );
        let marker = std::fs::read_to_string(&done).unwrap();
        assert!(
            marker.trim_end().ends_with(" manifests/web02.json"),
            "{sh}: {marker}"
        );

        // Done: the real h2k-guest is not run again (it would fail as above).
        let (rc, stdout, stderr) = w.run(sh, Some("1"), &[]);
        assert_eq!(rc, 0, "{sh}: {stdout}{stderr}");
        assert!(
            stdout.contains("web02: converted by an earlier run"),
            "{sh}: {stdout}"
        );
    }
}

#[test]
fn the_entrypoint_passes_sigterm_on() {
    for sh in SHELLS {
        let w = Wave::new();
        let stub = w.stub(
            "trap 'echo TERM > \"$STUB_DIR/got\"; exit 143' TERM\ntouch \"$STUB_DIR/started\"\n\
             i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\nexit 0",
        );
        let mut child = w
            .command(
                sh,
                Some("0"),
                &[
                    ("H2K_GUEST", stub.to_str().unwrap()),
                    ("STUB_DIR", w.dir.path().to_str().unwrap()),
                ],
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !w.path("started").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{sh}: the stand-in did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = common::within(Duration::from_secs(10), "the entrypoint to stop", || {
            child.wait().unwrap()
        });
        assert_eq!(
            status.code(),
            Some(143),
            "{sh}: {status:?} (signal {:?})",
            status.signal()
        );
        assert_eq!(
            std::fs::read_to_string(w.path("got")).unwrap().trim(),
            "TERM",
            "{sh}"
        );
        assert!(!w.path("out/web01/.h2k-wave-done").exists(), "{sh}");
    }
}
