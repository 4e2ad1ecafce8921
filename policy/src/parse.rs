//! Stages one and two: `parse` (TOML text → spanned syntax tree) and `validate`
//! (syntax tree → [`Policy`]), reporting every problem at once with
//! file:line:column, what was expected, and a did-you-mean where one helps.
//!
//! Validation is where the language is defined: which keys exist, what each
//! value may be, and which combinations make sense. Anything it lets through
//! compiles.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;

use crate::ast::{
    DeviceRequirement, Effect, Hours, OsVersion, PathPattern, Platform, Policy, Rule, Segment,
    Source,
};
use crate::error::ValueError;
use crate::text::{
    DeTable, DeValue, Diagnostics, LineIndex, Reader, Spanned, Value, did_you_mean, unknown,
};

/// The keys a `[[rule]]` may have, in the order `policy show` and the editor use.
pub const RULE_KEYS: &[&str] = &[
    "name",
    "effect",
    "routes",
    "groups",
    "claims",
    "mfa_max_age",
    "device",
    "sources",
    "methods",
    "paths",
    "hours",
    "visit_room",
    "break_glass",
];

const DEVICE_KEYS: &[&str] = &[
    "managed",
    "disk_encrypted",
    "screen_lock",
    "max_checkin_age",
    "os_min",
];

const HOURS_KEYS: &[&str] = &["days", "time", "tz"];

/// HTTP methods a rule may name (RFC 9110, PATCH, and the WebDAV methods some
/// imaging stores use). Anything else is most likely a typo.
pub const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "QUERY",
];

const DAY_NAMES: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The rule name reserved for "no rule decided" (default deny).
pub const DEFAULT_RULE: &str = "default";

/// Stage one's output: the policy text parsed into a spanned TOML tree.
pub struct SyntaxTree<'i> {
    file: String,
    text: &'i str,
    root: Spanned<DeTable<'i>>,
}

impl<'i> SyntaxTree<'i> {
    /// The file name given to [`parse`].
    pub fn file(&self) -> &str {
        &self.file
    }
    /// The text the tree was parsed from.
    pub fn text(&self) -> &'i str {
        self.text
    }
    /// The document's root table.
    pub fn root(&self) -> &DeTable<'i> {
        self.root.get_ref()
    }
}

/// Stage one: parses `text` (reported as `file`) as TOML, keeping positions.
pub fn parse<'i>(file: &str, text: &'i str) -> Result<SyntaxTree<'i>, Diagnostics> {
    // The tree borrows only `text`; the file name is put into the diagnostics after.
    let mut r = Reader::new("", text);
    match r.parse() {
        Some(root) => Ok(SyntaxTree {
            file: file.to_string(),
            text,
            root,
        }),
        None => {
            let mut d = r.finish();
            for x in &mut d.0 {
                x.file = file.to_string();
            }
            Err(d)
        }
    }
}

/// Stage two: checks the tree and builds the [`Policy`], or returns every problem found.
/// With `known_routes`, route names not in it are errors (with a did-you-mean).
pub fn validate(
    tree: &SyntaxTree<'_>,
    known_routes: Option<&[&str]>,
) -> Result<Policy, Diagnostics> {
    let mut r = Reader::new(&tree.file, tree.text);
    let mut v = Validator {
        lines: LineIndex::new(tree.text),
        known_routes,
    };
    let root = tree.root();
    r.check_keys(root, "the policy (top level)", &["rule"], &[]);
    let mut rules = Vec::new();
    match root.get("rule") {
        None => r.error(
            0..0,
            "the policy has no `[[rule]]`: with no rule every request is denied; add at least one rule",
        ),
        Some(value) => {
            let tables = r.table_array(value, "rule");
            if tables.is_empty() && matches!(value.get_ref(), DeValue::Array(_)) {
                r.error(value.span(), "`rule` is empty: add at least one `[[rule]]`");
            }
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (span, table) in tables {
                if let Some(rule) = v.rule(&mut r, span, table, &mut seen) {
                    rules.push(rule);
                }
            }
        }
    }
    let diags = r.finish();
    if diags.is_empty() {
        Ok(Policy {
            file: tree.file.clone(),
            rules,
        })
    } else {
        Err(diags)
    }
}

