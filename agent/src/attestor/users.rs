//! User and group names from /etc/passwd and /etc/group (read directly, so
//! no libc is needed and container images with plain files work).

use std::path::Path;

/// Name of the entry whose third field (the numeric ID) is `id`, in a
/// passwd- or group-format file.
pub fn name_for_id(file: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    lookup(&text, id)
}

/// Finds the name for `id` in passwd/group-format text.
pub fn lookup(text: &str, id: u32) -> Option<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let num: u32 = f.next()?.parse().ok()?;
            (num == id && !name.is_empty()).then(|| name.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken\n";
        assert_eq!(lookup(passwd, 0).as_deref(), Some("root"));
        assert_eq!(lookup(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(lookup(passwd, 5), None);
    }
}
