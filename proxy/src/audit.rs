//! Stage 4 of the request path: the tamper-evident audit trail (DESIGN.md section 6).
//!
//! JSON lines, hash-chained: each record's `prev` is the lowercase hex SHA-256
//! of the previous line's exact bytes (the first line ever has 64 zeros; the
//! first line of a rotated file continues from the last line of the file
//! before). Every 1,000 records or 60 s a `checkpoint` record carries `sig`,
//! an Ed25519 signature over its own `prev`, so a rewrite of the whole chain is
//! detected by anyone holding the public key.
//!
//! One writer thread owns the file. Requests hand it records over a channel
//! (no lock on the request path) and it group-commits: it writes what has
//! arrived, fsyncs, and acknowledges. With `sync = "always"` the request waits
//! for that acknowledgement before it is forwarded; with `sync = "batch"` it
//! does not, and the writer commits every 50 ms. If a write fails (disk full,
//! permission) the file is cut back to its last committed length, so nothing
//! already written is corrupted; the trail is marked unhealthy, protected
//! routes answer 503 until a retry succeeds, and the records wait in memory.
//!
//! The current file is `audit.jsonl` (the configured name); it rotates by size
//! and by UTC day to `audit.000001.jsonl`, `audit.000002.jsonl`, … A file left
//! with a torn last line by a crash is rotated as it is at the next start, so
//! `dermgate audit verify` can tell a crash from tampering.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use serde::Serialize;

/// Rotate the current file past this size.
pub const ROTATE_BYTES: u64 = 64 << 20;
const CHECKPOINT_EVERY: u64 = 1000;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
const BATCH_INTERVAL: Duration = Duration::from_millis(50);
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Records held in memory while the file cannot be written.
const MAX_PENDING: usize = 100_000;

/// `[audit] sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Group commit every 50 ms; requests do not wait.
    Batch,
    /// Forwarding waits for the decision record's fsync.
    Always,
}

/// One audit record. Fields are written in this order; absent ones are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// RFC 3339 UTC with milliseconds (filled in when made).
    pub ts: String,
    /// `decision`, `complete`, `event` or `checkpoint`.
    pub kind: &'static str,
    /// Request id linking decision and complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Event name (`kind = "event"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Device id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Canonical host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Route name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Canonical path, never the query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// h1, h2, h3 or ws.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<&'static str>,
    /// TLS version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    /// allow or deny.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// The deciding rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why (denials, events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Policy version that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Response status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Request body bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Response body bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    /// Duration in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// SHA-256 of the body (integrity routes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Authentication methods of the session or token (`login`, `step_up`, decisions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    /// How the user was identified: `session`, `bearer` or `anonymous`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'static str>,
    /// A high-severity record that an alert was raised for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<bool>,
    /// Hash of the previous line.
    pub prev: String,
    /// Checkpoint signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// The current time as the trail writes it (RFC 3339 UTC, milliseconds).
pub fn now_ts() -> String {
    format_ts(jiff::Timestamp::now())
}

thread_local! {
    /// The formatted second most recently stamped on this thread: every record
    /// of that second reuses it and only appends its milliseconds.
    static SECOND: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
}

fn format_ts(ts: jiff::Timestamp) -> String {
    let second = ts.as_second();
    let ms = ts.subsec_millisecond();
    let ms = u16::try_from(ms).unwrap_or(0);
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            // "2026-11-24T05:30:00" from jiff's own formatting, once a second.
            let whole = jiff::Timestamp::from_second(second).unwrap_or(ts);
            let mut text = format!("{whole:.0}");
            text.pop(); // the 'Z'
            *cached = (second, text);
        }
        let mut out = String::with_capacity(cached.1.len() + 5);
        out.push_str(&cached.1);
        out.push('.');
        out.push(char::from(b'0' + (ms / 100) as u8));
        out.push(char::from(b'0' + (ms / 10 % 10) as u8));
        out.push(char::from(b'0' + (ms % 10) as u8));
        out.push('Z');
        out
    })
}

/// Appends `s` as a JSON string. Audit strings are almost always plain
/// (no quote, backslash or control character): those are checked in one
/// branch-free pass and copied; any other goes through serde_json's escaping.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let special = s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if special {
        if serde_json::to_writer(&mut *out, s).is_err() {
            out.extend_from_slice(b"\"\"");
        }
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// The JSON writer of one record: fields in a fixed order, absent ones left out.
struct Fields<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            json_str(self.out, v);
        }
    }

    fn num(&mut self, k: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.key(k);
            self.out
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
    }
}

