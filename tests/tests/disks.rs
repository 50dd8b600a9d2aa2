//! VMs as operators have them: booted from a disk on their host's own storage (no kernel
//! given), moved with that disk. Each lab host has its own `/var/lib/netmigrate-lab/disks`
//! (sshd and the QEMUs it starts in a mount namespace of their own), so the target's copy is
//! really another file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use netmigrate_lab::guest::{boot_disk, data_partition, DATA_PARTITION};
use netmigrate_lab::sshd::LOCAL_DISKS;
use netmigrate_lab::sys::wait_for;
use netmigrate_lab::{require_lab, Appliance, Lab, Prober};

mod common;

use common::{crash_and_settle, json, migrated, placed, step_names, wait_http, BOOT};

/// A VM that boots from a qcow2 of 1 GiB on hostA's own storage (with `fill_mib` MiB of data
/// beside its own) and keeps appending fsynced sequence numbers to a file on it; returns its
/// name and address.
fn disk_vm(app: &Appliance, a: &netmigrate_lab::Host, n: u8, fill_mib: u32) -> (String, Ipv4Addr) {
    let name = format!("vm{n}");
    let ip = Ipv4Addr::new(10, 213, 0, 20 + n);
    let file = format!("{name}.qcow2");
    boot_disk(
        &a.dir.join("disks").join(&file),
        &format!("nm_ip={ip}/24 nm_name={name} nm_disk={DATA_PARTITION}"),
        64 + fill_mib,
        fill_mib,
        1024,
    )
    .unwrap();
    app.cli_ok(&[
        "vm",
        "define",
        &name,
        "--mem",
        "128",
        "--mac",
        &format!("52:54:00:d5:00:{:02x}", 20 + n),
        "--ip",
        &ip.to_string(),
        "--disk",
        &format!("{LOCAL_DISKS}/{file},format=qcow2"),
    ])
    .unwrap();
    (name, ip)
}

/// `vm` as `vms` shows it after a collection of every host.
fn vm_seen(app: &Appliance, vm: &str) -> serde_json::Value {
    app.cli_ok(&["hosts", "collect"]).unwrap();
    let vms = json(&app.cli_ok(&["vms", "--json"]).unwrap());
    vms.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .cloned()
        .unwrap_or_else(|| panic!("{vm} not in vms: {vms:#}"))
}

/// The last sequence number the guest reported as on its disk.
fn seq(lab: &Lab, ns: &str, ip: Ipv4Addr) -> Option<u64> {
    lab.disk_seq(ns, ip, Duration::from_secs(2))
}

