//! The generated man pages: one per binary and per citadel-service subcommand (the main page
//! names each and each file exists), citadel.toml(5) with every key of the shipped config, and
//! the EXIT STATUS, ENVIRONMENT, FILES and EXAMPLES sections everywhere. Rendered with man(1)
//! (Debian's man-db and groff), which must not warn.

use std::path::Path;
use std::process::Command;

fn pages() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let d = tempfile::tempdir().unwrap();
    let files = citadel_mangen::generate(d.path()).unwrap();
    let man: Vec<_> = files
        .into_iter()
        .filter(|f| f.parent().unwrap().ends_with("man"))
        .collect();
    (d, man)
}

fn render(page: &Path) -> String {
    let out = Command::new("/usr/bin/man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .env("MANPAGER", "cat")
        .output()
        .expect("man(1) missing: apt-get install man-db");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{}: {err}",
        page.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_page_has_the_sections_and_renders_without_warnings() {
    let (_d, man) = pages();
    assert!(man.len() >= 16, "{man:?}");
    for p in &man {
        let text = render(p);
        for sec in ["NAME", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"] {
            assert!(
                text.lines().any(|l| l == sec),
                "{}: no {sec} section\n{text}",
                p.display()
            );
        }
        if !p.ends_with("citadel.toml.5") {
            assert!(text.lines().any(|l| l == "ENVIRONMENT"), "{}", p.display());
            assert!(
                text.contains("78     invalid configuration"),
                "{}\n{text}",
                p.display()
            );
        }
    }
}

#[test]
fn the_main_page_links_one_page_per_subcommand_and_each_exists() {
    let (_d, man) = pages();
    let dir = man[0].parent().unwrap();
    let main = render(&dir.join("citadel-service.1"));
    for sub in [
        "check", "start", "stop", "restart", "status", "logs", "enable", "disable", "health",
        "apply", "deploy",
    ] {
        assert!(
            main.contains(&format!("citadel-service-{sub}(1)")),
            "{sub}\n{main}"
        );
        let page = render(&dir.join(format!("citadel-service-{sub}.1")));
        assert!(
            page.contains(&format!("citadel-service {sub}")),
            "{sub}\n{page}"
        );
    }
    let stop = render(&dir.join("citadel-service-stop.1"));
    assert!(stop.contains("citadel-service stop phi3"), "{stop}");
}

#[test]
fn citadel_toml_5_documents_every_key_of_the_shipped_config() {
    let (_d, man) = pages();
    let page = man.iter().find(|p| p.ends_with("citadel.toml.5")).unwrap();
    let text = render(page);
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../citadel.toml"))
            .unwrap();
    let mut keys = 0;
    for line in shipped.lines() {
        // `key = value` and `# key = value` (commented-out optional keys).
        let l = line.trim_start_matches('#').trim();
        let Some((k, _)) = l.split_once(" = ") else {
            continue;
        };
        if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !k.is_empty() {
            keys += 1;
            assert!(text.contains(k), "citadel.toml(5) does not document {k}");
        }
    }
    assert!(keys > 30, "only {keys} keys found in the shipped config");
    for s in [
        "[paths]",
        "[engine]",
        "[gpu]",
        "[monitor]",
        "[storage]",
        "[models.NAME]",
    ] {
        assert!(text.contains(s), "{s}");
    }
    assert!(text.contains("every problem at once"), "{text}");
}
