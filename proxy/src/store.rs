//! The session store: a small key-value store with expiry, behind one trait
//! ([`SessionStore`]) with two real backends that pass the same suite
//! ([`conformance`]):
//! - [`Embedded`] (redb, one crash-safe file on disk; default): this process only;
//! - [`Redis`] (Redis/Valkey, `redis://` or `rediss://`): shared by replicas.
//!
//! Sessions, one-time handoff codes, TOTP secrets, replay guards, failure
//! counters and lockouts are built on these primitives (see
//! [`crate::identity`]). Every error is an [`StoreError`]: callers fail closed.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// Why the store could not answer. Callers fail closed (deny with 503).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O, connection refused, timeout.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// A value that cannot be what was stored.
    #[error("session store data corrupt: {0}")]
    Corrupt(String),
}

/// The primitives every backend provides.
pub trait SessionStore: Send + Sync {
    /// Value of `key`, or None when absent or expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Sets `key`; `ttl: None` = never expires.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Sets `key` only when absent (or expired); true when this call set it.
    fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Atomically reads and deletes `key`: at most one caller ever gets Some.
    fn take(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Deletes `key`; true when it existed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Increments the counter at `key`; the first increment starts a fixed
    /// window of `window` after which the counter expires.
    fn incr(
        &self,
        key: &str,
        window: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Live keys starting with `prefix`, any order.
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Cheap liveness check.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| now_ms().saturating_add(t.as_millis().max(1) as u64))
}

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// `expiry (8 bytes, big-endian unix ms, 0 = never) || value`.
fn encode(exp: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&exp.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// The value, if `raw` is live at `now`.
fn decode(raw: &[u8], now: u64) -> Result<Option<(u64, &[u8])>, StoreError> {
    let (e, v) = raw
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("value shorter than its header".into()))?;
    let exp = u64::from_be_bytes(*e);
    Ok((exp == 0 || exp > now).then_some((exp, v)))
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The embedded store: one redb file. Reads run inline (a read transaction is
/// a few hundred nanoseconds); writes commit durably and run on the blocking
/// pool so the runtime never waits on an fsync. Expired entries are never
/// returned and are swept by every 256th write.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<Database>,
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedded")
    }
}

impl Embedded {
    /// Opens (creating) `dir/store.redb`; `dir` is made 0700.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        crate::keys::private_dir(dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        let db = Database::create(&path).map_err(|e| io(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(TABLE).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(Self {
            db: Arc::new(db),
            writes: Arc::default(),
        })
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(TABLE).map_err(io)?;
        let Some(g) = t.get(key).map_err(io)? else {
            return Ok(None);
        };
        Ok(decode(g.value(), now_ms())?.map(|(_, v)| v.to_vec()))
    }

    /// Runs `f` in one durable write transaction on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let sweep = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % 256
            == 255;
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(io)?;
            let out = {
                let mut t = tx.open_table(TABLE).map_err(io)?;
                let out = f(&mut t)?;
                if sweep {
                    let now = now_ms();
                    t.retain(|_, v| decode(v, now).is_ok_and(|x| x.is_some()))
                        .map_err(io)?;
                }
                out
            };
            tx.commit().map_err(io)?;
            Ok(out)
        })
        .await
        .map_err(io)?
    }
}

fn live(
    t: &redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    now: u64,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    match t.get(key).map_err(io)? {
        None => Ok(None),
        Some(g) => Ok(decode(g.value(), now)?.map(|(e, v)| (e, v.to_vec()))),
    }
}

