//! Fixtures and references shared by the criterion benchmarks in `benches/`.
//!
//! The benchmarks themselves live in `benches/*.rs`; this library holds what
//! they build their inputs from, and the naive references they are compared
//! against, so that both can be unit-tested for agreement with the real code.

use std::sync::Arc;

/// One configured route as the proxy compiles it: (canonical host, prefix, value).
pub type RouteEntry<T> = (String, String, Arc<T>);

/// `routes` routes spread over `hosts` hosts, round robin, each host with a mix
/// of short and nested prefixes; even hosts also have a catch-all `/`, odd
/// hosts do not (so a path outside their prefixes misses). The value is the
/// route's index. Host `h` is `site{h}.example-derm.com`.
pub fn route_entries(routes: usize, hosts: usize) -> Vec<RouteEntry<usize>> {
    let hosts = hosts.max(1);
    (0..routes)
        .map(|i| {
            let h = i % hosts;
            let k = i / hosts;
            let prefix = if k == 0 {
                if h.is_multiple_of(2) {
                    "/".to_string()
                } else {
                    "/home".to_string()
                }
            } else if k.is_multiple_of(2) {
                format!("/svc{k}")
            } else {
                format!("/svc{k}/api/v{k}")
            };
            (host_name(h), prefix, Arc::new(i))
        })
        .collect()
}

/// The canonical host name of fixture host `h`.
pub fn host_name(h: usize) -> String {
    format!("site{h}.example-derm.com")
}

/// The naive reference for route lookup: one list in configuration order,
/// every entry compared on every request, the longest matching prefix on the
/// host wins. Same semantics as `dermgate_proxy::route::RouteTable`: prefixes
/// match on segment boundaries only and a trailing `/` is ignored.
#[derive(Debug)]
pub struct LinearRoutes<T> {
    entries: Vec<(String, String, Arc<T>)>,
}

impl<T> LinearRoutes<T> {
    /// Keeps the entries in the order given, prefixes stored as `RouteTable` does.
    pub fn new(entries: impl IntoIterator<Item = RouteEntry<T>>) -> Self {
        let entries = entries
            .into_iter()
            .map(|(host, prefix, v)| {
                let prefix = if prefix == "/" {
                    String::new()
                } else {
                    prefix.trim_end_matches('/').to_string()
                };
                (host, prefix, v)
            })
            .collect();
        Self { entries }
    }

    /// Scans every entry; the longest matching prefix on `host` wins.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<T>> {
        let mut best: Option<(usize, &Arc<T>)> = None;
        for (h, prefix, v) in &self.entries {
            if h != host {
                continue;
            }
            let matches = path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if matches && best.is_none_or(|(len, _)| prefix.len() > len) {
                best = Some((prefix.len(), v));
            }
        }
        best.map(|(_, v)| v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dermgate_proxy::route::RouteTable;

    #[test]
    fn linear_reference_agrees_with_route_table() {
        for (routes, hosts) in [(10, 2), (1000, 40), (1000, 1)] {
            let entries = route_entries(routes, hosts);
            let table = RouteTable::new(entries.clone());
            let linear = LinearRoutes::new(entries);
            let mut paths = vec![
                "/".to_string(),
                "/home".to_string(),
                "/home/x".to_string(),
                "/nowhere/x".to_string(),
                "/svc".to_string(),
            ];
            for k in 0..(routes / hosts + 2) {
                paths.push(format!("/svc{k}"));
                paths.push(format!("/svc{k}x"));
                paths.push(format!("/svc{k}/api/v{k}/patients/42"));
                paths.push(format!("/svc{k}/api/other"));
            }
            for h in 0..hosts + 1 {
                let host = host_name(h);
                for p in &paths {
                    assert_eq!(
                        table.lookup(&host, p).map(|v| **v),
                        linear.lookup(&host, p).map(|v| **v),
                        "{routes} routes: {host}{p}"
                    );
                }
            }
        }
    }

    #[test]
    fn fixture_shape() {
        let e = route_entries(10, 2);
        assert_eq!(e.len(), 10);
        let t = RouteTable::new(e);
        assert_eq!(t.host_count(), 2);
        assert_eq!(t.lookup(&host_name(0), "/anything").map(|v| **v), Some(0));
        assert_eq!(t.lookup(&host_name(1), "/anything"), None);
    }
}
