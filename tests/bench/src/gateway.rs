//! The gateway benchmark (issue 15): one stand-in engine on loopback, reached four ways in one
//! run: straight, through citadel-gateway, through Debian's nginx (`proxy_pass`, keep-alive
//! upstream) and through the LiteLLM proxy (its own venv under /var/cache, installed only for
//! this). Per path: latency of a small non-streamed completion at concurrency 1 and 64 (added
//! latency = path minus straight), throughput at 64, streaming time to first byte; then the
//! gateway's RSS with 1,000 idle keep-alive clients. Clients keep their connection alive
//! where the server allows it. The stand-in closes its connection after every answer, unless
//! `--engine-keepalive`: then it keeps them (`STANDIN_KEEPALIVE=1`, as vLLM's uvicorn does), so
//! the proxies reuse their engine connections; each of the four kinds of run (scheduling x
//! engine connections) keeps its own block in BENCHMARKS.md.
//!
//! Method: the four paths are measured in [`ROUNDS`] interleaved rounds (each round measures
//! every path with a twelfth of the requests, in an [`order`] that changes from round to round
//! so that no path always comes first or after the same one; the samples of all rounds are
//! pooled), so a change of the machine's load during the run weighs on every path alike. By
//! default the bench runs under `SCHED_FIFO` priority 10, inherited by every server it starts,
//! so that other work on a shared machine does not preempt the measured processes (a
//! preemption costs one scheduler tick, 4 ms at HZ=250: the size of the figures themselves);
//! `--no-rt` measures under normal scheduling. `--ab OTHER_BUILD` measures a second gateway
//! binary in the same rounds instead of LiteLLM and prints both builds' figures and their
//! ratios to nginx's, writing nothing: how a change to the request path is judged on a machine
//! whose load moves between runs.
//! `--callgrind [BUILD ...]` counts instructions per request instead ([`crate::callgrind`]),
//! with `--engine-keepalive` too.
//!
//! Over 500 lines as one concern: one benchmark's rig (four servers), client, rounds and report.

use crate::procs::{wait_port, Guarded, Standin};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const LITELLM_VENV: &str = "/var/cache/citadel-bench/litellm";
pub const NGINX: &str = "/usr/sbin/nginx";

/// One way to reach the engine.
#[derive(Debug, Clone)]
pub struct Path4 {
    pub name: &'static str,
    pub port: u16,
    /// The proxy's process (its CPU time is counted with its descendants'); none when straight.
    pub proxy_pid: Option<i32>,
    /// A hundred times slower than the others (LiteLLM): fewer samples ([`per_run`]).
    pub slow: bool,
}

/// A keep-alive HTTP/1.1 client connection that reconnects when the server closed it.
struct Conn {
    port: u16,
    r: Option<BufReader<TcpStream>>,
}

/// One answer: status, time to the first body byte, total time.
pub struct Timing {
    pub status: u16,
    pub first_byte: Duration,
    pub total: Duration,
}

impl Conn {
    fn new(port: u16) -> Conn {
        Conn { port, r: None }
    }

    fn stream(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.r.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.r = Some(BufReader::new(s));
        }
        Ok(self.r.as_mut().expect("just set"))
    }

    /// POST `path` with `body`; reads the whole answer.
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<Timing> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench-0123456789abcdef\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t0 = Instant::now();
        let r = self.stream()?;
        if r.get_mut().write_all(req.as_bytes()).is_err() {
            // A kept-alive connection the server closed meanwhile: once more on a new one.
            self.r = None;
            let r = self.stream()?;
            r.get_mut().write_all(req.as_bytes())?;
        }
        let r = self.r.as_mut().expect("connected");
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            self.r = None;
            return self.post(path, body);
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut len, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => len = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
        let mut first = None;
        let mark = |first: &mut Option<Duration>| {
            if first.is_none() {
                *first = Some(t0.elapsed());
            }
        };
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                mark(&mut first);
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf)?;
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = len {
            let mut buf = vec![0u8; n];
            if n > 0 {
                r.read_exact(&mut buf[..1])?;
                mark(&mut first);
                r.read_exact(&mut buf[1..])?;
            }
        } else {
            let mut buf = Vec::new();
            let mut one = [0u8; 1];
            if r.read(&mut one)? > 0 {
                mark(&mut first);
                r.read_to_end(&mut buf)?;
            }
            close = true;
        }
        if close {
            self.r = None;
        }
        let total = t0.elapsed();
        Ok(Timing {
            status,
            first_byte: first.unwrap_or(total),
            total,
        })
    }
}

