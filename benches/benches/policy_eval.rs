//! Policy evaluation, side by side with cedar-policy, plus the CIDR lookup and
//! the compile time it rests on.
//!
//! - `policy_eval/rules/{engine}/{request}/{1,10,100,1000,10000}`: one decision
//!   by dermgate (`CompiledPolicy::evaluate`) and by cedar
//!   (`Authorizer::is_authorized`) on equivalent policies and the same request.
//!   `allow_last` is allowed by the last rule in file order (the worst case for
//!   a first-match scan); `deny_network` comes from an address no rule allows,
//!   so dermgate also ranks the near misses for its deny reason.
//! - `policy_eval/rules/dermgate_one_group/{request}/{n}`: the same rules with
//!   every allow rule in one group, so that only the route narrows the
//!   candidates: how dermgate's time grows when its group index cannot help.
//! - `cidr_match/prefixes/100000`: `SourceSet::contains` over 100,000 random
//!   IPv4 and IPv6 prefixes, on a rotating mix of hits and misses
//!   (`prefixes_v4`, `prefixes_v6`: one family each), side by side with
//!   `reference_bucketed_ranges/..`, the same set as sorted disjoint ranges
//!   found through a table on the leading address bits (a candidate layout for
//!   `SourceSet`, checked to agree with it).
//! - `policy_compile/rules/{engine}/10000`: dermgate policy text to
//!   `CompiledPolicy` (parse, validate, compile), and for reference cedar
//!   policy text to `PolicySet` (parse only: cedar has no compile stage).
//!
//! The policies model a growing organisation: 8 routes; one team group per ten
//! rules; every rule names its route, its team, methods, a path prefix of its
//! own (`/svc{i}/**`), a /24 in 10.0.0.0/8 and an MFA age. Every twentieth rule
//! is a deny rule without groups (no export of `/svc{i}/export/**` from outside
//! 10.0.0.0/8). The cedar policy of rule `i` is written as a cedar user would
//! (`principal in Group`, `action in [..]`, `resource ==`, a `when` with `like`
//! and `context.src.isInRange(ip(..))`, the source passed as an `ipaddr` value
//! so that cedar does not parse it per policy), annotated with the same name,
//! so the benchmark checks that both engines decide alike, and name the same
//! rule, before measuring. The cedar request and entities are built once, as
//! dermgate's `RequestFacts` are.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, PolicySet,
    Request, RestrictedExpression,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dermgate_policy::{CompiledPolicy, DenyReason, Policy, RequestFacts, SourceSet, Timestamp};

const RULE_COUNTS: [usize; 5] = [1, 10, 100, 1000, 10_000];
const ROUTES: [&str; 8] = [
    "ehr",
    "imaging",
    "billing",
    "video",
    "lab",
    "scheduling",
    "portal",
    "files",
];
/// Rules per team group.
const TEAM_SIZE: usize = 10;
const MFA_MAX_SECS: u64 = 12 * 3600;

/// splitmix64: a reproducible generator without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn is_deny(i: usize) -> bool {
    i % 20 == 7
}

fn route_of(i: usize) -> &'static str {
    ROUTES[i % ROUTES.len()]
}

/// How the rules' groups are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Groups {
    /// One team group per ten rules: the organisation grows by teams.
    Teams,
    /// Every allow rule names the same group: the worst case for an index by group.
    One,
}

fn team_of(i: usize, groups: Groups) -> String {
    match groups {
        Groups::Teams => format!("team{}", i / TEAM_SIZE),
        Groups::One => "clinicians".to_string(),
    }
}

fn methods_of(i: usize) -> &'static [&'static str] {
    if i.is_multiple_of(2) {
        &["GET", "HEAD"]
    } else {
        &["GET", "HEAD", "POST", "PUT"]
    }
}

/// The /24 of rule `i`, and an address inside it.
fn net_of(i: usize) -> (String, Ipv4Addr) {
    let (a, b) = ((i >> 8) as u8, i as u8);
    (format!("10.{a}.{b}.0/24"), Ipv4Addr::new(10, a, b, 7))
}

