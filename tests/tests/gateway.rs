//! The gateway VM image: booted under QEMU on the lab network with a config disk, it is the
//! lab's DHCP and DNS server: a client namespace gets an address and a name from it, and the
//! API answers (with its token) from the lab network.

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

    // The config disk: the lab network's config, with the API on the lab network.
    let etc = lab.subdir("image-etc").unwrap();
    let mut config =
        netmigrate_lab::appliance::network_config(std::path::Path::new("/var/lib/netmigrate"));
    config.push_str(
        "\n[api]\nlisten = \"10.213.0.1:7070\"\ntoken_file = \"/etc/netmigrate/api.token\"\n\
         \n[dhcp]\nconflict_check = false\n",
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
            .args(["-accel", "tcg", "-m", "512", "-smp", "1", "-nodefaults"])
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
}
