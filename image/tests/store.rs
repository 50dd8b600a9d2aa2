//! The image store through its public API: atomic publish, following readers, integrity,
//! crash recovery, reserve and GC.

use std::time::Duration;

use netmigrate_image::{Error, ImageId, Store};

fn store(reserve: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (s, recovered) = Store::open(&dir.path().join("images"), reserve).unwrap();
    assert!(recovered.is_empty());
    (dir, s)
}

/// Deterministic, not compressible-looking bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn publish_is_atomic_and_the_checksum_is_sha256sums() {
    let (_d, s) = store(0);
    let bytes = data(3 << 20, 7);
    let mut w = s.create("vm1", Some(bytes.len() as u64)).await.unwrap();
    assert_eq!(
        w.id,
        ImageId {
            vm: "vm1".into(),
            generation: 1
        }
    );
    for chunk in bytes.chunks(100_000) {
        w.write(chunk).await.unwrap();
    }
    // Written, not published: nobody sees it as an image.
    assert!(s.list().unwrap().is_empty());
    assert!(!s.root().join("vm1/1.img").exists());
    let p = w.publish().await.unwrap();
    assert_eq!(p.size, bytes.len() as u64);
    assert_eq!(p.sha256, sha256sum(&s.root().join("vm1/1.img")));
    // The checksum file works with the standard tool.
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "1.img.sha256"])
        .current_dir(s.root().join("vm1"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let mut out = Vec::new();
    s.read("vm1", None)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, bytes);
    let next = s.create("vm1", None).await.unwrap();
    assert_eq!(next.id.generation, 2);
}

#[tokio::test]
async fn a_reader_follows_the_writer_and_gets_the_same_bytes() {
    let (_d, s) = store(0);
    let bytes = data(5 << 20, 11);
    let mut w = s.create("vm1", None).await.unwrap();
    // The reader starts before a single byte is written.
    let s2 = s.clone();
    let reader = tokio::spawn(async move {
        let mut r = s2.read("vm1", Some(1)).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.map(|_| out)
    });
    for chunk in bytes.chunks(256 << 10) {
        w.write(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p = w.publish().await.unwrap();
    let got = reader.await.unwrap().unwrap();
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "the follower's bytes differ");
    assert_eq!(p.size, bytes.len() as u64);
}

#[tokio::test]
async fn a_follower_fails_cleanly_when_the_upload_fails() {
    let (_d, s) = store(0);
    let mut w = s.create("vm1", None).await.unwrap();
    w.write(&data(1000, 3)).await.unwrap();
    let s2 = s.clone();
    let reader = tokio::spawn(async move {
        let mut r = s2.read("vm1", Some(1)).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.fail("the source host went away").await;
    match reader.await.unwrap() {
        Err(Error::UploadFailed { reason, .. }) => assert_eq!(reason, "the source host went away"),
        other => panic!("expected a failed upload, got {other:?}"),
    }
    assert!(
        !s.root().join("vm1/.1.img.part").exists(),
        "partial bytes left behind"
    );

    // A writer dropped without publish fails the same way.
    let w = s.create("vm1", None).await.unwrap();
    let mut r = s.read("vm1", Some(w.id.generation)).await.unwrap();
    drop(w);
    let mut out = Vec::new();
    assert!(matches!(
        r.read_to_end(&mut out).await,
        Err(Error::UploadFailed { .. })
    ));
}

#[tokio::test]
async fn corruption_is_caught_on_read_and_by_verify() {
    let (_d, s) = store(0);
    let mut w = s.create("vm1", None).await.unwrap();
    w.write(&data(100_000, 5)).await.unwrap();
    let p = w.publish().await.unwrap();
    assert_eq!(s.verify(&p.id).await.unwrap(), p);
    // Flip one byte in the middle.
    let path = s.root().join("vm1/1.img");
    let mut b = std::fs::read(&path).unwrap();
    b[50_000] ^= 0xff;
    std::fs::write(&path, b).unwrap();
    let mut out = Vec::new();
    let e = s
        .read("vm1", None)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("expected {}", p.sha256)),
        "{e}"
    );
    assert!(matches!(s.verify(&p.id).await, Err(Error::Corrupt { .. })));
}

#[tokio::test]
async fn a_crash_mid_upload_leaves_nothing_published() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    {
        let (s, _) = Store::open(&root, 0).unwrap();
        let mut w = s.create("vm1", None).await.unwrap();
        w.write(&data(10_000, 1)).await.unwrap();
        // A crash: the process dies with the upload open (no Drop runs).
        std::mem::forget(w);
    }
    assert!(root.join("vm1/.1.img.part").exists());
    let (s, recovered) = Store::open(&root, 0).unwrap();
    assert_eq!(
        recovered,
        [ImageId {
            vm: "vm1".into(),
            generation: 1
        }]
    );
    assert!(!root.join("vm1/.1.img.part").exists());
    assert!(s.list().unwrap().is_empty());
    assert!(matches!(s.read("vm1", None).await, Err(Error::NotFound(_))));
    // The failed generation's number is not given to the next upload.
    assert_eq!(s.create("vm1", None).await.unwrap().id.generation, 2);
}

