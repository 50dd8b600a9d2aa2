//! Auto-deployment end to end, with real parts: a bare lab machine (QEMU, iPXE ROM, an empty
//! disk) network-boots, is commissioned, accepted by a rule and deployed with the Xen host
//! image `make host-image` builds: the installer writes it to the disk and checks it, the
//! machine reboots from that disk into Xen (nested under TCG like the Xen lab's hosts), its
//! dom0 calls back, passes its check and is ready; a VM moved onto it with `netmigrate
//! migrate` answers the client, and DNS names the new host.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use netmigrate_lab::prober::Prober;
use netmigrate_lab::sys::wait_for;
use netmigrate_lab::xen::{XenHost, XenOpts};
use netmigrate_lab::{require_lab, Lab};

const MAC: &str = "52:54:00:aa:00:21";
/// The deployed machine's name and address: the first of the provisioning pool.
const NAME: &str = "hv1";
const IP: &str = "10.213.0.60";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// The Xen lab's appliance config (host xenA) with network boot and provisioning: machines
/// with QEMU's MAC prefix 52:54:00:aa and 1.5 GiB are deployed with profile `xen`; deployed
/// hosts let the Xen lab's key in, as its dom0s do.
fn config(lab: &Lab, hosts: &[XenHost]) -> String {
    let key = hosts[0].art.ctl_key();
    format!(
        "{}\n[dhcp.pxe]\nipxe_script = \"tftp://10.213.0.1/netmigrate.ipxe\"\n\n\
         [provisioning]\nnetwork = \"lab\"\npool = [\"10.213.0.60\", \"10.213.0.69\"]\n\
         hostname = \"hv{{n}}\"\nauto_accept_mac = [\"52:54:00:aa\"]\nmin_memory = \"1536M\"\n\
         cmdline = \"console=ttyS0\"\ndefault_profile = \"xen\"\ndeploy_timeout = \"20m\"\n\n\
         [[provisioning.profile]]\nname = \"xen\"\nimage = \"images/xen/host.img\"\nhypervisor = \"xen\"\n\n\
         [provisioning.host]\nssh_key = \"{}\"\nhypervisor = \"xen\"\nbridge = \"br0\"\nconnect_timeout = \"30s\"\n",
        netmigrate_lab::paper_xen::config(lab, hosts).unwrap(),
        key.display()
    )
}

/// The installer and the Xen host image where the config says, under the boot directory.
fn boot_files(lab: &Lab) {
    let boot = lab.appliance_state_dir().unwrap().join("boot");
    let installer = netmigrate_lab::pxe::installer().unwrap();
    let image = netmigrate_lab::pxe::host_image("xen").unwrap();
    for (src, dir, files) in [
        (installer, "installer", &["vmlinuz", "initrd.img"][..]),
        (image, "images/xen", &["host.img", "host.img.sha256"][..]),
    ] {
        std::fs::create_dir_all(boot.join(dir)).unwrap();
        for f in files {
            std::fs::copy(src.join(f), boot.join(dir).join(f)).unwrap();
        }
    }
}

