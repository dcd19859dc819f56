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
//!
//! `--segments`: where in a request those instructions are. One client (c=1, where every
//! instruction is on the request's path: each hop wakes the next and the woken process waits
//! for the CPU of the one that woke it), a dump before each `writev`, `sendmsg` and
//! `epoll_wait`, and each request cut into the four parts of [`SEGMENTS`] ([`cut`]).

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

/// The argv prefix that runs a proxy under callgrind, its dumps named after `out`; with
/// `segments`, a dump before each system call that [`cut`] cuts at.
fn valgrind(out: &Path, segments: bool) -> Vec<String> {
    let mut argv = vec![
        VALGRIND.to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    if segments {
        // Only each dump's count is read: the names stay compressed (thousands of dumps).
        argv.extend(CUT_AT.iter().map(|f| format!("--dump-before={f}")));
    } else {
        // Each dump names its functions in full: by default a dump refers to names by number,
        // defined in the process's earlier dumps, which are not kept; callgrind_annotate then
        // puts every instruction under `clone`.
        argv.push("--compress-strings=no".to_string());
    }
    argv
}

/// The functions (glibc's system call wrappers) a dump is taken before, with `--segments`.
/// Both proxies send with `writev`, to the engine and to the client; the gateway's first
/// write on an engine connection still connecting is a `sendmsg`. Their access log's `write`
/// is not cut at (nor is tokio's `write` to its eventfd).
const CUT_AT: [&str; 3] = ["writev", "sendmsg", "epoll_wait"];

/// The four parts of a proxied request, in order, at c=1.
pub const SEGMENTS: [&str; 4] = [
    "client's request read -> written to the engine",
    "written to the engine -> waiting for its answer",
    "engine's answer read -> written to the client",
    "written to the client -> waiting (the access log's line included)",
];

/// What ended a dump's stretch of instructions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Before {
    Write,
    Wait,
}

/// A dump's trigger and its count: `desc: Trigger: --dump-before=writev` and `summary: N`.
fn dump_of(text: &str) -> Option<(Before, u64)> {
    let trigger = text
        .lines()
        .find_map(|l| l.strip_prefix("desc: Trigger: --dump-before="))?;
    let before = match trigger.trim() {
        "writev" | "sendmsg" => Before::Write,
        "epoll_wait" => Before::Wait,
        _ => return None,
    };
    Some((before, summary(text)?))
}

/// Each whole request's instructions in the four [`SEGMENTS`], from the dumps in order, the
/// first of them taken after the proxy went to wait for a request (the caller waits for that).
/// A request's parts end, in turn, at a write (to the engine), a wait (for its answer), a
/// write (to the client) and a wait (for the next request); a dump that does not end its part
/// counts in it (a wait the proxy woke from for a timer while waiting for a request or an
/// answer, or a runtime's look at its events between two tasks). A last request cut short is
/// left out.
fn cut(dumps: &[(Before, u64)]) -> Vec<[u64; 4]> {
    const ENDS: [Before; 4] = [Before::Write, Before::Wait, Before::Write, Before::Wait];
    let mut out = Vec::new();
    let (mut part, mut cur) = (0, [0u64; 4]);
    for &(before, n) in dumps {
        cur[part] += n;
        if before == ENDS[part] {
            part += 1;
            if part == 4 {
                out.push(cur);
                (part, cur) = (0, [0; 4]);
            }
        }
    }
    out
}

/// Requests sent one at a time with `--segments`, before and while counting.
const SEGMENT_WARM: usize = 20;
const SEGMENT_COUNTED: usize = 100;

