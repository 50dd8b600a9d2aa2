//! DHCP durability: perfdhcp (full DORA, as a relay agent) loads the appliance, the appliance
//! is killed with SIGKILL mid-load and started again, and a second perfdhcp with other MACs
//! follows. tcpdump in the clients' namespace records every ACK that reached them. Every
//! acknowledged lease must be in the restarted appliance's state, and no address may have been
//! acknowledged to two clients.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns;
use crate::sys::wait_for;
use crate::Lab;

const SRV: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const CLI: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);

#[derive(Debug, Default)]
pub struct Report {
    /// ACKs the clients received before the kill, and after the restart.
    pub acks_before: usize,
    pub acks_after: usize,
    /// Distinct (MAC, address) pairs acknowledged.
    pub acknowledged: usize,
    /// Acknowledged pairs the restarted appliance's state does not hold.
    pub lost: Vec<(String, Ipv4Addr)>,
    /// Addresses acknowledged to more than one MAC.
    pub given_twice: Vec<(Ipv4Addr, Vec<String>)>,
    pub leases_in_state: usize,
}

/// A DHCPACK as tcpdump saw it: the client's MAC and the address given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// The DHCPACKs in a pcap file (Ethernet, IPv4, UDP, BOOTP with options).
pub fn acks_in_pcap(bytes: &[u8]) -> Result<Vec<Ack>> {
    if bytes.len() < 24 {
        bail!("pcap file of {} bytes has no header", bytes.len());
    }
    let le = match &bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        m => bail!("not a pcap file (magic {m:02x?})"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let a = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    if u32_at(bytes, 20) != 1 {
        bail!("pcap link type {} is not Ethernet", u32_at(bytes, 20));
    }
    let mut acks = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32_at(bytes, at + 8) as usize;
        let frame = &bytes[at + 16..(at + 16 + len).min(bytes.len())];
        at += 16 + len;
        if let Some(a) = ack_in_frame(frame) {
            acks.push(a);
        }
    }
    Ok(acks)
}

fn ack_in_frame(f: &[u8]) -> Option<Ack> {
    if f.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = f.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 17 {
        return None;
    }
    let bootp = ip.get(ihl + 8..)?;
    if *bootp.first()? != 2 || bootp.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    let mut opts = bootp.get(240..)?;
    let mut kind = None;
    while let [code, rest @ ..] = opts {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let len = usize::from(*rest.first()?);
                let value = rest.get(1..1 + len)?;
                if *code == 53 {
                    kind = value.first().copied();
                }
                opts = &rest[1 + len..];
            }
        }
    }
    if kind != Some(5) {
        return None;
    }
    let y = bootp.get(16..20)?;
    let mac = bootp
        .get(28..34)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Some(Ack {
        mac,
        ip: Ipv4Addr::new(y[0], y[1], y[2], y[3]),
    })
}

