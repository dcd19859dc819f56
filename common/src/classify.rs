//! Why did the engine fail: the engine's output (stdout and stderr, merged in arrival order)
//! classified into a short list of causes, each with one actionable line.
//!
//! Every pattern below comes from real vLLM 0.33 output: the ones the CPU build produces here
//! were captured from real runs (`common/data/incidents/*.log`, see `README.md` there); the
//! GPU-only ones quote the line of vLLM's, PyTorch's or NCCL's source that prints them, and each
//! has a fixture line in `common/data/incidents/gpu-only.txt`. The first matching rule in
//! [`RULES`] order wins: the order puts root causes before their follow-on errors (an NCCL
//! error after an OOM is the OOM; "Engine core initialization failed. See root cause above" is
//! never a cause).
//!
//! Over 500 lines as one concern: the rule table ([`RULES`]), in the order that decides, and the
//! matcher that walks it; tests are in `classify/tests.rs`.

use serde::{Deserialize, Serialize};

/// The causes an incident can be classified as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// CUDA out of memory while loading or serving.
    GpuOom,
    /// Not enough free GPU memory for `gpu_memory_utilization`: another process holds it.
    GpuMemoryHeld,
    /// `max_model_len` larger than the model or the KV cache allows.
    MaxModelLen,
    /// Model directory, config or weights missing or incomplete.
    ModelFiles,
    /// An engine argument vLLM does not accept.
    BadArguments,
    /// The HTTP port is taken.
    PortInUse,
    /// The model ships its own code and needs `--trust-remote-code`.
    TrustRemoteCode,
    /// NCCL / tensor-parallel communication failed.
    Nccl,
    /// The NVIDIA driver and the CUDA runtime do not match (or no driver).
    CudaDriver,
    /// The kernel's OOM killer killed the engine.
    OomKilled,
    /// A GPU fault (Xid, ECC, fell off the bus) on one of the model's GPUs.
    GpuFault,
    /// The load took longer than `load_timeout_secs`.
    LoadTimeout,
    /// The engine stopped answering while its process kept running (found by the monitor).
    Unresponsive,
    /// None of the above: read the excerpt.
    Unknown,
}

impl Class {
    pub const ALL: &'static [Class] = &[
        Class::GpuOom,
        Class::GpuMemoryHeld,
        Class::MaxModelLen,
        Class::ModelFiles,
        Class::BadArguments,
        Class::PortInUse,
        Class::TrustRemoteCode,
        Class::Nccl,
        Class::CudaDriver,
        Class::OomKilled,
        Class::GpuFault,
        Class::LoadTimeout,
        Class::Unresponsive,
        Class::Unknown,
    ];

    /// The snake_case name (JSON, alert labels, `why`).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::GpuOom => "gpu_oom",
            Class::GpuMemoryHeld => "gpu_memory_held",
            Class::MaxModelLen => "max_model_len",
            Class::ModelFiles => "model_files",
            Class::BadArguments => "bad_arguments",
            Class::PortInUse => "port_in_use",
            Class::TrustRemoteCode => "trust_remote_code",
            Class::Nccl => "nccl",
            Class::CudaDriver => "cuda_driver",
            Class::OomKilled => "oom_killed",
            Class::GpuFault => "gpu_fault",
            Class::LoadTimeout => "load_timeout",
            Class::Unresponsive => "unresponsive",
            Class::Unknown => "unknown",
        }
    }

    /// A few words for people.
    pub fn title(self) -> &'static str {
        match self {
            Class::GpuOom => "GPU out of memory",
            Class::GpuMemoryHeld => "not enough free GPU memory for gpu_memory_utilization",
            Class::MaxModelLen => "max_model_len too large",
            Class::ModelFiles => "model files missing or incomplete",
            Class::BadArguments => "engine arguments rejected",
            Class::PortInUse => "port in use",
            Class::TrustRemoteCode => "model needs trust-remote-code",
            Class::Nccl => "NCCL / tensor-parallel failure",
            Class::CudaDriver => "CUDA driver / runtime mismatch",
            Class::OomKilled => "killed by the kernel OOM killer",
            Class::GpuFault => "GPU fault",
            Class::LoadTimeout => "load timed out",
            Class::Unresponsive => "engine unresponsive",
            Class::Unknown => "unknown cause",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the classifier knows besides the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The model's name (for `models.NAME.KEY` in the fix line).
    pub model: String,
    /// The model's port.
    pub port: Option<u16>,
    /// Other processes on the model's GPUs, e.g. `PID 4242 (python3 on GPU 0, 30.0 GiB, citadel-model@coder.service)`.
    pub gpu_holders: Vec<String>,
    /// OOM kills the kernel counted in the model's cgroup during this run.
    pub oom_kills: u64,
    /// The engine was killed by a SIGKILL that start-model did not send.
    pub sigkilled: bool,
    /// start-model gave up waiting for the load.
    pub load_timed_out: bool,
}

