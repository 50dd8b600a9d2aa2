//! `netmigrate check-config`: each mistake an operator makes is named by file, line and key,
//! with what would be right. One test per mistake, run through the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not really a key, only its mode is checked\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` as netmigrate.toml and runs check-config on it.
    fn check(&self, text: &str) -> (i32, String, String) {
        let file = self.path("netmigrate.toml");
        std::fs::write(&file, text).unwrap();
        check_file(&file)
    }
}

fn check_file(file: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netmigrate"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A valid config; each test breaks one thing in it.
const GOOD: &str = r#"state_dir = "state"

[[network]]
name = "lab"
interface = "eth1"
address = "10.0.0.1/24"
dhcp_range = ["10.0.0.100", "10.0.0.199"]
lease_time = "12h"
domain = "lab.internal"

[[reservation]]
network = "lab"
mac = "52:54:00:00:00:10"
ip = "10.0.0.10"
hostname = "vm1"

[[host]]
name = "hostA"
address = "10.0.0.11"
ssh_key = "id_ed25519"
hypervisor = "xen"
bridge = "xenbr0"
"#;

/// Asserts exactly one problem, at `line`, naming `key`, whose text contains every `parts`.
fn assert_one(c: &Case, text: &str, line: usize, key: &str, parts: &[&str]) {
    let (code, _out, err) = c.check(text);
    assert_eq!(code, 2, "exit code; stderr:\n{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one problem, got:\n{err}");
    let want = format!("{}:{line}: {key}: ", c.path("netmigrate.toml").display());
    assert!(
        lines[0].starts_with(&want),
        "expected `{want}...`, got:\n{err}"
    );
    for p in parts {
        assert!(lines[0].contains(p), "expected {p:?} in:\n{err}");
    }
}

#[test]
fn good_config_passes_with_a_summary() {
    let c = Case::new();
    let (code, out, err) = c.check(GOOD);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        out.contains("network lab on eth1: 10.0.0.1/24 dhcp 10.0.0.100-10.0.0.199 lease 12h"),
        "{out}"
    );
    assert!(out.contains("host hostA 10.0.0.11 (xen"), "{out}");
}

#[test]
fn unknown_key_is_named_with_a_suggestion() {
    let c = Case::new();
    let text = GOOD.replace("domain = ", "domian = ");
    assert_one(
        &c,
        &text,
        9,
        "network[0].domian",
        &["unknown key `domian`", "did you mean `domain`?"],
    );
}

#[test]
fn unknown_top_level_section_lists_known_keys() {
    let c = Case::new();
    let text = format!("{GOOD}\n[dhcp_server]\nport = 67\n");
    let line = GOOD.lines().count() + 2;
    assert_one(
        &c,
        &text,
        line,
        "dhcp_server",
        &["unknown key `dhcp_server`", "`network`", "`host`"],
    );
}

#[test]
fn address_without_prefix_is_refused() {
    let c = Case::new();
    let text = GOOD.replace("address = \"10.0.0.1/24\"", "address = \"10.0.0.1\"");
    assert_one(
        &c,
        &text,
        6,
        "network[0].address",
        &["not an IPv4 address with a prefix", "\"10.0.0.1/24\""],
    );
}

#[test]
fn appliance_address_may_not_be_the_network_address() {
    let c = Case::new();
    let text = GOOD
        .replace("address = \"10.0.0.1/24\"", "address = \"10.0.0.0/24\"")
        .replace("ip = \"10.0.0.10\"", "ip = \"10.0.0.11\"");
    assert_one(
        &c,
        &text,
        6,
        "network[0].address",
        &["network address", "\"10.0.0.1/24\""],
    );
}

#[test]
fn dhcp_range_outside_its_network() {
    let c = Case::new();
    let text = GOOD.replace("\"10.0.0.199\"]", "\"10.0.1.199\"]");
    assert_one(
        &c,
        &text,
        7,
        "network[0].dhcp_range[1]",
        &["10.0.1.199 lies outside the network 10.0.0.0/24"],
    );
}