impl Record {
    /// The record as the trail writes it: exactly what serde_json makes of
    /// it (the tests hold the two equal), without serde's per-byte escaping
    /// on the hot path.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut f = Fields { out, first: true };
        f.str("ts", Some(&self.ts));
        f.str("kind", Some(self.kind));
        f.str("id", self.id.as_deref());
        f.str("event", self.event.as_deref());
        f.str("sub", self.sub.as_deref());
        f.str("sid", self.sid.as_deref());
        f.str("device", self.device.as_deref());
        f.str("src", self.src.as_deref());
        f.str("host", self.host.as_deref());
        f.str("route", self.route.as_deref());
        f.str("method", self.method.as_deref());
        f.str("path", self.path.as_deref());
        f.str("proto", self.proto);
        f.str("tls", self.tls);
        f.str("decision", self.decision);
        f.str("rule", self.rule.as_deref());
        f.str("reason", self.reason.as_deref());
        f.str("policy", self.policy.as_deref());
        f.num("status", self.status.map(u64::from));
        f.num("bytes_in", self.bytes_in);
        f.num("bytes_out", self.bytes_out);
        f.num("ms", self.ms);
        f.str("sha256", self.sha256.as_deref());
        if let Some(amr) = &self.amr {
            f.key("amr");
            f.out.push(b'[');
            for (i, m) in amr.iter().enumerate() {
                if i > 0 {
                    f.out.push(b',');
                }
                json_str(f.out, m);
            }
            f.out.push(b']');
        }
        f.str("auth", self.auth);
        if let Some(a) = self.alert {
            f.key("alert");
            f.out.extend_from_slice(if a { b"true" } else { b"false" });
        }
        f.str("prev", Some(&self.prev));
        f.str("sig", self.sig.as_deref());
        f.out.push(b'}');
    }

    /// A record of `kind`, stamped now.
    pub fn new(kind: &'static str) -> Self {
        Self {
            ts: now_ts(),
            kind,
            ..Self::default()
        }
    }
}

type Ack = tokio::sync::oneshot::Sender<bool>;

/// The handle requests use. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<(Record, Option<Ack>)>,
    healthy: Arc<AtomicBool>,
    mode: SyncMode,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("mode", &self.mode).finish()
    }
}

/// Why the trail could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The signing key is unusable.
    #[error("{0}: not a usable Ed25519 key (PKCS#8)")]
    Key(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Loads the checkpoint key from `dir` (`audit-ed25519.pk8`), creating it (and
/// `audit-ed25519.pub`, the base64 public key) on first start.
pub fn load_or_create_key(dir: &Path) -> Result<Ed25519KeyPair, AuditError> {
    create_private_dir(dir)?;
    let key_path = dir.join("audit-ed25519.pk8");
    let pub_path = dir.join("audit-ed25519.pub");
    if !key_path.exists() {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| AuditError::Key(key_path.display().to_string()))?;
        write_private(&key_path, doc.as_ref())?;
    }
    let pk8 = std::fs::read(&key_path).map_err(io_err(&key_path))?;
    let key = Ed25519KeyPair::from_pkcs8(&pk8)
        .map_err(|_| AuditError::Key(key_path.display().to_string()))?;
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key().as_ref());
    if std::fs::read_to_string(&pub_path)
        .map(|s| s.trim() != public)
        .unwrap_or(true)
    {
        std::fs::write(&pub_path, format!("{public}\n")).map_err(io_err(&pub_path))?;
    }
    Ok(key)
}

fn create_private_dir(dir: &Path) -> Result<(), AuditError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// The rotated files of a trail, in order: `(sequence number, path)`.
pub fn rotated_files(current: &Path) -> Vec<(u64, PathBuf)> {
    let dir = current.parent().unwrap_or(Path::new("."));
    let (stem, ext) = stem_ext(current);
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mid = name
                .strip_prefix(&format!("{stem}."))?
                .strip_suffix(&format!(".{ext}"))?;
            (mid.len() == 6 && mid.bytes().all(|b| b.is_ascii_digit()))
                .then(|| mid.parse().ok().map(|n| (n, e.path())))
                .flatten()
        })
        .collect();
    v.sort();
    v
}

fn stem_ext(current: &Path) -> (String, String) {
    let stem = current
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("audit")
        .to_string();
    let ext = current
        .extension()
        .and_then(|s| s.to_str())
        .unwrap_or("jsonl")
        .to_string();
    (stem, ext)
}

