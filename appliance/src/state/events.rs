//! The `events` table: what happened, for operators (`netmigrate events`) and for tests.

use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use super::{now_ms, State, StateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    fn parse(s: &str) -> Level {
        match s {
            "warn" => Level::Warn,
            "error" => Level::Error,
            _ => Level::Info,
        }
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub level: Level,
    pub kind: &'static str,
    pub subject: Option<String>,
    pub message: String,
}

impl NewEvent {
    pub fn info(kind: &'static str, message: impl Into<String>) -> Self {
        NewEvent {
            level: Level::Info,
            kind,
            subject: None,
            message: message.into(),
        }
    }

    pub fn warn(kind: &'static str, message: impl Into<String>) -> Self {
        NewEvent {
            level: Level::Warn,
            ..NewEvent::info(kind, message)
        }
    }

    pub fn error(kind: &'static str, message: impl Into<String>) -> Self {
        NewEvent {
            level: Level::Error,
            ..NewEvent::info(kind, message)
        }
    }

    pub fn about(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
}

/// A recorded event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub level: Level,
    pub kind: String,
    pub subject: Option<String>,
    pub message: String,
}

impl Event {
    fn from_row(r: &Row) -> rusqlite::Result<Event> {
        Ok(Event {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            level: Level::parse(&r.get::<_, String>(2)?),
            kind: r.get(3)?,
            subject: r.get(4)?,
            message: r.get(5)?,
        })
    }
}

pub fn insert(c: &Connection, e: &NewEvent) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO events (at_ms, level, kind, subject, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms(), e.level.as_str(), e.kind, e.subject, e.message],
    )?;
    Ok(c.last_insert_rowid())
}

/// The newest `limit` events, oldest first.
pub fn recent(c: &Connection, limit: u32) -> rusqlite::Result<Vec<Event>> {
    let mut st = c.prepare_cached(
        "SELECT id, at_ms, level, kind, subject, message FROM
           (SELECT * FROM events ORDER BY id DESC LIMIT ?1) ORDER BY id",
    )?;
    let rows = st.query_map([limit], Event::from_row)?;
    rows.collect()
}

pub fn count(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
}

impl State {
    /// Records an event and logs it through tracing.
    pub async fn record(&self, e: NewEvent) -> Result<i64, StateError> {
        let ids = self.record_all(vec![e]).await?;
        Ok(ids[0])
    }

    /// Records events in one transaction (a burst, e.g. DHCP lease changes), logs each at its
    /// level and tells watchers; returns their ids.
    pub async fn record_all(&self, events: Vec<NewEvent>) -> Result<Vec<i64>, StateError> {
        for e in &events {
            let subject = e.subject.as_deref();
            match e.level {
                Level::Info => tracing::info!(kind = e.kind, subject, "{}", e.message),
                Level::Warn => tracing::warn!(kind = e.kind, subject, "{}", e.message),
                Level::Error => tracing::error!(kind = e.kind, subject, "{}", e.message),
            }
        }
        let at_ms = now_ms();
        let written = self
            .write(move |tx| {
                let mut written = Vec::new();
                for e in events {
                    written.push((insert(tx, &e)?, e));
                }
                Ok(written)
            })
            .await?;
        let mut ids = Vec::with_capacity(written.len());
        for (id, e) in written {
            ids.push(id);
            self.notify(super::Notice::Event {
                id,
                at_ms,
                level: e.level.as_str().into(),
                event: e.kind.into(),
                subject: e.subject,
                message: e.message,
            });
        }
        Ok(ids)
    }

    pub async fn events(&self, limit: u32) -> Result<Vec<Event>, StateError> {
        self.read(move |c| Ok(recent(c, limit)?)).await
    }

    pub async fn event_count(&self) -> Result<i64, StateError> {
        self.read(|c| Ok(count(c)?)).await
    }
}
