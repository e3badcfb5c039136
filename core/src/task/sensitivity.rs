//! Ordered data sensitivity levels, lowest first.

use super::names::TaskError;

/// The configured data sensitivity levels, lowest first. The default is
/// `public < internal < confidential < restricted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensitivityLevels(Vec<String>);

impl Default for SensitivityLevels {
    fn default() -> Self {
        Self(
            ["public", "internal", "confidential", "restricted"]
                .map(String::from)
                .to_vec(),
        )
    }
}

impl SensitivityLevels {
    /// Validates a list of levels, lowest first.
    pub fn new(levels: Vec<String>) -> Result<Self, TaskError> {
        let distinct = levels
            .iter()
            .enumerate()
            .all(|(i, l)| !levels[..i].contains(l));
        if levels.is_empty()
            || levels.len() > 16
            || !distinct
            || !levels.iter().all(|l| Self::is_level_name(l))
        {
            return Err(TaskError::BadLevels);
        }
        Ok(Self(levels))
    }

    /// Whether `name` could be a level: 1-64 letters, digits, `_` or `-`.
    pub fn is_level_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The rank of `level` (0 is the lowest).
    pub fn rank(&self, level: &str) -> Result<usize, TaskError> {
        self.0
            .iter()
            .position(|l| l == level)
            .ok_or_else(|| TaskError::UnknownSensitivity {
                level: level.chars().take(64).collect(),
                known: self.0.join(" < "),
            })
    }

    /// The lowest level (used when a request names none).
    pub fn lowest(&self) -> &str {
        self.0.first().map_or("public", String::as_str)
    }

    /// The levels, lowest first.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_errors() {
        let l = SensitivityLevels::default();
        assert!(l.rank("public").unwrap() < l.rank("restricted").unwrap());
        let err = l.rank("secret").unwrap_err();
        assert!(err.to_string().contains("public < internal"));
        assert_eq!(l.lowest(), "public");
        assert!(SensitivityLevels::new(vec![]).is_err());
        assert!(SensitivityLevels::new(vec!["a".into(), "a".into()]).is_err());
        assert!(SensitivityLevels::new(vec!["low".into(), "high".into()]).is_ok());
    }
}
