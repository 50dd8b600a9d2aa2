//! Provisioning with real parts: boot files fetched by tftp-hpa's and curl's clients; diskless
//! QEMU machines boot from the appliance with QEMU's iPXE ROM (DHCP, then TFTP, then HTTP),
//! run the installer, call back with a one-time token and become hosts with collected facts.

use std::time::Duration;

use netmigrate_lab::sys::wait_for;
use netmigrate_lab::{require_lab, Lab};

const AUTO_MAC: &str = "52:54:00:aa:00:01";
const MANUAL_MAC: &str = "52:54:00:bb:00:02";
/// Taken by the rule's MAC prefix, but with less memory than the rule requires.
const SMALL_MAC: &str = "52:54:00:aa:00:03";

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// Files compare by content; a short digest keeps a failure's message readable.
fn sha(b: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    format!("{} bytes, {:016x}", b.len(), h.finish())
}

/// The lab's appliance config with boot serving and provisioning: machines with QEMU's MAC
/// prefix 52:54:00:aa and at least 384 MiB of memory are accepted once commissioned, others
/// wait for the operator.
fn config(lab: &Lab) -> String {
    let state_dir = lab.appliance_state_dir().unwrap();
    let key = lab.client_key().unwrap();
    format!(
        "{}\n[dhcp.pxe]\nipxe_script = \"tftp://10.213.0.1/netmigrate.ipxe\"\n\n\
         [provisioning]\nnetwork = \"lab\"\npool = [\"10.213.0.60\", \"10.213.0.69\"]\n\
         hostname = \"hv{{n}}\"\nauto_accept_mac = [\"52:54:00:aa\"]\nmin_memory = \"384M\"\n\
         cmdline = \"console=ttyS0\"\n\n\
         [provisioning.host]\nssh_key = \"{}\"\nhypervisor = \"qemu\"\nbridge = \"br0\"\n",
        netmigrate_lab::appliance::network_config(&state_dir),
        key.private.display()
    )
}

/// Puts the installer where the config says: state_dir/boot/installer.
fn install_installer(lab: &Lab) -> std::path::PathBuf {
    let src = netmigrate_lab::pxe::installer().unwrap();
    let dst = lab.appliance_state_dir().unwrap().join("boot/installer");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    dst
}

