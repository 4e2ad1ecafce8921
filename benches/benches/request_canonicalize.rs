//! `request_canonicalize`: stage 0 of the request path, the canonical form of
//! DESIGN.md section 5, on realistic inputs.
//!
//! - `path/{root,typical,imaging}`: `canonical_path` alone (decode, check,
//!   normalise, re-encode), throughput in bytes of the raw path;
//! - `request/{root,typical,imaging}`: `canonicalize` on a whole browser-like
//!   request head (Host, Content-Length checks, then the path);
//! - `uri_parse_reference/{root,typical,imaging}`: `http::Uri` parsing of the same
//!   request target, the work hyper already does for every request: the
//!   reference that says whether canonicalisation is cheap or not;
//! - `path/refused_double_encoding`: how fast an attack spelling is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dermgate_proxy::canonical::{canonical_path, canonicalize};
use http::{HeaderMap, HeaderValue, Method, Uri};

/// (name, request target as sent)
const TARGETS: &[(&str, &str)] = &[
    ("root", "/"),
    ("typical", "/chart/42/notes?x=1"),
    (
        "imaging",
        "/imaging/studies/1.2.840.113619.2.55.3.604688119.969/series/./3/../4/instances/\
         Dermoscopy%20L%C3%A9sion%20dos%20gauche%20%232/frames/0001/rendered;q=90\
         ?quality=high&window=400,40",
    ),
];

/// A browser-like request head for `ehr.example-derm.com`.
fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "ehr.example-derm.com"),
        (
            "user-agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "cookie",
            "dermgate_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        ("referer", "https://ehr.example-derm.com/chart/42"),
        ("sec-fetch-mode", "navigate"),
    ] {
        h.append(name, HeaderValue::from_static(value));
    }
    h
}

fn request_canonicalize(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_canonicalize");
    let headers = browser_headers();
    for &(name, target) in TARGETS {
        let uri: Uri = target.parse().unwrap();
        let path = uri.path().to_string();
        // Sanity: every input is accepted, and the benchmark measures the success path.
        canonical_path(&path).unwrap();
        canonicalize(&Method::GET, &uri, &headers).unwrap();

        group.throughput(Throughput::Bytes(path.len() as u64));
        group.bench_function(format!("path/{name}"), |b| {
            b.iter(|| canonical_path(black_box(&path)))
        });

        group.throughput(Throughput::Bytes(target.len() as u64));
        group.bench_function(format!("request/{name}"), |b| {
            b.iter(|| {
                canonicalize(
                    black_box(&Method::GET),
                    black_box(&uri),
                    black_box(&headers),
                )
            })
        });
        group.bench_function(format!("uri_parse_reference/{name}"), |b| {
            b.iter(|| black_box(target).parse::<Uri>())
        });
    }
    let attack = "/chart/42/%252e%252e/%252e%252e/admin";
    assert!(canonical_path(attack).is_err());
    group.throughput(Throughput::Bytes(attack.len() as u64));
    group.bench_function("path/refused_double_encoding", |b| {
        b.iter(|| canonical_path(black_box(attack)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = request_canonicalize
}
criterion_main!(benches);
