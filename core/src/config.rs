//! What the server's and the agent's configuration pipelines share: the
//! error type, the log format, reading the TOML file, and the overlay of
//! flags and environment on it.

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

/// Reads and parses the TOML config file at `path`.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
    parse_toml(path, &text)
}

/// Overlays the settings `over` sets on `base`: every top-level setting
/// that `over` has (not `None`) replaces `base`'s whole, tables included
/// (flags and environment over the file). Every setting takes part, so a
/// new one cannot be forgotten here.
pub fn overlay<T>(base: T, over: T) -> Result<T, ConfigError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bad = |e: serde_json::Error| ConfigError::invalid("configuration", e);
    let mut base = serde_json::to_value(base).map_err(bad)?;
    if let (Some(b), serde_json::Value::Object(o)) = (
        base.as_object_mut(),
        serde_json::to_value(over).map_err(bad)?,
    ) {
        for (k, v) in o {
            if !v.is_null() {
                b.insert(k, v);
            }
        }
    }
    // An unset setting is absent, as in the file (a custom deserializer
    // need not take `null`).
    drop_nulls(&mut base);
    serde_json::from_value(base).map_err(bad)
}

fn drop_nulls(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(o) = v {
        o.retain(|_, v| !v.is_null());
        o.values_mut().for_each(drop_nulls);
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

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Raw {
        a: Option<String>,
        b: Option<u32>,
        t: Option<Table>,
    }

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Table {
        x: Option<bool>,
        y: Option<bool>,
    }

    #[test]
    fn overlay_replaces_only_what_is_set_and_tables_whole() {
        let file = Raw {
            a: Some("file".into()),
            b: Some(1),
            t: Some(Table {
                x: Some(true),
                y: Some(true),
            }),
        };
        let flags = Raw {
            b: Some(2),
            t: Some(Table {
                x: Some(false),
                y: None,
            }),
            ..Raw::default()
        };
        let got = overlay(file, flags).unwrap();
        assert_eq!(
            got,
            Raw {
                a: Some("file".into()),
                b: Some(2),
                t: Some(Table {
                    x: Some(false),
                    y: None
                }),
            }
        );
        assert_eq!(
            overlay(Raw::default(), Raw::default()).unwrap(),
            Raw::default()
        );
        // A setting whose deserializer refuses `null` stays unset.
        #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Strict {
            #[serde(default, deserialize_with = "only_text")]
            s: Option<String>,
        }
        fn only_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
            <String as serde::Deserialize>::deserialize(d).map(Some)
        }
        assert_eq!(
            overlay(Strict::default(), Strict::default()).unwrap(),
            Strict::default()
        );
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