/// The verdict: the class, one line saying what happened (from the engine's own words), one
/// line saying what to do, and the index of the line that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub class: Class,
    pub summary: String,
    pub fix: String,
    /// Index into the classified lines of the evidence, when a line decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// One rule: the class, needles any of which marks the line (all lower-case, matched against
/// the lower-cased line), and how to word the verdict from the matching line.
pub struct Rule {
    pub class: Class,
    pub needles: &'static [&'static str],
    /// Lines containing any of these never match (follow-on noise).
    pub unless: &'static [&'static str],
}

/// The rules, root causes first.
pub const RULES: &[Rule] = &[
    // --- CUDA driver / runtime mismatch (GPU only) ---
    // PyTorch c10/cuda/CUDAFunctions.cpp:
    //   "The NVIDIA driver on your system is too old (found version ", driver_version, "). Please
    //    update your GPU driver by downloading and installing a new version from the URL: ..."
    // CUDA runtime (cudaErrorInsufficientDriver, 35):
    //   "CUDA driver version is insufficient for CUDA runtime version"
    // CUDA runtime (cudaErrorSystemDriverMismatch, 803), as PyTorch's cudaGetDeviceCount warning:
    //   "Error 803: system has unsupported display driver / cuda driver combination"
    // PyTorch c10/cuda/CUDAFunctions.cpp: "Found no NVIDIA driver on your system. Please check
    //   that you have an NVIDIA GPU and installed a driver from ..."
    Rule {
        class: Class::CudaDriver,
        needles: &[
            "nvidia driver on your system is too old",
            "cuda driver version is insufficient for cuda runtime version",
            "unsupported display driver / cuda driver combination",
            "found no nvidia driver on your system",
            "cudaerrorinsufficientdriver",
        ],
        unless: &[],
    },
    // --- Free memory below the requested share (GPU only) ---
    // vllm/v1/worker/utils.py (0.33.0) request_memory():
    //   f"Free memory on device {init_snapshot.device_} "
    //   f"({format_gib(init_snapshot.free_memory)}/"
    //   f"{format_gib(init_snapshot.total_memory)} GiB) on startup "
    //   f"is less than desired GPU memory utilization "
    //   f"({cache_config.gpu_memory_utilization}, "
    //   f"{format_gib(requested_memory)} GiB). Decrease GPU memory "
    //   f"utilization or reduce GPU memory used by other processes."
    Rule {
        class: Class::GpuMemoryHeld,
        needles: &["on startup is less than desired gpu memory utilization"],
        unless: &[],
    },
    // --- max_model_len (CPU build reproduces both) ---
    // vllm/v1/core/kv_cache_planning.py _check_enough_kv_cache_memory():
    //   f"To serve at least one request with the model's max seq len "
    //   f"({max_model_len}), ({format_gib(needed_memory)} GiB KV "
    //   f"cache is needed, which is larger than the available KV cache "
    //   f"memory ({format_gib(available_memory)} GiB). {estimated_msg}"
    //   where estimated_msg = f"the estimated maximum model length is {estimated_max_len}. "
    // vllm/config/model.py: f"User-specified max_model_len ({max_model_len}) is greater "
    //   f"than the derived max_model_len ({max_len_key}={derived_max_model_len} ..."
    Rule {
        class: Class::MaxModelLen,
        needles: &[
            "to serve at least one request with the model's max seq len",
            "is greater than the derived max_model_len",
            "no available memory for the cache blocks",
        ],
        unless: &[],
    },
    // --- CUDA OOM (GPU only) ---
    // PyTorch c10/cuda/CUDACachingAllocator.cpp raises torch.OutOfMemoryError:
    //   "CUDA out of memory. Tried to allocate 350.00 MiB. GPU 0 has a total capacity of
    //    23.68 GiB of which 212.81 MiB is free. ..." (vllm-project/vllm#16343, #12030)
    // CUDA runtime cudaErrorMemoryAllocation through a kernel launch:
    //   "RuntimeError: CUDA error: out of memory"
    Rule {
        class: Class::GpuOom,
        needles: &[
            "cuda out of memory",
            "cuda error: out of memory",
            "outofmemoryerror",
        ],
        unless: &[],
    },
    // --- trust-remote-code (CPU build reproduces it) ---
    // transformers dynamic_module_utils.resolve_trust_remote_code():
    //   "The repository {model_name} contains custom code which must be executed to correctly
    //    load the model. ... Please pass the argument `trust_remote_code=True` to allow custom
    //    code to be run."
    Rule {
        class: Class::TrustRemoteCode,
        needles: &[
            "contains custom code which must be executed",
            "trust_remote_code=true",
            "set the option `trust_remote_code=true`",
        ],
        unless: &[],
    },
    // --- model files (CPU build reproduces them) ---
    Rule {
        class: Class::ModelFiles,
        needles: &[
            "does not appear to have a file named",
            "no such file or directory",
            "cannot find any model weights",
            "repo id must be in the form",
            "repository not found",
            "is not a local folder and is not a valid model identifier",
            "incomplete metadata, file not fully covered",
            "safetensorerror",
            "error while deserializing header",
            "invalid repository id",
            "can't load the configuration of",
            "unrecognized model in",
        ],
        unless: &["libnuma", "python.h", ".so."],
    },
    // --- bad arguments (CPU build reproduces it) ---
    // argparse: "vllm serve: error: unrecognized arguments: --swap-space 4",
    //   "error: argument --dtype: invalid choice: ..."; pydantic config validation:
    //   "pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig"
    Rule {
        class: Class::BadArguments,
        needles: &[
            "error: unrecognized arguments",
            "error: argument ",
            "error: the following arguments are required",
            "validation error for ",
            "validation errors for ",
        ],
        unless: &[],
    },
    // --- port in use (CPU build reproduces it) ---
    // Python socket bind: "OSError: [Errno 98] Address already in use"
    Rule {
        class: Class::PortInUse,
        needles: &["address already in use", "errno 98"],
        unless: &[],
    },
    // --- NCCL (GPU only) ---
    // vllm/distributed/device_communicators/pynccl_wrapper.py NCCL_CHECK():
    //   raise RuntimeError(f"NCCL error: {error_str}")   e.g. "NCCL error: unhandled cuda error
    //   (run with NCCL_DEBUG=INFO for details)" (vllm-project/vllm#6732, #7896)
    // torch.distributed: "torch.distributed.DistBackendError: NCCL error in: ..."
    Rule {
        class: Class::Nccl,
        needles: &[
            "nccl error",
            "distbackenderror",
            "ncclunhandledcudaerror",
            "nccl warn",
        ],
        unless: &[],
    },
];

