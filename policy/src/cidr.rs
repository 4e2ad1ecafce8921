//! Compiled `sources`: one prefix trie per address family for the listed
//! networks and one for the excluded ones.
//!
//! Semantics (DESIGN.md): an address matches when it is in a listed network (or
//! `any` is listed, or only exclusions are listed) and in no excluded one. An
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as the IPv4 address, and
//! IPv4-mapped networks were turned into IPv4 networks by validation, so the two
//! spellings of the same client can never be treated differently. Other IPv6
//! networks (even `::/0`) contain only IPv6 addresses.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;

use crate::ast::Source;

/// A compiled `sources` condition. Lookups are O(prefix length), independent of
/// how many networks are listed.
#[derive(Clone)]
pub struct SourceSet {
    any: bool,
    include_v4: PrefixSet<Ipv4Net>,
    include_v6: PrefixSet<Ipv6Net>,
    exclude_v4: PrefixSet<Ipv4Net>,
    exclude_v6: PrefixSet<Ipv6Net>,
}

impl std::fmt::Debug for SourceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSet")
            .field("any", &self.any)
            .field("include", &(self.include_v4.len() + self.include_v6.len()))
            .field("exclude", &(self.exclude_v4.len() + self.exclude_v6.len()))
            .finish()
    }
}

impl SourceSet {
    /// Builds the set from validated `sources` entries.
    pub fn new(entries: &[Source]) -> SourceSet {
        let mut set = SourceSet {
            any: false,
            include_v4: PrefixSet::new(),
            include_v6: PrefixSet::new(),
            exclude_v4: PrefixSet::new(),
            exclude_v6: PrefixSet::new(),
        };
        let mut includes = 0usize;
        for e in entries {
            match *e {
                Source::Any => {
                    set.any = true;
                    includes += 1;
                }
                Source::Include(net) => {
                    includes += 1;
                    match crate::parse::canonical_net(net) {
                        IpNet::V4(n) => set.include_v4.insert(n),
                        IpNet::V6(n) => set.include_v6.insert(n),
                    };
                }
                Source::Exclude(net) => {
                    match crate::parse::canonical_net(net) {
                        IpNet::V4(n) => set.exclude_v4.insert(n),
                        IpNet::V6(n) => set.exclude_v6.insert(n),
                    };
                }
            }
        }
        if includes == 0 {
            set.any = true;
        }
        set
    }

    /// Parses entries as written in a policy (`"any"`, `"10.0.0.0/8"`, `"!10.1.0.0/16"`).
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<SourceSet, crate::ValueError> {
        let parsed = entries
            .into_iter()
            .map(crate::parse::parse_source)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SourceSet::new(&parsed))
    }

    /// True when `addr` is in the set.
    #[inline]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.contains_v4(Ipv4Net::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.contains_v4(Ipv4Net::from(v4)),
                None => {
                    let host = Ipv6Net::from(a);
                    (self.any || self.include_v6.is_covered(&host))
                        && (self.exclude_v6.is_empty() || !self.exclude_v6.is_covered(&host))
                }
            },
        }
    }

    #[inline]
    fn contains_v4(&self, host: Ipv4Net) -> bool {
        (self.any || self.include_v4.is_covered(&host))
            && (self.exclude_v4.is_empty() || !self.exclude_v4.is_covered(&host))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> SourceSet {
        SourceSet::parse(entries.iter().copied()).unwrap_or_else(|_| SourceSet::new(&[]))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn includes_excludes_and_mapped() {
        let s = set(&["10.0.0.0/8", "!10.9.0.0/16", "2001:db8::/32"]);
        assert!(s.contains(ip("10.0.0.0")));
        assert!(s.contains(ip("10.255.255.255")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(!s.contains(ip("10.9.1.1")));
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:10.9.2.3")));
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("2001:db9::1")));

        let only_excl = set(&["!192.168.0.0/16"]);
        assert!(only_excl.contains(ip("8.8.8.8")));
        assert!(only_excl.contains(ip("::1")));
        assert!(!only_excl.contains(ip("192.168.1.1")));
        assert!(!only_excl.contains(ip("::ffff:192.168.1.1")));

        // An exclusion wins even over a more specific inclusion.
        let s = set(&["10.1.0.0/16", "!10.0.0.0/8"]);
        assert!(!s.contains(ip("10.1.2.3")));

        let v6all = set(&["::/0"]);
        assert!(v6all.contains(ip("2001:db8::1")));
        assert!(!v6all.contains(ip("1.2.3.4")));
        assert!(!v6all.contains(ip("::ffff:1.2.3.4")));

        let mapped = set(&["::ffff:192.0.2.0/120"]);
        assert!(mapped.contains(ip("192.0.2.7")));
        assert!(!mapped.contains(ip("192.0.3.7")));
    }

    #[test]
    fn edges() {
        let all4 = set(&["0.0.0.0/0"]);
        assert!(all4.contains(ip("0.0.0.0")));
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(!all4.contains(ip("::1")));
        let host = set(&["192.0.2.1/32"]);
        assert!(host.contains(ip("192.0.2.1")));
        assert!(!host.contains(ip("192.0.2.0")));
        assert!(!host.contains(ip("192.0.2.2")));
        let host6 = set(&["2001:db8::1/128"]);
        assert!(host6.contains(ip("2001:db8::1")));
        assert!(!host6.contains(ip("2001:db8::2")));
        let net = set(&["192.0.2.0/24"]);
        assert!(net.contains(ip("192.0.2.0")));
        assert!(net.contains(ip("192.0.2.255")));
        assert!(!net.contains(ip("192.0.1.255")));
        assert!(!net.contains(ip("192.0.3.0")));
    }
}
