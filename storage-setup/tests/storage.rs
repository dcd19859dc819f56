//! Black-box tests of the built `storage-setup` binary against a sandbox box layout (see
//! `common::Sandbox`): every check passing and failing, idempotence, `--check` writing
//! nothing, `--cleanup` touching only runtime leftovers, and (as root) a real tmpfs mount.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

#[test]
fn setup_prepares_a_good_box_and_a_second_run_changes_nothing() {
    let s = Sandbox::new();
    let (out, v) = s.run_json(&[]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    assert_eq!(stderr(&out), "", "nothing on stderr when all is well");
    assert_eq!(v["mode"], "setup");
    assert_eq!(v["ok"], true);
    assert_eq!(v["exit"], 0);
    assert_eq!(v["changed"], true);
    // The link and the five directories were made.
    assert_eq!(
        fs::read_link(s.p("opt/citadel/models")).unwrap(),
        s.p("mnt/citadel-models/active")
    );
    assert_eq!(entry(&v, "models_link")["changed"], true);
    for (name, rel) in [
        ("cache_dir", "mnt/citadel-models/cache"),
        ("staging_dir", "mnt/citadel-models/staging"),
        ("runtime_dir", "run/citadel"),
        ("locks_dir", "run/citadel/locks"),
        ("state_dir", "var/lib/citadel"),
    ] {
        let m = fs::symlink_metadata(s.p(rel)).unwrap();
        assert!(m.is_dir(), "{rel}");
        assert_eq!(m.mode() & 0o7777, 0o750, "{rel}");
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw(), "{rel}");
        let e = entry(&v, name);
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["changed"], true, "{e}");
        assert_eq!(e["path"], s.p(rel).display().to_string());
    }
    let m = entry(&v, "model:phi3");
    assert_eq!(m["status"], "ok", "{m}");
    assert!(
        m["detail"].as_str().unwrap().contains("2 weight files"),
        "{m}"
    );
    // The disabled model is not checked.
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["name"] != "model:off"));
    let mm = entry(&v, "models_mount");
    assert!(
        mm["detail"]
            .as_str()
            .unwrap()
            .contains("mount point, device /dev/nvme1n1, xfs"),
        "{mm}"
    );
    // No temporary names left behind.
    for dir in ["mnt/citadel-models", "run", "var/lib", "opt/citadel"] {
        for e in fs::read_dir(s.p(dir)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".citadel-storage-setup."), "{dir}/{n}");
        }
    }

    // Second run: already configured, nothing changes, not even an mtime.
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("storage-setup: already configured: nothing changed"),
        "{}",
        stdout(&out)
    );
    s.snapshot().assert_same(&before, "second run");
    let (_, v) = s.run_json(&[]);
    assert_eq!(v["changed"], false);
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["changed"] == false && c["action"].is_null()));
    // --check agrees.
    let out = s.run(&["--check"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("check: already configured, nothing to do"));
}

