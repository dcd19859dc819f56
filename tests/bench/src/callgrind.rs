//! `citadel-gateway-bench --callgrind [BUILD ...]`: the user-space instructions per proxied
//! request of gateway builds and of nginx, counted by valgrind's callgrind. Unlike CPU time
//! that count does not move with the neighbours of a shared machine, so it judges a change to
//! the request path where the latency rounds cannot (issue 15). Kernel time is not counted:
//! the gateway and nginx make the same system calls per request (BENCHMARKS.md).
//!
//! The rig is the benchmark's own ([`crate::gateway`]): the stand-in engine, each build and
//! nginx (one process, no master: what callgrind follows) started as the latency rounds start
//! them, but run by valgrind, one at a time. Per proxy: [`CLIENTS`] keep-alive clients send
//! [`WARM`] requests each, the counters are zeroed, [`COUNTED`] each are counted, and the
//! counters dumped. Prints one line per proxy; writes nothing outside a temporary directory
//! unless `--keep DIR` (each dump copied there). `--engine-keepalive`: the stand-in keeps its
//! connections alive, as vLLM does.

use crate::gateway::{load, start_gateway, start_nginx, start_standin, NGINX, SMALL};
use crate::procs::Guarded;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const VALGRIND: &str = "/usr/bin/valgrind";
pub const CALLGRIND_CONTROL: &str = "/usr/bin/callgrind_control";
/// Clients, requests of each before the count, and counted requests of each.
pub const CLIENTS: usize = 4;
pub const WARM: usize = 30;
pub const COUNTED: usize = 250;

/// `summary: N` of a callgrind output file: the instructions counted.
fn summary(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
}

/// `callgrind_control OPTION PID`, which must succeed.
fn control(option: &str, pid: i32) -> Result<(), String> {
    let o = Command::new(CALLGRIND_CONTROL)
        .arg(option)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("{CALLGRIND_CONTROL}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{CALLGRIND_CONTROL} {option} {pid}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The instructions per counted request of the proxy `p` (run by callgrind, writing `out`)
/// on `port`; stops it.
fn measure(p: Guarded, port: u16, out: &Path, keep: Option<&Path>) -> Result<u64, String> {
    load(port, SMALL, CLIENTS, WARM)?;
    control("-z", p.pid())?;
    load(port, SMALL, CLIENTS, COUNTED)?;
    control("-d", p.pid())?;
    drop(p);
    // The first dump of `out` is `out.1`.
    let dump = PathBuf::from(format!("{}.1", out.display()));
    let text = std::fs::read_to_string(&dump).map_err(|e| format!("{}: {e}", dump.display()))?;
    let ir = summary(&text).ok_or_else(|| format!("{}: no summary line", dump.display()))?;
    if let (Some(k), Some(name)) = (keep, dump.file_name()) {
        let to = k.join(name);
        std::fs::copy(&dump, &to).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(ir / (CLIENTS * COUNTED) as u64)
}

/// The argv prefix that runs a proxy under callgrind, its dumps named after `out`.
fn valgrind(out: &Path) -> Vec<String> {
    vec![
        VALGRIND.to_string(),
        "--tool=callgrind".to_string(),
        // Each dump names its functions in full: by default a dump refers to names by number,
        // defined in the process's earlier dumps, which are not kept; callgrind_annotate then
        // puts every instruction under `clone`.
        "--compress-strings=no".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

/// Count `builds` (each a gateway binary) and nginx, in front of an engine that keeps its
/// connections alive when `keepalive`; one line each. With `keep`, each proxy's dump is copied
/// there (`gateway0.out.1` ... and `nginx.out.1`, for `callgrind_annotate`).
pub fn run(
    release: &Path,
    builds: &[PathBuf],
    keepalive: bool,
    keep: Option<&Path>,
) -> Result<String, String> {
    for tool in [VALGRIND, CALLGRIND_CONTROL, NGINX] {
        if !Path::new(tool).exists() {
            return Err(format!(
                "{tool} missing (apt-get install valgrind nginx-light)"
            ));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let mut taken = Vec::new();
    let mut port = || crate::procs::free_port(&mut taken);
    let engine = port()?;
    let _standin = start_standin(release, engine, keepalive)?;
    let mut lines = Vec::new();
    for (i, bin) in builds.iter().enumerate() {
        let out = d.join(format!("gateway{i}.out"));
        let p = port()?;
        eprintln!("citadel-gateway-bench: callgrind: {} ...", bin.display());
        let g = start_gateway(bin, d, &format!("g{i}"), p, engine, &valgrind(&out))?;
        lines.push((bin.display().to_string(), measure(g, p, &out, keep)?));
    }
    let out = d.join("nginx.out");
    let p = port()?;
    eprintln!("citadel-gateway-bench: callgrind: nginx ...");
    let n = start_nginx(d, engine, p, &valgrind(&out))?;
    lines.push((
        format!("nginx {}", crate::gateway::version(&[NGINX, "-v"])),
        measure(n, p, &out, keep)?,
    ));
    Ok(lines
        .iter()
        .map(|(name, ir)| {
            format!(
                "{name:<40} {ir:>7} instructions per request (user space, {} requests)\n",
                CLIENTS * COUNTED
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_the_count() {
        let text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 43912345\ntotals: 43912345\n";
        assert_eq!(summary(text), Some(43_912_345));
        assert_eq!(summary("events: Ir\n"), None);
    }

    #[test]
    fn a_kept_dump_names_its_functions() {
        let argv = valgrind(Path::new("/d/gateway0.out"));
        assert_eq!(argv[0], VALGRIND);
        assert!(
            argv.contains(&"--compress-strings=no".to_string()),
            "{argv:?}"
        );
        assert_eq!(argv.last().unwrap(), "--callgrind-out-file=/d/gateway0.out");
    }
}
