//! The libvirt domain XML h2k-guest writes, against the real libvirt:
//! - its schema: every kind of domain it writes (BIOS/UEFI, 1/3 disks, 0/2 NICs, agent or
//!   not, kvm/qemu, each network kind, a console log, names that need escaping) passes
//!   libvirt's own `virt-xml-validate`; control: a domain with a bad disk bus does not;
//! - a real libvirtd (Debian's libvirt-daemon-system; started here as a child, with virtlogd,
//!   when none answers on qemu:///system — no systemd needed): the BIOS fixture fixed with
//!   `--libvirt-define` and the UEFI fixture fixed with `--libvirt-xml` and `virsh define`d
//!   by the test run as domain type qemu (TCG here), start, and print `login:` on the serial
//!   console log their XML names; control: the BIOS domain with its disk swapped for a blank
//!   one shows no `login:`.
//!
//! Domains are destroyed and undefined (with their NVRAM) on every path, by a drop guard; the
//! daemons this test started are stopped. Needs root (qemu:///system), an appliance and QEMU:
//! one VM at a time (`vm_lock`).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, fixture_facts, h2k, vm_lock, xml_attrs};
use h2k_guest::fix::{FixRecord, FixStatus, NicChoice};
use h2k_guest::libvirt::{render, DomainSpec, DomainType};
use h2k_guest::plan::{Firmware, LibvirtNetwork, NicPlan, Plan};
use h2k_guest::report::{OutputRecord, Report};

const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run virsh (libvirt-clients)")
}

fn validate(xml: &str, dir: &Path, name: &str) -> Output {
    let file = dir.join(format!("{name}.xml"));
    fs::write(&file, xml).unwrap();
    Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("run virt-xml-validate (libvirt-clients)")
}

/// A domain of every shape the renderer knows.
fn specs() -> Vec<(String, DomainSpec)> {
    let mut out = Vec::new();
    for firmware in [Firmware::Bios, Firmware::Uefi] {
        for disks in [1usize, 3] {
            for nics in [0usize, 2] {
                for agent in [false, true] {
                    let mut plan = Plan::for_single_disk(
                        "/src/web01.vmdk",
                        None,
                        PathBuf::from("/srv/out/web01.qcow2"),
                    );
                    plan.vm.firmware = Some(firmware);
                    plan.vm.name = Some("web <01> & 'co' \"prod\"".into());
                    let mut report = Report::new(&plan);
                    for i in 0..disks {
                        report.outputs.push(OutputRecord {
                            disk_id: format!("d{i}"),
                            path: PathBuf::from(format!("/srv/out/web01 & <{i}>.qcow2")),
                            format: if i == 2 { "raw" } else { "qcow2" }.into(),
                            compressed: false,
                            bytes: 1,
                            virtual_size: 1,
                            check: None,
                        });
                    }
                    plan.fix.nics = (0..nics)
                        .map(|i| {
                            NicPlan::parse_flag(&format!("00:50:56:00:00:0{i}=52:54:00:00:00:0{i}"))
                                .unwrap()
                        })
                        .collect();
                    if agent {
                        report.fixes.push(FixRecord {
                            name: "guest-agent".into(),
                            status: FixStatus::Changed,
                            summary: String::new(),
                            files: Vec::new(),
                            seconds: 0.0,
                            nics: Vec::<NicChoice>::new(),
                        });
                    }
                    let (mut spec, _) = DomainSpec::of_job(&plan, &report, DomainType::Qemu);
                    if nics == 0 {
                        spec.nics.clear();
                    }
                    let name = format!("{firmware}-{disks}disk-{nics}nic-agent{agent}");
                    out.push((name, spec));
                }
            }
        }
    }
    let base = out[0].1.clone();
    let mut kvm = base.clone();
    kvm.domain_type = DomainType::Kvm;
    out.push(("kvm".into(), kvm));
    for (name, network) in [
        ("bridge", LibvirtNetwork::Bridge("br0".into())),
        ("user", LibvirtNetwork::User),
        ("network", LibvirtNetwork::Network("wan-1".into())),
    ] {
        let mut s = base.clone();
        s.network = network;
        s.nics = vec![Some("52:54:00:00:00:09".into()), None];
        out.push((name.into(), s));
    }
    let mut logged = base;
    logged.console_log = Some(PathBuf::from("/var/log/h2k/web01 & co.log"));
    out.push(("console-log".into(), logged));
    out
}

