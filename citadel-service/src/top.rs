//! `citadel-service top`: a full-screen view of the box, redrawn every `--interval` seconds, one
//! row per model: state, health, requests running and waiting, tokens/s, KV-cache use, GPU
//! memory and temperature, restarts, uptime.
//!
//! The data is `status`'s report ([`crate::status_report`]: systemd, the monitor's state file,
//! NVML) and its cells ([`status::state_cell`] ...), plus each running model's vLLM `/metrics`
//! ([`citadel_common::promtext`]) and the temperature of its GPUs. The terminal is ratatui's
//! (crossterm backend: plain terminal I/O, so it works over ssh and in tmux); `q`, Esc or
//! Ctrl-C quits. When stdout is not a terminal the table is printed once, as plain text, and
//! the exit code is `status`'s. No colour with `NO_COLOR`.

use crate::services::{Kind, Service};
use crate::status::{self, Row, StatusReport};
use crate::systemd::Host;
use crate::{gpu, output};
use citadel_common::config::Config;
use citadel_common::probe::{probe_all, Get, Prober};
use citadel_common::promtext;
use citadel_common::{Exit, Failure};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// vLLM metric names (0.6 to 0.11; `gpu_cache_usage_perc` is the older name of the KV gauge).
pub const RUNNING: &str = "vllm:num_requests_running";
pub const WAITING: &str = "vllm:num_requests_waiting";
pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";
pub const KV_CACHE: [&str; 2] = ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"];
/// `/metrics` is tens of KiB.
const METRICS_MAX_BODY: u64 = 1024 * 1024;

/// One model's reading of vLLM's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineMetrics {
    pub running: Option<f64>,
    pub waiting: Option<f64>,
    pub generation_tokens: Option<f64>,
    /// KV-cache use, 0 to 1.
    pub kv_cache: Option<f64>,
}

/// Parse a `/metrics` page (several engines are summed; the KV-cache use is their mean).
pub fn parse_metrics(text: &str) -> EngineMetrics {
    let kv = KV_CACHE.iter().find_map(|name| {
        let n = text
            .lines()
            .filter_map(promtext::sample)
            .filter(|(n, _)| n == name)
            .count();
        promtext::sum(text, name).map(|v| v / n.max(1) as f64)
    });
    EngineMetrics {
        running: promtext::sum(text, RUNNING),
        waiting: promtext::sum(text, WAITING),
        generation_tokens: promtext::sum(text, GENERATION_TOKENS),
        kv_cache: kv,
    }
}

/// One redraw: `status`'s report plus what only `top` shows.
#[derive(Debug, Clone)]
pub struct Frame {
    pub report: StatusReport,
    pub metrics: BTreeMap<String, EngineMetrics>,
    /// Generated tokens per second since the previous frame.
    pub tokens_per_sec: BTreeMap<String, f64>,
    /// The hottest of the model's GPUs, °C.
    pub gpu_temp_c: BTreeMap<String, u32>,
    /// Unix time of the reading.
    pub taken_unix: u64,
}

/// Where the frames come from.
pub trait Source {
    /// Read everything once.
    fn read(&self) -> Result<Frame, Failure>;
}

/// The live source: systemd through `host`, the config's monitor state file, NVML, and each
/// active model's `/metrics` on `engine.host`.
pub struct Live<'a> {
    pub host: &'a (dyn Host + Sync),
    pub cfg: &'a Config,
}