#[test]
fn a_bare_machine_is_deployed_with_the_xen_profile_and_receives_a_vm() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let hosts = lab.xen_hosts(&["A"], &XenOpts::default()).unwrap();
    let client = lab.client().unwrap();
    boot_files(&lab);
    let app = lab.appliance_with(&config(&lab, &hosts)).unwrap();
    let started = Instant::now();
    let m = lab.deploy_machine("m1", MAC, 2048, 1).unwrap();

    // Its stages, each seen as `hosts` shows them, until it is ready.
    let mut seen: Vec<(String, u64)> = Vec::new();
    wait_for(
        "the deployed machine to be ready",
        Duration::from_secs(20 * 60),
        || {
            let listing = app.cli_ok(&["hosts"]).ok()?;
            let stage = listing
                .lines()
                .find(|l| l.contains(MAC))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
                .or_else(|| {
                    listing
                        .lines()
                        .any(|l| l.starts_with(NAME) && l.contains(IP))
                        .then(|| "ready".to_string())
                });
            if let Some(s) = &stage {
                if seen.last().map(|(l, _)| l) != Some(s) {
                    eprintln!("{s} after {} s", started.elapsed().as_secs());
                    seen.push((s.clone(), started.elapsed().as_secs()));
                }
                assert_ne!(s, "failed", "{listing}\n{}", m.serial());
            }
            (stage.as_deref() == Some("ready")).then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            app.cli_ok(&["hosts"]).unwrap_or_default(),
            m.serial()
        )
    });
    let stages: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        stages.contains(&"deploying") && stages.contains(&"rebooting"),
        "{stages:?}"
    );
    let serial = m.serial();
    assert!(serial.contains("image written and verified"), "{serial}");
    assert!(
        serial.contains("Xen version"),
        "it booted Xen from its disk:\n{serial}"
    );
    assert!(serial.contains("NM-HOST: READY name=hv1"), "{serial}");

    let events = app.cli_ok(&["events", "--limit", "500"]).unwrap();
    eprintln!("{events}");
    for e in [
        "provision.deploying",
        "provision.written",
        "provision.called_back",
        "provision.ready",
    ] {
        assert!(events.contains(e), "{e}: {events}");
    }
    assert!(events.contains("is ready: Xen 4.17"), "{events}");

    // A host like the others: facts collected over SSH with its pinned key.
    let inv = json(&app.cli_ok(&["hosts", "collect", NAME, "--json"]).unwrap());
    assert_eq!(inv[0]["facts"]["hypervisor"], "xen", "{inv:#}");
    // Its name in DNS.
    let a = lab
        .exec(
            &client.ns,
            "dig",
            &["+short", "@10.213.0.1", "hv1.lab.internal"],
        )
        .unwrap();
    assert_eq!(a.trim(), IP);

    // The guest's kernel and initramfs are files on every host its domains are restored on,
    // as an operator copies them: here with scp and the appliance's key, which the deployed
    // host lets in.
    let key = hosts[0].art.ctl_key();
    let opts = [
        "-i",
        key.to_str().unwrap(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ];
    let art = &hosts[0].art.dir;
    let on_hv1 = |cmd: &str| {
        let mut a = opts.to_vec();
        let at = format!("root@{IP}");
        a.extend([at.as_str(), cmd]);
        lab.exec(&app.node.ns, "ssh", &a)
    };
    on_hv1("mkdir -p /usr/share/nm").unwrap();
    let mut a = opts.to_vec();
    let (k, i) = (art.join("vmlinuz"), art.join("domu-initrd.img"));
    let (k2, i2) = (
        format!("root@{IP}:{}", netmigrate_lab::xen::GUEST_KERNEL),
        format!("root@{IP}:{}", netmigrate_lab::xen::GUEST_INITRD),
    );
    a.extend([k.to_str().unwrap(), k2.as_str()]);
    lab.exec(&app.node.ns, "scp", &a).unwrap();
    let mut a = opts.to_vec();
    a.extend([i.to_str().unwrap(), i2.as_str()]);
    lab.exec(&app.node.ns, "scp", &a).unwrap();

    // A VM started on the Xen lab's host moves onto it, cold through the image store,
    // under the client's prober.
    let ip = Ipv4Addr::new(10, 213, 0, 45);
    netmigrate_lab::xen::define_guest(&app, "web", ip, 1, "pvh", &[]).unwrap();
    app.cli_ok(&["vm", "start", "web", "--on", &hosts[0].config_name()])
        .unwrap();
    let url = format!("http://{ip}/");
    wait_for("the guest to answer", Duration::from_secs(240), || {
        lab.exec(
            &client.ns,
            "curl",
            &["-sS", "--fail", "--max-time", "2", &url],
        )
        .ok()
    })
    .unwrap();
    let probe = Prober::start(
        &client.ns,
        SocketAddr::new(ip.into(), 80),
        netmigrate_lab::paper_xen::PROBE_EVERY,
        netmigrate_lab::paper_xen::PROBE_TIMEOUT,
    )
    .unwrap();
    let out = app
        .cli(&["migrate", "web", "--to", NAME, "--cold", "--json"])
        .unwrap();
    let report = probe.finish();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let rec = json(&text)["migrations"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    if rec["state"] != "done" {
        eprintln!(
            "{}",
            on_hv1("cat /run/netmigrate/web/restore.log; xl info | grep -E 'caps|xen_commandline'; xl dmesg | tail -n 20; xl list")
                .unwrap_or_else(|e| e.to_string())
        );
        if std::env::var_os("NETMIGRATE_HOLD").is_some() {
            eprintln!("HOLDING: appliance namespace {}", app.node.ns);
            std::thread::sleep(Duration::from_secs(1800));
        }
    }
    assert_eq!(rec["state"], "done", "{rec:#}");
    let body = lab
        .exec(
            &client.ns,
            "curl",
            &["-sS", "--fail", "--max-time", "5", &url],
        )
        .unwrap();
    assert!(body.contains("hello from web"), "{body}");
    assert!(report.successes > 0, "{report:?}");
    eprintln!(
        "onto the deployed host, cold: the client's prober saw a {} ms break",
        report.break_time.as_millis()
    );
    let vms = json(&app.cli_ok(&["vm", "list", "--json"]).unwrap());
    let web = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .cloned()
        .unwrap();
    assert_eq!(web["host"], NAME, "{web:#}");
}

/// The listing's line for a machine in the ENROLLING table, and the `failed:` line under it.
fn enrolling<'a>(listing: &'a str, mac: &str) -> Option<(&'a str, Option<&'a str>)> {
    let mut lines = listing.lines();
    let line = lines.find(|l| l.contains(mac))?;
    let next = lines
        .next()
        .filter(|l| l.trim_start().starts_with("failed:"));
    Some((line, next))
}

