//! Who may reach the appliance, and what it gives away: the state directory and the API socket
//! closed to other users, the TCP API refusing calls without the token, and no secret (API
//! token, TSIG secret, FTP password) in its log, its events or its database, also with debug
//! logging; FTP paths out of the image store refused. (Host-key mismatch: inventory.rs; reads of
//! another host's images: images.rs; unsigned and wrongly signed DNS updates: dns.rs.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use netmigrate_lab::netns;
use netmigrate_lab::{require_lab, Lab};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn secret_file(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|x| format!("{x:02x}")).collect()
}

/// `curl` as the user nobody (uid 65534) at the API socket.
fn as_nobody(sock: &Path) -> Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
        .args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(sock)
        .arg("http://appliance/v1/status")
        .output()
        .unwrap()
}

#[test]
fn others_are_kept_out_and_secrets_stay_secret() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    let token = random_hex(32);
    let token_file = lab.dir.join("api.token");
    secret_file(&token_file, &format!("{token}\n"));
    // A TSIG secret (base64 of 32 random bytes, as tsig-keygen makes them).
    let tsig = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(random_bytes(32))
    };
    let tsig_file = lab.dir.join("ddns.key");
    secret_file(&tsig_file, &format!("{tsig}\n"));
    let mut cfg = netmigrate_lab::appliance::network_config(&state_dir);
    cfg.push_str(&format!(
        "\n[api]\nlisten = \"10.213.0.1:7070\"\ntoken_file = \"{}\"\n\n\
         [dns]\n[[dns.tsig_key]]\nname = \"ddns\"\nalgorithm = \"hmac-sha256\"\n\
         secret_file = \"{}\"\n\n[ftp]\npassive_ports = [50000, 50050]\nreserve = \"16M\"\n",
        token_file.display(),
        tsig_file.display()
    ));
    let mut app = lab.appliance_with(&cfg).unwrap();
    // Everything the appliance says, at debug level, for the look at its log below.
    lab.restart_with(&mut app, &[("RUST_LOG", "debug")])
        .unwrap();
    let cl = lab.client().unwrap();

    // The state directory, the database and the socket are the owner's.
    let sock = state_dir.join("api.sock");
    assert_eq!(
        mode(&state_dir) & 0o007,
        0,
        "state_dir {:04o}",
        mode(&state_dir)
    );
    let db = state_dir.join("state.db");
    assert_eq!(mode(&db) & 0o007, 0, "state.db {:04o}", mode(&db));
    assert_eq!(mode(&sock), 0o600, "api.sock");
    let o = as_nobody(&sock);
    assert!(!o.status.success(), "nobody reached the API: {o:?}");
    // Also with the directory opened up, the socket's own mode keeps them out.
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = as_nobody(&sock);
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert!(!o.status.success(), "nobody reached the API: {o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ermission denied")
            || o.status.code() == Some(7),
        "{o:?}"
    );

    // The TCP listener: the token or nothing.
    let call = |auth: Option<String>| {
        let mut c = netns::exec(&cl.ns, "curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ]);
        if let Some(a) = auth {
            c.args(["-H", &format!("Authorization: {a}")]);
        }
        let o = c.arg("http://10.213.0.1:7070/v1/status").output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(call(None), "401");
    assert_eq!(call(Some(format!("Bearer {}", random_hex(32)))), "401");
    assert_eq!(call(Some(format!("Bearer {}", &token[..32]))), "401");
    assert_eq!(call(Some(format!("Basic {token}"))), "401");
    assert_eq!(call(Some(format!("Bearer {token}"))), "200");

    // Secrets in use: a signed DNS update, and an FTP account's password, wrong and right.
    let up = netns::exec(&cl.ns, "nsupdate")
        .args(["-y", &format!("hmac-sha256:ddns:{tsig}")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(
                b"server 10.213.0.1\nzone lab.internal\nupdate add s1.lab.internal 60 A 10.213.0.98\nsend\n",
            )?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(up.status.success(), "{up:?}");
    let pw = app
        .cli_ok(&["ftp", "account", "hostX", "--write", "vm1"])
        .unwrap()
        .trim()
        .to_string();
    assert!(pw.len() >= 16, "{pw}");
    let file = lab.dir.join("small.img");
    std::fs::write(&file, b"a small image").unwrap();
    let put = |user: &str| {
        netns::exec(&cl.ns, "curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--ftp-pasv",
                "--user",
                user,
                "-T",
            ])
            .arg(&file)
            .arg("ftp://10.213.0.1/vm1/vm1.img")
            .output()
            .unwrap()
    };
    let wrong = put(&format!("hostX:{}", random_hex(12)));
    assert!(!wrong.status.success(), "a wrong password was let in");
    let right = put(&format!("hostX:{pw}"));
    assert!(right.status.success(), "{right:?}");
    // The ways out of the store, as curl sends them (--path-as-is: no cleaning on its side),
    // and lftp's: all refused, nothing of /etc comes back.
    for path in [
        "/../../../../etc/passwd",
        "/vm1/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/vm1/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "//etc/passwd",
        "/vm1/..%5c..%5c..%5cetc%5cpasswd",
    ] {
        let o = netns::exec(&cl.ns, "curl")
            .args(["-sS", "--max-time", "10", "--ftp-pasv", "--path-as-is"])
            .args(["--user", &format!("hostX:{pw}")])
            .arg(format!("ftp://10.213.0.1{path}"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{path} was served");
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("root:"),
            "{path}"
        );
    }
    let o = netns::exec(&cl.ns, "lftp")
        .args(["-u", &format!("hostX,{pw}"), "-e"])
        .arg("set ftp:passive-mode on; cd /vm1; cat ../../../../etc/passwd; cat /../etc/passwd; quit")
        .arg("10.213.0.1")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("root:"),
        "lftp got /etc/passwd"
    );

    // None of them in the log, the events or the database.
    let log = std::fs::read_to_string(lab.dir.join("appliance.log")).unwrap();
    assert!(
        log.contains("DEBUG"),
        "the appliance did not log at debug level"
    );
    let events = app
        .cli_ok(&["events", "--limit", "1000", "--json"])
        .unwrap();
    let mut stored = std::fs::read(&db).unwrap();
    stored.extend(std::fs::read(state_dir.join("state.db-wal")).unwrap_or_default());
    let stored = String::from_utf8_lossy(&stored).into_owned();
    for (what, secret) in [
        ("the API token", token.as_str()),
        ("the TSIG secret", tsig.as_str()),
        ("the FTP password", pw.as_str()),
    ] {
        assert!(!log.contains(secret), "{what} is in the log");
        assert!(!events.contains(secret), "{what} is in the events");
        assert!(!stored.contains(secret), "{what} is in the database");
    }
    eprintln!(
        "checked {} log lines, {} bytes of events, {} bytes of state",
        log.lines().count(),
        events.len(),
        stored.len()
    );
}