#[test]
fn check_reports_what_setup_would_do_and_writes_nothing() {
    let s = Sandbox::new();
    let before = s.snapshot();
    let (out, v) = s.run_json(&["--check"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    s.snapshot().assert_same(&before, "--check");
    assert_eq!(v["mode"], "check");
    assert_eq!(v["changed"], false);
    assert_eq!(v["summary"], "check: setup would make 6 change(s)");
    let l = entry(&v, "models_link");
    assert_eq!(l["status"], "warn");
    assert_eq!(l["changed"], false);
    assert!(
        l["action"]
            .as_str()
            .unwrap()
            .starts_with("would create symlink -> "),
        "{l}"
    );
    let c = entry(&v, "cache_dir");
    assert!(
        c["action"]
            .as_str()
            .unwrap()
            .contains("would create directory (owner"),
        "{c}"
    );
    // Every entry has exactly the documented keys.
    for c in v["checks"].as_array().unwrap() {
        let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["action", "changed", "detail", "name", "path", "status"],
            "{c}"
        );
        assert!(["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
    }
    // The model was checked through models_active although the link does not exist yet.
    assert_eq!(entry(&v, "model:phi3")["status"], "ok");
}

#[test]
fn check_on_a_broken_tree_writes_nothing() {
    let mut s = Sandbox::new();
    s.mounted = vec!["mnt/citadel-backup"];
    symlink(s.p("mnt/citadel-models/gone"), s.p("opt/citadel/models")).unwrap();
    fs::remove_file(s.p("mnt/citadel-models/active/phi3/config.json")).unwrap();
    let before = s.snapshot();
    let (out, v) = s.run_json(&["--check"]);
    assert_eq!(code(&out), 69);
    s.snapshot()
        .assert_same(&before, "--check on a broken tree");
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit"], 69);
    assert_eq!(entry(&v, "models_mount")["status"], "fail");
    assert_eq!(entry(&v, "models_link")["status"], "fail");
    assert_eq!(entry(&v, "model:phi3")["status"], "fail");
    // The first failure is the journal line; the rest are counted.
    assert_fails(&out, 69, &["is not a mount point", "more failed check(s)"]);
}

#[test]
fn a_missing_mount_fails_with_69_and_changes_nothing() {
    let mut s = Sandbox::new();
    fs::remove_dir_all(s.p("mnt/citadel-models")).unwrap();
    s.mounted = vec!["mnt/citadel-backup"];
    s.models.retain(|m| !m.enabled);
    let before = s.snapshot();
    let out = s.run(&[]);
    let m = s.p("mnt/citadel-models").display().to_string();
    assert_fails(
        &out,
        69,
        &[&format!(
            "{m} does not exist (paths.models_mount): the models disk is not mounted"
        )],
    );
    s.snapshot().assert_same(&before, "missing mount");
    assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));
}

#[test]
fn a_plain_directory_instead_of_a_mount_fails_naming_path_and_device() {
    let mut s = Sandbox::new();
    s.mounted = vec!["mnt/citadel-backup"];
    let before = s.snapshot();
    let out = s.run(&[]);
    let m = s.p("mnt/citadel-models").display().to_string();
    assert_fails(
        &out,
        69,
        &[&format!(
            "storage-setup: {m} is not a mount point (it is a directory on /, device /dev/vda1, ext4): refusing to let models fill the root filesystem"
        )],
    );
    s.snapshot().assert_same(&before, "plain directory");
    // The full report is on stdout, with the action that was not done.
    let o = stdout(&out);
    assert!(o.contains("not done: create symlink"), "{o}");
}

#[test]
fn a_missing_backup_mount_warns_unless_required() {
    let mut s = Sandbox::new();
    s.mounted = vec!["mnt/citadel-models"];
    let (out, v) = s.run_json(&["--check"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let b = entry(&v, "backup_mount");
    assert_eq!(b["status"], "warn");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("is not a mount point")
            && b["detail"].as_str().unwrap().contains("optional"),
        "{b}"
    );
    s.backup_required = true;
    let before = s.snapshot();
    let out = s.run(&[]);
    let m = s.p("mnt/citadel-backup").display().to_string();
    assert_fails(
        &out,
        69,
        &[
            &format!("{m} is not a mount point"),
            "refusing to let backups fill",
        ],
    );
    s.snapshot().assert_same(&before, "required backup missing");
}

#[test]
fn a_dangling_link_fails_naming_both_paths_and_is_not_repointed() {
    let s = Sandbox::new();
    let gone = s.p("mnt/citadel-models/v2");
    symlink(&gone, s.p("opt/citadel/models")).unwrap();
    let before = s.snapshot();
    let out = s.run(&[]);
    let link = s.p("opt/citadel/models").display().to_string();
    let active = s.p("mnt/citadel-models/active").display().to_string();
    assert_fails(
        &out,
        69,
        &[
            &format!("the models link {link} is dangling"),
            &gone.display().to_string(),
            &active,
            "refusing to repoint",
        ],
    );
    s.snapshot().assert_same(&before, "dangling link");
    assert_eq!(fs::read_link(s.p("opt/citadel/models")).unwrap(), gone);
}

#[test]
fn a_link_to_the_wrong_place_fails_naming_both_paths() {
    let s = Sandbox::new();
    let elsewhere = s.p("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, s.p("opt/citadel/models")).unwrap();
    let before = s.snapshot();
    let out = s.run(&[]);
    let link = s.p("opt/citadel/models").display().to_string();
    assert_fails(
        &out,
        1,
        &[
            &format!("the models link {link} points to {}", elsewhere.display()),
            "outside the models mount",
            &s.p("mnt/citadel-models/active").display().to_string(),
        ],
    );
    s.snapshot().assert_same(&before, "wrong link");
}

#[test]
fn a_link_to_another_directory_on_the_models_mount_is_a_warning() {
    let s = Sandbox::new();
    let v2 = s.p("mnt/citadel-models/v2");
    fs::create_dir(&v2).unwrap();
    citadel_common::modelfiles::write_fake_model(&v2.join("phi3"), 1).unwrap();
    symlink(&v2, s.p("opt/citadel/models")).unwrap();
    let (out, v) = s.run_json(&["--check"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let l = entry(&v, "models_link");
    assert_eq!(l["status"], "warn", "{l}");
    assert!(l["detail"]
        .as_str()
        .unwrap()
        .contains("not to paths.models_active"));
}

#[test]
fn a_link_loop_fails() {
    let s = Sandbox::new();
    let a = s.p("opt/citadel/models");
    let b = s.p("opt/citadel/models2");
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        1,
        &[
            &format!("the models link {} is a symlink loop", a.display()),
            &b.display().to_string(),
            &s.p("mnt/citadel-models/active").display().to_string(),
        ],
    );
    s.snapshot().assert_same(&before, "link loop");
}

#[test]
fn a_directory_where_the_link_belongs_is_refused() {
    let s = Sandbox::new();
    fs::create_dir(s.p("opt/citadel/models")).unwrap();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        1,
        &["is a directory, not a symlink", "refusing to replace it"],
    );
    s.snapshot()
        .assert_same(&before, "directory instead of link");
}

#[test]
fn a_missing_link_target_fails_with_69() {
    let mut s = Sandbox::new();
    fs::remove_dir_all(s.p("mnt/citadel-models/active")).unwrap();
    s.models.retain(|m| !m.enabled);
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        69,
        &[&format!(
            "the models link target {} (paths.models_active) does not exist",
            s.p("mnt/citadel-models/active").display()
        )],
    );
    s.snapshot().assert_same(&before, "missing target");
}

#[test]
fn an_incomplete_safetensors_index_fails_naming_the_shard() {
    let s = Sandbox::new();
    fs::remove_file(s.p("mnt/citadel-models/active/phi3/model-00002-of-00002.safetensors"))
        .unwrap();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        69,
        &[
            "model phi3",
            "weight shard model-00002-of-00002.safetensors named by model.safetensors.index.json is missing",
        ],
    );
    s.snapshot().assert_same(&before, "incomplete model");
}

#[test]
fn a_missing_model_directory_fails_with_69() {
    let mut s = Sandbox::new();
    s.models[0].path = "not-here".into();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(&out, 69, &["model phi3", "not-here"]);
    s.snapshot().assert_same(&before, "missing model");
}

#[test]
fn free_space_under_the_minimum_fails() {
    let mut s = Sandbox::new();
    s.min_free_gib = 4_000_000_000;
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        1,
        &[
            &format!("free on {}", s.p("mnt/citadel-models").display()),
            "device /dev/nvme1n1, xfs",
            "under storage.min_free_gib = 4000000000",
        ],
    );
    s.snapshot().assert_same(&before, "full disk");
}

