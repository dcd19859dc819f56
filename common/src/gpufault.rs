//! GPU faults at run time: NVIDIA Xid lines from the kernel log, and NVML health readings,
//! turned into what to do: quarantine the GPU (stop its models, keep them down), restart only
//! the affected model, or note it.
//!
//! The kernel log is read through the journal (`journalctl _TRANSPORT=kernel`, which works
//! under the monitor's sandboxing), resuming after the last cursor; the first read starts at
//! this boot's start (`--since=@BOOT`, the realtime clock minus `/proc/uptime`), not `-b`: in a
//! container (systemd-nspawn) a sandboxed unit's `/proc/sys/kernel/random/boot_id` is the
//! host's while journald stamps entries with the container's own, so `-b` matched nothing
//! there (found by the system test `tests/system/tests/xid.rs`). The test hook
//! `CITADEL_KERNEL_LOG=FILE` replaces the journal with a file of kernel lines (read from the
//! offset reached so far); NVML health comes from `citadel_common::gpu` (NVML, or the readings
//! file named by `CITADEL_FAKE_GPU`).
//!
//! The Xid table follows NVIDIA's Xid catalogue, "Resolution Bucket (Immediate Action)"
//! column (<https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html>, Ampere and
//! newer; H100 rows): `RESET_GPU` / `RESTART_BM` (reboot) -> [`Action::Quarantine`],
//! `RESTART_APP` -> [`Action::RestartModel`], everything else -> [`Action::Note`]. Xid 154
//! ("GPU recovery action changed") carries the action in its text: "GPU Reset Required",
//! "Node Reboot Required" and "Drain and Reset" quarantine.

use crate::gpu::GpuInfo;
use serde::{Deserialize, Serialize};

/// The kernel-log test hook.
pub const KERNEL_LOG_ENV: &str = "CITADEL_KERNEL_LOG";

/// What a fault calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Logged, nothing done.
    Note,
    /// Restart the models on that GPU (the fault was contained to an application).
    RestartModel,
    /// Stop that GPU's models and keep them down until `citadel-service gpu clear N`.
    Quarantine,
}

/// One Xid of the table: number, catalogue mnemonic or description, action.
pub struct XidRule {
    pub xid: u32,
    pub what: &'static str,
    pub action: Action,
}

/// NVIDIA Xid catalogue (see the module docs), the Xids a serving box meets.
pub const XID_TABLE: &[XidRule] = &[
    XidRule {
        xid: 13,
        what: "graphics engine exception",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 31,
        what: "GPU memory page fault (MMU fault)",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 43,
        what: "GPU stopped processing (reset channel)",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 45,
        what: "preemptive cleanup, due to previous errors",
        action: Action::Note,
    },
    XidRule {
        xid: 48,
        what: "double-bit ECC error (DBE)",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 61,
        what: "internal micro-controller breakpoint/warning",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 62,
        what: "internal micro-controller halt",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 63,
        what: "ECC page retirement or row remapping recorded (reset to activate)",
        action: Action::Note,
    },
    XidRule {
        xid: 64,
        what: "ECC page retirement or row remapping failure",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 68,
        what: "video processor exception",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 69,
        what: "graphics engine class error",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 74,
        what: "NVLink error",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 79,
        what: "GPU has fallen off the bus",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 92,
        what: "high single-bit ECC error rate",
        action: Action::Note,
    },
    XidRule {
        xid: 94,
        what: "contained ECC error",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 95,
        what: "uncontained ECC error",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 109,
        what: "context switch timeout",
        action: Action::RestartModel,
    },
    XidRule {
        xid: 119,
        what: "GSP RPC timeout",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 120,
        what: "GSP error",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 121,
        what: "C2C link error",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 140,
        what: "unrecovered ECC error",
        action: Action::Quarantine,
    },
    XidRule {
        xid: 154,
        what: "GPU recovery action changed",
        action: Action::Note,
    },
];

/// An Xid line: `NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xid {
    /// The PCI address as the driver prints it (`0000:3b:00`).
    pub pci: String,
    pub xid: u32,
    /// The rest of the line.
    pub text: String,
}

/// Parse one kernel line; `None` when it is not an Xid line.
pub fn parse_xid(line: &str) -> Option<Xid> {
    let at = line.find("NVRM: Xid (")?;
    let rest = &line[at + "NVRM: Xid (".len()..];
    let close = rest.find("):")?;
    let pci = rest[..close].trim().trim_start_matches("PCI:").to_string();
    let after = rest[close + 2..].trim_start();
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    let xid = digits.parse().ok()?;
    let text = after[digits.len()..]
        .trim_start_matches(',')
        .trim()
        .to_string();
    Some(Xid { pci, xid, text })
}

