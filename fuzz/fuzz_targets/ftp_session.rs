//! The FTP command path: the image store's server (libunftp with netmigrate's storage back end
//! and accounts) on loopback; each input is a session of a logged-in host, sent line by line.
//! Crashes are panics; the checks after each session: the server still greets the next
//! connection, every reply line is an FTP reply, nothing appeared outside the store, and the
//! image another host owns is unchanged.

#![no_main]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netmigrate_image::Store;
use netmigrate_services::ftp::{server, FtpAccounts, FtpUser, Options};

#[derive(Debug)]
struct Fixed;

#[async_trait::async_trait]
impl FtpAccounts for Fixed {
    async fn login(&self, user: &str, password: &str) -> Option<FtpUser> {
        (password == "pw").then(|| self.user(user)).flatten()
    }
    async fn lookup(&self, user: &str) -> Option<FtpUser> {
        self.user(user)
    }
}

impl Fixed {
    /// hostA writes vm1 and reads vm2's images; hostB owns vm2.
    fn user(&self, name: &str) -> Option<FtpUser> {
        let (write, read) = match name {
            "hostA" => (vec!["vm1".into()], vec!["vm2".into()]),
            "hostB" => (vec!["vm2".into()], vec!["vm1".into(), "vm2".into()]),
            _ => return None,
        };
        Some(FtpUser {
            name: name.into(),
            write,
            read,
        })
    }
}

struct Env {
    addr: SocketAddr,
    outside: PathBuf,
    vm2: PathBuf,
    vm2_bytes: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let (store, _) = Store::open(&root, 0).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // vm2's one image, published by hostB before the fuzzing starts.
        let vm2_bytes = b"vm2 state that hostA may read and nobody may change".to_vec();
        let published = rt.block_on(async {
            let mut w = store.create("vm2", None).await.unwrap();
            w.write(&vm2_bytes).await.unwrap();
            w.publish().await.unwrap()
        });
        let vm2 = root
            .join("vm2")
            .join(format!("{}.img", published.id.generation));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let srv = server(
            store,
            Arc::new(Fixed),
            Options {
                passive_ports: 42000..=42100,
                tls: None,
                verify_downloads: false,
            },
        )
        .unwrap();
        std::thread::spawn(move || rt.block_on(srv.listen(addr.to_string())));
        for _ in 0..100 {
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Env {
            addr,
            outside,
            vm2,
            vm2_bytes,
            _dir: dir,
        }
    })
}

/// A reply line: three digits and a space or dash, or a continuation line of a multi-line reply.
fn check_reply(line: &str, in_multi: &mut Option<String>) {
    if let Some(code) = in_multi.as_ref() {
        if line.starts_with(&format!("{code} ")) {
            *in_multi = None;
        }
        return;
    }
    let code = line.get(..3).unwrap_or("");
    assert!(
        code.bytes().all(|b| b.is_ascii_digit()) && code.len() == 3,
        "not an FTP reply: {line:?}"
    );
    if line.as_bytes().get(3) == Some(&b'-') {
        *in_multi = Some(code.to_string());
    }
}

fn greets(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("the server takes a connection");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "greeting: {line:?}");
    s
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let mut s = greets(env.addr);
    // At most 32 commands of the input, each on its own line; a bare CR or LF inside a
    // command is the input's own.
    let mut session = b"USER hostA\r\nPASS pw\r\n".to_vec();
    for line in data.split(|&b| b == b'\n').take(32) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        session.extend_from_slice(line);
        session.extend_from_slice(b"\r\n");
    }
    session.extend_from_slice(b"QUIT\r\n");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let _ = s.write_all(&session);
    let mut replies = Vec::new();
    let _ = s.read_to_end(&mut replies);
    drop(s);
    let text = String::from_utf8_lossy(&replies);
    let mut multi = None;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        check_reply(line, &mut multi);
    }

    drop(greets(env.addr));
    let outside: Vec<_> = std::fs::read_dir(&env.outside).unwrap().collect();
    assert!(outside.is_empty(), "files outside the store: {outside:?}");
    assert_eq!(
        std::fs::read(&env.vm2).ok().as_deref(),
        Some(env.vm2_bytes.as_slice()),
        "hostB's image of vm2 changed"
    );
});
