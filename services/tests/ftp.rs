//! The image store's FTP server driven by curl (the client people use) on loopback: uploads,
//! verified downloads, resume, following an upload in progress, and what is refused.

use std::process::{Command, Output};
use std::sync::Arc;

use async_trait::async_trait;
use netmigrate_services::ftp::{self, FtpAccounts, FtpUser};

#[derive(Debug)]
struct Accounts;

fn user(name: &str, write: &[&str], read: &[&str]) -> FtpUser {
    FtpUser {
        name: name.into(),
        write: write.iter().map(|s| s.to_string()).collect(),
        read: read.iter().map(|s| s.to_string()).collect(),
    }
}

impl Accounts {
    fn find(&self, u: &str) -> Option<FtpUser> {
        match u {
            // hostA runs vm1 and uploads its image; hostB is its target; hostC has no part in it.
            "hostA" => Some(user("hostA", &["vm1"], &[])),
            "hostB" => Some(user("hostB", &[], &["vm1"])),
            "hostC" => Some(user("hostC", &[], &["vm2"])),
            _ => None,
        }
    }
}

#[async_trait]
impl FtpAccounts for Accounts {
    async fn login(&self, u: &str, password: &str) -> Option<FtpUser> {
        (password == format!("{u}-secret"))
            .then(|| self.find(u))
            .flatten()
    }
    async fn lookup(&self, u: &str) -> Option<FtpUser> {
        self.find(u)
    }
}

struct Server {
    port: u16,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn start(passive: std::ops::RangeInclusive<u16>) -> Server {
    start_with(passive, false, false)
}

fn start_with(passive: std::ops::RangeInclusive<u16>, tls: bool, verify_downloads: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls.then(|| {
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        ftp::Tls { cert, key }
    });
    let (store, _) = netmigrate_image::Store::open(&dir.path().join("images"), 0).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = ftp::Options {
        passive_ports: passive,
        tls,
        verify_downloads,
    };
    let server = ftp::server(store, Arc::new(Accounts), opts).unwrap();
    rt.spawn(async move { server.listen(format!("127.0.0.1:{port}")).await });
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Server { port, dir, _rt: rt }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}{path}", self.port)
    }

    fn curl(&self, who: &str, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["-sS", "--ftp-pasv", "--path-as-is", "--max-time", "60"])
            .args(["--user", &format!("{who}:{who}-secret")])
            .args(args)
            .output()
            .unwrap()
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn upload_then_verified_download_and_resume() {
    let s = start(52000..=52029);
    let bytes = data(8 << 20);
    std::fs::write(s.file("vm1.save"), &bytes).unwrap();
    ok(&s.curl(
        "hostA",
        &[
            "-T",
            s.file("vm1.save").to_str().unwrap(),
            &s.url("/vm1/vm1.img"),
        ],
    ));
    assert!(s.dir.path().join("images/vm1/1.img").exists());

    let got = s.file("got.img");
    ok(&s.curl(
        "hostB",
        &["-o", got.to_str().unwrap(), &s.url("/vm1/1.img")],
    ));
    assert!(
        std::fs::read(&got).unwrap() == bytes,
        "downloaded bytes differ"
    );
    ok(&s.curl(
        "hostB",
        &["-o", got.to_str().unwrap(), &s.url("/vm1/latest.img")],
    ));
    assert!(std::fs::read(&got).unwrap() == bytes);

    // Resume: REST from where a broken download stopped.
    std::fs::write(&got, &bytes[..3_000_000]).unwrap();
    ok(&s.curl(
        "hostB",
        &["-C", "-", "-o", got.to_str().unwrap(), &s.url("/vm1/1.img")],
    ));
    assert!(
        std::fs::read(&got).unwrap() == bytes,
        "resumed download differs"
    );

    // The listing shows the generation.
    let o = s.curl("hostB", &["--list-only", &s.url("/vm1/")]);
    ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "1.img\n1.img.sha256"
    );
    // The checksum a receiver checks against.
    let o = s.curl("hostB", &[&s.url("/vm1/1.img.sha256")]);
    ok(&o);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{}  1.img\n", sha256_hex(&bytes))
    );
}

