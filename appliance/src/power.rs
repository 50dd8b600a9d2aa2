//! Power control of provisioned machines through their BMC, as MAAS does it: IPMI 2.0 over LAN
//! with ipmitool's `lanplus` interface (the BMC's password read from a secret file, never on
//! a command line). Each machine's BMC is kept with it in the state (`hosts bmc`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// How long one ipmitool call may take (its own retries included).
const CALL: Duration = Duration::from_secs(30);

/// A machine's BMC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase", deny_unknown_fields)]
pub enum Bmc {
    /// IPMI over LAN (RMCP+, `ipmitool -I lanplus`).
    Ipmi {
        address: String,
        port: u16,
        user: String,
        /// Holds the password (its first line); readable by the appliance only.
        password_file: PathBuf,
    },
}

impl Bmc {
    /// Checks what the operator gave: an address, a user, and a password file that exists and
    /// is not readable by everyone.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Bmc::Ipmi {
                address,
                user,
                password_file,
                ..
            } => {
                if address.is_empty() || address.contains(char::is_whitespace) {
                    return Err(format!("`{address}` is not a BMC address"));
                }
                if user.is_empty() {
                    return Err("the BMC's user is empty".into());
                }
                crate::config::values::check_secret_file(password_file)
                    .map_err(|e| format!("password file: {e}"))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Bmc::Ipmi {
                address,
                port,
                user,
                ..
            } => format!("IPMI {user}@{address}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    On,
    Off,
    Cycle,
    Status,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::On => "on",
            Action::Off => "off",
            Action::Cycle => "cycle",
            Action::Status => "status",
        })
    }
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        })
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "on" => Action::On,
            "off" => Action::Off,
            "cycle" => Action::Cycle,
            "status" => Action::Status,
            _ => {
                return Err(format!(
                    "`{s}` is not a power action: on, off, cycle or status"
                ))
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The BMC refused or did not answer; what ipmitool said.
    #[error("{bmc}: {message}")]
    Bmc { bmc: String, message: String },
    #[error("running ipmitool: {0} (is it installed?)")]
    Spawn(std::io::Error),
}

/// How long a BMC may take to report the state an action asked for (a cycle reads off until
/// the machine is on again).
const SETTLE: Duration = Duration::from_secs(30);

/// Does `action` through `bmc` and returns the power state it reports afterwards, once it
/// reports the state asked for (or `SETTLE` has passed: then what it says). A cycle of a
/// machine that is off powers it on (IPMI refuses to cycle a machine that is off).
pub async fn act(bmc: &Bmc, action: Action) -> Result<PowerState, PowerError> {
    let want = match action {
        Action::Status => return status(bmc).await,
        Action::On => {
            chassis(bmc, "on").await?;
            PowerState::On
        }
        Action::Off => {
            chassis(bmc, "off").await?;
            PowerState::Off
        }
        Action::Cycle => {
            let verb = match status(bmc).await? {
                PowerState::Off => "on",
                PowerState::On => "cycle",
            };
            chassis(bmc, verb).await?;
            PowerState::On
        }
    };
    let t = tokio::time::Instant::now();
    loop {
        let now = status(bmc).await?;
        if now == want || t.elapsed() > SETTLE {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn status(bmc: &Bmc) -> Result<PowerState, PowerError> {
    let out = chassis(bmc, "status").await?;
    parse_status(&out).ok_or_else(|| PowerError::Bmc {
        bmc: bmc.describe(),
        message: format!(
            "unexpected answer to `chassis power status`: {}",
            out.trim()
        ),
    })
}

/// "Chassis Power is on" / "... off".
fn parse_status(out: &str) -> Option<PowerState> {
    let l = out.lines().find(|l| l.starts_with("Chassis Power is"))?;
    match l.trim().rsplit(' ').next()? {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        _ => None,
    }
}

/// `ipmitool ... chassis power VERB`; its output, or what it said when it failed.
async fn chassis(bmc: &Bmc, verb: &str) -> Result<String, PowerError> {
    let Bmc::Ipmi {
        address,
        port,
        user,
        password_file,
    } = bmc;
    let mut cmd = Command::new("ipmitool");
    // Cipher suite 3 (RAKP-HMAC-SHA1, AES-CBC-128): without -C, ipmitool 1.8.19 first asks
    // for the channel's suites, which simpler BMCs do not answer.
    cmd.args([
        "-I", "lanplus", "-C", "3", "-N", "2", "-R", "3", "-H", address,
    ])
    .args(["-p", &port.to_string(), "-U", user, "-f"])
    .arg(password_file)
    .args(["chassis", "power", verb])
    .kill_on_drop(true);
    let out = match tokio::time::timeout(CALL, cmd.output()).await {
        Ok(r) => r.map_err(PowerError::Spawn)?,
        Err(_) => {
            return Err(PowerError::Bmc {
                bmc: bmc.describe(),
                message: format!(
                    "no answer to `chassis power {verb}` in {} s",
                    CALL.as_secs()
                ),
            })
        }
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.trim();
        return Err(PowerError::Bmc {
            bmc: bmc.describe(),
            message: format!(
                "`chassis power {verb}` failed: {}",
                if said.is_empty() { "no message" } else { said }
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipmitools_status_reads() {
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(
            parse_status("Set Session Privilege Level to ADMIN failed"),
            None
        );
    }

    #[test]
    fn a_bmc_is_checked_and_kept_as_json() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("bmc.pass");
        std::fs::write(&pw, "secret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let b = Bmc::Ipmi {
            address: "10.0.0.200".into(),
            port: 623,
            user: "admin".into(),
            password_file: pw.clone(),
        };
        b.check().unwrap();
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["driver"], "ipmi");
        assert_eq!(serde_json::from_value::<Bmc>(j).unwrap(), b);
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(b.check().unwrap_err().contains("readable by everyone"));
        assert!("reboot".parse::<Action>().is_err());
    }
}
