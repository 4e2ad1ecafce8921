//! Reading the audit trail: `dermgate audit tail` and `dermgate audit report`,
//! and the record reader `dermgate evidence` shares.
//!
//! The trail is JSON lines (DESIGN.md section 6); this module parses each line
//! into an [`Entry`], never trusting it: a line that is not a record (edited,
//! corrupted, or torn by a crash or by a write still in progress) is reported
//! as a [`Skipped`] line with its file and line number and the reading goes on.
//! Whether the trail was tampered with is `dermgate audit verify`'s question;
//! these commands only read what is there. Records hold no secrets, and text
//! from them is stripped of control characters before it reaches a terminal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One audit record as read back (see `dermgate_proxy::audit::Record`).
/// `prev` and `sig` are the verifier's business and are not kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Entry {
    /// RFC 3339 UTC, as written.
    pub ts: String,
    /// `ts`, parsed.
    #[serde(skip)]
    pub at: Timestamp,
    /// `decision`, `complete`, `event` or `checkpoint`.
    pub kind: String,
    /// Request id linking decision and complete.
    pub id: Option<String>,
    /// Event name (`kind = "event"`).
    pub event: Option<String>,
    /// Subject.
    pub sub: Option<String>,
    /// Session handle.
    pub sid: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Client address.
    pub src: Option<String>,
    /// Canonical host.
    pub host: Option<String>,
    /// Route name.
    pub route: Option<String>,
    /// HTTP method.
    pub method: Option<String>,
    /// Canonical path.
    pub path: Option<String>,
    /// h1, h2, h3 or ws.
    pub proto: Option<String>,
    /// TLS version.
    pub tls: Option<String>,
    /// allow or deny.
    pub decision: Option<String>,
    /// The deciding rule.
    pub rule: Option<String>,
    /// Why (denials, failures, events).
    pub reason: Option<String>,
    /// Policy version.
    pub policy: Option<String>,
    /// Response status.
    pub status: Option<u16>,
    /// Request body bytes.
    pub bytes_in: Option<u64>,
    /// Response body bytes.
    pub bytes_out: Option<u64>,
    /// Duration in milliseconds.
    pub ms: Option<u64>,
    /// SHA-256 of the body (integrity routes).
    pub sha256: Option<String>,
    /// Authentication methods of the session or token.
    pub amr: Option<Vec<String>>,
    /// `session`, `bearer` or `anonymous`.
    pub auth: Option<String>,
    /// An alert was raised for this record.
    pub alert: Option<bool>,
}

/// Parses one line (without its newline) into a record, or says why it is not one.
pub fn parse_line(line: &[u8]) -> Result<Entry, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err("empty line".into());
    }
    let mut e: Entry = serde_json::from_slice(line).map_err(|err| {
        if err.is_eof() {
            "not a complete JSON record (torn or cut short)".to_string()
        } else {
            format!("not a JSON record: {err}")
        }
    })?;
    if e.kind.is_empty() {
        return Err("record has no \"kind\"".into());
    }
    e.at =
        e.ts.parse()
            .map_err(|_| format!("record has no valid \"ts\" (found {:?})", clean(&e.ts)))?;
    Ok(e)
}

/// A line that was not read as a record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    /// File.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Why.
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: skipped: {}", self.file, self.line, self.why)
    }
}

/// What a scan read.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files opened.
    pub files: usize,
    /// Records read (in the period or not).
    pub records: u64,
    /// Lines that were not records.
    pub skipped: Vec<Skipped>,
    /// Bytes of complete lines in the newest file read (where `--follow` goes on).
    pub end_offset: u64,
}

/// Reads `files` in order and calls `each` with every record (and its line's
/// bytes) at or after `since`. A rotated file (not the last) last written
/// before `since` holds only older records and is not opened.
pub fn scan(
    files: &[PathBuf],
    since: Option<Timestamp>,
    mut each: impl FnMut(&Entry, &[u8]),
) -> Result<Scan, String> {
    let mut out = Scan::default();
    for (i, path) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        if let Some(since) = since
            && !is_last
            && modified(path).is_some_and(|m| m < since)
        {
            continue;
        }
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        out.files += 1;
        read_lines(path, f, &mut out, |e, raw| {
            if since.is_none_or(|s| e.at >= s) {
                each(e, raw);
            }
        })?;
    }
    Ok(out)
}