#[test]
fn every_domain_shape_passes_libvirts_schema() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let all = specs();
    for (name, spec) in &all {
        let xml = render(spec).unwrap();
        let out = validate(&xml, dir.path(), name);
        assert!(
            out.status.success(),
            "{name}: virt-xml-validate refused it:\n{}{}\n{xml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Control: the validator does refuse a domain libvirt would not take.
    let good = render(&all[0].1).unwrap();
    let broken = good.replacen("bus=\"virtio\"", "bus=\"sideways\"", 1);
    assert_ne!(good, broken);
    let out = validate(&broken, dir.path(), "broken");
    assert!(
        !out.status.success(),
        "virt-xml-validate accepted bus=sideways"
    );
    eprintln!(
        "TIMING schema: {} domains validated in {:.1} s",
        all.len(),
        start.elapsed().as_secs_f64()
    );
}

/// libvirtd (and virtlogd) for the test: the running ones, or children started here and
/// stopped on drop.
struct Libvirtd {
    children: Vec<(String, Child)>,
}

impl Libvirtd {
    fn ensure(logs: &Path) -> Libvirtd {
        let mut d = Libvirtd {
            children: Vec::new(),
        };
        if virsh(&["version"]).status.success() {
            eprintln!("libvirtd: using the one running on {URI}");
            return d;
        }
        let start = Instant::now();
        // Without systemd nothing socket-activates virtlogd, which the console <log> needs.
        if !Path::new("/run/libvirt/virtlogd-sock").exists() {
            d.spawn("virtlogd", logs);
        }
        d.spawn("libvirtd", logs);
        while !virsh(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "libvirtd did not answer on {URI} within 60 s; its log:\n{}",
                fs::read_to_string(logs.join("libvirtd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!(
            "TIMING libvirtd started (virtlogd + libvirtd) in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        d
    }

    fn spawn(&mut self, program: &str, logs: &Path) {
        let log = fs::File::create(logs.join(format!("{program}.log"))).unwrap();
        let child = Command::new(program)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (libvirt-daemon-system): {e}"));
        self.children.push((program.to_string(), child));
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if child.try_wait().ok().flatten().is_none() {
                eprintln!("{name} did not stop on SIGTERM; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A defined domain: destroyed and undefined (NVRAM included) when dropped.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let out = virsh(&["undefine", "--nvram", &self.0]);
        if !out.status.success() {
            let _ = virsh(&["undefine", &self.0]);
        }
    }
}

/// Wait for `login:` in the console log; Err with the log's tail on a boot failure, a
/// stopped domain or the timeout.
fn wait_for_login(domain: &str, log: &Path, limit: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let failures = [
        "Kernel panic",
        "ALERT!",
        "emergency mode",
        "Dropping to a shell",
        "No bootable device",
    ];
    loop {
        // Lossy: OVMF writes bytes that are not UTF-8 to the serial console, and
        // read_to_string would then see nothing at all.
        let text = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned();
        let tail = || common::tail(&text, 25);
        if text.contains("login:") {
            return Ok(start.elapsed().as_secs_f64());
        }
        if let Some(f) = failures.iter().find(|f| text.contains(*f)) {
            return Err(format!("{domain}: {f:?} on the console:\n{}", tail()));
        }
        let state = virsh(&["domstate", domain]);
        let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
        if state != "running" {
            return Err(format!("{domain} is {state:?}, not running:\n{}", tail()));
        }
        if start.elapsed() > limit {
            // What is known of a silent domain: its console log file, QEMU's own log, and a
            // screenshot kept as an artifact (the firmware may be showing something there).
            let file = fs::metadata(log).map(|m| format!("{} bytes", m.len()));
            let qemu_log = fs::read_to_string(format!("/var/log/libvirt/qemu/{domain}.log"))
                .map(|t| common::tail(&t, 6))
                .unwrap_or_default();
            let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("artifacts")
                .join(format!("{domain}.png"));
            let _ = fs::create_dir_all(shot.parent().unwrap());
            let _ = virsh(&["screenshot", domain, &shot.display().to_string()]);
            return Err(format!(
                "{domain}: no login: within {} s (console log {}: {file:?}; screenshot {}); \
                 QEMU's log ends:\n{qemu_log}\nconsole:\n{}",
                limit.as_secs(),
                log.display(),
                shot.display(),
                tail()
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One fixture through `fix --libvirt-xml`, defined and booted under libvirtd.
fn fix_define_boot(
    fixture_name: &str,
    firmware: &str,
    by_h2k: bool,
    work: &Path,
) -> Result<String, String> {
    let src = fixture(fixture_name);
    let mac = fixture_facts(&src)["network"]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let name = format!("h2k-test-{firmware}-{}", std::process::id());
    let out = work.join(format!("{name}.qcow2"));
    let log = work.join(format!("{name}.console.log"));
    let xml_path = work.join(format!("{name}.xml"));
    let mut args: Vec<String> = vec![
        "fix".into(),
        src.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--libvirt-network".into(),
        "user".into(),
        "--libvirt-console-log".into(),
        log.display().to_string(),
        "--vcpus".into(),
        "2".into(),
        "--memory-mib".into(),
        "1024".into(),
    ];
    args.push(if by_h2k {
        format!("--libvirt-define={URI}")
    } else {
        "--libvirt-xml".into()
    });
    let guard = Domain(name.clone());
    let run = h2k(&args);
    eprintln!("TIMING {firmware}: fix --libvirt-xml: {:.1} s", run.seconds);
    if !run.success() {
        return Err(run.describe());
    }
    let xml = fs::read_to_string(&xml_path).map_err(|e| format!("{}: {e}", xml_path.display()))?;
    let mut report_file = out.as_os_str().to_owned();
    report_file.push(".report.json");
    let report = common::read_json(Path::new(&report_file));
    // TCG here (no working KVM): type qemu; kvm where the job's appliance had KVM.
    let domain_type = match report["appliance"]["accelerator"].as_str() {
        Some("kvm") => "kvm",
        _ => "qemu",
    };
    // What the domain says, from the job: the type, the fixture's firmware, its output, the
    // MAC its ens192 is kept on, the console log asked for.
    let checks = [
        (
            xml_attrs(&xml, "domain", "type"),
            vec![domain_type.to_string()],
        ),
        (
            xml_attrs(&xml, "source", "file"),
            vec![out.display().to_string()],
        ),
        (xml_attrs(&xml, "mac", "address"), vec![mac.clone()]),
        (
            xml_attrs(&xml, "log", "file"),
            vec![log.display().to_string()],
        ),
        (
            xml_attrs(&xml, "os", "firmware"),
            if firmware == "uefi" {
                vec!["efi".to_string()]
            } else {
                vec![]
            },
        ),
    ];
    for (got, want) in checks {
        if got != want {
            return Err(format!("domain XML: {got:?}, expected {want:?}:\n{xml}"));
        }
    }
    let t = Instant::now();
    if !by_h2k {
        let def = virsh(&["define", &xml_path.display().to_string()]);
        if !def.status.success() {
            return Err(format!(
                "virsh define: {}",
                String::from_utf8_lossy(&def.stderr)
            ));
        }
    }
    let listed = virsh(&["dominfo", &name]);
    if !listed.status.success() {
        return Err(format!("{name} is not defined on {URI}"));
    }
    let started = virsh(&["start", &name]);
    if !started.status.success() {
        return Err(format!(
            "virsh start {name}: {}",
            String::from_utf8_lossy(&started.stderr)
        ));
    }
    let secs = wait_for_login(&name, &log, Duration::from_secs(420))?;
    eprintln!(
        "TIMING {firmware}: define + start + boot to login: {:.1} s (login after {secs:.1} s)",
        t.elapsed().as_secs_f64()
    );
    drop(guard);
    // Control (BIOS only: it is cheap): the same domain with a blank disk reaches no login.
    if firmware == "bios" {
        let blank = work.join("blank.qcow2");
        common::empty_qcow2(&blank, "64M");
        let control = format!("{name}-blank");
        let control_log = work.join("blank.console.log");
        let control_xml = xml
            .replace(&out.display().to_string(), &blank.display().to_string())
            .replace(
                &log.display().to_string(),
                &control_log.display().to_string(),
            )
            .replace(
                &format!("<name>{name}</name>"),
                &format!("<name>{control}</name>"),
            )
            .replace(&mac, "52:54:00:00:00:77");
        let control_file = work.join("blank.xml");
        fs::write(&control_file, control_xml).unwrap();
        let _control_guard = Domain(control.clone());
        let t = Instant::now();
        let def = virsh(&["define", &control_file.display().to_string()]);
        let start = virsh(&["start", &control]);
        if !def.status.success() || !start.status.success() {
            return Err(format!(
                "control domain: {}{}",
                String::from_utf8_lossy(&def.stderr),
                String::from_utf8_lossy(&start.stderr)
            ));
        }
        match wait_for_login(&control, &control_log, Duration::from_secs(30)) {
            Ok(s) => {
                return Err(format!(
                    "control: a blank disk printed login: after {s:.0} s"
                ))
            }
            // SeaBIOS's own message (it goes to the screen, seldom to the serial log).
            Err(e) if e.contains("no login: within") || e.contains("No bootable device") => {}
            Err(e) => return Err(format!("control failed otherwise: {e}")),
        }
        eprintln!(
            "TIMING bios control (blank disk, no login): {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(format!("{firmware}: login after {secs:.1} s"))
}

#[test]
fn fixed_guests_boot_to_login_under_a_real_libvirtd() {
    let _vm = vm_lock();
    let work = tempfile::tempdir().unwrap();
    // QEMU runs as libvirt-qemu: it must reach the outputs (libvirt chowns the files).
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let _daemon = Libvirtd::ensure(work.path());
    let mut results = Vec::new();
    for (fixture_name, firmware, by_h2k) in [
        ("debian12-bios", "bios", true),
        ("debian12-uefi-dracut-lvm", "uefi", false),
    ] {
        let start = Instant::now();
        let r = fix_define_boot(fixture_name, firmware, by_h2k, work.path());
        eprintln!(
            "TIMING {firmware} total: {:.1} s",
            start.elapsed().as_secs_f64()
        );
        results.push(r);
    }
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