/// Split vLLM's line prefixes off: `(EngineCore_DP0 pid=123) ` and
/// `ERROR 12-01 21:50:10 [core.py:123] `. What is left is the message.
pub fn strip_prefixes(line: &str) -> &str {
    let mut s = line.trim_end();
    if let Some(rest) = s.strip_prefix('(') {
        if let Some(end) = rest.find(") ") {
            if rest[..end].contains("pid=") {
                s = &rest[end + 2..];
            }
        }
    }
    for level in ["DEBUG ", "INFO ", "WARNING ", "ERROR ", "CRITICAL "] {
        if let Some(rest) = s.strip_prefix(level) {
            // "12-01 21:50:10 [file.py:12] " or "12-01 21:50:10.123 [file.py:12] "
            if let Some(close) = rest.find("] ") {
                if rest.starts_with(|c: char| c.is_ascii_digit()) && close < 60 {
                    s = &rest[close + 2..];
                }
            }
            break;
        }
    }
    s
}

/// Classify the engine's output.
pub fn classify(lines: &[String], ctx: &Context) -> Diagnosis {
    let lower: Vec<String> = lines
        .iter()
        .map(|l| strip_prefixes(l).to_ascii_lowercase())
        .collect();
    for rule in RULES {
        if let Some(i) = lower.iter().position(|l| {
            rule.needles.iter().any(|n| l.contains(n)) && !rule.unless.iter().any(|u| l.contains(u))
        }) {
            let msg = strip_prefixes(&lines[i]).trim();
            return word(rule.class, msg, ctx, Some(i));
        }
    }
    if ctx.load_timed_out {
        return word(Class::LoadTimeout, "", ctx, None);
    }
    if ctx.oom_kills > 0 || ctx.sigkilled {
        // The engine (or its EngineCore) was SIGKILLed and start-model did not send it.
        return word(Class::OomKilled, "", ctx, None);
    }
    // No rule matched: quote the cause line (the same one start-model's failure message
    // quotes), else the last line that says anything.
    let mut finder = CauseFinder::default();
    for l in lines {
        finder.feed(l);
    }
    let (last, msg) = match finder.best {
        Some((_, i, _)) => (Some(i), cause_line(&lines[i]).map_or("", |(_, t)| t)),
        None => {
            let i = lower.iter().rposition(|l| !l.trim().is_empty());
            (i, i.map_or("", |i| strip_prefixes(&lines[i]).trim()))
        }
    };
    word(Class::Unknown, msg, ctx, last)
}

