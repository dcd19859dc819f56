//! The machine a run happened on (from /proc), the date and the git commit.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// git, by absolute path (no `$PATH` lookup).
pub const GIT: &str = "/usr/bin/git";

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    /// /proc/loadavg when the run started.
    pub load: String,
}

impl Machine {
    pub fn probe(workspace: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu: cpu_model(&cpuinfo),
            cores: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            ram_gib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) as f64 / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            date: utc_now(),
            commit: commit(workspace),
            load: loadavg(),
        }
    }

    pub fn lines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CPU", self.cpu.clone()),
            ("cores", self.cores.to_string()),
            ("RAM", format!("{:.1} GiB", self.ram_gib)),
            ("kernel", self.kernel.clone()),
            ("date", self.date.clone()),
            ("git commit", self.commit.clone()),
            ("load average at start (1, 5, 15 min)", self.load.clone()),
        ]
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A `Key:   N kB` line of /proc/meminfo (or /proc/PID/status), in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

fn commit(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new(GIT)
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    // BENCHMARKS.md is what the benches write: one run's block is not a change to the next
    // run's code.
    match git(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":(exclude)BENCHMARKS.md",
    ]) {
        Some(s) if !s.is_empty() => format!("{head} (with uncommitted changes in the tree)"),
        _ => head,
    }
}

/// "YYYY-MM-DD HH:MM UTC".
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_798_377_000), "2026-12-27 13:10 UTC");
    }

    #[test]
    fn proc_parsing() {
        let ci = "processor\t: 0\nmodel name\t: Some CPU @ 2GHz\nprocessor\t: 1\n";
        assert_eq!(cpu_model(ci), "Some CPU @ 2GHz");
        let mi = "MemTotal:       16384000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(meminfo_kib(mi, "MemTotal"), Some(16_384_000));
        assert_eq!(meminfo_kib(mi, "VmRSS"), Some(2048));
        assert_eq!(meminfo_kib(mi, "VmHWM"), None);
    }
}