struct Validator<'a> {
    lines: LineIndex,
    known_routes: Option<&'a [&'a str]>,
}

/// A condition's value: `None` when left out; a failed value clears `ok`.
fn opt<T>(ok: &mut bool, x: Option<Option<T>>) -> Option<T> {
    match x {
        None => None,
        Some(None) => {
            *ok = false;
            None
        }
        Some(Some(v)) => Some(v),
    }
}

impl Validator<'_> {
    fn rule(
        &mut self,
        r: &mut Reader<'_>,
        span: Range<usize>,
        t: &DeTable<'_>,
        seen: &mut HashMap<String, usize>,
    ) -> Option<Rule> {
        // The name first, so that later messages can say which rule they are about.
        let name = match t.get("name") {
            None => {
                r.error(span.clone(), "this `[[rule]]` has no `name` (expected a unique name such as name = \"clinicians-ehr\")");
                None
            }
            Some(v) => match r.str(v, "name", "a string such as \"clinicians-ehr\"") {
                Some(n) if n.trim().is_empty() => {
                    r.error(v.span(), "`name` must not be empty");
                    None
                }
                Some(n) if n.chars().any(char::is_control) => {
                    r.error(v.span(), "`name` must not contain control characters");
                    None
                }
                Some(n) if n == DEFAULT_RULE => {
                    r.error(
                        v.span(),
                        "`default` is reserved for the default deny; choose another rule name",
                    );
                    None
                }
                Some(n) => {
                    let line = self.lines.line(v.span().start);
                    if let Some(first) = seen.get(n) {
                        r.error(
                            v.span(),
                            format!("duplicate rule name `{n}` (first used on line {first}); rule names must be unique"),
                        );
                    } else {
                        seen.insert(n.to_string(), line);
                    }
                    Some((n.to_string(), line))
                }
                None => None,
            },
        };
        let what = match &name {
            Some((n, _)) => format!("rule `{n}`"),
            None => "`[[rule]]`".to_string(),
        };
        r.check_keys(t, &what, RULE_KEYS, &[]);

        let effect = match t.get("effect") {
            None => {
                r.error(
                    span.clone(),
                    format!("{what} has no `effect` (expected \"allow\" or \"deny\")"),
                );
                None
            }
            Some(v) => r
                .str(v, "effect", "\"allow\" or \"deny\"")
                .and_then(|s| match s {
                    "allow" => Some(Effect::Allow),
                    "deny" => Some(Effect::Deny),
                    other => {
                        r.error(
                            v.span(),
                            unknown(&format!("effect \"{other}\""), other, &["allow", "deny"]),
                        );
                        None
                    }
                }),
        };

        let mut ok = name.is_some() && effect.is_some();
        let routes = opt(&mut ok, t.get("routes").map(|v| self.routes(r, v)));
        let groups = opt(
            &mut ok,
            t.get("groups").map(|v| {
                nonempty_list(r, v, "groups", "group names such as \"clinicians\"").map(|l| {
                    l.into_iter()
                        .map(|s| s.get_ref().to_string())
                        .collect::<Vec<_>>()
                })
            }),
        );
        let claims = opt(&mut ok, t.get("claims").map(|v| claims(r, v)));
        let mfa_max_age = opt(
            &mut ok,
            t.get("mfa_max_age").map(|v| r.duration(v, "mfa_max_age")),
        );
        let device = opt(&mut ok, t.get("device").map(|v| device(r, v)));
        let sources = opt(&mut ok, t.get("sources").map(|v| sources(r, v)));
        let methods = opt(&mut ok, t.get("methods").map(|v| methods(r, v)));
        let paths = opt(&mut ok, t.get("paths").map(|v| paths(r, v)));
        let hours = opt(&mut ok, t.get("hours").map(|v| hours(r, v)));
        let visit_room_own = opt(&mut ok, t.get("visit_room").map(|v| {
            let s = r.str(v, "visit_room", "\"own\"")?;
            if s == "own" {
                Some(true)
            } else {
                r.error(
                    v.span(),
                    format!("`visit_room` must be \"own\" (the session's own visit room), found \"{s}\""),
                );
                None
            }
        }))
        .unwrap_or(false);
        let break_glass = opt(
            &mut ok,
            t.get("break_glass").map(|v| r.bool(v, "break_glass")),
        )
        .unwrap_or(false);

        if break_glass
            && effect == Some(Effect::Deny)
            && let Some(v) = t.get("break_glass")
        {
            r.error(
                    v.span(),
                    "`break_glass = true` only makes sense on an allow rule (it lets a request through after a stated justification)",
                );
            ok = false;
        }
        if visit_room_own {
            let at = t.get("visit_room").map_or(span.clone(), |v| v.span());
            match (&paths, t.get("paths")) {
                (_, None) => {
                    r.error(
                        at,
                        "`visit_room = \"own\"` needs `paths` whose patterns bind the room, such as paths = [\"/room/{room}/**\"]",
                    );
                    ok = false;
                }
                (Some(pats), Some(pv)) => {
                    if let Some(p) = pats.iter().find(|p| !p.binds_room()) {
                        r.error(
                            pv.span(),
                            format!("with `visit_room = \"own\"` every path pattern must contain `{{room}}`; \"{}\" does not", p.text),
                        );
                        ok = false;
                    }
                }
                (None, Some(_)) => {}
            }
        }

        let (name, line) = name?;
        let effect = effect?;
        ok.then_some(Rule {
            name,
            effect,
            line,
            routes,
            groups,
            claims,
            mfa_max_age,
            device,
            sources,
            methods,
            paths,
            hours,
            visit_room_own,
            break_glass,
        })
    }

    fn routes(&self, r: &mut Reader<'_>, v: &Value<'_>) -> Option<Vec<String>> {
        let list = nonempty_list(r, v, "routes", "route names such as \"ehr\"")?;
        let mut ok = true;
        for item in &list {
            let name: &str = item.get_ref();
            if let Some(known) = self.known_routes {
                if !known.contains(&name) {
                    r.error(
                        item.span(),
                        unknown(&format!("route `{name}`"), name, known),
                    );
                    ok = false;
                }
            } else if name.is_empty() {
                r.error(item.span(), "a route name must not be empty");
                ok = false;
            }
        }
        ok.then(|| list.into_iter().map(|s| s.get_ref().to_string()).collect())
    }
}