impl SessionStore for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(key)
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let (k, v) = (key.to_string(), encode(expiry(ttl), value));
        self.write(move |t| {
            t.insert(k.as_str(), v.as_slice()).map_err(io)?;
            Ok(())
        })
        .await
    }

    async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let (k, v) = (key.to_string(), encode(expiry(ttl), value));
        self.write(move |t| {
            if live(t, &k, now_ms())?.is_some() {
                return Ok(false);
            }
            t.insert(k.as_str(), v.as_slice()).map_err(io)?;
            Ok(true)
        })
        .await
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = key.to_string();
        self.write(move |t| {
            let v = live(t, &k, now_ms())?.map(|(_, v)| v);
            t.remove(k.as_str()).map_err(io)?;
            Ok(v)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let k = key.to_string();
        self.write(move |t| {
            let existed = live(t, &k, now_ms())?.is_some();
            t.remove(k.as_str()).map_err(io)?;
            Ok(existed)
        })
        .await
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<u64, StoreError> {
        let k = key.to_string();
        self.write(move |t| {
            let now = now_ms();
            let (exp, n) = match live(t, &k, now)? {
                Some((exp, v)) => {
                    let b: [u8; 8] = v
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("counter".into()))?;
                    (exp, u64::from_be_bytes(b) + 1)
                }
                None => (expiry(Some(window)), 1),
            };
            t.insert(k.as_str(), encode(exp, &n.to_be_bytes()).as_slice())
                .map_err(io)?;
            Ok(n)
        })
        .await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let t = tx.open_table(TABLE).map_err(io)?;
        let now = now_ms();
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(io)? {
            let (k, v) = item.map_err(io)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if decode(v.value(), now)?.is_some() {
                out.push(k.to_string());
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.begin_read().map(|_| ()).map_err(io)
    }
}

/// Redis/Valkey through a reconnecting [`redis::aio::ConnectionManager`].
/// Every operation is bounded by [`REDIS_TIMEOUT`]: a server that is down
/// answers "unavailable" at once, and the manager reconnects by itself when
/// it returns. Keys are prefixed `dermgate:`.
#[derive(Clone)]
pub struct Redis {
    conn: redis::aio::ConnectionManager,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redis")
    }
}

/// The longest any Redis operation may take.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const NS: &str = "dermgate:";

/// INCR, and start the window on the first increment (atomic).
const INCR_SCRIPT: &str = "local n = redis.call('INCR', KEYS[1]) \
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";

impl Redis {
    /// Connects to `url` (`redis://` or `rediss://`; `ca` is trusted for TLS).
    /// Fails when the server cannot be reached now; afterwards outages are
    /// survived (calls fail fast, and work again once it is back).
    pub async fn connect(url: &str, ca: Option<&Path>) -> Result<Self, StoreError> {
        let client = match ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| io(format!("{}: {e}", ca.display())))?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(url),
        }
        .map_err(|e| io(format!("redis URL: {e}")))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            REDIS_TIMEOUT * 3,
            redis::aio::ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| io("redis: connection timed out"))?
        .map_err(|e| io(format!("redis: {e}")))?;
        Ok(Self { conn })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut c))
            .await
            .map_err(|_| io("redis: timed out"))?
            .map_err(|e| io(format!("redis: {e}")))
    }
}

fn ns(key: &str) -> String {
    format!("{NS}{key}")
}

fn set_cmd(key: &str, value: &[u8], ttl: Option<Duration>, nx: bool) -> redis::Cmd {
    let mut c = redis::cmd("SET");
    c.arg(ns(key)).arg(value);
    if nx {
        c.arg("NX");
    }
    if let Some(t) = ttl {
        c.arg("PX").arg(t.as_millis().max(1) as u64);
    }
    c
}

impl SessionStore for Redis {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(redis::cmd("GET").arg(ns(key))).await
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.run::<()>(&set_cmd(key, value, ttl, false)).await
    }

    async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let r: Option<String> = self.run(&set_cmd(key, value, ttl, true)).await?;
        Ok(r.is_some())
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(redis::cmd("GETDEL").arg(ns(key))).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let n: u64 = self.run(redis::cmd("DEL").arg(ns(key))).await?;
        Ok(n > 0)
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<u64, StoreError> {
        self.run(
            redis::cmd("EVAL")
                .arg(INCR_SCRIPT)
                .arg(1)
                .arg(ns(key))
                .arg(window.as_millis().max(1) as u64),
        )
        .await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}*", ns(&glob_escape(prefix)));
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500),
                )
                .await?;
            out.extend(
                batch
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(NS).map(str::to_string)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run::<String>(&redis::cmd("PING")).await.map(|_| ())
    }
}

fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// The store the proxy holds.
#[derive(Clone, Debug)]
pub enum Store {
    /// On disk.
    Embedded(Embedded),
    /// Shared.
    Redis(Redis),
}

impl Store {
    /// `embedded` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Redis(_) => "redis",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Embedded($s) => $e,
            Store::Redis($s) => $e,
        }
    };
}

impl SessionStore for Store {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.get(key).await)
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        delegate!(self, s => s.put(key, value, ttl).await)
    }
    async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        delegate!(self, s => s.put_new(key, value, ttl).await)
    }
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.take(key).await)
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.delete(key).await)
    }
    async fn incr(&self, key: &str, window: Duration) -> Result<u64, StoreError> {
        delegate!(self, s => s.incr(key, window).await)
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.keys(prefix).await)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.ping().await)
    }
}

/// The suite every backend must pass (run by the unit tests on [`Embedded`]
/// and by the end-to-end tests on both backends against a real Redis).
pub mod conformance {
    use std::time::Duration;

    use super::SessionStore;

    fn check(ok: bool, what: &str) -> Result<(), String> {
        if ok { Ok(()) } else { Err(what.to_string()) }
    }

    fn e<E: std::fmt::Display>(e: E) -> String {
        e.to_string()
    }