#[test]
fn boot_files_come_by_tftp_and_http_and_nothing_else_does() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let dir = install_installer(&lab);
    let app = lab.appliance_with(&config(&lab)).unwrap();
    let cl = lab.client().unwrap();
    let kernel = std::fs::read(dir.join("vmlinuz")).unwrap();
    let initrd = std::fs::read(dir.join("initrd.img")).unwrap();
    let out = lab.subdir("fetched").unwrap();
    let got = |name: &str| std::fs::read(out.join(name)).unwrap_or_default();

    // tftp-hpa, binary mode, default 512-byte blocks (a kernel needs more than 65535 of them:
    // the block number rolls over).
    lab.exec(
        &cl.ns,
        "tftp",
        &[
            "10.213.0.1",
            "-m",
            "binary",
            "-c",
            "get",
            "installer/vmlinuz",
            out.join("k").to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(
        sha(&got("k")),
        sha(&kernel),
        "tftp-hpa's copy of the kernel"
    );
    // curl with a block size as iPXE asks for (blksize, tsize negotiated).
    lab.exec(
        &cl.ns,
        "curl",
        &[
            "-sS",
            "--fail",
            "--tftp-blksize",
            "1432",
            "-o",
            out.join("i").to_str().unwrap(),
            "tftp://10.213.0.1/installer/initrd.img",
        ],
    )
    .unwrap();
    assert_eq!(
        sha(&got("i")),
        sha(&initrd),
        "curl's TFTP copy of the initrd"
    );
    // The chain script the appliance wrote for firmware that comes by TFTP.
    let chain = lab
        .exec(
            &cl.ns,
            "curl",
            &["-sS", "--fail", "tftp://10.213.0.1/netmigrate.ipxe"],
        )
        .unwrap();
    assert!(
        chain.contains("chain --replace --autofree http://10.213.0.1:8067/ipxe?mac=${net0/mac}"),
        "{chain}"
    );
    // HTTP.
    lab.exec(
        &cl.ns,
        "curl",
        &[
            "-sS",
            "--fail",
            "-o",
            out.join("h").to_str().unwrap(),
            "http://10.213.0.1:8067/boot/installer/vmlinuz",
        ],
    )
    .unwrap();
    assert_eq!(sha(&got("h")), sha(&kernel), "the kernel over HTTP");

    // Nothing outside the boot directory, by any path; no writes.
    let state_db = app.state_dir.join("state.db");
    assert!(state_db.exists());
    // What tftp-hpa says (a server's error comes on stdout or stderr, by version).
    let tftp_says = |cmd: &str, a: &str, b: &str| {
        let o = netmigrate_lab::netns::exec(&cl.ns, "tftp")
            .args(["10.213.0.1", "-m", "binary", "-c", cmd, a, b])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    let x = out.join("x");
    for name in ["../state.db", "installer/../../state.db", "/../state.db"] {
        let said = tftp_says("get", name, x.to_str().unwrap());
        assert!(
            said.contains("path leads out of the boot directory"),
            "{name}: {said}"
        );
    }
    let said = tftp_says("put", dir.join("vmlinuz").to_str().unwrap(), "new");
    assert!(said.contains("read-only"), "{said}");
    // Counted: two files and the chain script sent, three escapes and a write refused.
    assert_eq!(
        app.metric("netmigrate_tftp_total{kind=\"sent\"}").unwrap(),
        3.0
    );
    assert_eq!(
        app.metric("netmigrate_tftp_total{kind=\"refused\"}")
            .unwrap(),
        4.0
    );
    for url in [
        "http://10.213.0.1:8067/boot/../state.db",
        "http://10.213.0.1:8067/boot/installer/%2e%2e/%2e%2e/state.db",
    ] {
        let code = lab
            .exec(
                &cl.ns,
                "curl",
                &[
                    "-sS",
                    "--path-as-is",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    url,
                ],
            )
            .unwrap();
        assert!(code == "403" || code == "404", "{url}: {code}");
    }
}

#[test]
fn machines_boot_enrol_and_become_hosts() {
    require_lab!();
    let lab = Lab::new().unwrap();
    install_installer(&lab);
    let app = lab.appliance_with(&config(&lab)).unwrap();
    let cl = lab.client().unwrap();
    let m1 = lab
        .pxe_machine_with_disk("m1", AUTO_MAC, 512, Some(4))
        .unwrap();
    let m2 = lab.pxe_machine("m2", MANUAL_MAC, 512).unwrap();
    let m3 = lab
        .pxe_machine_with_disk("m3", SMALL_MAC, 256, Some(2))
        .unwrap();
    let host = |name: &str| {
        let v = json(&app.cli_ok(&["hosts", "--json"]).ok()?);
        v.as_array()?.iter().find(|h| h["name"] == name).cloned()
    };
    let ready_with_facts = |name: &str, m: &netmigrate_lab::pxe::Machine| {
        wait_for(
            &format!(
                "{name} to enrol and be collected (serial log {})",
                m.serial_log.display()
            ),
            Duration::from_secs(400),
            || host(name).filter(|h| h["status"] == "up" && !h["facts"].is_null()),
        )
        .unwrap()
    };

    // The small machine is commissioned: its installer reports its hardware, and it waits
    // below the rule's minimum, with the reason, no name and no address.
    let small = wait_for(
        &format!(
            "the small machine to be commissioned (serial log {})",
            m3.serial_log.display()
        ),
        Duration::from_secs(300),
        || {
            let v = json(&app.cli_ok(&["hosts", "--discovered", "--json"]).ok()?);
            v.as_array()?
                .iter()
                .find(|m| m["mac"] == SMALL_MAC && m["stage"] == "discovered")
                .filter(|m| !m["hardware"].is_null())
                .cloned()
        },
    )
    .unwrap();
    let hw = &small["hardware"];
    let mem = hw["memory_mib"].as_u64().unwrap();
    assert!((150..256).contains(&mem), "{small:#}");
    assert_eq!(
        (&hw["firmware"], &hw["arch"], &hw["cpus"]),
        (&"bios".into(), &"x86_64".into(), &1.into()),
        "{small:#}"
    );
    assert_eq!(hw["disks"][0]["name"], "vda", "{small:#}");
    assert_eq!(hw["disks"][0]["bytes"], 2u64 << 30, "{small:#}");
    assert_eq!(hw["disks"][0]["serial"], "NM-m3", "{small:#}");
    assert_eq!(
        (&hw["nics"][0]["mac"], &hw["nics"][0]["driver"]),
        (&SMALL_MAC.into(), &"e1000".into()),
        "{small:#}"
    );
    let waits = small["waits"].as_str().unwrap_or_default();
    assert!(
        waits.contains(&format!("memory {mem} MiB is below min_memory (384 MiB)")),
        "{small:#}"
    );
    let listing = app.cli_ok(&["hosts", "--discovered"]).unwrap();
    assert!(
        listing.contains("hardware: 1 CPU")
            && listing.contains("waits: MAC prefix 52:54:00:aa matches, but memory"),
        "{listing}"
    );
    // The installer says what it was told once the reply is in (after the report is kept).
    wait_for(
        "the small machine's installer to say so",
        Duration::from_secs(30),
        || {
            m3.serial()
                .contains("NM-INSTALLER: COMMISSIONED")
                .then_some(())
        },
    )
    .unwrap();
    // It keeps asking and keeps waiting: the iPXE script says why on its console.
    wait_for(
        "the small machine to be told why",
        Duration::from_secs(120),
        || m3.serial().contains("below min_memory").then_some(()),
    )
    .unwrap();
    lab.stop(m3.pid);

    // The manual machine is discovered, commissioned, and waits for the operator, with no
    // reservation.
    let discovered = wait_for(
        "the second machine to be discovered and commissioned",
        Duration::from_secs(300),
        || {
            let v = json(&app.cli_ok(&["hosts", "--discovered", "--json"]).ok()?);
            v.as_array()?
                .iter()
                .find(|m| m["mac"] == MANUAL_MAC && m["stage"] == "discovered")
                .filter(|m| !m["hardware"].is_null())
                .cloned()
        },
    )
    .unwrap();
    assert_eq!(discovered["waits"], "for the operator", "{discovered}");
    assert!(
        discovered["vendor_class"]
            .as_str()
            .unwrap_or("")
            .starts_with("PXEClient"),
        "{discovered}"
    );
    assert_eq!(discovered["arch"], 0, "BIOS firmware: {discovered}");

    // The auto-accepted one boots the installer, calls back, is pinned and collected.
    let h1 = ready_with_facts("hv1", &m1);
    assert_eq!(h1["address"], "10.213.0.60");
    assert_eq!(
        (&h1["enrolled"], &h1["stage"]),
        (&true.into(), &"ready".into())
    );
    assert!(h1["facts"]["cpus"].as_u64().unwrap() >= 1, "{h1}");
    assert!(h1["host_key"].as_str().unwrap().starts_with("ssh-ed25519 "));
    let serial = m1.serial();
    assert!(serial.contains("NM-INSTALLER: ENROLLED"), "{serial}");
    // It was commissioned first, in a boot of its own, with its disk in the report.
    assert!(
        serial.contains("NM-INSTALLER: COMMISSIONED") && serial.contains(r#""serial":"NM-m1""#),
        "{serial}"
    );
    let events = app.cli_ok(&["events", "--limit", "500"]).unwrap();
    assert!(
        events.contains(&format!("{AUTO_MAC} commissioned from")),
        "{events}"
    );
    // Its name follows it in DNS.
    let a = lab
        .exec(
            &cl.ns,
            "dig",
            &["+short", "@10.213.0.1", "hv1.lab.internal"],
        )
        .unwrap();
    assert_eq!(a.trim(), "10.213.0.60");

    // The manual one is still waiting: no reservation, no name.
    let res = app.cli_ok(&["reservations", "--json"]).unwrap();
    assert!(!res.contains(MANUAL_MAC), "{res}");
    let listing = app.cli_ok(&["hosts"]).unwrap();
    assert!(
        listing.contains(MANUAL_MAC) && listing.contains("discovered"),
        "{listing}"
    );

    // Its installer's token is used up: a replay is refused, and so is a made-up one.
    let token = serial
        .split_whitespace()
        .find_map(|w| w.strip_prefix("nm_token="))
        .expect("the kernel logs its command line")
        .to_string();
    for (t, says) in [(token.as_str(), "already used"), ("0000", "unknown")] {
        let body = format!(
            r#"{{"token":"{t}","host_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv8XQVzG7vvzWJGYZkBSsyq9/fA9qNhj6Z6wXBZhMRF"}}"#
        );
        let out = lab
            .exec(
                &cl.ns,
                "curl",
                &[
                    "-sS",
                    "-w",
                    " %{http_code}",
                    "-H",
                    "content-type: application/json",
                    "--data",
                    &body,
                    "http://10.213.0.1:8067/enrol",
                ],
            )
            .unwrap();
        assert!(out.ends_with(" 403") && out.contains(says), "{t}: {out}");
    }
    assert_eq!(
        host("hv1").unwrap()["host_key"],
        h1["host_key"],
        "a refused call back changes no pinned key"
    );

    // Accepted by the operator, the waiting machine installs without a power cycle.
    let said = app.cli_ok(&["hosts", "accept", MANUAL_MAC]).unwrap();
    assert!(said.contains("accepted as hv2 at 10.213.0.61"), "{said}");
    let h2 = ready_with_facts("hv2", &m2);
    assert_eq!(h2["address"], "10.213.0.61");
    // Both are hosts like the configured ones now: collected by name, over their pinned keys.
    let c = json(
        &app.cli_ok(&["hosts", "collect", "hv1", "hv2", "--json"])
            .unwrap(),
    );
    assert_eq!(c.as_array().unwrap().len(), 2, "{c}");
    assert!(
        c.as_array().unwrap().iter().all(|r| r["error"].is_null()),
        "{c}"
    );
}

/// A machine behind a real BMC (OpenIPMI's ipmi_sim, IPMI 2.0 over LAN): the operator adds it
/// by MAC with its BMC before it ever booted; `hosts power` reads it off, powers it on (it
/// network-boots and is commissioned), cycles it (it boots again) and powers it off (its
/// QEMU is gone); a wrong password is refused with ipmitool's reason and changes nothing.
#[test]
fn a_machine_is_powered_through_its_bmc() {
    require_lab!();
    let lab = Lab::new().unwrap();
    install_installer(&lab);
    let app = lab.appliance_with(&config(&lab)).unwrap();
    let mac = "52:54:00:cc:00:05";
    let bmc_ip = "10.213.0.95";
    let m = lab
        .bmc_machine("m5", mac, 512, bmc_ip.parse().unwrap())
        .unwrap();
    let pw = m.password_file.display().to_string();
    let said = app
        .cli_ok(&[
            "hosts",
            "bmc",
            mac,
            "--ipmi",
            bmc_ip,
            "--user",
            "admin",
            "--password-file",
            &pw,
        ])
        .unwrap();
    assert!(
        said.contains(&format!("BMC IPMI admin@{bmc_ip}:623")),
        "{said}"
    );
    let power = |action: &str| {
        json(
            &app.cli_ok(&["hosts", "power", mac, action, "--json"])
                .unwrap(),
        )["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // ipmi_sim answers once it is up.
    let first = wait_for("the BMC to answer", Duration::from_secs(30), || {
        app.cli_ok(&["hosts", "power", mac, "status", "--json"])
            .ok()
    })
    .unwrap();
    assert_eq!(json(&first)["state"], "off", "{first}");
    assert!(m.qemu_pid().is_none());

    assert_eq!(power("on"), "on");
    let booted = wait_for(
        "the powered machine to be commissioned",
        Duration::from_secs(300),
        || {
            let v = json(&app.cli_ok(&["hosts", "--discovered", "--json"]).ok()?);
            v.as_array()?
                .iter()
                .find(|x| x["mac"] == mac && !x["hardware"].is_null())
                .cloned()
        },
    )
    .unwrap();
    assert_eq!(booted["hardware"]["nics"][0]["mac"], mac, "{booted:#}");
    let first_qemu = m.qemu_pid().expect("its QEMU runs");

    // A cycle: a new QEMU, booting again (the BMC starts a fresh one).
    assert_eq!(power("cycle"), "on");
    let again = wait_for(
        "the cycled machine to run again",
        Duration::from_secs(60),
        || m.qemu_pid().filter(|p| *p != first_qemu),
    )
    .unwrap();
    assert_ne!(again, first_qemu);

    // A wrong password: refused with the BMC's reason; the machine runs on.
    let bad = lab.subdir("bad-bmc").unwrap().join("password");
    std::fs::write(&bad, "wrong\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    app.cli_ok(&[
        "hosts",
        "bmc",
        mac,
        "--ipmi",
        bmc_ip,
        "--user",
        "admin",
        "--password-file",
        &bad.display().to_string(),
    ])
    .unwrap();
    let err = app.cli(&["hosts", "power", mac, "off"]).unwrap();
    assert!(!err.status.success());
    let text = String::from_utf8_lossy(&err.stderr);
    assert!(text.contains(&format!("IPMI admin@{bmc_ip}:623")), "{text}");
    assert_eq!(m.qemu_pid(), Some(again), "a refused off changed nothing");
    // A password file anyone can read is refused before the BMC is asked.
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = app
        .cli(&[
            "hosts",
            "bmc",
            mac,
            "--ipmi",
            bmc_ip,
            "--user",
            "admin",
            "--password-file",
            &bad.display().to_string(),
        ])
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("readable by everyone"));

    app.cli_ok(&[
        "hosts",
        "bmc",
        mac,
        "--ipmi",
        bmc_ip,
        "--user",
        "admin",
        "--password-file",
        &pw,
    ])
    .unwrap();
    assert_eq!(power("off"), "off");
    wait_for("its QEMU to end", Duration::from_secs(30), || {
        m.qemu_pid().is_none().then_some(())
    })
    .unwrap();
    let events = app.cli_ok(&["events", "--limit", "200"]).unwrap();
    assert!(
        events.contains("provision.enlisted") && events.contains("power on by IPMI admin@"),
        "{events}"
    );
}

/// An OVMF machine boots by UEFI HTTP boot: its firmware's PXE gets no file, then its HTTP
/// boot's DISCOVER (vendor class HTTPClient, architecture 16) is offered the URL of Debian's
/// ipxe.efi on the boot HTTP server with its vendor class echoed; iPXE then chains to the
/// appliance's script, and the commissioning installer reports UEFI firmware.
#[test]
fn an_ovmf_machine_boots_by_uefi_http_boot() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let installer = install_installer(&lab);
    std::fs::copy(
        netmigrate_lab::pxe::IPXE_EFI,
        installer.parent().unwrap().join("ipxe.efi"),
    )
    .unwrap();
    let config = config(&lab).replace("[dhcp.pxe]\n", "[dhcp.pxe]\nuefi_http = \"ipxe.efi\"\n");
    let app = lab.appliance_with(&config).unwrap();
    // Not taken by the rule's MAC prefix: it waits, commissioned, where the test reads it.
    let mac = "52:54:00:dd:00:07";
    let m = lab.uefi_machine("u1", mac, 512).unwrap();
    let seen = wait_for(
        &format!(
            "the UEFI machine to boot by HTTP and be commissioned (serial log {})",
            m.serial_log.display()
        ),
        Duration::from_secs(600),
        || {
            let v = json(&app.cli_ok(&["hosts", "--discovered", "--json"]).ok()?);
            v.as_array()?
                .iter()
                .find(|x| x["mac"] == mac && !x["hardware"].is_null())
                .cloned()
        },
    )
    .unwrap();
    assert_eq!(seen["hardware"]["firmware"], "uefi", "{seen:#}");
    let serial = m.serial();
    assert!(
        serial.contains("http://10.213.0.1:8067/boot/ipxe.efi"),
        "the firmware fetched iPXE by HTTP: {serial}"
    );
}
