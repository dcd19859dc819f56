//! The one wrapper around `systemctl` (argv vectors, absolute path, stderr in the error), for
//! what an operator expects systemctl's own output or behaviour from (`enable`, `disable`,
//! `daemon-reload`, a `reload` that waits). Unit states and jobs go over D-Bus:
//! [`crate::systemd`].

use crate::Failure;
use std::path::PathBuf;
use std::process::Command;

/// `systemctl`, by absolute path.
#[derive(Debug, Clone)]
pub struct Systemctl {
    pub program: PathBuf,
}

impl Default for Systemctl {
    fn default() -> Self {
        Systemctl {
            program: PathBuf::from(crate::paths::SYSTEMCTL),
        }
    }
}

/// The output of one `systemctl` run.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Systemctl {
    /// Run `systemctl ARGS...`; a failure to spawn is an error, a non-zero exit is not.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<Output, Failure> {
        let argv: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        log::trace!("{} {}", self.program.display(), argv.join(" "));
        let out = Command::new(&self.program)
            .args(&argv)
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .output()
            .map_err(|e| {
                Failure::unavailable(format!("cannot run {}: {e}", self.program.display()))
            })?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Run and require exit 0; the error carries systemctl's stderr.
    pub fn run_ok<S: AsRef<str>>(&self, args: &[S]) -> Result<Output, Failure> {
        let out = self.run(args)?;
        if out.code != 0 {
            let argv: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
            return Err(Failure::other(format!(
                "systemctl {} exited with {}: {}",
                argv.join(" "),
                out.code,
                out.stderr.lines().next().unwrap_or("")
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_systemctl_is_unavailable() {
        let s = Systemctl {
            program: PathBuf::from("/nonexistent/systemctl"),
        };
        let e = s.run(&["status"]).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::Unavailable);
    }
}
