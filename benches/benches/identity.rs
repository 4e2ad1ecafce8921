//! Identity on the hot path, side by side with references:
//! - `session_check/{embedded,redis}`: the session cookie opened and the
//!   session read from the store (what every request with a cookie costs),
//!   next to its parts (`cookie_open` alone, `store_get` alone). Target: ≤ 2 µs
//!   embedded. The Redis case runs only when `redis-server` is installed.
//! - `bearer_verify/{RS256,ES256}`: dermgate's bearer check (key from the
//!   JWKS by `kid`, algorithm from the key, `iss`/`aud`/`exp`/`nbf`) next to a
//!   bare `jsonwebtoken::decode` of the same token with the same key.
//!   Target: overhead ≤ 10 %.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dermgate_proxy::config::Config;
use dermgate_proxy::identity::session::{SessionRecord, now};
use dermgate_proxy::identity::{COOKIE_NAME, IdentityService};
use dermgate_proxy::store::SessionStore;

const JWKS: &str = include_str!("data/jwks.json");
const RSA_KEY: &str = include_str!("data/rsa-bench-key.pem");
const EC_KEY: &str = include_str!("data/ec-bench-key.pem");
const ISSUER: &str = "https://127.0.0.1:1";

struct Setup {
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &Path, store: &str) -> Config {
    let certs = dermgate_proxy::certs::generate_dev(&dir.join("certs"), &[]).expect("dev certs");
    std::fs::write(dir.join("secret"), "bench-secret").expect("secret");
    let text = format!(
        r#"[listen]
addr = "127.0.0.1:0"
[tls]
cert = "{cert}"
key = "{key}"
[oidc]
issuer = "{ISSUER}"
client_id = "bench"
client_secret_file = "secret"
callback = "https://gate.bench/.dermgate/callback"
api_audience = "dermgate-api"
[keys]
dir = "keys"
{store}
[[route]]
name = "ehr"
host = "gate.bench"
upstreams = ["https://127.0.0.1:9"]
upstream_ca = "{ca}"
"#,
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
        ca = certs.ca_cert.display(),
    );
    let path = dir.join("dermgate.toml");
    std::fs::write(&path, &text).expect("config");
    Config::parse(&path, &text).expect("valid bench config")
}

fn service(rt: &tokio::runtime::Runtime, tag: &str, store: &str) -> (Setup, IdentityService) {
    let dir = std::env::temp_dir().join(format!("dermgate-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = config(&dir, store);
    let id = cfg.identity.clone().expect("identity");
    let svc = rt
        .block_on(IdentityService::start(&cfg, &id))
        .expect("identity service");
    (Setup { dir }, svc)
}

fn cookie_headers(rt: &tokio::runtime::Runtime, svc: &IdentityService) -> http::HeaderMap {
    let t = now();
    let record = SessionRecord {
        sub: "dr.bench".into(),
        groups: vec!["clinicians".into()],
        amr: vec!["pwd".into(), "otp".into()],
        auth_time: t,
        mfa_time: Some(t),
        mfa_method: Some("idp:otp".into()),
        device: None,
        created: t,
        // Far enough in the future that the benchmark never writes last_seen.
        last_seen: t + 3600,
        sid: Some("sid-bench".into()),
        id_token: Some("x".repeat(900)),
        email: Some("dr.bench@example.test".into()),
    };
    let s = rt.block_on(svc.sessions.create(record)).expect("session");
    let sealed = svc.seal_cookie(&s).expect("seal");
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        format!("theme=dark; {COOKIE_NAME}={sealed}; lang=en")
            .parse()
            .expect("header"),
    );
    h
}

fn bench_session(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: &IdentityService,
) {
    let h = cookie_headers(rt, svc);
    let id = svc.open_cookie(&h).expect("cookie").expect("some").i;
    let mut g = c.benchmark_group("session_check");
    g.bench_function(format!("{name}/cached"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let s = svc.session(black_box(&h), None).await;
                    assert!(matches!(s, Ok(Ok(_))));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function(format!("{name}/cookie_open"), |b| {
        b.iter(|| svc.open_cookie(black_box(&h)))
    });
    g.bench_function(format!("{name}/store_get"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(svc.sessions.store().get(&format!("s:{id}")).await.ok());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

struct RedisProcess(Child);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(RedisProcess, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = RedisProcess(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((p, port))
}

fn session_check(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_s, svc) = service(
        &rt,
        "embedded",
        "[store]\nkind = \"embedded\"\npath = \"state\"",
    );
    bench_session(c, &rt, "embedded", &svc);
    match start_redis() {
        Some((_redis, port)) => {
            let store = format!("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"");
            let (_s, svc) = service(&rt, "redis", &store);
            bench_session(c, &rt, "redis", &svc);
        }
        None => eprintln!("redis-server not available: skipping session_check/redis"),
    }
}

fn bearer_verify(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_s, svc) = service(&rt, "bearer", "");
    svc.idp.install_keys(JWKS).expect("jwks");
    let t = now();
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "dermgate-api", "sub": "svc-billing", "groups": ["clinicians"],
        "amr": ["pwd", "otp"], "auth_time": t, "iat": t, "exp": t + 3600,
    });
    let mut g = c.benchmark_group("bearer_verify");
    for (alg, kid, enc, dec) in [
        (
            jsonwebtoken::Algorithm::RS256,
            "bench-rs",
            jsonwebtoken::EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).expect("rsa"),
            jsonwebtoken::DecodingKey::from_rsa_components(
                serde_json::from_str::<serde_json::Value>(JWKS).expect("jwks")["keys"][0]["n"]
                    .as_str()
                    .expect("n"),
                "AQAB",
            )
            .expect("rsa public"),
        ),
        (
            jsonwebtoken::Algorithm::ES256,
            "bench-es",
            jsonwebtoken::EncodingKey::from_ec_pem(EC_KEY.as_bytes()).expect("ec"),
            {
                let j: serde_json::Value = serde_json::from_str(JWKS).expect("jwks");
                jsonwebtoken::DecodingKey::from_ec_components(
                    j["keys"][1]["x"].as_str().expect("x"),
                    j["keys"][1]["y"].as_str().expect("y"),
                )
                .expect("ec public")
            },
        ),
    ] {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&header, &claims, &enc).expect("sign");
        assert!(
            rt.block_on(svc.idp.verify_bearer(&token)).is_ok(),
            "{alg:?} token verifies"
        );
        g.bench_function(format!("{alg:?}/dermgate"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(svc.idp.verify_bearer(black_box(&token)).await.ok());
                    }
                    start.elapsed()
                })
            })
        });
        let mut v = jsonwebtoken::Validation::new(alg);
        v.leeway = 30;
        v.validate_nbf = true;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&["dermgate-api"]);
        g.bench_function(format!("{alg:?}/jsonwebtoken_decode"), |b| {
            b.iter(|| {
                black_box(
                    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                        black_box(&token),
                        &dec,
                        &v,
                    )
                    .ok(),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, session_check, bearer_verify);
criterion_main!(benches);