/// What an Xid calls for, and a few words on it.
pub fn xid_action(x: &Xid) -> (Action, String) {
    if x.xid == 154 {
        // "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)": the new
        // action is after the last " to ".
        let t = x.text.to_ascii_lowercase();
        let t = t.rsplit(" to ").next().unwrap_or("");
        let fatal = [
            "reset required",
            "reboot required",
            "drain and reset",
            "drain p2p",
        ];
        let action = if fatal.iter().any(|f| t.contains(f)) {
            Action::Quarantine
        } else {
            Action::Note
        };
        return (
            action,
            format!("Xid 154 (GPU recovery action changed): {}", x.text),
        );
    }
    match XID_TABLE.iter().find(|r| r.xid == x.xid) {
        Some(r) => (r.action, format!("Xid {} ({})", x.xid, r.what)),
        None => (
            Action::Note,
            format!("Xid {} (not in Citadel's table: {})", x.xid, x.text),
        ),
    }
}

/// Normalise a PCI bus id for comparison: NVML says `00000000:3B:00.0`, the driver
/// `0000:3b:00`: lower-case, domain as 4 digits, function dropped.
pub fn pci_key(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    let id = id.split('.').next().unwrap_or("");
    let mut parts: Vec<&str> = id.split(':').collect();
    if parts.len() == 3 {
        let dom = parts[0].trim_start_matches('0');
        let dom = format!("{dom:0>4}");
        parts[0] = "";
        return format!("{dom}:{}:{}", parts[1], parts[2]);
    }
    id.to_string()
}

/// The GPU index of an Xid, from the GPUs' PCI bus ids.
pub fn gpu_of(x: &Xid, gpus: &[GpuInfo]) -> Option<u32> {
    let k = pci_key(&x.pci);
    gpus.iter()
        .find(|g| pci_key(&g.pci_bus_id) == k)
        .map(|g| g.index)
}

/// One fault found on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub gpu: u32,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
    /// One line: what was seen.
    pub what: String,
}

/// NVML health of one GPU, compared with its previous reading: new uncorrected ECC errors and
/// a pending row remap quarantine; thermal or power-brake throttling is noted.
pub fn health_faults(prev: Option<&GpuInfo>, now: &GpuInfo) -> Vec<Fault> {
    let mut v = vec![];
    let was = prev.and_then(|p| p.ecc_uncorrected_volatile).unwrap_or(0);
    if let Some(n) = now.ecc_uncorrected_volatile {
        if n > was {
            v.push(Fault {
                gpu: now.index,
                action: Action::Quarantine,
                xid: None,
                what: format!("NVML: {n} uncorrected (double-bit) ECC errors since the driver loaded (was {was})"),
            });
        }
    }
    if now.remap_pending == Some(true) && prev.and_then(|p| p.remap_pending) != Some(true) {
        v.push(Fault {
            gpu: now.index,
            action: Action::Quarantine,
            xid: None,
            what: "NVML: a row remap is pending (the GPU needs a reset to apply it)".into(),
        });
    }
    if now.retired_pages_pending == Some(true)
        && prev.and_then(|p| p.retired_pages_pending) != Some(true)
    {
        v.push(Fault {
            gpu: now.index,
            action: Action::Quarantine,
            xid: None,
            what: "NVML: a page retirement is pending (the GPU needs a reset to apply it)".into(),
        });
    }
    if let Some(t) = &now.throttle_reasons {
        let low = t.to_ascii_lowercase();
        let bad = ["hw_slowdown", "hw_thermal", "hw_power_brake", "sw_thermal"];
        let was = prev
            .and_then(|p| p.throttle_reasons.clone())
            .unwrap_or_default();
        if bad.iter().any(|b| low.contains(b)) && was != *t {
            v.push(Fault {
                gpu: now.index,
                action: Action::Note,
                xid: None,
                what: format!("NVML: throttled ({t})"),
            });
        }
    }
    v
}

/// A GPU that was there and no longer answers NVML.
pub fn lost_gpu(index: u32, why: &str) -> Fault {
    Fault {
        gpu: index,
        action: Action::Quarantine,
        xid: None,
        what: format!("NVML: GPU {index} stopped answering ({why})"),
    }
}

// ------------------------------------------------------------------------------------------
// Kernel log

/// Reads new kernel lines since the last read.
pub trait KernelLog {
    fn new_lines(&mut self) -> Result<Vec<String>, String>;
}

/// The journal's kernel transport, after a cursor.
pub struct Journal {
    cursor: Option<String>,
    /// Where the cursor is kept between monitor restarts (the runtime dir: a reboot starts
    /// again from the boot's first line).
    cursor_file: Option<std::path::PathBuf>,
}