/// Reads every line of `reader` (named `path` in reports) into `each`.
fn read_lines(
    path: &Path,
    reader: impl Read,
    out: &mut Scan,
    mut each: impl FnMut(&Entry, &[u8]),
) -> Result<(), String> {
    let name = path.display().to_string();
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::with_capacity(1024);
    let mut line = 0usize;
    out.end_offset = 0;
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("{name}: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let complete = buf.last() == Some(&b'\n');
        if complete {
            out.end_offset += n as u64;
            buf.pop();
        } else {
            out.skipped.push(Skipped {
                file: name.clone(),
                line,
                why: "incomplete last line (still being written, or torn by a crash)".into(),
            });
            return Ok(());
        }
        match parse_line(&buf) {
            Ok(e) => {
                out.records += 1;
                each(&e, &buf);
            }
            Err(why) => out.skipped.push(Skipped {
                file: name.clone(),
                line,
                why,
            }),
        }
    }
}

/// A file's modification time.
pub fn modified(path: &Path) -> Option<Timestamp> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Timestamp::try_from(m).ok()
}

/// `--since`: a duration back from `now` (`7d`, `1h30m`) or an RFC 3339 time.
pub fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(d) = dermgate_policy::text::parse_duration(s) {
        return now
            .checked_sub(d)
            .map_err(|_| format!("--since {s}: too far back"));
    }
    s.parse::<Timestamp>().map_err(|_| {
        format!(
            "--since: expected a duration such as \"7d\" or \"12h\", or an RFC 3339 time such as \"2026-03-01T00:00:00Z\", found \"{}\"",
            clean(s)
        )
    })
}

/// The UTC day of a time, `YYYY-MM-DD`.
pub fn day(t: Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%d", t).unwrap_or_default()
}

/// A time for people: `YYYY-MM-DD HH:MM:SS` UTC.
pub fn human_time(t: Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%d %H:%M:%S", t).unwrap_or_default()
}

/// Text from a record made safe for a terminal: control characters (escape
/// sequences could rewrite what an operator sees) are shown escaped.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// A plain-text table: a header row, a rule, then the rows; `right` marks
/// columns aligned right (numbers). Cells longer than `max` are shortened.
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize], max: usize) -> String {
    let shorten = |s: &str| -> String {
        let s = clean(s);
        if s.chars().count() > max {
            let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
            t.push('…');
            t
        } else {
            s
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| shorten(c)).collect())
        .collect();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            let pad = w.saturating_sub(c.chars().count());
            let last = i + 1 == cells.len();
            if right.contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if !last {
                    s.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                s.push_str("  ");
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = line(&head);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// Which records `tail` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this subject.
    pub user: Option<String>,
    /// Only this route.
    pub route: Option<String>,
    /// Only decision records with this decision.
    pub decision: Option<String>,
    /// Only these kinds (empty: every kind but checkpoints).
    pub kinds: Vec<String>,
}

impl Filter {
    /// True when `e` is shown.
    pub fn matches(&self, e: &Entry) -> bool {
        let kind_ok = if self.kinds.is_empty() {
            e.kind != "checkpoint"
        } else {
            self.kinds.contains(&e.kind)
        };
        kind_ok
            && self
                .user
                .as_ref()
                .is_none_or(|u| e.sub.as_deref() == Some(u))
            && self
                .route
                .as_ref()
                .is_none_or(|r| e.route.as_deref() == Some(r))
            && self
                .decision
                .as_ref()
                .is_none_or(|d| e.kind == "decision" && e.decision.as_deref() == Some(d.as_str()))
    }
}

/// The last `n` records of `files` that `filter` matches, oldest first, with
/// their raw lines. Files are read from the newest back until `n` are found.
pub fn last_matching(
    files: &[PathBuf],
    filter: &Filter,
    n: usize,
) -> Result<(Vec<(Entry, String)>, Scan), String> {
    let mut found: VecDeque<(Entry, String)> = VecDeque::new();
    let mut total = Scan::default();
    for (i, path) in files.iter().rev().enumerate() {
        // The newest file is always read: `--follow` goes on from its end.
        if i > 0 && found.len() >= n {
            break;
        }
        let mut here: VecDeque<(Entry, String)> = VecDeque::new();
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut scan = Scan::default();
        read_lines(path, f, &mut scan, |e, raw| {
            if filter.matches(e) {
                here.push_back((e.clone(), String::from_utf8_lossy(raw).into_owned()));
                if here.len() > n {
                    here.pop_front();
                }
            }
        })?;
        total.files += 1;
        total.records += scan.records;
        if i == 0 {
            total.end_offset = scan.end_offset;
        }
        total.skipped.extend(scan.skipped);
        while let Some(x) = here.pop_back() {
            if found.len() >= n {
                break;
            }
            found.push_front(x);
        }
    }
    total
        .skipped
        .sort_by(|a, b| (a.file.as_str(), a.line).cmp(&(b.file.as_str(), b.line)));
    Ok((found.into(), total))
}

/// The table columns of `audit tail`.
pub const TAIL_HEADERS: [&str; 7] = [
    "TIME (UTC)",
    "KIND",
    "USER",
    "ROUTE",
    "REQUEST",
    "RESULT",
    "REASON",
];

/// Column widths of `audit tail --follow`, whose rows are printed as they
/// come and so cannot be measured first (the reason column is last and free).
const FOLLOW_WIDTHS: [usize; 6] = [23, 8, 12, 10, 40, 20];

/// One `audit tail --follow` line: the cells padded to fixed widths; a longer
/// cell pushes the rest of its line to the right rather than being cut.
pub fn fixed_row(cells: &[String]) -> String {
    let mut s = String::new();
    for (i, c) in cells.iter().enumerate() {
        let c = clean(c);
        match FOLLOW_WIDTHS.get(i) {
            Some(w) => {
                s.push_str(&c);
                s.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 2));
            }
            None => s.push_str(&c),
        }
    }
    s.truncate(s.trim_end().len());
    s.push('\n');
    s
}

