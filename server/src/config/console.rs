//! The operator console's settings: where it listens (off by default),
//! HTTPS with a configured certificate or plain HTTP on loopback only,
//! the address its login links name, and how long a session lasts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lanyard_core::config::ConfigError;
use lanyard_core::duration::parse_duration;

/// Default session lifetime.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(15 * 60);

/// The console, when served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Where it listens.
    pub bind: SocketAddr,
    /// PEM certificate chain and key for HTTPS (`None`: plain HTTP, on a
    /// loopback address only).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The base URL login links name (default: the bound address).
    pub url: Option<String>,
    /// How long a session lasts from its login.
    pub session_ttl: Duration,
}

/// What the configuration says about the console.
#[derive(Debug, Default)]
pub struct RawConsole {
    /// `console_bind`.
    pub bind: Option<String>,
    /// `console_cert`.
    pub cert: Option<PathBuf>,
    /// `console_key`.
    pub key: Option<PathBuf>,
    /// `console_url`.
    pub url: Option<String>,
    /// `console_session_ttl`.
    pub session_ttl: Option<String>,
}

/// Checks the console settings; `None` when it is off.
pub fn validate(raw: RawConsole) -> Result<Option<ConsoleSettings>, ConfigError> {
    let Some(bind) = lanyard_core::config::optional_addr("console_bind", raw.bind.as_deref())?
    else {
        if raw.cert.is_some() || raw.key.is_some() || raw.url.is_some() {
            return Err(ConfigError::invalid(
                "console_bind",
                "console_cert, console_key and console_url need console_bind",
            ));
        }
        return Ok(None);
    };
    let tls = match (raw.cert, raw.key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) if bind.ip().is_loopback() => None,
        (None, None) => {
            return Err(ConfigError::invalid(
                "console_bind",
                format!(
                    "{bind} is not a loopback address: the console is served over HTTPS there (set console_cert and console_key), or plain HTTP on 127.0.0.1 only"
                ),
            ));
        }
        _ => {
            return Err(ConfigError::invalid(
                "console_cert",
                "console_cert and console_key go together",
            ));
        }
    };
    if let Some(u) = &raw.url
        && !(u.starts_with("https://") || u.starts_with("http://"))
    {
        return Err(ConfigError::invalid(
            "console_url",
            "must be an http(s):// URL",
        ));
    }
    let session_ttl = match raw.session_ttl {
        None => DEFAULT_SESSION_TTL,
        Some(t) => {
            let d =
                parse_duration(&t).map_err(|e| ConfigError::invalid("console_session_ttl", e))?;
            if d < Duration::from_secs(1) || d > Duration::from_secs(12 * 3600) {
                return Err(ConfigError::invalid(
                    "console_session_ttl",
                    "between 1s and 12h",
                ));
            }
            d
        }
    };
    Ok(Some(ConsoleSettings {
        bind,
        tls,
        url: raw.url.map(|u| u.trim_end_matches('/').to_owned()),
        session_ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let raw = |bind: &str| RawConsole {
            bind: Some(bind.into()),
            ..Default::default()
        };
        assert!(validate(RawConsole::default()).unwrap().is_none());
        let s = validate(raw("127.0.0.1:0")).unwrap().unwrap();
        assert!(s.tls.is_none());
        assert_eq!(s.session_ttl, DEFAULT_SESSION_TTL);
        let e = validate(raw("0.0.0.0:9443")).unwrap_err().to_string();
        assert!(e.contains("HTTPS"), "{e}");
        let tls = validate(RawConsole {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..raw("0.0.0.0:9443")
        })
        .unwrap()
        .unwrap();
        assert!(tls.tls.is_some());
        assert!(
            validate(RawConsole {
                cert: Some("c.pem".into()),
                ..raw("0.0.0.0:9443")
            })
            .is_err()
        );
        assert!(
            validate(RawConsole {
                cert: Some("c.pem".into()),
                ..Default::default()
            })
            .is_err()
        );
    }
}
