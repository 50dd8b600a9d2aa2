//! Enrolment rules: which discovered machines are accepted without the operator, what they
//! are called, and which address each gets.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The first bytes of a MAC ("52:54:00" is QEMU's, "00:16:3e" Xen's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MacPrefix(pub Vec<u8>);

impl std::str::FromStr for MacPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bytes: Result<Vec<u8>, _> = s
            .split([':', '-'])
            .map(|p| {
                if p.len() == 2 {
                    u8::from_str_radix(p, 16).map_err(|_| ())
                } else {
                    Err(())
                }
            })
            .collect();
        match bytes {
            Ok(b) if (1..=6).contains(&b.len()) => Ok(MacPrefix(b)),
            _ => Err(format!(
                "`{s}` is not a MAC prefix; write one to six hex pairs, like \"52:54:00\""
            )),
        }
    }
}

impl std::fmt::Display for MacPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&parts.join(":"))
    }
}

/// When a discovered machine is accepted without the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rules {
    /// MACs starting with one of these.
    pub mac_prefixes: Vec<MacPrefix>,
    /// Vendor classes (DHCP option 60) starting with one of these ("PXEClient:Arch:00007").
    pub vendor_classes: Vec<String>,
    /// What a machine accepted by these rules must have (from its commissioning).
    pub require: crate::Requirements,
}

impl Rules {
    /// Why `mac` (with `vendor_class`) is accepted at once; None: it waits for the operator.
    pub fn accepts(&self, mac: &[u8; 6], vendor_class: Option<&str>) -> Option<String> {
        if let Some(p) = self.mac_prefixes.iter().find(|p| mac.starts_with(&p.0)) {
            return Some(format!("auto-accepted: MAC prefix {p}"));
        }
        let v = vendor_class?;
        self.vendor_classes
            .iter()
            .find(|c| v.starts_with(c.as_str()))
            .map(|c| format!("auto-accepted: vendor class {c}"))
    }
}

/// Checks a host name template: it must make a different name for each machine.
pub fn check_template(t: &str) -> Result<(), String> {
    if !t.contains("{n}") && !t.contains("{mac}") {
        return Err(format!(
            "`{t}` gives every machine the same name; put {{n}} (a number) or {{mac}} in it, like \"hv{{n}}\""
        ));
    }
    let sample = render(t, 1, &[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
    let ok = !sample.is_empty()
        && sample.len() <= 63
        && sample
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !sample.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{t}` does not make a host name (letters, digits and '-'; it makes `{sample}`)"
        ))
    }
}

/// The template with `{n}` and `{mac}` (twelve hex digits) filled in.
pub fn render(t: &str, n: u32, mac: &[u8; 6]) -> String {
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    t.replace("{n}", &n.to_string()).replace("{mac}", &hex)
}

/// The first name from the template that `taken` does not hold, numbering from 1.
pub fn next_name(t: &str, mac: &[u8; 6], taken: &dyn Fn(&str) -> bool) -> String {
    (1..)
        .map(|n| render(t, n, mac))
        .find(|name| !taken(name))
        .expect("an unbounded range has a free name")
}

/// The lowest address of `range` (inclusive) not in `taken`.
pub fn pick(range: (Ipv4Addr, Ipv4Addr), taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (u32::from(range.0)..=u32::from(range.1))
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

    #[test]
    fn rules_accept_by_mac_prefix_or_vendor_class() {
        let r = Rules {
            mac_prefixes: vec!["52:54:00:ab".parse().unwrap()],
            vendor_classes: vec!["PXEClient:Arch:00007".into()],
            ..Rules::default()
        };
        assert_eq!(
            r.accepts(&MAC, None).as_deref(),
            Some("auto-accepted: MAC prefix 52:54:00:ab")
        );
        let other = [0x52, 0x54, 0, 0xac, 0, 1];
        assert_eq!(r.accepts(&other, Some("PXEClient:Arch:00000:UNDI")), None);
        assert!(r
            .accepts(&other, Some("PXEClient:Arch:00007:UNDI:003016"))
            .is_some());
        assert_eq!(Rules::default().accepts(&MAC, Some("PXEClient")), None);
    }

    #[test]
    fn mac_prefixes_parse_or_say_why_not() {
        assert_eq!(
            "00-16-3E".parse::<MacPrefix>().unwrap().to_string(),
            "00:16:3e"
        );
        for bad in ["", "5254", "52:54:0", "zz", "1:2:3:4:5:6:7"] {
            assert!(bad.parse::<MacPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_numbered_from_one_past_those_taken() {
        let taken = |n: &str| ["hv1", "hv2"].contains(&n);
        assert_eq!(next_name("hv{n}", &MAC, &taken), "hv3");
        assert_eq!(render("node-{mac}", 1, &MAC), "node-525400abcdef");
        assert!(check_template("hv{n}").is_ok());
        assert!(check_template("hv").unwrap_err().contains("same name"));
        assert!(check_template("hv_{n}")
            .unwrap_err()
            .contains("makes `hv_1`"));
    }

    #[test]
    fn addresses_come_from_the_pool_in_order() {
        let r = (Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(10, 0, 0, 52));
        let mut taken = HashSet::from([Ipv4Addr::new(10, 0, 0, 50)]);
        assert_eq!(pick(r, &taken), Some(Ipv4Addr::new(10, 0, 0, 51)));
        taken.extend([Ipv4Addr::new(10, 0, 0, 51), Ipv4Addr::new(10, 0, 0, 52)]);
        assert_eq!(pick(r, &taken), None);
    }
}
