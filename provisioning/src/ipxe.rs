//! The iPXE scripts a machine gets, by where it is in its enrolment.

/// What the installer needs to know, beside its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installer {
    /// Paths of the kernel and initramfs under the boot directory.
    pub kernel: String,
    pub initrd: String,
    /// Extra kernel arguments ("console=ttyS0").
    pub cmdline: String,
    /// The appliance's SSH public key ("ssh-ed25519 AAAA... comment"): the installer's sshd
    /// lets it in as root.
    pub ssh_key: String,
}

/// Seconds a machine waiting for acceptance waits before it asks again.
pub const WAIT_S: u32 = 10;

/// For a machine nobody accepted yet: say so (and `why`, when a rule's requirements keep it
/// waiting) on its console and ask again later, so that accepting it needs no power cycle.
pub fn wait(base: &str, mac: &str, why: Option<&str>) -> String {
    let mut says = vec![format!(
        "{mac} is discovered and waits to be accepted (netmigrate hosts accept {mac})"
    )];
    says.extend(why.map(str::to_string));
    waiting(base, mac, &says)
}

/// Says each line of `says` on the machine's console and asks for its script again in
/// `WAIT_S` seconds.
pub fn waiting(base: &str, mac: &str, says: &[String]) -> String {
    let says: String = says
        .iter()
        .map(|l| format!("echo netmigrate: {}\n", l.replace('\n', " ")))
        .collect();
    format!("#!ipxe\n{says}sleep {WAIT_S}\nchain --replace --autofree {base}/ipxe?mac={mac}\n")
}

/// The installer's kernel arguments with the appliance's key: spaces inside a kernel
/// argument cannot be quoted, so the key's type and body are joined with a comma and its
/// comment is left out.
fn key_arg(ssh_key: &str) -> String {
    let mut key = ssh_key.split_whitespace();
    format!(
        "{},{}",
        key.next().unwrap_or_default(),
        key.next().unwrap_or_default()
    )
}

/// The script that boots the installer with `args` on its kernel command line.
fn installer(base: &str, i: &Installer, says: &str, args: &str) -> String {
    let initrd_name = i.initrd.rsplit('/').next().unwrap_or(&i.initrd);
    format!(
        "#!ipxe\necho netmigrate: {says}\n\
         kernel {base}/boot/{kernel} initrd={initrd_name} {cmdline} {args}\n\
         initrd {base}/boot/{initrd}\nboot\n",
        kernel = i.kernel,
        initrd = i.initrd,
        cmdline = i.cmdline,
    )
    .replace("  ", " ")
}

/// For an accepted machine: the installer, with its name, one-time token and where to call.
pub fn install(base: &str, name: &str, token: &str, i: &Installer) -> String {
    installer(
        base,
        i,
        &format!("installing {name}"),
        &format!(
            "nm_name={name} nm_token={token} nm_callback={base}/enrol nm_key={}",
            key_arg(&i.ssh_key)
        ),
    )
}

/// For a machine to commission: the installer, told to report the machine's hardware with
/// its one-time token and boot again.
pub fn commission(base: &str, mac: &str, token: &str, i: &Installer) -> String {
    installer(
        base,
        i,
        &format!("commissioning {mac}"),
        &format!("nm_mode=commission nm_token={token} nm_callback={base}/commission"),
    )
}

/// What a machine deployed to its disk is given, beside its name and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// The image's path under the boot directory, its size and SHA-256 (hex).
    pub image: String,
    pub bytes: u64,
    pub sha256: String,
    /// The disk to write (a name like "sda", or a serial); empty: the first that fits.
    pub disk: String,
    /// The host's network: its address with the prefix ("10.0.0.50/24"), the router, the
    /// name server and the domain ("" when none).
    pub address: String,
    pub gateway: String,
    pub dns: String,
    pub domain: String,
    /// The Open vSwitch bridge the deployed host puts its address on.
    pub bridge: String,
}