/// One `audit tail` row: time, kind, user, route, request (method and path,
/// or the event name), result (decision, or status, bytes and time), reason.
pub fn tail_row(e: &Entry) -> Vec<String> {
    let or_dash = |s: Option<&str>| s.unwrap_or("-").to_string();
    let request = match e.kind.as_str() {
        "event" => e.event.clone().unwrap_or_default(),
        "checkpoint" => "signed checkpoint".into(),
        _ => match (&e.method, &e.path) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            (Some(m), None) => m.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => e.id.as_deref().map(|i| format!("#{i}")).unwrap_or_default(),
        },
    };
    let result = match e.kind.as_str() {
        "decision" => {
            let mut s = or_dash(e.decision.as_deref());
            if let Some(st) = e.status {
                s.push_str(&format!(" {st}"));
            }
            s
        }
        "complete" => {
            let mut parts = Vec::new();
            if let Some(st) = e.status {
                parts.push(st.to_string());
            }
            if let Some(b) = e.bytes_out {
                parts.push(human_bytes(b));
            }
            if let Some(ms) = e.ms {
                parts.push(format!("{ms} ms"));
            }
            parts.join(" ")
        }
        _ => e
            .alert
            .filter(|a| *a)
            .map_or(String::new(), |_| "ALERT".into()),
    };
    let ts =
        e.ts.strip_suffix('Z')
            .unwrap_or(&e.ts)
            .replacen('T', " ", 1);
    vec![
        ts,
        e.kind.clone(),
        or_dash(e.sub.as_deref()),
        or_dash(e.route.as_deref()),
        request,
        result,
        e.reason.clone().unwrap_or_default(),
    ]
}

/// Follows the current file of a trail as it grows and across rotation
/// (the file is renamed to `audit.NNNNNN.jsonl` and a new one created).
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    id: Option<FileId>,
    offset: u64,
    partial: Vec<u8>,
}

/// What identifies an open file across a rename.
type FileId = (u64, u64);

fn file_id(m: &std::fs::Metadata) -> FileId {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        (0, 0)
    }
}

