use super::*;
use crate::report::Status;

fn table(text: &str) -> Result<MountTable, String> {
    MountTable::parse(text, Path::new("fixture"))
}

#[test]
fn a_plain_directory_on_root_is_named_with_its_device() {
    let d = tempfile::tempdir().unwrap();
    let t = table("29 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n");
    let e = mount("models_mount", d.path(), &t, 0, true, "models");
    assert_eq!(e.status, Status::Fail);
    assert_eq!(e.exit, Some(Exit::Unavailable));
    assert!(
        e.detail
            .contains("is not a mount point (it is a directory on /, device /dev/vda1, ext4)"),
        "{}",
        e.detail
    );
    assert!(e.detail.contains("root filesystem"), "{}", e.detail);
    // Optional: a warning.
    let e = mount("backup_mount", d.path(), &t, 0, false, "backups");
    assert_eq!(e.status, Status::Warn);
}

#[test]
fn a_mount_point_reports_device_and_free_space() {
    let d = tempfile::tempdir().unwrap();
    let real = fs::canonicalize(d.path()).unwrap();
    let t = table(&format!(
        "29 1 254:1 / / rw - ext4 /dev/vda1 rw\n40 29 259:1 / {} rw - xfs /dev/nvme1n1 rw\n",
        real.display()
    ));
    let e = mount("models_mount", d.path(), &t, 0, true, "models");
    assert_eq!(e.status, Status::Ok, "{}", e.detail);
    assert!(
        e.detail.contains("device /dev/nvme1n1, xfs"),
        "{}",
        e.detail
    );
    assert!(e.detail.contains("GiB free"), "{}", e.detail);
    let e = mount("models_mount", d.path(), &t, u64::MAX / 2, true, "models");
    assert_eq!(e.status, Status::Fail);
    assert_eq!(e.exit, Some(Exit::Failure));
    assert!(
        e.detail.contains("under storage.min_free_gib"),
        "{}",
        e.detail
    );
}

#[test]
fn a_missing_mount_is_unavailable() {
    let t = table("29 1 254:1 / / rw - ext4 /dev/vda1 rw\n");
    let e = mount(
        "models_mount",
        Path::new("/nonexistent/m"),
        &t,
        0,
        true,
        "models",
    );
    assert_eq!(e.exit, Some(Exit::Unavailable));
    assert!(e.detail.contains("does not exist"), "{}", e.detail);
}

#[test]
fn an_unreadable_mount_table_fails_the_mount_checks() {
    let t: Result<MountTable, String> = Err("cannot read the mount table x".into());
    let e = mount("models_mount", Path::new("/"), &t, 0, true, "models");
    assert_eq!(e.status, Status::Fail);
    assert!(e.detail.contains("cannot read the mount table"));
}

use crate::actions::tests::me;

#[test]
fn directories_are_planned_not_touched() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cache");
    let p = directory(
        "cache_dir",
        &dir,
        Some(&me()),
        0o750,
        Runner::current(),
        false,
    );
    assert!(matches!(p.action, Some(Action::CreateDir { .. })));
    assert!(!dir.exists());
    // Parent missing and not pending: fail; pending: planned.
    let deep = d.path().join("a/b");
    let p = directory(
        "cache_dir",
        &deep,
        Some(&me()),
        0o750,
        Runner::current(),
        false,
    );
    assert_eq!(p.entry.status, Status::Fail);
    assert!(
        p.entry.detail.contains("parent directory"),
        "{}",
        p.entry.detail
    );
    let p = directory(
        "cache_dir",
        &deep,
        Some(&me()),
        0o750,
        Runner::current(),
        true,
    );
    assert!(p.action.is_some());
    // Existing with the wrong mode: a chmod, nothing else.
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let p = directory(
        "cache_dir",
        &dir,
        Some(&me()),
        0o750,
        Runner::current(),
        false,
    );
    match p.action {
        Some(Action::FixDir {
            chown: None,
            chmod: Some(0o750),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_non_root_runner_cannot_chown() {
    let d = tempfile::tempdir().unwrap();
    let mut other = me();
    other.uid += 1;
    let runner = Runner {
        uid: 12345,
        gid: 12345,
    };
    let p = directory("state_dir", d.path(), Some(&other), 0o700, runner, false);
    assert_eq!(p.entry.status, Status::Fail);
    assert!(
        p.entry.detail.contains("only root can fix it"),
        "{}",
        p.entry.detail
    );
}

#[test]
fn symlinked_directories_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let l = d.path().join("cache");
    std::os::unix::fs::symlink(d.path(), &l).unwrap();
    let p = directory(
        "cache_dir",
        &l,
        Some(&me()),
        0o750,
        Runner::current(),
        false,
    );
    assert_eq!(p.entry.status, Status::Fail);
    assert!(
        p.entry.detail.contains("is a symlink"),
        "{}",
        p.entry.detail
    );
}
