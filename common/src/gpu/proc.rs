//! What `/proc` says about a process: its name and its systemd unit.

/// The process name: `/proc/PID/comm`, else the base name of argv0.
pub fn process_name(pid: u32) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let s = s.trim_end_matches('\n');
        if !s.is_empty() {
            return Some(s.to_string());
        }
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let argv0 = String::from_utf8_lossy(argv0);
    let base = argv0.rsplit('/').next().unwrap_or(&argv0);
    (!base.is_empty()).then(|| base.to_string())
}

/// The systemd unit (`*.service` / `*.scope`) a process runs in, from `/proc/PID/cgroup`.
pub fn unit_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_from_cgroup(&text)
}

/// The unit in `/proc/PID/cgroup` text: the unified (`0::`) line, else the `name=systemd`
/// line; the last path element ending in `.service` or `.scope` (a unit with delegated
/// sub-cgroups has plain elements below it).
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let path_of = |pred: &dyn Fn(&str) -> bool| {
        text.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            pred(ctrl).then_some(path)
        })
    };
    let path = path_of(&|c| c.is_empty()).or_else(|| path_of(&|c| c == "name=systemd"))?;
    path.split('/')
        .rfind(|e| e.ends_with(".service") || e.ends_with(".scope"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_from_cgroup_finds_the_unit() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/citadel-model@phi3.service\n").as_deref(),
            Some("citadel-model@phi3.service")
        );
        // Delegated sub-cgroup below the unit.
        assert_eq!(
            unit_from_cgroup("0::/system.slice/foo.service/payload/x\n").as_deref(),
            Some("foo.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        // cgroup v1: the name=systemd hierarchy.
        assert_eq!(
            unit_from_cgroup("12:cpu:/\n1:name=systemd:/system.slice/vllm.service\n").as_deref(),
            Some("vllm.service")
        );
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
    }
}