/// The median instructions of each segment over [`SEGMENT_COUNTED`] requests of one client to
/// the proxy `p` (run by callgrind with [`valgrind`]`(out, true)`) on `port`; stops it.
fn measure_segments(p: Guarded, port: u16, out: &Path) -> Result<[u64; 4], String> {
    let dumps_of = || -> Result<Vec<(u64, PathBuf)>, String> {
        let dir = out.parent().ok_or("no dump directory")?;
        let stem = format!(
            "{}.",
            out.file_name().ok_or("no dump name")?.to_string_lossy()
        );
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = e.map_err(|e| e.to_string())?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some(n) = name.and_then(|n| n.strip_prefix(&stem)?.parse().ok()) {
                v.push((n, path));
            }
        }
        v.sort();
        Ok(v)
    };
    load(port, SMALL, 1, SEGMENT_WARM)?;
    // The client has its answer; give the proxy (under valgrind) time to write its log line
    // and go back to waiting, so the next dump is the next request's first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = dumps_of()?.last().map_or(0, |d| d.0);
    load(port, SMALL, 1, SEGMENT_COUNTED)?;
    // The dump before the wait after the last answer may still be being written.
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(p);
    let mut dumps = Vec::new();
    for (_, path) in dumps_of()?.into_iter().filter(|d| d.0 > before) {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        dumps.push(
            dump_of(&text).ok_or_else(|| format!("{}: no trigger or summary", path.display()))?,
        );
    }
    // Each request is two sends, one to the engine and one to the client: any other count
    // (a send not cut at, or a second one) would shift the parts of every request after it.
    let writes = dumps.iter().filter(|d| d.0 == Before::Write).count();
    if writes != 2 * SEGMENT_COUNTED {
        return Err(format!(
            "{}: {writes} sends counted for {SEGMENT_COUNTED} requests, not two each",
            out.display()
        ));
    }
    let requests = cut(&dumps);
    if requests.len() + 1 < SEGMENT_COUNTED {
        return Err(format!(
            "{}: {} requests cut from {} dumps, {SEGMENT_COUNTED} sent",
            out.display(),
            requests.len(),
            dumps.len()
        ));
    }
    let median = |i: usize| {
        let mut v: Vec<u64> = requests.iter().map(|r| r[i]).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    Ok([median(0), median(1), median(2), median(3)])
}

/// Count `builds` (each a gateway binary) and nginx, in front of an engine that keeps its
/// connections alive when `keepalive`: one line each, or with `segments` one table of each
/// request's parts. With `keep`, each proxy's dump is copied there (`gateway0.out.1` ... and
/// `nginx.out.1`, for `callgrind_annotate`).
pub fn run(
    release: &Path,
    builds: &[PathBuf],
    keepalive: bool,
    keep: Option<&Path>,
    segments: bool,
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
    if let Some(k) = keep {
        std::fs::create_dir_all(k).map_err(|e| format!("--keep {}: {e}", k.display()))?;
    }
    let _standin = start_standin(release, engine, keepalive)?;
    // Each build, then nginx: its name, and its counts (one, or the four parts).
    let mut counted: Vec<(String, Vec<u64>)> = Vec::new();
    for i in 0..=builds.len() {
        let name = builds
            .get(i)
            .map_or("nginx".into(), |_| format!("gateway{i}"));
        // A directory of its own: `--segments` reads every dump in it.
        std::fs::create_dir_all(d.join(&name)).map_err(|e| e.to_string())?;
        let out = d.join(&name).join(format!("{name}.out"));
        let p = port()?;
        let wrap = valgrind(&out, segments);
        let (shown, proxy) = match builds.get(i) {
            Some(bin) => (
                bin.display().to_string(),
                start_gateway(bin, d, &format!("g{i}"), p, engine, &wrap),
            ),
            None => (
                format!("nginx {}", crate::gateway::version(&[NGINX, "-v"])),
                start_nginx(d, engine, p, &wrap),
            ),
        };
        eprintln!("citadel-gateway-bench: callgrind: {shown} ...");
        let figures = if segments {
            measure_segments(proxy?, p, &out)?.to_vec()
        } else {
            vec![measure(proxy?, p, &out, keep)?]
        };
        counted.push((shown, figures));
    }
    if segments {
        return Ok(segment_table(&counted));
    }
    Ok(counted
        .iter()
        .map(|(name, ir)| {
            format!(
                "{name:<40} {:>7} instructions per request (user space, {} requests)\n",
                ir[0],
                CLIENTS * COUNTED
            )
        })
        .collect())
}