/// Bytes a file takes on its file system.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Live from hostA to hostC (mirrored over NBD), then cold back (through the image store, in
/// the same stream as its state), writing all along.
#[test]
fn a_vm_booted_from_its_local_disk_moves_live_and_cold_with_every_write_it_acknowledged() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let app = lab.appliance(&[&a, &c]).unwrap();
    let (vm, ip) = disk_vm(&app, &a, 5, 0);
    app.cli_ok(&["vm", "start", &vm, "--on", "hostA"]).unwrap();
    wait_http(&lab, &client.ns, ip);
    // `vms` shows it managed, with its address and its disk: 1 GiB, about 20 MiB of it used.
    let v = &vm_seen(&app, &vm);
    assert_eq!(v["managed"], true, "{v:#}");
    assert_eq!(v["ips"][0], ip.to_string(), "{v:#}");
    assert_eq!(v["disk_mib"], 1024, "{v:#}");
    let used = v["disk_allocated_mib"].as_u64().unwrap();
    assert!((10..64).contains(&used), "{v:#}");
    let table = app.cli_ok(&["vms"]).unwrap();
    assert!(table.contains(&format!("1024 ({used})")), "{table}");
    // Writing: the numbers grow.
    wait_for("the guest to write to its disk", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n >= 20)
    })
    .unwrap();

    let probe = Prober::start(
        &client.ns,
        SocketAddr::new(ip.into(), 80),
        Duration::from_millis(10),
        Duration::from_millis(100),
    )
    .unwrap();
    let before = seq(&lab, &client.ns, ip).unwrap();
    let out = app
        .cli(&["migrate", &vm, "--to", "hostC", "--live", "--json"])
        .unwrap();
    let report = probe.finish();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    assert_eq!(m["mode"], "live", "{m:#}");
    let steps = step_names(m);
    for want in [
        "target disks",
        "export disks",
        "mirror disks",
        "live pre-copy",
        "end mirror",
        "end disk export",
    ] {
        assert!(steps.contains(&want), "{want} missing from {steps:?}");
    }
    assert_eq!(placed(&c, &a, &vm), (true, true), "{m:#}");
    eprintln!(
        "moved live with its disk: break {:?} (probe), QEMU downtime {} ms, total {} ms",
        report.break_time, m["detail"]["downtime_ms"], m["detail"]["total_ms"]
    );
    // It goes on writing on the target, from where it was.
    wait_for("the guest to write on its target", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n > before + 20)
    })
    .unwrap();
    // The source's disk is kept (source_disks = "keep", the default).
    let on_a = a.dir.join("disks").join(format!("{vm}.qcow2"));
    let on_c = c.dir.join("disks").join(format!("{vm}.qcow2"));
    assert!(on_a.exists(), "the source's disk is gone");
    let live_copy = allocated(&on_c);
    assert!(
        live_copy as f64 <= 1.2 * allocated(&on_a) as f64,
        "the live copy allocates {live_copy} bytes, the source's {}",
        allocated(&on_a)
    );

    // Back to hostA cold. Its old copy is in the way (a move never writes over a file): the
    // operator removes it, as one does a kept source once the VM runs elsewhere.
    let refused = app
        .cli(&["migrate", &vm, "--to", "hostA", "--cold", "--json"])
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "moved over a file");
    assert!(said.contains("not overwriting"), "{said}");
    std::fs::remove_file(&on_a).unwrap();
    let probe = Prober::start(
        &client.ns,
        SocketAddr::new(ip.into(), 80),
        Duration::from_millis(10),
        Duration::from_millis(100),
    )
    .unwrap();
    let before = seq(&lab, &client.ns, ip).unwrap();
    let out = app
        .cli(&["migrate", &vm, "--to", "hostA", "--cold", "--json"])
        .unwrap();
    let report = probe.finish();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    assert_eq!(m["mode"], "cold", "{m:#}");
    let steps = step_names(m);
    for want in [
        "target disks",
        "pause source",
        "save to image store",
        "load on target",
        "verify checksum",
        "resume on target",
    ] {
        assert!(steps.contains(&want), "{want} missing from {steps:?}");
    }
    assert!(!steps.contains(&"mirror disks"), "{steps:?}");
    assert_eq!(placed(&a, &c, &vm), (true, true), "{m:#}");
    // The disk crossed compressed, in the same image as the state: zeros not on the wire.
    let image = m["detail"]["image"].as_str().unwrap().to_string();
    let size = wait_for("the image to be published", Duration::from_secs(30), || {
        let images = json(&app.cli_ok(&["images", "--json"]).ok()?);
        images
            .as_array()?
            .iter()
            .find(|i| format!("{}/{}", i["vm"].as_str().unwrap_or(""), i["generation"]) == image)
            .and_then(|i| i["size"].as_u64())
    })
    .unwrap();
    eprintln!(
        "moved cold with its disk: break {:?} (probe), image {image} of {size} bytes, phases {}",
        report.break_time, m["detail"]["phases_ms"]
    );
    let in_use = allocated(&on_c);
    assert!(
        size < (128 << 20) + in_use,
        "{size} bytes for 128 MiB of memory and a 1 GiB disk holding {in_use}"
    );
    wait_for("the guest to write on after the cold move", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n > before + 20)
    })
    .unwrap();

    // The writer stops and unmounts; the last number it reported is on the disk it runs
    // from, with every one before it, in a clean file system.
    let last = stop_writer(&lab, &client.ns, ip);
    app.cli_ok(&["vm", "stop", &vm]).unwrap();
    assert_every_number(&lab, &on_a, last);
    // Sparse: the copy takes about what its source takes, not its 1 GiB.
    let (s, d) = (allocated(&on_c), allocated(&on_a));
    eprintln!(
        "the last number reported {last} ({before} before the cold move); allocated: \
         live copy {live_copy} bytes, its cold copy {d} bytes"
    );
    assert!(
        d as f64 <= 1.2 * s as f64,
        "the cold copy allocates {d} bytes, its source {s}"
    );
}

