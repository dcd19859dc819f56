//! One lock per GPU, so models that share a GPU initialise one at a time (vLLM's memory
//! profiling counts a neighbour's in-progress allocations as its own; see VLLM.md §6).
//!
//! `flock(2)` on `RUNTIME_DIR/locks/gpuN.lock` ([`citadel_common::paths::gpu_lock_file`]),
//! taken in ascending GPU order (so two models never deadlock), held from before spawn until
//! the engine answers `/health` (or exits). The kernel drops a flock when its holder dies, so a
//! crashed start-model never leaves a stale lock. The holder writes `NAME pid PID` into the
//! file, which a waiter shows in its `STATUS=`. The files are opened close-on-exec: the engine
//! never inherits a lock.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Locks held on a set of GPUs; dropping it releases them.
#[derive(Debug)]
pub struct GpuLocks {
    held: Vec<(u32, Flock<File>)>,
}

/// Why the locks were not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// A stop was asked while waiting.
    #[error("stop requested while waiting for a GPU lock")]
    Stopped,
    /// The lock file could not be created or locked (one line naming it).
    #[error("{0}")]
    Io(String),
}

impl GpuLocks {
    /// The GPUs whose locks are held, ascending.
    pub fn gpus(&self) -> Vec<u32> {
        self.held.iter().map(|(g, _)| *g).collect()
    }

    /// Release every lock now.
    pub fn release(self) {
        drop(self);
    }
}

/// Who holds a lock file, as its holder wrote it (`NAME pid PID`), or `None`.
pub fn holder(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn open(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating lock directory {}: {e}", dir.display()))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o664)
        .open(path)
        .map_err(|e| format!("opening GPU lock {}: {e}", path.display()))
}

/// Take the locks of `gpus` (deduplicated, ascending), waiting as long as it takes. While a
/// lock is busy, `waiting(gpu, holder)` is called once per change of holder, and `stop()` is
/// checked every `poll`.
pub fn acquire(
    runtime_dir: &Path,
    gpus: &[u32],
    me: &str,
    poll: Duration,
    stop: &dyn Fn() -> bool,
    waiting: &mut dyn FnMut(u32, Option<&str>),
) -> Result<GpuLocks, LockError> {
    let mut order: Vec<u32> = gpus.to_vec();
    order.sort_unstable();
    order.dedup();
    let mut held = Vec::new();
    for gpu in order {
        let path: PathBuf = citadel_common::paths::gpu_lock_file(runtime_dir, gpu);
        let mut file = open(&path).map_err(LockError::Io)?;
        let mut last_holder: Option<Option<String>> = None;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => {
                    file = f;
                    let h = holder(&path);
                    if last_holder.as_ref() != Some(&h) {
                        waiting(gpu, h.as_deref());
                        last_holder = Some(h);
                    }
                    if stop() {
                        return Err(LockError::Stopped);
                    }
                    std::thread::sleep(poll);
                }
                Err((_, e)) => {
                    return Err(LockError::Io(format!(
                        "locking GPU lock {}: {e}",
                        path.display()
                    )))
                }
            }
        };
        let mut lock = lock;
        let note = format!("{me} pid {}\n", std::process::id());
        // Best effort: the note only feeds a waiter's status line.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(note.as_bytes()));
        held.push((gpu, lock));
    }
    Ok(GpuLocks { held })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const POLL: Duration = Duration::from_millis(20);

    #[test]
    fn locks_are_taken_in_ascending_order_and_name_their_holder() {
        let d = tempfile::tempdir().unwrap();
        let l = acquire(
            d.path(),
            &[3, 1, 3],
            "phi3",
            POLL,
            &|| false,
            &mut |_, _| panic!("nothing holds these"),
        )
        .unwrap();
        assert_eq!(l.gpus(), [1, 3]);
        let h = holder(&citadel_common::paths::gpu_lock_file(d.path(), 3)).unwrap();
        assert_eq!(h, format!("phi3 pid {}", std::process::id()));
    }

    #[test]
    fn a_second_taker_waits_until_the_first_releases() {
        let d = tempfile::tempdir().unwrap();
        let first = acquire(d.path(), &[0], "mixtral", POLL, &|| false, &mut |_, _| {}).unwrap();
        let dir = d.path().to_path_buf();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let t = std::thread::spawn(move || {
            let mut waiting = |gpu: u32, h: Option<&str>| {
                seen2.lock().unwrap().push((gpu, h.map(String::from)));
            };
            acquire(&dir, &[0], "hermes", POLL, &|| false, &mut waiting).map(|l| l.gpus())
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished(), "took a lock that is held");
        first.release();
        assert_eq!(t.join().unwrap(), Ok(vec![0]));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, 0);
        assert!(seen[0].1.as_deref().unwrap().starts_with("mixtral pid "));
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let d = tempfile::tempdir().unwrap();
        let _first = acquire(d.path(), &[2], "a", POLL, &|| false, &mut |_, _| {}).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let dir = d.path().to_path_buf();
        let t = std::thread::spawn(move || {
            acquire(
                &dir,
                &[2],
                "b",
                POLL,
                &|| s2.load(Ordering::SeqCst),
                &mut |_, _| {},
            )
            .map(|l| l.gpus())
        });
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        assert_eq!(t.join().unwrap(), Err(LockError::Stopped));
    }

    #[test]
    fn an_unwritable_runtime_dir_is_one_line() {
        let e = acquire(
            Path::new("/proc/citadel-no-such-dir"),
            &[0],
            "a",
            POLL,
            &|| false,
            &mut |_, _| {},
        )
        .unwrap_err();
        match e {
            LockError::Io(m) => assert!(m.contains("/proc/citadel-no-such-dir/locks"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