fn perfdhcp(ns: &str, rate: u32, secs: u32, mac_base: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "timeout", &(secs + 15).to_string()])
        .args(["perfdhcp", "-4", "-r", &rate.to_string(), "-R", "100000"])
        .args(["-b", &format!("mac={mac_base}")])
        .args(["-p", &secs.to_string(), "-l", &CLI.to_string()])
        .arg(SRV.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn count_acks(pcap: &Path) -> usize {
    std::fs::read(pcap)
        .ok()
        .and_then(|b| acks_in_pcap(&b).ok())
        .map_or(0, |a| a.len())
}

/// Runs the load, the kill and the restart; `rate` DORA/s offered for `secs` on each side.
pub fn run(lab: &Lab, rate: u32, secs: u32) -> Result<Report> {
    let srv = lab.bare_node("dsrv")?;
    let cli = lab.bare_node("dcli")?;
    netns::add_addr(&srv.ns, "eth0", SRV, 16)?;
    netns::add_addr(&cli.ns, "eth0", CLI, 16)?;
    let dir = lab.subdir("dhcp-durability")?;
    let state_dir = lab.subdir("appliance")?.join("state");
    let config = format!(
        "state_dir = \"{}\"\n\n[[network]]\nname = \"load\"\ninterface = \"eth0\"\n\
         address = \"{SRV}/16\"\ndhcp_range = [\"10.98.1.0\", \"10.98.255.254\"]\n\
         lease_time = \"12h\"\n\n[dhcp]\nconflict_check = false\n",
        state_dir.display()
    );
    let mut app = lab.appliance_at(srv, &config)?;

    let pcap = dir.join("acks.pcap");
    let mut dump = netns::exec(&cli.ns, "tcpdump");
    dump.args(["-i", "eth0", "-U", "-n", "-s", "1500", "-w"])
        .arg(&pcap)
        .args(["udp", "and", "src", "port", "67"]);
    let dump_pid = lab.track("tcpdump", &mut dump)?;
    wait_for("tcpdump to start", Duration::from_secs(10), || {
        pcap.exists().then_some(())
    })?;

    // Load, then the crash while the load goes on: the kill lands between some ACKs.
    let mut first = perfdhcp(&cli.ns, rate, secs + 2, "00:0c:01:00:00:00").spawn()?;
    wait_for("ACKs before the kill", Duration::from_secs(30), || {
        (count_acks(&pcap) >= (rate * secs / 2) as usize).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(u64::from(secs) / 2));
    crate::sys::signal(app.pid, libc::SIGKILL);
    lab.stop(app.pid);
    first.wait()?;
    let acks_before = count_acks(&pcap);

    lab.start_serve(&mut app)?;
    let status = perfdhcp(&cli.ns, rate, secs, "00:0c:02:00:00:00").status()?;
    // perfdhcp exits 3 when anything was dropped (the kill drops the exchanges in flight).
    if !matches!(status.code(), Some(0 | 3)) {
        bail!("perfdhcp after the restart: {status}");
    }
    std::thread::sleep(Duration::from_secs(1));
    lab.stop(dump_pid);

    let acks = acks_in_pcap(&std::fs::read(&pcap)?)?;
    let out = app.cli_ok(&["leases", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("leases --json")?;
    let in_state: BTreeSet<(String, Ipv4Addr)> = v["leases"]
        .as_array()
        .context("leases --json has no leases")?
        .iter()
        .filter(|l| l["state"] == "bound")
        .filter_map(|l| {
            Some((
                l["mac"].as_str()?.to_ascii_lowercase(),
                l["ip"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    let pairs: BTreeSet<(String, Ipv4Addr)> = acks.iter().map(|a| (a.mac.clone(), a.ip)).collect();
    let mut holders: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for (mac, ip) in &pairs {
        holders.entry(*ip).or_default().insert(mac.clone());
    }
    Ok(Report {
        acks_before,
        acks_after: acks.len() - acks_before,
        acknowledged: pairs.len(),
        lost: pairs.difference(&in_state).cloned().collect(),
        given_twice: holders
            .into_iter()
            .filter(|(_, m)| m.len() > 1)
            .map(|(ip, m)| (ip, m.into_iter().collect()))
            .collect(),
        leases_in_state: in_state.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap with one DHCPACK frame and one OFFER frame, built by hand.
    #[test]
    fn acks_are_read_from_a_pcap() {
        fn frame(kind: u8, last: u8) -> Vec<u8> {
            let mut bootp = vec![0u8; 240];
            bootp[0] = 2;
            bootp[16..20].copy_from_slice(&[10, 98, 1, last]);
            bootp[28..34].copy_from_slice(&[0, 0x0c, 1, 0, 0, last]);
            bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
            bootp.extend_from_slice(&[53, 1, kind, 0, 255]);
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17];
            ip.resize(20, 0);
            f.extend(ip);
            f.extend_from_slice(&[0, 67, 0, 67, 0, 0, 0, 0]);
            f.extend(bootp);
            f
        }
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&65535u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        for (kind, last) in [(2, 7), (5, 9)] {
            let f = frame(kind, last);
            pcap.extend_from_slice(&[0; 8]);
            pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
            pcap.extend_from_slice(&(f.len() as u32).to_le_bytes());
            pcap.extend(f);
        }
        assert_eq!(
            acks_in_pcap(&pcap).unwrap(),
            vec![Ack {
                mac: "00:0c:01:00:00:09".into(),
                ip: Ipv4Addr::new(10, 98, 1, 9)
            }]
        );
        assert!(acks_in_pcap(b"nonsense, not a pcap file").is_err());
    }
}