impl Source for Live<'_> {
    fn read(&self) -> Result<Frame, Failure> {
        let gpus = gpu::snapshot()
            .map_err(|e| log::debug!("no GPU readings: {e}"))
            .ok();
        let report =
            crate::status_report(self.host, self.cfg, &Service::All, false, gpus.as_ref())?;
        let timeout = Duration::from_secs(self.cfg.monitor.probe_timeout_secs.clamp(1, 2));
        let targets: Vec<(String, u16)> = report
            .services
            .iter()
            .filter(|r| r.kind == Kind::Model && r.up)
            .filter_map(|r| r.port.map(|p| (r.service.clone(), p)))
            .collect();
        let prober = Prober::with_max_body(timeout, METRICS_MAX_BODY);
        let gets = targets
            .iter()
            .map(|(_, port)| Get {
                prober: prober.clone(),
                url: format!(
                    "{}/metrics",
                    citadel_common::probe::base_url(&self.cfg.engine.host, *port)
                ),
            })
            .collect();
        let metrics = probe_all(gets)
            .into_iter()
            .zip(&targets)
            .filter_map(|(r, (name, _))| {
                let r = r.ok().filter(|r| r.status == 200)?;
                Some((name.clone(), parse_metrics(&r.body)))
            })
            .collect::<BTreeMap<_, _>>();
        let up: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
        let gpu_temp_c = self
            .cfg
            .models
            .iter()
            .filter(|m| up.contains(&m.name.as_str()))
            .filter_map(|m| {
                let snap = gpus.as_ref()?;
                let t = m
                    .gpus
                    .iter()
                    .filter_map(|i| snap.gpu(*i).and_then(|g| g.temperature_c))
                    .max()?;
                Some((m.name.clone(), t))
            })
            .collect();
        Ok(Frame {
            report,
            metrics,
            tokens_per_sec: BTreeMap::new(),
            gpu_temp_c,
            taken_unix: crate::now_unix(),
        })
    }
}

/// Tokens/s of each model between two readings `secs` apart (a counter that went back, a
/// restarted engine, has no rate).
pub fn rates(
    prev: &BTreeMap<String, EngineMetrics>,
    now: &BTreeMap<String, EngineMetrics>,
    secs: f64,
) -> BTreeMap<String, f64> {
    now.iter()
        .filter_map(|(name, m)| {
            let (a, b) = (prev.get(name)?.generation_tokens?, m.generation_tokens?);
            (secs > 0.0 && b >= a).then(|| (name.clone(), (b - a) / secs))
        })
        .collect()
}

/// The column titles.
pub const HEADER: [&str; 11] = [
    "MODEL", "STATE", "HEALTH", "RUN", "WAIT", "TOK/S", "KV", "GPU MEM", "GPU TEMP", "RESTARTS",
    "UPTIME",
];

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// The cells of one model row; the shared columns are `status`'s cells.
pub fn model_cells(f: &Frame, r: &Row, color: bool) -> Vec<String> {
    use citadel_common::text::escape_controls as esc;
    let m = f.metrics.get(&r.service);
    vec![
        esc(&r.service).into_owned(),
        status::state_cell(r, color),
        status::health_cell(r, color),
        num(m.and_then(|m| m.running)),
        num(m.and_then(|m| m.waiting)),
        f.tokens_per_sec
            .get(&r.service)
            .map_or_else(|| "-".into(), |t| format!("{t:.1}")),
        m.and_then(|m| m.kv_cache)
            .map_or_else(|| "-".into(), |k| format!("{:.0}%", k * 100.0)),
        status::gpu_memory_cell(r),
        f.gpu_temp_c
            .get(&r.service)
            .map_or_else(|| "-".into(), |t| output::celsius(*t)),
        r.restarts.to_string(),
        status::uptime_cell(r),
    ]
}

/// Header and one row per model of the frame.
pub fn table_rows(f: &Frame, color: bool) -> Vec<Vec<String>> {
    let mut rows = vec![HEADER.map(String::from).to_vec()];
    rows.extend(
        f.report
            .services
            .iter()
            .filter(|r| r.kind == Kind::Model)
            .map(|r| model_cells(f, r, color)),
    );
    rows
}

