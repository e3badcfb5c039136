//! What the server's and the agent's configuration pipelines share: the
//! error type, the log format, and TOML parsing (the caller reads the file).

use std::path::{Path, PathBuf};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, String),
    /// A value is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A count or size setting that must be at least 1: `value`, or `default`
/// when unset; 0 is refused with the field's name.
pub fn at_least_one<T: Copy + PartialEq + From<u8>>(
    field: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        Some(v) if v == T::from(0) => Err(ConfigError::invalid(field, "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

impl ConfigError {
    /// An invalid value of `field`.
    pub fn invalid(field: &'static str, reason: impl ToString) -> Self {
        Self::Invalid {
            field,
            reason: reason.to_string(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Reads the `log_format` setting (`plain`, the default, or `json`).
    pub fn from_setting(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.unwrap_or("plain") {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(ConfigError::invalid(
                "log_format",
                format!("{other:?} is not plain or json"),
            )),
        }
    }
}

/// Parses the TOML text of the config file at `path`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse(path.to_owned(), e.to_string()))
}

/// An optional `host:port` socket address setting (`""` means unset).
pub fn optional_addr(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ConfigError::invalid(field, format!("{v:?} is not ip:port (e.g. 0.0.0.0:9090)"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_refuses_zero_and_defaults_when_unset() {
        assert_eq!(at_least_one("n", None, 5usize).unwrap(), 5);
        assert_eq!(at_least_one("n", Some(7u32), 5).unwrap(), 7);
        let e = at_least_one("n", Some(0u64), 5).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn log_format_setting() {
        assert_eq!(LogFormat::from_setting(None).unwrap(), LogFormat::Plain);
        assert_eq!(
            LogFormat::from_setting(Some("json")).unwrap(),
            LogFormat::Json
        );
        let e = LogFormat::from_setting(Some("xml")).unwrap_err();
        assert_eq!(e.to_string(), "log_format: \"xml\" is not plain or json");
    }
}
