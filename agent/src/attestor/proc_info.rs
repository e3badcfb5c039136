//! Reading what the kernel says about a process under /proc.

use std::io;
use std::path::{Path, PathBuf};

/// The start time of a process (field 22 of /proc/PID/stat, in clock
/// ticks since boot): with the PID, it identifies one process instance.
pub fn start_time(proc_root: &Path, pid: i32) -> io::Result<u64> {
    use std::io::Read;
    // One read into a stack buffer: no size probe, no allocation. The line
    // is well under 1 KiB; the fields needed come early.
    let mut f = std::fs::File::open(proc_root.join(pid.to_string()).join("stat"))?;
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(parse_start_time)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

/// The parent PID and start time of a process (fields 4 and 22 of
/// /proc/PID/stat).
pub fn parent_and_start(proc_root: &Path, pid: i32) -> io::Result<(i32, u64)> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    parse_parent_and_start(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

/// Parses the parent PID and start time out of a /proc/PID/stat line.
pub fn parse_parent_and_start(stat: &str) -> Option<(i32, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // Field 3 is the state, field 4 the parent.
    let ppid = fields.nth(1)?.parse().ok()?;
    Some((ppid, parse_start_time(stat)?))
}

/// Owner of /proc/PID: the process's effective uid and gid, except for
/// non-dumpable processes, whose entries belong to root.
pub fn owner(proc_root: &Path, pid: i32) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(proc_root.join(pid.to_string()))?;
    Ok((m.uid(), m.gid()))
}

/// Parses the start time out of a /proc/PID/stat line. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted
/// after the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come field 3 (state) onwards; start time is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Real, effective UIDs/GIDs and supplementary groups from /proc/PID/status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Status {
    /// Effective UID.
    pub euid: Option<u32>,
    /// Effective GID.
    pub egid: Option<u32>,
    /// Supplementary group IDs.
    pub groups: Vec<u32>,
}

/// Reads /proc/PID/status.
pub fn status(proc_root: &Path, pid: i32) -> io::Result<Status> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"))?;
    Ok(parse_status(&text))
}

/// Parses the Uid, Gid and Groups lines of /proc/PID/status.
pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let nums = || {
            value
                .split_whitespace()
                .filter_map(|v| v.parse::<u32>().ok())
        };
        match key {
            "Uid" => s.euid = nums().nth(1),
            "Gid" => s.egid = nums().nth(1),
            "Groups" => s.groups = nums().collect(),
            _ => {}
        }
    }
    s
}

/// The executable path of a process.
pub fn exe_path(proc_root: &Path, pid: i32) -> io::Result<PathBuf> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("exe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let line = "1234 (my (weird) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_start_time(line), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
        assert_eq!(parse_parent_and_start(line), Some((1, 987_654)));
        assert_eq!(parse_parent_and_start("1 (x) S"), None);
    }

    #[test]
    fn a_child_descends_from_this_process_and_not_the_reverse() {
        let me = std::process::id() as i32;
        let root = Path::new("/proc");
        let my_start = start_time(root, me).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(crate::attestor::descends_from(pid, me, my_start, 8));
        // The same PID with another start time is another process.
        assert!(!crate::attestor::descends_from(pid, me, my_start + 1, 8));
        // A parent does not descend from its child.
        let child_start = start_time(root, pid).unwrap();
        assert!(!crate::attestor::descends_from(me, pid, child_start, 8));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        let root = Path::new("/proc");
        assert!(start_time(root, me).unwrap() > 0);
        let st = status(root, me).unwrap();
        assert!(st.euid.is_some() && st.egid.is_some());
        assert!(exe_path(root, me).unwrap().is_absolute());
    }

    #[test]
    fn parses_status_lines() {
        let s = parse_status(
            "Name:\tx\nUid:\t1000\t1001\t1000\t1000\nGid:\t50\t51\t50\t50\nGroups:\t4 24 27\n",
        );
        assert_eq!(s.euid, Some(1001));
        assert_eq!(s.egid, Some(51));
        assert_eq!(s.groups, vec![4, 24, 27]);
    }
}
