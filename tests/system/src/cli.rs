//! The `citadel-sdbox` command: the harness by hand, and the demo.

use crate::citadel::{self, Citadel, Setup, MODELS};
use crate::run::wait_for;
use crate::sdbox::{self, BootOptions, SdBox};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Boot Citadel boxes (a real systemd in systemd-nspawn, Debian 12) and run the demo.
#[derive(Debug, Parser)]
#[command(name = "citadel-sdbox", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The demo: install the package in a box, start three stand-in models, show status, kill
    /// one engine and show the recovery; the box keeps running.
    Demo {
        /// Box name.
        #[arg(long, default_value = "citadel-demo")]
        name: String,
        /// The engine: `standin` (fast, the default) or `vllm` (the real vLLM CPU build: its
        /// venv is installed once into /var/cache/citadel-test/vllm, about 10 GB; each model
        /// then loads in a minute or more).
        #[arg(long, default_value = "standin", value_parser = ["standin", "vllm"])]
        engine: String,
    },
    /// Boot a box with the package installed and the test config (not started); it keeps
    /// running until `destroy`.
    Up {
        /// Box name.
        name: String,
        /// Also enable the models and start citadel-ai.target.
        #[arg(long)]
        start: bool,
        /// Boot on cgroup v2 only, with systemd's BPF IP firewall working (IPAddressDeny=).
        #[arg(long)]
        ip_firewall: bool,
    },
    /// Run a command inside a running box (exit code passed through).
    Exec {
        /// Box name.
        name: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
    /// An interactive shell inside a running box.
    Sh {
        /// Box name.
        name: String,
    },
    /// Power a box off and delete it.
    Destroy {
        /// Box name.
        name: String,
    },
    /// Build the cached base rootfs now (otherwise the first box builds it).
    Base {
        /// The engine tier's rootfs instead (the base plus libnuma1, g++, python3-dev).
        #[arg(long)]
        engine: bool,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("citadel-sdbox: {msg}");
    ExitCode::FAILURE
}

/// Run one command.
pub fn run(cli: &Cli) -> ExitCode {
    if let Some(why) = sdbox::missing_prerequisite() {
        return fail(why);
    }
    let dir = sdbox::cache_dir();
    match &cli.command {
        Cmd::Base { engine } => match sdbox::ensure_rootfs(
            &dir,
            if *engine {
                &sdbox::ENGINE_BASE
            } else {
                &sdbox::BASE
            },
        ) {
            Ok(p) => {
                println!("{}", p.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Up {
            name,
            start,
            ip_firewall,
        } => {
            let opts = BootOptions {
                keep: true,
                ip_firewall: *ip_firewall,
                ..BootOptions::default()
            };
            let c = match Citadel::install_with(name, Setup::default(), &opts) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if *start {
                if let Err(e) = c.start_all() {
                    return fail(e);
                }
            }
            println!("box {name} is up: citadel-sdbox sh {name}");
            ExitCode::SUCCESS
        }
        Cmd::Exec { name, argv } => match SdBox::attach(&dir, name) {
            Ok(sb) => {
                let a: Vec<&str> = argv.iter().map(String::as_str).collect();
                let o = sb.exec_t(&a, Duration::from_secs(600));
                print!("{}", o.stdout);
                eprint!("{}", o.stderr);
                ExitCode::from(o.code().unwrap_or(124).clamp(0, 255) as u8)
            }
            Err(e) => fail(e),
        },
        Cmd::Sh { name } => match SdBox::attach(&dir, name) {
            Ok(sb) => {
                let st = std::process::Command::new(sdbox::NSENTER)
                    .args([
                        "-t",
                        &sb.leader().to_string(),
                        "-a",
                        "--",
                        "/usr/bin/env",
                        "-i",
                    ])
                    .args([
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "HOME=/root",
                        "TERM=xterm",
                        "LANG=C.UTF-8",
                    ])
                    .args(["/bin/bash", "-l"])
                    .status();
                match st {
                    Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
                    Err(e) => fail(e),
                }
            }
            Err(e) => fail(e),
        },
        Cmd::Destroy { name } => {
            sdbox::teardown(&dir, name, Duration::from_secs(60));
            println!("box {name} destroyed");
            ExitCode::SUCCESS
        }
        Cmd::Demo { name, engine } => match demo(name, engine == "vllm") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
    }
}

fn step(t0: Instant, what: &str) {
    println!("\n### [{:5.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn show(o: &crate::run::Output) {
    print!("{}", o.stdout);
    if !o.stderr.trim().is_empty() {
        print!("{}", o.stderr);
    }
}

/// The real-engine demo's config: two models on the tiny model, 1 s monitor sweeps.
fn vllm_demo_setup() -> crate::engine::EngineSetup {
    let m = |name, port, gpu| crate::engine::EngineModel {
        name,
        port,
        gpu,
        max_model_len: 256,
        enabled: true,
    };
    crate::engine::EngineSetup {
        models: vec![m("alpha", 18101, 0), m("beta", 18102, 1)],
        drain_secs: 30,
        stop_grace_secs: 60,
        monitor_interval_secs: 3,
        probe_timeout_secs: 2,
        failure_threshold: 3,
        deep_probe_interval_secs: 10,
        deep_probe_timeout_secs: 30,
        stall_secs: 60,
    }
}

fn demo(name: &str, vllm: bool) -> Result<(), String> {
    let t0 = Instant::now();
    step(t0, "the package (built by demo.sh: CITADEL_DEB)");
    let deb = citadel::deb()?;
    println!("{}", deb.display());
    let opts = BootOptions {
        keep: true,
        ..BootOptions::default()
    };
    let (c, victim, start_secs) = if vllm {
        step(
            t0,
            &format!(
                "the real vLLM (CPU build): venv {} (installed once, cached), box {name} with its run-time needs (libnuma1, g++, python3-dev), the package, a tiny model generated in the box",
                crate::engine::venv_path().display()
            ),
        );
        let c = crate::engine::install(name, &vllm_demo_setup(), true)?;
        (c, "beta", 1800)
    } else {
        step(
            t0,
            &format!("booting box {name} (Debian 12, systemd as PID 1) and installing the package"),
        );
        let c = Citadel::install_with(
            name,
            Setup {
                monitor_interval_secs: 2,
                ..Setup::default()
            },
            &opts,
        )?;
        (c, MODELS[1].name, 180)
    };
    show(&c.sb.exec(&["dpkg", "-l", "citadel"]));
    step(t0, "citadel-service check");
    show(&c.citadel_service(&["check"], Duration::from_secs(30)));
    step(
        t0,
        "citadel-service enable; citadel-service start (waits until every model serves)",
    );
    show(&c.citadel_service(&["enable"], Duration::from_secs(60)));
    let o = c.citadel_service(&["start"], Duration::from_secs(start_secs));
    show(&o);
    if !o.success() {
        return Err(format!(
            "citadel-service start failed\n{}",
            c.journal_tail(60)
        ));
    }
    step(t0, "citadel-service status");
    show(&c.citadel_service(&["status"], Duration::from_secs(30)));

    let unit = citadel_common::paths::model_unit(victim);
    let pid = c
        .engine_pid(victim)
        .ok_or(format!("no engine process for {victim}"))?;
    step(
        t0,
        &format!(
            "kill -9 the engine of {victim} (pid {pid} in the box): systemd restarts the model"
        ),
    );
    c.sb.ok(&["kill", "-9", &pid.to_string()])?;
    let back = wait_for(
        Duration::from_secs(start_secs),
        Duration::from_millis(500),
        || {
            let st = c.show(&unit, &["ActiveState", "NRestarts"]);
            (st.get("ActiveState").map(String::as_str) == Some("active")
                && st.get("NRestarts").is_some_and(|n| n != "0"))
            .then_some(())
        },
    );
    show(&c.sb.exec(&[
        "journalctl",
        "--no-pager",
        "-o",
        "short-monotonic",
        "-u",
        &unit,
        "-n",
        "12",
    ]));
    if back.is_none() {
        return Err(format!("{unit} did not come back\n{}", c.journal_tail(40)));
    }
    // Let the monitor see it healthy again before the final status.
    std::thread::sleep(Duration::from_secs(3));
    step(t0, "citadel-service status after the recovery");
    show(&c.citadel_service(&["status"], Duration::from_secs(30)));
    // demo.sh sets CITADEL_SDBOX_HINT to itself, so the hint names the command the user ran.
    let me = std::env::var("CITADEL_SDBOX_HINT").unwrap_or_else(|_| {
        std::env::current_exe().map_or("citadel-sdbox".into(), |p| p.display().to_string())
    });
    let hint = if std::env::var_os("CITADEL_SDBOX_HINT").is_some() {
        format!("Enter it: {me} sh   Tear it down: {me} destroy")
    } else {
        format!("Enter it: {me} sh {name}   Tear it down: {me} destroy {name}")
    };
    println!("\nThe box {name} keeps running. {hint}");
    Ok(())
}
