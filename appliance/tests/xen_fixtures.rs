//! Xen output parsing on `xl` output captured from the real nested Xen lab (fixtures/xen).

use netmigrate::config::{HostConfig, HypervisorKind};
use netmigrate::inventory::{facts, parse_output, xen};

const XL_INFO: &str = include_str!("fixtures/xen/xl-info.txt");
const XL_LIST_L: &str = include_str!("fixtures/xen/xl-list-l.json");
const COLLECTED: &str = include_str!("fixtures/xen/collect-output.txt");

fn xen_host() -> HostConfig {
    HostConfig {
        name: "xen-a".into(),
        address: "10.88.0.11".parse().unwrap(),
        ssh_port: 22,
        ssh_user: "root".into(),
        ssh_key: "/k".into(),
        host_key: None,
        hypervisor: HypervisorKind::Xen,
        bridge: "xenbr0".into(),
        ovsdb: None,
        image_dir: "/var/lib/xen/images".into(),
        save_dir: "/var/lib/xen/save".into(),
        run_dir: "/run/netmigrate".into(),
        qemu_accel: "kvm:tcg".into(),
        connect_timeout: netmigrate::inventory::CONNECT_TIMEOUT,
    }
}

#[test]
fn xl_info_gives_cpus_and_memory() {
    let info = xen::info(XL_INFO);
    assert_eq!(xen::info_u64(&info, "nr_cpus"), Some(1));
    assert_eq!(xen::info_u64(&info, "total_memory"), Some(2047));
    assert_eq!(xen::info_u64(&info, "free_memory"), Some(742));
    assert!(info
        .iter()
        .any(|(k, v)| k == "xen_version" && v == "4.17.7"));
}

#[test]
fn xl_list_long_gives_the_guests_not_dom0() {
    let vms = xen::list(XL_LIST_L).unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-pvh", "web-pv"]);
    assert_eq!(vms[0].vcpus, 1);
    assert_eq!(vms[0].mem_mib, 128);
    assert_eq!(vms[0].macs, ["00:16:3e:58:00:32"]);
    assert_eq!(vms[0].ports, ["vif1.0"]);
    assert_eq!(vms[1].macs, ["00:16:3e:58:00:33"]);
    assert_eq!(vms[1].ports, ["vif2.0"]);
    assert!(xen::list("not json").unwrap_err().contains("not JSON"));
}

#[test]
fn a_whole_collection_from_a_real_dom0() {
    let (f, qemus) = parse_output(&xen_host(), COLLECTED, "").unwrap();
    assert!(qemus.is_empty());
    assert_eq!(f.hypervisor, "xen");
    // From `xl info`, not dom0's /proc/meminfo (dom0 sees only its own 1 GiB).
    assert_eq!((f.cpus, f.mem_total_mib), (1, 2047));
    assert!(f.mem_free_mib > 0 && f.mem_free_mib < 2047);
    assert_eq!(f.vms.len(), 2);
    assert!(f.nics.iter().any(|n| n.name == "xenbr0"), "{:?}", f.nics);
    assert!(f.nics.iter().any(|n| n.name == "vif1.0"), "{:?}", f.nics);
    // The save directory is a tmpfs on the lab's dom0.
    let save = f
        .disks
        .iter()
        .find(|d| d.path == "/var/lib/xen/save")
        .unwrap();
    assert!(save.total_mib > 0, "{save:?}");
}

#[test]
fn a_host_that_is_not_a_dom0_is_named_so() {
    let cut = COLLECTED.replace("@@xlinfo", "@@xlinfo-missing");
    let err = parse_output(&xen_host(), &cut, "xl: command not found").unwrap_err();
    assert!(
        err.contains("is this a Xen dom0?") && err.contains("xl: command not found"),
        "{err}"
    );
}

/// Prints the collection script for a Xen host, to regenerate `fixtures/xen/collect-output.txt`:
/// run it on a Xen dom0 (`ssh root@dom0 sh < script`) and save what it prints.
#[test]
#[ignore = "a helper for regenerating fixtures"]
fn print_xen_collection_script() {
    print!("{}", facts::script(&xen_host()));
}