    /// Runs the suite on keys under `prefix`.
    pub async fn run<S: SessionStore>(s: &S, prefix: &str) -> Result<(), String> {
        let k = |n: &str| format!("{prefix}{n}");
        s.ping().await.map_err(e)?;
        // get / put / overwrite / binary / empty / large.
        check(
            s.get(&k("a")).await.map_err(e)?.is_none(),
            "absent key is None",
        )?;
        s.put(&k("a"), b"1", None).await.map_err(e)?;
        s.put(&k("a"), &[0, 255, 7], None).await.map_err(e)?;
        check(
            s.get(&k("a")).await.map_err(e)? == Some(vec![0, 255, 7]),
            "overwrite, binary",
        )?;
        s.put(&k("empty"), b"", None).await.map_err(e)?;
        check(
            s.get(&k("empty")).await.map_err(e)? == Some(vec![]),
            "empty value",
        )?;
        let big = vec![42u8; 1 << 20];
        s.put(&k("big"), &big, Some(Duration::from_secs(60)))
            .await
            .map_err(e)?;
        check(
            s.get(&k("big")).await.map_err(e)? == Some(big),
            "1 MiB value",
        )?;
        // ttl.
        s.put(&k("ttl"), b"x", Some(Duration::from_millis(300)))
            .await
            .map_err(e)?;
        check(
            s.get(&k("ttl")).await.map_err(e)?.is_some(),
            "live before ttl",
        )?;
        // put_new.
        check(
            s.put_new(&k("once"), b"1", Some(Duration::from_millis(300)))
                .await
                .map_err(e)?,
            "first put_new sets",
        )?;
        check(
            !s.put_new(&k("once"), b"2", None).await.map_err(e)?,
            "second put_new does not",
        )?;
        check(
            s.get(&k("once")).await.map_err(e)? == Some(b"1".to_vec()),
            "put_new kept the first",
        )?;
        // incr.
        check(
            s.incr(&k("n"), Duration::from_millis(300))
                .await
                .map_err(e)?
                == 1,
            "incr starts at 1",
        )?;
        check(
            s.incr(&k("n"), Duration::from_millis(300))
                .await
                .map_err(e)?
                == 2,
            "incr counts",
        )?;
        tokio::time::sleep(Duration::from_millis(450)).await;
        check(
            s.get(&k("ttl")).await.map_err(e)?.is_none(),
            "expired after ttl",
        )?;
        check(
            s.put_new(&k("once"), b"3", None).await.map_err(e)?,
            "put_new after expiry sets",
        )?;
        check(
            s.incr(&k("n"), Duration::from_secs(60)).await.map_err(e)? == 1,
            "counter window expired",
        )?;
        // take: exactly one of many concurrent takers gets the value.
        s.put(&k("code"), b"c", Some(Duration::from_secs(30)))
            .await
            .map_err(e)?;
        let code = k("code");
        let takes = futures_util::future::join_all((0..20).map(|_| s.take(&code))).await;
        let got = takes
            .into_iter()
            .filter(|r| matches!(r, Ok(Some(_))))
            .count();
        check(got == 1, "exactly one take wins")?;
        check(
            s.take(&k("code")).await.map_err(e)?.is_none(),
            "taken is gone",
        )?;
        // delete.
        check(s.delete(&k("a")).await.map_err(e)?, "delete existing")?;
        check(!s.delete(&k("a")).await.map_err(e)?, "delete absent")?;
        // keys by prefix, without expired ones.
        s.put(&k("p:1"), b"", None).await.map_err(e)?;
        s.put(&k("p:2"), b"", None).await.map_err(e)?;
        s.put(&k("p:3"), b"", Some(Duration::from_millis(100)))
            .await
            .map_err(e)?;
        s.put(&k("q:1"), b"", None).await.map_err(e)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut keys = s.keys(&k("p:")).await.map_err(e)?;
        keys.sort();
        check(
            keys == vec![k("p:1"), k("p:2")],
            "keys by prefix, live only",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("dermgate-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_passes_the_suite_and_survives_reopen() {
        let d = dir("suite");
        let s = Embedded::open(&d).unwrap();
        conformance::run(&s, "t:").await.unwrap();
        s.put("keep", b"v", None).await.unwrap();
        drop(s);
        let s = Embedded::open(&d).unwrap();
        assert_eq!(s.get("keep").await.unwrap(), Some(b"v".to_vec()));
        // A value too short to carry its header is corrupt, not a panic.
        {
            let tx = s.db.begin_write().unwrap();
            tx.open_table(TABLE)
                .unwrap()
                .insert("bad", &[1u8, 2][..])
                .unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(s.get("bad").await, Err(StoreError::Corrupt(_))));
        let _ = std::fs::remove_dir_all(&d);
    }
}
