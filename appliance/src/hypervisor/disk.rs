//! A VM's disks: how its definition names them, and the host-side work every driver shares
//! (their sizes, room for them, making and removing a target's copy), in shell words for the
//! host's own tools: `stat`, `df`, `truncate`, and `qemu-img` for qcow2.

use serde::{Deserialize, Serialize};

use super::{last_words, DriverError, VmDef};
use crate::inventory::link::Link;
use crate::shell::quote;

/// One disk of a VM. A local disk (`shared = false`, the default) lives on its host's own
/// storage and moves with the VM; a shared one is at the same path on every host and stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Its image file, as the hosts see it (the same path on the target).
    pub path: String,
    #[serde(default)]
    pub format: DiskFormat,
    #[serde(default)]
    pub bus: DiskBus,
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// How the guest sees the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Ide,
    Scsi,
}

impl DiskBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Ide => "ide",
            DiskBus::Scsi => "scsi",
        }
    }
}

/// At most this many disks per VM (IDE has four places; the rest is a sanity bound).
pub const MAX_DISKS: usize = 8;

impl std::str::FromStr for Disk {
    type Err = String;

    /// `PATH[,format=raw|qcow2][,bus=virtio|ide|scsi][,shared]`, as `vm define --disk` takes it.
    fn from_str(s: &str) -> Result<Disk, String> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default().to_string();
        let mut d = Disk {
            path,
            format: DiskFormat::default(),
            bus: DiskBus::default(),
            shared: false,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("format", "raw")) => d.format = DiskFormat::Raw,
                Some(("format", "qcow2")) => d.format = DiskFormat::Qcow2,
                Some(("bus", "virtio")) => d.bus = DiskBus::Virtio,
                Some(("bus", "ide")) => d.bus = DiskBus::Ide,
                Some(("bus", "scsi")) => d.bus = DiskBus::Scsi,
                None if p == "shared" => d.shared = true,
                _ => {
                    return Err(format!(
                    "disk `{s}`: `{p}` is not one of format=raw|qcow2, bus=virtio|ide|scsi, shared"
                ))
                }
            }
        }
        Ok(d)
    }
}

impl Disk {
    /// Its block node's name in QEMU (the same on both sides of a move): `disk0`, `disk1`, ...
    pub fn node(i: usize) -> String {
        format!("disk{i}")
    }

    /// What is wrong with `disks` as one VM's, if anything.
    pub fn check_all(disks: &[Disk]) -> Result<(), String> {
        if disks.len() > MAX_DISKS {
            return Err(format!("{} disks: at most {MAX_DISKS}", disks.len()));
        }
        for (i, d) in disks.iter().enumerate() {
            if !d.path.starts_with('/') || d.path.ends_with('/') || d.path.contains('\n') {
                return Err(format!(
                    "disk {i} `{}`: an absolute path to an image file",
                    d.path
                ));
            }
            if disks[..i].iter().any(|o| o.path == d.path) {
                return Err(format!("disk {i} `{}`: given twice", d.path));
            }
        }
        if disks.iter().filter(|d| d.bus == DiskBus::Ide).count() > 4 {
            return Err("more than 4 IDE disks (two buses, two places each)".into());
        }
        Ok(())
    }

    /// Its file's name, without the directory.
    pub fn file_name(&self) -> &str {
        self.path.rsplit_once('/').map_or(&self.path, |(_, f)| f)
    }

    /// The directory its file is in.
    pub fn dir(&self) -> &str {
        match self.path.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((d, _)) => d,
        }
    }
}

/// One disk's size on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// The size the guest sees.
    pub virtual_bytes: u64,
    /// What its file takes on the host's storage (less than `virtual_bytes` when sparse).
    pub allocated_bytes: u64,
}

/// A script printing `VIRTUAL ALLOCATED` for each of `disks`, one line each, in order; a disk
/// that is not there prints `missing`. A qcow2's virtual size is read from its header (bytes
/// 24-31, big-endian), so no `qemu-img` is needed to ask.
pub fn usage_script(disks: &[&Disk]) -> String {
    let mut s = String::from("export LC_ALL=C; ");
    for d in disks {
        let p = quote(&d.path);
        let virt = match d.format {
            DiskFormat::Raw => "$1".to_string(),
            DiskFormat::Qcow2 => format!("$(od -An -j24 -N8 -tu8 --endian=big -- {p} | tr -d ' ')"),
        };
        s += &format!(
            "if set -- $(stat -L -c '%s %b %B' -- {p} 2>/dev/null) && [ $# = 3 ]; then \
             echo \"{virt} $(( $2 * $3 ))\"; else echo missing; fi; "
        );
    }
    s
}

