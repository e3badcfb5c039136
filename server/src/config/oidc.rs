//! The JWT issuer and the OpenID Connect discovery endpoint: which `iss`
//! every JWT-SVID names, and where (if anywhere) this server serves the
//! discovery document and the keys that verify them.

use std::net::SocketAddr;
use std::path::PathBuf;

use lanyard_core::TrustDomain;
use lanyard_core::config::{ConfigError, optional_addr};
use lanyard_core::jwt::oidc;

/// The raw `[oidc]`-related settings (top-level keys of the config file).
#[derive(Debug, Clone, Default)]
pub struct RawOidc {
    /// `jwt_issuer`.
    pub issuer: Option<String>,
    /// `oidc_bind`.
    pub bind: Option<String>,
    /// `oidc_cert`.
    pub cert: Option<PathBuf>,
    /// `oidc_key`.
    pub key: Option<PathBuf>,
    /// `oidc_plain_http`.
    pub plain_http: Option<bool>,
}

/// How the discovery endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcTransport {
    /// HTTPS with this certificate chain and key (PEM files).
    Tls {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// Plain HTTP, for a TLS-terminating proxy in front (or loopback).
    PlainHttp,
}

/// Where the discovery endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcServe {
    /// Listen address.
    pub bind: SocketAddr,
    /// HTTPS or plain HTTP.
    pub transport: OidcTransport,
}

/// The validated issuer and discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// `iss` of every JWT-SVID, without a trailing `/`; every server of a
    /// trust domain must name the same one.
    pub issuer: String,
    /// The discovery endpoint, when this server serves one.
    pub serve: Option<OidcServe>,
}

/// Checks the settings; the issuer defaults to `https://<trust domain>`.
pub fn validate(raw: RawOidc, trust_domain: &TrustDomain) -> Result<OidcSettings, ConfigError> {
    let issuer = match raw.issuer.as_deref() {
        Some(url) => oidc::issuer_url(url).map_err(|e| ConfigError::invalid("jwt_issuer", e))?,
        None => oidc::default_issuer(trust_domain.name()),
    };
    let bind = optional_addr("oidc_bind", raw.bind.as_deref())?;
    let plain_http = raw.plain_http.unwrap_or(false);
    let transport = match (raw.cert, raw.key, plain_http) {
        (Some(_), Some(_), true) => {
            return Err(ConfigError::invalid(
                "oidc_plain_http",
                "cannot be set with oidc_cert and oidc_key (choose HTTPS or plain HTTP)",
            ));
        }
        (Some(cert), Some(key), false) => Some(OidcTransport::Tls { cert, key }),
        (Some(_), None, _) => {
            return Err(ConfigError::invalid("oidc_key", "is needed with oidc_cert"));
        }
        (None, Some(_), _) => {
            return Err(ConfigError::invalid("oidc_cert", "is needed with oidc_key"));
        }
        (None, None, true) => Some(OidcTransport::PlainHttp),
        (None, None, false) => None,
    };
    let serve = match (bind, transport) {
        (Some(bind), Some(transport)) => Some(OidcServe { bind, transport }),
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "oidc_bind",
                "needs oidc_cert and oidc_key (HTTPS), or oidc_plain_http = true behind a TLS-terminating proxy",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "oidc_bind",
                "is needed to serve discovery (oidc_cert, oidc_key and oidc_plain_http only apply with it)",
            ));
        }
        (None, None) => None,
    };
    Ok(OidcSettings { issuer, serve })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn the_issuer_defaults_to_the_trust_domain_and_nothing_is_served() {
        let s = validate(RawOidc::default(), &td()).unwrap();
        assert_eq!(s.issuer, "https://example.org");
        assert_eq!(s.serve, None);
    }

    #[test]
    fn https_or_plain_http_is_chosen_explicitly() {
        let https = validate(
            RawOidc {
                issuer: Some("https://oidc.example.org/".into()),
                bind: Some("0.0.0.0:8443".into()),
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
                plain_http: None,
            },
            &td(),
        )
        .unwrap();
        assert_eq!(https.issuer, "https://oidc.example.org");
        assert!(matches!(
            https.serve.unwrap().transport,
            OidcTransport::Tls { .. }
        ));
        let plain = validate(
            RawOidc {
                bind: Some("127.0.0.1:8080".into()),
                plain_http: Some(true),
                ..Default::default()
            },
            &td(),
        )
        .unwrap();
        assert_eq!(plain.serve.unwrap().transport, OidcTransport::PlainHttp);
    }

    #[test]
    fn half_settings_are_refused_with_the_field_named() {
        let cases = [
            (
                RawOidc {
                    bind: Some("127.0.0.1:8080".into()),
                    ..Default::default()
                },
                "oidc_bind",
            ),
            (
                RawOidc {
                    bind: Some("127.0.0.1:8080".into()),
                    cert: Some("c.pem".into()),
                    ..Default::default()
                },
                "oidc_key",
            ),
            (
                RawOidc {
                    plain_http: Some(true),
                    ..Default::default()
                },
                "oidc_bind",
            ),
            (
                RawOidc {
                    issuer: Some("spiffe://example.org".into()),
                    ..Default::default()
                },
                "jwt_issuer",
            ),
        ];
        for (raw, field) in cases {
            let e = validate(raw, &td()).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
