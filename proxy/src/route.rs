//! Stage 1 of the request path: canonical host + canonical path → route.
//!
//! The table is compiled once from the configuration into an immutable
//! structure (hosts hashed, prefixes sorted longest first) and swapped
//! atomically with the rest of the [`crate::pipeline::Snapshot`]: a lookup
//! takes no lock and allocates nothing. The longest prefix on a host wins,
//! and a prefix matches on segment boundaries only (`/api` matches `/api`
//! and `/api/x`, never `/apix`).

use std::collections::HashMap;
use std::sync::Arc;

/// Route table: host → (prefix → value). A lookup tries the path's own
/// segment-boundary prefixes from the longest down (`/a/b/c`, `/a/b`, `/a`,
/// `/`): a handful of hash lookups bounded by the path's depth, whatever the
/// number of routes on the host.
#[derive(Debug)]
pub struct RouteTable<T> {
    hosts: HashMap<Box<str>, HashMap<Box<str>, Arc<T>>>,
}

impl<T> RouteTable<T> {
    /// Compiles `(host, prefix, value)` triples. Hosts and prefixes must already be canonical.
    pub fn new(entries: impl IntoIterator<Item = (String, String, Arc<T>)>) -> Self {
        let mut hosts: HashMap<Box<str>, HashMap<Box<str>, Arc<T>>> = HashMap::new();
        for (host, prefix, v) in entries {
            let prefix = if prefix == "/" {
                String::new()
            } else {
                prefix.trim_end_matches('/').to_string()
            };
            hosts
                .entry(host.into_boxed_str())
                .or_default()
                .entry(prefix.into_boxed_str())
                .or_insert(v);
        }
        Self { hosts }
    }

    /// The route for a canonical host and decoded canonical path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<T>> {
        let prefixes = self.hosts.get(host)?;
        let mut candidate = path.strip_suffix('/').unwrap_or(path);
        loop {
            if let Some(v) = prefixes.get(candidate) {
                return Some(v);
            }
            if candidate.is_empty() {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(i) => &candidate[..i],
                None => "",
            };
        }
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = RouteTable::new([
            ("a.com".into(), "/".into(), Arc::new(1)),
            ("a.com".into(), "/api".into(), Arc::new(2)),
            ("a.com".into(), "/api/v2/".into(), Arc::new(3)),
            ("b.com".into(), "/x".into(), Arc::new(4)),
        ]);
        let l = |h: &str, p: &str| t.lookup(h, p).map(|v| **v);
        assert_eq!(l("a.com", "/"), Some(1));
        assert_eq!(l("a.com", "/apix"), Some(1));
        assert_eq!(l("a.com", "/api"), Some(2));
        assert_eq!(l("a.com", "/api/"), Some(2));
        assert_eq!(l("a.com", "/api/v2"), Some(3));
        assert_eq!(l("a.com", "/api/v2/z"), Some(3));
        assert_eq!(l("b.com", "/"), None);
        assert_eq!(l("b.com", "/x/y"), Some(4));
        assert_eq!(l("c.com", "/"), None);
    }
}
