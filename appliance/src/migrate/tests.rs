//! The engine against fake hosts, in seconds: the fake hypervisor of the factory
//! (`hypervisor::fake`), a fake switch, and a local shell as each host's link. What is real:
//! the state (SQLite), the image store and its FTP server on loopback, curl and openssl moving
//! and hashing the VM's bytes, the journal. Below the lab tests, not instead of them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::journal::JournalStore;
use super::recover::{decide, Decision};
use super::*;
use crate::hypervisor::fake::{self, FakeHost, Fault};
use crate::inventory::facts::HostFacts;
use crate::inventory::link::LocalLink;
use crate::state::StateError;

/// Fake hosts' links are local shells; their switches are the fake hosts' own.
struct FakeHosts;

#[async_trait]
impl Hosts for FakeHosts {
    async fn link(&self, h: &HostConfig, _pinned: &str) -> Result<Arc<dyn Link>, String> {
        Ok(Arc::new(LocalLink {
            host: h.name.clone(),
        }))
    }

    async fn forget(&self, _host: &str) {}

    async fn collect(&self, hosts: Vec<(HostConfig, Option<String>)>) -> Vec<Collected> {
        hosts
            .into_iter()
            .map(|(h, _)| Collected {
                host: h.name,
                duration_ms: 1,
                facts: Some(HostFacts {
                    mem_total_mib: 8192,
                    mem_free_mib: 4096,
                    ..Default::default()
                }),
                error: None,
            })
            .collect()
    }

    fn switch(&self, h: &HostConfig, _link: Arc<dyn Link>) -> Box<dyn Switch> {
        Box::new(fake::host(&h.name, h.address).switch.clone())
    }
}

