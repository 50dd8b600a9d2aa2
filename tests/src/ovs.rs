//! A private Open vSwitch instance per host namespace, userspace datapath (the machine has no
//! OVS kernel module). See shared/lab/ovs/RECIPE.md for why each setting is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::Lab;
use crate::netns;
use crate::sys::{run, wait_for};

/// One running ovsdb-server + ovs-vswitchd pair.
#[derive(Debug, Clone)]
pub struct Ovs {
    pub dir: PathBuf,
    pub ns: String,
    /// ovs-vswitchd's PID (a test may stop it: a switch that takes no more ports).
    pub vswitchd: u32,
}

impl Ovs {
    /// The OVSDB socket (what the appliance speaks RFC 7047 to).
    pub fn db_sock(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    fn env(cmd: &mut Command, dir: &Path) {
        for k in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            cmd.env(k, dir);
        }
    }

    /// `ovs-vsctl` against this instance (waits for vswitchd to apply, like a user's call).
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ovs-vsctl");
        Self::env(&mut cmd, &self.dir);
        cmd.arg(format!("--db=unix:{}", self.db_sock().display()))
            .arg("--timeout=20")
            .args(args);
        let out = run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// ovs-vsctl exits 0 even when vswitchd could not open the port: read ofport/error back.
    pub fn check_port(&self, port: &str) -> Result<u32> {
        let ofport = self.vsctl(&["get", "Interface", port, "ofport"])?;
        let error = self.vsctl(&["get", "Interface", port, "error"])?;
        match ofport.parse::<i64>() {
            Ok(n) if n > 0 => Ok(n as u32),
            _ => bail!("OVS port {port} did not come up: ofport={ofport} error={error}"),
        }
    }

    /// Adds a port (optionally an access port of a VLAN) and checks that it really came up.
    pub fn add_port(&self, bridge: &str, port: &str, tag: Option<u16>) -> Result<u32> {
        let tag_arg = tag.map(|t| format!("tag={t}"));
        let mut args = vec!["add-port", bridge, port];
        if let Some(t) = &tag_arg {
            args.push(t);
        }
        self.vsctl(&args)?;
        self.check_port(port)
    }

    pub fn ports(&self, bridge: &str) -> Result<Vec<String>> {
        Ok(self
            .vsctl(&["list-ports", bridge])?
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// Starts OVS inside `ns` with bridge `bridge` (datapath netdev).
pub(crate) fn start(lab: &Lab, ns: &str, role: &str, bridge: &str) -> Result<Ovs> {
    let dir = lab.subdir(&format!("{role}/ovs"))?;
    let db = dir.join("conf.db");
    let d = dir.display().to_string();
    if !db.exists() {
        run(Command::new("ovsdb-tool").args([
            "create",
            &db.display().to_string(),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ]))?;
    }
    let mut cmd = netns::exec(ns, "ovsdb-server");
    Ovs::env(&mut cmd, &dir);
    cmd.arg(db.display().to_string()).args([
        &format!("--remote=punix:{d}/db.sock"),
        "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
        &format!("--unixctl={d}/ovsdb-server.ctl"),
        &format!("--log-file={d}/ovsdb-server.log"),
        "-vconsole:off",
        "--no-chdir",
    ]);
    let pid = lab.track(&format!("{role}-ovsdb"), &mut cmd)?;
    let ovs = Ovs {
        dir: dir.clone(),
        ns: ns.into(),
        vswitchd: 0,
    };
    wait_for("ovsdb-server socket", Duration::from_secs(10), || {
        (ovs.db_sock().exists() || lab.has_exited(pid)).then_some(())
    })?;
    if lab.has_exited(pid) {
        bail!("ovsdb-server exited at start; see {d}/ovsdb-server.log");
    }
    // Before vswitchd starts, or TCP through veth ports breaks (bad checksums).
    ovs.vsctl(&[
        "--no-wait",
        "init",
        "--",
        "set",
        "Open_vSwitch",
        ".",
        "other_config:userspace-tso-enable=true",
    ])
    .context("initialising OVSDB")?;
    let mut cmd = netns::exec(ns, "ovs-vswitchd");
    Ovs::env(&mut cmd, &dir);
    cmd.arg(format!("unix:{d}/db.sock")).args([
        &format!("--unixctl={d}/ovs-vswitchd.ctl"),
        &format!("--log-file={d}/ovs-vswitchd.log"),
        "-vconsole:off",
        "--no-chdir",
    ]);
    let mut ovs = ovs;
    ovs.vswitchd = lab.track(&format!("{role}-vswitchd"), &mut cmd)?;
    // Without --no-wait this returns once vswitchd has applied it: our readiness check.
    ovs.vsctl(&[
        "--may-exist",
        "add-br",
        bridge,
        "--",
        "set",
        "Bridge",
        bridge,
        "datapath_type=netdev",
    ])
    .with_context(|| format!("creating bridge {bridge}; see {d}/ovs-vswitchd.log"))?;
    Ok(ovs)
}
