//! VM definitions and where each runs (`vms`).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, State, StateError};
use crate::hypervisor::VmDef;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRow {
    pub name: String,
    /// Where it runs (or last ran); None before its first start.
    pub host: Option<String>,
    /// defined, running, stopped or migrating
    pub state: String,
    pub def: VmDef,
    pub updated_ms: i64,
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<(String, Option<String>, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_vm(
    (name, host, state, def, updated_ms): (String, Option<String>, String, String, i64),
) -> Result<VmRow, StateError> {
    let def = serde_json::from_str(&def)
        .map_err(|e| StateError::Corrupt(format!("vm {name}: its definition: {e}")))?;
    Ok(VmRow {
        name,
        host,
        state,
        def,
        updated_ms,
    })
}

impl State {
    /// Adds or replaces a VM's definition. A VM that runs keeps its host and state.
    pub async fn define_vm(&self, def: VmDef) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO vms (name, host, state, def, updated_ms) VALUES (?1, NULL, 'defined', ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET def = excluded.def, updated_ms = excluded.updated_ms",
                params![def.name, serde_json::to_string(&def).expect("json"), now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Records where a VM runs and how.
    pub async fn place_vm(
        &self,
        name: String,
        host: Option<String>,
        state: &'static str,
    ) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE vms SET host = ?2, state = ?3, updated_ms = ?4 WHERE name = ?1",
                params![name, host, state, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn remove_vm(&self, name: String) -> Result<bool, StateError> {
        self.write(move |tx| Ok(tx.execute("DELETE FROM vms WHERE name = ?1", [name])? > 0))
            .await
    }

    pub async fn vm(&self, name: String) -> Result<Option<VmRow>, StateError> {
        self.read(move |c| {
            c.query_row(
                "SELECT name, host, state, def, updated_ms FROM vms WHERE name = ?1",
                [name],
                row,
            )
            .optional()?
            .map(to_vm)
            .transpose()
        })
        .await
    }

    pub async fn vms(&self) -> Result<Vec<VmRow>, StateError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT name, host, state, def, updated_ms FROM vms ORDER BY name",
            )?;
            let rows = st.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(to_vm).collect()
        })
        .await
    }
}