/// The journal over the state, with a crash injected: at `step` (before its side effect, or
/// after it before it is marked done) the move stops forever there, as a killed daemon would.
struct Crashing {
    state: State,
    at: Option<(String, When)>,
    hit: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl JournalStore for Crashing {
    async fn step_started(&self, migration: i64, step: String) -> Result<i64, StateError> {
        let seq = self.state.step_started(migration, step.clone()).await?;
        if self.at.as_ref() == Some(&(step, When::Before)) {
            self.hit.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(seq)
    }

    async fn step_ended(
        &self,
        migration: i64,
        seq: i64,
        state: &'static str,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        let name = self
            .state
            .migration(migration)
            .await?
            .and_then(|m| m.steps.into_iter().find(|s| s.seq == seq))
            .map(|s| s.step);
        if let (Some(n), Some((at, When::After))) = (name, self.at.as_ref()) {
            if n == *at {
                self.hit.notify_one();
                std::future::pending::<()>().await;
            }
        }
        self.state.step_ended(migration, seq, state, detail).await
    }
}

/// One test's appliance: config, state, store and FTP on loopback, and two fake hosts.
struct Bench {
    _dir: tempfile::TempDir,
    /// Told when the injected crash is reached.
    crashed: Arc<tokio::sync::Notify>,
    cfg: Config,
    engine: Engine,
    a: Arc<FakeHost>,
    c: Arc<FakeHost>,
    def: VmDef,
    names: (String, String),
}

static NEXT: AtomicU16 = AtomicU16::new(0);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Bench {
    async fn new(tag: &str) -> Bench {
        Bench::with_journal(tag, None).await
    }

    async fn with_journal(tag: &str, crash: Option<(String, When)>) -> Bench {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not used by fake hosts\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Each bench its own passive range, so parallel tests do not take each other's ports
        // (a test's earlier benches keep theirs until it ends): 200 benches per process before
        // one comes back, below the kernel's ephemeral ports.
        let pasv = 10000 + (std::process::id() % 20) as u16 * 1000 + (n % 200) * 5;
        let (a_name, c_name) = (format!("{tag}-{n}-A"), format!("{tag}-{n}-C"));
        let host = |name: &str, last: u8| {
            format!(
                "[[host]]\nname = \"{name}\"\naddress = \"127.0.{}.{last}\"\nhypervisor = \"fake\"\n\
                 ssh_key = \"{}\"\nhost_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n\
                 bridge = \"br0\"\nrun_dir = \"{}\"\n",
                n % 250 + 1,
                key.display(),
                dir.path().join(name).display()
            )
        };
        let text = format!(
            "state_dir = \"{}\"\n[[network]]\nname = \"lo\"\ninterface = \"lo\"\naddress = \"127.0.0.1/8\"\n\
             [ftp]\nport = {}\npassive_ports = [{pasv}, {}]\n{}{}",
            dir.path().join("state").display(),
            free_port(),
            pasv + 4,
            host(&a_name, 2),
            host(&c_name, 3),
        );
        let path = dir.path().join("netmigrate.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = Config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let state = State::open(&cfg.db_path()).unwrap();
        let (store, _ftp) = crate::ftp::start(&cfg, &state).await.unwrap();
        let crashed = Arc::new(tokio::sync::Notify::new());
        let journal: Arc<dyn JournalStore> = Arc::new(Crashing {
            state: state.clone(),
            at: crash,
            hit: crashed.clone(),
        });
        let engine = Engine {
            state: state.clone(),
            journal,
            store,
            hosts: Arc::new(FakeHosts),
            after_move: Arc::new(vec![]),
        };
        let addr = |h: &str| cfg.hosts.iter().find(|x| x.name == h).unwrap().address;
        let a = fake::host(&a_name, addr(&a_name));
        let c = fake::host(&c_name, addr(&c_name));
        let def = VmDef {
            name: "vm1".into(),
            mem_mib: 128,
            vcpus: 1,
            mac: "52:54:00:d5:00:15".into(),
            ip: Some("10.213.0.21".parse().unwrap()),
            vlan: Some(7),
            rate_kbps: Some(10_000),
            kernel: Some("/boot/vmlinuz".into()),
            initrd: None,
            append: None,
            disks: vec![],
            guest_type: None,
            adopted: None,
        };
        state.define_vm(def.clone()).await.unwrap();
        state
            .place_vm(def.name.clone(), Some(a_name.clone()), "running")
            .await
            .unwrap();
        a.run(&def, original());
        Bench {
            _dir: dir,
            crashed,
            cfg,
            engine,
            a,
            c,
            def,
            names: (a_name, c_name),
        }
    }

    fn request(&self, mode: Mode) -> Request {
        Request {
            vm: self.def.name.clone(),
            target: self.names.1.clone(),
            mode,
            downtime_ms: 100,
            live_timeout_s: None,
            probe: None,
            probe_enabled: false,
            batch: None,
            new_mac: None,
        }
    }

    async fn migrate(&self, mode: Mode) -> MigrationRow {
        let cfg = Config {
            migration: crate::config::MigrationConfig {
                retries: 0,
                ..self.cfg.migration.clone()
            },
            ..self.cfg.clone()
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            self.engine.migrate(&cfg, &self.request(mode)),
        )
        .await
        .expect("the move ended")
        .expect("the move started")
    }

    /// Makes `op` fail on host `h` ("A" or "C"): a switch operation ("put", "up", "announcer",
    /// "send", "del") or a driver call.
    fn fail(&self, h: &str, op: &'static str) {
        let on = if h == "A" { &self.a } else { &self.c };
        match op {
            "put" | "up" | "announcer" | "send" | "del" => {
                on.switch.failing.lock().unwrap().insert(op);
            }
            _ => on.inject(op, Fault::Fail),
        }
    }

    /// Runs a move until its injected crash, then recovery as a restarted appliance runs it
    /// (a moment later, the journal as the killed daemon left it, the hosts as they are): the
    /// migration as recovery settled it.
    async fn crash_and_recover(&self, mode: Mode, tag: &str) -> MigrationRow {
        let req = self.request(mode);
        tokio::select! {
            r = self.engine.migrate(&self.cfg, &req) => panic!("{tag}: the move did not stop at its crash: {r:?}"),
            _ = self.crashed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("{tag}: no crash within 20 s"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let restarted = Engine {
            journal: Arc::new(self.engine.state.clone()),
            ..self.engine.clone()
        };
        restarted.recover(&self.cfg).await;
        let m = self
            .engine
            .state
            .migrations(1, false)
            .await
            .unwrap()
            .remove(0);
        let m = self.engine.state.migration(m.id).await.unwrap().unwrap();
        assert_ne!(m.state, "running", "{tag}: {m:#?}");
        m
    }

    fn steps(m: &MigrationRow) -> Vec<String> {
        m.steps.iter().map(|s| s.step.clone()).collect()
    }

    /// The VM runs on exactly one host (`on`), its port is there only, the state says so.
    async fn assert_only_on(&self, on: &FakeHost, m: &MigrationRow) {
        let (here, there) = if on.name == self.a.name {
            (&self.a, &self.c)
        } else {
            (&self.c, &self.a)
        };
        let port = self.def.port();
        assert_eq!(here.state("vm1"), RunState::Running, "{m:#?}");
        assert_eq!(there.state("vm1"), RunState::Absent, "{m:#?}");
        assert!(here.switch.has(&port), "{m:#?}");
        assert!(!there.switch.has(&port), "{m:#?}");
        let row = self.engine.state.vm("vm1".into()).await.unwrap().unwrap();
        assert_eq!(row.host.as_deref(), Some(on.name.as_str()), "{m:#?}");
        assert_eq!(row.state, "running");
        // Whatever the outcome, the one-time accounts and their netrc files are gone.
        for u in [format!("mig{}-up", m.id), format!("mig{}-down", m.id)] {
            assert!(
                self.engine
                    .state
                    .account(u.clone())
                    .await
                    .unwrap()
                    .is_none(),
                "{u} left: {m:#?}"
            );
        }
        for h in &self.cfg.hosts {
            let left: Vec<_> = std::fs::read_dir(&h.run_dir)
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{} left {left:?}: {m:#?}", h.name);
        }
    }
}

/// The VM's "memory": 90 KiB of lines that differ along their length (a torn or reordered
/// copy shows), text because the fake's load reads it back through a shell's stdout.
/// Every step a cold move without a new MAC journals, when all goes well.
const COLD_STEPS: [Step; 14] = [
    Step::Accounts,
    Step::PrepareTarget,
    Step::TargetPort,
    Step::PauseSource,
    Step::SaveToStore,
    Step::Repoint,
    Step::LoadOnTarget,
    Step::VerifyChecksum,
    Step::ResumeOnTarget,
    Step::Announce,
    Step::TransferFiles,
    Step::StopSource,
    Step::SourcePort,
    Step::DropAccounts,
];

fn original() -> Vec<u8> {
    (0..10_000u32)
        .flat_map(|i| format!("{i:08x}\n").into_bytes())
        .collect()
}

/// Whether `got` is the VM's memory, said without printing 90 KiB.
#[track_caller]
fn assert_whole(got: Option<Vec<u8>>, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no VM"));
    assert!(
        got == original(),
        "{what}: {} bytes, not the VM's {}",
        got.len(),
        original().len()
    );
}

#[tokio::test]
async fn a_cold_move_carries_every_byte_through_the_store_and_journals_each_step() {
    let b = Bench::new("cold").await;
    let m = b.migrate(Mode::Cold).await;
    assert_eq!(m.state, "done", "{m:#?}");
    b.assert_only_on(&b.c, &m).await;
    assert_whole(b.c.memory("vm1"), "memory");
    let want: Vec<String> = COLD_STEPS.iter().map(|s| s.name().into_owned()).collect();
    let got = Bench::steps(&m);
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(sorted_got, sorted_want, "{got:?}");
    assert!(m.steps.iter().all(|s| s.state == "done"), "{m:#?}");
    // The order that matters: nothing runs on the target before the checksum; the source goes
    // only once the target runs.
    let at = |s: Step| got.iter().position(|g| *g == s.name()).unwrap();
    assert!(at(Step::PauseSource) < at(Step::LoadOnTarget));
    assert!(at(Step::VerifyChecksum) < at(Step::ResumeOnTarget));
    assert!(at(Step::ResumeOnTarget) < at(Step::StopSource));
    // The port came with the source's tag and rate limit; the announcement went out of it at
    // the pause.
    let ports = b.c.switch.ports.lock().unwrap().clone();
    assert_eq!(
        ports[&b.def.port()].0,
        PortSpec {
            vlan: Some(7),
            rate_kbps: Some(10_000)
        }
    );
    let frames = b.c.switch.frames.lock().unwrap().clone();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, b.def.port());
    assert_eq!(
        frames[0].1,
        network::announcement(&b.def.mac, b.def.ip).unwrap()
    );
}

#[tokio::test]
async fn a_live_move_ends_on_the_target_with_the_network_told() {
    let b = Bench::new("live").await;
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "done", "{m:#?}");
    b.assert_only_on(&b.c, &m).await;
    assert_whole(b.c.memory("vm1"), "memory");
    let got = Bench::steps(&m);
    for s in [
        Step::PrepareTarget,
        Step::TargetPort,
        Step::TargetListens,
        Step::LivePreCopy,
        Step::TargetRuns,
        Step::Announce,
        Step::StopSource,
        Step::SourcePort,
    ] {
        assert!(got.contains(&s.name().into_owned()), "{s} missing: {got:?}");
    }
    assert!(!got.contains(&Step::SaveToStore.name().into_owned()));
}

/// An adopted VM's port has its operator's name where it was found; on its target it is the
/// driver's own, and the definition says so once it runs there, cold or live.
#[tokio::test]
async fn an_adopted_vm_takes_the_drivers_port_name_on_its_target() {
    for mode in [Mode::Live, Mode::Cold] {
        let mut b = Bench::new(&format!("adopted-{mode:?}")).await;
        b.a.vms.lock().unwrap().clear();
        b.a.switch.ports.lock().unwrap().clear();
        b.def.adopted = Some(crate::hypervisor::Adopted {
            port: "tap-ops".into(),
            qemu_args: vec![],
            host: b.a.name.clone(),
        });
        b.engine.state.define_vm(b.def.clone()).await.unwrap();
        b.a.run(&b.def, original());
        assert!(b.a.switch.has("tap-ops"));
        let m = b.migrate(mode).await;
        assert_eq!(m.state, "done", "{m:#?}");
        assert!(b.c.switch.has("nm-vm1"), "{m:#?}");
        assert!(!b.a.switch.has("tap-ops"), "{m:#?}");
        let row = b.engine.state.vm("vm1".into()).await.unwrap().unwrap();
        let a = row.def.adopted.unwrap();
        assert_eq!(
            (a.port.as_str(), a.host.as_str()),
            ("nm-vm1", b.c.name.as_str())
        );
    }
}

#[tokio::test]
async fn a_live_move_that_does_not_converge_takes_the_cold_path_and_says_why() {
    let b = Bench::new("fallback").await;
    b.a.inject("live_migrate", Fault::NotConverged);
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "done", "{m:#?}");
    b.assert_only_on(&b.c, &m).await;
    assert_whole(b.c.memory("vm1"), "memory");
    let got = Bench::steps(&m);
    let live = got
        .iter()
        .position(|s| *s == Step::LivePreCopy.name())
        .unwrap();
    let save = got
        .iter()
        .position(|s| *s == Step::SaveToStore.name())
        .unwrap();
    assert!(live < save, "{got:?}");
    assert!(
        m.detail["fallback"]
            .as_str()
            .is_some_and(|w| w.contains("did not converge")),
        "{:#}",
        m.detail
    );
}

#[tokio::test]
async fn a_live_move_that_fails_otherwise_is_rolled_back_not_sent_cold() {
    let b = Bench::new("livefail").await;
    b.a.inject("live_migrate", Fault::Fail);
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "rolled-back", "{m:#?}");
    b.assert_only_on(&b.a, &m).await;
    assert!(!Bench::steps(&m).contains(&Step::SaveToStore.name().into_owned()));
}

#[tokio::test]
async fn a_save_that_hangs_is_cancelled_when_the_load_fails_and_the_source_runs_on() {
    let b = Bench::new("cancel").await;
    // Half the state goes up, then the save stalls; the target's load, which follows the
    // upload, fails meanwhile.
    b.a.inject("save_to", Fault::Stall);
    b.c.inject("restore_from", Fault::Fail);
    let m = b.migrate(Mode::Cold).await;
    assert_eq!(m.state, "rolled-back", "{m:#?}");
    let calls = b.a.calls();
    assert!(
        calls.contains(&"abort_outgoing vm1".to_string()),
        "{calls:?}"
    );
    let undo = m
        .steps
        .iter()
        .find(|s| s.step == Step::UndoSave.name())
        .unwrap();
    assert_eq!(undo.state, "done");
    b.assert_only_on(&b.a, &m).await;
    assert_whole(b.a.memory("vm1"), "memory");
}

/// Each driver and switch operation a cold move makes, failed in turn: before the VM runs on the
/// target the move rolls back (the VM runs on the source as before); after, it stays on the
/// target and the migration is failed with the reason.
#[tokio::test]
async fn a_failure_at_every_step_of_a_cold_move_leaves_the_vm_in_one_place() {
    // (which host, operation, where the VM must end)
    let back = [
        ("C", "prepare_incoming"),
        ("C", "put"),
        ("A", "pause"),
        ("A", "save_to"),
        ("C", "restore_from"),
        ("C", "resume"),
    ];
    let forward = [
        ("C", "announce"),
        ("A", "destroy"),
        ("A", "del"),
        ("C", "send"),
        ("C", "announcer"),
    ];
    for (host, op) in back
        .iter()
        .map(|c| (c, true))
        .chain(forward.iter().map(|c| (c, false)))
    {
        let ((h, op), rolls_back) = (host, op);
        let b = Bench::new(&format!("fail-{op}")).await;
        b.fail(h, op);
        let m = b.migrate(Mode::Cold).await;
        let failed_step = m.steps.iter().find(|s| s.state == "failed");
        if rolls_back {
            assert_eq!(m.state, "rolled-back", "{op}: {m:#?}");
            b.assert_only_on(&b.a, &m).await;
            assert!(
                m.reason.as_deref().unwrap().contains("injected"),
                "{op}: {m:#?}"
            );
            assert_whole(b.a.memory("vm1"), op);
        } else {
            // The VM runs on the target; what failed is said. A failing re-point is only
            // recorded: the announcement after the resume does it again.
            let repoint_only = matches!(*op, "send" | "announcer");
            if repoint_only {
                assert_eq!(m.state, "done", "{op}: {m:#?}");
            } else {
                assert_eq!(m.state, "failed", "{op}: {m:#?}");
                assert!(m.reason.as_deref().unwrap().contains("injected"), "{op}");
            }
            assert_eq!(b.c.state("vm1"), RunState::Running, "{op}");
            assert_whole(b.c.memory("vm1"), op);
            if *op == "destroy" {
                // The source could not be stopped: it is reported, and it is left paused.
                assert_ne!(b.a.state("vm1"), RunState::Running, "{op}");
            } else if !repoint_only {
                assert_eq!(b.a.state("vm1"), RunState::Absent, "{op}");
            } else {
                b.assert_only_on(&b.c, &m).await;
            }
        }
        assert!(
            failed_step.is_some() || *op == "announcer",
            "{op}: no failed step: {m:#?}"
        );
    }
}

/// The same for a live move: a failure before the target runs rolls it back (a refused
/// pre-copy too, which is not sent cold); after, the VM stays on the target.
#[tokio::test]
async fn a_failure_at_every_step_of_a_live_move_leaves_the_vm_in_one_place() {
    let back = [
        ("C", "prepare_incoming"),
        ("C", "put"),
        ("C", "listen_incoming"),
        ("A", "live_migrate"),
    ];
    let forward = [("C", "announce"), ("A", "destroy"), ("A", "del")];
    for ((h, op), rolls_back) in back
        .iter()
        .map(|c| (c, true))
        .chain(forward.iter().map(|c| (c, false)))
    {
        let b = Bench::new(&format!("livefail-{op}")).await;
        b.fail(h, op);
        let m = b.migrate(Mode::Live).await;
        assert!(
            m.steps.iter().any(|s| s.state == "failed"),
            "{op}: no failed step: {m:#?}"
        );
        assert!(
            !Bench::steps(&m).contains(&Step::SaveToStore.name().into_owned()),
            "{op}: went cold"
        );
        assert!(
            m.reason.as_deref().unwrap().contains("injected"),
            "{op}: {m:#?}"
        );
        if rolls_back {
            assert_eq!(m.state, "rolled-back", "{op}: {m:#?}");
            b.assert_only_on(&b.a, &m).await;
            assert_whole(b.a.memory("vm1"), op);
        } else {
            assert_eq!(m.state, "failed", "{op}: {m:#?}");
            assert_eq!(b.c.state("vm1"), RunState::Running, "{op}");
            assert_whole(b.c.memory("vm1"), op);
            if *op == "announce" {
                b.assert_only_on(&b.c, &m).await;
            }
        }
    }
}

/// A kill of the appliance at each journal step of a cold and a live move (just after the step
/// is journaled as started, and just after its side effect), then recovery: the VM runs in
/// exactly one place, with its port there, its bytes whole.
#[tokio::test]
async fn recovery_after_a_crash_at_any_step_leaves_the_vm_in_one_place() {
    let cold = COLD_STEPS;
    let live = [
        Step::TargetListens,
        Step::LivePreCopy,
        Step::TargetRuns,
        Step::Announce,
        Step::StopSource,
    ];
    let cases = cold
        .iter()
        .map(|s| (Mode::Cold, *s))
        .chain(live.iter().map(|s| (Mode::Live, *s)));
    let mut seen = HashSet::new();
    for (mode, step) in cases {
        for when in [When::Before, When::After] {
            let tag = format!("crash-{}-{step:?}-{when:?}", mode.as_str());
            let b = Bench::with_journal(&tag, Some((step.name().into_owned(), when))).await;
            let m = b.crash_and_recover(mode, &tag).await;
            let on = if b.c.state("vm1") == RunState::Running {
                &b.c
            } else {
                &b.a
            };
            b.assert_only_on(on, &m).await;
            assert_whole(on.memory("vm1"), &tag);
            seen.insert((m.state.clone(), on.name == b.c.name));
        }
    }
    // Both outcomes were exercised: some crashes finish the move, some roll it back.
    assert!(seen.contains(&("done".into(), true)), "{seen:?}");
    assert!(seen.contains(&("rolled-back".into(), false)), "{seen:?}");
}

/// Recovery's decision table, row by row: the VM running, paused or absent on the source and
/// on the target, times how far the journal got (nothing done that commits the move; the state
/// loaded and verified on the target; the VM resumed there).
#[test]
fn recovery_decides_by_the_hosts_and_the_journal() {
    use Decision::{Back, Forward, Lost};
    use RunState::{Absent, Paused, Running};
    let states = [Running, Paused, Absent];
    // Rows: source; columns: target (Running, Paused, Absent).
    let before_load: [[Decision; 3]; 3] = [
        [Forward, Back, Back],
        [Forward, Back, Back],
        [Forward, Lost, Lost],
    ];
    let loaded: [[Decision; 3]; 3] = [
        [Forward, Back, Back],
        [Forward, Back, Back],
        [Forward, Forward, Lost],
    ];
    let resumed: [[Decision; 3]; 3] = [
        [Forward, Forward, Back],
        [Forward, Forward, Back],
        [Forward, Forward, Lost],
    ];
    let phases: [(&[Step], [[Decision; 3]; 3]); 6] = [
        (
            &[
                Step::Accounts,
                Step::PrepareTarget,
                Step::TargetPort,
                Step::PauseSource,
                Step::Repoint,
                Step::SaveToStore,
                Step::LoadOnTarget,
                Step::TargetPortUp,
            ],
            before_load,
        ),
        (&[Step::TargetListens], before_load),
        (&[Step::VerifyChecksum], loaded),
        (&[Step::LivePreCopy], loaded),
        (&[Step::ResumeOnTarget], resumed),
        (&[Step::TargetRuns], resumed),
    ];
    for (done_up_to, table) in phases {
        for last in done_up_to {
            // The journal shows every step of the phases before, and this one, done.
            let done = |s: Step| {
                s == *last
                    || match *last {
                        Step::ResumeOnTarget => s == Step::VerifyChecksum,
                        Step::TargetRuns => s == Step::LivePreCopy,
                        _ => false,
                    }
            };
            for (i, src) in states.iter().enumerate() {
                for (j, dst) in states.iter().enumerate() {
                    assert_eq!(
                        decide(*src, *dst, done),
                        table[i][j],
                        "source {src:?}, target {dst:?}, last done {last}"
                    );
                }
            }
        }
    }
    // A hypervisor's own states (incoming, migrated) are neither running nor paused.
    assert_eq!(
        decide(RunState::Migrated, RunState::Incoming, |_| false),
        Back
    );
    assert_eq!(
        decide(RunState::Absent, RunState::Incoming, |s| s
            == Step::ResumeOnTarget),
        Forward
    );
}

/// The local disk of the disk tests' VM, and what its guest wrote on it before the move.
const DISK: &str = "/var/lib/netmigrate-test/vm1.qcow2";

fn disk_data() -> Vec<u8> {
    (0..4_000u32)
        .flat_map(|i| format!("block {i:06}\n").into_bytes())
        .collect()
}

impl Bench {
    /// The bench with a VM that boots from a local qcow2 disk, on A with its data.
    async fn with_disk(tag: &str, crash: Option<(String, When)>) -> Bench {
        let mut b = Bench::with_journal(tag, crash).await;
        b.def.kernel = None;
        b.def.disks = vec![crate::hypervisor::Disk {
            path: DISK.into(),
            format: crate::hypervisor::DiskFormat::Qcow2,
            bus: crate::hypervisor::DiskBus::Virtio,
            shared: false,
        }];
        b.engine.state.define_vm(b.def.clone()).await.unwrap();
        b.a.disks.lock().unwrap().insert(
            DISK.into(),
            fake::FakeDisk {
                virtual_bytes: 1 << 30,
                data: disk_data(),
            },
        );
        b
    }

    /// The VM's disk is whole where it runs; its target copy is gone if it runs on the source;
    /// no mirror or export is left running.
    #[track_caller]
    fn assert_disks(&self, m: &MigrationRow) {
        let on_target = self.c.state("vm1") == RunState::Running;
        let src = self
            .a
            .disk(DISK)
            .unwrap_or_else(|| panic!("the source's disk is gone: {m:#?}"));
        assert!(src.data == disk_data(), "the source's disk changed: {m:#?}");
        match self.c.disk(DISK) {
            Some(d) if on_target => {
                assert!(
                    d.data == disk_data(),
                    "the target's copy is not whole: {m:#?}"
                );
                assert_eq!(d.virtual_bytes, 1 << 30);
            }
            None if !on_target => {}
            other => panic!(
                "target copy {:?} with the VM on target {on_target}: {m:#?}",
                other.map(|d| d.data.len())
            ),
        }
        for h in [&self.a, &self.c] {
            if let Some(v) = h.vms.lock().unwrap().get("vm1") {
                assert!(
                    !v.exported && v.mirror_to.is_none(),
                    "{}: {v:?}: {m:#?}",
                    h.name
                );
            }
        }
    }
}

#[tokio::test]
async fn a_live_move_with_a_local_disk_mirrors_it_before_the_memory_and_keeps_the_source() {
    let b = Bench::with_disk("disk-live", None).await;
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "done", "{m:#?}");
    b.assert_only_on(&b.c, &m).await;
    b.assert_disks(&m);
    let got = Bench::steps(&m);
    let at = |s: Step| {
        got.iter()
            .position(|g| *g == s.name())
            .unwrap_or_else(|| panic!("{s} missing: {got:?}"))
    };
    // Made before the hypervisor opens it, served before the source mirrors, in sync before
    // the memory goes; the mirror ends once the VM runs on the target and the network knows
    // (off the break).
    assert!(at(Step::TargetDisks) < at(Step::PrepareTarget));
    assert!(at(Step::ExportDisks) < at(Step::MirrorDisks));
    assert!(at(Step::MirrorDisks) < at(Step::LivePreCopy));
    assert!(at(Step::LivePreCopy) < at(Step::TargetRuns));
    assert!(at(Step::Announce) < at(Step::EndMirror));
    assert!(at(Step::EndExport) < at(Step::StopSource));
    assert!(
        !got.contains(&Step::SourceDisks.name().into_owned()),
        "kept by default"
    );
    assert_eq!(m.detail["disks"][0]["path"], DISK, "{:#}", m.detail);
    assert_eq!(m.detail["disks"][0]["virtual_bytes"], 1u64 << 30);
}

/// Writes the guest makes once the mirror is in sync reach the target's copy too (the
/// fake's mirror is write-blocking, as QEMU's is made to be).
#[test]
fn a_write_during_the_mirror_reaches_both_copies() {
    let a = fake::host("mirror-write-A", "127.0.251.2".parse().unwrap());
    let c = fake::host("mirror-write-C", "127.0.251.3".parse().unwrap());
    c.disks
        .lock()
        .unwrap()
        .insert(DISK.into(), Default::default());
    a.vms.lock().unwrap().insert(
        "vm1".into(),
        fake::FakeVm {
            state: RunState::Running,
            memory: vec![],
            mac: String::new(),
            listening: false,
            exported: false,
            mirror_to: Some(c.address),
        },
    );
    a.write_disk("vm1", DISK, b"42\n");
    assert_eq!(a.disk(DISK).unwrap().data, b"42\n");
    assert_eq!(c.disk(DISK).unwrap().data, b"42\n");
}

#[tokio::test]
async fn source_disks_remove_takes_the_source_copy_once_the_vm_runs_on_its_target() {
    let mut b = Bench::with_disk("disk-remove", None).await;
    b.cfg.migration.source_disks = crate::config::SourceDisks::Remove;
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "done", "{m:#?}");
    assert!(b.a.disk(DISK).is_none(), "{m:#?}");
    assert!(b.c.disk(DISK).unwrap().data == disk_data());
    // A move that went wrong on the way keeps them, whatever the config says.
    let mut b = Bench::with_disk("disk-remove-failed", None).await;
    b.cfg.migration.source_disks = crate::config::SourceDisks::Remove;
    b.fail("C", "announce");
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "failed", "{m:#?}");
    assert!(b.a.disk(DISK).is_some(), "{m:#?}");
}

