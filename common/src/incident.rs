//! Incidents: why a model went down, kept in `state_dir/incidents/` across reboots.
//!
//! One file per *series* of failures of one model (`NAME.FIRST_UNIX_MS.json`): the first
//! failure is kept whole (time, exit, class, the engine's excerpt); later failures of the same
//! series only bump `count` and replace `last`. A series ends ([`Store::resolve`]) when the model
//! serves again; the next failure starts a new file. The store is bounded: at most
//! [`MAX_PER_MODEL`] files per model and [`MAX_FILES`] in all (oldest removed first), each at
//! most [`MAX_FILE_BYTES`] (the excerpt is cut to fit).
//!
//! The directory is writable by the service account (start-model writes here) and the monitor
//! (root) writes here too, so every operation goes through `safefs::DirFd`: the directory is
//! reached without following a symlink at any level, files are opened relative to it with
//! `O_NOFOLLOW` and read only when `fstat` says they are regular files, and writes are a new
//! temp file (`O_EXCL`, unpredictable name) renamed over the old one. Writers serialise on an
//! `flock` of `.lock` in the directory.

use crate::classify::{Class, Diagnosis};
use crate::safefs::DirFd;
use crate::text::escape_controls;
use nix::sys::stat::SFlag;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Current schema of an incident file.
pub const SCHEMA: u32 = 1;
/// Files kept per model.
pub const MAX_PER_MODEL: usize = 8;
/// Files kept in all.
pub const MAX_FILES: usize = 128;
/// Largest incident file written or read.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// Lines kept in an excerpt.
pub const MAX_EXCERPT_LINES: usize = 200;
/// Characters kept of one excerpt line.
pub const MAX_LINE_CHARS: usize = 1000;

/// The directory under `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("incidents")
}

/// What kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The engine exited before it served.
    StartFailure,
    /// The engine exited while serving.
    Crash,
    /// The monitor restarted it.
    MonitorRestart,
    /// The monitor's restart budget is spent.
    GaveUp,
    /// The monitor stopped it: its GPU is quarantined.
    GpuQuarantine,
    /// start-model refused to start it (quarantined GPU).
    Refused,
    /// systemd marked the unit failed (seen by the monitor or the notifier).
    UnitFailed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::StartFailure => "start_failure",
            Event::Crash => "crash",
            Event::MonitorRestart => "monitor_restart",
            Event::GaveUp => "gave_up",
            Event::GpuQuarantine => "gpu_quarantine",
            Event::Refused => "refused",
            Event::UnitFailed => "unit_failed",
        }
    }
}

/// How the engine (or start-model) ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.signal) {
            (_, Some(s)) => write!(f, "killed by {s}"),
            (Some(c), None) => write!(f, "exit status {c}"),
            (None, None) => f.write_str("-"),
        }
    }
}

/// A later failure of the same series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrence {
    pub time_unix: u64,
    pub event: Event,
    pub class: Class,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
}

/// One incident (series).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub schema: u32,
    /// The file stem (`NAME.FIRST_UNIX_MS`).
    #[serde(default)]
    pub id: String,
    pub model: String,
    pub unit: String,
    /// Who wrote it first: `start-model`, `health-monitor`, `citadel-notify`.
    pub source: String,
    pub event: Event,
    /// The first failure.
    pub time_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    pub class: Class,
    pub summary: String,
    pub fix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
    /// The engine's relevant output (control characters escaped), tracebacks whole.
    #[serde(default)]
    pub excerpt: Vec<String>,
    /// Lines of output left out of the excerpt.
    #[serde(default)]
    pub excerpt_omitted: usize,
    /// Failures in this series (1 = only the first).
    pub count: u32,
    /// The latest failure, when there was more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Occurrence>,
    /// When the model served again (the series is over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_unix: Option<u64>,
}

impl Incident {
    /// A new incident from a diagnosis.
    pub fn new(model: &str, unit: &str, source: &str, event: Event, d: &Diagnosis) -> Incident {
        Incident {
            schema: SCHEMA,
            id: String::new(),
            model: model.to_string(),
            unit: unit.to_string(),
            source: source.to_string(),
            event,
            time_unix: unix_now(),
            exit: None,
            class: d.class,
            summary: escape_controls(&d.summary).into_owned(),
            fix: escape_controls(&d.fix).into_owned(),
            gpu: None,
            xid: None,
            excerpt: vec![],
            excerpt_omitted: 0,
            count: 1,
            last: None,
            resolved_unix: None,
        }
    }

    pub fn with_exit(mut self, e: ExitInfo) -> Incident {
        self.exit = Some(e);
        self
    }

    /// The excerpt from the engine's output, around the line that decided (see [`excerpt`]).
    pub fn with_excerpt(mut self, lines: &[String], focus: Option<usize>) -> Incident {
        let (ex, omitted) = excerpt(lines, focus);
        self.excerpt = ex;
        self.excerpt_omitted = omitted;
        self
    }

