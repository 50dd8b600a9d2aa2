//! The VMs the appliance manages (definitions, start, stop) and their moves: one at a time, or
//! the moves of a plan as a batch. The work runs in a task of its own, so a client that goes
//! away does not cut a move short.

use super::{detached, App, Error, Result};
use crate::hypervisor::VmDef;
use crate::migrate::batch::BatchRequest;
use crate::migrate::{Refused, Request};
use crate::state::{BatchRow, MigrationRow, NewEvent, VmRow};

pub async fn list(app: &App) -> Result<Vec<VmRow>> {
    Ok(app.state.vms().await?)
}

/// Defines (or redefines) a VM; one with an address is named in DNS at once.
pub async fn define(app: &App, def: VmDef) -> Result<VmRow> {
    def.check().map_err(|message| Error::Unprocessable {
        code: "bad_vm",
        message,
    })?;
    let name = def.name.clone();
    app.state.define_vm(def).await?;
    app.state
        .record(NewEvent::info("vm.define", "defined").about(&name))
        .await?;
    if let Some(dns) = &app.dns {
        dns.refresh(&app.config()).await;
    }
    Ok(app.state.vm(name).await?.expect("just defined"))
}

/// Forgets a VM that does not run.
pub async fn remove(app: &App, name: &str) -> Result<()> {
    match app.state.vm(name.to_string()).await? {
        None => Err(Refused::UnknownVm(name.to_string()).into()),
        Some(r) if r.state == "running" || r.state == "migrating" => Err(Error::conflict(
            "running",
            format!(
                "{name} runs on {}; stop it first",
                r.host.unwrap_or_default()
            ),
        )),
        Some(_) => {
            app.state.remove_vm(name.to_string()).await?;
            if let Some(dns) = &app.dns {
                dns.refresh(&app.config()).await;
            }
            Ok(())
        }
    }
}

/// Forgets a VM without touching it: wherever it runs it goes on running, unmanaged (`vms`
/// shows it so), its disks and port as they are. Not while it moves.
pub async fn release(app: &App, name: &str) -> Result<VmRow> {
    let row = app
        .state
        .vm(name.to_string())
        .await?
        .ok_or_else(|| Refused::UnknownVm(name.to_string()))?;
    if row.state == "migrating" {
        return Err(Error::conflict(
            "migrating",
            format!("{name} is moving; release it once the move has ended"),
        ));
    }
    app.state.remove_vm(name.to_string()).await?;
    let on = row.host.clone().unwrap_or_else(|| "no host".into());
    app.state
        .record(
            NewEvent::info(
                "vm.release",
                format!("released ({}, on {on}); left as it is", row.state),
            )
            .about(name),
        )
        .await?;
    if let Some(dns) = &app.dns {
        dns.refresh(&app.config()).await;
    }
    Ok(row)
}

/// Makes `name`, a VM running on `host` that the appliance did not start, managed without
/// touching it: its definition read from the host (refused, saying why, where it cannot be
/// driven), its address `ip` if given, else from the neighbour table or its lease. `shared`:
/// paths of its disks on shared storage (the others move with it).
pub async fn adopt(
    app: &App,
    name: &str,
    host: &str,
    shared: Vec<String>,
    ip: Option<std::net::Ipv4Addr>,
) -> Result<VmRow> {
    if let Some(r) = app.state.vm(name.to_string()).await? {
        return Err(Error::conflict(
            "name_taken",
            format!(
                "a VM named {name} is managed already ({} on {})",
                r.state,
                r.host.unwrap_or_else(|| "no host".into())
            ),
        ));
    }
    let (cfg, engine) = (app.config(), app.engine());
    let (n, h) = (name.to_string(), host.to_string());
    let mut def =
        detached(async move { Ok(engine.adopt_vm(&cfg, &n, &h, &shared).await?) }).await?;
    def.ip = ip;
    if def.ip.is_none() {
        super::hosts::collect(app, vec![host.to_string()]).await?;
        def.ip = super::hosts::vms(app)
            .await?
            .into_iter()
            .find(|v| v.host == host && v.vm.name == name)
            .and_then(|v| v.vm.ips.iter().find_map(|ip| ip.parse().ok()));
    }
    app.state.define_vm(def).await?;
    app.state
        .place_vm(name.to_string(), Some(host.to_string()), "running")
        .await?;
    app.state
        .record(NewEvent::info("vm.adopt", format!("adopted as it runs on {host}")).about(name))
        .await?;
    if let Some(dns) = &app.dns {
        dns.refresh(&app.config()).await;
    }
    Ok(app.state.vm(name.to_string()).await?.expect("just adopted"))
}

pub async fn start(app: &App, name: &str, host: &str) -> Result<VmRow> {
    let (cfg, engine) = (app.config(), app.engine());
    let (n, h) = (name.to_string(), host.to_string());
    detached(async move { Ok(engine.start_vm(&cfg, &n, &h).await?) }).await?;
    Ok(app.state.vm(name.to_string()).await?.expect("started"))
}

pub async fn stop(app: &App, name: &str) -> Result<VmRow> {
    let (cfg, engine, n) = (app.config(), app.engine(), name.to_string());
    detached(async move { Ok(engine.stop_vm(&cfg, &n).await?) }).await?;
    Ok(app.state.vm(name.to_string()).await?.expect("stopped"))
}

/// Runs one move to its end (done, failed or rolled back); it comes back with its journal.
pub async fn migrate(app: &App, req: Request) -> Result<MigrationRow> {
    let (cfg, engine) = (app.config(), app.engine());
    detached(async move { Ok(engine.migrate(&cfg, &req).await?) }).await
}

pub async fn migrations(app: &App, limit: i64) -> Result<Vec<MigrationRow>> {
    Ok(app.state.migrations(limit, false).await?)
}

pub async fn migration(app: &App, id: i64) -> Result<MigrationRow> {
    app.state
        .migration(id)
        .await?
        .ok_or_else(|| Error::not_found("not_found", format!("no migration {id}")))
}

/// Plans and starts a batch; it comes back with its plan while the moves run.
pub async fn start_batch(app: &App, req: BatchRequest) -> Result<BatchRow> {
    let (cfg, engine) = (app.config(), app.engine());
    detached(async move { Ok(engine.start_batch(cfg, req).await?) }).await
}

pub async fn batches(app: &App, limit: i64) -> Result<Vec<BatchRow>> {
    Ok(app.state.batches(limit).await?)
}

pub async fn batch(app: &App, id: i64) -> Result<BatchRow> {
    app.state
        .batch(id)
        .await?
        .ok_or_else(|| Error::not_found("not_found", format!("no batch {id}")))
}