impl Follower {
    /// Follows `path` from byte `offset` (what has been shown already).
    pub fn new(path: &Path, offset: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            id: None,
            offset,
            partial: Vec::new(),
        }
    }

    /// Complete lines written since the last call, in order. A line still
    /// being written is kept until its newline arrives.
    pub fn poll(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => {
                    self.id = Some(file_id(&f.metadata()?));
                    self.file = Some(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(lines),
                Err(e) => return Err(e),
            }
        }
        self.drain(&mut lines)?;
        // Rotated: the name now points at a new file (or at nothing, for a
        // moment). What the old file still held has just been drained.
        let now = std::fs::metadata(&self.path).ok();
        let rotated = match &now {
            Some(m) => Some(file_id(m)) != self.id || m.len() < self.offset,
            None => false,
        };
        if rotated {
            if !self.partial.is_empty() {
                // The old file ended without a newline: a torn line. Hand it
                // on; the parser reports it.
                lines.push(std::mem::take(&mut self.partial));
            }
            self.file = None;
            self.id = None;
            self.offset = 0;
            let mut more = self.poll()?;
            lines.append(&mut more);
        }
        Ok(lines)
    }

    fn drain(&mut self, lines: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        let n = f.read_to_end(&mut buf)?;
        self.offset += n as u64;
        for b in buf {
            if b == b'\n' {
                lines.push(std::mem::take(&mut self.partial));
            } else {
                self.partial.push(b);
            }
        }
        Ok(())
    }
}

/// Requests, denials and bytes sent to clients.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Decision records.
    pub requests: u64,
    /// Decision records that denied.
    pub denials: u64,
    /// Response body bytes of complete records.
    pub bytes_out: u64,
}

/// One user's image exports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Exporter {
    /// Subject (`(anonymous)` when none).
    pub user: String,
    /// Response body bytes on the export routes.
    pub bytes_out: u64,
    /// Completed transfers.
    pub transfers: u64,
}

/// The subject shown for records without one.
pub const ANONYMOUS: &str = "(anonymous)";
const TOP_EXPORTERS: usize = 10;

/// `dermgate audit report`: counts per user, route and day.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Start of the period (RFC 3339).
    pub since: String,
    /// When the report was made (RFC 3339).
    pub until: String,
    /// Files read.
    pub files: usize,
    /// Records in the period.
    pub records: u64,
    /// Everything in the period.
    pub totals: Counts,
    /// Per subject.
    pub by_user: BTreeMap<String, Counts>,
    /// Per route.
    pub by_route: BTreeMap<String, Counts>,
    /// Per UTC day.
    pub by_day: BTreeMap<String, Counts>,
    /// Denied requests by reason.
    pub denials_by_reason: BTreeMap<String, u64>,
    /// Forwarded requests that failed upstream, by reason.
    pub failures_by_reason: BTreeMap<String, u64>,
    /// The routes counted as image exports (`integrity = true`); `null`: every route.
    pub export_routes: Option<Vec<String>>,
    /// Users by bytes sent on the export routes, largest first (at most 10).
    pub top_exporters: Vec<Exporter>,
    /// Lines that were not records.
    pub skipped: Vec<Skipped>,
    #[serde(skip)]
    exports: HashMap<String, (u64, u64)>,
}

impl Report {
    /// An empty report of the period from `since` to `until`, counting
    /// exports on `export_routes` (every route when `None`).
    pub fn new(since: Timestamp, until: Timestamp, export_routes: Option<Vec<String>>) -> Self {
        Self {
            since: since.to_string(),
            until: until.to_string(),
            export_routes,
            ..Self::default()
        }
    }

