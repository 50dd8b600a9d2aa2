//! `make bench-deploy`: a bare machine (2 GiB, an empty 1 GiB disk) to a Xen host running a
//! VM, stage by stage, deployed by the appliance with the Xen profile (network boot,
//! commissioning, the installer writing and checking the image, the first boot's call back
//! and check), next to the same image written and booted by hand in the same run: the
//! machine running the appliance's installer from RAM (enrolled, no profile), then as an
//! operator would: the image through `ssh ... dd` onto the disk, its config area written with
//! the installer's own script (keeping the installer's host key, so the appliance's pinned key
//! holds), a power cycle into the disk (the boot device an operator sets on the BMC), its sshd
//! answering. Then, on each, a PVH guest started on it answering HTTP. Every figure is from the
//! machine's power-on. RAM deployment is not built yet.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::SUBNET_PREFIX;
use crate::sys::wait_for;
use crate::xen::{GUEST_INITRD, GUEST_KERNEL};
use crate::Lab;

const MAC: &str = "52:54:00:aa:00:51";
const NAME: &str = "hv1";
const IP: &str = "10.213.0.60";
const GUEST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 213, 0, 47);
const READY: Duration = Duration::from_secs(20 * 60);

/// One deployment's stages, seconds from power-on, in the order they happened.
struct Run {
    how: &'static str,
    stages: Vec<(String, f64)>,
}

pub fn run_all(runs: usize) -> Result<String> {
    let image = crate::pxe::host_image("xen")?;
    let installer = crate::pxe::installer()?;
    let art = crate::xen::artifacts()?;
    let mut all = Vec::new();
    for r in 0..runs {
        eprintln!("bench-deploy: round {} of {runs}", r + 1);
        all.push(one(&image, &installer, &art.dir, true)?);
        all.push(one(&image, &installer, &art.dir, false)?);
    }
    Ok(table(&all))
}

/// The appliance's config: network boot and provisioning; with `profile`, accepted machines
/// are deployed with the Xen image, else they enrol running the installer.
fn config(lab: &Lab, key: &Path, profile: bool) -> Result<String> {
    let profile = if profile {
        "default_profile = \"xen\"\n\n[[provisioning.profile]]\nname = \"xen\"\n\
         image = \"images/xen/host.img\"\nhypervisor = \"xen\"\n"
    } else {
        ""
    };
    Ok(format!(
        "{}\n[migration]\nprobe_interval = \"500ms\"\n\n\
         [dhcp.pxe]\nipxe_script = \"tftp://10.213.0.1/netmigrate.ipxe\"\n\n\
         [provisioning]\nnetwork = \"lab\"\npool = [\"10.213.0.60\", \"10.213.0.69\"]\n\
         hostname = \"hv{{n}}\"\nauto_accept_mac = [\"52:54:00:aa\"]\ncmdline = \"console=ttyS0\"\n\
         {profile}\n[provisioning.host]\nssh_key = \"{}\"\nhypervisor = \"xen\"\nbridge = \"br0\"\n\
         connect_timeout = \"30s\"\n",
        crate::appliance::network_config(&lab.appliance_state_dir()?),
        key.display()
    ))
}