/// The dermgate policy text of `n` rules.
fn dermgate_policy(n: usize, groups: Groups) -> String {
    let mut s = String::with_capacity(n * 220);
    for i in 0..n {
        let route = route_of(i);
        if is_deny(i) {
            write!(
                s,
                "[[rule]]\nname = \"rule-{i}\"\neffect = \"deny\"\nroutes = [\"{route}\"]\n\
                 paths = [\"/svc{i}/export/**\"]\nsources = [\"!10.0.0.0/8\"]\n\n"
            )
            .unwrap();
        } else {
            let methods = methods_of(i)
                .iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let (net, _) = net_of(i);
            write!(
                s,
                "[[rule]]\nname = \"rule-{i}\"\neffect = \"allow\"\nroutes = [\"{route}\"]\n\
                 groups = [\"{team}\"]\nmethods = [{methods}]\npaths = [\"/svc{i}/**\"]\n\
                 sources = [\"{net}\"]\nmfa_max_age = \"12h\"\n\n",
                team = team_of(i, groups)
            )
            .unwrap();
        }
    }
    s
}

/// The equivalent cedar policies, with the same ids.
fn cedar_policy(n: usize, groups: Groups) -> String {
    let mut s = String::with_capacity(n * 380);
    for i in 0..n {
        let route = route_of(i);
        if is_deny(i) {
            write!(
                s,
                "@id(\"rule-{i}\")\nforbid (principal, action, resource == Route::\"{route}\")\n\
                 when {{ (context.path == \"/svc{i}/export\" || context.path like \"/svc{i}/export/*\") \
                 && !context.src.isInRange(ip(\"10.0.0.0/8\")) }};\n\n"
            )
            .unwrap();
        } else {
            let actions = methods_of(i)
                .iter()
                .map(|m| format!("Action::\"{m}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let (net, _) = net_of(i);
            write!(
                s,
                "@id(\"rule-{i}\")\npermit (\n  principal in Group::\"{team}\",\n  \
                 action in [{actions}],\n  resource == Route::\"{route}\"\n)\nwhen {{\n  \
                 (context.path == \"/svc{i}\" || context.path like \"/svc{i}/*\") &&\n  \
                 context.src.isInRange(ip(\"{net}\")) &&\n  \
                 context has mfa_age_secs && context.mfa_age_secs <= {MFA_MAX_SECS}\n}};\n\n",
                team = team_of(i, groups)
            )
            .unwrap();
        }
    }
    s
}

fn compile_dermgate(n: usize, groups: Groups) -> CompiledPolicy {
    Policy::from_str("policy.toml", &dermgate_policy(n, groups), Some(&ROUTES))
        .expect("valid policy")
}

/// One request, as both engines see it.
#[derive(Debug, Clone)]
struct Req {
    route: &'static str,
    method: &'static str,
    path: String,
    source: IpAddr,
    groups: Vec<String>,
    mfa_age: Option<Duration>,
}

impl Req {
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            route: self.route,
            method: self.method,
            path: &self.path,
            source: self.source,
            user: Some("alice"),
            groups: &self.groups,
            claims: None,
            mfa_age: self.mfa_age,
            time: "2026-03-02T14:00:00Z".parse::<Timestamp>().unwrap(),
            device: None,
            visit_room: None,
            break_glass: false,
        }
    }

    /// The cedar request and the entities it needs: the user and its groups.
    fn cedar(&self) -> (Request, Entities) {
        let user = EntityUid::from_str(r#"User::"alice""#).unwrap();
        let parents: HashSet<EntityUid> = self
            .groups
            .iter()
            .map(|g| EntityUid::from_str(&format!("Group::\"{g}\"")).unwrap())
            .collect();
        let entities =
            Entities::from_entities([Entity::new_no_attrs(user.clone(), parents)], None).unwrap();
        let mut context = vec![
            (
                "path".to_string(),
                RestrictedExpression::new_string(self.path.clone()),
            ),
            (
                "src".to_string(),
                RestrictedExpression::new_ip(self.source.to_string()),
            ),
        ];
        if let Some(age) = self.mfa_age {
            context.push((
                "mfa_age_secs".to_string(),
                RestrictedExpression::new_long(i64::try_from(age.as_secs()).unwrap()),
            ));
        }
        let request = Request::new(
            user,
            EntityUid::from_str(&format!("Action::\"{}\"", self.method)).unwrap(),
            EntityUid::from_str(&format!("Route::\"{}\"", self.route)).unwrap(),
            Context::from_pairs(context).unwrap(),
            None,
        )
        .unwrap();
        (request, entities)
    }
}

/// Allowed by the last rule (never a deny rule for the counts measured).
fn allow_last(n: usize, groups: Groups) -> Req {
    let last = n - 1;
    assert!(!is_deny(last));
    // The last rule's team, the first rule's team and a group no rule names;
    // an identity provider lists each group once.
    let mut user_groups = vec![team_of(last, groups), team_of(0, groups)];
    user_groups.dedup();
    user_groups.push("staff".to_string());
    Req {
        route: route_of(last),
        method: "GET",
        path: format!("/svc{last}/chart/42"),
        source: IpAddr::V4(net_of(last).1),
        groups: user_groups,
        mfa_age: Some(Duration::from_secs(600)),
    }
}

/// The same request from an address no rule allows.
fn deny_network(n: usize, groups: Groups) -> Req {
    Req {
        source: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        ..allow_last(n, groups)
    }
}

/// A random request near the policy's rules, for the agreement check.
fn random_req(rng: &mut Rng, n: usize) -> Req {
    let i = rng.below(n);
    let j = rng.below(n);
    let route = if rng.below(4) == 0 {
        ROUTES[rng.below(ROUTES.len())]
    } else {
        route_of(i)
    };
    let method = ["GET", "HEAD", "POST", "PUT", "DELETE"][rng.below(5)];
    let path = match rng.below(5) {
        0 => format!("/svc{i}"),
        1 => format!("/svc{i}/export/all"),
        2 => format!("/svc{i}x/a"),
        3 => "/".to_string(),
        _ => format!("/svc{i}/chart/{j}"),
    };
    let source = match rng.below(4) {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        1 => IpAddr::V4(net_of(j).1),
        _ => IpAddr::V4(net_of(i).1),
    };
    let mut groups = vec![team_of(j, Groups::Teams)];
    if rng.below(4) != 0 {
        groups.push(team_of(i, Groups::Teams));
        groups.dedup();
    }
    let mfa_age = match rng.below(4) {
        0 => None,
        1 => Some(Duration::from_secs(MFA_MAX_SECS + 1)),
        _ => Some(Duration::from_secs(rng.next() % MFA_MAX_SECS)),
    };
    Req {
        route,
        method,
        path,
        source,
        groups,
        mfa_age,
    }
}

/// Both engines decide `req` alike; returns the deciding rule when allowed.
fn check_agreement(dermgate: &CompiledPolicy, cedar: &PolicySet, req: &Req) -> Option<String> {
    let ours = dermgate.evaluate(&req.facts());
    let (request, entities) = req.cedar();
    let theirs = Authorizer::new().is_authorized(&request, cedar, &entities);
    let errors: Vec<String> = theirs
        .diagnostics()
        .errors()
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{req:?}: {errors:?}");
    let cedar_allow = theirs.decision() == CedarDecision::Allow;
    assert_eq!(ours.is_allow(), cedar_allow, "{req:?}: dermgate {ours}");
    if ours.is_allow() {
        // Cedar gives every permit that matched; dermgate the first in file order.
        let mut ids: Vec<usize> = theirs
            .diagnostics()
            .reason()
            .map(|id| {
                let name = cedar.policy(id).unwrap().annotation("id").unwrap();
                name["rule-".len()..].parse().unwrap()
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ours.rule(), format!("rule-{}", ids[0]), "{req:?}");
        Some(ours.rule().to_string())
    } else {
        None
    }
}

/// Criterion runs each benchmark once under `cargo test --benches`: keep the
/// setup of that run small.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn policy_eval(c: &mut Criterion) {
    let counts: &[usize] = if bench_mode() {
        &RULE_COUNTS
    } else {
        &RULE_COUNTS[..4]
    };
    let mut group = c.benchmark_group("policy_eval/rules");
    for &n in counts {
        // A cedar decision over 10,000 policies takes milliseconds.
        group.sample_size(if n >= 10_000 { 10 } else { 50 });
        let ours = compile_dermgate(n, Groups::Teams);
        let theirs =
            PolicySet::from_str(&cedar_policy(n, Groups::Teams)).expect("valid cedar policies");
        assert_eq!(theirs.policies().count(), n);

        // The two engines agree on the measured requests and on random ones.
        let allowed = allow_last(n, Groups::Teams);
        let denied = deny_network(n, Groups::Teams);
        let rule = check_agreement(&ours, &theirs, &allowed);
        assert_eq!(rule.as_deref(), Some(format!("rule-{}", n - 1).as_str()));
        assert_eq!(check_agreement(&ours, &theirs, &denied), None);
        assert_eq!(
            ours.evaluate(&denied.facts()).reason(),
            Some(DenyReason::NetworkNotAllowed)
        );
        if n <= 1000 {
            let mut rng = Rng(n as u64);
            let allows = (0..300)
                .filter(|_| check_agreement(&ours, &theirs, &random_req(&mut rng, n)).is_some())
                .count();
            assert!(allows > 0, "the random requests never allow");
        }

        let authorizer = Authorizer::new();
        for (name, req) in [("allow_last", &allowed), ("deny_network", &denied)] {
            let facts = req.facts();
            group.bench_with_input(
                BenchmarkId::new(format!("dermgate/{name}"), n),
                &n,
                |b, _| b.iter(|| ours.evaluate(black_box(&facts)).is_allow()),
            );
            let (request, entities) = req.cedar();
            group.bench_with_input(BenchmarkId::new(format!("cedar/{name}"), n), &n, |b, _| {
                b.iter(|| {
                    authorizer
                        .is_authorized(black_box(&request), &theirs, &entities)
                        .decision()
                })
            });
        }
        drop((ours, theirs));

        // Every allow rule in one group: the index by group narrows nothing,
        // only the route does. (Cedar evaluates every policy either way.)
        group.sample_size(50);
        let ours = compile_dermgate(n, Groups::One);
        let allowed = allow_last(n, Groups::One);
        let denied = deny_network(n, Groups::One);
        let decision = ours.evaluate(&allowed.facts());
        assert_eq!(decision.rule(), format!("rule-{}", n - 1));
        assert_eq!(
            ours.evaluate(&denied.facts()).reason(),
            Some(DenyReason::NetworkNotAllowed)
        );
        for (name, req) in [("allow_last", &allowed), ("deny_network", &denied)] {
            let facts = req.facts();
            group.bench_with_input(
                BenchmarkId::new(format!("dermgate_one_group/{name}"), n),
                &n,
                |b, _| b.iter(|| ours.evaluate(black_box(&facts)).is_allow()),
            );
        }
    }
    group.finish();
}

/// The reference for `cidr_match`: the union of the prefixes as sorted,
/// disjoint address ranges (all as `u128`), with a direct table on the
/// address's leading bits that narrows each binary search to a few ranges in
/// one or two cache lines. (Includes only: the benchmark's sets have no
/// exclusions, which would be subtracted at build time.)
struct BucketedRanges {
    starts: Box<[u128]>,
    ends: Box<[u128]>,
    /// `first[b]`: the first range starting in bucket `b` or later.
    first: Box<[u32]>,
    min: u128,
    max: u128,
    shift: u32,
}

impl BucketedRanges {
    fn new(mut ranges: Vec<(u128, u128)>) -> BucketedRanges {
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let (starts, ends): (Vec<u128>, Vec<u128>) = merged.into_iter().unzip();
        let min = starts.first().copied().unwrap_or(u128::MAX);
        let max = ends.last().copied().unwrap_or(0);
        // About two ranges per bucket.
        let bits = (usize::BITS - starts.len().leading_zeros()).saturating_sub(1);
        let span_bits = 128 - max.saturating_sub(min).leading_zeros();
        let shift = span_bits.saturating_sub(bits);
        let buckets = if starts.is_empty() {
            0
        } else {
            usize::try_from((max - min) >> shift).unwrap() + 1
        };
        let first = (0..=buckets)
            .map(|b| {
                let edge = min.saturating_add((b as u128) << shift);
                u32::try_from(starts.partition_point(|s| *s < edge)).unwrap()
            })
            .collect();
        BucketedRanges {
            starts: starts.into(),
            ends: ends.into(),
            first,
            min,
            max,
            shift,
        }
    }

    #[inline]
    fn contains(&self, a: u128) -> bool {
        if a < self.min || a > self.max {
            return false;
        }
        let b = ((a - self.min) >> self.shift) as usize;
        let (lo, hi) = (self.first[b] as usize, self.first[b + 1] as usize);
        let i = lo + self.starts[lo..hi].partition_point(|s| *s <= a);
        i > 0 && self.ends[i - 1] >= a
    }
}

/// [`BucketedRanges`] per address family, with `SourceSet`'s IPv4-mapped rule.
struct RangeSet {
    v4: BucketedRanges,
    v6: BucketedRanges,
}

impl RangeSet {
    fn new(v4: &[(Ipv4Addr, u8)], v6: &[(Ipv6Addr, u8)]) -> RangeSet {
        RangeSet {
            v4: BucketedRanges::new(
                v4.iter()
                    .map(|&(a, l)| {
                        let s = u32::from(a);
                        let e = s | u32::MAX.checked_shr(u32::from(l)).unwrap_or(0);
                        (u128::from(s), u128::from(e))
                    })
                    .collect(),
            ),
            v6: BucketedRanges::new(
                v6.iter()
                    .map(|&(a, l)| {
                        let s = u128::from(a);
                        (s, s | u128::MAX.checked_shr(u32::from(l)).unwrap_or(0))
                    })
                    .collect(),
            ),
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains(u32::from(a).into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => self.v4.contains(u32::from(a).into()),
                None => self.v6.contains(u128::from(a)),
            },
        }
    }
}

/// A random network of `len` bits: the host bits cleared.
fn random_v4(rng: &mut Rng, len: u8) -> (Ipv4Addr, u8) {
    let bits = rng.next() as u32;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (Ipv4Addr::from(bits & mask), len)
}

fn random_v6(rng: &mut Rng, len: u8) -> (Ipv6Addr, u8) {
    // Global unicast space, as real allow lists hold.
    let bits = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !(0xe000u128 << 112)
        | (0x2000u128 << 112);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (Ipv6Addr::from(bits & mask), len)
}

fn cidr_match(c: &mut Criterion) {
    const PREFIXES: usize = 100_000;
    const POOL: usize = 4096;
    let mut rng = Rng(0x5eed);
    let mut entries = Vec::with_capacity(PREFIXES);
    let mut v4_nets = Vec::new();
    let mut v6_nets = Vec::new();
    for k in 0..PREFIXES {
        if k % 2 == 0 {
            let len = 12 + rng.below(21) as u8; // /12../32
            let (a, l) = random_v4(&mut rng, len);
            entries.push(format!("{a}/{l}"));
            v4_nets.push((a, l));
        } else {
            let len = 24 + rng.below(41) as u8; // /24../64
            let (a, l) = random_v6(&mut rng, len);
            entries.push(format!("{a}/{l}"));
            v6_nets.push((a, l));
        }
    }
    let set = SourceSet::parse(entries.iter().map(String::as_str)).expect("valid prefixes");

    // Addresses: half inside a listed network (random host bits), half random.
    let v4_addr = |rng: &mut Rng| -> IpAddr {
        if rng.below(2) == 0 {
            let (a, l) = v4_nets[rng.below(v4_nets.len())];
            let host = if l == 32 {
                0
            } else {
                rng.next() as u32 & (u32::MAX >> l)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
        }
    };
    let v6_addr = |rng: &mut Rng| -> IpAddr {
        if rng.below(2) == 0 {
            let (a, l) = v6_nets[rng.below(v6_nets.len())];
            let host = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & (u128::MAX >> l);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
        } else {
            random_v6(rng, 128).0.into()
        }
    };
    let v4: Vec<IpAddr> = (0..POOL).map(|_| v4_addr(&mut rng)).collect();
    let v6: Vec<IpAddr> = (0..POOL).map(|_| v6_addr(&mut rng)).collect();
    let mixed: Vec<IpAddr> = v4.iter().zip(&v6).flat_map(|(a, b)| [*a, *b]).collect();
    for pool in [&v4, &v6] {
        let hits = pool.iter().filter(|a| set.contains(**a)).count();
        assert!(hits >= POOL / 2, "every inside address is in the set");
    }

    let reference = RangeSet::new(&v4_nets, &v6_nets);
    for a in &mixed {
        assert_eq!(set.contains(*a), reference.contains(*a), "{a}");
    }

    let mut group = c.benchmark_group("cidr_match");
    group.throughput(Throughput::Elements(1));
    for (name, pool) in [
        ("prefixes", &mixed),
        ("prefixes_v4", &v4),
        ("prefixes_v6", &v6),
    ] {
        group.bench_with_input(BenchmarkId::new(name, PREFIXES), pool, |b, pool| {
            let mut k = 0usize;
            b.iter(|| {
                k = (k + 1) % pool.len();
                set.contains(black_box(pool[k]))
            })
        });
        group.bench_with_input(
            BenchmarkId::new(format!("reference_bucketed_ranges/{name}"), PREFIXES),
            pool,
            |b, pool| {
                let mut k = 0usize;
                b.iter(|| {
                    k = (k + 1) % pool.len();
                    reference.contains(black_box(pool[k]))
                })
            },
        );
    }
    group.finish();
}

fn policy_compile(c: &mut Criterion) {
    let n = if bench_mode() { 10_000 } else { 100 };
    let ours = dermgate_policy(n, Groups::Teams);
    let theirs = cedar_policy(n, Groups::Teams);
    let mut group = c.benchmark_group("policy_compile/rules");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::new("dermgate", n), &ours, |b, text| {
        b.iter(|| Policy::from_str("policy.toml", black_box(text), Some(&ROUTES)).unwrap())
    });
    group.bench_with_input(BenchmarkId::new("cedar_parse", n), &theirs, |b, text| {
        b.iter(|| PolicySet::from_str(black_box(text)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = policy_eval, cidr_match, policy_compile
}
criterion_main!(benches);