/// A non-empty array of strings. An empty list would match nothing, which is never
/// what the writer meant: leaving the key out matches anything.
fn nonempty_list<'v>(
    r: &mut Reader<'_>,
    v: &'v Value<'_>,
    key: &str,
    expected: &str,
) -> Option<Vec<Spanned<&'v str>>> {
    let list = r.str_array(v, key, expected)?;
    if list.is_empty() {
        r.error(
            v.span(),
            format!("`{key}` is empty and would match nothing; list at least one value, or leave `{key}` out to match anything"),
        );
        return None;
    }
    Some(list)
}

fn claims(r: &mut Reader<'_>, v: &Value<'_>) -> Option<BTreeMap<String, Vec<String>>> {
    let t = r.table(v, "claims")?;
    if t.is_empty() {
        r.error(
            v.span(),
            "`claims` is empty; name at least one claim, such as claims = { department = [\"derm\"] }, or leave it out",
        );
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, val) in t.iter() {
        let key = format!("claims.{}", k.get_ref());
        match nonempty_list(r, val, &key, "strings") {
            Some(list) => {
                out.insert(
                    k.get_ref().to_string(),
                    list.into_iter().map(|s| s.get_ref().to_string()).collect(),
                );
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn device(r: &mut Reader<'_>, v: &Value<'_>) -> Option<DeviceRequirement> {
    let t = r.table(v, "device")?;
    r.check_keys(t, "`device`", DEVICE_KEYS, &[]);
    let mut ok = true;
    let mut req = DeviceRequirement::default();
    let mut flag = |r: &mut Reader<'_>, key: &str| -> bool {
        let Some(val) = t.get(key) else { return false };
        match r.bool(val, key) {
            Some(true) => true,
            Some(false) => {
                r.error(
                    val.span(),
                    format!("`{key} = false` is not a requirement; leave `{key}` out to accept any device, or write `{key} = true`"),
                );
                ok = false;
                false
            }
            None => {
                ok = false;
                false
            }
        }
    };
    req.managed = flag(r, "managed");
    req.disk_encrypted = flag(r, "disk_encrypted");
    req.screen_lock = flag(r, "screen_lock");
    if let Some(val) = t.get("max_checkin_age") {
        req.max_checkin_age = r.duration(val, "max_checkin_age");
        ok &= req.max_checkin_age.is_some();
    }
    if let Some(val) = t.get("os_min") {
        req.os_min = os_min(r, val);
        ok &= req.os_min.is_some();
    }
    ok.then_some(req)
}

fn os_min(r: &mut Reader<'_>, v: &Value<'_>) -> Option<BTreeMap<Platform, OsVersion>> {
    let t = r.table(v, "os_min")?;
    let names: Vec<&str> = Platform::ALL.iter().map(|p| p.as_str()).collect();
    if t.is_empty() {
        r.error(
            v.span(),
            "`os_min` is empty; list minimum versions per platform, such as os_min = { macos = \"14.4\" }",
        );
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, val) in t.iter() {
        let key: &str = k.get_ref();
        let platform = names
            .contains(&key)
            .then(|| Platform::from_name(key))
            .flatten();
        let Some(platform) = platform else {
            r.error(
                k.span(),
                unknown(&format!("platform `{key}` in `os_min`"), key, &names),
            );
            ok = false;
            continue;
        };
        let Some(s) = r.str(
            val,
            &format!("os_min.{key}"),
            "a dotted version such as \"14.4\"",
        ) else {
            ok = false;
            continue;
        };
        match OsVersion::parse(s) {
            Some(ver) => {
                out.insert(platform, ver);
            }
            None => {
                r.error(
                    val.span(),
                    format!("`os_min.{key}` must be a dotted numeric version such as \"14.4\" or \"10.0.22631\", found \"{s}\""),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Parses one `sources` entry: `any`, a CIDR or address, or `!` and a CIDR or address.
/// IPv4-mapped IPv6 networks become IPv4 networks.
pub fn parse_source(s: &str) -> Result<Source, ValueError> {
    parse_source_text(s).map_err(ValueError::Source)
}

fn parse_source_text(s: &str) -> Result<Source, String> {
    if s == "any" {
        return Ok(Source::Any);
    }
    let (exclude, body) = match s.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if body == "any" {
        return Err(
            "\"!any\" would exclude every address; leave `sources` out or list networks".into(),
        );
    }
    let net = parse_net(body)?;
    Ok(if exclude {
        Source::Exclude(net)
    } else {
        Source::Include(net)
    })
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let expected = || {
        format!(
            "expected \"any\", a CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or \"!CIDR\" to exclude, found \"{s}\""
        )
    };
    let net: IpNet = if s.contains('/') {
        s.parse().map_err(|_| expected())?
    } else {
        let addr: IpAddr = s.parse().map_err(|_| expected())?;
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err(format!(
            "\"{s}\" has host bits set below the prefix length; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(canonical_net(net))
}

/// IPv4-mapped IPv6 networks (inside `::ffff:0:0/96`) count as IPv4.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
        && let Ok(v4net) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

fn sources(r: &mut Reader<'_>, v: &Value<'_>) -> Option<Vec<Source>> {
    let list = nonempty_list(r, v, "sources", "\"any\" or CIDRs")?;
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for item in list {
        match parse_source(item.get_ref()) {
            Ok(s) => out.push(s),
            Err(e) => {
                r.error(item.span(), format!("`sources`: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn methods(r: &mut Reader<'_>, v: &Value<'_>) -> Option<Vec<String>> {
    let list = nonempty_list(r, v, "methods", "HTTP methods such as \"GET\"")?;
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for item in list {
        let upper = item.get_ref().to_ascii_uppercase();
        if METHODS.contains(&upper.as_str()) {
            out.push(upper);
        } else {
            r.error(
                item.span(),
                unknown(
                    &format!("HTTP method \"{}\"", item.get_ref()),
                    &upper,
                    METHODS,
                ),
            );
            ok = false;
        }
    }
    ok.then_some(out)
}

/// Parses a path pattern (`/chart/*`, `/export/**`, `/room/{room}/**`).
pub fn parse_path_pattern(s: &str) -> Result<PathPattern, ValueError> {
    parse_path_pattern_text(s).map_err(ValueError::PathPattern)
}

fn parse_path_pattern_text(s: &str) -> Result<PathPattern, String> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("a path pattern must start with `/`, found \"{s}\""));
    };
    if s.contains(['?', '#']) {
        return Err(format!(
            "a path pattern matches the path only (no `?` query or `#` fragment), found \"{s}\""
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("a path pattern must not contain control characters".into());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    let mut rooms = 0;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = match *part {
            "**" if last => Segment::Rest,
            "**" => {
                return Err(format!(
                    "`**` may only be the last segment of a pattern (as in \"/export/**\"), found \"{s}\""
                ));
            }
            "*" => Segment::Star,
            "{room}" => {
                rooms += 1;
                Segment::Room
            }
            "." | ".." => {
                return Err(format!(
                    "paths are matched after normalisation, so `{part}` segments never occur; found \"{s}\""
                ));
            }
            "" if !last => {
                return Err(format!(
                    "empty segment (`//`) in \"{s}\": paths are matched after duplicate slashes are removed"
                ));
            }
            p if p.contains('*') => {
                return Err(format!(
                    "`*` and `**` must be a whole segment (as in \"/chart/*\"), found \"{p}\" in \"{s}\""
                ));
            }
            p if p.starts_with('{') || p.ends_with('}') || p.contains(['{', '}']) => {
                let inner = p.trim_start_matches('{').trim_end_matches('}');
                let hint = did_you_mean(inner, ["room"])
                    .map(|_| " (did you mean `{room}`?)")
                    .unwrap_or("");
                return Err(format!(
                    "unknown placeholder `{p}` in \"{s}\": the only placeholder is `{{room}}`{hint}"
                ));
            }
            p if has_percent_escape(p) => {
                return Err(format!(
                    "paths are matched after percent-decoding; write the character itself instead of `%XX` in \"{s}\""
                ));
            }
            p => Segment::Literal(p.to_string()),
        };
        segments.push(seg);
    }
    if rooms > 1 {
        return Err(format!(
            "`{{room}}` may appear only once in a pattern, found \"{s}\""
        ));
    }
    Ok(PathPattern {
        text: s.to_string(),
        segments,
    })
}

fn has_percent_escape(p: &str) -> bool {
    let b = p.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

fn paths(r: &mut Reader<'_>, v: &Value<'_>) -> Option<Vec<PathPattern>> {
    let list = nonempty_list(r, v, "paths", "path patterns such as \"/chart/**\"")?;
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for item in list {
        match parse_path_pattern(item.get_ref()) {
            Ok(p) => out.push(p),
            Err(e) => {
                r.error(item.span(), format!("`paths`: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

fn day_error(s: &str) -> String {
    unknown(&format!("day \"{s}\""), s, DAY_NAMES)
}

/// Parses `days` as a string: `"mon-fri"`, a wrapping `"fri-mon"`, or one day `"sat"`.
pub fn parse_day_range(s: &str) -> Result<Vec<Weekday>, ValueError> {
    parse_day_range_text(s).map_err(ValueError::Days)
}

fn parse_day_range_text(s: &str) -> Result<Vec<Weekday>, String> {
    match s.split_once('-') {
        None => weekday(s).map(|d| vec![d]).ok_or_else(|| day_error(s)),
        Some((a, b)) => {
            let from = weekday(a.trim()).ok_or_else(|| day_error(a.trim()))?;
            let to = weekday(b.trim()).ok_or_else(|| day_error(b.trim()))?;
            if from == to {
                return Err(format!(
                    "the day range \"{s}\" starts and ends on the same day; write \"{}\" for one day or leave `days` out for every day",
                    a.trim()
                ));
            }
            let mut out = vec![from];
            let mut d = from;
            while d != to {
                d = d.next();
                out.push(d);
            }
            Ok(out)
        }
    }
}

/// Parses `"HH:MM-HH:MM"` into minutes after midnight. The end may be `24:00`.
pub fn parse_time_range(s: &str) -> Result<(u16, u16), ValueError> {
    parse_time_range_text(s).map_err(ValueError::TimeRange)
}

fn parse_time_range_text(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "`time` must be \"HH:MM-HH:MM\" (24-hour clock, such as \"06:00-21:00\" or overnight \"21:00-06:00\"), found \"{s}\""
        )
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let hm = |t: &str, end: bool| -> Option<u16> {
        let (h, m) = t.split_once(':')?;
        if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let h: u16 = h.parse().ok()?;
        let m: u16 = m.parse().ok()?;
        if m > 59 || h > 24 || (h == 24 && (!end || m != 0)) {
            return None;
        }
        Some(h * 60 + m)
    };
    let start = hm(a, false).ok_or_else(bad)?;
    let end = hm(b, true).ok_or_else(bad)?;
    if start == end {
        return Err(format!(
            "the time window \"{s}\" starts and ends at the same time; use \"00:00-24:00\" for the whole day"
        ));
    }
    Ok((start, end))
}

fn hours(r: &mut Reader<'_>, v: &Value<'_>) -> Option<Hours> {
    let t = r.table(v, "hours")?;
    r.check_keys(t, "`hours`", HOURS_KEYS, &[]);
    let mut ok = true;
    let days = match t.get("days") {
        None => None,
        Some(dv) => match dv.get_ref() {
            DeValue::String(s) => match parse_day_range(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    r.error(dv.span(), format!("`days`: {e}"));
                    ok = false;
                    None
                }
            },
            DeValue::Array(_) => match nonempty_list(r, dv, "days", "day names such as \"mon\"") {
                Some(list) => {
                    let mut days = Vec::new();
                    for item in list {
                        match weekday(item.get_ref()) {
                            Some(d) => days.push(d),
                            None => {
                                r.error(
                                    item.span(),
                                    format!("`days`: {}", day_error(item.get_ref())),
                                );
                                ok = false;
                            }
                        }
                    }
                    Some(days)
                }
                None => {
                    ok = false;
                    None
                }
            },
            other => {
                r.error(
                    dv.span(),
                    format!("`days` must be a range such as \"mon-fri\" or a list such as [\"mon\", \"wed\"], found {}", other.type_str()),
                );
                ok = false;
                None
            }
        },
    };
    let time = match t.get("time") {
        None => None,
        Some(tv) => match r.str(tv, "time", "\"HH:MM-HH:MM\"") {
            Some(s) => match parse_time_range(s) {
                Ok(range) => Some(range),
                Err(e) => {
                    r.error(tv.span(), e.to_string());
                    ok = false;
                    None
                }
            },
            None => {
                ok = false;
                None
            }
        },
    };
    if t.get("days").is_none() && t.get("time").is_none() {
        r.error(
            v.span(),
            "`hours` needs `days`, `time` or both, such as hours = { days = \"mon-fri\", time = \"08:00-18:00\", tz = \"America/New_York\" }",
        );
        ok = false;
    }
    let tz = match t.get("tz") {
        None => {
            r.error(
                v.span(),
                "`hours` is missing `tz` (expected an IANA time zone such as \"America/New_York\")",
            );
            None
        }
        Some(zv) => r
            .str(zv, "tz", "an IANA time zone name such as \"America/New_York\"")
            .and_then(|name| match TimeZone::get(name) {
                Ok(tz) => {
                    let canonical = tz.iana_name().unwrap_or(name).to_string();
                    Some((tz, canonical))
                }
                Err(_) => {
                    let names: Vec<String> = jiff::tz::db()
                        .available()
                        .map(|n| n.as_str().to_string())
                        .collect();
                    let msg = match did_you_mean(name, names.iter().map(String::as_str)) {
                        Some(best) => format!("unknown time zone \"{name}\"; did you mean \"{best}\"?"),
                        None => format!(
                            "unknown time zone \"{name}\" (expected an IANA name such as \"America/New_York\" or \"Europe/Berlin\")"
                        ),
                    };
                    r.error(zv.span(), msg);
                    None
                }
            }),
    };
    let (tz, tz_name) = tz?;
    if !ok {
        return None;
    }
    let days = days.map(|mut d| {
        d.sort_by_key(|w| w.to_monday_zero_offset());
        d.dedup();
        d
    });
    Some(Hours {
        days,
        time,
        tz,
        tz_name,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn day_ranges_wrap() {
        let names = |s: &str| -> Vec<&str> {
            parse_day_range(s)
                .map(|v| v.into_iter().map(crate::ast::weekday_name).collect())
                .unwrap_or_default()
        };
        assert_eq!(names("mon-fri"), ["mon", "tue", "wed", "thu", "fri"]);
        assert_eq!(names("fri-mon"), ["fri", "sat", "sun", "mon"]);
        assert_eq!(names("sat"), ["sat"]);
        assert!(parse_day_range("mon-mon").is_err());
        assert!(
            parse_day_range("mon-fry").is_err_and(|e| e.to_string().contains("did you mean `fri`"))
        );
    }

    #[test]
    fn time_ranges() {
        assert_eq!(parse_time_range("06:00-21:00"), Ok((360, 1260)));
        assert_eq!(parse_time_range("21:00-06:00"), Ok((1260, 360)));
        assert_eq!(parse_time_range("00:00-24:00"), Ok((0, 1440)));
        for bad in [
            "6:00-21:00",
            "06:00",
            "06:00-21:60",
            "24:00-06:00",
            "06:00-24:01",
            "09:00-09:00",
            "ab:cd-ef:gh",
            "06:00 - 21:00",
        ] {
            assert!(parse_time_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources_parse() {
        assert_eq!(parse_source("any"), Ok(Source::Any));
        assert!(matches!(
            parse_source("!10.0.0.0/8"),
            Ok(Source::Exclude(_))
        ));
        assert_eq!(
            parse_source("::ffff:10.0.0.0/104").map(|s| s.to_string()),
            Ok("10.0.0.0/8".to_string())
        );
        assert_eq!(
            parse_source("10.1.2.3").map(|s| s.to_string()),
            Ok("10.1.2.3/32".to_string())
        );
        assert!(parse_source("10.0.0.1/8").is_err_and(|e| e.message().contains("10.0.0.0/8")));
        assert!(parse_source("10.0.0.0/33").is_err());
        assert!(parse_source("!any").is_err());
        assert!(parse_source("anywhere").is_err());
    }

    #[test]
    fn path_patterns() {
        assert!(parse_path_pattern("/export/**").is_ok());
        assert!(parse_path_pattern("/room/{room}/**").is_ok());
        assert!(parse_path_pattern("/").is_ok());
        assert!(parse_path_pattern("/**").is_ok());
        for bad in [
            "export",
            "/a/**/b",
            "/a*",
            "/{rom}",
            "/{room}/{room}",
            "/a//b",
            "/a/../b",
            "/a%2Fb",
            "/a?x=1",
        ] {
            assert!(parse_path_pattern(bad).is_err(), "{bad}");
        }
    }
}