/// The hash of the last complete line of `path` and whether a torn (unterminated) tail follows it.
fn last_line_hash(path: &Path) -> std::io::Result<(Option<String>, bool)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // Records are small; read a generous tail.
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let torn = !buf.is_empty() && buf.last() != Some(&b'\n');
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => &buf[..i],
        None => return Ok((None, torn)),
    };
    let line = match complete.iter().rposition(|&b| b == b'\n') {
        Some(i) => &complete[i + 1..],
        None => complete,
    };
    Ok(((!line.is_empty()).then(|| sha256_hex(line)), torn))
}

/// Where committed records go besides the file.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Print every record to standard output (journald, container logs).
    pub stdout: bool,
    /// Forward every record to a syslog server over TLS.
    pub syslog: Option<crate::syslog::Syslog>,
}

/// The stdout copy's own thread: a slow pipe or journald never stalls the
/// writer (and so never the requests waiting on it); batches that do not fit
/// the queue are dropped from the copy and counted, the file keeps them.
struct StdoutCopy {
    tx: mpsc::SyncSender<Vec<u8>>,
    dropped: u64,
}

impl StdoutCopy {
    /// Committed batches held while stdout is slow.
    const QUEUE: usize = 1024;

    fn start() -> Option<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(Self::QUEUE);
        std::thread::Builder::new()
            .name("dermgate-audit-stdout".into())
            .spawn(move || {
                for batch in rx {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                }
            })
            .ok()?;
        Some(Self { tx, dropped: 0 })
    }

    fn send(&mut self, buf: &[u8]) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(buf.to_vec()) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "stdout is not keeping up: audit batches left out of the stdout copy (the file has them)"
                );
            }
        }
    }
}

struct Writer {
    outputs: Outputs,
    stdout: Option<StdoutCopy>,
    current: PathBuf,
    file: File,
    /// Length of the file at the last successful commit.
    committed: u64,
    prev: String,
    day: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    key: Ed25519KeyPair,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    fn open(
        current: &Path,
        key: Ed25519KeyPair,
        healthy: Arc<AtomicBool>,
        outputs: Outputs,
    ) -> Result<Self, AuditError> {
        if let Some(dir) = current.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // Where the chain stands: the current file's last line, else the last rotated file's.
        let mut prev = GENESIS.to_string();
        for (_, p) in rotated_files(current) {
            if let Ok((Some(h), _)) = last_line_hash(&p) {
                prev = h;
            }
        }
        if current.exists() {
            let (h, torn) = last_line_hash(current).map_err(io_err(current))?;
            if let Some(h) = h {
                prev = h;
            }
            if torn {
                // A crash tore the last line: keep the file exactly as it is, rotated,
                // and continue the chain in a new file.
                let to = next_rotated(current);
                std::fs::rename(current, &to).map_err(io_err(current))?;
                tracing::warn!(file = %to.display(), "audit file ended with a torn line (crash); kept as is and rotated");
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(current)
            .map_err(io_err(current))?;
        let committed = file.metadata().map_err(io_err(current))?.len();
        let stdout = if outputs.stdout {
            StdoutCopy::start()
        } else {
            None
        };
        Ok(Self {
            stdout,
            outputs,
            current: current.to_path_buf(),
            file,
            committed,
            prev,
            day: today(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            key,
            healthy,
        })
    }

    /// Chains `r` to the previous line and appends it (with its newline) to `buf`.
    fn line(&mut self, r: &mut Record, buf: &mut Vec<u8>) {
        r.prev = std::mem::take(&mut self.prev);
        let start = buf.len();
        r.write_json(buf);
        self.prev = sha256_hex(&buf[start..]);
        buf.push(b'\n');
    }

    fn checkpoint(&mut self, buf: &mut Vec<u8>) {
        let sig = self.key.sign(self.prev.as_bytes());
        let mut r = Record {
            sig: Some(base64::engine::general_purpose::STANDARD.encode(sig.as_ref())),
            ..Record::new("checkpoint")
        };
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.line(&mut r, buf);
    }

    /// Writes and fsyncs a batch; on failure cuts the file back and restores the chain.
    fn commit(&mut self, records: &mut [Record]) -> bool {
        let saved_prev = self.prev.clone();
        let saved = (self.since_checkpoint, self.last_checkpoint);
        let mut buf = Vec::with_capacity(records.len() * 320);
        for r in records.iter_mut() {
            self.line(r, &mut buf);
            self.since_checkpoint += 1;
            if self.since_checkpoint >= CHECKPOINT_EVERY {
                self.checkpoint(&mut buf);
            }
        }
        if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            self.checkpoint(&mut buf);
        }
        let ok = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
            .is_ok();
        if ok {
            self.committed += buf.len() as u64;
            self.copy_out(&buf);
            if !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::warn!("audit trail writable again");
            }
            self.maybe_rotate();
        } else {
            // Nothing half-written stays: cut back to the last commit.
            let _ = self.file.set_len(self.committed);
            self.prev = saved_prev;
            (self.since_checkpoint, self.last_checkpoint) = saved;
            if self.healthy.swap(false, Ordering::Relaxed) {
                tracing::error!(target: "dermgate::audit", alert = true, file = %self.current.display(), "audit trail cannot be written: protected routes answer 503 until it can");
            }
        }
        ok
    }

    /// Copies committed lines to stdout and syslog (after the fsync: nothing
    /// is reported elsewhere that the file does not hold).
    fn copy_out(&mut self, buf: &[u8]) {
        if let Some(s) = self.stdout.as_mut() {
            s.send(buf);
        }
        if let Some(s) = &self.outputs.syslog {
            for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                s.send(line);
            }
        }
    }

