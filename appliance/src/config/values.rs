//! Parsers for the value types a config holds. Each returns a message that says what is wrong
//! and what would be right, ready to be put after the key path.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use serde::{Serialize, Serializer};

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a MAC address; write six hex pairs like \"52:54:00:12:34:56\"")
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses "90", "90s", "30m", "12h", "1d", "1w", "250ms" and sums like "1h30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{s}` is not a duration; write a number with a unit: \"90s\", \"30m\", \"12h\", \"1d\", \"1h30m\" or \"250ms\"")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total_ms: u64 = 0;
    let mut num = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit_ms = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 604_800_000,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a size: "512M", "2G", "1T", "2GiB", "1048576" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size; write it like \"512M\", \"2G\" or \"1T\"");
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(bad)
}

/// Formats a duration the way the config writes it ("12h", "1h30m", "45s").
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

/// Linux network interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn check_interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "`{s}` is not a valid interface name; it must be 1 to 15 characters, like \"eth1\" or \"br0\""
        ));
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!(
            "`{s}` is not a valid interface name; it may not contain '/', ':' or spaces, like \"eth1\""
        ));
    }
    Ok(())
}

/// One DNS label as RFC 1123 allows for host names.
pub fn check_hostname(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid host name; use letters, digits and '-' (not first or last), at most 63 characters, like \"vm1\""
        ))
    }
}

/// A domain name: dot-separated host-name labels, at most 253 characters.
pub fn check_domain(s: &str) -> Result<(), String> {
    let t = s.strip_suffix('.').unwrap_or(s);
    if t.is_empty() || t.len() > 253 || t.split('.').any(|l| check_hostname(l).is_err()) {
        return Err(format!(
            "`{s}` is not a valid domain name; write dot-separated labels like \"lab.internal\""
        ));
    }
    Ok(())
}

/// An OpenSSH public key line: "TYPE BASE64 [comment]", the blob naming the same type.
pub fn check_public_key(s: &str) -> Result<(), String> {
    const TYPES: [&str; 6] = [
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
    ];
    let mut parts = s.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "`{s}` is not an SSH public key; paste the host's key line, like \"ssh-ed25519 AAAAC3Nza...\" (ssh-keyscan prints it)"
        ));
    };
    if !TYPES.contains(&kind) {
        return Err(format!(
            "key type `{kind}` is not supported; use one of {}",
            TYPES.join(", ")
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| {
            "the key's base64 part does not decode; paste the whole line again".to_string()
        })?;
    // The blob starts with the key type as an SSH string (u32 length, bytes).
    let named = raw
        .get(4..)
        .and_then(|rest| {
            let n = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
            rest.get(..n)
        })
        .map(|b| b == kind.as_bytes())
        .unwrap_or(false);
    if !named {
        return Err(format!(
            "the key's base64 part is not a `{kind}` key; paste the whole line again"
        ));
    }
    Ok(())
}

/// A secret file (SSH key, TSIG secret, API token): it exists, is a regular file and is not
/// readable by everyone.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("`{}` does not exist", path.display()),
        _ => format!("`{}` cannot be read: {e}", path.display()),
    })?;
    if !meta.is_file() {
        return Err(format!("`{}` is not a regular file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(format!(
            "`{}` is readable by everyone (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("1m30s500ms").unwrap(),
            Duration::from_millis(90_500)
        );
        for bad in ["", "12 hours", "h", "12x", "1h30", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(43_200)), "12h");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "G", "2X", "lots", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn macs() {
        let m: Mac = "52:54:00:AB:cd:10".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:10");
        assert_eq!("52-54-00-ab-cd-10".parse::<Mac>().unwrap(), m);
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:1g",
            "5254.00ab.cd10",
            "52:54:00:ab:cd:100",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(check_interface_name("eth1").is_ok());
        assert!(check_interface_name("a-very-long-name0").is_err());
        assert!(check_interface_name("eth/1").is_err());
        assert!(check_hostname("vm-1").is_ok());
        assert!(check_hostname("-vm").is_err());
        assert!(check_hostname("vm_1").is_err());
        assert!(check_domain("lab.internal").is_ok());
        assert!(check_domain("lab..internal").is_err());
    }

    #[test]
    fn public_keys() {
        // A real ed25519 key line (the blob names its type).
        let k =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl lab";
        assert!(check_public_key(k).is_ok());
        assert!(check_public_key("ssh-ed25519").is_err());
        assert!(check_public_key("ssh-dss AAAA").is_err());
        assert!(check_public_key(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        )
        .is_err());
        assert!(check_public_key("ssh-ed25519 !!!notbase64").is_err());
    }
}
