//! The server over loopback, driven by a small client that speaks the protocol byte by byte
//! (the lab tests use tftp-hpa's and curl's clients).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::packet::code;
use super::*;

async fn server(root: &Path) -> (Arc<Server>, SocketAddr) {
    let s = Server::new(root).unwrap();
    // Port 0 is not possible through `listen` (the test must know the port): bind here.
    let sock = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), None).unwrap();
    let at = sock.local_addr().unwrap();
    let me = s.clone();
    tokio::spawn(async move { me.run(sock, Ipv4Addr::LOCALHOST, None).await });
    (s, at)
}

fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    for f in [name, mode]
        .into_iter()
        .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
    {
        v.extend_from_slice(f.as_bytes());
        v.push(0);
    }
    v
}

async fn recv(c: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70000];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

fn ack(b: u16) -> Vec<u8> {
    let mut v = vec![0, 4];
    v.extend_from_slice(&b.to_be_bytes());
    v
}

/// Reads a whole file; returns (OACK options if any, the bytes).
async fn get(at: SocketAddr, name: &str, mode: &str, opts: &[(&str, &str)]) -> (String, Vec<u8>) {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(&rrq(name, mode, opts), at).await.unwrap();
    let blksize: usize = opts
        .iter()
        .find(|(k, _)| *k == "blksize")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(512);
    let mut oack = String::new();
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        let (p, from) = recv(&c).await;
        assert_ne!(from, at, "data comes from the transfer's own port");
        match u16::from_be_bytes([p[0], p[1]]) {
            6 => {
                oack = String::from_utf8(p[2..].to_vec())
                    .unwrap()
                    .replace('\0', " ");
                c.send_to(&ack(0), from).await.unwrap();
            }
            3 => {
                let b = u16::from_be_bytes([p[2], p[3]]);
                assert_eq!(b, expect);
                data.extend_from_slice(&p[4..]);
                c.send_to(&ack(b), from).await.unwrap();
                if p.len() - 4 < blksize {
                    return (oack, data);
                }
                expect = expect.wrapping_add(1);
            }
            5 => panic!("error {}", String::from_utf8_lossy(&p[4..])),
            op => panic!("opcode {op}"),
        }
    }
}

async fn error_for(at: SocketAddr, pkt: &[u8]) -> (u16, String) {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(pkt, at).await.unwrap();
    let (p, _) = recv(&c).await;
    assert_eq!(&p[..2], &[0, 5], "an ERROR packet");
    (
        u16::from_be_bytes([p[2], p[3]]),
        String::from_utf8_lossy(&p[4..p.len() - 1]).into_owned(),
    )
}

fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn sends_a_file_with_the_options_asked() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = content(100_000);
    std::fs::write(dir.path().join("ipxe.efi"), &bytes).unwrap();
    let (s, at) = server(dir.path()).await;
    let (oack, got) = get(
        at,
        "/ipxe.efi",
        "octet",
        &[("blksize", "1432"), ("tsize", "0"), ("windowsize", "4")],
    )
    .await;
    assert_eq!(
        oack, "blksize 1432 tsize 100000 ",
        "windowsize is not taken"
    );
    assert_eq!(got, bytes);
    // Without options: 512-byte blocks, no OACK; a size that is a multiple of the block
    // ends with an empty block.
    std::fs::write(dir.path().join("even"), content(1024)).unwrap();
    let (oack, got) = get(at, "even", "octet", &[]).await;
    assert_eq!((oack.as_str(), got), ("", content(1024)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.stats.sent.load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.bytes.load(Ordering::Relaxed), 101_024);
}

#[tokio::test]
async fn block_numbers_roll_over_past_65535() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = content(8 * 66_000 + 3);
    std::fs::write(dir.path().join("big"), &bytes).unwrap();
    let (_s, at) = server(dir.path()).await;
    let (_, got) = get(at, "big", "octet", &[("blksize", "8")]).await;
    assert_eq!(got, bytes);
}

#[tokio::test]
async fn netascii_turns_line_ends_into_cr_lf() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("boot.ipxe"), "#!ipxe\nchain x\r").unwrap();
    let (_s, at) = server(dir.path()).await;
    let (oack, got) = get(at, "boot.ipxe", "NetASCII", &[("tsize", "0")]).await;
    assert_eq!(oack, "tsize 17 ");
    assert_eq!(got, b"#!ipxe\r\nchain x\r\0");
}

#[tokio::test]
async fn refuses_writes_escapes_and_garbage_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("boot");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(dir.path().join("secret"), "no").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("link")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    let (s, at) = server(&root).await;
    let mut wrq = rrq("new", "octet", &[]);
    wrq[1] = 2;
    assert_eq!(
        error_for(at, &wrq).await,
        (code::ACCESS, "this server is read-only".into())
    );
    for name in ["../secret", "sub/../../secret", "..\\secret", "link"] {
        assert_eq!(
            error_for(at, &rrq(name, "octet", &[])).await,
            (code::ACCESS, "path leads out of the boot directory".into()),
            "{name}"
        );
    }
    assert_eq!(
        error_for(at, &rrq("nothing", "octet", &[])).await,
        (code::NOT_FOUND, "file not found".into())
    );
    assert_eq!(
        error_for(at, &rrq("sub", "octet", &[])).await,
        (code::NOT_FOUND, "not a file".into())
    );
    assert_eq!(
        error_for(at, b"\x00\x01name").await,
        (
            code::ILLEGAL,
            "malformed TFTP packet: request does not end with NUL".into()
        )
    );
    let st = &s.stats;
    assert_eq!(st.refused.load(Ordering::Relaxed), 5);
    assert_eq!(st.not_found.load(Ordering::Relaxed), 2);
    assert_eq!(st.malformed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn resends_a_lost_block_and_ignores_strangers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), content(600)).unwrap();
    let (_s, at) = server(dir.path()).await;
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(&rrq("f", "octet", &[("timeout", "1")]), at)
        .await
        .unwrap();
    let (p, tid) = recv(&c).await;
    assert_eq!(&p[..2], &[0, 6]);
    c.send_to(&ack(0), tid).await.unwrap();
    let (first, _) = recv(&c).await;
    // Not acknowledged: the same block comes again after the timeout.
    let (again, from) = recv(&c).await;
    assert_eq!((first.clone(), from), (again, tid));
    // A stranger writing to the transfer's port is told so; the transfer goes on.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&ack(1), tid).await.unwrap();
    let (p, _) = recv(&stranger).await;
    assert_eq!(&p[..4], &[0, 5, 0, code::UNKNOWN_TID as u8]);
    c.send_to(&ack(1), tid).await.unwrap();
    let (last, _) = recv(&c).await;
    assert_eq!(&last[..4], &[0, 3, 0, 2]);
    assert_eq!(last.len() - 4, 88);
}
