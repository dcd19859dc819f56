//! # citadel-system-tests: Citadel under a real systemd
//!
//! The harness of the system tests (`tests/system/tests/`) and of the demo (`demo.sh`, through
//! the `citadel-sdbox` binary):
//!
//! - [`sdbox`]: a Debian 12 box booted by `systemd-nspawn --boot` from a cached rootfs (built
//!   once by mmdebstrap under `/var/tmp/citadel-sdbox/base`, `CITADEL_SDBOX_DIR` overrides), one
//!   overlayfs per box, commands through `nsenter`, each with a timeout, torn down on drop;
//! - [`citadel`]: a box with the .deb installed (`CITADEL_DEB`, built by `tests/run.sh`),
//!   the stand-in engine, a three-model test config and fake models on a tmpfs;
//! - [`engine`]: the engine tier's box: the real vLLM (CPU build, cached venv bind-mounted),
//!   a second cached rootfs with its run-time needs, the tiny model generated in the box;
//! - [`run`]: host commands with a timeout.
//!
//! Every test of `tests/system/tests/*.rs` is `#[ignore = "system tier: ..."]` (or `engine
//! tier`, in `engine.rs`); `tests/run.sh` runs them with `--ignored` where root and
//! systemd-nspawn exist (always under `CI=true`), after building the .deb and the stand-in.
//! Started by hand without a prerequisite, such a test fails ([`citadel::require`]).
//! `CITADEL_SYSTEM_TEST_BOXES` (default 2) limits the boxes one test binary runs at once.

pub mod citadel;
pub mod cli;
pub mod engine;
pub mod run;
pub mod sdbox;
