//! Parsers for what `xl` prints: `xl info` (key : value lines) and `xl list -l` (JSON).

use serde_json::Value;

use super::facts::VmFacts;

/// `xl info` as key/value pairs.
pub fn info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

pub fn info_u64(info: &[(String, String)], key: &str) -> Option<u64> {
    info.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Guests from `xl list -l` (dom0 left out): vCPUs, memory, disks, MACs, bridge ports.
pub fn list(text: &str) -> Result<Vec<VmFacts>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doms: Value =
        serde_json::from_str(text).map_err(|e| format!("xl list -l is not JSON: {e}"))?;
    let doms = doms.as_array().ok_or("xl list -l is not a JSON array")?;
    let mut out = Vec::new();
    for d in doms {
        let domid = d["domid"].as_u64().unwrap_or(0);
        if domid == 0 {
            continue;
        }
        let cfg = &d["config"];
        let name = cfg["c_info"]["name"].as_str().unwrap_or("").to_string();
        let b = &cfg["b_info"];
        let vcpus = b["max_vcpus"].as_u64().unwrap_or(1) as u32;
        let mem_kb = b["target_memkb"]
            .as_u64()
            .or_else(|| b["max_memkb"].as_u64())
            .unwrap_or(0);
        let nics = cfg["nics"].as_array().cloned().unwrap_or_default();
        let macs = nics
            .iter()
            .filter_map(|n| n["mac"].as_str().map(str::to_lowercase))
            .collect();
        let ports = nics
            .iter()
            .enumerate()
            .map(|(i, n)| match n["ifname"].as_str() {
                // A vif named in its config (netmigrate names it after the VM's port).
                Some(name) if !name.is_empty() => name.to_string(),
                _ => {
                    let devid = n["devid"].as_u64().unwrap_or(i as u64);
                    format!("vif{domid}.{devid}")
                }
            })
            .collect();
        let disks = cfg["disks"]
            .as_array()
            .map(|ds| {
                ds.iter()
                    .filter_map(|d| d["pdev_path"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.push(VmFacts {
            disks,
            name,
            vcpus,
            mem_mib: mem_kb / 1024,
            disk_mib: 0,
            disk_allocated_mib: 0,
            macs,
            ips: Vec::new(),
            state: "running".into(),
            ports,
            bw_mbps: 0,
            qmp: None,
        });
    }
    Ok(out)
}