fn one(image: &Path, installer: &Path, art: &Path, by_appliance: bool) -> Result<Run> {
    let lab = Lab::new()?;
    let client = lab.client()?;
    let boot = lab.appliance_state_dir()?.join("boot");
    for (src, dir, files) in [
        (installer, "installer", &["vmlinuz", "initrd.img"][..]),
        (image, "images/xen", &["host.img", "host.img.sha256"][..]),
    ] {
        std::fs::create_dir_all(boot.join(dir))?;
        for f in files {
            std::fs::copy(src.join(f), boot.join(dir).join(f))?;
        }
    }
    let key = art.join("keys/ctl_ed25519");
    let app = lab.appliance_with(&config(&lab, &key, by_appliance)?)?;
    let t0 = Instant::now();
    let at = |t: Instant| t.duration_since(t0).as_secs_f64();
    let m = lab.deploy_machine("m1", MAC, 2048, 1)?;
    let mut stages: Vec<(String, f64)> = Vec::new();
    // The stages as `hosts` shows them, polled each second, until it is ready.
    wait_for(&format!("{NAME} to be ready"), READY, || {
        let listing = app.cli_ok(&["hosts"]).ok()?;
        let stage = crate::pxe::stage_in(&listing, MAC, NAME, IP)?;
        if stages.last().map(|(s, _)| s) != Some(&stage) {
            stages.push((stage.clone(), at(Instant::now())));
        }
        if stage == "failed" {
            return Some(Err(anyhow::anyhow!("{listing}")));
        }
        (stage == "ready").then_some(Ok(()))
    })
    .with_context(|| m.serial())??;
    let m = if by_appliance {
        m
    } else {
        // By hand, from the installer's shell over SSH: the image onto the disk, the host's
        // own config area (the installer's host key, the appliance's key, its address), a
        // power cycle into the disk, its sshd answering.
        let ssh = |cmd: &str| crate::pxe::ssh_deployed(&lab, &app.node.ns, &key, IP, cmd);
        let t = Instant::now();
        let sh = format!(
            "ssh {} -i {} root@{IP} 'dd of=/dev/vda bs=1M conv=fsync 2>/dev/null' < {}",
            crate::pxe::DEPLOYED_SSH.join(" "),
            key.display(),
            image.join("host.img").display()
        );
        crate::sys::run(crate::netns::exec(&app.node.ns, "sh").args(["-c", &sh]))
            .context("dd over ssh")?;
        stages.push(("image written (dd over ssh)".into(), at(Instant::now())));
        eprintln!("by hand: dd took {:.1} s", t.elapsed().as_secs_f64());
        ssh(&format!(
            "set -e; mkdir -p /tmp/host; cp /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub /tmp/host/; \
             cp /root/.ssh/authorized_keys /tmp/host/; \
             printf 'NAME={NAME}\\nIP={IP}/{SUBNET_PREFIX}\\nGW=10.213.0.1\\nDNS=10.213.0.1\\nDOMAIN=lab.internal\\nMAC={MAC}\\nBRIDGE=br0\\n' > /tmp/host/host.conf; \
             . /etc/nm/config-area.sh; config_area_write vda /tmp/host; sync"
        ))?;
        stages.push(("config area written".into(), at(Instant::now())));
        let m = lab.restart_machine(&m, "order=c")?;
        wait_for("the hand-deployed host's sshd", READY, || {
            ssh("xl info >/dev/null && ovs-vsctl br-exists br0 && echo up").ok()
        })?;
        stages.push((
            "rebooted: xl and its bridge answer".into(),
            at(Instant::now()),
        ));
        m
    };
    // A guest on it answering HTTP.
    for (from, to) in [
        (art.join("vmlinuz"), GUEST_KERNEL),
        (art.join("domu-initrd.img"), GUEST_INITRD),
    ] {
        crate::pxe::scp_deployed(&lab, &app.node.ns, &key, IP, &from, to)
            .context("the guest's files")?;
    }
    crate::xen::define_guest(&app, "web", GUEST_IP, 1, "pvh", &[])?;
    app.cli_ok(&["vm", "start", "web", "--on", NAME])?;
    let url = format!("http://{GUEST_IP}/");
    wait_for("the guest to answer", READY, || {
        lab.exec(
            &client.ns,
            "curl",
            &["-sS", "--fail", "--max-time", "2", &url],
        )
        .ok()
    })?;
    stages.push(("a VM on it answers".into(), at(Instant::now())));
    drop(m);
    if stages.is_empty() {
        bail!("no stage seen");
    }
    let how = if by_appliance {
        "netmigrate (disk, profile xen)"
    } else {
        "by hand (installer + dd over ssh + power cycle)"
    };
    eprintln!("{how}: {stages:?}");
    Ok(Run { how, stages })
}

fn table(runs: &[Run]) -> String {
    let mut o = String::from("bench-deploy: seconds from power-on (nested Xen under TCG)\n");
    for r in runs {
        o.push_str(&format!("\n{}\n", r.how));
        for (s, t) in &r.stages {
            o.push_str(&format!("  {t:>7.1}  {s}\n"));
        }
    }
    let total = |how: &str| -> Option<f64> {
        let rs: Vec<&Run> = runs.iter().filter(|r| r.how.starts_with(how)).collect();
        let last = |r: &&Run| r.stages.last().map_or(0, |(_, t)| (t * 1000.0) as u64);
        (!rs.is_empty()).then(|| crate::bench_disk::median_of(&rs, last) as f64 / 1000.0)
    };
    if let (Some(ours), Some(hand)) = (total("netmigrate"), total("by hand")) {
        o.push_str(&format!(
            "\nto a VM answering, median: netmigrate {ours:.1} s, by hand {hand:.1} s ({:.2}x)\n",
            ours / hand
        ));
    }
    o
}
