//! Criterion benches of Lanyard's hot paths. X.509-SVID issuance is reported
//! next to the bare P-256 operations it cannot avoid (one verify of the CSR
//! signature and one sign of the certificate), in the same run.
//!
//! ```text
//! cargo bench -p lanyard-bench --bench hot_paths
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use criterion::{Criterion, criterion_group, criterion_main};
use lanyard_core::jwt::{JwtSigner, validate_jwt_svid};
use lanyard_core::x509::{SvidKey, SvidParams, X509Authority};
use lanyard_core::{Selector, SelectorIndex, SpiffeId, TrustDomain};

fn issuance(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).unwrap();
    // About the size of an SVID's to-be-signed part.
    let msg = vec![0x5au8; 400];
    let sig = key.sign(&rng, &msg).unwrap();
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key().as_ref().to_vec());

    let td = TrustDomain::new("example.org").unwrap();
    let now = SystemTime::now();
    let ca = X509Authority::generate_root(&td, now, Duration::from_secs(86_400)).unwrap();
    let id = SpiffeId::new("spiffe://example.org/agent/planner").unwrap();
    let csr = SvidKey::generate().unwrap().csr(&id).unwrap();
    let params = SvidParams {
        spiffe_id: id,
        dns_names: vec![],
        ttl: Duration::from_secs(60),
        extensions: vec![],
    };

    let mut g = c.benchmark_group("x509_issuance");
    g.bench_function("p256_sign", |b| {
        b.iter(|| key.sign(&rng, black_box(&msg)).unwrap())
    });
    g.bench_function("p256_verify", |b| {
        b.iter(|| public.verify(black_box(&msg), sig.as_ref()).unwrap())
    });
    g.bench_function("p256_verify_plus_sign", |b| {
        b.iter(|| {
            public.verify(black_box(&msg), sig.as_ref()).unwrap();
            key.sign(&rng, black_box(&msg)).unwrap()
        })
    });
    g.bench_function("mint_svid_from_csr", |b| {
        b.iter(|| ca.sign_x509_svid(black_box(&csr), &params, now).unwrap())
    });
    // What the server's signing path adds to each issuance: the SVID noted
    // in the record of signed serials (revocations reach them without the
    // holder's agent). The batches are written by a background task every
    // 100 ms, off this path, so the bench drains the list outside the
    // measured time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: std::sync::Arc<dyn lanyard_server::store::Store> =
        std::sync::Arc::new(lanyard_server::store::MemoryStore::default());
    let issued = rt
        .block_on(lanyard_server::enforce::Issued::load(
            store,
            std::sync::Arc::new(lanyard_core::clock::SystemClock),
        ))
        .unwrap();
    let svid = ca.sign_x509_svid(&csr, &params, now).unwrap();
    let record = lanyard_server::enforce::IssuedSvid {
        serial: svid.serial,
        spiffe_id: params.spiffe_id.to_string(),
        task_id: None,
        issuer: ca.info().subject_key_id.clone(),
        issued_at: 0,
        not_after: 1,
    };
    g.bench_function("record_signed_svid", |b| {
        b.iter_batched(
            || {
                rt.block_on(issued.flush()).unwrap();
                rt.block_on(issued.prune()).unwrap();
                record.clone()
            },
            |r| issued.note(black_box(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let now = SystemTime::now();
    let td = TrustDomain::new("example.org").unwrap();
    let signer = JwtSigner::generate(now, now + Duration::from_secs(3600)).unwrap();
    let id = SpiffeId::new("spiffe://example.org/agent/planner").unwrap();
    let aud = vec!["tools.example.org".to_owned()];
    let auths = vec![signer.authority()];
    let token = signer
        .sign_svid(
            "https://example.org",
            &id,
            &aud,
            Duration::from_secs(300),
            now,
            Default::default(),
        )
        .unwrap()
        .token;
    let mut g = c.benchmark_group("jwt_svid");
    g.bench_function("sign", |b| {
        b.iter(|| {
            signer
                .sign_svid(
                    "https://example.org",
                    &id,
                    &aud,
                    Duration::from_secs(300),
                    now,
                    Default::default(),
                )
                .unwrap()
        })
    });
    g.bench_function("validate", |b| {
        b.iter(|| {
            validate_jwt_svid(black_box(&token), "tools.example.org", &td, &auths, now).unwrap()
        })
    });
    g.finish();
}

/// A WIT-SVID and its proof: minting, validating the WIT, and what the
/// decision point does per request with the WIT already validated (the
/// proof's signature, claims and replay check).
fn wit(c: &mut Criterion) {
    use lanyard_core::jwt::wit::{
        ReplayCache, WorkloadKey, WptRequest, sign_wit, sign_wpt, validate_wit_svid, validate_wpt,
    };
    let now = SystemTime::now();
    let td = TrustDomain::new("example.org").unwrap();
    let signer = JwtSigner::generate(now, now + Duration::from_secs(3600)).unwrap();
    let auths = vec![signer.authority()];
    let id = SpiffeId::new("spiffe://example.org/agent/planner").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let ttl = Duration::from_secs(300);
    let token = sign_wit(
        &signer,
        &id,
        &key.public_jwk(),
        ttl,
        now,
        Default::default(),
    )
    .unwrap()
    .token;
    let validated = validate_wit_svid(&token, &td, &auths, now).unwrap();
    let req = WptRequest {
        target_uri: "https://tools.example.org/crm/read",
        ..Default::default()
    };
    let mut g = c.benchmark_group("wit_svid");
    g.bench_function("sign", |b| {
        b.iter(|| {
            sign_wit(
                &signer,
                &id,
                &key.public_jwk(),
                ttl,
                now,
                Default::default(),
            )
            .unwrap()
        })
    });
    g.bench_function("validate", |b| {
        b.iter(|| validate_wit_svid(black_box(&token), &td, &auths, now).unwrap())
    });
    // Fresh proofs (each is accepted once); signing is outside the timing.
    let cache = ReplayCache::new(10_000_000);
    g.bench_function("validate_wpt_cached_wit", |b| {
        b.iter_batched(
            || sign_wpt(&key, &token, &req, Duration::from_secs(30), now).unwrap(),
            |wpt| {
                validate_wpt(
                    &wpt,
                    &validated,
                    &token,
                    &req,
                    now,
                    Duration::from_secs(60),
                    &cache,
                )
                .unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn selectors(c: &mut Criterion) {
    let entries: Vec<Vec<Selector>> = (0..10_000)
        .map(|i| {
            vec![
                format!("unix:uid:{}", 1000 + i % 500).parse().unwrap(),
                format!("unix:sha256:{:064x}", i).parse().unwrap(),
            ]
        })
        .collect();
    let index = SelectorIndex::build(entries.iter().enumerate().map(|(i, s)| (i, s.as_slice())));
    let caller: Vec<Selector> = vec![
        "unix:uid:1042".parse().unwrap(),
        "unix:gid:1042".parse().unwrap(),
        format!("unix:sha256:{:064x}", 542).parse().unwrap(),
        "unix:path:/usr/bin/agent".parse().unwrap(),
        "unix:user:planner".parse().unwrap(),
    ];
    assert_eq!(index.matching(caller.iter()).len(), 1);
    c.bench_function("selector_match_10k_entries", |b| {
        b.iter(|| index.matching(black_box(&caller).iter()))
    });
}

fn spiffe_ids(c: &mut Criterion) {
    c.bench_function("spiffe_id_parse", |b| {
        b.iter(|| {
            SpiffeId::new(black_box("spiffe://example.org/ns/prod/sa/agent-planner")).unwrap()
        })
    });
}

fn attestation(c: &mut Criterion) {
    use lanyard_agent::attestor::{AttestOptions, PeerCred, UnixAttestor, WorkloadAttestor};
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self").unwrap();
    let peer = PeerCred {
        pid: Some(std::process::id() as i32),
        uid: meta.uid(),
        gid: meta.gid(),
        connected_ticks: lanyard_agent::listener::uptime_ticks(),
    };
    let a = UnixAttestor::default();
    // Hash the executable once; calls are then served from the cache.
    let slow = AttestOptions {
        allow_slow: true,
        hash_executable: true,
    };
    a.attest(peer, slow).unwrap().unwrap();
    let fast = AttestOptions {
        allow_slow: false,
        ..slow
    };
    c.bench_function("unix_attest_cached", |b| {
        b.iter(|| a.attest(black_box(peer), fast).unwrap().unwrap())
    });
}

/// The HTTP/2 `:authority` shim on one gRPC request as a client sends it
/// (HEADERS with the usual fields, then a DATA frame), per connection state:
/// a valid authority (decode only, bytes forwarded) and a socket path
/// (decode and re-encode).
fn authority_shim(c: &mut Criterion) {
    use lanyard_uds::authority::Rewriter;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    fn lit(out: &mut Vec<u8>, n: &[u8], v: &[u8]) {
        out.extend([0, n.len() as u8]);
        out.extend_from_slice(n);
        out.push(v.len() as u8);
        out.extend_from_slice(v);
    }
    for (name, authority) in [
        ("authority_shim/valid", &b"localhost"[..]),
        (
            "authority_shim/socket_path",
            b"run%2Flanyard%2Fagent%2Fapi.sock",
        ),
    ] {
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend(frame(4, 0, 0, &[]));
        let mut block = Vec::new();
        lit(&mut block, b":method", b"POST");
        lit(&mut block, b":scheme", b"http");
        lit(&mut block, b":path", b"/SpiffeWorkloadAPI/FetchX509SVID");
        lit(&mut block, b":authority", authority);
        lit(&mut block, b"content-type", b"application/grpc");
        lit(&mut block, b"te", b"trailers");
        lit(&mut block, b"workload.spiffe.io", b"true");
        lit(
            &mut block,
            b"user-agent",
            b"grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)",
        );
        let mut request = frame(1, 4, 1, &block);
        request.extend(frame(0, 1, 1, &[0, 0, 0, 0, 0]));
        c.bench_function(name, |b| {
            let mut rw = Rewriter::new();
            let mut input = bytes::BytesMut::from(&preface[..]);
            let mut out = bytes::BytesMut::new();
            rw.process(&mut input, &mut out).unwrap();
            b.iter(|| {
                out.clear();
                input.extend_from_slice(&request);
                rw.process(&mut input, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
}

criterion_group!(
    benches,
    issuance,
    jwt,
    wit,
    selectors,
    spiffe_ids,
    attestation,
    authority_shim
);
criterion_main!(benches);