impl Journal {
    pub fn new(cursor_file: Option<std::path::PathBuf>) -> Journal {
        let cursor = cursor_file
            .as_deref()
            .and_then(|p| crate::safefs::read_regular_text(p, 4096).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && !s.contains('\n'));
        Journal {
            cursor,
            cursor_file,
        }
    }
}

impl KernelLog for Journal {
    fn new_lines(&mut self) -> Result<Vec<String>, String> {
        let mut cmd = std::process::Command::new(crate::paths::JOURNALCTL);
        cmd.args([
            "_TRANSPORT=kernel",
            "--no-pager",
            "-q",
            "-o",
            "cat",
            "--show-cursor",
        ]);
        match (&self.cursor, boot_started_unix()) {
            (Some(c), _) => {
                cmd.arg(format!("--after-cursor={c}"));
            }
            (None, Some(t)) => {
                cmd.arg(format!("--since=@{t}"));
            }
            (None, None) => {
                cmd.arg("-b");
            }
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("{}: {e}", crate::paths::JOURNALCTL))?;
        // journalctl 252 exits 1, printing nothing, when nothing matches (no kernel line since
        // the boot or the cursor: the usual case in a container, where the kernel logs nothing).
        if out.status.code() == Some(1) && out.stdout.is_empty() && out.stderr.is_empty() {
            return Ok(vec![]);
        }
        if !out.status.success() {
            return Err(format!(
                "journalctl _TRANSPORT=kernel: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = vec![];
        for l in text.lines() {
            if let Some(c) = l.strip_prefix("-- cursor: ") {
                self.cursor = Some(c.trim().to_string());
            } else {
                lines.push(l.to_string());
            }
        }
        if let (Some(c), Some(p)) = (&self.cursor, &self.cursor_file) {
            let _ = crate::fsutil::write_atomic(p, c.as_bytes(), 0o600);
        }
        Ok(lines)
    }
}

/// When this boot started, in seconds since the epoch: the realtime clock minus the uptime
/// (`/proc/uptime`, the kernel's own, also in a container), a second early so that no line of
/// the boot's first second is missed.
pub fn boot_started_unix() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    boot_started(&text, std::time::SystemTime::now())
}

/// [`boot_started_unix`] from the text of `/proc/uptime` and the time now.
pub fn boot_started(uptime: &str, now: std::time::SystemTime) -> Option<u64> {
    let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    if !up.is_finite() || up < 0.0 {
        return None;
    }
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let t = (now - up).floor() - 1.0;
    (t > 0.0).then_some(t as u64)
}

/// `CITADEL_KERNEL_LOG=FILE`: kernel lines appended to a file by a test.
pub struct FileLog {
    path: std::path::PathBuf,
    offset: usize,
}

impl FileLog {
    pub fn new(path: std::path::PathBuf) -> FileLog {
        FileLog { path, offset: 0 }
    }
}

impl KernelLog for FileLog {
    fn new_lines(&mut self) -> Result<Vec<String>, String> {
        let text = match crate::safefs::read_regular_text(&self.path, 4 << 20) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(format!("{KERNEL_LOG_ENV}={}: {e}", self.path.display())),
        };
        if text.len() < self.offset {
            self.offset = 0;
        }
        // Only whole lines.
        let new = &text[self.offset..];
        let upto = new.rfind('\n').map_or(0, |i| i + 1);
        self.offset += upto;
        Ok(new[..upto].lines().map(String::from).collect())
    }
}

/// The kernel log to read: the test hook when set, else the journal.
pub fn kernel_log(cursor_file: Option<std::path::PathBuf>) -> Box<dyn KernelLog + Send> {
    match std::env::var_os(KERNEL_LOG_ENV) {
        Some(p) if !p.is_empty() => Box::new(FileLog::new(p.into())),
        _ => Box::new(Journal::new(cursor_file)),
    }
}

/// The faults in new kernel lines, mapped to GPU indexes (lines naming no known GPU are
/// returned with their PCI id in `unknown`).
pub fn xid_faults(lines: &[String], gpus: &[GpuInfo]) -> (Vec<Fault>, Vec<String>) {
    let mut faults = vec![];
    let mut unknown = vec![];
    for l in lines {
        let Some(x) = parse_xid(l) else { continue };
        let (action, what) = xid_action(&x);
        match gpu_of(&x, gpus) {
            Some(gpu) => faults.push(Fault {
                gpu,
                action,
                xid: Some(x.xid),
                what: format!("{what}: {}", crate::text::escape_controls(l.trim())),
            }),
            None => unknown.push(format!(
                "{what} on PCI {} (no GPU of this box has that address)",
                x.pci
            )),
        }
    }
    (faults, unknown)
}

#[cfg(test)]
mod tests;
