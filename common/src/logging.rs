//! Logging for the journal and for a terminal.
//!
//! - stderr only; stdout is reserved for data (`--json`, `--dry-run`).
//! - When stderr is the journal (`JOURNAL_STREAM` names our stderr), each line starts with a
//!   syslog priority prefix (`<3>` for errors ...) so `journalctl -p err` works, and there is no
//!   timestamp (the journal adds its own).
//! - On a terminal: `level: message`, still without timestamps.
//! - `-v` / `-q` move the level; `RUST_LOG` overrides it entirely.
//! - One event, one line: control characters in a message (a newline from a config value or
//!   from the engine, a terminal escape) are escaped ([`crate::text::escape_controls`]), so no
//!   text can forge a second journal line.

use log::{Level, LevelFilter};
use std::io::Write;

/// The level for a `-v` count minus a `-q` count (default info).
pub fn level_for(verbose: u8, quiet: u8) -> LevelFilter {
    match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// The syslog priority (sd-daemon(3) prefix) for a log level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One log line: `<PRIORITY>` for the journal or `LEVEL: ` for a terminal, then `text` with its
/// control characters escaped. Written piece by piece: the message is not formatted again.
fn write_line(
    buf: &mut impl Write,
    journal: bool,
    level: Level,
    text: &str,
) -> std::io::Result<()> {
    if journal {
        buf.write_all(&[b'<', b'0' + priority(level), b'>'])?;
    } else {
        let tag: &[u8] = match level {
            Level::Error => b"error: ",
            Level::Warn => b"warning: ",
            Level::Info => b"info: ",
            Level::Debug => b"debug: ",
            Level::Trace => b"trace: ",
        };
        buf.write_all(tag)?;
    }
    buf.write_all(crate::text::escape_controls(text).as_bytes())?;
    buf.write_all(b"\n")
}

/// True when stderr is connected to the journal: `JOURNAL_STREAM=dev:ino` matches fd 2.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(js) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = js.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

thread_local! {
    /// Where a log message is formatted before it is escaped.
    static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Set up logging once, at the start of `main`.
pub fn init(verbose: u8, quiet: u8) {
    let journal = stderr_is_journal();
    let mut b = env_logger::Builder::new();
    b.filter_level(level_for(verbose, quiet));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.target(env_logger::Target::Stderr);
    b.format(move |buf, record| {
        let mut line = |text: &str| write_line(buf, journal, record.level(), text);
        if let Some(text) = record.args().as_str() {
            return line(text);
        }
        // The message is formatted into this thread's buffer, kept between lines (a busy
        // helper such as the gateway logs a line per request), unless a message's own
        // formatting logs (then a new one).
        TEXT.with(|t| match t.try_borrow_mut() {
            Ok(mut text) => {
                text.clear();
                let _ = std::fmt::Write::write_fmt(&mut *text, *record.args());
                line(&text)
            }
            Err(_) => line(&record.args().to_string()),
        })
    });
    // A second init (tests) is harmless.
    let _ = b.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_moves_the_level() {
        assert_eq!(level_for(0, 0), LevelFilter::Info);
        assert_eq!(level_for(1, 0), LevelFilter::Debug);
        assert_eq!(level_for(3, 0), LevelFilter::Trace);
        assert_eq!(level_for(0, 1), LevelFilter::Warn);
        assert_eq!(level_for(0, 5), LevelFilter::Error);
        assert_eq!(level_for(1, 1), LevelFilter::Info);
    }

    #[test]
    fn a_line_is_its_prefix_and_the_escaped_text() {
        let line = |journal, level, text| {
            let mut b = Vec::new();
            write_line(&mut b, journal, level, text).unwrap();
            String::from_utf8(b).unwrap()
        };
        assert_eq!(line(true, Level::Info, "access: a"), "<6>access: a\n");
        assert_eq!(line(true, Level::Error, "x\ny"), "<3>x\\ny\n");
        assert_eq!(line(false, Level::Warn, "w"), "warning: w\n");
        assert_eq!(line(false, Level::Trace, ""), "trace: \n");
    }

    #[test]
    fn priorities_are_syslog_levels() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }
}
