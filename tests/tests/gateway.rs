//! The gateway VM image: booted under QEMU on the lab network with a config disk, it is the
//! lab's DHCP and DNS server (a client namespace gets an address and a name from it), its API
//! answers (with its token) on the lab network, and a VM moves from hostA to hostC through it
//! (driven by the CLI over TCP): SSH to the hosts, the image through its store, the network
//! re-pointed, the VM's name in its DNS.

use std::time::Duration;

use netmigrate_lab::netns;
use netmigrate_lab::sys::wait_for;
use netmigrate_lab::{require_lab, Lab};

const TOKEN: &str = "gateway-image-token-0123456789";

#[test]
fn the_appliance_image_boots_and_serves_the_lab() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let out = lab.subdir("image").unwrap();
    let (kernel, initrd) =
        netmigrate_lab::appliance_image::build(&out, &netmigrate_lab::netmigrate_bin().unwrap())
            .unwrap();

    let a = lab.host("A").unwrap();
    let c = lab.host("C").unwrap();

    // The config disk: the lab network's config with both hosts (their keys pinned, the SSH
    // key on the disk), and the API on the lab network.
    let etc = lab.subdir("image-etc").unwrap();
    let key = lab.client_key().unwrap().private;
    std::fs::copy(&key, etc.join("id_ed25519")).unwrap();
    std::fs::set_permissions(
        etc.join("id_ed25519"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut config =
        netmigrate_lab::appliance::network_config(std::path::Path::new("/var/lib/netmigrate"));
    for h in [&a, &c] {
        config.push_str(
            &netmigrate_lab::appliance::host_config(&lab, h, true)
                .unwrap()
                .replace(&key.display().to_string(), "/etc/netmigrate/id_ed25519"),
        );
    }
    config.push_str(
        "\n[api]\nlisten = \"10.213.0.1:7070\"\ntoken_file = \"/etc/netmigrate/api.token\"\n\
         \n[dhcp]\nconflict_check = false\n\n[ftp]\nreserve = \"16M\"\n",
    );
    std::fs::write(etc.join("netmigrate.toml"), config).unwrap();
    std::fs::write(etc.join("api.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(
        etc.join("api.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let disk = out.join("config.tar");
    netmigrate_lab::appliance_image::config_disk(&etc, &disk).unwrap();

    // The VM's NIC on the lab switch: a tap bridged to the namespace's link.
    let gw = lab.bare_node("gw").unwrap();
    for args in [
        &["link", "add", "br0", "type", "bridge"][..],
        &["link", "set", "eth0", "master", "br0"],
        &["tuntap", "add", "tgw", "mode", "tap"],
        &["link", "set", "tgw", "master", "br0"],
        &["link", "set", "tgw", "up"],
        &["link", "set", "br0", "up"],
    ] {
        netns::ip(&gw.ns, args).unwrap();
    }
    let serial = lab.dir.join("gateway.serial.log");
    lab.track(
        "gateway-vm",
        netns::exec(&gw.ns, "qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "1024", "-smp", "1", "-nodefaults"])
            .args(["-no-user-config", "-vga", "none", "-display", "none"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args([
                "-append",
                "console=ttyS0 quiet netmigrate.addr=eth0:10.213.0.1/24",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                disk.display()
            ))
            .args(["-netdev", "tap,id=n0,ifname=tgw,script=no,downscript=no"])
            .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:0a:01"])
            .args(["-serial", &format!("file:{}", serial.display())]),
    )
    .unwrap();

    // Its API answers on the lab network, with the token only.
    let cl = lab.client().unwrap();
    let status = wait_for("the gateway VM's API", Duration::from_secs(180), || {
        let o = netns::exec(&cl.ns, "curl")
            .args(["-sS", "--fail", "--max-time", "3", "-H"])
            .arg(format!("Authorization: Bearer {TOKEN}"))
            .arg("http://10.213.0.1:7070/v1/status")
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["networks"][0]["name"], "lab", "{v:#}");

    // A client gets an address from it, and a name.
    let d1 = lab.bare_node("d1").unwrap();
    // udhcpc says what it got on stderr ("lease of A obtained from S").
    let o = netns::exec(&d1.ns, "busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "2",
            "-x",
            "hostname:behind-gw",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "{said}\n{}",
        std::fs::read_to_string(&serial).unwrap_or_default()
    );
    eprintln!("udhcpc: {said}");
    let leased = said
        .lines()
        .find_map(|l| l.split("lease of ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no lease in: {said}"))
        .to_string();
    assert!(leased.starts_with("10.213.0."), "{leased}");
    let name = wait_for("the client's name in DNS", Duration::from_secs(20), || {
        let out = lab
            .exec(
                &cl.ns,
                "dig",
                &["@10.213.0.1", "+short", "+time=2", "behind-gw.lab.internal"],
            )
            .ok()?;
        Some(out.trim().to_string()).filter(|a| !a.is_empty())
    })
    .unwrap();
    assert_eq!(name, leased);
    let boot = std::fs::read_to_string(&serial).unwrap();
    assert!(boot.contains("NM: appliance netmigrate"), "{boot}");

    // A VM moved through it, with the CLI over TCP from the client's namespace.
    let token = lab.dir.join("cli.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The CLI over TCP from the client's namespace; `cli` also insists that it succeeded.
    let run = |args: &[&str]| {
        netns::exec(
            &cl.ns,
            &netmigrate_lab::netmigrate_bin()
                .unwrap()
                .display()
                .to_string(),
        )
        .args(["--url", "10.213.0.1:7070", "--token-file"])
        .arg(&token)
        .args(args)
        .output()
        .unwrap()
    };
    let cli = |args: &[&str]| {
        let o = run(args);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "netmigrate {args:?}: {text}{}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&serial).unwrap_or_default()
        );
        text
    };
    let (k, i) = (
        netmigrate_lab::guest::kernel().unwrap(),
        netmigrate_lab::guest::initramfs().unwrap(),
    );
    cli(&[
        "vm",
        "define",
        "vm1",
        "--mem",
        "128",
        "--mac",
        "52:54:00:d5:00:15",
        "--ip",
        "10.213.0.21",
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--append",
        "console=ttyS0 quiet nm_ip=10.213.0.21/24 nm_name=vm1",
    ]);
    cli(&["vm", "start", "vm1", "--on", "hostA"]);
    let hello = wait_for("vm1 to answer", Duration::from_secs(120), || {
        lab.curl(&cl.ns, "http://10.213.0.21/").ok()
    })
    .unwrap();
    assert!(hello.contains("hello from vm1"), "{hello}");
    let moved: serde_json::Value = serde_json::from_str(&cli(&[
        "migrate", "vm1", "--to", "hostC", "--cold", "--json",
    ]))
    .unwrap();
    let m = &moved["migrations"][0];
    assert_eq!(m["state"], "done", "{m:#}");
    eprintln!("moved through the gateway VM: break {} ms", m["break_ms"]);
    assert!(lab
        .curl(&cl.ns, "http://10.213.0.21/")
        .unwrap()
        .contains("hello from vm1"));
    assert_eq!(
        lab.exec(
            &cl.ns,
            "dig",
            &["@10.213.0.1", "+short", "vm1.lab.internal"]
        )
        .unwrap()
        .trim(),
        "10.213.0.21"
    );
    let vms: serde_json::Value = serde_json::from_str(&cli(&["vm", "list", "--json"])).unwrap();
    assert_eq!(vms[0]["host"], "hostC", "{vms:#}");

    // A VM whose state the store (this VM's RAM) cannot take is refused before it is paused:
    // one clear line, and it runs on.
    cli(&[
        "vm",
        "define",
        "vm2",
        "--mem",
        "4096",
        "--mac",
        "52:54:00:d5:00:16",
        "--ip",
        "10.213.0.22",
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--append",
        "console=ttyS0 quiet nm_ip=10.213.0.22/24 nm_name=vm2",
    ]);
    cli(&["vm", "start", "vm2", "--on", "hostA"]);
    wait_for("vm2 to answer", Duration::from_secs(120), || {
        lab.curl(&cl.ns, "http://10.213.0.22/").ok()
    })
    .unwrap();
    let o = run(&["migrate", "vm2", "--to", "hostC", "--cold", "--json"]);
    assert!(!o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["migrations"][0];
    assert!(
        m["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("the image store has"),
        "{m:#}"
    );
    let steps: Vec<&str> = m["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(!steps.contains(&"pause source"), "{steps:?}");
    assert!(lab
        .curl(&cl.ns, "http://10.213.0.22/")
        .unwrap()
        .contains("hello from vm2"));
}