    /// Counts one record.
    pub fn add(&mut self, e: &Entry) {
        self.records += 1;
        let user = e.sub.clone().unwrap_or_else(|| ANONYMOUS.into());
        let route = e.route.clone().unwrap_or_else(|| "(no route)".into());
        let mut bump = |f: &dyn Fn(&mut Counts)| {
            f(&mut self.totals);
            f(self.by_user.entry(user.clone()).or_default());
            f(self.by_route.entry(route.clone()).or_default());
            f(self.by_day.entry(day(e.at)).or_default());
        };
        match e.kind.as_str() {
            "decision" => {
                let denied = e.decision.as_deref() == Some("deny");
                bump(&|c: &mut Counts| {
                    c.requests += 1;
                    if denied {
                        c.denials += 1;
                    }
                });
                if denied {
                    let reason = e.reason.clone().unwrap_or_else(|| "(none)".into());
                    *self.denials_by_reason.entry(reason).or_default() += 1;
                }
            }
            "complete" => {
                let bytes = e.bytes_out.unwrap_or(0);
                bump(&|c: &mut Counts| c.bytes_out += bytes);
                if let Some(r) = &e.reason {
                    *self.failures_by_reason.entry(r.clone()).or_default() += 1;
                }
                let export = match &self.export_routes {
                    None => true,
                    Some(rs) => e.route.as_ref().is_some_and(|r| rs.contains(r)),
                };
                if export && e.reason.is_none() {
                    let x = self.exports.entry(user).or_default();
                    x.0 += bytes;
                    x.1 += 1;
                }
            }
            _ => {}
        }
    }

    /// Ranks the exporters; call once every record has been added.
    pub fn finish(&mut self, scan: Scan) {
        self.files = scan.files;
        self.skipped = scan.skipped;
        let mut v: Vec<Exporter> = self
            .exports
            .drain()
            .filter(|(_, (b, _))| *b > 0)
            .map(|(user, (bytes_out, transfers))| Exporter {
                user,
                bytes_out,
                transfers,
            })
            .collect();
        v.sort_by(|a, b| b.bytes_out.cmp(&a.bytes_out).then(a.user.cmp(&b.user)));
        v.truncate(TOP_EXPORTERS);
        self.top_exporters = v;
    }

    /// The report as terminal tables.
    pub fn render(&self) -> String {
        let counts_table = |title: &str, m: &BTreeMap<String, Counts>| -> String {
            let mut rows: Vec<(&String, &Counts)> = m.iter().collect();
            if title != "DAY" {
                rows.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
            }
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(k, c)| {
                    vec![
                        k.clone(),
                        c.requests.to_string(),
                        c.denials.to_string(),
                        human_bytes(c.bytes_out),
                    ]
                })
                .collect();
            table(
                &[title, "REQUESTS", "DENIED", "BYTES OUT"],
                &rows,
                &[1, 2, 3],
                48,
            )
        };
        let mut out = format!(
            "audit report {} .. {} UTC: {} requests, {} denied, {} sent ({} records in {} file(s))\n",
            human_time(self.since.parse().unwrap_or_default()),
            human_time(self.until.parse().unwrap_or_default()),
            self.totals.requests,
            self.totals.denials,
            human_bytes(self.totals.bytes_out),
            self.records,
            self.files,
        );
        if self.records == 0 {
            out.push_str("\nno records in this period\n");
            return out;
        }
        for (title, m) in [
            ("USER", &self.by_user),
            ("ROUTE", &self.by_route),
            ("DAY", &self.by_day),
        ] {
            out.push('\n');
            out.push_str(&counts_table(title, m));
        }
        for (title, m) in [
            ("DENIAL REASON", &self.denials_by_reason),
            ("UPSTREAM FAILURE", &self.failures_by_reason),
        ] {
            if m.is_empty() {
                continue;
            }
            let mut rows: Vec<(&String, &u64)> = m.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect();
            out.push('\n');
            out.push_str(&table(&[title, "COUNT"], &rows, &[1], 48));
        }
        out.push('\n');
        match &self.export_routes {
            Some(r) if r.is_empty() => {
                out.push_str("image exports: no route has integrity = true\n");
            }
            Some(r) => out.push_str(&format!("image exports on {}:\n", r.join(", "))),
            None => {
                out.push_str("exports on every route (no --config to name the image routes):\n")
            }
        }
        if self.top_exporters.is_empty() {
            out.push_str("  none\n");
        } else {
            let rows: Vec<Vec<String>> = self
                .top_exporters
                .iter()
                .map(|x| {
                    vec![
                        x.user.clone(),
                        human_bytes(x.bytes_out),
                        x.bytes_out.to_string(),
                        x.transfers.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["USER", "SENT", "BYTES", "TRANSFERS"],
                &rows,
                &[1, 2, 3],
                48,
            ));
        }
        out
    }
}