/// Wrapper exceptions that only point at the real cause: never a cause line.
const GENERIC: &[&str] = &[
    "Engine core initialization failed",
    "See root cause above",
    "EngineCore failed to start",
    "Engine process failed to start",
    "The above exception was the direct cause",
    "During handling of the above exception",
];

/// The cause one line of engine output names, if any: `(rank, text)`, the text being the part
/// of the line (vLLM's prefixes stripped) that says it. Rank 2: a compiler's `fatal error:`
/// (torch.compile and Triton build C code at run time); rank 1: a Python exception line
/// (`ValueError: ...`, `torch._inductor.exc.InvalidCxxCompiler: ...`) or pydantic's detail
/// under vLLM's config checks (`Value error, ...`). vLLM's generic wrappers ([`GENERIC`],
/// "Engine core initialization failed. See root cause above") are never a cause.
pub fn cause_line(line: &str) -> Option<(u8, &str)> {
    let l = strip_prefixes(line.trim()).trim();
    if l.is_empty() || GENERIC.iter().any(|g| l.contains(g)) {
        return None;
    }
    if let Some(i) = l.find("fatal error: ") {
        return Some((2, &l[i..]));
    }
    // "ValidationError: 1 validation error for ModelConfig" is followed by the detail:
    // "Value error, User-specified max_model_len (4096) is greater than ...".
    if l.starts_with("Value error, ") {
        return Some((1, l));
    }
    let (name, msg) = l.split_once(": ")?;
    let last = name.rsplit('.').next()?;
    let is_exception = !msg.trim().is_empty()
        && !name.is_empty()
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        && last.starts_with(|c: char| c.is_ascii_uppercase())
        && last.chars().any(|c| c.is_ascii_lowercase())
        && (last.ends_with("Error")
            || last.ends_with("Exception")
            || last.ends_with("Compiler")
            || last.ends_with("Interrupt")
            || last.ends_with("Exit")
            || last == "AssertionError");
    is_exception.then_some((1, l))
}

/// Picks the line of an engine's output that says why it failed, out of the hundreds of
/// traceback and log lines a failed vLLM start prints: the last line of the highest rank
/// [`cause_line`] gives. Fed line by line as the output arrives (start-model's failure
/// message, `citadel-service start`'s progress); [`classify`] quotes the same line when no
/// rule matches. The text is escaped ([`crate::text::escape_controls`]).
#[derive(Debug, Clone, Default)]
pub struct CauseFinder {
    /// Rank, index of the line, escaped text.
    best: Option<(u8, usize, String)>,
    fed: usize,
}

impl CauseFinder {
    pub fn feed(&mut self, line: &str) {
        let i = self.fed;
        self.fed += 1;
        let Some((rank, text)) = cause_line(line) else {
            return;
        };
        if self.best.as_ref().map_or(true, |(r, _, _)| rank >= *r) {
            self.best = Some((rank, i, crate::text::escape_controls(text).into_owned()));
        }
    }

    /// The cause found so far.
    pub fn cause(&self) -> Option<&str> {
        self.best.as_ref().map(|(_, _, t)| t.as_str())
    }
}