#[test]
fn dhcp_range_running_backwards() {
    let c = Case::new();
    let text = GOOD.replace(
        "[\"10.0.0.100\", \"10.0.0.199\"]",
        "[\"10.0.0.199\", \"10.0.0.100\"]",
    );
    assert_one(
        &c,
        &text,
        7,
        "network[0].dhcp_range",
        &["runs backwards", "lower address first"],
    );
}

#[test]
fn dhcp_range_holding_the_appliance() {
    let c = Case::new();
    let text = GOOD.replace(
        "[\"10.0.0.100\", \"10.0.0.199\"]",
        "[\"10.0.0.1\", \"10.0.0.99\"]",
    );
    assert_one(
        &c,
        &text,
        7,
        "network[0].dhcp_range",
        &["appliance's own address 10.0.0.1"],
    );
}

#[test]
fn reservation_outside_its_network() {
    let c = Case::new();
    let text = GOOD.replace("ip = \"10.0.0.10\"", "ip = \"192.168.1.10\"");
    assert_one(
        &c,
        &text,
        14,
        "reservation[0].ip",
        &["192.168.1.10 lies outside network `lab` (10.0.0.0/24)"],
    );
}

#[test]
fn reservation_naming_an_unknown_network() {
    let c = Case::new();
    let text = GOOD.replace("network = \"lab\"", "network = \"lba\"");
    assert_one(
        &c,
        &text,
        12,
        "reservation[0].network",
        &["no [[network]] is named `lba`", "known: `lab`"],
    );
}

const SECOND_RESERVATION: &str =
    "\n[[reservation]]\nnetwork = \"lab\"\nmac = \"MAC\"\nip = \"IP\"\nhostname = \"NAME\"\n";

fn with_second(mac: &str, ip: &str, name: &str) -> String {
    format!(
        "{GOOD}{}",
        SECOND_RESERVATION
            .replace("MAC", mac)
            .replace("IP", ip)
            .replace("NAME", name)
    )
}

#[test]
fn duplicate_reservation_mac() {
    let c = Case::new();
    let text = with_second("52:54:00:00:00:10", "10.0.0.20", "vm2");
    let line = GOOD.lines().count() + 4;
    assert_one(
        &c,
        &text,
        line,
        "reservation[1].mac",
        &["52:54:00:00:00:10 is already used by reservation[0] (line 13)"],
    );
}

#[test]
fn duplicate_reservation_ip() {
    let c = Case::new();
    let text = with_second("52:54:00:00:00:20", "10.0.0.10", "vm2");
    let line = GOOD.lines().count() + 5;
    assert_one(
        &c,
        &text,
        line,
        "reservation[1].ip",
        &["10.0.0.10 is already used by reservation[0] (line 14)"],
    );
}

#[test]
fn duplicate_reservation_hostname() {
    let c = Case::new();
    let text = with_second("52:54:00:00:00:20", "10.0.0.20", "vm1");
    let line = GOOD.lines().count() + 6;
    assert_one(
        &c,
        &text,
        line,
        "reservation[1].hostname",
        &["vm1 is already used by reservation[0] (line 15)"],
    );
}

#[test]
fn malformed_mac() {
    let c = Case::new();
    let text = GOOD.replace("52:54:00:00:00:10", "52:54:00:00:10");
    assert_one(
        &c,
        &text,
        13,
        "reservation[0].mac",
        &["not a MAC address", "\"52:54:00:12:34:56\""],
    );
}

#[test]
fn invalid_interface_name() {
    let c = Case::new();
    let text = GOOD.replace(
        "interface = \"eth1\"",
        "interface = \"this-name-is-too-long\"",
    );
    assert_one(
        &c,
        &text,
        5,
        "network[0].interface",
        &["not a valid interface name", "1 to 15 characters"],
    );
}

#[test]
fn duplicate_host_names() {
    let c = Case::new();
    let text = format!(
        "{GOOD}\n[[host]]\nname = \"hostA\"\naddress = \"10.0.0.12\"\nssh_key = \"id_ed25519\"\n"
    );
    let line = GOOD.lines().count() + 3;
    assert_one(
        &c,
        &text,
        line,
        "host[1].name",
        &["hostA is already used by host[0] (line 18)"],
    );
}

