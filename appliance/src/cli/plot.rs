//! `--plot FILE.svg`: the service break of each moved VM over time, drawn like the paper's
//! Figures 4-8: one row per VM on a shared time axis, each probe's response time as a dot,
//! unanswered probes as red marks along the top, the longest break shaded, and the moments the
//! VM was paused and resumed as vertical lines.

use std::path::Path;

use plotters::prelude::*;

use crate::migrate::probe::Probed;
use crate::state::MigrationRow;
use crate::Error;

const ROW_PX: u32 = 220;
const WIDTH_PX: u32 = 1100;

/// The probe's record of `m`, if it was probed.
fn probed(m: &MigrationRow) -> Option<Probed> {
    serde_json::from_value(m.detail.get("probe")?.clone()).ok()
}

/// When the VM stopped answering for good at the switch-over, and when it answered again:
/// the longest gap between answered probes (ms since the probe's start).
fn longest_gap(p: &Probed) -> Option<(i64, i64)> {
    let mut last_ok: Option<i64> = None;
    let mut best: Option<(i64, i64)> = None;
    for &[at, took] in &p.samples {
        if took < 0 {
            continue;
        }
        let answered = at + took;
        if let Some(prev) = last_ok {
            if best.is_none_or(|(a, b)| answered - prev > b - a) {
                best = Some((prev, answered));
            }
        }
        last_ok = Some(answered);
    }
    best
}

/// The moments a step started (unix ms) in `m`'s journal.
fn step_at(m: &MigrationRow, names: &[&str]) -> Option<i64> {
    m.steps
        .iter()
        .find(|s| names.contains(&s.step.as_str()))
        .map(|s| s.started_ms)
}

pub fn breaks(title: &str, rows: &[MigrationRow], file: &Path) -> Result<(), Error> {
    let probed: Vec<(&MigrationRow, Probed)> = rows
        .iter()
        .filter_map(|m| probed(m).map(|p| (m, p)))
        .filter(|(_, p)| !p.samples.is_empty())
        .collect();
    if probed.is_empty() {
        return Err(Error::Invalid(format!(
            "{title}: no probe samples to draw (moved with --no-probe, or before probes kept them)"
        )));
    }
    let origin = probed.iter().map(|(_, p)| p.started_ms).min().unwrap_or(0);
    let end = probed
        .iter()
        .map(|(_, p)| p.started_ms + p.samples.last().map(|s| s[0] + s[1].max(0)).unwrap_or(0))
        .max()
        .unwrap_or(origin + 1000);
    let x_max = ((end - origin) as f64 / 1000.0).max(1.0);
    let y_max = 120.0f64;
    let fail = |e: &dyn std::fmt::Display| Error::Invalid(format!("{}: {e}", file.display()));

    let height = ROW_PX * probed.len() as u32 + 40;
    let root = SVGBackend::new(file, (WIDTH_PX, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (head, body) = root.split_vertically(40);
    head.titled(
        &format!("{title}: service response time during the move (new TCP connection per probe)"),
        ("sans-serif", 18),
    )
    .map_err(|e| fail(&e))?;
    let rows_area = body.split_evenly((probed.len(), 1));
    for ((m, p), area) in probed.iter().zip(rows_area) {
        let shift = (p.started_ms - origin) as f64 / 1000.0;
        let caption = format!(
            "{} {} -> {} ({}, {}): break {} ms",
            m.vm,
            m.source,
            m.target,
            m.mode,
            m.state,
            m.break_ms.unwrap_or(p.break_ms as i64)
        );
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("response ms")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| fail(&e))?;
        if let Some((a, b)) = longest_gap(p) {
            let (a, b) = (shift + a as f64 / 1000.0, shift + b as f64 / 1000.0);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, 0.0), (b, y_max)],
                    RED.mix(0.15).filled(),
                )))
                .map_err(|e| fail(&e))?;
        }
        for (names, colour) in [
            (&["pause source", "live pre-copy"][..], BLACK.mix(0.6)),
            (&["resume on target"][..], GREEN.mix(0.8)),
        ] {
            if let Some(t) = step_at(m, names) {
                let x = (t - origin) as f64 / 1000.0;
                chart
                    .draw_series(LineSeries::new(
                        [(x, 0.0), (x, y_max)],
                        colour.stroke_width(1),
                    ))
                    .map_err(|e| fail(&e))?;
            }
        }
        chart
            .draw_series(p.samples.iter().filter(|s| s[1] >= 0).map(|s| {
                Circle::new(
                    (shift + s[0] as f64 / 1000.0, (s[1] as f64).min(y_max)),
                    1,
                    BLUE.filled(),
                )
            }))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(p.samples.iter().filter(|s| s[1] < 0).map(|s| {
                Cross::new(
                    (shift + s[0] as f64 / 1000.0, y_max * 0.97),
                    3,
                    RED.stroke_width(1),
                )
            }))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_answers() {
        let p = Probed {
            samples: vec![[0, 2], [10, 2], [20, -1], [130, -1], [240, 3], [250, 2]],
            ..Probed::default()
        };
        // Last answer at 12 ms, next at 243 ms.
        assert_eq!(longest_gap(&p), Some((12, 243)));
    }

    #[test]
    fn a_chart_has_one_row_per_probed_vm_with_its_break() {
        let row = |id: i64, vm: &str, start: i64| MigrationRow {
            id,
            vm: vm.into(),
            source: "hostA".into(),
            target: "hostC".into(),
            mode: "cold".into(),
            state: "done".into(),
            reason: None,
            started_ms: start,
            finished_ms: Some(start + 2000),
            break_ms: Some(231),
            detail: serde_json::json!({"probe": Probed {
                started_ms: start,
                samples: (0..200).map(|i| [i * 10, if (50..70).contains(&i) { -1 } else { 2 }]).collect(),
                ..Probed::default()
            }}),
            batch: Some(1),
            steps: Vec::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.svg");
        breaks(
            "batch 1",
            &[row(1, "vm1", 1_000), row(2, "vm2", 3_500)],
            &file,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(
            svg.contains("vm1 hostA -&gt; hostC (cold, done): break 231 ms")
                || svg.contains("vm1 hostA -> hostC (cold, done): break 231 ms"),
            "{}",
            &svg[..svg.len().min(3000)]
        );
        assert!(svg.contains("vm2 hostA"));
        // Failed probes are drawn, so is the shaded break.
        assert!(svg.matches("<line").count() > 20);
        assert!(svg.contains("<rect"));
        // A migration without samples cannot be drawn: said so.
        let mut bare = row(3, "vm3", 0);
        bare.detail = serde_json::json!({});
        let e = breaks("migration 3", &[bare], &file).unwrap_err();
        assert!(e.to_string().contains("no probe samples"), "{e}");
    }
}