/// A cold move carries the disk in its stream, ahead of the state: the copy made before the
/// target waits, written while the VM is paused, checked before it resumes there; the
/// source's kept.
#[tokio::test]
async fn a_cold_move_with_a_local_disk_carries_it_in_the_stream_and_keeps_the_source() {
    let b = Bench::with_disk("disk-cold", None).await;
    let m = b.migrate(Mode::Cold).await;
    assert_eq!(m.state, "done", "{m:#?}");
    b.assert_only_on(&b.c, &m).await;
    b.assert_disks(&m);
    assert_eq!(b.c.memory("vm1").unwrap(), original(), "{m:#?}");
    let got = Bench::steps(&m);
    let at = |s: Step| {
        got.iter()
            .position(|g| *g == s.name())
            .unwrap_or_else(|| panic!("{s} missing: {got:?}"))
    };
    assert!(at(Step::TargetDisks) < at(Step::PrepareTarget));
    assert!(at(Step::PauseSource) < at(Step::SaveToStore));
    assert!(at(Step::VerifyChecksum) < at(Step::ResumeOnTarget));
    assert!(!got.contains(&Step::MirrorDisks.name().into_owned()));
    assert!(!got.contains(&Step::SourceDisks.name().into_owned()));
    // The disk went through the image store with the state: one image holds both.
    let image = m.detail["image"].as_str().unwrap().to_string();
    let listed = b.engine.store.list().unwrap();
    let p = listed.iter().find(|p| p.id.to_string() == image).unwrap();
    assert!(p.size > 0);
}

