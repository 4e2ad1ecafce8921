//! Reading the files users write: TOML with positions, every error collected.
//!
//! Both `dermgate.toml` (in `dermgate-proxy`) and `policy.toml` (here) are read
//! the same way: parse into a spanned tree ([`toml::de::DeTable`]), then walk it
//! with a [`Reader`] that checks each key and value and *collects* a
//! [`Diagnostic`] for every problem instead of stopping at the first, each with
//! file:line:column, what was expected, and a did-you-mean where one helps.
//! The grammars for durations and sizes of DESIGN.md live here too, so there
//! is one parser for each.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

pub use toml::Spanned;
pub use toml::de::{DeTable, DeValue};

/// A spanned TOML value, as the walker sees it.
pub type Value<'i> = Spanned<DeValue<'i>>;

/// One problem in a user's file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// The source line the error points into (for the caret display).
    pub source_line: String,
}

impl Diagnostic {
    /// Renders the diagnostic with the offending line and a caret under the column.
    pub fn render(&self) -> String {
        let gutter = self.line.to_string().len();
        format!(
            "{self}\n{pad} |\n{line} | {src}\n{pad} | {caret}^",
            pad = " ".repeat(gutter),
            line = self.line,
            src = self.source_line,
            caret = " ".repeat(self.column.saturating_sub(1)),
        )
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in one or more files, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// All diagnostics rendered with carets, separated by blank lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.0 {
            out.push_str(&d.render());
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "{} error{}",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        ));
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A file's name and text, and the collected problems found while reading it.
pub struct Reader<'s> {
    file: &'s str,
    text: &'s str,
    errors: Vec<(usize, String)>,
}

impl<'s> Reader<'s> {
    /// Starts reading `text`, reported as `file`.
    pub fn new(file: &'s str, text: &'s str) -> Self {
        Self {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// Parses the document. On a syntax error the error is recorded and `None` returned.
    pub fn parse(&mut self) -> Option<Spanned<DeTable<'s>>> {
        let (doc, errs) = DeTable::parse_recoverable(self.text);
        if errs.is_empty() {
            return Some(doc);
        }
        for e in errs {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            let msg = e.message().trim().replace('\n', "; ");
            self.errors.push((at, format!("invalid TOML: {msg}")));
        }
        None
    }

    /// Parses a single TOML value (for instance a one-line inline table such as
    /// `{ route = "ehr", method = "GET" }`). On a syntax error the error is
    /// recorded and `None` returned.
    pub fn parse_value(&mut self) -> Option<Value<'s>> {
        let (value, errs) = DeValue::parse_recoverable(self.text);
        if errs.is_empty() {
            return Some(value);
        }
        for e in errs {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            let msg = e.message().trim().replace('\n', "; ");
            self.errors.push((at, format!("invalid TOML: {msg}")));
        }
        None
    }

    /// The file name given to [`Reader::new`].
    pub fn file(&self) -> &'s str {
        self.file
    }

    /// Records a problem at `span`.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push((span.start, message.into()));
    }

    /// True when any problem was recorded so far.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Ends reading: the diagnostics in file order.
    pub fn finish(self) -> Diagnostics {
        let mut errors = self.errors;
        errors.sort_by_key(|(at, _)| *at);
        errors.dedup();
        Diagnostics(
            errors
                .into_iter()
                .map(|(at, message)| position(self.file, self.text, at, message))
                .collect(),
        )
    }

    /// Checks the keys of `table` (named `what` in messages): every key must be in
    /// `known`; keys in `not_yet` are recognised but refused as "not supported yet";
    /// anything else is an error with a did-you-mean.
    pub fn check_keys(
        &mut self,
        table: &DeTable<'_>,
        what: &str,
        known: &[&str],
        not_yet: &[&str],
    ) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            if not_yet.contains(&name) {
                self.error(
                    key.span(),
                    format!("`{name}` in {what} is not supported yet by this version of dermgate; remove it"),
                );
                continue;
            }
            let mut all: Vec<&str> = known.to_vec();
            all.extend_from_slice(not_yet);
            self.error(
                key.span(),
                unknown(&format!("key `{name}` in {what}"), name, &all),
            );
        }
    }

    /// The value under `key`, if present.
    pub fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Value<'i>> {
        table.get(key)
    }

    /// A required key: records "missing" at `at` (the table's span) when absent.
    pub fn required<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        at: Range<usize>,
        what: &str,
        key: &str,
        expected: &str,
    ) -> Option<&'t Value<'i>> {
        let v = table.get(key);
        if v.is_none() {
            self.error(
                at,
                format!("{what} is missing `{key}` (expected {expected})"),
            );
        }
        v
    }

    /// A string value, or an error naming what was expected.
    pub fn str<'v>(&mut self, v: &'v Value<'_>, key: &str, expected: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            other => {
                self.error(
                    v.span(),
                    format!("`{key}` must be {expected}, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A boolean value.
    pub fn bool(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    v.span(),
                    format!("`{key}` must be true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A non-negative integer.
    pub fn uint(&mut self, v: &Value<'_>, key: &str) -> Option<u64> {
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                u64::from_str_radix(digits.trim_start_matches('+'), i.radix()).ok()
            }
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                v.span(),
                format!(
                    "`{key}` must be a non-negative integer, found {}",
                    describe(v.get_ref())
                ),
            );
        }
        parsed
    }

    /// An array of strings, each with its span.
    pub fn str_array<'v>(
        &mut self,
        v: &'v Value<'_>,
        key: &str,
        expected: &str,
    ) -> Option<Vec<Spanned<&'v str>>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(
                v.span(),
                format!(
                    "`{key}` must be an array of {expected}, found {}",
                    v.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match item.get_ref() {
                DeValue::String(s) => out.push(Spanned::new(item.span(), s.as_ref())),
                other => {
                    ok = false;
                    self.error(
                        item.span(),
                        format!(
                            "each element of `{key}` must be {expected}, found {}",
                            other.type_str()
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A table value.
    pub fn table<'v, 'i>(&mut self, v: &'v Value<'i>, key: &str) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    v.span(),
                    format!("`{key}` must be a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// An array of tables (`[[key]]`).
    pub fn table_array<'v, 'i>(
        &mut self,
        v: &'v Value<'i>,
        key: &str,
    ) -> Vec<(Range<usize>, &'v DeTable<'i>)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(
                v.span(),
                format!(
                    "`{key}` must be an array of tables (`[[{key}]]`), found {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item.get_ref() {
                DeValue::Table(t) => out.push((item.span(), t)),
                other => self.error(
                    item.span(),
                    format!(
                        "each `{key}` entry must be a table, found {}",
                        other.type_str()
                    ),
                ),
            }
        }
        out
    }

    /// A duration in the grammar of DESIGN.md (`"90s"`, `"1h30m"`).
    pub fn duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let s = self.str(v, key, "a duration such as \"30m\" or \"1h30m\"")?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.span(), format!("`{key}`: {e}"));
                None
            }
        }
    }

    /// A size in the grammar of DESIGN.md (`"64KiB"`, `"20GiB"`, `"5GB"`).
    pub fn size(&mut self, v: &Value<'_>, key: &str) -> Option<u64> {
        let s = self.str(v, key, "a size such as \"64KiB\" or \"20GiB\"")?;
        match parse_size(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.span(), format!("`{key}`: {e}"));
                None
            }
        }
    }
}

