//! Running host commands with a timeout: every call the harness makes (into a box or not) goes
//! through [`run`], so no test can hang on a stuck `systemctl` or a box that never boots.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished (or timed-out) command left.
#[derive(Debug, Clone)]
pub struct Output {
    /// The program and its arguments, for messages.
    pub argv: Vec<String>,
    /// `None` when it was killed for running past its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// The exit code; `None` for a timeout or a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
    /// Ok(stdout) on exit 0, else an error with everything a failing test should show.
    pub fn ok(self) -> Result<String, String> {
        if self.success() {
            Ok(self.stdout)
        } else {
            Err(self.describe())
        }
    }
    /// One paragraph: the command, how it ended, its output.
    pub fn describe(&self) -> String {
        let how = match self.status {
            None => format!("timed out after {:.1}s", self.elapsed.as_secs_f64()),
            Some(s) => format!("{s}"),
        };
        format!(
            "`{}` {how}\n--- stdout\n{}\n--- stderr\n{}",
            self.argv.join(" "),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Run `cmd` with `stdin` fed to it, for at most `timeout`; kill it (SIGKILL) past that.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let argv: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let t0 = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output {
                argv,
                status: None,
                stdout: String::new(),
                stderr: format!("cannot spawn: {e}"),
                elapsed: t0.elapsed(),
            }
        }
    };
    let feeder = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    // A grandchild that kept the pipes open must not block us past the timeout: give the
    // readers a moment, then go on with what they have.
    let stdout = join_within(out, Duration::from_secs(2));
    let stderr = join_within(err, Duration::from_secs(2));
    Output {
        argv,
        status,
        stdout,
        stderr,
        elapsed: t0.elapsed(),
    }
}

fn join_within(h: thread::JoinHandle<String>, limit: Duration) -> String {
    let t0 = Instant::now();
    while !h.is_finished() && t0.elapsed() < limit {
        thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        String::from("<output still open>")
    }
}

/// Poll `f` every `every` until it returns `Some`, or `None` after `limit`.
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() >= limit {
            return None;
        }
        thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let mut c = Command::new("/bin/sleep");
        c.arg("5");
        let o = run(c, None, Duration::from_millis(300));
        assert!(o.timed_out(), "{}", o.describe());
        assert!(o.elapsed < Duration::from_secs(4));
    }

    #[test]
    fn stdin_stdout_and_code_pass_through() {
        let o = run(
            Command::new("/bin/cat"),
            Some(b"hello"),
            Duration::from_secs(5),
        );
        assert_eq!(o.code(), Some(0));
        assert_eq!(o.stdout, "hello");
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "echo oops >&2; exit 3"]);
        let o = run(c, None, Duration::from_secs(5));
        assert_eq!(o.code(), Some(3));
        assert!(o.clone().ok().unwrap_err().contains("oops"));
    }

    #[test]
    fn wait_for_gives_up() {
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_millis(50), Duration::from_millis(5), || {
                n += 1;
                None::<()>
            }),
            None
        );
        assert!(n > 1);
    }
}