/// The line above the table: the units that are not models, with their states.
pub fn infra_line(f: &Frame) -> String {
    f.report
        .services
        .iter()
        .filter(|r| r.kind != Kind::Model && r.service != "all")
        .map(|r| format!("{} {}", r.service, status::state_cell(r, false)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The line below the table: units up, and where health came from.
pub fn summary_line(f: &Frame) -> String {
    let enabled: Vec<&Row> = f.report.services.iter().filter(|s| s.enabled).collect();
    let up = enabled.iter().filter(|s| s.up).count();
    let h = &f.report.health_source;
    let health = match h.kind.as_str() {
        "monitor" if h.stale => "health: the monitor's (stale: is citadel-monitor running?)".into(),
        "monitor" => "health: the monitor's".to_string(),
        _ => format!("health: {}", h.note.as_deref().unwrap_or("unknown")),
    };
    format!("{up} of {} enabled units up; {health}", enabled.len())
}

/// Not a terminal: the frame once, as plain text.
pub fn render_plain(f: &Frame) -> String {
    format!(
        "{}\n{}\n{}\n",
        infra_line(f),
        output::table(&table_rows(f, false)).trim_end(),
        summary_line(f)
    )
}

/// How `top` runs.
#[derive(Debug, Clone, Copy)]
pub struct TopOptions {
    pub interval: Duration,
    pub color: bool,
}

/// Run `top`: full screen on a terminal, else one plain print. The exit code is `status`'s
/// (0: every enabled unit up) for the print, 0 after `q`.
pub fn run<S: Source + Sync>(source: &S, opts: TopOptions) -> Result<Exit, Failure> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        let f = source.read()?;
        print!("{}", render_plain(&f));
        eprintln!("top: stdout is not a terminal, printed once (citadel-service status --json for scripts)");
        return Ok(if f.report.all_up {
            Exit::Ok
        } else {
            Exit::Failure
        });
    }
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::other(format!("cannot set up the terminal: {e}")))?;
    let result = interactive(&mut terminal, source, opts);
    ratatui::restore();
    result.map(|()| Exit::Ok)
}

/// The reader thread sends frames; this thread draws and reads keys.
fn interactive<S: Source + Sync>(
    terminal: &mut ratatui::DefaultTerminal,
    source: &S,
    opts: TopOptions,
) -> Result<(), Failure> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Result<Frame, String>>();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut prev: Option<(Instant, BTreeMap<String, EngineMetrics>)> = None;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let frame = source.read().map(|mut f| {
                    if let Some((t, m)) = &prev {
                        f.tokens_per_sec = rates(m, &f.metrics, t.elapsed().as_secs_f64());
                    }
                    prev = Some((Instant::now(), f.metrics.clone()));
                    f
                });
                if tx.send(frame.map_err(|e| e.to_string())).is_err() {
                    break;
                }
                while !stop.load(Ordering::SeqCst) && started.elapsed() < opts.interval {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        let mut shown: Option<Result<Frame, String>> = None;
        let out = loop {
            while let Ok(f) = rx.try_recv() {
                shown = Some(f);
            }
            if let Err(e) = terminal.draw(|fr| draw(fr, shown.as_ref(), opts)) {
                break Err(Failure::other(format!("cannot draw: {e}")));
            }
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) || ctrl_c {
                            break Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break Err(Failure::other(format!("cannot read the terminal: {e}"))),
                },
                Ok(false) => {}
                Err(e) => break Err(Failure::other(format!("cannot read the terminal: {e}"))),
            }
        };
        stop.store(true, Ordering::SeqCst);
        out
    })
}

fn style_of(word: &str, color: bool) -> ratatui::style::Style {
    use ratatui::style::{Color, Style};
    let s = Style::default();
    if !color {
        return s;
    }
    match output::tone_of(word.split_whitespace().next().unwrap_or("")) {
        output::Tone::Good => s.fg(Color::Green),
        output::Tone::Warn => s.fg(Color::Yellow),
        output::Tone::Bad => s.fg(Color::Red),
        output::Tone::Plain => s,
    }
}