#[tokio::test]
async fn an_upload_that_would_eat_the_reserve_is_refused() {
    let (_d, s) = store(u64::MAX / 2);
    let e = s.create("vm1", Some(1 << 20)).await.err().expect("refused");
    assert!(matches!(e, Error::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("below the reserve of"), "{e}");
    assert!(s.list().unwrap().is_empty());
}

#[tokio::test]
async fn gc_keeps_the_newest_and_those_in_use() {
    let (_d, s) = store(0);
    for i in 0..5u8 {
        let mut w = s.create("vm1", None).await.unwrap();
        w.write(&[i; 10]).await.unwrap();
        w.publish().await.unwrap();
    }
    let in_use = [ImageId {
        vm: "vm1".into(),
        generation: 1,
    }];
    let removed = s.gc(2, &in_use).unwrap();
    let gens: Vec<u64> = removed.iter().map(|i| i.generation).collect();
    assert_eq!(gens, [2, 3]);
    let left: Vec<u64> = s.list().unwrap().iter().map(|p| p.id.generation).collect();
    assert_eq!(left, [1, 4, 5]);
}

#[tokio::test]
async fn names_that_would_escape_the_store_are_refused() {
    let (_d, s) = store(0);
    for bad in ["", "..", "../etc", "a/b", ".hidden", "vm\0", "vm 1"] {
        assert!(
            matches!(s.create(bad, None).await, Err(Error::BadName(_))),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn a_resumed_upload_continues_a_cut_one_as_the_next_generation() {
    let (_d, s) = store(0);
    let bytes = data(3_000_000, 9);
    // The first upload was cut at 1.2 MB (FTP sees a clean end of stream).
    let mut w = s.create("vm1", None).await.unwrap();
    w.write(&bytes[..1_200_000]).await.unwrap();
    let cut = w.publish().await.unwrap();
    // The client resumes from 1,000,000 (what it believes was stored).
    let mut w = s.resume(&cut.id, 1_000_000, None).await.unwrap();
    assert_eq!(w.written(), 1_000_000);
    let follower = {
        let (s, gen) = (s.clone(), w.id.generation);
        tokio::spawn(async move {
            let mut out = Vec::new();
            s.read("vm1", Some(gen))
                .await
                .unwrap()
                .read_to_end(&mut out)
                .await
                .map(|_| out)
        })
    };
    w.write(&bytes[1_000_000..]).await.unwrap();
    let p = w.publish().await.unwrap();
    assert_eq!(p.id.generation, 2);
    assert_eq!(p.size, bytes.len() as u64);
    assert_eq!(std::fs::read(s.root().join("vm1/2.img")).unwrap(), bytes);
    assert_eq!(follower.await.unwrap().unwrap(), bytes);
    assert_eq!(s.verify(&p.id).await.unwrap(), p);
    // Beyond the end of the base there is nothing to continue.
    let e = s.resume(&cut.id, 1_200_001, None).await.err().unwrap();
    assert!(matches!(e, Error::BadResume { .. }), "{e}");
}

/// Bytes that compress: runs of zeros (a VM's free memory) between noise.
fn compressible(len: usize) -> Vec<u8> {
    let mut v = data(len, 11);
    for (i, b) in v.iter_mut().enumerate() {
        if (i / 4096) % 4 != 0 {
            *b = 0;
        }
    }
    v
}

#[tokio::test]
async fn a_compressed_image_reads_back_whole_and_verified() {
    let (_d, s) = store(0);
    let bytes = compressible(4 << 20);
    let mut w = s.create("vm1", None).await.unwrap();
    w.write(&bytes).await.unwrap();
    let p = w.publish().await.unwrap();
    let c = s.compress(&p.id, 3).await.unwrap();
    assert!(c.compressed);
    assert_eq!((c.size, &c.sha256), (p.size, &p.sha256));
    assert!(c.stored < p.size / 2, "{} of {}", c.stored, p.size);
    assert!(!s.root().join("vm1/1.img").exists());
    assert!(s.root().join("vm1/1.img.zst").exists());
    // Listed with its uncompressed size; verified; read back decompressed and checked.
    assert_eq!(s.list().unwrap(), vec![c.clone()]);
    assert_eq!(s.verify(&p.id).await.unwrap(), c);
    let mut out = Vec::new();
    s.read("vm1", Some(1))
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert!(out == bytes);
    // Compressing again changes nothing; sendfile declines it (it is read instead).
    assert_eq!(s.compress(&p.id, 3).await.unwrap(), c);
    assert_eq!(s.send_published(&p.id, 0, -1).await.unwrap(), None);
    // A resumed upload may start from it.
    let mut w = s.resume(&p.id, 1 << 20, None).await.unwrap();
    w.write(b"tail").await.unwrap();
    let r = w.publish().await.unwrap();
    assert_eq!(r.size, (1 << 20) + 4);
    let mut out = Vec::new();
    s.read("vm1", Some(2))
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert!(out[..1 << 20] == bytes[..1 << 20] && &out[1 << 20..] == b"tail");
    // gc removes compressed images like the others.
    assert_eq!(s.gc(1, &[]).unwrap(), vec![p.id.clone()]);
    assert!(!s.root().join("vm1/1.img.zst").exists());
}

#[tokio::test]
async fn a_corrupt_image_is_never_compressed_and_a_damaged_one_fails_its_read() {
    let (_d, s) = store(0);
    let bytes = compressible(1 << 20);
    let mut w = s.create("vm1", None).await.unwrap();
    w.write(&bytes).await.unwrap();
    let p = w.publish().await.unwrap();
    // Bit rot before compression: refused, the image left as it is.
    let path = s.root().join("vm1/1.img");
    let mut rotten = bytes.clone();
    rotten[1000] ^= 1;
    std::fs::write(&path, &rotten).unwrap();
    assert!(matches!(
        s.compress(&p.id, 3).await,
        Err(Error::Corrupt { .. })
    ));
    assert!(path.exists());
    assert!(!s.root().join("vm1/1.img.zst").exists());
    assert!(!s.root().join("vm1/.1.img.zst.part").exists());
    // Healthy again, compressed, then damaged on disk: the read fails, verify says so.
    std::fs::write(&path, &bytes).unwrap();
    s.compress(&p.id, 3).await.unwrap();
    let zst = s.root().join("vm1/1.img.zst");
    let mut z = std::fs::read(&zst).unwrap();
    let n = z.len();
    z[n / 2] ^= 0x40;
    std::fs::write(&zst, &z).unwrap();
    let mut out = Vec::new();
    let r = s
        .read("vm1", Some(1))
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await;
    assert!(r.is_err(), "a damaged compressed image read back whole");
    assert!(s.verify(&p.id).await.is_err());
}

#[tokio::test]
async fn a_compression_cut_short_is_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let (s, _) = Store::open(&root, 0).unwrap();
    let mut w = s.create("vm1", None).await.unwrap();
    w.write(&compressible(1 << 16)).await.unwrap();
    w.publish().await.unwrap();
    std::fs::write(root.join("vm1/.1.img.zst.part"), b"half").unwrap();
    drop(s);
    let (s, recovered) = Store::open(&root, 0).unwrap();
    assert!(recovered.is_empty(), "the image itself was never in doubt");
    assert!(!root.join("vm1/.1.img.zst.part").exists());
    assert_eq!(s.list().unwrap().len(), 1);
}