/// "unknown X; did you mean `y`?" or "unknown X; expected one of ...".
pub fn unknown(what: &str, got: &str, candidates: &[&str]) -> String {
    match did_you_mean(got, candidates.iter().copied()) {
        Some(best) => format!("unknown {what}; did you mean `{best}`?"),
        None if candidates.is_empty() => format!("unknown {what}"),
        None => format!(
            "unknown {what}; expected one of: {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The candidate closest to `got` by edit distance, if close enough to be a typo.
pub fn did_you_mean<'c>(
    got: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let got_l = got.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (levenshtein(&got_l, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(got.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::Integer(i) => format!("`{}`", i.as_str()),
        DeValue::String(s) => format!("string \"{s}\""),
        other => other.type_str().to_string(),
    }
}

/// Byte offset → 1-based line, in O(log lines) after one pass over the text.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes the line starts of `text`.
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// The 1-based line holding byte offset `at`.
    pub fn line(&self, at: usize) -> usize {
        self.starts.partition_point(|&s| s <= at).max(1)
    }
}

/// Turns a byte offset into a diagnostic with 1-based line and column.
pub fn position(file: &str, text: &str, at: usize, message: String) -> Diagnostic {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let source_line = text
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        message,
        source_line,
    }
}

/// Parses a duration: one or more `<integer><unit>` with units s, m, h, d, w, y (365 d).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "expected a duration such as \"90s\", \"30m\" or \"1h30m\" (units s, m, h, d, w, y), found \"{s}\""
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail.chars().next().map_or(0, char::len_utf8);
        if unit_len == 0 {
            return Err(bad());
        }
        let (unit, tail) = tail.split_at(unit_len);
        let secs: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            "y" => 31_536_000,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration \"{s}\" is too large"))?;
        rest = tail;
    }
    Ok(Duration::from_secs(total))
}

/// Parses a size: `<integer><unit>` with B, KiB, MiB, GiB, TiB (1024) or KB, MB, GB, TB (1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "expected a size such as \"64KiB\", \"20GiB\" or \"5GB\" (units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), found \"{s}\""
        )
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("6y"),
            Ok(Duration::from_secs(6 * 365 * 86400))
        );
        for bad in [
            "",
            "h",
            "10",
            "1.5h",
            "1H",
            "-1s",
            "1h 30m",
            "99999999999999999999y",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        for bad in ["", "KiB", "64kib", "1.5GiB", "64 KiB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_and_all_errors() {
        let text = "[a]\nx = 1\ny = \"q\"\nzz = true\n";
        let mut r = Reader::new("f.toml", text);
        let doc = r.parse();
        let doc = doc.as_ref().map(|d| d.get_ref());
        let a = doc
            .and_then(|d| d.get("a"))
            .and_then(|v| v.get_ref().as_table());
        if let Some(a) = a {
            r.check_keys(a, "[a]", &["x", "y", "z"], &[]);
            if let Some(v) = a.get("y") {
                r.uint(v, "y");
            }
        }
        let d = r.finish();
        assert_eq!(d.len(), 2, "{d}");
        assert_eq!((d.0[0].line, d.0[0].column), (3, 5));
        assert_eq!((d.0[1].line, d.0[1].column), (4, 1));
        assert!(
            d.0[1].message.contains("did you mean `z`"),
            "{}",
            d.0[1].message
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let mut r = Reader::new("f.toml", "a = 1\nb = = 2\n");
        assert!(r.parse().is_none());
        let d = r.finish();
        assert!(!d.is_empty());
        assert_eq!(d.0[0].line, 2);
    }
}
