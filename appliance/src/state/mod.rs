//! The appliance's state: one SQLite file (WAL), the one source of truth.
//!
//! Architecture invariant: one connection writes, on a dedicated thread; another reads, on its own
//! thread. Async code hands them closures and awaits the answer, so no SQLite call ever runs on
//! the tokio reactor.

mod batches;
mod dns;
mod events;
mod hosts;
mod images;
mod leases;
pub mod machines;
mod migrations;
mod notices;
mod reservations;
mod schema;
mod vms;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::oneshot;

pub use batches::BatchRow;
pub use events::{Event, Level, NewEvent};
pub use hosts::{HostRow, HostSync};
pub use images::{AccountRow, ImageChange, ImageRow};
pub use leases::{LeaseRow, NewLease};
pub use migrations::{MigrationRow, StepRow};
pub use notices::Notice;
pub use reservations::ReservationRow;
pub use schema::latest as latest_schema;
pub use vms::VmRow;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "state database {path} was written by a newer netmigrate (schema version {found}; this \
         build knows up to {known}); run that newer version, or point state_dir at another folder"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database thread has stopped")]
    Closed,
    #[error("state database holds unreadable data: {0}")]
    Corrupt(String),
    /// The change contradicts what the state holds (e.g. a second migration of one VM).
    #[error("{0}")]
    Conflict(String),
    /// What the change is about is not there.
    #[error("{0}")]
    NotFound(String),
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the state; cheap to clone, shared by everything in the daemon.
#[derive(Clone)]
pub struct State {
    writer: mpsc::Sender<Job>,
    reader: mpsc::Sender<Job>,
    path: PathBuf,
    schema: i64,
    bus: tokio::sync::broadcast::Sender<Notice>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

impl State {
    /// Opens (creating if needed) and migrates the database, then starts its two threads.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let open_err = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut w = Connection::open(path).map_err(open_err)?;
        w.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        w.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        w.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        w.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let schema = migrate(&mut w, path)?;

        let r = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        r.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;

        Ok(State {
            writer: spawn_worker("state-writer", w),
            reader: spawn_worker("state-reader", r),
            path: path.to_path_buf(),
            schema,
            bus: notices::bus(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> i64 {
        self.schema
    }

    async fn run<R: Send + 'static>(
        tx: &mpsc::Sender<Job>,
        f: impl FnOnce(&mut Connection) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, StateError> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |c| {
            let _ = done.send(f(c));
        });
        tx.send(job).map_err(|_| StateError::Closed)?;
        answer.await.map_err(|_| StateError::Closed)?
    }

    /// Runs `f` in one write transaction on the writer thread; committed if `f` returns Ok.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, StateError> {
        Self::run(&self.writer, move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        })
        .await
    }

    /// Runs `f` on the reader thread's read-only connection.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, StateError> {
        Self::run(&self.reader, move |c| f(c)).await
    }
}

fn spawn_worker(name: &str, mut conn: Connection) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Ends when every State handle is dropped.
            for job in rx {
                job(&mut conn);
            }
        })
        .expect("spawning a state thread");
    tx
}

/// Applies the migrations this database lacks; refuses one from a newer build.
fn migrate(c: &mut Connection, path: &Path) -> Result<i64, StateError> {
    let found: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = schema::latest();
    if found > known {
        return Err(StateError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('written_by', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [env!("CARGO_PKG_VERSION")],
        )?;
        tx.commit()?;
        tracing::info!(version = i + 1, "state schema migrated");
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrates_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = State::open(&path).unwrap();
        assert_eq!(s.schema_version(), latest_schema());
        drop(s);
        // Reopening applies nothing and works.
        State::open(&path).unwrap();
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", latest_schema() + 1)
            .unwrap();
        drop(c);
        match State::open(&path) {
            Err(StateError::NewerSchema { found, known, .. }) => {
                assert_eq!(found, latest_schema() + 1);
                assert_eq!(known, latest_schema());
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer database was accepted"),
        }
    }

    /// Migration 11 makes the machines table again: a machine of a version-10 database
    /// comes through with all it had.
    #[tokio::test]
    async fn machines_come_through_their_table_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let c = Connection::open(&path).unwrap();
        for (i, sql) in schema::MIGRATIONS[..10].iter().enumerate() {
            c.execute_batch(sql).unwrap();
            c.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        c.execute(
            "INSERT INTO machines (mac, network, stage, vendor_class, arch, first_seen_ms,
               last_seen_ms, name, ip, accepted_why, host_key, ready_ms)
             VALUES ('52:54:00:00:00:01', 'lab', 'ready', 'PXEClient', 0, 1, 2, 'hv1',
               '10.0.0.50', 'operator', 'ssh-ed25519 AAAA', 3)",
            [],
        )
        .unwrap();
        drop(c);
        let s = State::open(&path).unwrap();
        let m = s
            .machine("52:54:00:00:00:01".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                m.stage.as_str(),
                m.name.as_deref(),
                m.host_key.as_deref(),
                m.ready_ms
            ),
            ("ready", Some("hv1"), Some("ssh-ed25519 AAAA"), Some(3))
        );
        assert!(m.hardware.is_none());
    }

    #[tokio::test]
    async fn write_rolls_back_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(&dir.path().join("state.db")).unwrap();
        let r: Result<(), _> = s
            .write(|tx| {
                tx.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')", [])?;
                Err(StateError::Closed)
            })
            .await;
        assert!(r.is_err());
        let n: i64 = s
            .read(|c| {
                Ok(
                    c.query_row("SELECT count(*) FROM meta WHERE key = 'x'", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
