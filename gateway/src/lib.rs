//! citadel-gateway: the box's one OpenAI-compatible endpoint. It routes every `/v1/*` POST
//! by the JSON body's `model` (a served name or an alias) to that model's engine, adding the
//! engine's API key; knows from the monitor's state file and its own passive view which
//! models serve (503 + `Retry-After` for the others, never a connection to a model known to
//! be down); streams responses through; limits each model's concurrency with a bounded queue;
//! checks client keys in constant time; logs one line per request; takes its socket from
//! systemd and drains on SIGTERM.
//!
//! Modules, one concern each (client keys are `citadel_common::clientkeys`): [`routes`] the routing table, [`limit`]
//! per-model slots and queue, [`avail`] which models serve, [`body`] the body type,
//! [`reply`] the gateway's own answers, [`metrics`] Prometheus, [`proxy`] one request,
//! [`upstream`] a worker's connections to the engines, [`after`] what waits until an answer is
//! written, [`within`] giving up on a wait, [`listen`] the socket, [`server`] the threads, signals and reloads.

pub mod after;
pub mod avail;
pub mod body;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod reply;
pub mod routes;
pub mod server;
pub mod upstream;
pub mod within;

use citadel_common::config::Config;
use citadel_common::{Exit, Failure};
use hyper::header::HeaderValue;
use std::time::Duration;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Citadel's one OpenAI-compatible endpoint: routes each request by its model to that model's engine, health-aware",
    after_help = "Examples:
  /usr/lib/citadel/citadel-gateway --check
      validate the config and the keys, print every route and the listen address
  systemctl reload citadel-gateway
      SIGHUP: new routes, aliases, limits and keys at once (an invalid config is kept out)
  curl -s http://127.0.0.1:8000/v1/models
      the models serving now, through the gateway"
)]
pub struct Args {
    #[command(flatten)]
    pub common: citadel_common::cli::CommonArgs,
    /// Validate the config, the client keys and the engine key, print the routes and exit.
    #[arg(long)]
    pub check: bool,
}

/// Everything the config says about serving, with the keys read: what a reload replaces.
pub fn snapshot(cfg: &Config, old: Option<&routes::Routes>) -> Result<proxy::Snapshot, Failure> {
    let keys = citadel_common::clientkeys::Keys::load(cfg.gateway.api_keys_file.as_deref())?;
    let engine_auth = match citadel_common::apikey::read(cfg)? {
        None => None,
        Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
            Failure::config("the engine API key has characters an HTTP header cannot carry")
        })?),
    }
    .map(|mut v| {
        v.set_sensitive(true);
        v
    });
    Ok(proxy::Snapshot {
        routes: routes::Routes::build(cfg, old),
        keys,
        engine_auth,
        max_request_bytes: cfg.gateway.max_request_bytes,
        request_timeout: Duration::from_secs(cfg.gateway.request_timeout_secs),
        access_log: cfg.gateway.access_log,
    })
}

pub fn run(args: &Args) -> Result<Exit, Failure> {
    let cfg = args.common.load_config()?;
    let snap = snapshot(&cfg, None)?;
    if args.check {
        for b in &snap.routes.backends {
            let mut names = vec![b.served.as_str()];
            names.extend(b.aliases.iter().map(String::as_str));
            println!("{} -> {} ({})", names.join(", "), b.target.base(), b.name);
        }
        println!(
            "listen {} keys {}",
            cfg.gateway.listen,
            if snap.keys.is_empty() {
                "none".to_string()
            } else {
                snap.keys.len().to_string()
            }
        );
        return Ok(Exit::Ok);
    }
    if !cfg.gateway.enabled {
        log::warn!("gateway.enabled = false: not serving");
        return Ok(Exit::Ok);
    }
    if !snap.keys.is_empty() {
        log::info!("{} client keys loaded", snap.keys.len());
    }
    let (listener, activated) = listen::listener(cfg.gateway.listen)?;
    if activated {
        log::debug!("socket from systemd: {}", cfg.gateway.listen);
    }
    let path = args.common.config.clone();
    server::serve(cfg, path, listener, server::workers())
}