fn draw(fr: &mut ratatui::Frame, shown: Option<&Result<Frame, String>>, opts: TopOptions) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::text::Line;
    use ratatui::widgets::{Cell, Paragraph, Row as TRow, Table};
    let [title, infra, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(fr.area());
    let when = match shown {
        Some(Ok(f)) => format!("at {}", clock(f.taken_unix)),
        _ => "reading ...".into(),
    };
    fr.render_widget(
        Paragraph::new(Line::from(format!(
            "citadel top, every {}s, {when}; q quits",
            opts.interval.as_secs().max(1)
        ))),
        title,
    );
    let f = match shown {
        None => return,
        Some(Err(e)) => {
            fr.render_widget(Paragraph::new(format!("cannot read the box: {e}")), body);
            return;
        }
        Some(Ok(f)) => f,
    };
    fr.render_widget(Paragraph::new(infra_line(f)), infra);
    let rows = table_rows(f, false);
    let widths: Vec<Constraint> = (0..HEADER.len())
        .map(|c| {
            let w = rows
                .iter()
                .map(|r| output::visible_len(&r[c]))
                .max()
                .unwrap_or(0);
            Constraint::Length(w as u16)
        })
        .collect();
    let mut it = rows.into_iter();
    let header = TRow::new(it.next().unwrap_or_default());
    let body_rows = it.map(|cells| {
        TRow::new(cells.into_iter().enumerate().map(|(i, c)| {
            let st = if i == 1 || i == 2 {
                style_of(&c, opts.color)
            } else {
                ratatui::style::Style::default()
            };
            Cell::from(c).style(st)
        }))
    });
    fr.render_widget(
        Table::new(body_rows, widths)
            .header(header)
            .column_spacing(2),
        body,
    );
    fr.render_widget(Paragraph::new(summary_line(f)), foot);
}

/// `HH:MM:SS` UTC of a Unix time.
fn clock(unix: u64) -> String {
    format!(
        "{:02}:{:02}:{:02} UTC",
        unix / 3600 % 24,
        unix / 60 % 60,
        unix % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE vllm:num_requests_running gauge\n\
        vllm:num_requests_running{engine=\"0\",model_name=\"phi3\"} 2.0\n\
        vllm:num_requests_waiting{engine=\"0\",model_name=\"phi3\"} 5.0\n\
        vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"phi3\"} 0.25\n\
        vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"phi3\"} 0.75\n\
        vllm:generation_tokens_total{engine=\"0\",model_name=\"phi3\"} 1200.0\n";

    #[test]
    fn metrics_are_summed_and_kv_is_the_mean() {
        let m = parse_metrics(PAGE);
        assert_eq!(m.running, Some(2.0));
        assert_eq!(m.waiting, Some(5.0));
        assert_eq!(m.kv_cache, Some(0.5));
        assert_eq!(m.generation_tokens, Some(1200.0));
        let old = parse_metrics("vllm:gpu_cache_usage_perc 0.1\n");
        assert_eq!(old.kv_cache, Some(0.1));
        assert_eq!(parse_metrics("<html>"), EngineMetrics::default());
    }

    #[test]
    fn rates_need_two_readings_and_a_counter_that_grew() {
        let at = |t: f64| {
            BTreeMap::from([(
                "phi3".to_string(),
                EngineMetrics {
                    generation_tokens: Some(t),
                    ..EngineMetrics::default()
                },
            )])
        };
        assert_eq!(rates(&at(100.0), &at(300.0), 2.0)["phi3"], 100.0);
        assert!(rates(&at(300.0), &at(100.0), 2.0).is_empty());
        assert!(rates(&BTreeMap::new(), &at(100.0), 2.0).is_empty());
    }

    #[test]
    fn clock_is_utc() {
        assert_eq!(clock(86_400 + 3600 + 62), "01:01:02 UTC");
    }
}
