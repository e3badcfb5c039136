//! The systemd unit of a process, from its cgroup: the outermost
//! `.service` or `.scope` on its path.
//!
//! systemd puts each system service in a cgroup of its own
//! (`/system.slice/NAME.service`), which only root can move processes into:
//! a boundary a process cannot cross by itself, and how non-Kubernetes
//! hosts usually run one agent per service. Units under a user's own
//! manager (`user@UID.service/...`) are created by that user and are not
//! reported.

/// The unit (`NAME.service` or `NAME.scope`) a process's cgroup file names,
/// from the unified (v2) hierarchy or systemd's own v1 hierarchy.
pub fn unit_of(cgroup_file: &str) -> Option<String> {
    let mut v2 = None;
    let mut named = None;
    for line in cgroup_file.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path);
        } else if controllers == "name=systemd" {
            named = Some(path);
        }
    }
    [named, v2].into_iter().flatten().find_map(unit_in_path)
}

fn unit_in_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .any(|p| p.starts_with("user@") && p.ends_with(".service"))
    {
        return None;
    }
    // The outermost unit: the one systemd started. A process whose cgroup
    // is delegated to it (`Delegate=yes`, a container with a writable
    // cgroupfs) can make sub-cgroups with any name below it, but cannot
    // change what is above.
    parts
        .iter()
        .find(|p| {
            (p.ends_with(".service") || p.ends_with(".scope"))
                && p.len() <= 256
                && p.chars().all(|c| c.is_ascii_graphic())
        })
        .map(|p| (*p).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_system_units_and_ignores_user_managers() {
        assert_eq!(
            unit_of("0::/system.slice/lanyard-agent.service\n").as_deref(),
            Some("lanyard-agent.service")
        );
        // cgroup v1 with systemd's named hierarchy (hybrid hosts).
        assert_eq!(
            unit_of("9:name=systemd:/system.slice/db.service\n4:memory:/x\n0::/\n").as_deref(),
            Some("db.service")
        );
        // A process in a sub-cgroup of the service.
        assert_eq!(
            unit_of("0::/system.slice/app.service/worker\n").as_deref(),
            Some("app.service")
        );
        // A sub-cgroup a delegated service made itself, named like another
        // unit, does not make it that unit.
        assert_eq!(
            unit_of("0::/system.slice/app.service/victim.service\n").as_deref(),
            Some("app.service")
        );
        assert_eq!(
            unit_of("0::/system.slice/docker-0123abcd.scope/init.scope\n").as_deref(),
            Some("docker-0123abcd.scope")
        );
        assert_eq!(
            unit_of("0::/system.slice/docker-0123abcd.scope\n").as_deref(),
            Some("docker-0123abcd.scope")
        );
        assert_eq!(
            unit_of("0::/user.slice/user-1000.slice/user@1000.service/app.slice/mine.service\n"),
            None
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert_eq!(unit_of("garbage"), None);
        assert_eq!(unit_of(""), None);
    }
}