    fn maybe_rotate(&mut self) {
        let day = today();
        if self.committed < ROTATE_BYTES && day == self.day {
            return;
        }
        if self.committed == 0 {
            self.day = day;
            return;
        }
        let to = next_rotated(&self.current);
        let reopened = std::fs::rename(&self.current, &to).and_then(|()| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.current)
        });
        match reopened {
            Ok(f) => {
                self.file = f;
                self.committed = 0;
                self.day = day;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit rotation failed; still writing the current file")
            }
        }
    }
}

fn next_rotated(current: &Path) -> PathBuf {
    let n = rotated_files(current).last().map_or(1, |(n, _)| n + 1);
    let (stem, ext) = stem_ext(current);
    current.with_file_name(format!("{stem}.{n:06}.{ext}"))
}

fn today() -> String {
    now_ts().get(..10).unwrap_or("").to_string()
}

impl Audit {
    /// Opens the trail at `file` and starts its writer thread.
    pub fn start(file: &Path, mode: SyncMode, key: Ed25519KeyPair) -> Result<Self, AuditError> {
        Self::start_with(file, mode, key, Outputs::default())
    }

    /// [`Audit::start`], also copying every committed record to `outputs`.
    pub fn start_with(
        file: &Path,
        mode: SyncMode,
        key: Ed25519KeyPair,
        outputs: Outputs,
    ) -> Result<Self, AuditError> {
        let healthy = Arc::new(AtomicBool::new(true));
        let mut writer = Writer::open(file, key, healthy.clone(), outputs)?;
        let (tx, rx) = mpsc::channel::<(Record, Option<Ack>)>();
        std::thread::Builder::new()
            .name("dermgate-audit".into())
            .spawn(move || {
                // Records and their acknowledgements side by side: committed
                // in place, never copied.
                let mut pending: Vec<Record> = Vec::new();
                let mut acks: Vec<Option<Ack>> = Vec::new();
                loop {
                    let wait = if pending.is_empty() {
                        CHECKPOINT_INTERVAL
                    } else {
                        BATCH_INTERVAL
                    };
                    match rx.recv_timeout(wait) {
                        Ok((r, a)) => {
                            pending.push(r);
                            acks.push(a);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            if pending.is_empty() {
                                break;
                            }
                        }
                    }
                    // Group commit: everything that has arrived, then one fsync.
                    if mode == SyncMode::Batch && !pending.is_empty() {
                        std::thread::sleep(BATCH_INTERVAL.saturating_sub(Duration::from_millis(5)));
                    }
                    while let Ok((r, a)) = rx.try_recv() {
                        pending.push(r);
                        acks.push(a);
                    }
                    if pending.is_empty() {
                        if writer.since_checkpoint > 0 {
                            let _ = writer.commit(&mut []);
                        }
                        continue;
                    }
                    let ok = writer.commit(&mut pending);
                    if ok {
                        pending.clear();
                        for a in acks.drain(..).flatten() {
                            let _ = a.send(true);
                        }
                    } else {
                        // Refuse the waiting requests; keep the records for the retry.
                        for a in acks.iter_mut().filter_map(Option::take) {
                            let _ = a.send(false);
                        }
                        if pending.len() > MAX_PENDING {
                            let drop_n = pending.len() - MAX_PENDING;
                            pending.drain(..drop_n);
                            acks.drain(..drop_n);
                            tracing::error!(
                                dropped = drop_n,
                                "audit backlog full while the trail is unwritable"
                            );
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            })
            .map_err(io_err(file))?;
        Ok(Self { tx, healthy, mode })
    }

    /// True while the trail can be written.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Appends a record; with `sync = "always"` waits until it is on disk.
    /// False when the record could not be written: the caller refuses the request.
    pub async fn append(&self, r: Record) -> bool {
        if self.mode == SyncMode::Always {
            return self.append_durable(r).await;
        }
        self.tx.send((r, None)).is_ok() && self.healthy()
    }

    /// Appends a record and waits until it is on disk, whatever the sync mode
    /// (in batch mode: until the group commit that holds it). False when it
    /// could not be written.
    pub async fn append_durable(&self, r: Record) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send((r, Some(tx))).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Appends a record without waiting (complete records, events).
    pub fn record(&self, r: Record) {
        let _ = self.tx.send((r, None));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn full_record(s: &str) -> Record {
        Record {
            ts: now_ts(),
            kind: "decision",
            id: Some(s.into()),
            event: Some(s.into()),
            sub: Some(s.into()),
            sid: Some(s.into()),
            device: Some(s.into()),
            src: Some(s.into()),
            host: Some(s.into()),
            route: Some(s.into()),
            method: Some(s.into()),
            path: Some(s.into()),
            proto: Some("h2"),
            tls: Some("TLSv1.3"),
            decision: Some("deny"),
            rule: Some(s.into()),
            reason: Some(s.into()),
            policy: Some(s.into()),
            status: Some(403),
            bytes_in: Some(0),
            bytes_out: Some(u64::MAX),
            ms: Some(12),
            sha256: Some(s.into()),
            amr: Some(vec![s.into(), "otp".into()]),
            auth: Some("session"),
            alert: Some(true),
            prev: "0".repeat(64),
            sig: Some(s.into()),
        }
    }

    #[test]
    fn the_fast_writer_writes_what_serde_json_writes() {
        for s in [
            "",
            "plain",
            "/patients/8812/chart",
            "quote \" inside",
            "back\\slash",
            "tab\tnew\nline\r\u{0}\u{1f}",
            "dr.lee@example-derm.com",
            "Ünïcödé 皮膚科 \u{1F600}",
            "\u{7f}\u{80}\u{2028}\u{2029}",
        ] {
            let r = full_record(s);
            let mut fast = Vec::new();
            r.write_json(&mut fast);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&r).unwrap(),
                "{s:?}"
            );
        }
        // A sparse record (absent fields left out, no alert).
        let r = Record::new("event");
        let mut fast = Vec::new();
        r.write_json(&mut fast);
        assert_eq!(fast, serde_json::to_vec(&r).unwrap());
        let r = Record {
            alert: Some(false),
            amr: Some(Vec::new()),
            ..Record::new("event")
        };
        let mut fast = Vec::new();
        r.write_json(&mut fast);
        assert_eq!(fast, serde_json::to_vec(&r).unwrap());
    }

    proptest::proptest! {
        #[test]
        fn the_fast_writer_matches_serde_json_on_any_string(s in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let r = full_record(&s);
            let mut fast = Vec::new();
            r.write_json(&mut fast);
            proptest::prop_assert_eq!(fast, serde_json::to_vec(&r).unwrap());
        }
    }

    #[test]
    fn timestamps_match_jiff_with_milliseconds() {
        for ms in [0i64, 7, 45, 999, 1_000, 86_399_999, 1_795_000_123_456] {
            let ts = jiff::Timestamp::from_millisecond(ms).unwrap();
            assert_eq!(format_ts(ts), format!("{ts:.3}"), "{ms}");
        }
        // The same second twice (cache hit), then the next one.
        let a = jiff::Timestamp::from_millisecond(1_795_000_123_001).unwrap();
        let b = jiff::Timestamp::from_millisecond(1_795_000_123_999).unwrap();
        let c = jiff::Timestamp::from_millisecond(1_795_000_124_000).unwrap();
        assert_eq!(format_ts(a), format!("{a:.3}"));
        assert_eq!(format_ts(b), format!("{b:.3}"));
        assert_eq!(format_ts(c), format!("{c:.3}"));
    }

    #[test]
    fn hex_of_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
