//! `/v1/images` and `/v1/ftp/accounts`: the image store, its manifest and its accounts.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::Body;
use super::ApiError;
use crate::daemon::App;
use crate::state::{now_ms, AccountRow, ImageChange, ImageRow, NewEvent};

#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyResult {
    pub image: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GcRequest {
    /// Generations kept per VM (default: the config's ftp.keep).
    pub keep: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AccountRequest {
    pub name: String,
    #[serde(default)]
    pub write: Vec<String>,
    #[serde(default)]
    pub read: Vec<String>,
    /// Seconds until the account stops working (one-time credentials).
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AccountReply {
    pub name: String,
    /// Shown once; only its hash is kept.
    pub password: String,
    pub expires_ms: Option<i64>,
}

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<ImageRow>>, ApiError> {
    Ok(Json(app.state.images().await?))
}

pub async fn verify(State(app): State<Arc<App>>) -> Result<Json<Vec<VerifyResult>>, ApiError> {
    let published = app
        .images
        .list()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "images", e.to_string()))?;
    let mut out = Vec::new();
    for p in published {
        let r = app.images.verify(&p.id).await;
        out.push(VerifyResult {
            image: p.id.to_string(),
            ok: r.is_ok(),
            detail: match r {
                Ok(v) => format!("{} bytes, sha256 {}", v.size, v.sha256),
                Err(e) => e.to_string(),
            },
        });
    }
    for r in out.iter().filter(|r| !r.ok) {
        app.state
            .record(NewEvent::warn("image.corrupt", r.detail.clone()).about(r.image.clone()))
            .await?;
    }
    Ok(Json(out))
}

pub async fn gc(
    State(app): State<Arc<App>>,
    body: Option<Body<GcRequest>>,
) -> Result<Json<Vec<String>>, ApiError> {
    let keep = body
        .and_then(|b| b.0.keep)
        .unwrap_or(app.config().ftp.keep)
        .max(1);
    // Never an image a migration still in progress streams through.
    let in_use: Vec<netmigrate_image::ImageId> = app
        .state
        .migrations(i64::MAX, true)
        .await?
        .iter()
        .filter_map(|m| {
            m.detail
                .get("image")?
                .as_str()?
                .split_once('/')
                .and_then(|(vm, g)| {
                    Some(netmigrate_image::ImageId {
                        vm: vm.to_string(),
                        generation: g.parse().ok()?,
                    })
                })
        })
        .collect();
    let removed = app
        .images
        .gc(keep, &in_use)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "images", e.to_string()))?;
    for id in &removed {
        app.state
            .image_state(ImageChange {
                vm: id.vm.clone(),
                generation: id.generation,
                state: "deleted",
                reason: Some(format!("gc keeping {keep}")),
                ..Default::default()
            })
            .await?;
    }
    // Images kept before compression was turned on are compressed now.
    if let Some(level) = app.config().ftp.compress {
        let mut vms: Vec<String> = app
            .images
            .list()
            .map(|l| l.into_iter().map(|p| p.id.vm).collect())
            .unwrap_or_default();
        vms.dedup();
        for vm in vms {
            crate::ftp::compact(&app.images, &app.state, &vm, level).await;
        }
    }
    Ok(Json(removed.iter().map(|i| i.to_string()).collect()))
}

pub async fn account(
    State(app): State<Arc<App>>,
    Body(req): Body<AccountRequest>,
) -> Result<Json<AccountReply>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_account", m);
    if crate::config::values::check_hostname(&req.name).is_err() {
        return Err(bad(format!(
            "`{}` is not a valid account name (letters, digits, '-')",
            req.name
        )));
    }
    if req.write.is_empty() && req.read.is_empty() {
        return Err(bad(
            "give the account something to write or read (VM names, or *)".into(),
        ));
    }
    let password = crate::ftp::new_password().map_err(|e| bad(e.to_string()))?;
    let pw = password.clone();
    let hash = tokio::task::spawn_blocking(move || crate::ftp::hash_password(&pw))
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(|e| bad(e.to_string()))?;
    let expires_ms = req.ttl_s.map(|t| now_ms() + (t as i64) * 1000);
    app.state
        .put_account(AccountRow {
            name: req.name.clone(),
            password_hash: hash,
            write: req.write.clone(),
            read: req.read.clone(),
            expires_ms,
        })
        .await?;
    app.state
        .record(
            NewEvent::info(
                "ftp.account",
                format!("account set: write {:?}, read {:?}", req.write, req.read),
            )
            .about(&req.name),
        )
        .await?;
    Ok(Json(AccountReply {
        name: req.name,
        password,
        expires_ms,
    }))
}