/// A script printing `VIRTUAL ALLOCATED PATH` for each of `paths` that is there, its format
/// told by its first bytes (a qcow2's magic; anything else is taken as raw): for images whose
/// format the caller does not know (the inventory's, found on a command line).
pub fn probe_script(paths: &[String]) -> String {
    let mut s = String::from("export LC_ALL=C; ");
    for p in paths {
        let q = quote(p);
        s += &format!(
            "if set -- $(stat -L -c '%s %b %B' -- {q} 2>/dev/null) && [ $# = 3 ]; then \
             v=$1; [ \"$(od -An -tx1 -N4 -- {q} | tr -d ' \\n')\" = 514649fb ] && \
             v=$(od -An -j24 -N8 -tu8 --endian=big -- {q} | tr -d ' '); \
             echo \"$v $(( $2 * $3 )) \"{q}; fi; "
        );
    }
    s
}

/// `probe_script`'s output: (path, sizes) for each image that was there.
pub fn parse_probe(out: &str) -> Vec<(String, DiskUsage)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            let v = w.next()?.parse().ok()?;
            let a = w.next()?.parse().ok()?;
            Some((
                w.next()?.to_string(),
                DiskUsage {
                    virtual_bytes: v,
                    allocated_bytes: a,
                },
            ))
        })
        .collect()
}

/// `usage_script`'s output, for `disks`.
pub fn parse_usage(disks: &[&Disk], out: &str) -> Result<Vec<Option<DiskUsage>>, String> {
    let lines: Vec<&str> = out.lines().collect();
    if lines.len() != disks.len() {
        return Err(format!(
            "asked for {} disks' sizes, got {} lines",
            disks.len(),
            lines.len()
        ));
    }
    lines
        .iter()
        .zip(disks)
        .map(|(l, d)| {
            if *l == "missing" {
                return Ok(None);
            }
            let mut w = l.split_whitespace().map(str::parse::<u64>);
            match (w.next(), w.next()) {
                (Some(Ok(v)), Some(Ok(a))) => Ok(Some(DiskUsage {
                    virtual_bytes: v,
                    allocated_bytes: a,
                })),
                _ => Err(format!("{}: sizes `{l}` unreadable", d.path)),
            }
        })
        .collect()
}

/// A script that makes an empty copy of each of `disks` (`like` gives each one's virtual
/// size): refused, with nothing made, if one is there already or its directory has less room
/// than the data it will hold (`like`'s allocated bytes). Every file made is removed if a later
/// one fails.
pub fn create_script(disks: &[&Disk], like: &[DiskUsage]) -> String {
    let mut s = checks_script(disks, like);
    // Each made in turn; one that fails takes those made before it with it.
    let mut made: Vec<String> = Vec::new();
    for (d, u) in disks.iter().zip(like) {
        let p = quote(&d.path);
        let size = u.virtual_bytes;
        let make = match d.format {
            DiskFormat::Raw => format!("truncate -s {size} -- {p}"),
            DiskFormat::Qcow2 => format!("qemu-img create -q -f qcow2 -- {p} {size} >&2"),
        };
        made.push(p);
        s += &format!("{make} || {{ rm -f -- {}; exit 5; }}; ", made.join(" "));
    }
    s += "true";
    s
}

/// A script that fails, saying why, if `disks` could not be made as `create_script` makes
/// them: one is there already, or a directory lacks room.
pub fn checks_script(disks: &[&Disk], like: &[DiskUsage]) -> String {
    // Room per directory: the data of every disk in it.
    let mut need: Vec<(&str, u64)> = Vec::new();
    for (d, u) in disks.iter().zip(like) {
        match need.iter_mut().find(|(dir, _)| *dir == d.dir()) {
            Some((_, n)) => *n += u.allocated_bytes,
            None => need.push((d.dir(), u.allocated_bytes)),
        }
    }
    let mut s = String::from("export LC_ALL=C; ");
    for d in disks {
        let p = quote(&d.path);
        s += &format!(
            "if [ -e {p} ]; then echo {msg} >&2; exit 3; fi; ",
            msg = quote(&format!("{} is there already: not overwriting it", d.path))
        );
    }
    for (dir, bytes) in &need {
        let q = quote(dir);
        s += &format!(
            "mkdir -p -- {q} || exit 4; free=$(df -P -B1 -- {q} | awk 'NR==2 {{print $4}}'); \
             if [ \"${{free:-0}}\" -lt {bytes} ]; then echo {msg}\"$free free\" >&2; exit 4; fi; ",
            msg = quote(&format!(
                "no room for the disks in {dir}: they hold {bytes} bytes, "
            ))
        );
    }
    s
}

