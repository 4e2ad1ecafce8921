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

/// One host's routes: (prefix without trailing slash, value).
type Prefix<T> = (Box<str>, Arc<T>);
type Prefixes<T> = Vec<Prefix<T>>;

/// Route table: host → (prefix, value) sorted by descending prefix length.
#[derive(Debug)]
pub struct RouteTable<T> {
    hosts: HashMap<Box<str>, Box<[Prefix<T>]>>,
}

impl<T> RouteTable<T> {
    /// Compiles `(host, prefix, value)` triples. Hosts and prefixes must already be canonical.
    pub fn new(entries: impl IntoIterator<Item = (String, String, Arc<T>)>) -> Self {
        let mut by_host: HashMap<Box<str>, Prefixes<T>> = HashMap::new();
        for (host, prefix, v) in entries {
            let prefix = if prefix == "/" {
                String::new()
            } else {
                prefix.trim_end_matches('/').to_string()
            };
            by_host
                .entry(host.into_boxed_str())
                .or_default()
                .push((prefix.into_boxed_str(), v));
        }
        let hosts = by_host
            .into_iter()
            .map(|(h, mut v)| {
                v.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
                (h, v.into_boxed_slice())
            })
            .collect();
        Self { hosts }
    }

    /// The route for a canonical host and decoded canonical path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<T>> {
        let entries = self.hosts.get(host)?;
        entries
            .iter()
            .find(|(prefix, _)| {
                path.strip_prefix(&**prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(_, v)| v)
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