/// The trail files and config facts a reading command works on.
pub struct Source {
    /// Files in order.
    pub files: Vec<PathBuf>,
    /// The current (last) file, for `--follow`.
    pub current: Option<PathBuf>,
    /// The configuration, when given.
    pub config: Option<dermgate_proxy::config::Config>,
}

/// Resolves `FILES...` or `--config` into the files to read; prints the
/// usage error and returns exit code 2 when neither names a trail.
pub fn source(files: Vec<PathBuf>, config: Option<&Path>) -> Result<Source, ExitCode> {
    let mut cfg = None;
    let mut current = files.last().cloned();
    let mut files = files;
    if let Some(c) = config {
        match dermgate_proxy::config::Config::load(c) {
            Ok(loaded) => {
                if files.is_empty() {
                    let Some(a) = &loaded.audit else {
                        eprintln!("error: {}: no [audit] is configured", c.display());
                        return Err(ExitCode::from(2));
                    };
                    files = dermgate_proxy::audit_verify::trail_files(&a.file);
                    current = Some(a.file.clone());
                }
                cfg = Some(loaded);
            }
            Err(e) => {
                crate::check::report(&e);
                return Err(ExitCode::from(2));
            }
        }
    } else if files.is_empty() {
        eprintln!("error: name the audit files, or --config to use the configured trail");
        return Err(ExitCode::from(2));
    }
    Ok(Source {
        files,
        current,
        config: cfg,
    })
}

/// Prints the skipped lines to stderr (the first 20, then a count).
pub fn report_skipped(skipped: &[Skipped]) {
    for s in skipped.iter().take(20) {
        eprintln!("{s}");
    }
    if skipped.len() > 20 {
        eprintln!("… and {} more skipped line(s)", skipped.len() - 20);
    }
}

/// The names of the `integrity = true` routes of a configuration.
pub fn integrity_routes(cfg: &dermgate_proxy::config::Config) -> Vec<String> {
    cfg.routes
        .iter()
        .filter(|r| r.integrity)
        .map(|r| r.name.clone())
        .collect()
}