/// The crash matrix over the disk steps of live and cold moves: the appliance kills itself at
/// each, and restarted, settles the move. Each time the VM runs on one host and goes on
/// writing; if it went back, the target's copy is gone; if it went forward, the source's copy
/// is kept (recovery never removes a disk the VM ran from) and is removed here, as the
/// operator would, for the next move. At the end, every number the guest reported is on the
/// disk it runs from.
#[test]
fn a_crash_at_any_disk_step_leaves_the_vm_in_one_place_with_every_write() {
    use netmigrate::migrate::{Step, When};
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let config =
        netmigrate_lab::appliance::lab_config(&lab, &lab.appliance_state_dir().unwrap(), &[&a, &c])
            .unwrap()
            + "\n[migration]\nsource_disks = \"remove\"\n";
    let mut app = lab.appliance_with(&config).unwrap();
    let (vm, ip) = disk_vm(&app, &a, 6, 0);
    app.cli_ok(&["vm", "start", &vm, "--on", "hostA"]).unwrap();
    wait_http(&lab, &client.ns, ip);
    let file = format!("{vm}.qcow2");
    let disk = |h: &netmigrate_lab::Host| h.dir.join("disks").join(&file);

    let points = [
        ("--live", Step::TargetDisks.crash_at(When::After)),
        ("--live", Step::ExportDisks.crash_at(When::After)),
        ("--live", Step::MirrorDisks.crash_at(When::Before)),
        ("--live", Step::MirrorDisks.crash_at(When::After)),
        ("--live", Step::LivePreCopy.crash_at(When::After)),
        ("--live", Step::EndMirror.crash_at(When::Before)),
        ("--live", Step::EndExport.crash_at(When::Before)),
        // Cold: the disk in the stream ahead of the state.
        ("--cold", Step::TargetDisks.crash_at(When::After)),
        ("--cold", Step::SaveToStore.crash_at(When::Before)),
        ("--cold", Step::LoadOnTarget.crash_at(When::After)),
        ("--cold", Step::VerifyChecksum.crash_at(When::After)),
        ("--cold", Step::ResumeOnTarget.crash_at(When::Before)),
        ("--cold", Step::ResumeOnTarget.crash_at(When::After)),
    ];
    let mut last = 0;
    for (mode, point) in &points {
        let point = &format!("{mode} {point}");
        let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
        let from = v[0]["host"].as_str().unwrap().to_string();
        let to = if from == "hostA" { "hostC" } else { "hostA" };
        let at = point.split_once(' ').unwrap().1;
        let m = crash_and_settle(&lab, &mut app, &vm, to, mode, at);
        let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
        let host = v[0]["host"].as_str().unwrap().to_string();
        let (here, there) = if host == "hostA" { (&a, &c) } else { (&c, &a) };
        assert_eq!(placed(here, there, &vm), (true, true), "{point}: {m:#}");
        assert!(disk(here).exists(), "{point}: no disk where it runs");
        let went_back = host == from;
        if went_back {
            assert!(
                !disk(there).exists(),
                "{point}: the target's copy is left: {m:#}"
            );
        } else {
            assert!(
                disk(there).exists(),
                "{point}: the source's disk was removed by recovery"
            );
            std::fs::remove_file(disk(there)).unwrap();
        }
        // It writes on, from where it was.
        let now = wait_for(&format!("{point}: the guest to write on"), BOOT, || {
            seq(&lab, &client.ns, ip).filter(|n| *n > last)
        })
        .unwrap_or_else(|e| {
            let id = m["id"].to_string();
            panic!(
                "{e}\njournal: {}\nserial on {host}: {}",
                app.cli_ok(&["migrations", &id]).unwrap_or_default(),
                serial_tail(here, &vm)
            )
        });
        eprintln!(
            "crash at {point}: {} -> runs on {host}, writing ({last} -> {now})",
            m["state"]
        );
        last = now;
    }
    let last = stop_writer(&lab, &client.ns, ip);
    let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
    let here = if v[0]["host"] == "hostA" { &a } else { &c };
    app.cli_ok(&["vm", "stop", &vm]).unwrap();
    assert_every_number(&lab, &disk(here), last);
}