#[test]
#[ignore = "root tier: needs root (a directory the service account cannot traverse)"]
fn an_unreadable_parent_directory_fails_as_the_service_account() {
    assert!(
        is_root(),
        "needs root to make a directory the service account cannot traverse"
    );
    let mut s = Sandbox::new();
    let nobody = nix::unistd::User::from_name("nobody").unwrap();
    let nobody = nobody.expect("this test runs as user 'nobody', which does not exist here");
    let group = nix::unistd::Group::from_gid(nobody.gid).unwrap().unwrap();
    s.user = nobody.name.clone();
    s.group = group.name;
    let private = s.p("mnt/citadel-models/active/private");
    fs::create_dir(&private).unwrap();
    citadel_common::modelfiles::write_fake_model(&private.join("phi3"), 1).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    s.models[0].path = "private/phi3".into();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        69,
        &[
            "model phi3",
            "is not readable by the service account",
            &format!(
                "{} (mode 700, owner 0:0) cannot be traversed by nobody",
                private.display()
            ),
        ],
    );
    s.snapshot().assert_same(&before, "unreadable parent");
    // Root's view does not count: open it up and the same run passes, creating the
    // directories owned by nobody.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
    let out = s.run(&[]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    assert_eq!(
        fs::metadata(s.p("var/lib/citadel")).unwrap().uid(),
        nobody.uid.as_raw()
    );
}

