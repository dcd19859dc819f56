//! Quarantined GPUs: `state_dir/quarantine/gpuN.json`, written by the monitor when a fatal GPU
//! fault is seen (see [`crate::gpufault`]), read by start-model (which refuses to start a model
//! on a quarantined GPU, exit 69) and removed by `citadel-service gpu clear N`. Kept across
//! reboots: a GPU that fell off the bus stays suspect until an operator says otherwise.
//! Root-owned; reached and changed through `safefs::DirFd` (no symlink followed).

use crate::safefs::DirFd;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The directory under `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("quarantine")
}

/// Why a GPU is quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub gpu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
    /// One line: what was seen.
    pub what: String,
    pub time_unix: u64,
    /// The models that were stopped.
    #[serde(default)]
    pub models: Vec<String>,
}

fn file_name(gpu: u32) -> String {
    format!("gpu{gpu}.json")
}

/// Every quarantined GPU (missing directory: none), by index.
pub fn list(state_dir: &Path) -> std::io::Result<Vec<Quarantine>> {
    let d = match DirFd::open(&dir(state_dir)) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = vec![];
    for (name, _) in d.entries()? {
        let Some(n) = name.to_str() else { continue };
        let Some(idx) = n
            .strip_prefix("gpu")
            .and_then(|r| r.strip_suffix(".json"))
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let q = d
            .read_file(&name, 64 * 1024)
            .and_then(|b| serde_json::from_slice::<Quarantine>(&b).map_err(std::io::Error::other));
        match q {
            Ok(mut q) => {
                q.gpu = idx;
                out.push(q);
            }
            // An unreadable marker still quarantines: better down than on a broken GPU.
            Err(e) => out.push(Quarantine {
                gpu: idx,
                xid: None,
                what: format!("quarantine file {}/{n} unreadable: {e}", d.path().display()),
                time_unix: 0,
                models: vec![],
            }),
        }
    }
    out.sort_by_key(|q| q.gpu);
    Ok(out)
}

/// The quarantine of `gpu`, if any.
pub fn get(state_dir: &Path, gpu: u32) -> std::io::Result<Option<Quarantine>> {
    Ok(list(state_dir)?.into_iter().find(|q| q.gpu == gpu))
}

/// Quarantine a GPU (creating the directory, mode 0755, when missing). False when it was
/// quarantined already (the first reason is kept).
pub fn set(state_dir: &Path, q: &Quarantine) -> std::io::Result<bool> {
    let parent = DirFd::open(state_dir)?;
    match parent.mkdir(OsStr::new("quarantine"), 0o755) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let d = parent.child(OsStr::new("quarantine"))?;
    let name = file_name(q.gpu);
    if d.stat_at(OsStr::new(&name)).is_ok() {
        return Ok(false);
    }
    let text = serde_json::to_vec_pretty(q).map_err(std::io::Error::other)?;
    d.write_replace(OsStr::new(&name), &text, 0o644)?;
    Ok(true)
}

/// Lift the quarantine of `gpu`. The removed record, or `None` when it was not quarantined.
pub fn clear(state_dir: &Path, gpu: u32) -> std::io::Result<Option<Quarantine>> {
    let Some(q) = get(state_dir, gpu)? else {
        return Ok(None);
    };
    let d = DirFd::open(&dir(state_dir))?;
    d.remove(OsStr::new(&file_name(gpu)), false)?;
    Ok(Some(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(gpu: u32) -> Quarantine {
        Quarantine {
            gpu,
            xid: Some(79),
            what: "Xid 79 (GPU has fallen off the bus)".into(),
            time_unix: 1,
            models: vec!["a".into()],
        }
    }

    #[test]
    fn set_list_clear() {
        let d = tempfile::tempdir().unwrap();
        assert!(list(d.path()).unwrap().is_empty());
        assert!(set(d.path(), &q(1)).unwrap());
        assert!(!set(d.path(), &q(1)).unwrap(), "the first reason is kept");
        assert_eq!(list(d.path()).unwrap(), vec![q(1)]);
        assert!(get(d.path(), 0).unwrap().is_none());
        assert_eq!(clear(d.path(), 1).unwrap(), Some(q(1)));
        assert_eq!(clear(d.path(), 1).unwrap(), None);
        assert!(list(d.path()).unwrap().is_empty());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir(d.path())).unwrap();
        assert!(list(d.path()).is_err());
        assert!(set(d.path(), &q(0)).is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
