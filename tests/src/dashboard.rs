//! The appliance's dashboard in headless Chromium (Debian's `chromium`): the DOM once the page
//! has fetched and drawn its data, and a screenshot kept as a test artifact.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::netns;

/// The page as Chromium left it.
pub struct Page {
    pub dom: String,
}

impl Page {
    /// The rows a table says it drew (`data-rows`), or None if it did not draw.
    pub fn rows(&self, table: &str) -> Option<usize> {
        let tag = format!("<table id=\"{table}\" data-rows=\"");
        let rest = self.dom.split(&tag).nth(1)?;
        rest.split('"').next()?.parse().ok()
    }

    /// Whether a table cell reads exactly `text`.
    pub fn has_cell(&self, text: &str) -> bool {
        self.dom.contains(&format!(">{text}</td>"))
    }

    /// An attribute of the element with `id`.
    pub fn attr(&self, id: &str, attr: &str) -> Option<String> {
        let el = self.dom.split(&format!("id=\"{id}\"")).nth(1)?;
        let el = &el[..el.find('>')?];
        let v = el.split(&format!("{attr}=\"")).nth(1)?;
        Some(v.split('"').next()?.to_string())
    }
}

/// Where tests leave what a person may want to look at (CI keeps `target/test-artifacts`).
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("NETMIGRATE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts"))
}

fn chromium(ns: &str, profile: &Path, args: &[&str]) -> Result<std::process::Output> {
    let mut c = netns::exec(ns, "timeout");
    c.args([
        "90",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    // Time for the page's fetches to come back and be drawn.
    .arg("--virtual-time-budget=8000")
    .args(args);
    Ok(c.output()?)
}

/// Loads `url` in namespace `ns`, returns the DOM, and saves a screenshot as `shot` (a file
/// name in `artifacts_dir()`).
pub fn open(ns: &str, url: &str, profile: &Path, shot: &str) -> Result<Page> {
    let out = chromium(ns, profile, &["--dump-dom", url])?;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !dom.contains("data-loaded") {
        bail!(
            "the dashboard did not load: {}\n{dom}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir)?;
    let png = dir.join(shot);
    let out = chromium(
        ns,
        profile,
        &[
            "--window-size=1280,2000",
            &format!("--screenshot={}", png.display()),
            url,
        ],
    )?;
    if !out.status.success() || !png.exists() {
        bail!("no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Page { dom })
}