/// A live move whose pre-copy does not converge takes the cold path, disks and all: the
/// mirror's copy is removed first, and the cold path makes its own.
#[tokio::test]
async fn a_live_move_with_a_disk_that_does_not_converge_goes_cold_with_it() {
    let b = Bench::with_disk("disk-fallback", None).await;
    b.a.inject("live_migrate", Fault::NotConverged);
    let m = b.migrate(Mode::Live).await;
    assert_eq!(m.state, "done", "{m:#?}");
    assert!(m.detail["fallback"].as_str().is_some(), "{:#}", m.detail);
    b.assert_only_on(&b.c, &m).await;
    b.assert_disks(&m);
    let got = Bench::steps(&m);
    let undone = got
        .iter()
        .position(|g| *g == Step::UndoTargetDisks.name())
        .unwrap();
    let saved = got
        .iter()
        .position(|g| *g == Step::SaveToStore.name())
        .unwrap();
    assert!(undone < saved, "{got:?}");
}

/// What cannot carry the disks is refused before anything starts, saying why: a driver that
/// carries them neither cold nor live, a target without room, a target with a file at the
/// disk's path (never overwritten), a source without the disk.
#[tokio::test]
async fn a_move_that_cannot_carry_the_disks_is_refused_up_front() {
    let b = Bench::with_disk("disk-no-cold", None).await;
    *b.a.cold_disks.lock().unwrap() = false;
    let e = b
        .engine
        .migrate(&b.cfg, &b.request(Mode::Cold))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot carry them on the cold path yet; move it live"),
        "{e}"
    );

    let b = Bench::with_disk("disk-room", None).await;
    *b.c.disk_room.lock().unwrap() = 1000;
    let e = b
        .engine
        .migrate(&b.cfg, &b.request(Mode::Live))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no room"), "{e}");
    assert!(b.c.disk(DISK).is_none());

    let b = Bench::with_disk("disk-there", None).await;
    let theirs = fake::FakeDisk {
        virtual_bytes: 5,
        data: b"mine".to_vec(),
    };
    b.c.disks
        .lock()
        .unwrap()
        .insert(DISK.into(), theirs.clone());
    let e = b
        .engine
        .migrate(&b.cfg, &b.request(Mode::Live))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not overwriting"), "{e}");
    assert_eq!(b.c.disk(DISK), Some(theirs));

    let b = Bench::with_disk("disk-missing", None).await;
    b.a.disks.lock().unwrap().clear();
    let e = b
        .engine
        .migrate(&b.cfg, &b.request(Mode::Live))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not on"), "{e}");
    for b in [&b] {
        assert!(b
            .engine
            .state
            .migrations(10, false)
            .await
            .unwrap()
            .is_empty());
    }
}

