//! Reads the typed config out of the TOML tree, then checks what spans several sections
//! (reservations against networks, uniqueness). Every problem is kept; none stops the reading.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use toml::de::DeTable;

use super::reader::{check, Located, Problems, Table};
use super::values::{self, Mac};
use super::*;

const TOP_KEYS: &[&str] = &[
    "state_dir",
    "api",
    "network",
    "reservation",
    "dns",
    "ftp",
    "router",
    "placement",
    "migration",
    "dhcp",
    "host",
    "boot",
    "provisioning",
];

pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut p = Problems::new(path, src);
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();

    let (doc, parse_errors) = DeTable::parse_recoverable(src);
    for e in parse_errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().replace('\n', "; ");
        p.at(&span, "", format!("TOML syntax error: {msg}"));
    }
    // With a syntax error the tree is partial; reporting "missing key" on top would mislead.
    if !p.list.is_empty() {
        return Err(finish(p));
    }

    let root = Table::new("", doc.span(), doc.get_ref());
    let mut cx = Cx {
        p,
        base,
        network_names: Vec::new(),
    };

    let state_dir = root
        .string(&mut cx.p, "state_dir")
        .map(|s| cx.path(&s.value))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if let Ok(meta) = std::fs::metadata(&state_dir) {
        if !meta.is_dir() {
            let span = root.get("state_dir").map(|v| v.span()).unwrap_or(0..0);
            cx.p.at(
                &span,
                "state_dir",
                format!("`{}` exists and is not a directory", state_dir.display()),
            );
        }
    }

    let api = root
        .table(&mut cx.p, "api")
        .map(|t| cx.api(t))
        .unwrap_or_default();
    let networks: Vec<_> = root
        .tables(&mut cx.p, "network")
        .into_iter()
        .filter_map(|t| cx.network(t))
        .collect();
    let reservations: Vec<_> = root
        .tables(&mut cx.p, "reservation")
        .into_iter()
        .filter_map(|t| cx.reservation(t))
        .collect();
    let dns = root
        .table(&mut cx.p, "dns")
        .map(|t| cx.dns(t))
        .unwrap_or_default();
    let ftp = root
        .table(&mut cx.p, "ftp")
        .map(|t| cx.ftp(t))
        .unwrap_or_default();
    let router = root.table(&mut cx.p, "router").and_then(|t| cx.router(t));
    let placement = root
        .table(&mut cx.p, "placement")
        .map(|t| cx.placement(t))
        .unwrap_or_default();
    let migration = root
        .table(&mut cx.p, "migration")
        .map(|t| cx.migration(t))
        .unwrap_or_default();
    let dhcp = root
        .table(&mut cx.p, "dhcp")
        .map(|t| cx.dhcp(t))
        .unwrap_or_default();
    let hosts: Vec<_> = root
        .tables(&mut cx.p, "host")
        .into_iter()
        .filter_map(|t| cx.host(t, false))
        .collect();
    let boot_table = root.table(&mut cx.p, "boot");
    let provisioning = root
        .table(&mut cx.p, "provisioning")
        .and_then(|t| cx.provisioning(t));
    let boot = match boot_table {
        Some(t) => Some(cx.boot(t, &state_dir)),
        None if dhcp.pxe.is_some() || provisioning.is_some() => Some(BootConfig {
            dir: state_dir.join("boot"),
            tftp: true,
            http_port: DEFAULT_BOOT_HTTP_PORT,
        }),
        None => None,
    };
    root.finish(&mut cx.p, TOP_KEYS);
    if let Some(p) = dhcp.pxe.as_ref().filter(|p| p.uefi_http.is_some()) {
        if boot.as_ref().is_some_and(|b| b.http_port == 0) {
            cx.p.at(
                &p.span,
                "dhcp.pxe.uefi_http",
                "needs the boot HTTP server, but boot.http_port is 0 (off)",
            );
        }
    }
    if let Some(pr) = &provisioning {
        cx.check_provisioning(pr, &networks, boot.as_ref());
    }

    cx.check_networks(&networks);
    cx.check_reservations(&networks, &reservations);
    cx.check_hosts(&hosts);
    if let Some(r) = &router {
        if let Some(n) = networks
            .iter()
            .find(|n| n.value.interface == r.value.uplink)
        {
            cx.p.at(
                &r.span,
                "router.uplink",
                format!(
                    "`{}` is network `{}`'s interface; the uplink must be another interface",
                    r.value.uplink, n.value.name
                ),
            );
        }
    }

    if !cx.p.list.is_empty() {
        return Err(finish(cx.p));
    }
    Ok(Config {
        source: path.to_path_buf(),
        state_dir,
        api,
        networks: networks.into_iter().map(|n| n.value).collect(),
        reservations: reservations.into_iter().map(|r| r.value).collect(),
        dns,
        ftp,
        router: router.map(|r| r.value),
        placement,
        migration,
        dhcp,
        hosts: hosts.into_iter().map(|h| h.value).collect(),
        boot,
        provisioning: provisioning.map(|p| p.value),
    })
}

/// What a range written high to low is told.
fn backwards(a: Ipv4Addr, b: Ipv4Addr) -> String {
    format!("the range runs backwards ({a} > {b}); write the lower address first")
}

/// Where boot files are served over HTTP when the config names no port.
pub const DEFAULT_BOOT_HTTP_PORT: u16 = 8067;