/// A script that removes `disks` (those not there are no error).
pub fn remove_script(disks: &[&Disk]) -> String {
    let words: Vec<String> = disks.iter().map(|d| quote(&d.path)).collect();
    format!("rm -f -- {}", words.join(" "))
}

/// The first line of a cold move's disk stream: its version and how many disks follow.
const STREAM_MAGIC: &str = "netmigrate-disks 3";

/// The chunks a disk's archive is cut into on the wire (each spooled once in the run
/// directory to learn its length).
const CHUNK: &str = "16M";

/// A shell command that writes `disks` to its stdout, framed, then copies its stdin (the VM's
/// saved state) after them: the cold path's stream, before compression.
///
/// ```text
/// netmigrate-disks 3 N\n   then, for each disk:   tar SIZE\n
///                            chunks: LENGTH\n and LENGTH bytes, ..., then 0\n
/// ```
///
/// followed by the state to the end. Each disk is a GNU tar archive (sparse) of its one file,
/// of SIZE bytes: its holes are found with SEEK_HOLE and neither read nor sent, so a 1 TiB
/// disk holding 2 GiB costs what 2 GiB cost. The archive is made once, streamed in chunks
/// (`split --filter`, each chunk spooled in `tmp_dir` for its length): the holes a file
/// system reports can change from one look to the next (ext4's unwritten extents follow the
/// page cache), so an archive made twice need not be the same length. The VM is paused while
/// they are read.
pub fn send_script(disks: &[&Disk], tmp_dir: &str) -> String {
    send_then(disks, tmp_dir, "cat")
}

/// `send_script` for a driver whose guest stops only inside its save (a Xen guest suspends
/// itself when `xl save` asks): the state is read whole into `tmp` first, since only once the
/// save is over do the disks hold still; then the disks, then the state from `tmp`, which is
/// removed however this ends.
pub fn send_after_save_script(disks: &[&Disk], tmp_dir: &str, tmp: &str) -> String {
    format!(
        "( t={}; trap 'rm -f -- \"$t\"' EXIT; trap 'exit 143' TERM INT HUP; umask 077; \
         cat > \"$t\" && {} )",
        quote(tmp),
        send_then(disks, tmp_dir, "cat -- \"$t\"")
    )
}

/// The disks framed, then `state` (a command writing the state to stdout).
fn send_then(disks: &[&Disk], tmp_dir: &str, state: &str) -> String {
    // Each chunk, in the filter's own shell: spooled, its length, its bytes.
    let chunk = format!(
        "c={}/.nm-chunk.$$; cat > \"$c\" && printf '%s\\n' \"$(stat -c %s -- \"$c\")\" && \
         cat -- \"$c\"; r=$?; rm -f -- \"$c\"; exit $r",
        quote(tmp_dir)
    );
    let mut s = format!(
        "{{ mkdir -p -- {} && printf '%s\\n' '{STREAM_MAGIC} {}'",
        quote(tmp_dir),
        disks.len()
    );
    for d in disks {
        s += &format!(
            " && printf 'tar %s\\n' \"$(stat -L -c %s -- {p})\" && \
             tar -chS --format=gnu -f - -C {dir} -- {name} | split -b {CHUNK} --filter={f} && \
             printf '0\\n'",
            p = quote(&d.path),
            dir = quote(d.dir()),
            name = quote(d.file_name()),
            f = quote(&chunk),
        );
    }
    s += &format!(" && {state}; }}");
    s
}