/// Each disk call failed in turn: before the VM runs on the target the move is rolled back
/// (the target's copy removed, the source's untouched), never sent cold. After, the VM stays
/// on the target, its copy whole, the failure said.
#[tokio::test]
async fn a_failure_at_every_disk_step_leaves_one_vm_on_a_whole_disk() {
    let back = [
        ("C", "make_disks", Fault::Fail),
        ("C", "prepare_incoming", Fault::Fail),
        ("C", "export_disks", Fault::Fail),
        ("C", "listen_incoming", Fault::Fail),
        ("A", "mirror_disks", Fault::Fail),
        ("A", "live_migrate", Fault::Fail),
    ];
    let forward = [("A", "end_mirror"), ("C", "end_export")];
    for (h, op, fault) in back {
        let b = Bench::with_disk(&format!("disk-fail-{op}-{fault:?}"), None).await;
        let on = if h == "A" { &b.a } else { &b.c };
        on.inject(op, fault);
        let m = b.migrate(Mode::Live).await;
        assert_eq!(m.state, "rolled-back", "{op}: {m:#?}");
        assert!(
            !Bench::steps(&m).contains(&Step::SaveToStore.name().into_owned()),
            "{op}: went cold"
        );
        b.assert_only_on(&b.a, &m).await;
        b.assert_disks(&m);
    }
    for (h, op) in forward {
        let b = Bench::with_disk(&format!("disk-fail-{op}"), None).await;
        b.fail(h, op);
        let m = b.migrate(Mode::Live).await;
        assert_eq!(m.state, "failed", "{op}: {m:#?}");
        assert!(
            m.reason.as_deref().unwrap().contains("injected"),
            "{op}: {m:#?}"
        );
        assert_eq!(b.c.state("vm1"), RunState::Running, "{op}");
        assert!(b.c.disk(DISK).unwrap().data == disk_data(), "{op}");
        assert!(b.a.disk(DISK).unwrap().data == disk_data(), "{op}");
    }
}