/// The state_dir named by `src`, ignoring every other key and problem.
pub fn state_dir_of(path: &Path, src: &str) -> PathBuf {
    let base = path.parent().unwrap_or(Path::new("."));
    let (doc, _) = DeTable::parse_recoverable(src);
    doc.get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "state_dir")
        .and_then(|(_, v)| v.get_ref().as_str().map(|s| base.join(s)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

fn not_a_port(v: i64) -> String {
    format!("{v} is not a port; use 1 to 65535")
}

fn finish(p: Problems) -> ConfigErrors {
    let mut list = p.list;
    list.sort_by(|a, b| a.line.cmp(&b.line).then(a.key.cmp(&b.key)));
    ConfigErrors(list)
}

/// What the loader carries: the problems and the folder relative paths resolve against.
struct Cx<'s> {
    p: Problems<'s>,
    base: PathBuf,
    /// Names of all [[network]]s, also those with problems, so that reservations naming a
    /// broken network are not reported a second time.
    network_names: Vec<String>,
}

/// A parsed item with the spans of the fields that cross-checks point at.
struct Item<T> {
    value: T,
    span: Range<usize>,
    fields: HashMap<&'static str, Range<usize>>,
}

impl<T> Item<T> {
    fn at(&self, field: &str) -> Range<usize> {
        self.fields.get(field).cloned().unwrap_or(self.span.clone())
    }
}

impl Cx<'_> {
    fn path(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn secret_file(&mut self, v: Option<Located<String>>) -> Option<PathBuf> {
        let v = v?;
        let path = self.path(&v.value);
        if let Err(m) = values::check_secret_file(&path) {
            self.p.at(&v.span, &v.key, m);
        }
        Some(path)
    }

    fn api(&mut self, t: Table) -> ApiConfig {
        let listen = t
            .parse(&mut self.p, "listen", |s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    format!("`{s}` is not an address with a port; write it like \"127.0.0.1:7070\"")
                })
            })
            .map(|(a, _)| a);
        let token = t.string(&mut self.p, "token_file");
        let token_file = self.secret_file(token);
        if listen.is_some() && token_file.is_none() {
            self.p.at(
                &t.span,
                &t.key_path("token_file"),
                "missing; a TCP listener needs a bearer token: set token_file to a file holding it (mode 600)",
            );
        }
        t.finish(&mut self.p, &["listen", "token_file"]);
        ApiConfig { listen, token_file }
    }

    fn network(&mut self, t: Table) -> Option<Item<Network>> {
        let mut fields = HashMap::new();
        let name = t.required_string(
            &mut self.p,
            "name",
            "give the network a name, like name = \"lab\"",
        );
        let name = check(&mut self.p, name, |s| {
            values::check_hostname(s).map(|_| s.to_string())
        });
        // A network is either attached (the appliance has an interface and an address on it)
        // or reached through a DHCP relay agent (RFC 1542), whose address is the giaddr of
        // its requests and the clients' router there.
        let relayed = t.get("relay").is_some();
        let (iface, addr_key, via) = if relayed {
            for k in ["interface", "address"] {
                if let Some(v) = t.get(k) {
                    self.p.at(
                        &v.span(),
                        &t.key_path(k),
                        format!("a relayed network has no {k} of its own; `via` names the network its relay reaches the appliance through"),
                    );
                }
            }
            let via = t.required_string(
                &mut self.p,
                "via",
                "name the network whose interface the relay's requests arrive on, like via = \"lab\"",
            );
            (None, "relay", via.map(|v| (v.value, v.span)))
        } else {
            let iface = t.required_string(
                &mut self.p,
                "interface",
                "name the interface this network is served on, like interface = \"eth1\"",
            );
            let iface = check(&mut self.p, iface, |s| {
                values::check_interface_name(s).map(|_| s.to_string())
            });
            (iface, "address", None)
        };
        let addr = t.required_string(
            &mut self.p,
            addr_key,
            if relayed {
                "give the relay agent's address with the network's prefix, like relay = \"10.0.2.1/24\""
            } else {
                "give the appliance's address with its prefix, like address = \"10.0.0.1/24\""
            },
        );
        let address = check(&mut self.p, addr, |s| {
            let net: Ipv4Net = s.parse().map_err(|_| {
                format!("`{s}` is not an IPv4 address with a prefix; write it like \"10.0.0.1/24\"")
            })?;
            if net.prefix_len() > 30 {
                return Err(format!(
                    "prefix /{} leaves no room for clients; use /30 or shorter",
                    net.prefix_len()
                ));
            }
            if net.addr() == net.network() || net.addr() == net.broadcast() {
                return Err(format!(
                    "{} is the {} address of {}; {} needs a host address, like \"{}/{}\"",
                    net.addr(),
                    if net.addr() == net.network() {
                        "network"
                    } else {
                        "broadcast"
                    },
                    net.trunc(),
                    if relayed {
                        "the relay"
                    } else {
                        "the appliance"
                    },
                    Ipv4Addr::from(u32::from(net.network()) + 1),
                    net.prefix_len()
                ));
            }
            Ok(net)
        });
        let range = t.strings(&mut self.p, "dhcp_range");
        let mut dhcp_range = None;
        if let (Some(items), Some((net, _))) = (range, address.as_ref()) {
            let span = t
                .get("dhcp_range")
                .map(|v| v.span())
                .unwrap_or(t.span.clone());
            let key = t.key_path("dhcp_range");
            fields.insert("dhcp_range", span.clone());
            let pair = self.address_pair(&items, &span, &key, "[\"10.0.0.100\", \"10.0.0.199\"]");
            if !pair.is_empty() {
                let mut ends = Vec::new();
                for it in pair {
                    let a = it.value;
                    if !net.contains(&a) {
                        self.p.at(
                            &it.span,
                            &it.key,
                            format!(
                                "{a} lies outside the network {}; pick addresses inside it",
                                net.trunc()
                            ),
                        );
                    } else if a == net.network() || a == net.broadcast() {
                        self.p.at(
                            &it.span,
                            &it.key,
                            format!(
                                "{a} is the network's {} address; it cannot be leased",
                                if a == net.network() {
                                    "network"
                                } else {
                                    "broadcast"
                                }
                            ),
                        );
                    } else {
                        ends.push(a);
                    }
                }
                if let [a, b] = ends[..] {
                    if a > b {
                        self.p.at(&span, &key, backwards(a, b));
                    } else if (a..=b).contains(&net.addr()) {
                        self.p.at(
                            &span,
                            &key,
                            format!(
                                "the range contains {} own address {}; start or end it elsewhere",
                                if relayed {
                                    "the relay's"
                                } else {
                                    "the appliance's"
                                },
                                net.addr()
                            ),
                        );
                    } else {
                        dhcp_range = Some((a, b));
                    }
                }
            }
        }
        let lease = t.parse(&mut self.p, "lease_time", |s| {
            let d = values::parse_duration(s)?;
            if d < Duration::from_secs(60) {
                return Err(format!(
                    "`{s}` is too short for a lease; use at least \"1m\""
                ));
            }
            Ok(d)
        });
        let domain = t
            .parse(&mut self.p, "domain", |s| {
                values::check_domain(s).map(|_| s.trim_end_matches('.').to_string())
            })
            .map(|(d, _)| d);
        let span = t.span.clone();
        t.finish(
            &mut self.p,
            &[
                "name",
                "interface",
                "address",
                "relay",
                "via",
                "dhcp_range",
                "lease_time",
                "domain",
            ],
        );
        let (name, name_span) = name?;
        self.network_names.push(name.clone());
        let (address, _) = address?;
        fields.insert("name", name_span);
        // A bad interface is already reported; keep the network so that reservations naming
        // it are still checked against its address.
        let interface = match iface {
            Some((i, span)) => {
                fields.insert("interface", span);
                i
            }
            None => String::new(),
        };
        let via = via.map(|(v, span)| {
            fields.insert("via", span);
            v
        });
        Some(Item {
            value: Network {
                name,
                interface,
                address,
                via,
                dhcp_range,
                lease_time: lease
                    .map(|(d, _)| d)
                    .unwrap_or(Duration::from_secs(12 * 3600)),
                domain,
            },
            span,
            fields,
        })
    }

    fn reservation(&mut self, t: Table) -> Option<Item<Reservation>> {
        let mut fields = HashMap::new();
        let network = t.required_string(
            &mut self.p,
            "network",
            "name the [[network]] this reservation belongs to",
        );
        let mac = t.parse(&mut self.p, "mac", |s| s.parse::<Mac>());
        let client_id = t.string(&mut self.p, "client_id");
        let hostname = t.parse(&mut self.p, "hostname", |s| {
            values::check_hostname(s).map(|_| s.to_string())
        });
        let ip = t.required_string(
            &mut self.p,
            "ip",
            "give the reserved address, like ip = \"10.0.0.10\"",
        );
        let ip = check(&mut self.p, ip, |s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| format!("`{s}` is not an IPv4 address; write it like \"10.0.0.10\""))
        });
        let has_id =
            t.get("mac").is_some() || t.get("client_id").is_some() || t.get("hostname").is_some();
        if !has_id {
            self.p.at(
                &t.span,
                &t.key_path("mac"),
                "missing; a reservation needs mac, client_id or hostname to know whom it is for",
            );
        }
        let span = t.span.clone();
        t.finish(
            &mut self.p,
            &["network", "mac", "client_id", "hostname", "ip"],
        );
        let network = network?;
        let (ip, ip_span) = ip?;
        fields.insert("network", network.span.clone());
        fields.insert("ip", ip_span);
        if let Some((_, s)) = &mac {
            fields.insert("mac", s.clone());
        }
        if let Some((_, s)) = &hostname {
            fields.insert("hostname", s.clone());
        }
        if !has_id {
            return None;
        }
        Some(Item {
            value: Reservation {
                network: network.value,
                mac: mac.map(|(m, _)| m),
                client_id: client_id.map(|c| c.value),
                hostname: hostname.map(|(h, _)| h),
                ip,
            },
            span,
            fields,
        })
    }

    /// A list of DNS servers: addresses, with port 53 unless given.
    fn dns_servers(&mut self, t: &Table, key: &str) -> Vec<SocketAddr> {
        let mut servers = Vec::new();
        for f in t.strings(&mut self.p, key).unwrap_or_default() {
            let parsed = f
                .value
                .parse::<SocketAddr>()
                .or_else(|_| f.value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => servers.push(a),
                Err(_) => self.p.at(
                    &f.span,
                    &f.key,
                    format!("`{}` is not an IP address; write it like \"192.0.2.53\" or \"192.0.2.53:5353\"", f.value),
                ),
            }
        }
        servers
    }

    fn dns(&mut self, t: Table) -> DnsConfig {
        let mut dc = DnsConfig::default();
        if let Some(port) = t.integer_in(&mut self.p, "port", 1..=65535, not_a_port) {
            dc.port = port as u16;
        }
        if let Some((d, _)) = t.parse(&mut self.p, "ttl", |s| {
            let d = values::parse_duration(s)?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
                return Err(format!("`{s}` is not a useful TTL; use \"1s\" to \"1d\""));
            }
            Ok(d)
        }) {
            dc.ttl = d;
        }
        let forwarders = self.dns_servers(&t, "forwarders");
        let secondaries = self.dns_servers(&t, "secondaries");
        let mut tsig_keys = Vec::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        for k in t.tables(&mut self.p, "tsig_key") {
            let name = k.required_string(
                &mut self.p,
                "name",
                "name the key as clients will, like name = \"ddns\"",
            );
            let name = check(&mut self.p, name, |s| {
                values::check_domain(s).map(|_| s.to_string())
            });
            let algo = k.parse(&mut self.p, "algorithm", |s| {
                const ALGS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];
                if ALGS.contains(&s) {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "`{s}` is not supported; use one of {}",
                        ALGS.join(", ")
                    ))
                }
            });
            let secret = k.required_string(
                &mut self.p,
                "secret_file",
                "point to a file holding the base64 secret (mode 600)",
            );
            let secret_file = self.secret_file(secret);
            if let Some((n, span)) = &name {
                if seen.insert(n.clone(), ()).is_some() {
                    self.p.at(
                        span,
                        &k.key_path("name"),
                        format!("a TSIG key named `{n}` is already defined; names must be unique"),
                    );
                }
            }
            k.finish(&mut self.p, &["name", "algorithm", "secret_file"]);
            if let (Some((name, _)), Some(secret_file)) = (name, secret_file) {
                tsig_keys.push(TsigKey {
                    name,
                    algorithm: algo.map(|(a, _)| a).unwrap_or_else(|| "hmac-sha256".into()),
                    secret_file,
                });
            }
        }
        t.finish(
            &mut self.p,
            &["port", "ttl", "forwarders", "secondaries", "tsig_key"],
        );
        DnsConfig {
            forwarders,
            secondaries,
            tsig_keys,
            ..dc
        }
    }

    fn ftp(&mut self, t: Table) -> FtpConfig {
        let mut ftp = FtpConfig::default();
        if let Some(arr) = t.array(&mut self.p, "passive_ports") {
            let ports: Vec<Option<i64>> = arr
                .value
                .iter()
                .map(|(_, v)| {
                    v.get_ref()
                        .as_integer()
                        .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok())
                })
                .collect();
            match ports[..] {
                [Some(lo), Some(hi)] if (1024..=65535).contains(&lo) && (1024..=65535).contains(&hi) && lo <= hi => {
                    ftp.passive_ports = (lo as u16, hi as u16);
                }
                _ => self.p.at(
                    &arr.span,
                    &arr.key,
                    "expected two ports, lowest then highest, between 1024 and 65535, like [50000, 50100]",
                ),
            }
        }
        if let Some(port) = t.integer_in(&mut self.p, "port", 1..=65535, not_a_port) {
            ftp.port = port as u16;
        }
        if let Some((r, _)) = t.parse(&mut self.p, "reserve", values::parse_size) {
            ftp.reserve_bytes = r;
        }
        if let Some(k) = t.integer_in(&mut self.p, "keep", 1..=1000, |v| {
            format!("{v} generations: keep at least 1 (and at most 1000)")
        }) {
            ftp.keep = k as usize;
        }
        if let Some((c, _)) = t.parse(&mut self.p, "compress", |s| match s {
            "none" => Ok(false),
            "zstd" => Ok(true),
            _ => Err(format!(
                "`{s}` is not a compression; use \"zstd\" or \"none\""
            )),
        }) {
            ftp.compress = c.then_some(3);
        }
        if let Some(l) = t.integer(&mut self.p, "compress_level") {
            if !(1..=19).contains(&l.value) {
                self.p.at(
                    &l.span,
                    &l.key,
                    format!(
                        "{} is not a zstd level; use 1 (fastest) to 19 (smallest)",
                        l.value
                    ),
                );
            } else if ftp.compress.is_none() {
                self.p
                    .at(&l.span, &l.key, "set compress = \"zstd\" too, or remove it");
            } else {
                ftp.compress = Some(l.value as i32);
            }
        }
        if let Some(v) = t.boolean(&mut self.p, "verify_downloads") {
            ftp.verify_downloads = v.value;
        }
        let cert = t.string(&mut self.p, "tls_cert");
        let key = t.string(&mut self.p, "tls_key");
        match (cert, key) {
            (Some(c), Some(k)) => {
                let cert_path = self.path(&c.value);
                if !cert_path.is_file() {
                    self.p.at(
                        &c.span,
                        &c.key,
                        format!("`{}` does not exist", cert_path.display()),
                    );
                }
                if let Some(key_path) = self.secret_file(Some(k)) {
                    ftp.tls = Some((cert_path, key_path));
                }
            }
            (Some(c), None) => self.p.at(
                &c.span,
                &t.key_path("tls_key"),
                "missing; FTPS needs the key of tls_cert too",
            ),
            (None, Some(k)) => self.p.at(
                &k.span,
                &t.key_path("tls_cert"),
                "missing; FTPS needs the certificate of tls_key too",
            ),
            (None, None) => {}
        }
        t.finish(
            &mut self.p,
            &[
                "port",
                "passive_ports",
                "reserve",
                "keep",
                "tls_cert",
                "tls_key",
                "verify_downloads",
                "compress",
                "compress_level",
            ],
        );
        ftp
    }

    fn router(&mut self, t: Table) -> Option<Located<RouterConfig>> {
        let uplink = t.required_string(
            &mut self.p,
            "uplink",
            "name the interface towards the outside, like uplink = \"eth0\"",
        );
        let uplink = check(&mut self.p, uplink, |s| {
            values::check_interface_name(s).map(|_| s.to_string())
        });
        let nat = t
            .boolean(&mut self.p, "nat")
            .map(|b| b.value)
            .unwrap_or(true);
        t.finish(&mut self.p, &["uplink", "nat"]);
        let (uplink, span) = uplink?;
        Some(Located {
            value: RouterConfig { uplink, nat },
            key: "router.uplink".into(),
            span,
        })
    }

    fn placement(&mut self, t: Table) -> PlacementConfig {
        let mut pc = PlacementConfig::default();
        if let Some(v) = t.get("cpu_overcommit") {
            let key = t.key_path("cpu_overcommit");
            let n = v
                .get_ref()
                .as_float()
                .and_then(|f| f.as_str().parse::<f64>().ok())
                .or_else(|| {
                    v.get_ref()
                        .as_integer()
                        .and_then(|i| i.as_str().parse::<f64>().ok())
                });
            match n {
                Some(n) if (0.1..=64.0).contains(&n) => pc.cpu_overcommit = n,
                _ => self.p.at(
                    &v.span(),
                    &key,
                    "expected a number between 0.1 and 64, like 4 (vCPUs per core)",
                ),
            }
        }
        if let Some(h) = t.integer_in(&mut self.p, "headroom_pct", 0..=90, |v| {
            format!("{v}% is not a headroom; use 0 to 90")
        }) {
            pc.headroom_pct = h as u8;
        }
        if let Some((d, _)) = t.parse(&mut self.p, "stale_after", values::parse_duration) {
            pc.stale_after = d;
        }
        t.finish(
            &mut self.p,
            &["cpu_overcommit", "headroom_pct", "stale_after"],
        );
        pc
    }

    fn dhcp(&mut self, t: Table) -> DhcpConfig {
        let mut dc = DhcpConfig::default();
        if let Some(s) = t.string(&mut self.p, "script") {
            dc.script = self.script(&s.value, &s.span, "dhcp.script");
        }
        if let Some(b) = t.boolean(&mut self.p, "conflict_check") {
            dc.conflict_check = b.value;
        }
        if let Some((d, _)) = t.parse(&mut self.p, "conflict_wait", |s| {
            let d = values::parse_duration(s)?;
            if d.is_zero() || d > Duration::from_secs(5) {
                return Err(format!(
                    "`{s}` is not a useful wait; clients retry after 4 s, use \"100ms\" to \"5s\""
                ));
            }
            Ok(d)
        }) {
            dc.conflict_wait = d;
        }
        if let Some((d, _)) = t.parse(&mut self.p, "rogue_probe", |s| {
            let d = values::parse_duration(s)?;
            if !d.is_zero() && d < Duration::from_secs(10) {
                return Err(format!(
                    "`{s}` would flood the network with probes; use \"1m\" or so, at least \"10s\", or \"0s\" to only listen"
                ));
            }
            Ok(d)
        }) {
            dc.rogue_probe = (!d.is_zero()).then_some(d);
        }
        if let Some(pt) = t.table(&mut self.p, "pxe") {
            dc.pxe = Some(self.pxe(pt));
        }
        t.finish(
            &mut self.p,
            &[
                "script",
                "conflict_check",
                "conflict_wait",
                "rogue_probe",
                "pxe",
            ],
        );
        dc
    }

    /// `[dhcp.pxe]`: what network-booting clients get.
    fn pxe(&mut self, t: Table) -> PxeConfig {
        let next_server = t
            .parse(&mut self.p, "next_server", |s| {
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("`{s}` is not an IPv4 address"))
            })
            .map(|(a, _)| a);
        let mut file = |key: &str| {
            t.parse(&mut self.p, key, |s| {
                if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control()) {
                    Err(format!(
                        "`{s}` is not a boot file name (1 to 255 printable characters)"
                    ))
                } else {
                    Ok(s.to_string())
                }
            })
            .map(|(f, _)| f)
        };
        let (bios, uefi, uefi_arm64) = (file("bios"), file("uefi"), file("uefi_arm64"));
        // Fetched from the boot HTTP server: a path under the boot directory.
        let uefi_http = t
            .parse(&mut self.p, "uefi_http", |s| {
                if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") || s.contains(char::is_whitespace) {
                    Err(format!(
                        "`{s}` is not a path under the boot directory; write it like \"ipxe.efi\" (UEFI HTTP boot fetches it from the boot HTTP server)"
                    ))
                } else {
                    Ok(s.to_string())
                }
            })
            .map(|(f, _)| f);
        let ipxe_script = t
            .parse(&mut self.p, "ipxe_script", |s| {
                if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("tftp://") {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "`{s}` is not a URL iPXE can chain to; write it like \"http://10.0.0.1:8080/boot.ipxe\""
                    ))
                }
            })
            .map(|(u, _)| u);
        if bios.is_none()
            && uefi.is_none()
            && uefi_arm64.is_none()
            && uefi_http.is_none()
            && ipxe_script.is_none()
        {
            self.p.at(
                &t.span,
                "dhcp.pxe",
                "names no boot file; give at least one of bios, uefi, uefi_arm64, uefi_http, ipxe_script",
            );
        }
        let span = t.span.clone();
        t.finish(
            &mut self.p,
            &[
                "next_server",
                "bios",
                "uefi",
                "uefi_arm64",
                "uefi_http",
                "ipxe_script",
            ],
        );
        PxeConfig {
            next_server,
            bios,
            uefi,
            uefi_arm64,
            uefi_http,
            ipxe_script,
            span,
        }
    }

    /// An executable file the appliance will run, or the problem reported at `key`.
    fn script(&mut self, value: &str, span: &Range<usize>, key: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(value);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Some(path),
            Ok(_) => {
                self.p.at(
                    span,
                    key,
                    format!("`{}` is not an executable file", path.display()),
                );
                None
            }
            Err(e) => {
                self.p.at(span, key, format!("`{}`: {e}", path.display()));
                None
            }
        }
    }

    fn migration(&mut self, t: Table) -> MigrationConfig {
        let mut mc = MigrationConfig::default();
        if let Some(n) = t.integer_in(&mut self.p, "max_per_host", 1..=64, |v| {
            format!("{v} is not a limit; use 1 to 64 moves in flight per host")
        }) {
            mc.max_per_host = n as usize;
        }
        if let Some(n) = t.integer_in(&mut self.p, "max_per_link", 1..=64, |v| {
            format!("{v} is not a limit; use 1 to 64 moves in flight between two hosts")
        }) {
            mc.max_per_link = n as usize;
        }
        let any = Duration::from_nanos(1);
        if let Some(d) = t.duration_in(
            &mut self.p,
            "downtime",
            any..=Duration::from_secs(10),
            "expected a pause between 1ms and 10s, like \"100ms\"",
        ) {
            mc.downtime = d;
        }
        if let Some(d) = t.duration_in(
            &mut self.p,
            "live_timeout",
            Duration::from_secs(1)..=Duration::from_secs(3600),
            "expected between 1s and 1h, like \"60s\"",
        ) {
            mc.live_timeout = d;
        }
        if let Some(s) = t.string(&mut self.p, "after_move") {
            mc.after_move = self.script(&s.value, &s.span, "migration.after_move");
        }
        if let Some(d) = t.duration_in(
            &mut self.p,
            "hook_timeout",
            any..=Duration::from_secs(600),
            "expected between 1s and 10m, like \"10s\"",
        ) {
            mc.hook_timeout = d;
        }
        if let Some(n) = t.integer_in(&mut self.p, "retries", 0..=10, |v| {
            format!("{v} retries: use 0 to 10")
        }) {
            mc.retries = n as u32;
        }
        if let Some(d) = t.duration_in(
            &mut self.p,
            "probe_interval",
            Duration::from_millis(1)..=Duration::from_secs(10),
            "expected between 1ms and 10s, like \"10ms\"",
        ) {
            mc.probe_interval = d;
        }
        if let Some(d) = t.duration_in(
            &mut self.p,
            "mirror_timeout",
            Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600),
            "expected between 1s and 7d, like \"1h\"",
        ) {
            mc.mirror_timeout = d;
        }
        if let Some((v, _)) = t.parse(&mut self.p, "source_disks", |s| match s {
            "keep" => Ok(super::SourceDisks::Keep),
            "remove" => Ok(super::SourceDisks::Remove),
            _ => Err(format!("`{s}`: use \"keep\" or \"remove\"")),
        }) {
            mc.source_disks = v;
        }
        t.finish(
            &mut self.p,
            &[
                "max_per_host",
                "max_per_link",
                "downtime",
                "live_timeout",
                "after_move",
                "hook_timeout",
                "retries",
                "probe_interval",
                "mirror_timeout",
                "source_disks",
            ],
        );
        mc
    }

    /// The two addresses, first and last, that `items` (the strings at `key`) hold: a count
    /// other than two is reported at `span` (with `example`) and gives none; an item that is
    /// not an IPv4 address is reported and left out.
    fn address_pair(
        &mut self,
        items: &[Located<String>],
        span: &Range<usize>,
        key: &str,
        example: &str,
    ) -> Vec<Located<Ipv4Addr>> {
        if items.len() != 2 {
            self.p.at(
                span,
                key,
                format!("expected two addresses, first and last, like {example}"),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for it in items {
            match it.value.parse::<Ipv4Addr>() {
                Ok(a) => out.push(Located {
                    value: a,
                    key: it.key.clone(),
                    span: it.span.clone(),
                }),
                Err(_) => self.p.at(
                    &it.span,
                    &it.key,
                    format!("`{}` is not an IPv4 address", it.value),
                ),
            }
        }
        out
    }

    /// `[boot]`: where boot files come from and how they are served.
    fn boot(&mut self, t: Table, state_dir: &Path) -> BootConfig {
        let dir = t
            .string(&mut self.p, "dir")
            .map(|d| self.path(&d.value))
            .unwrap_or_else(|| state_dir.join("boot"));
        let tftp = t.boolean(&mut self.p, "tftp").is_none_or(|b| b.value);
        let http_port = t
            .integer_in(&mut self.p, "http_port", 0..=65535, not_a_port)
            .map_or(DEFAULT_BOOT_HTTP_PORT, |p| p as u16);
        t.finish(&mut self.p, &["dir", "tftp", "http_port"]);
        BootConfig {
            dir,
            tftp,
            http_port,
        }
    }

    /// `[provisioning]`: how network-booted machines become hosts.
    fn provisioning(&mut self, t: Table) -> Option<Located<ProvisioningConfig>> {
        let span = t.span.clone();
        let network = t.required_string(
            &mut self.p,
            "network",
            "name the network whose network-booting machines are enrolled, like network = \"lab\"",
        );
        let example = "[\"10.0.0.50\", \"10.0.0.59\"]";
        let pool = match t.strings(&mut self.p, "pool") {
            None => {
                self.p.at(
                    &span,
                    "provisioning.pool",
                    format!("missing; give the first and last address for enrolled hosts, like {example}"),
                );
                None
            }
            Some(items) => {
                let at = t.get("pool").map(|v| v.span()).unwrap_or(span.clone());
                match self.address_pair(&items, &at, "provisioning.pool", example)[..] {
                    [ref a, ref b] if a.value > b.value => {
                        self.p
                            .at(&at, "provisioning.pool", backwards(a.value, b.value));
                        None
                    }
                    [ref a, ref b] => Some((a.value, b.value)),
                    _ => None,
                }
            }
        };
        let hostname = t
            .parse(&mut self.p, "hostname", |s| {
                netmigrate_provisioning::rules::check_template(s).map(|_| s.to_string())
            })
            .map_or_else(|| "hv{n}".to_string(), |(h, _)| h);
        let mut rules = netmigrate_provisioning::Rules::default();
        for it in t
            .strings(&mut self.p, "auto_accept_mac")
            .unwrap_or_default()
        {
            match it.value.parse() {
                Ok(p) => rules.mac_prefixes.push(p),
                Err(e) => self.p.at(&it.span, &it.key, e),
            }
        }
        for it in t
            .strings(&mut self.p, "auto_accept_vendor")
            .unwrap_or_default()
        {
            if it.value.is_empty() {
                self.p.at(&it.span, &it.key, "an empty vendor class would accept every machine; name the class, like \"PXEClient:Arch:00007\"");
            } else {
                rules.vendor_classes.push(it.value);
            }
        }
        rules.require.min_memory_mib = t
            .parse(&mut self.p, "min_memory", values::parse_size)
            .map(|(b, _)| b >> 20);
        rules.require.min_disk_bytes = t
            .parse(&mut self.p, "min_disk", values::parse_size)
            .map(|(b, _)| b);
        rules.require.require_virt = t
            .boolean(&mut self.p, "require_virt")
            .is_some_and(|b| b.value);
        let commission = match t.boolean(&mut self.p, "commission") {
            Some(c) if !c.value && !rules.require.is_empty() => {
                self.p.at(&c.span, "provisioning.commission", "is false, but min_memory, min_disk or require_virt need each machine's hardware, which commissioning reports; set it true or drop the requirements");
                false
            }
            c => c.is_none_or(|c| c.value),
        };
        let boot_path = |s: &str| {
            if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
                Err(format!("`{s}` is not a path under the boot directory; write it like \"installer/vmlinuz\""))
            } else {
                Ok(s.to_string())
            }
        };
        let kernel = t
            .parse(&mut self.p, "kernel", boot_path)
            .map_or_else(|| "installer/vmlinuz".into(), |(k, _)| k);
        let initrd = t
            .parse(&mut self.p, "initrd", boot_path)
            .map_or_else(|| "installer/initrd.img".into(), |(k, _)| k);
        let cmdline = t
            .string(&mut self.p, "cmdline")
            .map(|c| c.value)
            .unwrap_or_default();
        let token_ttl = t
            .parse(&mut self.p, "token_ttl", |s| {
                let d = values::parse_duration(s)?;
                if d < Duration::from_secs(60) {
                    return Err(format!(
                        "`{s}` is shorter than an installer takes to boot; use at least \"1m\""
                    ));
                }
                Ok(d)
            })
            .map_or(Duration::from_secs(3600), |(d, _)| d);
        let deploy_timeout = t
            .parse(&mut self.p, "deploy_timeout", |s| {
                let d = values::parse_duration(s)?;
                if d < Duration::from_secs(60) {
                    return Err(format!(
                        "`{s}` is shorter than a machine takes to write an image and boot it; use at least \"1m\""
                    ));
                }
                Ok(d)
            })
            .map_or(Duration::from_secs(30 * 60), |(d, _)| d);
        let mut profiles: Vec<Profile> = Vec::new();
        for (i, pt) in t.tables(&mut self.p, "profile").into_iter().enumerate() {
            if let Some(pr) = self.profile(pt, &boot_path) {
                if profiles.iter().any(|o| o.name == pr.value.name) {
                    self.p.at(
                        &pr.span,
                        &format!("provisioning.profile[{i}].name"),
                        format!("`{}` names two profiles", pr.value.name),
                    );
                } else {
                    profiles.push(pr.value);
                }
            }
        }
        let profile = t.string(&mut self.p, "default_profile").and_then(|pr| {
            if profiles.iter().any(|o| o.name == pr.value) {
                Some(pr.value)
            } else {
                let known: Vec<&str> = profiles.iter().map(|o| o.name.as_str()).collect();
                self.p.at(
                    &pr.span,
                    &pr.key,
                    format!(
                        "no [[provisioning.profile]] is named `{}`{}",
                        pr.value,
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!(" (there are: {})", known.join(", "))
                        }
                    ),
                );
                None
            }
        });
        let host = match t.table(&mut self.p, "host") {
            Some(h) => self.host(h, true),
            None => {
                self.p.at(&span, "provisioning.host", "missing; say what an enrolled host is, like [provisioning.host] with ssh_key, hypervisor and bridge");
                None
            }
        };
        t.finish(
            &mut self.p,
            &[
                "network",
                "pool",
                "hostname",
                "auto_accept_mac",
                "auto_accept_vendor",
                "min_memory",
                "min_disk",
                "require_virt",
                "commission",
                "kernel",
                "initrd",
                "cmdline",
                "token_ttl",
                "host",
                "profile",
                "default_profile",
                "deploy_timeout",
            ],
        );
        let network = network?;
        Some(Located {
            value: ProvisioningConfig {
                network: network.value,
                pool: pool?,
                hostname,
                rules,
                commission,
                kernel,
                initrd,
                cmdline,
                token_ttl,
                host: host?.value,
                profiles,
                profile,
                deploy_timeout,
            },
            span: network.span,
            key: "provisioning.network".into(),
        })
    }

    /// `[[provisioning.profile]]`: a name, an image under the boot directory, the hypervisor.
    fn profile(
        &mut self,
        t: Table,
        boot_path: &dyn Fn(&str) -> Result<String, String>,
    ) -> Option<Item<Profile>> {
        let name = t.required_string(&mut self.p, "name", "name the profile, like name = \"xen\"");
        let name = check(&mut self.p, name, |s| {
            values::check_hostname(s).map(|_| s.to_string())
        });
        let image = match t.get("image") {
            Some(_) => t.parse(&mut self.p, "image", boot_path).map(|(i, _)| i),
            None => {
                self.p.at(&t.span, &t.key_path("image"), "missing; the host image under the boot directory, like image = \"images/xen/host.img\" (make host-image builds it)");
                None
            }
        };
        let hypervisor = t.required_string(
            &mut self.p,
            "hypervisor",
            "say what the deployed host runs: hypervisor = \"xen\" or \"qemu\"",
        );
        let hypervisor = check(&mut self.p, hypervisor, HypervisorKind::parse);
        if let Some(d) = t.string(&mut self.p, "deploy") {
            match d.value.as_str() {
                "disk" => {}
                "ram" => self.p.at(&d.span, &d.key, "\"ram\" (booting the image from the network at every boot) is not built yet; use \"disk\""),
                other => self.p.at(&d.span, &d.key, format!("`{other}` is not a way to deploy; use \"disk\"")),
            }
        }
        let disk = t.string(&mut self.p, "disk").map(|d| d.value);
        t.finish(
            &mut self.p,
            &["name", "image", "hypervisor", "deploy", "disk"],
        );
        let (name, span) = name?;
        Some(Item {
            value: Profile {
                name,
                image: image?,
                hypervisor: hypervisor?.0,
                disk,
            },
            span,
            fields: HashMap::new(),
        })
    }

    /// The provisioning network exists, serves DHCP, and its pool fits inside it and beside
    /// its dynamic range; the boot HTTP server (which the installer calls back) is on.
    fn check_provisioning(
        &mut self,
        pr: &Located<ProvisioningConfig>,
        nets: &[Item<Network>],
        boot: Option<&BootConfig>,
    ) {
        let p = &pr.value;
        let Some(net) = nets.iter().find(|n| n.value.name == p.network) else {
            if !self.network_names.contains(&p.network) {
                self.p.at(
                    &pr.span,
                    &pr.key,
                    format!("no [[network]] is named `{}`", p.network),
                );
            }
            return;
        };
        let n = &net.value;
        let Some(range) = n.dhcp_range.filter(|_| n.via.is_none()) else {
            self.p.at(&pr.span, &pr.key, format!("network `{}` must be attached and have a dhcp_range: machines boot by DHCP there", n.name));
            return;
        };
        for ip in [p.pool.0, p.pool.1] {
            if let Err(e) = n.reservable(ip) {
                self.p.at(&pr.span, "provisioning.pool", e);
            }
        }
        let (lo, hi) = (u32::from(p.pool.0), u32::from(p.pool.1));
        if lo <= u32::from(range.1) && u32::from(range.0) <= hi {
            self.p.at(&pr.span, "provisioning.pool", format!(
                "{}-{} overlaps network `{}`'s dhcp_range {}-{}; enrolled hosts' addresses must lie outside it",
                p.pool.0, p.pool.1, n.name, range.0, range.1
            ));
        }
        if boot.is_some_and(|b| b.http_port == 0) {
            self.p.at(&pr.span, "boot.http_port", "is 0 (off), but [provisioning] needs it: the installer is served and calls back over HTTP");
        }
    }

    fn host(&mut self, t: Table, template: bool) -> Option<Item<HostConfig>> {
        let mut fields = HashMap::new();
        let (name, address) = if template {
            // An enrolled host's name and address are its own, given when it is accepted.
            for (k, why) in [
                (
                    "name",
                    "is each machine's own, from provisioning.hostname when it is accepted",
                ),
                (
                    "address",
                    "is each machine's own, from provisioning.pool when it is accepted",
                ),
                (
                    "host_key",
                    "is each machine's own, pinned when its installer calls back",
                ),
            ] {
                if let Some(v) = t.get(k) {
                    self.p.at(&v.span(), &t.key_path(k), why);
                }
            }
            (
                Some((String::new(), t.span.clone())),
                Some((IpAddr::V4(Ipv4Addr::UNSPECIFIED), t.span.clone())),
            )
        } else {
            let name = t.required_string(
                &mut self.p,
                "name",
                "give the host a name, like name = \"hostA\"",
            );
            let name = check(&mut self.p, name, |s| {
                values::check_hostname(s).map(|_| s.to_string())
            });
            let address = t.required_string(
                &mut self.p,
                "address",
                "give the address the appliance reaches it at over SSH",
            );
            let address = check(&mut self.p, address, |s| {
                s.parse::<IpAddr>()
                    .map_err(|_| format!("`{s}` is not an IP address; write it like \"10.0.0.11\""))
            });
            (name, address)
        };
        let ssh_port = t
            .integer_in(&mut self.p, "ssh_port", 1..=65535, not_a_port)
            .map_or(22, |p| p as u16);
        let ssh_user = t
            .string(&mut self.p, "ssh_user")
            .map(|u| u.value)
            .unwrap_or_else(|| "root".into());
        let key = t.required_string(
            &mut self.p,
            "ssh_key",
            "point to the private key the appliance logs in with (mode 600)",
        );
        let ssh_key = self.secret_file(key);
        let host_key = t
            .parse(&mut self.p, "host_key", |s| {
                values::check_public_key(s).map(|_| s.trim().to_string())
            })
            .map(|(k, _)| k);
        let hv = t.parse(&mut self.p, "hypervisor", HypervisorKind::parse);
        let bridge = t
            .parse(&mut self.p, "bridge", |s| {
                values::check_interface_name(s).map(|_| s.to_string())
            })
            .map(|(b, _)| b);
        let ovsdb = t.parse(&mut self.p, "ovsdb", |s| {
            if s.starts_with("unix:/") || s.starts_with("tcp:") || s.starts_with("ssl:") {
                Ok(s.to_string())
            } else {
                Err(format!("`{s}` is not an OVSDB address; write it like \"unix:/var/run/openvswitch/db.sock\""))
            }
        });
        let abs_dir = |s: &str| {
            if s.starts_with('/') {
                Ok(s.to_string())
            } else {
                Err(format!("`{s}` is not an absolute path on the host; write it like \"/var/lib/xen/images\""))
            }
        };
        let image_dir = t.parse(&mut self.p, "image_dir", abs_dir).map(|(d, _)| d);
        let save_dir = t.parse(&mut self.p, "save_dir", abs_dir).map(|(d, _)| d);
        let run_dir = t.parse(&mut self.p, "run_dir", abs_dir).map(|(d, _)| d);
        let accel = t.parse(&mut self.p, "qemu_accel", |s: &str| {
            let ok = !s.is_empty()
                && s.split(':')
                    .all(|a| matches!(a, "kvm" | "tcg" | "xen" | "hvf" | "whpx"));
            if ok {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "`{s}`: accelerators separated by ':', tried in order, like \"kvm:tcg\""
                ))
            }
        });
        let connect_timeout = t.duration_in(
            &mut self.p,
            "connect_timeout",
            Duration::from_secs(1)..=Duration::from_secs(300),
            "expected between 1s and 5m, like \"8s\"",
        );
        let span = t.span.clone();
        t.finish(
            &mut self.p,
            &[
                "name",
                "address",
                "ssh_port",
                "ssh_user",
                "ssh_key",
                "host_key",
                "hypervisor",
                "bridge",
                "ovsdb",
                "image_dir",
                "save_dir",
                "run_dir",
                "qemu_accel",
                "connect_timeout",
            ],
        );
        let (name, name_span) = name?;
        let (address, addr_span) = address?;
        fields.insert("name", name_span);
        fields.insert("address", addr_span);
        let hypervisor = hv.map(|(h, _)| h).unwrap_or(HypervisorKind::Xen);
        let bridge = bridge.unwrap_or_else(|| match hypervisor {
            HypervisorKind::Xen => "xenbr0".into(),
            _ => "br0".into(),
        });
        Some(Item {
            value: HostConfig {
                name,
                address,
                ssh_port,
                ssh_user,
                ssh_key: ssh_key?,
                host_key,
                hypervisor,
                bridge,
                ovsdb: ovsdb.map(|(d, _)| d),
                image_dir: image_dir.unwrap_or_else(|| match hypervisor {
                    HypervisorKind::Xen => "/var/lib/xen/images".into(),
                    _ => "/var/lib/netmigrate/images".into(),
                }),
                save_dir: save_dir.unwrap_or_else(|| match hypervisor {
                    HypervisorKind::Xen => "/var/lib/xen/save".into(),
                    _ => "/var/lib/netmigrate/save".into(),
                }),
                run_dir: run_dir.unwrap_or_else(|| "/run/netmigrate".into()),
                qemu_accel: accel.map(|(a, _)| a).unwrap_or_else(|| "kvm:tcg".into()),
                connect_timeout: connect_timeout.unwrap_or(super::CONNECT_TIMEOUT),
            },
            span,
            fields,
        })
    }

    /// Reports the second and later items whose `key` repeats an earlier one's.
    fn unique<T, K: std::hash::Hash + Eq + std::fmt::Display>(
        &mut self,
        section: &str,
        items: &[Item<T>],
        field: &'static str,
        key: impl Fn(&T) -> Option<K>,
    ) {
        let mut seen: HashMap<K, usize> = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            let Some(k) = key(&it.value) else { continue };
            let msg = seen.get(&k).map(|first| {
                let line = self.p.line_of(items[*first].at(field).start);
                format!(
                    "{k} is already used by {section}[{first}] (line {line}); each must be unique"
                )
            });
            match msg {
                Some(m) => {
                    let span = it.at(field);
                    self.p.at(&span, &format!("{section}[{i}].{field}"), m)
                }
                None => {
                    seen.insert(k, i);
                }
            }
        }
    }

    fn check_networks(&mut self, nets: &[Item<Network>]) {
        self.unique("network", nets, "name", |n| Some(n.name.clone()));
        for (i, n) in nets.iter().enumerate() {
            let Some(via) = &n.value.via else { continue };
            let problem = match nets.iter().find(|m| &m.value.name == via) {
                Some(m) if m.value.via.is_some() => Some(format!(
                    "`{via}` is itself relayed; name a network the appliance is attached to"
                )),
                Some(_) => None,
                None if self.network_names.contains(via) => None,
                None => Some(format!("no [[network]] is named `{via}`")),
            };
            if let Some(m) = problem {
                self.p.at(&n.at("via"), &format!("network[{i}].via"), m);
            }
        }
        self.unique("network", nets, "interface", |n| {
            Some(n.interface.clone()).filter(|i| !i.is_empty())
        });
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[..i] {
                let (x, y) = (a.value.address.trunc(), b.value.address.trunc());
                if x.contains(&y.network()) || y.contains(&x.network()) {
                    self.p.at(
                        &a.span,
                        &format!("network[{i}].address"),
                        format!(
                            "{x} overlaps network `{}` ({y}); networks must not overlap",
                            b.value.name
                        ),
                    );
                }
            }
        }
    }

    fn check_reservations(&mut self, nets: &[Item<Network>], res: &[Item<Reservation>]) {
        for (i, r) in res.iter().enumerate() {
            let Some(net) = nets.iter().find(|n| n.value.name == r.value.network) else {
                if self.network_names.contains(&r.value.network) {
                    continue; // that network's own problem is reported already
                }
                let names: Vec<_> = nets.iter().map(|n| format!("`{}`", n.value.name)).collect();
                self.p.at(
                    &r.at("network"),
                    &format!("reservation[{i}].network"),
                    format!(
                        "no [[network]] is named `{}`; {}",
                        r.value.network,
                        if names.is_empty() {
                            "define one first".to_string()
                        } else {
                            format!("known: {}", names.join(", "))
                        }
                    ),
                );
                continue;
            };
            let problem = net.value.reservable(r.value.ip).err();
            if let Some(m) = problem {
                self.p.at(&r.at("ip"), &format!("reservation[{i}].ip"), m);
            }
        }
        self.unique("reservation", res, "mac", |r| r.mac);
        self.unique("reservation", res, "ip", |r| Some(r.ip));
        self.unique("reservation", res, "hostname", |r| r.hostname.clone());
    }

    fn check_hosts(&mut self, hosts: &[Item<HostConfig>]) {
        self.unique("host", hosts, "name", |h| Some(h.name.clone()));
        self.unique("host", hosts, "address", |h| Some(h.address));
    }
}
