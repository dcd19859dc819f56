//! The flags every binary takes. Flattened into each binary's clap definition.

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The Citadel config file.
    #[arg(long, value_name = "PATH", env = "CITADEL_CONFIG", default_value = crate::paths::DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (repeat for less).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
}

impl CommonArgs {
    /// Initialise logging from `-v`/`-q`.
    pub fn init_logging(&self) {
        crate::logging::init(self.verbose, self.quiet);
    }
    /// Load and validate the config named by `--config`.
    pub fn load_config(&self) -> Result<crate::config::Config, crate::Failure> {
        let cfg = crate::config::Config::load(&self.config)
            .map_err(|e| crate::Failure::config(e.to_string()))?;
        for w in cfg.warnings() {
            log::warn!("{w}");
        }
        Ok(cfg)
    }
}
