//! The image store's FTP server in the lab: real curl and lftp in host namespaces, talking to
//! the appliance over the lab network.

use std::process::Output;

use netmigrate_lab::appliance::{host_config, network_config};
use netmigrate_lab::{require_lab, Lab};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256sum(path: &std::path::Path) -> String {
    netmigrate_lab::sys::sh("sha256sum", &[path.to_str().unwrap()])
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn hosts_upload_and_download_images_over_ftp() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let c = lab.host("C").unwrap();
    let mut cfg = network_config(&lab.appliance_state_dir().unwrap());
    for h in [&a, &b, &c] {
        cfg.push_str(&host_config(&lab, h, true).unwrap());
    }
    cfg.push_str("\n[ftp]\npassive_ports = [50000, 50050]\nreserve = \"64M\"\n");
    let mut app = lab.appliance_with(&cfg).unwrap();
    // hostA uploads vm1's image, hostB is its target, hostC has no part in it.
    let pw = |args: &[&str]| app.cli_ok(args).unwrap().trim().to_string();
    let pa = pw(&["ftp", "account", "hostA", "--write", "vm1"]);
    let pb = pw(&["ftp", "account", "hostB", "--read", "vm1"]);
    let pc = pw(&["ftp", "account", "hostC", "--read", "vm2"]);

    let bytes = data(16 << 20);
    let src = a.dir.join("vm1.save");
    std::fs::write(&src, &bytes).unwrap();
    let url = |p: &str| format!("ftp://10.213.0.1{p}");
    let up = lab
        .exec(
            &a.ns,
            "curl",
            &[
                "-sS",
                "--ftp-pasv",
                "--user",
                &format!("hostA:{pa}"),
                "-T",
                src.to_str().unwrap(),
                &url("/vm1/vm1.img"),
            ],
        )
        .unwrap();
    assert!(up.is_empty(), "{up}");

    // lftp on host B fetches it; the bytes are the same.
    let dst = b.dir.join("vm1.restore");
    let get = netmigrate_lab::netns::exec(&b.ns, "lftp")
        .args([
            "-u",
            &format!("hostB,{pb}"),
            "-e",
            &format!(
                "set ftp:passive-mode on; get /vm1/latest.img -o {}; quit",
                dst.display()
            ),
            "10.213.0.1",
        ])
        .output()
        .unwrap();
    assert!(get.status.success(), "{}", text(&get));
    assert!(std::fs::read(&dst).unwrap() == bytes, "lftp's copy differs");

    let images = app.cli_ok(&["images", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&images).unwrap();
    assert_eq!(v[0]["vm"], "vm1");
    assert_eq!(v[0]["state"], "published");
    assert_eq!(v[0]["uploader"], "hostA");
    assert_eq!(v[0]["size"], bytes.len());
    assert_eq!(v[0]["sha256"], sha256sum(&src).as_str());
    assert!(app.cli(&["images", "verify"]).unwrap().status.success());

    // Refused: a wrong password, another host's image, an upload by the reader.
    let o = netmigrate_lab::netns::exec(&b.ns, "curl")
        .args([
            "-sS",
            "--user",
            "hostB:wrong",
            &url("/vm1/1.img"),
            "-o",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(67), "{}", text(&o));
    let o = netmigrate_lab::netns::exec(&c.ns, "curl")
        .args([
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("hostC:{pc}"),
            &url("/vm1/1.img"),
            "-o",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "hostC read vm1's image");
    let o = netmigrate_lab::netns::exec(&b.ns, "curl")
        .args([
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("hostB:{pb}"),
            "-T",
            dst.to_str().unwrap(),
            &url("/vm1/x.img"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "hostB uploaded");

    // A corrupted image is caught by verify.
    let img = app.state_dir.join("images/vm1/1.img");
    let mut raw = std::fs::read(&img).unwrap();
    raw[1000] ^= 1;
    std::fs::write(&img, raw).unwrap();
    let o = app.cli(&["images", "verify"]).unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("CORRUPT"), "{}", text(&o));

    // The appliance killed mid-upload: after the restart nothing half-written is published.
    let mut slow = netmigrate_lab::netns::exec(&a.ns, "curl")
        .args([
            "-sS",
            "--ftp-pasv",
            "--limit-rate",
            "4M",
            "--user",
            &format!("hostA:{pa}"),
            "-T",
            src.to_str().unwrap(),
            &url("/vm1/vm1.img"),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let listed = app.cli_ok(&["images", "--json"]).unwrap();
    assert!(listed.contains("\"uploading\""), "{listed}");
    lab.crash_and_restart(&mut app).unwrap();
    let _ = slow.wait();
    let v: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["images", "--json"]).unwrap()).unwrap();
    let second = v
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["generation"] == 2)
        .unwrap();
    assert_eq!(second["state"], "failed", "{v}");
    assert!(
        second["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted by a restart"),
        "{v}"
    );
    assert!(!app.state_dir.join("images/vm1/2.img").exists());
    assert!(!app.state_dir.join("images/vm1/.2.img.part").exists());

    // lftp cut off mid-upload (killed), then `put -c` (SIZE, REST, STOR): only the rest
    // travels and the newest generation is the whole file.
    let lftp = |cmd: &str| {
        netmigrate_lab::netns::exec(&a.ns, "lftp")
            .args([
                "-u",
                &format!("hostA,{pa}"),
                "-e",
                &format!("set ftp:passive-mode on; set net:limit-rate 4M; {cmd}; quit"),
                "10.213.0.1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let put = format!("put {} -o /vm1/vm1-lftp.img", src.display());
    let mut cut = lftp(&put);
    // Cut it once bytes have arrived (a fixed wait raced with a slow login on a loaded machine:
    // lftp was killed before its upload began, and nothing was there to resume).
    let part = app.state_dir.join("images/vm1/.3.img.part");
    netmigrate_lab::sys::wait_for(
        "lftp's upload to begin",
        std::time::Duration::from_secs(30),
        || {
            std::fs::metadata(&part)
                .ok()
                .filter(|m| m.len() > 0)
                .map(|_| ())
        },
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    cut.kill().unwrap();
    cut.wait().unwrap();
    let published = |gen: u64| app.state_dir.join(format!("images/vm1/{gen}.img"));
    for _ in 0..100 {
        if published(3).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let first = std::fs::metadata(published(3))
        .expect("the cut upload")
        .len();
    assert!(first > 0 && first < bytes.len() as u64, "{first}");
    let resumed = lftp(&put.replacen("put ", "put -c ", 1))
        .wait_with_output()
        .unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        std::fs::read(published(4)).unwrap() == bytes,
        "resumed upload differs"
    );
}

#[test]
fn a_1_gib_image_keeps_its_sha256_through_the_store() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let mut cfg = network_config(&lab.appliance_state_dir().unwrap());
    cfg.push_str(&host_config(&lab, &a, true).unwrap());
    cfg.push_str(&host_config(&lab, &b, true).unwrap());
    cfg.push_str("\n[ftp]\nreserve = \"64M\"\n");
    let app = lab.appliance_with(&cfg).unwrap();
    let pa = app
        .cli_ok(&["ftp", "account", "hostA", "--write", "vm1"])
        .unwrap()
        .trim()
        .to_string();
    let pb = app
        .cli_ok(&["ftp", "account", "hostB", "--read", "vm1"])
        .unwrap()
        .trim()
        .to_string();

    let src = a.dir.join("vm1.save");
    let dst = b.dir.join("vm1.restore");
    netmigrate_lab::sys::sh(
        "sh",
        &[
            "-c",
            &format!("head -c {} /dev/urandom > {}", 1u64 << 30, src.display()),
        ],
    )
    .unwrap();
    let want = sha256sum(&src);
    lab.exec(
        &a.ns,
        "curl",
        &[
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("hostA:{pa}"),
            "-T",
            src.to_str().unwrap(),
            "ftp://10.213.0.1/vm1/vm1.img",
        ],
    )
    .unwrap();
    lab.exec(
        &b.ns,
        "curl",
        &[
            "-sS",
            "--ftp-pasv",
            "--user",
            &format!("hostB:{pb}"),
            "-o",
            dst.to_str().unwrap(),
            "ftp://10.213.0.1/vm1/latest.img",
        ],
    )
    .unwrap();
    assert_eq!(sha256sum(&dst), want, "the 1 GiB image changed on its way");
    let v: serde_json::Value =
        serde_json::from_str(&app.cli_ok(&["images", "--json"]).unwrap()).unwrap();
    assert_eq!(v[0]["sha256"], want.as_str());
    assert_eq!(v[0]["size"], 1u64 << 30);
    for f in [&src, &dst] {
        let _ = std::fs::remove_file(f);
    }
}

/// With `[ftp] compress = "zstd"`, each VM's older images are kept compressed: listed with
/// the bytes they take, downloaded whole (and resumed) by curl as if they were not, verified.
#[test]
fn older_images_are_kept_compressed_and_read_back_whole() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let b = lab.host("B").unwrap();
    let mut cfg = network_config(&lab.appliance_state_dir().unwrap());
    for h in [&a, &b] {
        cfg.push_str(&host_config(&lab, h, true).unwrap());
    }
    cfg.push_str("\n[ftp]\npassive_ports = [50000, 50050]\ncompress = \"zstd\"\n");
    let app = lab.appliance_with(&cfg).unwrap();
    let pw = |args: &[&str]| app.cli_ok(args).unwrap().trim().to_string();
    let pa = pw(&["ftp", "account", "hostA", "--write", "vm1"]);
    let pb = pw(&["ftp", "account", "hostB", "--read", "vm1"]);
    // A saved VM: mostly zero pages between busy ones.
    let saved = |seed: u8| {
        let mut v = data(16 << 20);
        for (i, x) in v.iter_mut().enumerate() {
            if (i / 4096) % 4 != 0 {
                *x = 0;
            } else {
                *x ^= seed;
            }
        }
        v
    };
    let (first, second) = (saved(1), saved(2));
    for (i, bytes) in [&first, &second].into_iter().enumerate() {
        let src = a.dir.join(format!("vm1.save{i}"));
        std::fs::write(&src, bytes).unwrap();
        let up = lab
            .exec(
                &a.ns,
                "curl",
                &[
                    "-sS",
                    "--user",
                    &format!("hostA:{pa}"),
                    "-T",
                    src.to_str().unwrap(),
                    "ftp://10.213.0.1/vm1/vm1.img",
                ],
            )
            .unwrap();
        assert!(up.is_empty(), "{up}");
    }
    // The older one is compressed in the background; the newest stays as it came.
    let v = netmigrate_lab::sys::wait_for(
        "vm1/1 to be compressed",
        std::time::Duration::from_secs(20),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&app.cli_ok(&["images", "--json"]).ok()?).ok()?;
            (v[0]["compression"] == "zstd").then_some(v)
        },
    )
    .unwrap();
    assert_eq!(v[0]["size"], first.len(), "{v:#}");
    assert!(
        v[0]["stored"].as_u64().unwrap() < first.len() as u64 / 2,
        "{v:#}"
    );
    assert!(v[1]["compression"].is_null(), "{v:#}");
    assert!(app.cli_ok(&["images"]).unwrap().contains("zstd"));

    // hostB downloads it whole, and resumes a download cut after 5,000,000 bytes.
    let dst = b.dir.join("vm1.1");
    let get = |extra: &[&str]| {
        let mut args = vec![
            "-sS".to_string(),
            "--user".into(),
            format!("hostB:{pb}"),
            "ftp://10.213.0.1/vm1/1.img".into(),
            "-o".into(),
            dst.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.exec(&b.ns, "curl", &args).unwrap()
    };
    get(&[]);
    assert!(
        std::fs::read(&dst).unwrap() == first,
        "the download differs"
    );
    std::fs::write(&dst, &first[..5_000_000]).unwrap();
    get(&["-C", "-"]);
    assert!(
        std::fs::read(&dst).unwrap() == first,
        "the resumed download differs"
    );
    assert!(app.cli(&["images", "verify"]).unwrap().status.success());
}

/// The image store's disk fills up mid-upload (a 32 MiB tmpfs under a 48 MiB upload; the
/// configured reserve cannot see it coming, as curl announces no size): the upload fails with
/// an FTP error, nothing is published, the space comes back, the appliance goes on and the next
/// upload that fits is published whole.
#[test]
fn a_full_disk_fails_the_upload_and_loses_nothing() {
    require_lab!();
    let lab = Lab::new().unwrap();
    let a = lab.host("A").unwrap();
    let state_dir = lab.appliance_state_dir().unwrap();
    let mut cfg = network_config(&state_dir);
    cfg.push_str(&host_config(&lab, &a, true).unwrap());
    cfg.push_str("\n[ftp]\npassive_ports = [50000, 50050]\nreserve = \"1M\"\n");
    let images = state_dir.join("images");
    let app = lab
        .appliance_with_prelude(
            &cfg,
            &format!(
                "umask 027; mkdir -p {0} && mount -t tmpfs -o size=32m,mode=0750 nm-full {0}",
                images.display()
            ),
        )
        .unwrap();
    let pa = app
        .cli_ok(&["ftp", "account", "hostA", "--write", "vm1"])
        .unwrap()
        .trim()
        .to_string();
    let put = |len: usize, name: &str| {
        let src = a.dir.join(name);
        std::fs::write(&src, data(len)).unwrap();
        let o = netmigrate_lab::netns::exec(&a.ns, "curl")
            .args(["-sS", "--max-time", "60", "--ftp-pasv", "--user"])
            .arg(format!("hostA:{pa}"))
            .arg("-T")
            .arg(&src)
            .arg(format!("ftp://10.213.0.1/vm1/{name}"))
            .output()
            .unwrap();
        (o, src)
    };
    let list = || -> serde_json::Value {
        serde_json::from_str(&app.cli_ok(&["images", "--json"]).unwrap()).unwrap()
    };

    let (full, _) = put(48 << 20, "big.img");
    assert!(
        !full.status.success(),
        "48 MiB fit into 32: {}",
        text(&full)
    );
    eprintln!("disk full: curl says {}", text(&full).trim());
    let v = list();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] != "published"),
        "published after a full disk: {v:#}"
    );
    let events = app.cli_ok(&["events", "--limit", "50"]).unwrap();
    let failed = events
        .lines()
        .find(|l| l.contains("image.failed"))
        .unwrap_or_else(|| panic!("no image.failed event: {events}"));
    assert!(
        failed.to_lowercase().contains("no space left"),
        "the event does not say why: {failed}"
    );
    eprintln!("{failed}");

    // The half-written upload gave its space back: 24 MiB fit now, whole.
    let (ok, src) = put(24 << 20, "fits.img");
    assert!(ok.status.success(), "{}", text(&ok));
    let v = list();
    let published: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "published")
        .collect();
    assert_eq!(published.len(), 1, "{v:#}");
    assert_eq!(published[0]["sha256"], sha256sum(&src).as_str());
    assert_eq!(published[0]["size"], 24u64 << 20);
    let verify = app.cli_ok(&["images", "verify"]).unwrap();
    eprintln!("{}", verify.trim());
}