    /// The class, summary and exit of the latest failure (the first when there was one).
    pub fn latest(&self) -> (Class, &str, Option<&ExitInfo>, u64) {
        match &self.last {
            Some(o) => (o.class, &o.summary, o.exit.as_ref(), o.time_unix),
            None => (
                self.class,
                &self.summary,
                self.exit.as_ref(),
                self.time_unix,
            ),
        }
    }

    pub fn is_open(&self) -> bool {
        self.resolved_unix.is_none()
    }
}

/// The excerpt of `lines`: the Python traceback that holds `focus` (or the last traceback),
/// whole, from `Traceback (most recent call last):` to its exception line, plus the line at
/// `focus` and the last lines of the output; at most [`MAX_EXCERPT_LINES`] lines (a longer
/// traceback keeps its head and its tail), each cut at [`MAX_LINE_CHARS`], escaped. Returns the
/// lines and how many lines were left out.
pub fn excerpt(lines: &[String], focus: Option<usize>) -> (Vec<String>, usize) {
    const TAIL: usize = 15;
    let n = lines.len();
    if n == 0 {
        return (vec![], 0);
    }
    let body = |i: usize| crate::classify::strip_prefixes(&lines[i]);
    let starts: Vec<usize> = (0..n)
        .filter(|&i| body(i).contains("Traceback (most recent call last):"))
        .collect();
    // The traceback: the last start at or before the focus (else the last one).
    let start = match focus {
        Some(f) => starts.iter().rev().find(|&&s| s <= f).copied(),
        None => starts.last().copied(),
    };
    let mut keep: Vec<(usize, usize)> = vec![];
    if let Some(s) = start {
        // Its end: the first line after the frames that does not start with whitespace.
        let mut e = s + 1;
        while e < n {
            let b = body(e);
            if !b.is_empty() && !b.starts_with(' ') && !b.starts_with('\t') {
                break;
            }
            e += 1;
        }
        let e = e.min(n - 1);
        let e = focus.map_or(e, |f| if f > e && f - e <= 5 { f } else { e });
        keep.push((s, e));
    }
    if let Some(f) = focus {
        keep.push((f, f));
    }
    keep.push((n.saturating_sub(TAIL), n - 1));
    keep.sort();
    let mut merged: Vec<(usize, usize)> = vec![];
    for (a, b) in keep {
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut out = vec![];
    let mut shown = 0usize;
    let mut prev_end: Option<usize> = None;
    for (a, b) in merged {
        if let Some(p) = prev_end {
            if a > p + 1 {
                out.push(format!("[... {} lines ...]", a - p - 1));
            }
        } else if a > 0 {
            out.push(format!("[... {a} lines ...]"));
        }
        let len = b - a + 1;
        let room = MAX_EXCERPT_LINES.saturating_sub(out.len());
        if len > room {
            let head = room / 4;
            let tail = room.saturating_sub(head + 1);
            for l in &lines[a..a + head] {
                out.push(cut_line(l));
            }
            out.push(format!("[... {} lines ...]", len - head - tail));
            for l in &lines[b + 1 - tail..=b] {
                out.push(cut_line(l));
            }
            shown += head + tail;
        } else {
            for l in &lines[a..=b] {
                out.push(cut_line(l));
            }
            shown += len;
        }
        prev_end = Some(b);
    }
    (out, n - shown)
}

fn cut_line(l: &str) -> String {
    let e = escape_controls(l.trim_end()).into_owned();
    if e.chars().count() > MAX_LINE_CHARS {
        let mut s: String = e.chars().take(MAX_LINE_CHARS).collect();
        s.push_str("[...]");
        s
    } else {
        e
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The incident directory, opened without following symlinks (`safefs::DirFd`).
pub struct Store {
    dir: DirFd,
}

/// Is `name` an incident file name of ours (`NAME.DIGITS.json`)?
fn parse_name(name: &str) -> Option<(&str, u128)> {
    let stem = name.strip_suffix(".json")?;
    let (model, ms) = stem.rsplit_once('.')?;
    if model.is_empty() || model.starts_with('.') {
        return None;
    }
    Some((model, ms.parse().ok()?))
}

impl Store {
    /// Open `state_dir/incidents` (absolute; no symlink at any level).
    pub fn open(state_dir: &Path) -> std::io::Result<Store> {
        Ok(Store {
            dir: DirFd::open(&dir(state_dir))?,
        })
    }

    /// Open `state_dir/incidents`, creating it (mode 0750) when missing.
    pub fn create(state_dir: &Path) -> std::io::Result<Store> {
        // The package's tmpfiles.d makes state_dir; elsewhere (tests, a moved state_dir) it
        // is made here.
        std::fs::create_dir_all(state_dir)?;
        let parent = DirFd::open(state_dir)?;
        match parent.mkdir(OsStr::new("incidents"), 0o750) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(Store {
            dir: parent.child(OsStr::new("incidents"))?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Names of our files (regular files only), with their model and time, oldest first.
    fn names(&self) -> std::io::Result<Vec<(String, String, u128)>> {
        let mut v = vec![];
        for (name, st) in self.dir.entries()? {
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                continue;
            }
            let Some(name) = name.to_str().map(String::from) else {
                continue;
            };
            if let Some((model, ms)) = parse_name(&name) {
                let model = model.to_string();
                v.push((name, model, ms));
            }
        }
        v.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0)));
        Ok(v)
    }

    /// Read one file: regular, no symlink, at most [`MAX_FILE_BYTES`].
    fn read_name(&self, name: &str) -> std::io::Result<Incident> {
        let buf = self
            .dir
            .read_file(OsStr::new(name), MAX_FILE_BYTES as u64)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")))?;
        let mut i: Incident = serde_json::from_slice(&buf)
            .map_err(|e| std::io::Error::other(format!("{name}: {e}")))?;
        i.id = name.trim_end_matches(".json").to_string();
        Ok(i)
    }

    /// Write one file atomically, cutting the excerpt to fit the size cap.
    fn write_name(&self, name: &str, inc: &Incident) -> std::io::Result<()> {
        let mut inc = inc.clone();
        let mut text = serde_json::to_vec_pretty(&inc).map_err(std::io::Error::other)?;
        while text.len() > MAX_FILE_BYTES && !inc.excerpt.is_empty() {
            let drop = (inc.excerpt.len() / 4).max(1);
            inc.excerpt.drain(0..drop);
            inc.excerpt_omitted += drop;
            text = serde_json::to_vec_pretty(&inc).map_err(std::io::Error::other)?;
        }
        self.dir.write_replace(OsStr::new(name), &text, 0o640)
    }

    /// Every incident, oldest first (unreadable files are skipped and logged at debug).
    pub fn list(&self) -> std::io::Result<Vec<Incident>> {
        let mut out = vec![];
        for (name, _, _) in self.names()? {
            match self.read_name(&name) {
                Ok(i) => out.push(i),
                Err(e) => log::debug!("{}: skipping {e}", self.path().display()),
            }
        }
        Ok(out)
    }

    /// The latest incident of `model`.
    pub fn latest(&self, model: &str) -> std::io::Result<Option<Incident>> {
        for (name, m, _) in self.names()?.into_iter().rev() {
            if m == model {
                match self.read_name(&name) {
                    Ok(i) => return Ok(Some(i)),
                    Err(e) => log::debug!("{}: skipping {e}", self.path().display()),
                }
            }
        }
        Ok(None)
    }

    /// Record a failure: a repeat of the model's open series (count + 1, `last` replaced, the
    /// first failure kept), else a new series. Returns the stored incident.
    pub fn record(&self, inc: Incident) -> std::io::Result<Incident> {
        let _lock = self.dir.lock(OsStr::new(".lock"))?;
        let stored = match self.latest(&inc.model)? {
            Some(mut open) if open.is_open() => {
                open.count = open.count.saturating_add(1);
                open.last = Some(Occurrence {
                    time_unix: inc.time_unix,
                    event: inc.event,
                    class: inc.class,
                    summary: inc.summary.clone(),
                    exit: inc.exit.clone(),
                });
                // A GPU fault found later names the GPU even when the series began otherwise.
                open.gpu = open.gpu.or(inc.gpu);
                open.xid = open.xid.or(inc.xid);
                let name = format!("{}.json", open.id);
                self.write_name(&name, &open)?;
                open
            }
            _ => {
                let mut ms = unix_now_ms().max(inc.time_unix as u128 * 1000);
                let taken: Vec<u128> = self
                    .names()?
                    .into_iter()
                    .filter(|(_, m, _)| *m == inc.model)
                    .map(|(_, _, t)| t)
                    .collect();
                while taken.contains(&ms) {
                    ms += 1;
                }
                let mut new = inc;
                new.id = format!("{}.{ms}", new.model);
                self.write_name(&format!("{}.json", new.id), &new)?;
                new
            }
        };
        self.prune()?;
        Ok(stored)
    }

    /// The model serves again: close its open series. True when one was open.
    pub fn resolve(&self, model: &str) -> std::io::Result<bool> {
        let _lock = self.dir.lock(OsStr::new(".lock"))?;
        match self.latest(model)? {
            Some(mut open) if open.is_open() => {
                open.resolved_unix = Some(unix_now());
                self.write_name(&format!("{}.json", open.id), &open)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Remove the oldest files beyond the caps.
    fn prune(&self) -> std::io::Result<()> {
        let names = self.names()?;
        let mut remove: Vec<&str> = vec![];
        let mut per_model: std::collections::BTreeMap<&str, usize> = Default::default();
        for (_, m, _) in &names {
            *per_model.entry(m.as_str()).or_default() += 1;
        }
        let mut total = names.len();
        for (name, m, _) in &names {
            let c = per_model.get_mut(m.as_str()).expect("counted");
            if *c > MAX_PER_MODEL || total > MAX_FILES {
                remove.push(name);
                *c -= 1;
                total -= 1;
            }
        }
        for name in remove {
            match self.dir.remove(OsStr::new(name), false) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