/// The number after `after` in `s`, e.g. `num_after("... length is 4096. ", "length is ")`.
fn num_after(s: &str, after: &str) -> Option<u64> {
    let i = s.find(after)? + after.len();
    let digits: String = s[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str("...");
    out
}

/// Word the verdict for `class` from the engine's line `msg`.
pub fn word(class: Class, msg: &str, ctx: &Context, line: Option<usize>) -> Diagnosis {
    let m = if ctx.model.is_empty() {
        "NAME"
    } else {
        ctx.model.as_str()
    };
    let said = cut(msg, 300);
    let low = msg.to_ascii_lowercase();
    let (summary, fix) = match class {
        Class::GpuOom => (
            said,
            format!("lower models.{m}.gpu_memory_utilization, max_model_len or max-num-seqs (extra_args), or give the model more GPUs (gpus + tensor_parallel_size)"),
        ),
        Class::GpuMemoryHeld => {
            let holders = if ctx.gpu_holders.is_empty() {
                "another process holds GPU memory (see citadel-service status / nvidia-smi)".to_string()
            } else {
                format!("held by {}", ctx.gpu_holders.join("; "))
            };
            (
                format!("{said} ({holders})"),
                format!("stop what holds the memory ({}), or lower models.{m}.gpu_memory_utilization", if ctx.gpu_holders.is_empty() { "see nvidia-smi".to_string() } else { ctx.gpu_holders.join("; ") }),
            )
        }
        Class::MaxModelLen => {
            let fits = num_after(&low, "estimated maximum model length is ")
                .or_else(|| {
                    // "derived max_model_len (max_position_embeddings=512 or ..."
                    let i = low.find("derived max_model_len (")?;
                    let rest = &low[i..];
                    num_after(rest, "=")
                });
            let fix = match fits {
                Some(n) => format!("set models.{m}.max_model_len = {n} (the largest that fits, as vLLM computed it) or less"),
                None if low.contains("no available memory for the cache blocks") => format!("raise models.{m}.gpu_memory_utilization (no memory was left for the KV cache) or use a smaller model"),
                None => format!("lower models.{m}.max_model_len, or raise gpu_memory_utilization"),
            };
            (said, fix)
        }
        Class::ModelFiles => (
            said,
            format!("check models.{m}.path: the directory must hold config.json, the tokenizer and every weight file (citadel-service check; storage-setup verifies them)"),
        ),
        Class::BadArguments => (
            said,
            format!("fix models.{m}.extra_args (or engine.command): vLLM 0.33 rejected an argument; citadel-service check lists the accepted flags"),
        ),
        Class::PortInUse => (
            said,
            match ctx.port {
                Some(p) => format!("free port {p} (ss -ltnp 'sport = :{p}' names the holder) or change models.{m}.port"),
                None => format!("free the port or change models.{m}.port"),
            },
        ),
        Class::TrustRemoteCode => (
            said,
            format!("if you trust the code in the model directory, add \"--trust-remote-code\" to models.{m}.extra_args"),
        ),
        Class::Nccl => (
            said,
            format!("check the GPUs' interconnect (nvidia-smi topo -m) and NCCL: run with NCCL_DEBUG=INFO in engine.env; or try models.{m}.tensor_parallel_size = 1"),
        ),
        Class::CudaDriver => (
            said,
            "install an NVIDIA driver that supports the CUDA version of the engine's torch (nvidia-smi shows the driver's CUDA version), or a vLLM/torch built for this driver".to_string(),
        ),
        Class::OomKilled => (
            if ctx.oom_kills > 0 {
                format!("the kernel OOM killer killed the engine ({} kill(s) in the unit's cgroup)", ctx.oom_kills)
            } else {
                "the engine was killed by SIGKILL it did not get from start-model (most often the kernel OOM killer)".to_string()
            },
            format!("give the box more RAM or swap, run fewer models at once, or lower models.{m}.max_model_len / max-num-seqs (host memory for the KV cache and swap space); journalctl -k shows the OOM report"),
        ),
        Class::GpuFault => (
            said,
            "the GPU is quarantined: check it (nvidia-smi -q, journalctl -k | grep Xid), reset or replace it, then citadel-service gpu clear N".to_string(),
        ),
        Class::LoadTimeout => (
            if said.is_empty() { "the model did not become ready within load_timeout_secs".to_string() } else { said },
            format!("raise models.{m}.load_timeout_secs if the load is just slow (the journal shows how far it got), or check the storage speed"),
        ),
        Class::Unresponsive => (
            said,
            format!("the monitor restarted it; if it keeps hanging, see journalctl -u citadel-model@{m} around the hang"),
        ),
        Class::Unknown => (
            if said.is_empty() { "no recognised cause in the engine's output".to_string() } else { said },
            format!("read the excerpt and journalctl -u citadel-model@{m} -b"),
        ),
    };
    Diagnosis {
        class,
        summary,
        fix,
        line,
    }
}

#[cfg(test)]
mod tests;
