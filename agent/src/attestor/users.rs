//! User and group names from /etc/passwd and /etc/group (read directly, so
//! no libc is needed and container images with plain files work).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a [`NameTable`] checks its file for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// An ID → name table read from a passwd- or group-format file, re-read
/// when the file changes (checked at most once a second).
pub struct NameTable {
    path: PathBuf,
    state: Mutex<TableState>,
}

#[derive(Default)]
struct TableState {
    checked: Option<Instant>,
    stamp: Option<(SystemTime, u64)>,
    names: HashMap<u32, String>,
}

impl NameTable {
    /// A table over `path` (read lazily).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(TableState::default()),
        }
    }

    /// The name for `id`.
    pub fn name(&self, id: u32) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
            st.checked = Some(Instant::now());
            let stamp = std::fs::metadata(&self.path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            if stamp != st.stamp {
                st.stamp = stamp;
                st.names = std::fs::read_to_string(&self.path)
                    .map(|t| parse(&t))
                    .unwrap_or_default();
            }
        }
        st.names.get(&id).cloned()
    }
}

fn parse(text: &str) -> HashMap<u32, String> {
    let mut m = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(num)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(id) = num.parse::<u32>()
            && !name.is_empty()
        {
            m.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(text: &str, id: u32) -> Option<String> {
        parse(text).remove(&id)
    }

    #[test]
    fn finds_names() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n";
        assert_eq!(lookup(passwd, 0).as_deref(), Some("root"));
        assert_eq!(lookup(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(lookup(passwd, 5), None);
    }

    #[test]
    fn table_rereads_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(&p, "a:x:1:1::/:/bin/sh\n").unwrap();
        let t = NameTable::new(p.clone());
        assert_eq!(t.name(1).as_deref(), Some("a"));
        std::fs::write(&p, "b:x:1:1::/:/bin/sh\nlonger:x:2:2::/:/bin/sh\n").unwrap();
        t.state.lock().unwrap().checked = None;
        assert_eq!(t.name(1).as_deref(), Some("b"));
        assert_eq!(t.name(2).as_deref(), Some("longer"));
    }
}