/// The parts of each gateway build's requests beside nginx's (the last of `counted`), with
/// each build's ratio to nginx.
fn segment_table(counted: &[(String, Vec<u64>)]) -> String {
    let (builds, [(nginx_name, nginx)]) = counted.split_at(counted.len() - 1) else {
        unreachable!("nginx is always measured")
    };
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", a as f64 / b as f64)
        }
    };
    let mut head = vec!["part".to_string()];
    for (name, _) in builds {
        head.extend([name.clone(), "/ nginx".into()]);
    }
    head.push(nginx_name.clone());
    let mut rows = vec![head];
    // Each proxy's four parts and their sum.
    let with_total = |v: &[u64]| [v.to_vec(), vec![v.iter().sum()]].concat();
    let nginx = with_total(nginx);
    let builds: Vec<Vec<u64>> = builds.iter().map(|(_, b)| with_total(b)).collect();
    for (i, what) in SEGMENTS.iter().chain(&["whole request"]).enumerate() {
        let mut r = vec![what.to_string()];
        for b in &builds {
            r.extend([b[i].to_string(), ratio(b[i], nginx[i])]);
        }
        r.push(nginx[i].to_string());
        rows.push(r);
    }
    format!(
        "User-space instructions of one request at c=1, by part (median of {SEGMENT_COUNTED} requests):\n\n{}",
        crate::report::md_table(&rows)
    )
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
    fn a_dump_is_its_trigger_and_count() {
        let text = "desc: Trigger: --dump-before=writev\nevents: Ir\nsummary: 17026\n";
        assert_eq!(dump_of(text), Some((Before::Write, 17026)));
        let text = "desc: Trigger: --dump-before=epoll_wait\nsummary: 3792\n";
        assert_eq!(dump_of(text), Some((Before::Wait, 3792)));
        assert_eq!(
            dump_of("desc: Trigger: --dump-before=write\nsummary: 3\n"),
            None
        );
        // The dump callgrind_control asks for, and one without a count, are not a segment's.
        assert_eq!(
            dump_of("desc: Trigger: Client Request: dump\nsummary: 5\n"),
            None
        );
        assert_eq!(dump_of("desc: Trigger: --dump-before=writev\n"), None);
    }

    #[test]
    fn requests_are_cut_at_their_writes_and_waits() {
        use Before::{Wait, Write};
        // The gateway's (recorded by hand): two writes and two waits a request.
        let gw = [
            (Write, 17189),
            (Wait, 3641),
            (Write, 14320),
            (Wait, 6975),
            (Wait, 400), // woken for a timer while waiting for the next request
            (Write, 17013),
            (Wait, 3791),
            (Write, 14235),
            (Wait, 7010),
            (Write, 17026), // cut short: left out
        ];
        assert_eq!(
            cut(&gw),
            vec![[17189, 3641, 14320, 6975], [17413, 3791, 14235, 7010]]
        );
        // nginx's.
        let nginx = [(Write, 11303), (Wait, 755), (Write, 6172), (Wait, 4763)];
        assert_eq!(cut(&nginx), vec![[11303, 755, 6172, 4763]]);
        assert_eq!(cut(&[(Write, 1), (Wait, 2)]), Vec::<[u64; 4]>::new());
    }

    #[test]
    fn the_segment_table_puts_each_build_beside_nginx() {
        let t = segment_table(&[
            ("gw".into(), vec![20, 4, 14, 7]),
            ("nginx".into(), vec![10, 1, 7, 5]),
        ]);
        assert!(t.contains("| part | gw | / nginx | nginx |"), "{t}");
        assert!(
            t.contains(&format!("| {} | 20 | 2.00 | 10 |", SEGMENTS[0])),
            "{t}"
        );
        assert!(t.contains("| whole request | 45 | 1.96 | 23 |"), "{t}");
    }

    #[test]
    fn a_kept_dump_names_its_functions() {
        let argv = valgrind(Path::new("/d/gateway0.out"), false);
        assert_eq!(argv[0], VALGRIND);
        assert!(
            argv.contains(&"--compress-strings=no".to_string()),
            "{argv:?}"
        );
        assert!(argv.contains(&"--callgrind-out-file=/d/gateway0.out".to_string()));
        let argv = valgrind(Path::new("/d/gateway0.out"), true);
        for f in ["writev", "sendmsg", "epoll_wait"] {
            assert!(argv.contains(&format!("--dump-before={f}")), "{argv:?}");
        }
    }
}
