//! The image store's manifest (`images`) and its FTP accounts (`ftp_accounts`).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_ms, State, StateError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRow {
    pub vm: String,
    pub generation: u64,
    pub state: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub uploader: Option<String>,
    pub reason: Option<String>,
    /// `zstd` when kept compressed.
    pub compression: Option<String>,
    /// Bytes on disk, once compressed.
    pub stored: Option<u64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A change to one image's manifest row; None fields keep what the row has.
#[derive(Debug, Clone, Default)]
pub struct ImageChange {
    pub vm: String,
    pub generation: u64,
    /// uploading, published, failed or deleted
    pub state: &'static str,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub uploader: Option<String>,
    pub reason: Option<String>,
    pub compression: Option<&'static str>,
    pub stored: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct AccountRow {
    pub name: String,
    pub password_hash: String,
    pub write: Vec<String>,
    pub read: Vec<String>,
    pub expires_ms: Option<i64>,
}

impl State {
    /// Records a change of an image's state.
    pub async fn image_state(&self, c: ImageChange) -> Result<(), StateError> {
        let ImageChange {
            vm,
            generation,
            state,
            size,
            sha256,
            uploader,
            reason,
            compression,
            stored,
        } = c;
        let notice = super::notices::Notice::Image {
            vm: vm.clone(),
            generation,
            state: state.to_string(),
            uploader: uploader.clone(),
        };
        self.write(move |tx| {
            let now = now_ms();
            tx.execute(
                "INSERT INTO images (vm, generation, state, size, sha256, uploader, reason, created_ms, updated_ms,
                                     compression, stored)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)
                 ON CONFLICT (vm, generation) DO UPDATE SET state = excluded.state,
                   size = coalesce(excluded.size, size), sha256 = coalesce(excluded.sha256, sha256),
                   uploader = coalesce(excluded.uploader, uploader), reason = excluded.reason,
                   compression = coalesce(excluded.compression, compression),
                   stored = coalesce(excluded.stored, stored),
                   updated_ms = excluded.updated_ms",
                params![vm, generation as i64, state, size.map(|s| s as i64), sha256, uploader, reason, now,
                        compression, stored.map(|s| s as i64)],
            )?;
            Ok(())
        })
        .await?;
        self.notify(notice);
        Ok(())
    }

    pub async fn images(&self) -> Result<Vec<ImageRow>, StateError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT vm, generation, state, size, sha256, uploader, reason, created_ms, updated_ms,
                        compression, stored
                 FROM images WHERE state != 'deleted' ORDER BY vm, generation",
            )?;
            let rows = st.query_map([], |r| {
                Ok(ImageRow {
                    vm: r.get(0)?,
                    generation: r.get::<_, i64>(1)? as u64,
                    state: r.get(2)?,
                    size: r.get::<_, Option<i64>>(3)?.map(|s| s as u64),
                    sha256: r.get(4)?,
                    uploader: r.get(5)?,
                    reason: r.get(6)?,
                    created_ms: r.get(7)?,
                    updated_ms: r.get(8)?,
                    compression: r.get(9)?,
                    stored: r.get::<_, Option<i64>>(10)?.map(|s| s as u64),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn put_account(&self, a: AccountRow) -> Result<(), StateError> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO ftp_accounts (name, password_hash, write_vms, read_vms, expires_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                   write_vms = excluded.write_vms, read_vms = excluded.read_vms,
                   expires_ms = excluded.expires_ms, created_ms = excluded.created_ms",
                params![
                    a.name,
                    a.password_hash,
                    serde_json::to_string(&a.write).expect("json"),
                    serde_json::to_string(&a.read).expect("json"),
                    a.expires_ms,
                    now_ms()
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn delete_account(&self, name: String) -> Result<bool, StateError> {
        self.write(move |tx| {
            Ok(tx.execute("DELETE FROM ftp_accounts WHERE name = ?1", [name])? > 0)
        })
        .await
    }

    /// The newest image `uploader` created, if any: (generation, state).
    pub async fn image_uploaded_by(
        &self,
        vm: String,
        uploader: String,
    ) -> Result<Option<(u64, String)>, StateError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT generation, state FROM images WHERE vm = ?1 AND uploader = ?2
                 ORDER BY generation DESC LIMIT 1",
                [vm, uploader],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    pub async fn account(&self, name: String) -> Result<Option<AccountRow>, StateError> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT name, password_hash, write_vms, read_vms, expires_ms FROM ftp_accounts WHERE name = ?1",
                    [&name],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                        ))
                    },
                )
                .optional()?;
            Ok(row.map(|(name, password_hash, w, r, expires_ms)| AccountRow {
                name,
                password_hash,
                write: serde_json::from_str(&w).unwrap_or_default(),
                read: serde_json::from_str(&r).unwrap_or_default(),
                expires_ms,
            }))
        })
        .await
    }
}