pub const SMALL: &str = r#"{"model":"bench","prompt":"hello world","max_tokens":4}"#;
pub const STREAM: &str = r#"{"model":"bench","prompt":"hello world","max_tokens":4,"stream":true}"#;

/// Latencies (ms) of `n` requests from each of `c` clients, and the wall time.
pub fn load(port: u16, body: &str, c: usize, n: usize) -> Result<(Vec<f64>, Duration), String> {
    let t0 = Instant::now();
    let results: Vec<Result<Vec<f64>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..c)
            .map(|_| {
                s.spawn(move || {
                    let mut conn = Conn::new(port);
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = conn
                            .post("/v1/completions", body)
                            .map_err(|e| e.to_string())?;
                        if t.status != 200 {
                            return Err(format!("HTTP {}", t.status));
                        }
                        v.push(t.total.as_secs_f64() * 1000.0);
                    }
                    Ok(v)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panic".into())))
            .collect()
    });
    let took = t0.elapsed();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all, took))
}

/// Time to first byte (ms) of `n` streamed completions, one client.
pub fn ttfb(port: u16, n: usize) -> Result<Vec<f64>, String> {
    let mut conn = Conn::new(port);
    (0..n)
        .map(|_| {
            let t = conn
                .post("/v1/completions", STREAM)
                .map_err(|e| e.to_string())?;
            if t.status != 200 {
                return Err(format!("HTTP {}", t.status));
            }
            Ok(t.first_byte.as_secs_f64() * 1000.0)
        })
        .collect()
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

/// `c` with no input and its output dropped.
fn quiet(mut c: Command) -> Command {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Everything one run starts; all killed when dropped.
pub struct Rig {
    pub paths: Vec<Path4>,
    pub gateway_pid: i32,
    _procs: Vec<Guarded>,
    _engine: Standin,
    _dir: tempfile::TempDir,
}

/// Start the stand-in (keeping its connections alive when `keepalive`), the gateway, nginx and
/// LiteLLM on free loopback ports; with `other` (a second gateway build, `--ab`) that build
/// instead of LiteLLM.
pub fn rig(release: &Path, other: Option<&Path>, keepalive: bool) -> Result<Rig, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let mut taken = Vec::new();
    let mut port = || crate::procs::free_port(&mut taken);
    let engine = port()?;
    let standin = start_standin(release, engine, keepalive)?;
    let mut procs = Vec::new();
    // citadel-gateway, as shipped (access log on, to the journal here: /dev/null).
    let gw = port()?;
    let g = start_gateway(&release.join("citadel-gateway"), d, "a", gw, engine, &[])?;
    let gateway_pid = g.pid();
    procs.push(g);
    // The build it is compared with (`--ab`), started the same way.
    let other = match other {
        Some(bin) => {
            let p = port()?;
            let g = start_gateway(bin, d, "b", p, engine, &[])?;
            let pid = g.pid();
            procs.push(g);
            Some((p, pid))
        }
        None => None,
    };
    let ngx = port()?;
    let n = start_nginx(d, engine, ngx, &[])?;
    let nginx_pid = n.pid();
    procs.push(n);
    let mut paths = vec![
        Path4 {
            name: "straight to the engine",
            port: engine,
            proxy_pid: None,
            slow: false,
        },
        Path4 {
            name: "citadel-gateway",
            port: gw,
            proxy_pid: Some(gateway_pid),
            slow: false,
        },
        Path4 {
            name: "nginx",
            port: ngx,
            proxy_pid: Some(nginx_pid),
            slow: false,
        },
    ];
    match other {
        Some((port, pid)) => paths.insert(
            2,
            Path4 {
                name: "citadel-gateway (--ab build)",
                port,
                proxy_pid: Some(pid),
                slow: false,
            },
        ),
        None => paths.push(litellm(d, engine, port()?, &mut procs)?),
    }
    Ok(Rig {
        paths,
        gateway_pid,
        _procs: procs,
        _engine: standin,
        _dir: dir,
    })
}

/// LiteLLM: one model, openai-compatible, pointed at the engine; no telemetry, no fetches.
fn litellm(d: &Path, engine: u16, lite: u16, procs: &mut Vec<Guarded>) -> Result<Path4, String> {
    let litellm = PathBuf::from(LITELLM_VENV).join("bin/litellm");
    if !litellm.exists() {
        return Err(format!(
            "{} missing (python3 -m venv {LITELLM_VENV} && {LITELLM_VENV}/bin/pip install 'litellm[proxy]')",
            litellm.display()
        ));
    }
    let lcfg = d.join("litellm.yaml");
    std::fs::write(
        &lcfg,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n      api_base: http://127.0.0.1:{engine}/v1\n      api_key: none\nlitellm_settings:\n  telemetry: false\n  set_verbose: false\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut c = Command::new(&litellm);
    c.arg("--config")
        .arg(&lcfg)
        .args(["--host", "127.0.0.1", "--port", &lite.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        // The key every benchmark client sends (LiteLLM refuses to start without one).
        .env("LITELLM_MASTER_KEY", "sk-bench-0123456789abcdef")
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOG", "ERROR");
    let l = Guarded::spawn(quiet(c))?;
    let litellm_pid = l.pid();
    procs.push(l);
    wait_port(lite, Duration::from_secs(180))?;
    Ok(Path4 {
        name: "LiteLLM proxy",
        port: lite,
        proxy_pid: Some(litellm_pid),
        slow: true,
    })
}

/// `bin` as it is, or run by `wrap` (`--callgrind`: valgrind and its options).
fn command(wrap: &[String], bin: &Path) -> Command {
    match wrap.split_first() {
        None => Command::new(bin),
        Some((w, opts)) => {
            let mut c = Command::new(w);
            c.args(opts).arg(bin);
            c
        }
    }
}

/// How long a server may take to listen: valgrind takes seconds to start one.
fn start_limit(wrap: &[String]) -> Duration {
    Duration::from_secs(if wrap.is_empty() { 30 } else { 180 })
}

/// The engine: one stand-in on `engine`, answering at once, serving the model `bench`; it
/// keeps its connections alive when `keepalive`, else closes each after its answer.
pub(crate) fn start_standin(
    release: &Path,
    engine: u16,
    keepalive: bool,
) -> Result<Standin, String> {
    let knobs: &[(&str, &str)] = if keepalive {
        &[("STANDIN_KEEPALIVE", "1")]
    } else {
        &[]
    };
    Standin::start(&release.join("citadel-standin"), "bench", engine, knobs)
}

/// nginx on `port`: `proxy_pass` to the engine with a keep-alive upstream pool, its files in
/// `d`. A worker per core under a master; run by `wrap` (callgrind), one process doing both,
/// which is what callgrind follows.
pub(crate) fn start_nginx(
    d: &Path,
    engine: u16,
    port: u16,
    wrap: &[String],
) -> Result<Guarded, String> {
    if !Path::new(NGINX).exists() {
        return Err(format!("{NGINX} missing (apt-get install nginx)"));
    }
    let processes = if wrap.is_empty() {
        "worker_processes auto;"
    } else {
        "master_process off;\nworker_processes 1;"
    };
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\n{processes}\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  upstream engine {{ server 127.0.0.1:{engine}; keepalive 64; keepalive_timeout 4s; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://engine;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
            d = d.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut c = command(wrap, Path::new(NGINX));
    c.arg("-c").arg(&conf).arg("-p").arg(d);
    let n = Guarded::spawn(quiet(c))?;
    wait_port(port, start_limit(wrap))?;
    Ok(n)
}

/// A gateway build `bin` on `port` (config `NAME.toml` in `d`) in front of the engine, as
/// shipped; run by `wrap` when not empty.
pub(crate) fn start_gateway(
    bin: &Path,
    d: &Path,
    name: &str,
    port: u16,
    engine: u16,
    wrap: &[String],
) -> Result<Guarded, String> {
    let run = d.join(name);
    std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
    let cfg = d.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nruntime_dir = \"{}\"\n[gpu]\nrequired = false\n[gateway]\nlisten = \"127.0.0.1:{port}\"\n[models.bench]\npath = \"/nonexistent\"\nport = {engine}\ngpus = [0]\n",
            run.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut c = command(wrap, bin);
    c.arg("--config").arg(&cfg);
    let g = Guarded::spawn(quiet(c))?;
    wait_port(port, start_limit(wrap))?;
    Ok(g)
}

/// The gateway's RSS (KiB) before and with `n` idle keep-alive clients (each sent one request).
pub fn idle_rss(port: u16, pid: i32, n: usize) -> Result<(u64, u64), String> {
    let before = crate::procs::rss_kib(pid)?.0;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).map_err(|e| e.to_string())?;
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let with = crate::procs::rss_kib(pid)?.0;
    drop(held);
    Ok((before, with))
}

/// One path's figures (milliseconds, requests per second).
struct Figures {
    c1: (f64, f64),
    c64: (f64, f64),
    rps: f64,
    ttfb: f64,
    /// The proxy's CPU time per request (microseconds), over every measured request.
    cpu_us: Option<f64>,
}

/// Interleaved rounds: each measures every path with a twelfth of the requests. Twelve: a
/// whole number of [`order`]'s four orders, and enough rounds that a burst of other work on the
/// shared machine is spread over the paths (five until 2026-12-03, ten until 2026-12-08).
pub const ROUNDS: usize = 12;

/// The order in which round `round` measures `n` paths: a Williams design (a balanced Latin
/// square). Over `n` rounds (`n` even) each path is measured once in every place of the round
/// and follows every other path once. In one fixed order, what a path measured depended on
/// the path before it and on its place: the same gateway build in two places of one run
/// measured a c=1 p50 of 0.161 and 0.196 ms (2026-12-08, normal scheduling, keep-alive engine).
pub fn order(round: usize, n: usize) -> Vec<usize> {
    // 0, 1, n-1, 2, n-2, ...: the first row; each next row adds one to every entry.
    let first = (0..n).map(|j| {
        if j % 2 == 1 {
            j.div_ceil(2)
        } else {
            (n - j / 2) % n
        }
    });
    first.map(|w| (w + round) % n).collect()
}

/// The samples of one path, pooled over the rounds.
#[derive(Default)]
struct Samples {
    c1: Vec<f64>,
    c64: Vec<f64>,
    c64_time: Duration,
    ttfb: Vec<f64>,
    /// The proxy's CPU seconds during the measurements.
    cpu: f64,
}

impl Samples {
    /// One round: `n1` requests at c=1, `n64` per client at c=64, `ns` streamed.
    fn measure_round(
        &mut self,
        p: &Path4,
        (n1, n64, ns): (usize, usize, usize),
    ) -> Result<(), String> {
        let cpu = || p.proxy_pid.map_or(Ok(0.0), crate::procs::tree_cpu_secs);
        let before = cpu()?;
        self.c1.extend(load(p.port, SMALL, 1, n1)?.0);
        let (v, took) = load(p.port, SMALL, 64, n64)?;
        self.c64.extend(v);
        self.c64_time += took;
        self.ttfb.extend(ttfb(p.port, ns)?);
        self.cpu += cpu()? - before;
        Ok(())
    }

    fn figures(&self, proxied: bool) -> Figures {
        Figures {
            c1: (percentile(&self.c1, 50.0), percentile(&self.c1, 99.0)),
            c64: (percentile(&self.c64, 50.0), percentile(&self.c64, 99.0)),
            rps: self.c64.len() as f64 / self.c64_time.as_secs_f64(),
            ttfb: percentile(&self.ttfb, 50.0),
            cpu_us: proxied.then(|| {
                self.cpu * 1e6 / (self.c1.len() + self.c64.len() + self.ttfb.len()) as f64
            }),
        }
    }
}

/// Requests of a whole run (c=1, per client at c=64, streamed), each round a `ROUNDS`th of
/// them. A p99 needs thousands of samples to hold still; a `slow` path (LiteLLM, a hundred
/// times slower) gets a tenth, which its throughput figure does not need more than.
fn per_run(quick: bool, slow: bool) -> (usize, usize, usize) {
    match (quick, slow) {
        (true, _) => (120, 12, 60),
        (false, true) => (480, 48, 240),
        (false, false) => (4800, 120, 1200),
    }
}

fn per_round(quick: bool, slow: bool) -> (usize, usize, usize) {
    let (n1, n64, ns) = per_run(quick, slow);
    (n1 / ROUNDS, (n64 / ROUNDS).max(1), ns / ROUNDS)
}

/// `SCHED_FIFO` priority 10 for this process and what it starts from now on; the error when
/// the kernel refuses (no CAP_SYS_NICE, RT throttled to zero ...).
fn realtime() -> Result<(), String> {
    let p = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler reads one valid sched_param; pid 0 is this process.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// The markers of this kind of run's block in BENCHMARKS.md (scheduling x engine connections:
/// each keeps its own block).
fn markers(realtime: bool, keepalive: bool) -> (String, String) {
    let kind = format!(
        "{}{}",
        if realtime { "" } else { " --no-rt" },
        if keepalive { " --engine-keepalive" } else { "" }
    );
    (
        format!("<!-- citadel-gateway-bench{kind}: begin -->"),
        format!("<!-- citadel-gateway-bench{kind}: end -->"),
    )
}

/// `citadel-gateway-bench`'s command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "citadel-gateway-bench",
    version,
    about = "citadel-gateway against nginx and LiteLLM (issue 15): prints the table and writes it \
             into BENCHMARKS.md between this kind of run's markers (run as root: SCHED_FIFO \
             for the measured processes unless --no-rt)"
)]
pub struct Args {
    /// Fewer requests per path; the file says so.
    #[arg(long)]
    pub quick: bool,
    /// Normal scheduling, as the units run the gateway (RestrictRealtime=yes).
    #[arg(long)]
    pub no_rt: bool,
    /// The stand-in keeps its connections alive (`STANDIN_KEEPALIVE=1`), as vLLM's uvicorn
    /// does, so nginx and the gateway reuse their engine connections.
    #[arg(long)]
    pub engine_keepalive: bool,
    /// Where to write the table (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Measure this gateway build beside this tree's, in the same rounds, and print the two
    /// side by side; writes nothing. In the balanced order neither build has a better place
    /// (the same binary in both: c=1 p50 0.161 and 0.165 ms, 2026-12-08).
    #[arg(long, value_name = "BIN")]
    pub ab: Option<PathBuf>,
    /// Count user-space instructions per request under valgrind: each gateway build given
    /// (default this tree's) and nginx; prints them and writes nothing.
    #[arg(long, value_name = "BIN", num_args = 0..)]
    pub callgrind: Option<Vec<PathBuf>>,
    /// With --callgrind: keep each proxy's dump in DIR, for callgrind_annotate.
    #[arg(
        long,
        value_name = "DIR",
        requires = "callgrind",
        conflicts_with = "segments"
    )]
    pub keep: Option<PathBuf>,
    /// With --callgrind --engine-keepalive: one client, and each request's instructions cut
    /// into four parts at its system calls (request in -> engine, -> waiting, answer in ->
    /// client, -> waiting), each build's beside nginx's. (In front of an engine that closes,
    /// each request also connects, nginx waiting for the connect and the gateway not, and
    /// the parts do not line up.)
    #[arg(long, requires_all = ["callgrind", "engine_keepalive"])]
    pub segments: bool,
}

/// Run everything, print the table, write it into BENCHMARKS.md.
pub fn main() -> Result<(), String> {
    let args = <Args as clap::Parser>::parse();
    let ws = citadel_system_tests::citadel::workspace_root();
    let release = ws.join("target/release");
    let keepalive = args.engine_keepalive;
    if let Some(builds) = &args.callgrind {
        let mut builds = builds.clone();
        if builds.is_empty() {
            builds.push(release.join("citadel-gateway"));
        }
        print!(
            "{}",
            crate::callgrind::run(
                &release,
                &builds,
                keepalive,
                args.keep.as_deref(),
                args.segments
            )?
        );
        return Ok(());
    }
    let quick = args.quick;
    let (rt, scheduling) = if args.no_rt {
        (
            false,
            "normal scheduling (--no-rt), as the units run it (RestrictRealtime=yes)".to_string(),
        )
    } else {
        match realtime() {
            Ok(()) => (
                true,
                "SCHED_FIFO priority 10 for the bench and every server it starts (inherited)"
                    .to_string(),
            ),
            Err(e) => (
                false,
                format!("normal scheduling (SCHED_FIFO refused: {e})"),
            ),
        }
    };
    let (begin, end) = markers(rt, keepalive);
    eprintln!("citadel-gateway-bench: {scheduling}");
    let out = args.out.clone().unwrap_or_else(|| ws.join("BENCHMARKS.md"));
    let machine = crate::machine::Machine::probe(&ws);
    let load_before = crate::machine::loadavg();
    let ab = args.ab.clone();
    let rig = rig(&release, ab.as_deref(), keepalive)?;
    for p in &rig.paths {
        // Warm-up: connections, pools, caches.
        load(p.port, SMALL, 8, 25).map_err(|e| format!("{}: {e}", p.name))?;
    }
    let mut samples: Vec<Samples> = rig.paths.iter().map(|_| Samples::default()).collect();
    for round in 0..ROUNDS {
        for i in order(round, rig.paths.len()) {
            let (p, s) = (&rig.paths[i], &mut samples[i]);
            eprintln!(
                "citadel-gateway-bench: round {}/{ROUNDS}: {} ...",
                round + 1,
                p.name
            );
            s.measure_round(p, per_round(quick, p.slow))
                .map_err(|e| format!("{}: {e}", p.name))?;
        }
    }
    let figs: Vec<Figures> = rig
        .paths
        .iter()
        .zip(&samples)
        .map(|(p, s)| s.figures(p.proxy_pid.is_some()))
        .collect();
    if let Some(bin) = &ab {
        println!("{}", ab_table(&rig.paths, &figs, bin, &scheduling));
        return Ok(());
    }
    let (rss0, rss1000) = idle_rss(rig.paths[1].port, rig.gateway_pid, 1000)?;
    let load_after = crate::machine::loadavg();
    let base = &figs[0];
    let added = |f: &Figures| {
        (
            f.c1.0 - base.c1.0,
            f.c1.1 - base.c1.1,
            f.c64.0 - base.c64.0,
            f.c64.1 - base.c64.1,
        )
    };
    let mut rows = vec![[
        "path",
        "c=1 p50 / p99 (ms)",
        "added c=1 p50 / p99",
        "c=64 p50 / p99 (ms)",
        "added c=64 p50 / p99",
        "throughput c=64 (req/s)",
        "stream first byte p50 (ms)",
        "proxy CPU per request (µs)",
    ]
    .map(String::from)
    .to_vec()];
    for (p, f) in rig.paths.iter().zip(&figs) {
        let a = added(f);
        rows.push(vec![
            p.name.to_string(),
            format!("{:.2} / {:.2}", f.c1.0, f.c1.1),
            format!("{:+.2} / {:+.2}", a.0, a.1),
            format!("{:.1} / {:.1}", f.c64.0, f.c64.1),
            format!("{:+.1} / {:+.1}", a.2, a.3),
            format!("{:.0}", f.rps),
            format!("{:.2}", f.ttfb),
            f.cpu_us.map_or("-".to_string(), |c| format!("{c:.0}")),
        ]);
    }
    let t = crate::report::md_table(&rows);
    let (g, n, l) = (&figs[1], &figs[2], &figs[3]);
    let ratio = |x: f64, y: f64| if y.abs() < 1e-9 { f64::NAN } else { x / y };
    let (ga, na) = (added(g), added(n));
    let goal_latency =
        g.c1.0 <= n.c1.0 && g.c1.1 <= n.c1.1 && g.c64.0 <= n.c64.0 && g.c64.1 <= n.c64.1;
    let tput = ratio(g.rps, l.rps);
    let cores_commit = format!("{} cores, commit {}", machine.cores, machine.commit);
    let flags = [
        ("--quick", quick),
        ("--no-rt", !rt && args.no_rt),
        ("--engine-keepalive", keepalive),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .fold(String::new(), |acc, (f, _)| acc + " " + f);
    let mut md = format!(
        "{begin}\n## citadel-gateway vs nginx vs LiteLLM (issue 15), {}{}\n\n`target/release/citadel-gateway-bench{}` on {} ({}), {}; load average {} before, {} after. Scheduling: {scheduling}; the paths are measured in {ROUNDS} interleaved rounds, in an order that changes each round (each path in each place and after each other path equally often), and the samples pooled. One stand-in engine (`citadel-standin`, answers at once, {}) on loopback, reached four ways in one run; clients keep their connections alive where the server allows. Requests: a 4-token non-streamed completion; c=1: {} requests ({} through LiteLLM), c=64: 64 clients of {} requests each ({} through LiteLLM); stream: first body byte of a streamed completion. nginx {}: `proxy_pass`, `keepalive 64` upstream (`keepalive_timeout 4s`, under the engine's 5 s, as the gateway's pool), access log on; LiteLLM {}: `litellm --config` with one `openai/` model, telemetry off; citadel-gateway: shipped defaults (access log on).\n\n{t}\n",
        if rt { "SCHED_FIFO" } else { "normal scheduling" },
        if keepalive {
            ", engine keeps its connections alive"
        } else {
            ""
        },
        flags,
        machine.cpu,
        cores_commit,
        machine.date,
        load_before,
        load_after,
        if keepalive {
            "keeps its connections alive as vLLM's uvicorn does (`STANDIN_KEEPALIVE=1`), so nginx and the gateway reuse theirs"
        } else {
            "closes every connection"
        },
        per_run(quick, false).0,
        per_run(quick, true).0,
        per_run(quick, false).1,
        per_run(quick, true).1,
        version(&[NGINX, "-v"]),
        version(&[&format!("{LITELLM_VENV}/bin/pip"), "show", "litellm"]),
    );
    md.push_str(&format!(
        "Ratios: gateway / nginx latency c=1 p50 {:.2}, p99 {:.2}; c=64 p50 {:.2}, p99 {:.2} (added latency: gateway {:+.2} / {:+.2} ms, nginx {:+.2} / {:+.2} ms at c=1). Throughput: gateway / nginx {:.2}, gateway / LiteLLM **{:.1}x**. CPU per request: gateway / nginx {:.2}. Goal \"no slower than nginx at p50 and p99\": **{}**; goal \"at least 10x LiteLLM's throughput\": **{}**.\n\ncitadel-gateway RSS: {} KiB idle, {} KiB with 1,000 idle keep-alive clients ({:.1} KiB per connection).\n\nThe machine is shared (2 cores, other builds running: see the load average), so the absolute figures move between runs; the paths are measured in the same interleaved rounds, and the ratios are what to compare.\n{end}\n",
        ratio(g.c1.0, n.c1.0),
        ratio(g.c1.1, n.c1.1),
        ratio(g.c64.0, n.c64.0),
        ratio(g.c64.1, n.c64.1),
        ga.0, ga.1, na.0, na.1,
        ratio(g.rps, n.rps),
        tput,
        match (g.cpu_us, n.cpu_us) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => f64::NAN,
        },
        if goal_latency { "met" } else { "missed" },
        if tput >= 10.0 { "met" } else { "missed" },
        rss0,
        rss1000,
        (rss1000 as f64 - rss0 as f64) / 1000.0,
    ));
    println!("{md}");
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let new = splice(&old, &md, &begin, &end);
    std::fs::write(&out, new).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("citadel-gateway-bench: wrote {}", out.display());
    Ok(())
}

/// `--ab`: each path's figures and its ratios to nginx's (the last path), for comparing two
/// gateway builds in one run; not written anywhere.
fn ab_table(paths: &[Path4], figs: &[Figures], bin: &Path, scheduling: &str) -> String {
    let n = figs.last().expect("nginx is measured");
    let mut rows = vec![[
        "path",
        "c=1 p50 / p99 (ms)",
        "c=64 p50 / p99 (ms)",
        "req/s",
        "CPU/request (µs)",
        "/ nginx: c=1 p50, p99, c=64 p50, p99, CPU",
    ]
    .map(String::from)
    .to_vec()];
    let cpu = |f: &Figures| f.cpu_us.unwrap_or(f64::NAN);
    for (p, f) in paths.iter().zip(figs) {
        rows.push(vec![
            p.name.to_string(),
            format!("{:.3} / {:.3}", f.c1.0, f.c1.1),
            format!("{:.2} / {:.2}", f.c64.0, f.c64.1),
            format!("{:.0}", f.rps),
            format!("{:.0}", cpu(f)),
            format!(
                "{:.2} {:.2} {:.2} {:.2} {:.2}",
                f.c1.0 / n.c1.0,
                f.c1.1 / n.c1.1,
                f.c64.0 / n.c64.0,
                f.c64.1 / n.c64.1,
                cpu(f) / cpu(n)
            ),
        ]);
    }
    format!(
        "A/B, {scheduling}: this tree's gateway against {}\n{}",
        bin.display(),
        crate::report::md_table(&rows)
    )
}

/// `doc` with its block between `begin` and `end` replaced by `block` (which carries both
/// markers), or `block` appended when there is none.
fn splice(doc: &str, block: &str, begin: &str, end: &str) -> String {
    match (doc.find(begin), doc.find(end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &doc[..a], block.trim_end(), &doc[b + end.len()..])
        }
        _ => format!("{}\n{block}", doc.trim_end()),
    }
}

pub(crate) fn version(argv: &[&str]) -> String {
    let o = Command::new(argv[0]).args(&argv[1..]).output();
    match o {
        Ok(o) => {
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.lines()
                .find_map(|l| {
                    l.strip_prefix("Version: ")
                        .or_else(|| l.split_once("nginx/").map(|(_, v)| v))
                })
                .unwrap_or("?")
                .trim()
                .to_string()
        }
        Err(_) => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_run_keeps_its_own_block() {
        let (fb, fe) = markers(true, false);
        let (nb, ne) = markers(false, false);
        // The blocks already in BENCHMARKS.md keep their markers.
        assert_eq!(fb, "<!-- citadel-gateway-bench: begin -->");
        assert_eq!(ne, "<!-- citadel-gateway-bench --no-rt: end -->");
        let (kb, ke) = markers(false, true);
        assert_eq!(
            kb,
            "<!-- citadel-gateway-bench --no-rt --engine-keepalive: begin -->"
        );
        let doc = format!("# B\n{fb}\nfifo 1\n{fe}\ntail\n");
        let doc = splice(&doc, &format!("{nb}\nnormal 1\n{ne}\n"), &nb, &ne);
        assert!(doc.contains("fifo 1") && doc.contains("normal 1"), "{doc}");
        let doc = splice(&doc, &format!("{kb}\nkept 1\n{ke}\n"), &kb, &ke);
        let doc = splice(&doc, &format!("{fb}\nfifo 2\n{fe}\n"), &fb, &fe);
        assert!(!doc.contains("fifo 1") && doc.contains("fifo 2") && doc.contains("normal 1"));
        assert!(doc.contains("kept 1") && doc.contains("tail"), "{doc}");
        let doc = splice(&doc, &format!("{kb}\nkept 2\n{ke}\n"), &kb, &ke);
        assert!(!doc.contains("kept 1") && doc.contains("kept 2") && doc.contains("normal 1"));
    }

    #[test]
    fn the_command_line_takes_the_documented_flags_and_refuses_others() {
        let parse = |a: &[&str]| {
            <Args as clap::Parser>::try_parse_from(
                std::iter::once("citadel-gateway-bench").chain(a.iter().copied()),
            )
        };
        let a = parse(&[
            "--no-rt",
            "--engine-keepalive",
            "--ab",
            "/x/gw",
            "--out",
            "/x/B.md",
        ])
        .unwrap();
        assert!(a.no_rt && a.engine_keepalive && !a.quick && a.callgrind.is_none());
        assert_eq!(a.ab, Some(PathBuf::from("/x/gw")));
        assert_eq!(a.out, Some(PathBuf::from("/x/B.md")));
        // --callgrind with no build measures this tree's; builds end at the next flag.
        let a = parse(&["--callgrind", "--keep", "/d"]).unwrap();
        assert_eq!(a.callgrind, Some(vec![]));
        assert_eq!(a.keep, Some(PathBuf::from("/d")));
        let a = parse(&["--callgrind", "/a", "/b", "--engine-keepalive"]).unwrap();
        assert_eq!(
            a.callgrind,
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
        assert!(a.engine_keepalive);
        // A flag without its path, --keep without --callgrind and an unknown flag are refused,
        // and --help prints the flags: none of them starts a ten-minute run.
        let a = parse(&["--callgrind", "--segments", "--engine-keepalive"]).unwrap();
        assert!(a.segments);
        for bad in [
            &["--ab"][..],
            &["--keep", "/d"],
            &["--segments"],
            &["--callgrind", "--segments"],
            &[
                "--callgrind",
                "--segments",
                "--engine-keepalive",
                "--keep",
                "/d",
            ],
            &["--no-rtt"],
            &["--help"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn over_four_rounds_each_path_takes_each_place_once_and_follows_each_other_once() {
        let n = 4;
        let rows: Vec<Vec<usize>> = (0..n).map(|r| order(r, n)).collect();
        assert_eq!(rows[0], [0, 1, 3, 2]);
        for place in 0..n {
            let mut at: Vec<usize> = rows.iter().map(|r| r[place]).collect();
            at.sort_unstable();
            assert_eq!(at, [0, 1, 2, 3], "place {place}: {rows:?}");
        }
        let mut pairs: Vec<(usize, usize)> = rows
            .iter()
            .flat_map(|r| r.windows(2).map(|w| (w[0], w[1])))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(
            pairs.len(),
            n * (n - 1),
            "every ordered pair once: {rows:?}"
        );
        assert_eq!(ROUNDS % n, 0, "whole orders only");
        // The rounds after the first n repeat them.
        assert_eq!(order(n + 1, n), rows[1]);
    }

    #[test]
    fn a_slow_path_gets_fewer_samples_and_every_round_some() {
        assert!(per_run(false, false).0 > per_run(false, true).0);
        for (q, s) in [(true, true), (true, false), (false, true), (false, false)] {
            let (a, b, c) = per_round(q, s);
            assert!(a > 0 && b > 0 && c > 0);
        }
    }
}