#[test]
fn missing_key_file() {
    let c = Case::new();
    let text = GOOD.replace(
        "ssh_key = \"id_ed25519\"",
        "ssh_key = \"/nonexistent/id_ed25519\"",
    );
    assert_one(
        &c,
        &text,
        20,
        "host[0].ssh_key",
        &["`/nonexistent/id_ed25519` does not exist"],
    );
}

#[test]
fn world_readable_key_file() {
    let c = Case::new();
    std::fs::set_permissions(c.path("id_ed25519"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_one(
        &c,
        GOOD,
        20,
        "host[0].ssh_key",
        &["readable by everyone (mode 0644)", "chmod 600"],
    );
}

#[test]
fn unparseable_duration() {
    let c = Case::new();
    let text = GOOD.replace("lease_time = \"12h\"", "lease_time = \"12 hours\"");
    assert_one(
        &c,
        &text,
        8,
        "network[0].lease_time",
        &["`12 hours` is not a duration", "\"12h\""],
    );
}

#[test]
fn unknown_hypervisor() {
    let c = Case::new();
    let text = GOOD.replace("hypervisor = \"xen\"", "hypervisor = \"vmware\"");
    assert_one(
        &c,
        &text,
        21,
        "host[0].hypervisor",
        &["`vmware`", "\"xen\" or \"qemu\""],
    );
}

#[test]
fn a_host_connect_timeout_out_of_bounds_is_refused() {
    let c = Case::new();
    let ok = GOOD.replace(
        "bridge = \"xenbr0\"",
        "bridge = \"xenbr0\"\nconnect_timeout = \"30s\"",
    );
    let (code, _, err) = c.check(&ok);
    assert_eq!(code, 0, "{err}");
    let text = GOOD.replace(
        "bridge = \"xenbr0\"",
        "bridge = \"xenbr0\"\nconnect_timeout = \"10m\"",
    );
    assert_one(
        &c,
        &text,
        23,
        "host[0].connect_timeout",
        &["between 1s and 5m"],
    );
}

#[test]
fn wrong_value_type() {
    let c = Case::new();
    let text = GOOD.replace("lease_time = \"12h\"", "lease_time = 12");
    assert_one(
        &c,
        &text,
        8,
        "network[0].lease_time",
        &["expected a string, found integer"],
    );
}

#[test]
fn overlapping_networks() {
    let c = Case::new();
    let text = format!(
        "{GOOD}\n[[network]]\nname = \"lab2\"\ninterface = \"eth2\"\naddress = \"10.0.0.129/25\"\n"
    );
    let line = GOOD.lines().count() + 2;
    assert_one(
        &c,
        &text,
        line,
        "network[1].address",
        &["overlaps network `lab`"],
    );
}

#[test]
fn tcp_api_without_token() {
    let c = Case::new();
    let text = format!("{GOOD}\n[api]\nlisten = \"127.0.0.1:7070\"\n");
    let line = GOOD.lines().count() + 2;
    assert_one(
        &c,
        &text,
        line,
        "api.token_file",
        &["missing", "bearer token"],
    );
}

#[test]
fn pinned_host_key_must_be_a_key() {
    let c = Case::new();
    let text = GOOD.replace(
        "bridge = \"xenbr0\"",
        "bridge = \"xenbr0\"\nhost_key = \"ssh-ed25519 AAAA-not-base64\"",
    );
    assert_one(&c, &text, 23, "host[0].host_key", &["base64"]);
}

#[test]
fn syntax_error_is_located() {
    let c = Case::new();
    let text = GOOD.replace("lease_time = \"12h\"", "lease_time = \"12h");
    let (code, _, err) = c.check(&text);
    assert_eq!(code, 2);
    assert!(err.contains("netmigrate.toml:8:"), "{err}");
    assert!(err.contains("TOML syntax error"), "{err}");
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let c = Case::new();
    let text = GOOD
        .replace("interface = \"eth1\"", "interface = \"eth/1\"")
        .replace("lease_time = \"12h\"", "lease_time = \"soon\"")
        .replace("ip = \"10.0.0.10\"", "ip = \"10.9.0.10\"")
        .replace("hypervisor = \"xen\"", "hypervisor = \"hyperv\"");
    let (code, _, err) = c.check(&text);
    assert_eq!(code, 2);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("netmigrate.toml:"))
        .collect();
    let keys: Vec<&str> = problems
        .iter()
        .map(|l| l.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "network[0].interface",
            "network[0].lease_time",
            "reservation[0].ip",
            "host[0].hypervisor"
        ],
        "{err}"
    );
    assert!(err.trim_end().ends_with("4 problems found"), "{err}");
}

