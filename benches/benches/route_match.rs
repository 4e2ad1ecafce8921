//! `route_match/routes/{10,1000}`: `RouteTable::lookup` (hosts hashed, each
//! host's prefixes sorted longest first) side by side with the naive reference,
//! a linear scan of every configured route ([`LinearRoutes`]), on the same
//! routes and the same queries.
//!
//! The routes are spread over hosts as a practice would configure them: 10
//! routes on 2 hosts, 1000 routes on 40 hosts (25 prefixes each). `one_host`
//! puts all routes on a single host, the worst case for the per-host prefix scan.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dermgate_benches::{LinearRoutes, host_name, route_entries};
use dermgate_proxy::route::RouteTable;

/// (routes, hosts, label)
const SHAPES: &[(usize, usize, &str)] = &[(10, 2, ""), (1000, 40, ""), (1000, 1, "/one_host")];

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for &(routes, hosts, label) in SHAPES {
        let entries = route_entries(routes, hosts);
        let table = RouteTable::new(entries.clone());
        let linear = LinearRoutes::new(entries);
        let per_host = routes.div_ceil(hosts);
        // The last host: in the linear scan its routes are spread to the end of the list.
        let last = hosts - 1;
        let host_even = host_name(last - last % 2);
        let host_odd = host_name(if hosts > 1 { last - (1 - last % 2) } else { 0 });
        // The longest prefix of that host: found first in the sorted table.
        let k = if per_host.is_multiple_of(2) {
            per_host - 1
        } else {
            per_host - 2
        };
        let deep = format!("/svc{k}/api/v{k}/patients/42/notes");
        let queries: [(&str, String, String); 4] = [
            // a nested prefix: the longest match
            ("hit_nested", host_even.clone(), deep),
            // falls through every prefix of the host to the catch-all `/`
            ("hit_catch_all", host_even, "/patients/42/chart".to_string()),
            // a host that is served, a path that is not (odd hosts have no `/`)
            ("miss_path", host_odd, "/nowhere/at/all".to_string()),
            // a host that is not served
            (
                "miss_host",
                "unknown.example.org".to_string(),
                "/".to_string(),
            ),
        ];
        for (name, host, path) in &queries {
            if *name == "miss_path" && hosts == 1 {
                continue; // one host with a catch-all: nothing misses on it
            }
            let expected = linear.lookup(host, path).map(|v| **v);
            assert_eq!(table.lookup(host, path).map(|v| **v), expected, "{name}");
            if name.starts_with("hit") {
                assert!(expected.is_some(), "{name} must hit");
            } else {
                assert!(expected.is_none(), "{name} must miss");
            }
            group.bench_function(format!("routes/{routes}{label}/table/{name}"), |b| {
                b.iter(|| table.lookup(black_box(host), black_box(path)))
            });
            group.bench_function(format!("routes/{routes}{label}/linear_scan/{name}"), |b| {
                b.iter(|| linear.lookup(black_box(host), black_box(path)))
            });
        }
        group.bench_function(format!("routes/{routes}{label}/table/build"), |b| {
            b.iter_batched(
                || route_entries(routes, hosts),
                RouteTable::new,
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = route_match
}
criterion_main!(benches);