#[test]
fn a_missing_service_account_fails_with_69() {
    let mut s = Sandbox::new();
    s.user = "citadel-no-such-user".into();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(
        &out,
        69,
        &["service account", "citadel-no-such-user", "does not exist"],
    );
    s.snapshot().assert_same(&before, "missing account");
}

#[test]
fn a_bad_config_exits_78() {
    let mut s = Sandbox::new();
    s.dir_mode = "rwx";
    let out = s.run(&["--check"]);
    assert_eq!(code(&out), 78, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("storage.dir_mode"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wrong_mode_and_owner_on_citadel_directories_are_fixed_and_nothing_else() {
    let s = Sandbox::new();
    let cache = s.p("mnt/citadel-models/cache");
    fs::create_dir(&cache).unwrap();
    fs::write(cache.join("compiled.bin"), "x").unwrap();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(&cache, Some(65534), Some(65534)).unwrap();
    }
    let before = s.snapshot();
    let (out, v) = s.run_json(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let m = fs::metadata(&cache).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
    let e = entry(&v, "cache_dir");
    assert_eq!(e["changed"], true);
    let action = e["action"].as_str().unwrap();
    assert!(action.contains("chmod 0750"), "{action}");
    assert_eq!(action.contains("chown"), is_root(), "{action}");
    // The file inside the cache was not touched.
    let after = s.snapshot();
    assert_eq!(
        before.0[&cache.join("compiled.bin")],
        after.0[&cache.join("compiled.bin")]
    );
}

#[test]
fn a_symlink_where_a_directory_belongs_is_refused() {
    let s = Sandbox::new();
    fs::create_dir(s.p("var/lib/elsewhere")).unwrap();
    symlink(s.p("var/lib/elsewhere"), s.p("var/lib/citadel")).unwrap();
    let before = s.snapshot();
    let out = s.run(&[]);
    assert_fails(&out, 1, &["(paths.state_dir) is a symlink"]);
    s.snapshot().assert_same(&before, "symlinked state dir");
}

#[test]
fn cleanup_removes_only_runtime_leftovers() {
    let s = Sandbox::new();
    let out = s.run(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let runtime = s.p("run/citadel");
    let lock0 = citadel_common::paths::gpu_lock_file(&runtime, 0);
    let lock1 = citadel_common::paths::gpu_lock_file(&runtime, 1);
    fs::write(&lock0, "").unwrap();
    fs::write(&lock1, "").unwrap();
    let health = citadel_common::paths::health_state_file(&runtime);
    fs::write(&health, "{}").unwrap();
    let staging = s.p("mnt/citadel-models/staging");
    let temp = staging.join(".citadel-storage-setup.4242.part.tmp");
    fs::write(&temp, "partial").unwrap();
    let temp_dir = s.p("var/lib/.citadel-storage-setup.4242.citadel.tmp");
    fs::create_dir(&temp_dir).unwrap();
    fs::write(staging.join("download.part"), "someone else's").unwrap();
    fs::write(staging.join("weights.tmp"), "not ours").unwrap();
    fs::write(s.p("mnt/citadel-models/cache/kernels.bin"), "cache").unwrap();
    fs::write(s.p("mnt/citadel-backup/phi3.tar"), "backup").unwrap();
    let removed = vec![
        lock0.parent().unwrap().to_path_buf(),
        temp.clone(),
        temp_dir.clone(),
    ];

    // --cleanup --check lists and removes nothing.
    let before = s.snapshot();
    let (out, v) = s.run_json(&["--cleanup", "--check"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    s.snapshot().assert_same(&before, "--cleanup --check");
    assert_eq!(v["mode"], "cleanup");
    assert_eq!(v["summary"], "cleanup: would remove 5 item(s)");

    let (out, v) = s.run_json(&["--cleanup"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(v["changed"], true);
    assert_eq!(v["summary"], "cleanup: removed 5 item(s)");
    for p in [&lock0, &lock1, &temp, &temp_dir] {
        assert!(
            fs::symlink_metadata(p).is_err(),
            "{} still there",
            p.display()
        );
    }
    // Everything else, model files, caches, backups, the link, the health state, is exactly
    // as it was (parents of removed entries aside, whose mtime moves).
    before
        .without(&removed)
        .assert_same(&s.snapshot().without(&removed), "cleanup");
    assert!(s.p("mnt/citadel-models/active/phi3/config.json").is_file());
    assert!(health.is_file());

    // Again: nothing to remove. Setup restores the locks directory.
    let out = s.run(&["--cleanup"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("cleanup: nothing to remove"),
        "{}",
        stdout(&out)
    );
    let out = s.run(&[]);
    assert_eq!(code(&out), 0);
    assert!(lock0.parent().unwrap().is_dir());
}

#[test]
#[ignore = "root tier: needs root (mounts a tmpfs)"]
fn a_real_tmpfs_mount_is_recognised() {
    assert!(is_root(), "mounting a tmpfs needs root");
    let mut s = Sandbox::new();
    let mnt = s.p("mnt/citadel-models");
    let guard = TmpfsMount::new(&mnt, "size=16m")
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs here: {e}"));
    citadel_common::modelfiles::write_fake_model(&mnt.join("active/phi3"), 1).unwrap();
    s.use_fixture = false;
    let (out, v) = s.run_json(&[]);
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), stdout(&out));
    let m = entry(&v, "models_mount");
    assert_eq!(m["status"], "ok", "{m}");
    assert!(
        m["detail"]
            .as_str()
            .unwrap()
            .contains("mount point, device tmpfs, tmpfs"),
        "{m}"
    );
    // The backup "mount" is a plain directory on whatever holds the tempdir.
    assert_eq!(entry(&v, "backup_mount")["status"], "warn");
    assert!(s.p("mnt/citadel-models/cache").is_dir());
    // 16 MiB is under a 1 GiB minimum: real statvfs.
    s.min_free_gib = 1;
    let out = s.run(&["--check"]);
    assert_fails(
        &out,
        1,
        &["under storage.min_free_gib = 1", "device tmpfs, tmpfs"],
    );
    drop(guard);
    // Unmounted: now a plain directory (the tmpfs content is gone with it).
    s.min_free_gib = 0;
    let out = s.run(&["--check"]);
    assert_fails(&out, 69, &["is not a mount point"]);
}

/// A tmpfs mounted for one test; unmounted (lazily) on drop.
struct TmpfsMount(std::path::PathBuf);

impl TmpfsMount {
    fn new(at: &std::path::Path, opts: &str) -> nix::Result<TmpfsMount> {
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(opts),
        )?;
        Ok(TmpfsMount(at.to_path_buf()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