/// An upload cut short (curl gives up after 1 s) is resumed with `curl -C -` (SIZE, then APPE):
/// only the missing bytes travel, and the newest generation is the whole file.
#[test]
fn an_interrupted_upload_resumes_where_it_stopped() {
    let s = start(52140..=52169);
    let bytes = data(8 << 20);
    let src = s.file("vm1.save");
    std::fs::write(&src, &bytes).unwrap();
    let url = s.url("/vm1/vm1.img");
    let cut = s.curl(
        "hostA",
        &[
            "--limit-rate",
            "2M",
            "--max-time",
            "1",
            "-T",
            src.to_str().unwrap(),
            &url,
        ],
    );
    assert!(!cut.status.success(), "the upload was not cut");
    // Stream mode cannot tell a cut from an end: what arrived is published (the server may
    // see the end a moment after curl gave up).
    let published = s.dir.path().join("images/vm1/1.img");
    for _ in 0..100 {
        if published.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let first = std::fs::metadata(&published)
        .expect("the cut upload was published")
        .len();
    assert!(first > 0 && first < bytes.len() as u64, "{first}");

    let o = s.curl(
        "hostA",
        &[
            "-C",
            "-",
            "-w",
            "%{size_upload}",
            "-T",
            src.to_str().unwrap(),
            &url,
        ],
    );
    ok(&o);
    let sent: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(
        sent,
        bytes.len() as u64 - first,
        "resume sent the wrong part"
    );
    assert_eq!(
        std::fs::read(s.dir.path().join("images/vm1/2.img")).unwrap(),
        bytes
    );
    let got = s.file("got.img");
    ok(&s.curl(
        "hostB",
        &["-o", got.to_str().unwrap(), &s.url("/vm1/latest.img")],
    ));
    assert!(std::fs::read(&got).unwrap() == bytes);
}

/// A published image that rots on disk: sent by sendfile, the receiver's check against the
/// published checksum catches it; with `verify_downloads` the server itself stops the transfer.
#[test]
fn a_corrupted_image_is_caught_by_the_receiver_or_by_the_verifying_server() {
    for verify in [false, true] {
        let s = start_with(
            if verify { 52120..=52129 } else { 52130..=52139 },
            false,
            verify,
        );
        let bytes = data(4 << 20);
        std::fs::write(s.file("vm1.save"), &bytes).unwrap();
        ok(&s.curl(
            "hostA",
            &[
                "-T",
                s.file("vm1.save").to_str().unwrap(),
                &s.url("/vm1/a.img"),
            ],
        ));
        let stored = s.dir.path().join("images/vm1/1.img");
        let mut rotten = std::fs::read(&stored).unwrap();
        rotten[1 << 20] ^= 0x40;
        std::fs::write(&stored, &rotten).unwrap();

        let got = s.file("got.img");
        let o = s.curl(
            "hostB",
            &["-o", got.to_str().unwrap(), &s.url("/vm1/1.img")],
        );
        if verify {
            assert!(
                !o.status.success(),
                "the verifying server sent a corrupt image"
            );
        } else {
            ok(&o);
            let sum = s.curl("hostB", &[&s.url("/vm1/1.img.sha256")]);
            ok(&sum);
            let published = String::from_utf8_lossy(&sum.stdout);
            let received = sha256_hex(&std::fs::read(&got).unwrap());
            assert!(
                !published.starts_with(&received),
                "the rotten bytes match the published checksum"
            );
            assert!(published.starts_with(&sha256_hex(&bytes)));
        }
    }
}

#[test]
fn what_is_refused() {
    let s = start(52030..=52059);
    std::fs::write(s.file("x"), b"hello").unwrap();
    ok(&s.curl(
        "hostA",
        &["-T", s.file("x").to_str().unwrap(), &s.url("/vm1/x.img")],
    ));

    // Wrong password: curl's "login denied".
    let o = Command::new("curl")
        .args(["-sS", "--user", "hostB:wrong", &s.url("/vm1/1.img")])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(67),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Another host's image is not readable, and its uploader may not read it either.
    for who in ["hostC", "hostA"] {
        let o = s.curl(who, &["-o", "/dev/null", &s.url("/vm1/1.img")]);
        assert!(!o.status.success(), "{who} read vm1's image");
    }
    // No writing where one may not, no escape, no deleting.
    let o = s.curl(
        "hostB",
        &["-T", s.file("x").to_str().unwrap(), &s.url("/vm1/y.img")],
    );
    assert!(!o.status.success(), "hostB uploaded");
    for path in [
        "/../../etc/passwd",
        "/vm1/../../../etc/passwd",
        "/vm1/.1.img.part",
        "/%2e%2e/etc/passwd",
    ] {
        let o = s.curl("hostB", &["-o", "/dev/null", &s.url(path)]);
        assert!(!o.status.success(), "{path} was served");
    }
    let o = s.curl("hostA", &["-Q", "DELE /vm1/1.img", &s.url("/")]);
    assert!(!o.status.success(), "DELE accepted");
    assert!(s.dir.path().join("images/vm1/1.img").exists());
}

#[test]
fn a_download_started_during_the_upload_gets_the_same_bytes() {
    let s = start(52060..=52089);
    let bytes = data(12 << 20);
    std::fs::write(s.file("big"), &bytes).unwrap();
    // A slow upload (6 MB/s), and a download of the newest generation started in the middle.
    let mut up = Command::new("curl")
        .args([
            "-sS",
            "--ftp-pasv",
            "--limit-rate",
            "6M",
            "--user",
            "hostA:hostA-secret",
            "-T",
        ])
        .arg(s.file("big"))
        .arg(s.url("/vm1/big.img"))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        !s.dir.path().join("images/vm1/1.img").exists(),
        "published too early for this test"
    );
    let got = s.file("followed");
    let o = s.curl(
        "hostB",
        &["-o", got.to_str().unwrap(), &s.url("/vm1/latest.img")],
    );
    assert!(up.wait().unwrap().success());
    ok(&o);
    let followed = std::fs::read(&got).unwrap();
    assert_eq!(followed.len(), bytes.len());
    assert!(followed == bytes, "followed download differs");
}

#[test]
fn with_a_certificate_only_ftps_is_served() {
    let s = start_with(52090..=52119, true, false);
    let bytes = data(1 << 20);
    std::fs::write(s.file("x"), &bytes).unwrap();
    let cert = s.file("cert.pem").display().to_string();
    let (x, got) = (
        s.file("x").display().to_string(),
        s.file("got").display().to_string(),
    );
    let (up, down) = (s.url("/vm1/x.img"), s.url("/vm1/1.img"));
    // Plain FTP is refused once a certificate is configured.
    let o = s.curl("hostA", &["-T", &x, &up]);
    assert!(!o.status.success(), "plain FTP accepted");
    ok(&s.curl("hostA", &["--ssl-reqd", "--cacert", &cert, "-T", &x, &up]));
    ok(&s.curl(
        "hostB",
        &["--ssl-reqd", "--cacert", &cert, "-o", &got, &down],
    ));
    assert!(std::fs::read(&got).unwrap() == bytes);
}