#[test]
fn missing_file_is_one_clear_line() {
    let (code, _, err) = check_file(Path::new("/nonexistent/netmigrate.toml"));
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/netmigrate.toml:0: cannot read the config file"),
        "{err}"
    );
}

#[test]
fn ftps_needs_both_certificate_and_key() {
    let c = Case::new();
    std::fs::write(c.path("cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let text = format!("{GOOD}\n[ftp]\ntls_cert = \"cert.pem\"\n");
    let line = GOOD.lines().count() + 3;
    assert_one(
        &c,
        &text,
        line,
        "ftp.tls_key",
        &["missing; FTPS needs the key of tls_cert too"],
    );
}

#[test]
fn migration_limits_and_hook_are_checked() {
    let c = Case::new();
    let lines = GOOD.lines().count();
    let text = format!("{GOOD}\n[migration]\nmax_per_host = 0\n");
    assert_one(
        &c,
        &text,
        lines + 3,
        "migration.max_per_host",
        &["0 is not a limit", "1 to 64"],
    );
    let text = format!("{GOOD}\n[migration]\nafter_move = \"no-such-script\"\n");
    assert_one(
        &c,
        &text,
        lines + 3,
        "migration.after_move",
        &["no-such-script", "No such file"],
    );
    let text = format!("{GOOD}\n[migration]\nlive_timeout = \"0s\"\n");
    assert_one(
        &c,
        &text,
        lines + 3,
        "migration.live_timeout",
        &["between 1s and 1h"],
    );
    let (code, _, err) = c.check(&format!("{GOOD}\n[migration]\nlive_timeout = \"10m\"\n"));
    assert_eq!(code, 0, "{err}");
}

const RELAYED: &str = "\n[[network]]\nname = \"far\"\nrelay = \"10.0.2.1/24\"\nvia = \"lab\"\ndhcp_range = [\"10.0.2.100\", \"10.0.2.199\"]\n";

#[test]
fn a_relayed_network_is_accepted_and_summarized() {
    let c = Case::new();
    let (code, out, err) = c.check(&format!("{GOOD}{RELAYED}"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("network far via lab, relay 10.0.2.1/24"),
        "{out}"
    );
}

#[test]
fn a_relayed_network_must_name_an_attached_network() {
    let c = Case::new();
    let text = format!(
        "{GOOD}{}",
        RELAYED.replace("via = \"lab\"", "via = \"lob\"")
    );
    let line = GOOD.lines().count() + 5;
    assert_one(
        &c,
        &text,
        line,
        "network[1].via",
        &["no [[network]] is named `lob`"],
    );
}

#[test]
fn a_relayed_network_has_no_interface_of_its_own() {
    let c = Case::new();
    let text = format!("{GOOD}{RELAYED}interface = \"eth2\"\n");
    let line = GOOD.lines().count() + 7;
    assert_one(
        &c,
        &text,
        line,
        "network[1].interface",
        &["relayed network has no interface"],
    );
}

#[test]
fn a_pxe_section_needs_a_boot_file_and_urls_for_ipxe() {
    let c = Case::new();
    let text =
        format!("{GOOD}\n[dhcp.pxe]\nbios = \"undionly.kpxe\"\nipxe_script = \"boot.ipxe\"\n");
    let line = GOOD.lines().count() + 4;
    assert_one(
        &c,
        &text,
        line,
        "dhcp.pxe.ipxe_script",
        &["not a URL iPXE can chain to"],
    );
    let text = format!("{GOOD}\n[dhcp.pxe]\nnext_server = \"10.0.0.1\"\n");
    let (code, _, err) = c.check(&text);
    assert_eq!(code, 2);
    assert!(err.contains("dhcp.pxe: names no boot file"), "{err}");
}

#[test]
fn a_conflict_wait_out_of_bounds_is_refused() {
    let c = Case::new();
    let text = format!("{GOOD}\n[dhcp]\nconflict_wait = \"10s\"\n");
    let line = GOOD.lines().count() + 3;
    assert_one(
        &c,
        &text,
        line,
        "dhcp.conflict_wait",
        &["not a useful wait"],
    );
}

#[test]
fn uefi_http_boot_needs_a_path_and_the_boot_http_server() {
    let c = Case::new();
    let (text, line) = with("[dhcp.pxe]\nbios = \"undionly.kpxe\"\nuefi_http = \"../ipxe.efi\"\n");
    assert_one(
        &c,
        &text,
        line(3),
        "dhcp.pxe.uefi_http",
        &["not a path under the boot directory"],
    );
    let (text, line) = with("[dhcp.pxe]\nuefi_http = \"ipxe.efi\"\n[boot]\nhttp_port = 0\n");
    assert_one(
        &c,
        &text,
        line(1),
        "dhcp.pxe.uefi_http",
        &["boot.http_port is 0"],
    );
    let (code, _, err) = c.check(&with("[dhcp.pxe]\nuefi_http = \"ipxe.efi\"\n").0);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_rogue_probe_that_would_flood_is_refused() {
    let c = Case::new();
    let (text, line) = with("[dhcp]\nrogue_probe = \"2s\"\n");
    assert_one(
        &c,
        &text,
        line(2),
        "dhcp.rogue_probe",
        &["at least \"10s\""],
    );
    for ok in ["0s", "5m"] {
        let (code, _, err) = c.check(&with(&format!("[dhcp]\nrogue_probe = \"{ok}\"\n")).0);
        assert_eq!(code, 0, "{ok}: {err}");
    }
}

/// GOOD with `extra` appended; the line of its `n`th line (1-based).
fn with(extra: &str) -> (String, impl Fn(usize) -> usize) {
    let base = GOOD.lines().count();
    (format!("{GOOD}{extra}"), move |n| base + n)
}

#[test]
fn dns_ttl_and_secondaries_are_checked() {
    let c = Case::new();
    let (text, line) = with("[dns]\nttl = \"0s\"\n");
    assert_one(&c, &text, line(2), "dns.ttl", &["not a useful TTL"]);
    let (text, line) = with("[dns]\nsecondaries = [\"ns2.example\"]\n");
    assert_one(
        &c,
        &text,
        line(2),
        "dns.secondaries[0]",
        &["not an IP address"],
    );
    let (text, line) = with("[dns]\nport = 0\n");
    assert_one(&c, &text, line(2), "dns.port", &[]);
}

#[test]
fn image_compression_is_checked() {
    let c = Case::new();
    let (text, line) = with("[ftp]\ncompress = \"gzip\"\n");
    assert_one(&c, &text, line(2), "ftp.compress", &["zstd"]);
    let (text, line) = with("[ftp]\ncompress_level = 5\n");
    assert_one(
        &c,
        &text,
        line(2),
        "ftp.compress_level",
        &["compress = \"zstd\""],
    );
    let (text, line) = with("[ftp]\ncompress = \"zstd\"\ncompress_level = 30\n");
    assert_one(
        &c,
        &text,
        line(3),
        "ftp.compress_level",
        &["1 (fastest) to 19"],
    );
    let (code, _, err) = c.check(&with("[ftp]\ncompress = \"zstd\"\ncompress_level = 9\n").0);
    assert_eq!(code, 0, "{err}");
}

const PROVISIONING: &str =
    "\n[provisioning]\nnetwork = \"lab\"\npool = [\"10.0.0.50\", \"10.0.0.59\"]\n\
auto_accept_mac = [\"52:54:00:aa\"]\n\n[provisioning.host]\nssh_key = \"id_ed25519\"\n\
hypervisor = \"qemu\"\nbridge = \"br0\"\n";

#[test]
fn provisioning_is_checked() {
    let c = Case::new();
    let (text, _) = with(PROVISIONING);
    let (code, _, err) = c.check(&text);
    assert_eq!(code, 0, "{err}");
    let (text, line) = with(&PROVISIONING.replace("10.0.0.59", "10.0.0.150"));
    assert_one(
        &c,
        &text,
        line(3),
        "provisioning.pool",
        &["overlaps network `lab`'s dhcp_range", "outside it"],
    );
    let (text, line) = with(&PROVISIONING.replace("network = \"lab\"", "network = \"lan\""));
    assert_one(
        &c,
        &text,
        line(3),
        "provisioning.network",
        &["no [[network]] is named `lan`"],
    );
    let (text, line) = with(&PROVISIONING.replace(
        "[provisioning.host]",
        "hostname = \"hv\"\n[provisioning.host]",
    ));
    assert_one(
        &c,
        &text,
        line(7),
        "provisioning.hostname",
        &["same name", "{n}"],
    );
    let (text, line) = with(&PROVISIONING.replace("52:54:00:aa", "52:54:0"));
    assert_one(
        &c,
        &text,
        line(5),
        "provisioning.auto_accept_mac[0]",
        &["not a MAC prefix"],
    );
    let (text, line) = with(&PROVISIONING.replace(
        "bridge = \"br0\"",
        "bridge = \"br0\"\naddress = \"10.0.0.9\"",
    ));
    assert_one(
        &c,
        &text,
        line(11),
        "provisioning.host.address",
        &["provisioning.pool"],
    );
    let (text, line) = with(&format!("{PROVISIONING}[boot]\nhttp_port = 0\n"));
    assert_one(&c, &text, line(3), "boot.http_port", &["needs it"]);
    // Requirements of the rules need commissioning, and sizes that read.
    let required = |extra: &str| {
        with(&PROVISIONING.replace(
            "[provisioning.host]",
            &format!("min_memory = \"2G\"\nrequire_virt = true\n{extra}[provisioning.host]"),
        ))
    };
    let (code, _, err) = c.check(&required("min_disk = \"20GiB\"\n").0);
    assert_eq!(code, 0, "{err}");
    let (text, line) = required("commission = false\n");
    assert_one(
        &c,
        &text,
        line(9),
        "provisioning.commission",
        &["is false", "min_memory"],
    );
    let (text, line) = required("min_disk = \"lots\"\n");
    assert_one(&c, &text, line(9), "provisioning.min_disk", &["not a size"]);
}

/// A Xen host image profile after PROVISIONING: its section starts at line 12.
const PROFILE: &str = "\n[[provisioning.profile]]\nname = \"xen\"\nimage = \"images/xen/host.img\"\nhypervisor = \"xen\"\n";

#[test]
fn deployment_profiles_are_checked() {
    let c = Case::new();
    let both = |p: &str, extra: &str| {
        with(&format!(
            "{}{p}",
            PROVISIONING.replace(
                "[provisioning.host]",
                &format!("{extra}[provisioning.host]")
            )
        ))
    };
    let (text, _) = both(
        PROFILE,
        "default_profile = \"xen\"\ndeploy_timeout = \"45m\"\n",
    );
    let (code, _, err) = c.check(&text);
    assert_eq!(code, 0, "{err}");
    let (text, line) = both(PROFILE, "default_profile = \"kvm\"\n");
    assert_one(
        &c,
        &text,
        line(7),
        "provisioning.default_profile",
        &["no [[provisioning.profile]] is named `kvm`", "xen"],
    );
    let (text, line) = both(PROFILE, "deploy_timeout = \"10s\"\n");
    assert_one(
        &c,
        &text,
        line(7),
        "provisioning.deploy_timeout",
        &["at least \"1m\""],
    );
    let (text, line) = both(&format!("{PROFILE}deploy = \"ram\"\n"), "");
    assert_one(
        &c,
        &text,
        line(16),
        "provisioning.profile[0].deploy",
        &["not built yet"],
    );
    let (text, line) = both(&PROFILE.replace("images/xen", "/srv/xen"), "");
    assert_one(
        &c,
        &text,
        line(14),
        "provisioning.profile[0].image",
        &["not a path under the boot directory"],
    );
    let (text, line) = both(&PROFILE.replace("\"xen\"\n", "\"esx\"\n"), "");
    assert_one(
        &c,
        &text,
        line(15),
        "provisioning.profile[0].hypervisor",
        &["not a hypervisor netmigrate drives"],
    );
    let (text, line) = both(&format!("{PROFILE}{PROFILE}"), "");
    assert_one(
        &c,
        &text,
        line(18),
        "provisioning.profile[1].name",
        &["names two profiles"],
    );
}