/// For a machine to deploy: the installer, told to write the image to the disk, check it,
/// report with its one-time token and reboot into it.
pub fn deploy(base: &str, name: &str, token: &str, i: &Installer, d: &Deploy) -> String {
    let opt = |k: &str, v: &str| {
        if v.is_empty() {
            String::new()
        } else {
            format!(" {k}={v}")
        }
    };
    installer(
        base,
        i,
        &format!("deploying {name}"),
        &format!(
            "nm_mode=deploy nm_name={name} nm_token={token} nm_callback={base}/deployed nm_key={key} \
             nm_image={base}/boot/{image} nm_size={bytes} nm_sha256={sha}{disk} nm_ip={ip}{gw}{dns}{domain} nm_bridge={bridge}",
            key = key_arg(&i.ssh_key),
            image = d.image,
            bytes = d.bytes,
            sha = d.sha256,
            disk = opt("nm_disk", &d.disk),
            ip = d.address,
            gw = opt("nm_gw", &d.gateway),
            dns = opt("nm_dns", &d.dns),
            domain = opt("nm_domain", &d.domain),
            bridge = d.bridge,
        ),
    )
}

/// For a machine whose boot this appliance does not serve (refused, or not enrolling here):
/// iPXE goes on with its next boot device.
pub fn skip(why: &str) -> String {
    format!("#!ipxe\necho netmigrate: {why}\nexit\n")
}

/// The chain script at the TFTP root: firmware that was given it over TFTP comes to HTTP.
pub fn chain(base: &str) -> String {
    format!("#!ipxe\nchain --replace --autofree {base}/ipxe?mac=${{net0/mac}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installer_script_carries_token_name_and_key() {
        let i = Installer {
            kernel: "installer/vmlinuz".into(),
            initrd: "installer/initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            ssh_key: "ssh-ed25519 AAAAC3Nza netmigrate@appliance".into(),
        };
        let s = install("http://10.0.0.1:8067", "hv1", "tok", &i);
        assert_eq!(
            s,
            "#!ipxe\necho netmigrate: installing hv1\n\
             kernel http://10.0.0.1:8067/boot/installer/vmlinuz initrd=initrd.img console=ttyS0 nm_name=hv1 nm_token=tok nm_callback=http://10.0.0.1:8067/enrol nm_key=ssh-ed25519,AAAAC3Nza\n\
             initrd http://10.0.0.1:8067/boot/installer/initrd.img\nboot\n"
        );
        assert!(wait("http://a", "52:54:00:00:00:01", None)
            .contains("chain --replace --autofree http://a/ipxe?mac=52:54:00:00:00:01"));
        assert!(wait(
            "http://a",
            "m",
            Some("memory 481 MiB is below min_memory (1024 MiB)")
        )
        .contains("echo netmigrate: memory 481 MiB is below"));
        let c = commission("http://10.0.0.1:8067", "52:54:00:00:00:01", "tok", &i);
        assert!(
            c.contains(
                "nm_mode=commission nm_token=tok nm_callback=http://10.0.0.1:8067/commission\n"
            ),
            "{c}"
        );
        assert!(!c.contains("nm_key"), "{c}");

        let d = Deploy {
            image: "images/xen/host.img".into(),
            bytes: 115_343_360,
            sha256: "ab".repeat(32),
            disk: String::new(),
            address: "10.0.0.50/24".into(),
            gateway: "10.0.0.1".into(),
            dns: "10.0.0.1".into(),
            domain: String::new(),
            bridge: "br0".into(),
        };
        let s = deploy("http://10.0.0.1:8067", "hv1", "tok", &i, &d);
        assert!(
            s.contains(&format!(
                " nm_mode=deploy nm_name=hv1 nm_token=tok nm_callback=http://10.0.0.1:8067/deployed \
                 nm_key=ssh-ed25519,AAAAC3Nza nm_image=http://10.0.0.1:8067/boot/images/xen/host.img \
                 nm_size=115343360 nm_sha256={} nm_ip=10.0.0.50/24 nm_gw=10.0.0.1 nm_dns=10.0.0.1 nm_bridge=br0\n",
                "ab".repeat(32)
            )),
            "empty values are left out: {s}"
        );
        let w = waiting("http://a", "m", &["deploying hv1 failed:\nno disk".into()]);
        assert!(
            w.contains("echo netmigrate: deploying hv1 failed: no disk\n"),
            "{w}"
        );
    }
}