/// The crash matrix over the disk steps of a live move: recovery leaves the VM in one place
/// on a whole disk, removes the target's copy when the VM goes back, stops what serves or
/// mirrors it, and never touches the source's.
#[tokio::test]
async fn recovery_after_a_crash_at_any_disk_step_leaves_one_vm_on_a_whole_disk() {
    let steps = [
        Step::TargetDisks,
        Step::PrepareTarget,
        Step::ExportDisks,
        Step::MirrorDisks,
        Step::LivePreCopy,
        Step::EndMirror,
        Step::EndExport,
        Step::StopSource,
    ];
    disk_crash_matrix(Mode::Live, "disk-crash", &steps).await;
}

/// Each call of a cold move with a disk failed in turn: the move is rolled back, the VM runs
/// on its source on its own disk, the target's copy and transfer files are gone.
#[tokio::test]
async fn a_failure_at_every_step_of_a_cold_move_with_a_disk_leaves_one_vm_on_a_whole_disk() {
    for (h, op) in [
        ("C", "make_disks"),
        ("C", "prepare_incoming"),
        ("A", "pause"),
        ("A", "send_disks"),
        ("A", "save_to"),
        ("C", "receive_disks"),
        ("C", "restore_from"),
        ("C", "resume"),
    ] {
        let b = Bench::with_disk(&format!("disk-cold-fail-{op}"), None).await;
        b.fail(h, op);
        let m = b.migrate(Mode::Cold).await;
        assert_eq!(m.state, "rolled-back", "{op}: {m:#?}");
        assert!(
            m.reason.as_deref().unwrap_or("").contains("injected"),
            "{op}: {m:#?}"
        );
        b.assert_only_on(&b.a, &m).await;
        b.assert_disks(&m);
    }
}