/// Polling interval of `--follow`.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn line(kind: &str, extra: &str) -> String {
        format!(
            "{{\"ts\":\"2026-03-02T09:00:00.000Z\",\"kind\":\"{kind}\"{extra},\"prev\":\"{}\"}}",
            "0".repeat(64)
        )
    }

    fn entry(kind: &str, extra: &str) -> Entry {
        parse_line(line(kind, extra).as_bytes()).unwrap()
    }

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("dermgate-audit-read-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn lines_parse_or_say_why() {
        let e = entry(
            "decision",
            ",\"sub\":\"alice\",\"route\":\"ehr\",\"decision\":\"deny\",\"status\":403,\"amr\":[\"pwd\",\"otp\"]",
        );
        assert_eq!(e.sub.as_deref(), Some("alice"));
        assert_eq!(e.status, Some(403));
        assert_eq!(e.amr.unwrap().len(), 2);
        assert_eq!(day(e.at), "2026-03-02");
        assert!(
            parse_line(b"{\"ts\":\"2026-03-02T09:00")
                .unwrap_err()
                .contains("torn")
        );
        assert!(
            parse_line(b"garbage")
                .unwrap_err()
                .contains("not a JSON record")
        );
        assert!(
            parse_line(b"{\"ts\":\"x\",\"kind\":\"event\"}")
                .unwrap_err()
                .contains("ts")
        );
        assert!(
            parse_line(b"{\"ts\":\"2026-03-02T09:00:00Z\"}")
                .unwrap_err()
                .contains("kind")
        );
        assert!(parse_line(b"").unwrap_err().contains("empty"));
        // Wrong types are refused, not coerced.
        assert!(parse_line(line("decision", ",\"status\":\"200\"").as_bytes()).is_err());
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now: Timestamp = "2026-03-10T00:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("7d", now).unwrap(),
            "2026-03-03T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_since("1h30m", now).unwrap(),
            "2026-03-09T22:30:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_since("2026-03-01T00:00:00-05:00", now).unwrap(),
            "2026-03-01T05:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(parse_since("7 days", now).unwrap_err().contains("RFC 3339"));
        assert!(parse_since("99999999999y", now).is_err());
    }

    #[test]
    fn filters_select_what_tail_shows() {
        let allow = entry(
            "decision",
            ",\"sub\":\"alice\",\"route\":\"ehr\",\"decision\":\"allow\"",
        );
        let deny = entry(
            "decision",
            ",\"sub\":\"bob\",\"route\":\"img\",\"decision\":\"deny\"",
        );
        let done = entry(
            "complete",
            ",\"sub\":\"alice\",\"route\":\"ehr\",\"status\":200",
        );
        let cp = entry("checkpoint", ",\"sig\":\"x\"");
        let all = Filter::default();
        assert!(all.matches(&allow) && all.matches(&done) && !all.matches(&cp));
        let denies = Filter {
            decision: Some("deny".into()),
            ..Filter::default()
        };
        assert!(denies.matches(&deny) && !denies.matches(&allow) && !denies.matches(&done));
        let alice = Filter {
            user: Some("alice".into()),
            ..Filter::default()
        };
        assert!(alice.matches(&allow) && alice.matches(&done) && !alice.matches(&deny));
        let img = Filter {
            route: Some("img".into()),
            ..Filter::default()
        };
        assert!(img.matches(&deny) && !img.matches(&allow));
        let cps = Filter {
            kinds: vec!["checkpoint".into()],
            ..Filter::default()
        };
        assert!(cps.matches(&cp) && !cps.matches(&allow));
    }

    #[test]
    fn report_counts_per_user_route_and_day() {
        let mut r = Report::new(
            Timestamp::UNIX_EPOCH,
            Timestamp::UNIX_EPOCH,
            Some(vec!["img".into()]),
        );
        for l in [
            line("decision", ",\"sub\":\"alice\",\"route\":\"ehr\",\"decision\":\"allow\""),
            line("complete", ",\"sub\":\"alice\",\"route\":\"ehr\",\"status\":200,\"bytes_out\":100"),
            line("decision", ",\"sub\":\"alice\",\"route\":\"img\",\"decision\":\"allow\""),
            line("complete", ",\"sub\":\"alice\",\"route\":\"img\",\"status\":200,\"bytes_out\":5000"),
            line("decision", ",\"sub\":\"bob\",\"route\":\"img\",\"decision\":\"allow\""),
            line("complete", ",\"sub\":\"bob\",\"route\":\"img\",\"status\":200,\"bytes_out\":7000"),
            line("decision", ",\"sub\":\"bob\",\"route\":\"img\",\"decision\":\"deny\",\"reason\":\"mfa_required\""),
            line("decision", ",\"route\":\"ehr\",\"decision\":\"deny\",\"reason\":\"login_required\""),
            line("complete", ",\"sub\":\"bob\",\"route\":\"img\",\"status\":502,\"reason\":\"upstream_unavailable\""),
            line("event", ",\"event\":\"login\",\"sub\":\"carol\""),
            "{\"ts\":\"2026-03-03T00:00:01.000Z\",\"kind\":\"decision\",\"decision\":\"allow\",\"route\":\"ehr\",\"prev\":\"\"}".to_string(),
        ] {
            r.add(&parse_line(l.as_bytes()).unwrap());
        }
        r.finish(Scan::default());
        assert_eq!(r.records, 11);
        assert_eq!(
            r.totals,
            Counts {
                requests: 6,
                denials: 2,
                bytes_out: 12_100
            }
        );
        assert_eq!(
            r.by_user["alice"],
            Counts {
                requests: 2,
                denials: 0,
                bytes_out: 5_100
            }
        );
        assert_eq!(r.by_user["bob"].denials, 1);
        assert_eq!(r.by_user[ANONYMOUS].requests, 2);
        assert_eq!(r.by_route["img"].requests, 3);
        assert_eq!(r.by_day["2026-03-02"].requests, 5);
        assert_eq!(r.by_day["2026-03-03"].requests, 1);
        assert_eq!(r.denials_by_reason["mfa_required"], 1);
        assert_eq!(r.denials_by_reason["login_required"], 1);
        assert_eq!(r.failures_by_reason["upstream_unavailable"], 1);
        assert_eq!(
            r.top_exporters,
            vec![
                Exporter {
                    user: "bob".into(),
                    bytes_out: 7000,
                    transfers: 1
                },
                Exporter {
                    user: "alice".into(),
                    bytes_out: 5000,
                    transfers: 1
                },
            ]
        );
        let text = r.render();
        assert!(
            text.contains("mfa_required") && text.contains("image exports on img"),
            "{text}"
        );
    }

    #[test]
    fn scan_reports_bad_lines_and_goes_on() {
        let d = Dir::new("scan");
        let a = d.0.join("audit.000001.jsonl");
        let b = d.0.join("audit.jsonl");
        std::fs::write(
            &a,
            format!(
                "{}\nnot json\n{}\n",
                line("decision", ""),
                line("complete", "")
            ),
        )
        .unwrap();
        std::fs::write(
            &b,
            format!("{}\n{{\"ts\":\"2026", line("event", ",\"event\":\"login\"")),
        )
        .unwrap();
        let mut kinds = Vec::new();
        let scan = scan(&[a.clone(), b.clone()], None, |e, _| {
            kinds.push(e.kind.clone())
        })
        .unwrap();
        assert_eq!(kinds, ["decision", "complete", "event"]);
        assert_eq!(scan.records, 3);
        assert_eq!(scan.skipped.len(), 2);
        assert_eq!(scan.skipped[0].line, 2);
        assert!(scan.skipped[1].why.contains("incomplete last line"));
        // The newest first: tail reads back only as far as it needs.
        let (last, _) = last_matching(&[a, b], &Filter::default(), 2).unwrap();
        let kinds: Vec<&str> = last.iter().map(|(e, _)| e.kind.as_str()).collect();
        assert_eq!(kinds, ["complete", "event"]);
        assert!(last[1].1.contains("\"event\":\"login\""));
    }

    #[test]
    fn follower_sees_growth_and_rotation() {
        let d = Dir::new("follow");
        let cur = d.0.join("audit.jsonl");
        std::fs::write(&cur, "old\n").unwrap();
        let mut f = Follower::new(&cur, 4);
        assert!(f.poll().unwrap().is_empty());
        let append = |p: &Path, s: &str| {
            use std::io::Write;
            let mut h = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .unwrap();
            h.write_all(s.as_bytes()).unwrap();
        };
        append(&cur, "one\ntw");
        assert_eq!(f.poll().unwrap(), vec![b"one".to_vec()]);
        append(&cur, "o\n");
        assert_eq!(f.poll().unwrap(), vec![b"two".to_vec()]);
        // Rotation: the last lines of the old file, then the new file from its start.
        append(&cur, "three\n");
        std::fs::rename(&cur, d.0.join("audit.000001.jsonl")).unwrap();
        assert_eq!(f.poll().unwrap(), vec![b"three".to_vec()]);
        std::fs::write(&cur, "four\n").unwrap();
        assert_eq!(f.poll().unwrap(), vec![b"four".to_vec()]);
        append(&cur, "five\n");
        assert_eq!(f.poll().unwrap(), vec![b"five".to_vec()]);
    }

    #[test]
    fn terminal_text_is_defanged_and_aligned() {
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        let t = table(
            &["A", "N"],
            &[
                vec!["x".into(), "1".into()],
                vec!["long".into(), "100".into()],
            ],
            &[1],
            10,
        );
        assert_eq!(t, "A       N\n----  ---\nx       1\nlong  100\n");
        let row = tail_row(&entry(
            "decision",
            ",\"sub\":\"bob\",\"route\":\"ehr\",\"method\":\"GET\",\"path\":\"/x\",\"decision\":\"deny\",\"status\":403,\"reason\":\"not_permitted\"",
        ));
        assert_eq!(
            row,
            [
                "2026-03-02 09:00:00.000",
                "decision",
                "bob",
                "ehr",
                "GET /x",
                "deny 403",
                "not_permitted"
            ]
        );
        let line = fixed_row(&row);
        assert!(
            line.starts_with(
                "2026-03-02 09:00:00.000  decision  bob           ehr         GET /x "
            )
        );
        assert!(
            line.ends_with("deny 403              not_permitted\n"),
            "{line:?}"
        );
    }
}