/// Stops the guest's writer (it unmounts its file system): the last number it reported.
fn stop_writer(lab: &Lab, ns: &str, ip: Ipv4Addr) -> u64 {
    let get = |path: &str| {
        lab.exec(
            ns,
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "5",
                &format!("http://{ip}/{path}"),
            ],
        )
    };
    get("cgi-bin/stop").unwrap();
    wait_for(
        "the guest to unmount its disk",
        Duration::from_secs(30),
        || get("stopped").ok().filter(|s| s.trim() == "clean"),
    )
    .unwrap();
    seq(lab, ns, ip).unwrap()
}

/// The numbers on `disk` are 1, 2, 3, ... and at least up to `last`, the last reported.
fn assert_every_number(lab: &Lab, disk: &Path, last: u64) {
    let numbers = numbers_on(lab, disk);
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "the numbers on {} are not 1, 2, 3, ...",
        disk.display()
    );
    assert!(
        numbers.len() as u64 >= last,
        "the guest reported {last} as written, {} holds {}",
        disk.display(),
        numbers.len()
    );
}

/// The last lines of `vm`'s console on host `h`.
fn serial_tail(h: &netmigrate_lab::Host, vm: &str) -> String {
    let log =
        std::fs::read_to_string(h.dir.join(format!("run/{vm}.serial.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The sequence numbers on a disk guest's stopped disk, its file system checked clean first.
fn numbers_on(lab: &Lab, disk: &Path) -> Vec<u64> {
    let part = lab.dir.join(format!(
        "{}.ext4",
        disk.file_name().unwrap().to_string_lossy()
    ));
    data_partition(disk, &part).unwrap();
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /seq"])
        .arg(&part)
        .output()
        .unwrap();
    let n = String::from_utf8_lossy(&cat.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let _ = std::fs::remove_file(&part);
    n
}

/// What cannot carry the disk leaves the VM where it was, writing on its own disk: a target
/// without room for the copy is refused before anything moves (by placement, which counts
/// the room there; the engine's own check is the unit tests'); a mirror whose NBD connection
/// is cut (the target resets it) is rolled back, the target's partial copy removed.
#[test]
fn no_room_and_a_cut_mirror_leave_the_vm_on_its_source_with_its_disk() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    // hostB's own storage holds 16 MiB: less than the VM's data.
    let b = lab.host_with_storage("B", Some(16)).unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let app = lab.appliance(&[&a, &b, &c]).unwrap();
    let (vm, ip) = disk_vm(&app, &a, 7, 48);
    app.cli_ok(&["vm", "start", &vm, "--on", "hostA"]).unwrap();
    wait_http(&lab, &client.ns, ip);
    let disk = |h: &netmigrate_lab::Host| h.dir.join("disks").join(format!("{vm}.qcow2"));

    let out = app
        .cli(&["migrate", &vm, "--to", "hostB", "--live", "--json"])
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "moved to a host without room: {said}"
    );
    // Placement counts the room of each host's image directory (here its local storage).
    assert!(
        said.contains("disk: needs") && said.contains("16 MiB free"),
        "{said}"
    );
    assert!(
        json(&app.cli_ok(&["migrations", "--json"]).unwrap())
            .as_array()
            .unwrap()
            .is_empty(),
        "a refusal up front opens no migration"
    );
    eprintln!("refused: {}", said.trim());

    // The mirror slowed to 50 Mbit/s (48 MiB take about 8 s), and cut once it runs: hostC
    // resets every packet to its NBD ports.
    lab.exec(
        &a.ns,
        "tc",
        &[
            "qdisc", "add", "dev", "up0", "root", "tbf", "rate", "50mbit", "burst", "64kb",
            "latency", "500ms",
        ],
    )
    .unwrap();
    let before = seq(&lab, &client.ns, ip).unwrap();
    let out = std::thread::scope(|s| {
        let mv = s.spawn(|| {
            app.cli(&[
                "migrate",
                &vm,
                "--to",
                "hostC",
                "--live",
                "--no-probe",
                "--json",
            ])
            .unwrap()
        });
        wait_for("the mirror to start", BOOT, || {
            let v = json(&app.cli_ok(&["migrations", "--json"]).ok()?);
            let id = v[0]["id"].as_i64()?;
            let m = json(
                &app.cli_ok(&["migrations", &id.to_string(), "--json"])
                    .ok()?,
            );
            m["steps"]
                .as_array()?
                .iter()
                .any(|s| s["step"] == "mirror disks")
                .then_some(())
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        lab.exec(
            &c.ns,
            "nft",
            &["add table inet nbdcut; add chain inet nbdcut in { type filter hook input priority 0; } ; \
               add rule inet nbdcut in tcp dport 60000-64999 reject with tcp reset"],
        )
        .unwrap();
        mv.join().unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "the cut move succeeded: {text}");
    let m = &json(&text)["migrations"][0];
    assert_eq!(m["state"], "rolled-back", "{m:#}");
    let reason = m["reason"].as_str().unwrap();
    assert!(reason.contains("mirror"), "{reason}");
    eprintln!("cut mid-mirror: {reason}");
    assert_eq!(placed(&a, &c, &vm), (true, true), "{m:#}");
    assert!(!disk(&c).exists(), "the target's partial copy is left");
    // The guest writes on, on its own disk.
    wait_for("the guest to write on after the cut", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n > before + 20)
    })
    .unwrap();
    lab.exec(&c.ns, "nft", &["delete table inet nbdcut"])
        .unwrap();
    lab.exec(&a.ns, "tc", &["qdisc", "del", "dev", "up0", "root"])
        .unwrap();
    let last = stop_writer(&lab, &client.ns, ip);
    // Released: the appliance forgets it, it runs on where it is, unmanaged.
    app.cli_ok(&["vm", "release", &vm]).unwrap();
    let v = &vm_seen(&app, &vm);
    assert_eq!(
        (v["managed"].clone(), v["host"].clone()),
        (json("false"), json("\"hostA\"")),
        "{v:#}"
    );
    assert!(common::runs_on(&a, &vm), "the release stopped it");
    assert_every_number(&lab, &disk(&a), last);
}

/// A QEMU guest its operator started by hand on hostA, with a command line of their own (its
/// disk a `-drive` on hostA's local storage, its own tap put on the switch by hand, QMP where
/// they chose): `vms` shows it unmanaged; `vm adopt` makes it managed as it runs (no restart:
/// it keeps writing); it then moves live to hostC with its disk, the target's QEMU started
/// from its own command line. A QEMU without a QMP socket, and a name already managed, are
/// refused, saying why.
#[test]
fn a_qemu_guest_started_by_hand_is_adopted_and_moved_live_with_its_disk() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();
    let client = lab.client().unwrap();
    let app = lab.appliance(&[&a, &c]).unwrap();
    let (vm, ip, mac) = ("hand8", Ipv4Addr::new(10, 213, 0, 28), "52:54:00:d5:00:28");
    boot_disk(
        &a.dir.join("disks").join(format!("{vm}.qcow2")),
        &format!("nm_ip={ip}/24 nm_name={vm} nm_disk={DATA_PARTITION}"),
        64,
        0,
        1024,
    )
    .unwrap();
    // The operator's own way: their tap, their QEMU, their QMP socket, their switch port.
    let d = LOCAL_DISKS;
    lab.ssh(
        &client.ns,
        &a,
        &format!(
            "ip tuntap add tap-{vm} mode tap && ip link set tap-{vm} up && \
             qemu-system-x86_64 -name {vm} -machine accel=tcg -m 128 -nodefaults -vga none \
             -drive file={d}/{vm}.qcow2,if=virtio,format=qcow2 \
             -netdev tap,id=net0,ifname=tap-{vm},script=no,downscript=no \
             -device virtio-net-pci,netdev=net0,mac={mac} \
             -serial file:{d}/{vm}.console -qmp unix:{d}/{vm}.qmp,server=on,wait=off -display none \
             -daemonize && \
             qemu-system-x86_64 -name noqmp -machine accel=tcg -m 64 -nodefaults -display none -S -daemonize"
        ),
    )
    .unwrap();
    a.ovs
        .add_port(netmigrate_lab::host::BRIDGE, &format!("tap-{vm}"), None)
        .unwrap();
    wait_http(&lab, &client.ns, ip);
    wait_for("the hand-started guest to write", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n >= 10)
    })
    .unwrap();
    let v = &vm_seen(&app, vm);
    assert_eq!(v["managed"], false, "{v:#}");
    assert_eq!(v["host"], "hostA", "{v:#}");

    // Refused: no QMP to drive it by.
    let out = app.cli(&["vm", "adopt", "noqmp", "--on", "hostA"]).unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("no QMP socket"),
        "{said}"
    );

    let before = seq(&lab, &client.ns, ip).unwrap();
    // Its static address: the appliance never routed for it, so the operator says it.
    let adopted = json(
        &app.cli_ok(&[
            "vm",
            "adopt",
            vm,
            "--on",
            "hostA",
            "--ip",
            &ip.to_string(),
            "--json",
        ])
        .unwrap(),
    );
    eprintln!("adopted: {adopted:#}");
    let def = &adopted[0];
    assert_eq!(def["host"], "hostA", "{def:#}");
    assert_eq!(def["state"], "running", "{def:#}");
    assert_eq!(def["def"]["ip"], ip.to_string(), "{def:#}");
    assert_eq!(def["def"]["mac"], mac, "{def:#}");
    assert_eq!(
        def["def"]["adopted"]["port"],
        format!("tap-{vm}"),
        "{def:#}"
    );
    assert_eq!(
        def["def"]["disks"][0]["path"],
        format!("{d}/{vm}.qcow2"),
        "{def:#}"
    );
    assert_eq!(def["def"]["disks"][0]["format"], "qcow2", "{def:#}");
    // Untouched: it writes on.
    wait_for("the adopted guest to write on", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n > before + 10)
    })
    .unwrap();
    assert_eq!(vm_seen(&app, vm)["managed"], true);
    let out = app.cli(&["vm", "adopt", vm, "--on", "hostA"]).unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("managed already"),
        "{said}"
    );

    // Moved live, with its disk, like any VM.
    let probe = Prober::start(
        &client.ns,
        SocketAddr::new(ip.into(), 80),
        Duration::from_millis(10),
        Duration::from_millis(100),
    )
    .unwrap();
    let out = app
        .cli(&["migrate", vm, "--to", "hostC", "--live", "--json"])
        .unwrap();
    let report = probe.finish();
    let m = &migrated(&out);
    assert_eq!(m["state"], "done", "{m:#}");
    assert!(step_names(m).contains(&"mirror disks"), "{m:#}");
    eprintln!(
        "the adopted guest moved live: break {:?} (probe), QEMU downtime {} ms",
        report.break_time, m["detail"]["downtime_ms"]
    );
    assert!(common::runs_on(&c, vm), "not on hostC");
    assert!(!common::runs_on(&a, vm), "still on hostA");
    // Its port on hostC is the driver's own; its operator's on hostA is gone.
    assert!(
        common::ports(&c).contains(&format!("nm-{vm}")),
        "its port on hostC: {:?}",
        common::ports(&c)
    );
    assert!(!common::ports(&a).contains(&format!("tap-{vm}")));
    let v = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
    assert_eq!(v[0]["def"]["adopted"]["port"], format!("nm-{vm}"), "{v:#}");
    assert_eq!(v[0]["def"]["adopted"]["host"], "hostC", "{v:#}");
    let before = seq(&lab, &client.ns, ip).unwrap();
    wait_for("the adopted guest to write on its target", BOOT, || {
        seq(&lab, &client.ns, ip).filter(|n| *n > before + 10)
    })
    .unwrap();
    let last = stop_writer(&lab, &client.ns, ip);
    app.cli_ok(&["vm", "stop", vm]).unwrap();
    assert_every_number(&lab, &c.dir.join("disks").join(format!("{vm}.qcow2")), last);
}
