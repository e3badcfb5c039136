//! A stand-in for a cluster's service-account issuer, for tests: RSA
//! (Kubernetes' default) or ECDSA P-256 keys, a JWKS, and tokens in the
//! exact shape the kubelet mounts for a projected volume.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::jwt::{JwtAuthority, parse_jwks};

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// An issuer key with its `kid`.
pub struct TestIssuer {
    kid: String,
    key: Key,
}

/// What goes into one token.
#[derive(Debug, Clone)]
pub struct PsatSpec {
    /// `iss`.
    pub issuer: String,
    /// `aud` (one member).
    pub audience: String,
    /// `iat` and `nbf`; `exp` is an hour later.
    pub issued_at: u64,
    /// Lifetime, seconds.
    pub ttl: u64,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Pod name.
    pub pod_name: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Node name.
    pub node_name: String,
    /// Node UID.
    pub node_uid: String,
    /// Include `kubernetes.io.node` (Kubernetes 1.30+).
    pub with_node: bool,
    /// Overrides `sub`.
    pub sub: Option<String>,
}

fn uid(seed: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes());
    let h = hex::encode(&d.as_ref()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl PsatSpec {
    /// A token for the `lanyard/lanyard-agent` service account on
    /// `node-1`, valid for an hour from `issued_at`.
    pub fn new(issuer: &str, audience: &str, issued_at: u64) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            issued_at,
            ttl: 3600,
            namespace: "lanyard".into(),
            service_account: "lanyard-agent".into(),
            pod_name: "lanyard-agent-7xk2p".into(),
            pod_uid: uid("pod lanyard-agent-7xk2p"),
            node_name: "node-1".into(),
            node_uid: uid("node node-1"),
            with_node: true,
            sub: None,
        }
    }

    /// The same token for another node.
    pub fn on_node(mut self, name: &str) -> Self {
        self.node_name = name.into();
        self.node_uid = uid(&format!("node {name}"));
        self.pod_name = format!("lanyard-agent-{name}");
        self.pod_uid = uid(&format!("pod {name}"));
        self
    }

    fn claims(&self) -> Value {
        let mut k8s = json!({
            "namespace": self.namespace,
            "pod": {"name": self.pod_name, "uid": self.pod_uid},
            "serviceaccount": {"name": self.service_account, "uid": uid(&self.service_account)},
            "warnafter": self.issued_at + self.ttl * 8 / 10,
        });
        if self.with_node {
            k8s["node"] = json!({"name": self.node_name, "uid": self.node_uid});
        }
        json!({
            "aud": [self.audience],
            "exp": self.issued_at + self.ttl,
            "iat": self.issued_at,
            "iss": self.issuer,
            "jti": uid(&format!("jti {} {}", self.pod_uid, self.issued_at)),
            "kubernetes.io": k8s,
            "nbf": self.issued_at,
            "sub": self.sub.clone().unwrap_or_else(|| format!(
                "system:serviceaccount:{}:{}", self.namespace, self.service_account
            )),
        })
    }
}

impl TestIssuer {
    /// A 2048-bit RSA issuer (RS256), as kube-apiserver uses by default.
    #[allow(clippy::expect_used)]
    pub fn rsa(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            key: Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation")),
        }
    }

    /// An ECDSA P-256 issuer (ES256).
    #[allow(clippy::expect_used)]
    pub fn ec(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("EC key generation");
        Self {
            kid: kid.into(),
            key: Key::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                    .expect("EC key"),
            ),
        }
    }

    /// Another key of the same type under the same `kid`.
    pub fn impostor(&self) -> Self {
        match self.key {
            Key::Rsa(_) => Self::rsa(&self.kid),
            Key::Ec(_) => Self::ec(&self.kid),
        }
    }

    /// The key ID.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as one JWK.
    pub fn jwk(&self) -> Value {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        match &self.key {
            Key::Rsa(k) => {
                let (n, e) = rsa_components(k.public_key().as_ref());
                json!({"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256", "n": b(&n), "e": b(&e)})
            }
            Key::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"use": "sig", "kty": "EC", "kid": self.kid, "alg": "ES256", "crv": "P-256",
                       "x": b(&p[1..33]), "y": b(&p[33..65])})
            }
        }
    }

    /// A JWKS document holding the keys of `issuers`, as
    /// `/openid/v1/jwks` serves it.
    pub fn jwks(issuers: &[&TestIssuer]) -> String {
        json!({"keys": issuers.iter().map(|i| i.jwk()).collect::<Vec<_>>()}).to_string()
    }

    /// This issuer's key, parsed as the server parses a JWKS.
    #[allow(clippy::expect_used)]
    pub fn authorities(&self) -> Vec<JwtAuthority> {
        parse_jwks(Self::jwks(&[self]).as_bytes()).expect("own JWKS parses")
    }

    /// A signed token.
    #[allow(clippy::expect_used)]
    pub fn mint(&self, spec: &PsatSpec) -> String {
        let alg = match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
        };
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let header = json!({"alg": alg, "kid": self.kid});
        let input = format!(
            "{}.{}",
            b(header.to_string().as_bytes()),
            b(spec.claims().to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA signing");
                sig
            }
            Key::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .expect("EC signing")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b(&sig))
    }
}

/// `n` and `e` of a PKCS#1 RSAPublicKey (SEQUENCE of two INTEGERs).
#[allow(clippy::expect_used)]
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n].iter().fold(0usize, |a, x| a << 8 | *x as usize),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, seq, _) = tlv(der);
    let (_, n, rest) = tlv(seq);
    let (_, e, _) = tlv(rest);
    let strip = |v: &[u8]| {
        v.iter()
            .skip_while(|x| **x == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    (strip(n), strip(e))
}