/// A shell command that reads `send_script`'s stream on its stdin: each disk written into its
/// copy here (made before by `create_script`; written in place, the same file, which a waiting
/// hypervisor may hold open; its holes stay holes), checked for its size, then the state copied
/// to its stdout. Once every disk is written, `done` gets the line `disks-ok`. A stream that
/// is not one, or a disk that cannot be written, ends it before the state: whoever reads the
/// state sees it cut short.
pub fn receive_script(disks: &[&Disk], done: &str) -> String {
    let mut s = format!(
        "{{ read m v n || exit 7; [ \"$m $v $n\" = '{STREAM_MAGIC} {}' ] || \
         {{ echo 'not a netmigrate disk stream, or not for these disks' >&2; exit 7; }}; ",
        disks.len()
    );
    for d in disks {
        let p = quote(&d.path);
        // The chunks, up to the 0 after the last, into tar; --overwrite: into the file that
        // is there (opened and truncated, not replaced).
        s += &format!(
            "read t s || exit 7; case $t:$s in tar:*[!0-9]*|tar:) echo {bad} >&2; exit 7;; tar:*) ;; \
             *) echo {bad} >&2; exit 7;; esac; \
             while read n && [ \"$n\" != 0 ]; do case $n in ''|*[!0-9]*) exit 7;; esac; \
               head -c \"$n\" || exit 7; done | tar -xS --overwrite -f - -C {dir} -- {name} && \
             [ \"$(stat -c %s -- {p})\" = \"$s\" ] || {{ echo {short} >&2; exit 8; }}; ",
            bad = quote(&format!("{}: bad frame in the disk stream", d.path)),
            short = quote(&format!("{}: not written whole", d.path)),
            dir = quote(d.dir()),
            name = quote(d.file_name()),
        );
    }
    s += &format!("echo disks-ok >> {}; exec cat; }}", quote(done));
    s
}

/// The tools a host needs to send or receive a cold move's disks (beside `sh`): fails naming
/// those it lacks.
pub fn tools_script() -> String {
    "m=; for t in zstd stat head; do command -v $t >/dev/null 2>&1 || m=\"$m $t\"; done; \
     tar --version 2>/dev/null | grep -q 'GNU tar' || m=\"$m GNU-tar\"; \
     split --help 2>/dev/null | grep -q -- --filter || m=\"$m GNU-split\"; \
     [ -z \"$m\" ] || { echo \"a cold move with local disks needs:$m\" >&2; exit 6; }"
        .into()
}

/// The calls every driver makes for a VM's local disks on its host, over its link.
pub struct HostDisks<'a> {
    pub link: &'a dyn Link,
    /// The host's run directory (scratch space of a move).
    pub run_dir: &'a str,
    pub host: &'a str,
}

impl HostDisks<'_> {
    fn err(&self, vm: &VmDef) -> impl Fn(String) -> DriverError + '_ {
        let (host, vm) = (self.host.to_string(), vm.name.clone());
        move |reason| DriverError::Vm {
            host: host.clone(),
            vm: vm.clone(),
            reason,
        }
    }

    /// Runs `script` in the host's kept shell (no new channel: these are on a move's way),
    /// failing with the last line it printed on stderr.
    async fn run(&self, vm: &VmDef, script: &str) -> Result<String, DriverError> {
        let err = self.err(vm);
        let out = self
            .link
            .run_script(script, TIMEOUT)
            .await
            .map_err(|e| err(e.to_string()))?;
        if out.status != Some(0) {
            return Err(err(last_words(&out.stderr, out.status)));
        }
        Ok(out.stdout)
    }

    pub async fn usage(&self, vm: &VmDef) -> Result<Vec<Option<DiskUsage>>, DriverError> {
        let disks = vm.local_disks();
        let out = self.run(vm, &usage_script(&disks)).await?;
        parse_usage(&disks, &out).map_err(self.err(vm))
    }

    pub async fn check(&self, vm: &VmDef, like: &[DiskUsage]) -> Result<(), DriverError> {
        let script = checks_script(&vm.local_disks(), like);
        self.run(vm, &script).await.map(drop)
    }

    pub async fn make(&self, vm: &VmDef, like: &[DiskUsage]) -> Result<(), DriverError> {
        let script = create_script(&vm.local_disks(), like);
        self.run(vm, &script).await.map(drop)
    }

    pub async fn remove(&self, vm: &VmDef) -> Result<(), DriverError> {
        let script = remove_script(&vm.local_disks());
        self.run(vm, &script).await.map(drop)
    }
}