/// Profiles that cannot deploy: one whose image does not have the SHA-256 beside it (8 MiB
/// of random bytes, as if damaged on its way into the boot directory), one larger than any
/// lab disk (a sparse 1.5 GiB file).
fn broken_images(lab: &Lab) {
    let boot = lab.appliance_state_dir().unwrap().join("boot/images");
    for d in ["damaged", "big"] {
        std::fs::create_dir_all(boot.join(d)).unwrap();
    }
    let mut bytes = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(boot.join("damaged/host.img"), &bytes).unwrap();
    let wrong = format!("{}  host.img\n", "0123456789abcdef".repeat(4));
    std::fs::write(boot.join("damaged/host.img.sha256"), &wrong).unwrap();
    let f = std::fs::File::create(boot.join("big/host.img")).unwrap();
    f.set_len(1536 << 20).unwrap();
    std::fs::write(boot.join("big/host.img.sha256"), &wrong).unwrap();
}

#[test]
fn a_damaged_image_or_a_small_disk_stops_the_deployment_with_the_reason() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let client = lab.client().unwrap();
    let _ = client;
    let boot = lab.appliance_state_dir().unwrap().join("boot/installer");
    std::fs::create_dir_all(&boot).unwrap();
    let installer = netmigrate_lab::pxe::installer().unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(installer.join(f), boot.join(f)).unwrap();
    }
    broken_images(&lab);
    let key = lab.client_key().unwrap();
    let cfg = format!(
        "{}\n[dhcp.pxe]\nipxe_script = \"tftp://10.213.0.1/netmigrate.ipxe\"\n\n\
         [provisioning]\nnetwork = \"lab\"\npool = [\"10.213.0.60\", \"10.213.0.69\"]\n\
         auto_accept_mac = [\"52:54:00:aa\"]\ncmdline = \"console=ttyS0\"\ndefault_profile = \"damaged\"\n\n\
         [[provisioning.profile]]\nname = \"damaged\"\nimage = \"images/damaged/host.img\"\nhypervisor = \"xen\"\n\n\
         [[provisioning.profile]]\nname = \"big\"\nimage = \"images/big/host.img\"\nhypervisor = \"qemu\"\n\n\
         [provisioning.host]\nssh_key = \"{}\"\nhypervisor = \"qemu\"\nbridge = \"br0\"\n",
        netmigrate_lab::appliance::network_config(&lab.appliance_state_dir().unwrap()),
        key.private.display()
    );
    let app = lab.appliance_with(&cfg).unwrap();
    const DAMAGED: &str = "52:54:00:aa:00:31";
    const SMALL: &str = "52:54:00:bb:00:32";
    let m1 = lab
        .pxe_machine_with_disk("m1", DAMAGED, 512, Some(1))
        .unwrap();
    let m2 = lab
        .pxe_machine_with_disk("m2", SMALL, 512, Some(1))
        .unwrap();

    // The one no rule takes is commissioned, then accepted with the big profile.
    wait_for(
        "the second machine's hardware",
        Duration::from_secs(300),
        || {
            let v = json(&app.cli_ok(&["hosts", "--discovered", "--json"]).ok()?);
            v.as_array()?
                .iter()
                .any(|m| m["mac"] == SMALL && !m["hardware"].is_null())
                .then_some(())
        },
    )
    .unwrap();
    let refused = app
        .cli(&["hosts", "accept", SMALL, "--profile", "esx"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("no [[provisioning.profile]] is named `esx`; there are: damaged, big"),
        "{refused:?}"
    );
    let said = app
        .cli_ok(&["hosts", "accept", SMALL, "--profile", "big"])
        .unwrap();
    assert!(said.contains("is deployed with profile big"), "{said}");

    let failed = |mac: &str| {
        let listing = app.cli_ok(&["hosts"]).ok()?;
        let (line, why) = enrolling(&listing, mac)?;
        line.contains(" failed ")
            .then(|| why.unwrap_or("").to_string())
    };
    let why = wait_for(
        "the damaged image's deployment to fail",
        Duration::from_secs(400),
        || failed(DAMAGED),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m1.serial()));
    assert!(
        why.contains("image checksum: the image's SHA-256 is 0123456789abcdef")
            && why.contains("left unbootable"),
        "{why}"
    );
    let why = wait_for(
        "the big image's deployment to fail",
        Duration::from_secs(400),
        || failed(SMALL),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m2.serial()));
    assert!(
        why.contains("disk too small: no disk holds the image and its config area")
            && why.contains("vda has 1073741824"),
        "{why}"
    );
    // Neither became a host; the damaged image's disk does not boot: its first MiB is zero.
    let hosts = json(&app.cli_ok(&["hosts", "--json"]).unwrap());
    assert_eq!(hosts.as_array().map(Vec::len), Some(0), "{hosts:#}");
    let disk = lab.subdir("m1").unwrap().join("disk.qcow2");
    let zero = std::process::Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2", "-c", "read -P 0 0 1M"])
        .arg(&disk)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&zero.stdout);
    assert!(
        said.contains("read 1048576/1048576") && !said.contains("Pattern verification failed"),
        "{said}"
    );
    let written = std::process::Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2", "-c", "read -P 0 1M 1M"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&written.stdout).contains("Pattern verification failed"),
        "the rest of the image was written: {written:?}"
    );
    let events = app.cli_ok(&["events", "--limit", "200"]).unwrap();
    assert!(events.contains("provision.failed"), "{events}");
    // Waiting for the operator, it says why on its console at each try.
    wait_for(
        "the failed machine to say why",
        Duration::from_secs(60),
        || {
            m1.serial()
                .contains("netmigrate hosts deploy hv")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", m1.serial()));
}