/// The crash matrix over a cold move with a disk: recovery leaves the VM in one place on a
/// whole disk and removes the target's copy when the VM goes back.
#[tokio::test]
async fn recovery_after_a_crash_in_a_cold_move_with_a_disk_leaves_one_vm_on_a_whole_disk() {
    let steps = [
        Step::TargetDisks,
        Step::PrepareTarget,
        Step::PauseSource,
        Step::SaveToStore,
        Step::LoadOnTarget,
        Step::VerifyChecksum,
        Step::ResumeOnTarget,
        Step::StopSource,
    ];
    disk_crash_matrix(Mode::Cold, "disk-cold-crash", &steps).await;
}

/// Cuts a `mode` move of the disk bench's VM at each of `steps`, before and after, and
/// recovers: the VM runs in one place on a whole disk each time, and both outcomes were seen.
async fn disk_crash_matrix(mode: Mode, prefix: &str, steps: &[Step]) {
    let mut seen = HashSet::new();
    for step in steps {
        for when in [When::Before, When::After] {
            let tag = format!("{prefix}-{step:?}-{when:?}");
            let b = Bench::with_disk(&tag, Some((step.name().into_owned(), when))).await;
            let m = b.crash_and_recover(mode, &tag).await;
            let on = if b.c.state("vm1") == RunState::Running {
                &b.c
            } else {
                &b.a
            };
            b.assert_only_on(on, &m).await;
            b.assert_disks(&m);
            seen.insert((m.state.clone(), on.name == b.c.name));
        }
    }
    assert!(seen.contains(&("done".into(), true)), "{seen:?}");
    assert!(seen.contains(&("rolled-back".into(), false)), "{seen:?}");
}
