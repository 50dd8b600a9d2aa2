//! `netmigrate migrate`: starts a batch and follows it on the API's notice stream, one line per
//! move (indicatif spinners on a terminal, a plain line per finished move on stderr otherwise),
//! then prints the per-VM table (or the batch as JSON on stdout). The batch runs in the daemon: interrupting the CLI stops nothing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::show;
use crate::api::client::{Client, ClientError};
use crate::migrate::batch::BatchRequest;
use crate::placement::Move;
use crate::state::BatchRow;
use crate::Error;

/// How often the batch is read back when the stream says nothing (or missed something).
const POLL: Duration = Duration::from_secs(2);

pub async fn run_batch(client: &Client, req: BatchRequest, json: bool) -> Result<(), Error> {
    let tty = std::io::stderr().is_terminal() && !json;
    // Watch before starting, so the first notices are not missed.
    let mut lines = client.stream("/v1/watch").await?;
    let body = serde_json::to_value(&req).expect("json");
    let batch: BatchRow = client.post("/v1/batches", Some(body)).await?;
    let id = batch.id;
    let moves: Vec<Move> = serde_json::from_value(batch.plan["moves"].clone()).unwrap_or_default();
    if !json {
        eprintln!("batch {id}: {} {} move(s)", moves.len(), req.mode.as_str());
        for c in batch.plan["cold"].as_array().into_iter().flatten() {
            eprintln!(
                "  {} takes the cold path: {}",
                c["vm"].as_str().unwrap_or("?"),
                c["why"].as_str().unwrap_or("?")
            );
        }
    }

    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:<28} {spinner} {wide_msg} {elapsed:>4}")
        .expect("template");
    let bars: Vec<ProgressBar> = moves
        .iter()
        .map(|m| {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(format!(
                "{} {} -> {}{}",
                m.vm,
                m.from,
                m.to,
                if m.staging { " (hop)" } else { "" }
            ));
            b.set_message("waiting");
            b
        })
        .collect();
    let mut taken = vec![false; moves.len()];
    let mut of_migration: HashMap<i64, usize> = HashMap::new();

    loop {
        let line = tokio::select! {
            l = lines.next() => l,
            _ = tokio::time::sleep(POLL) => Ok(Some(serde_json::json!({"kind": "lagged"}))),
        };
        let n = match line {
            Ok(Some(n)) => n,
            // The stream ended or broke: follow by polling.
            Ok(None) | Err(_) => {
                wait_polling(client, id).await?;
                break;
            }
        };
        match n["kind"].as_str() {
            Some("migration") if n["batch"] == id => {
                let mid = n["id"].as_i64().unwrap_or(0);
                let state = n["state"].as_str().unwrap_or("");
                if state == "running" {
                    if let Some(i) = (0..moves.len()).find(|&i| {
                        !taken[i]
                            && moves[i].vm == n["vm"]
                            && moves[i].from == n["source"]
                            && moves[i].to == n["target"]
                    }) {
                        taken[i] = true;
                        of_migration.insert(mid, i);
                        if tty {
                            bars[i].enable_steady_tick(Duration::from_millis(120));
                        }
                        bars[i].set_message(format!("migration {mid}: starting"));
                    }
                } else if let Some(&i) = of_migration.get(&mid) {
                    bars[i].finish_with_message(format!("migration {mid}: {state}"));
                    if !tty {
                        eprintln!("  {}: migration {mid} {state}", bars[i].prefix());
                    }
                }
            }
            Some("step") => {
                let mid = n["migration"].as_i64().unwrap_or(0);
                if let Some(&i) = of_migration.get(&mid) {
                    let step = n["step"].as_str().unwrap_or("");
                    let msg = match n["state"].as_str() {
                        Some("started") => format!("migration {mid}: {step}"),
                        Some(s) => format!("migration {mid}: {step} {s}"),
                        None => continue,
                    };
                    bars[i].set_message(msg);
                }
            }
            Some("batch") if n["id"] == id && n["state"] != "running" => break,
            Some("lagged") => {
                let b: BatchRow = client.get(&format!("/v1/batches/{id}")).await?;
                if b.state != "running" {
                    break;
                }
            }
            _ => {}
        }
    }
    for b in &bars {
        if !b.is_finished() {
            b.abandon_with_message("not started");
        }
    }
    let _ = multi.clear();

    let v: serde_json::Value = client.get(&format!("/v1/batches/{id}")).await?;
    let b: BatchRow =
        serde_json::from_value(v.clone()).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}", show::batch(&b));
    }
    if b.state != "done" {
        return Err(Error::Invalid(
            b.reason
                .unwrap_or_else(|| format!("batch {id} ended {}", b.state)),
        ));
    }
    Ok(())
}

async fn wait_polling(client: &Client, id: i64) -> Result<(), Error> {
    loop {
        let b: BatchRow = client.get(&format!("/v1/batches/{id}")).await?;
        if b.state != "running" {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}