/// How long one of those calls may take (a qcow2 is made in milliseconds; `df` on a hung
/// mount is the slow case).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, format: DiskFormat) -> Disk {
        Disk {
            path: path.into(),
            format,
            bus: DiskBus::Virtio,
            shared: false,
        }
    }

    #[test]
    fn a_disk_is_read_from_its_command_line_words() {
        let d: Disk = "/var/lib/vm/a.qcow2,format=qcow2,bus=ide,shared"
            .parse()
            .unwrap();
        assert_eq!(d.path, "/var/lib/vm/a.qcow2");
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.bus, DiskBus::Ide);
        assert!(d.shared);
        let d: Disk = "/a.img".parse().unwrap();
        assert_eq!(
            (d.format, d.bus, d.shared),
            (DiskFormat::Raw, DiskBus::Virtio, false)
        );
        let e = "/a.img,format=vmdk".parse::<Disk>().unwrap_err();
        assert!(e.contains("format=vmdk"), "{e}");
        assert_eq!(d.dir(), "/");
        assert_eq!(disk("/var/a", DiskFormat::Raw).dir(), "/var");
    }

    #[test]
    fn bad_disk_lists_are_named() {
        let a = disk("/x/a.img", DiskFormat::Raw);
        assert!(Disk::check_all(std::slice::from_ref(&a)).is_ok());
        let e = Disk::check_all(&[a.clone(), a.clone()]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = Disk::check_all(&[disk("rel.img", DiskFormat::Raw)]).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    /// The scripts run here, in a shell, on real files: sizes read, copies made sparse and
    /// refused over an existing file, removed.
    #[test]
    fn the_scripts_measure_make_and_remove_disks_on_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let raw = disk(&p("a.img"), DiskFormat::Raw);
        let sh = |s: &str| {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(s)
                .output()
                .unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        };
        // Absent: "missing".
        let (ok, out, _) = sh(&usage_script(&[&raw]));
        assert!(ok);
        assert_eq!(parse_usage(&[&raw], &out).unwrap(), vec![None]);
        // Made sparse, 64 MiB seen, next to nothing allocated.
        let like = DiskUsage {
            virtual_bytes: 64 << 20,
            allocated_bytes: 1 << 20,
        };
        let (ok, _, err) = sh(&create_script(&[&raw], &[like]));
        assert!(ok, "{err}");
        let (_, out, _) = sh(&usage_script(&[&raw]));
        let u = parse_usage(&[&raw], &out).unwrap()[0].unwrap();
        assert_eq!(u.virtual_bytes, 64 << 20);
        assert!(u.allocated_bytes < 1 << 20, "{u:?}");
        // Not made again over what is there.
        std::fs::write(&raw.path, b"data").unwrap();
        let (ok, _, err) = sh(&create_script(&[&raw], &[like]));
        assert!(!ok && err.contains("there already"), "{err}");
        assert_eq!(std::fs::read(&raw.path).unwrap(), b"data");
        // No room: nothing made (the first of two is removed when the second is refused).
        let b = disk(&p("b.img"), DiskFormat::Raw);
        let c = disk(&p("c.img"), DiskFormat::Raw);
        let huge = DiskUsage {
            virtual_bytes: 1 << 50,
            allocated_bytes: 1 << 50,
        };
        let (ok, _, err) = sh(&create_script(&[&b, &c], &[like, huge]));
        assert!(!ok && err.contains("no room"), "{err}");
        assert!(!std::path::Path::new(&b.path).exists());
        let (ok, _, _) = sh(&remove_script(&[&raw, &b]));
        assert!(ok);
        assert!(!std::path::Path::new(&raw.path).exists());
    }

    /// A raw disk with holes and a qcow2-like file go through the stream with a state after
    /// them, compressed and back, as a cold move sends them: every byte equal, the state
    /// intact, the copy of the raw disk sparse, and a stream cut short refused.
    #[test]
    fn disks_and_state_go_through_one_stream_and_come_out_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("dst")).unwrap();
        let src = [
            disk(&p("src/a b.img"), DiskFormat::Raw),
            disk(&p("src/c.qcow2"), DiskFormat::Qcow2),
        ];
        let dst = [
            disk(&p("dst/a b.img"), DiskFormat::Raw),
            disk(&p("dst/c.qcow2"), DiskFormat::Qcow2),
        ];
        // 64 MiB, with 18 MiB of data at 8 MiB (more than one chunk on the wire) and a few
        // bytes at the very end.
        let f = std::fs::File::create(&src[0].path).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        let data: Vec<u8> = (0..18 << 20).map(|i| (i * 7 + 3) as u8).collect();
        f.write_all_at(&data, 8 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let q: Vec<u8> = (0..300_001).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src[1].path, &q).unwrap();
        // The copies as `create_script` leaves them: there, with old bytes to be replaced.
        std::fs::write(&dst[0].path, b"old").unwrap();
        std::fs::write(&dst[1].path, vec![9u8; 500_000]).unwrap();
        use std::os::unix::fs::MetadataExt;
        let inodes = |ds: &[Disk]| -> Vec<u64> {
            ds.iter()
                .map(|d| std::fs::metadata(&d.path).unwrap().ino())
                .collect()
        };
        let before = inodes(&dst);
        let state: Vec<u8> = (0..100_000).map(|i| (i % 13) as u8).collect();
        std::fs::write(p("state"), &state).unwrap();
        let done = p("done");
        let s: Vec<&Disk> = src.iter().collect();
        let d: Vec<&Disk> = dst.iter().collect();
        let run = |script: String| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap()
        };
        let o = run(format!(
            "{} < {st} | zstd -1 -q -c > {w} && zstd -dcq < {w} | {} > {out}",
            send_script(&s, &p("spool")),
            receive_script(&d, &done),
            st = quote(&p("state")),
            w = quote(&p("wire")),
            out = quote(&p("out")),
        ));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(p("out")).unwrap(), state);
        assert_eq!(std::fs::read_to_string(&done).unwrap(), "disks-ok\n");
        assert_eq!(
            std::fs::read(&dst[0].path).unwrap(),
            std::fs::read(&src[0].path).unwrap()
        );
        assert_eq!(std::fs::read(&dst[1].path).unwrap(), q);
        // Written in place: a hypervisor holding the copies open sees what was written.
        assert_eq!(inodes(&dst), before);
        // Holes neither crossed the wire nor were written.
        let wire = std::fs::metadata(p("wire")).unwrap().len();
        assert!(wire < 3 << 20, "{wire} bytes on the wire");
        let allocated = std::fs::metadata(&dst[0].path).unwrap().blocks() * 512;
        assert!(allocated <= 20 << 20, "{allocated} bytes allocated");
        assert!(!std::path::Path::new(&p("spool"))
            .read_dir()
            .unwrap()
            .any(|_| true));
        // The same through the variant that reads the state whole first: the same stream,
        // and its buffer gone after.
        let tmp = p("state.buffer");
        let o = run(format!(
            "{} < {st} | zstd -1 -q -c > {w2} && cmp {w} {w2}",
            send_after_save_script(&s, &p("spool"), &tmp),
            st = quote(&p("state")),
            w = quote(&p("wire")),
            w2 = quote(&p("wire2")),
        ));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!std::path::Path::new(&tmp).exists());
        // A stream cut in the middle of a disk ends before the state, failing.
        std::fs::remove_file(&done).unwrap();
        let o = run(format!(
            "zstd -dcq < {w} | head -c 6000000 | {} > {out}",
            receive_script(&d, &done),
            w = quote(&p("wire")),
            out = quote(&p("out")),
        ));
        assert!(!o.status.success());
        assert!(std::fs::read(p("out")).unwrap().is_empty());
        assert!(!std::path::Path::new(&done).exists());
        // Another stream is refused at its first line.
        let o = run(format!("printf 'hello\\n' | {}", receive_script(&d, &done)));
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("not a netmigrate disk stream"));
    }

    #[test]
    fn the_inventory_probe_tells_a_qcow2_from_a_raw_image_by_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q img").display().to_string();
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(5u64 << 30).to_be_bytes());
        std::fs::write(&q, &h).unwrap();
        let r = dir.path().join("r.img").display().to_string();
        std::fs::File::create(&r)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let gone = dir.path().join("gone").display().to_string();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(probe_script(&[q.clone(), r.clone(), gone]))
            .output()
            .unwrap();
        let got = parse_probe(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, q);
        assert_eq!(got[0].1.virtual_bytes, 5 << 30);
        assert_eq!(got[1].0, r);
        assert_eq!(got[1].1.virtual_bytes, 64 << 20);
        assert!(got[1].1.allocated_bytes < 1 << 20);
    }

    #[test]
    fn a_qcow2_virtual_size_comes_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let q = disk(
            &dir.path().join("q.qcow2").display().to_string(),
            DiskFormat::Qcow2,
        );
        // A qcow2 header's first 32 bytes: magic, version, backing offset and size, then the
        // virtual size at 24.
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(3u64 << 30).to_be_bytes());
        std::fs::write(&q.path, &h).unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(usage_script(&[&q]))
            .output()
            .unwrap();
        let u = parse_usage(&[&q], &String::from_utf8_lossy(&o.stdout)).unwrap()[0].unwrap();
        assert_eq!(u.virtual_bytes, 3 << 30);
    }
}
