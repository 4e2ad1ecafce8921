//! Session records in the store, and the keys that index them.
//!
//! Layout (every key has a TTL, so the store never grows without bound):
//! - `s:<id>` → the JSON [`SessionRecord`], expiring at the absolute timeout;
//! - `u:<b64(sub)>:<id>` and `sid:<b64(idp sid)>:<id>` → empty, for revoking
//!   all of a user's sessions or those of one IdP session (back-channel logout).
//!
//! Every replica reads `s:<id>` on every request, so a deletion (logout,
//! revocation) is seen everywhere at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::store::{SessionStore, Store, StoreError};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One session, shared by every host and replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// The user (the ID token's `sub`).
    pub sub: String,
    /// Groups from the IdP.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Authentication methods (`amr`), with `totp` added after a step-up.
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the IdP authenticated the user (unix s).
    pub auth_time: u64,
    /// When the user last passed MFA (unix s); `None`: never in this session.
    pub mfa_time: Option<u64>,
    /// How: an IdP `amr` value, or `totp` for dermgate's step-up.
    pub mfa_method: Option<String>,
    /// The bound device (client certificate id), when there was one.
    pub device: Option<String>,
    /// Created (unix s).
    pub created: u64,
    /// Last request (unix s, updated at most every few seconds).
    pub last_seen: u64,
    /// The IdP's session id (`sid`), for back-channel logout.
    pub sid: Option<String>,
    /// The ID token, as `id_token_hint` for RP-initiated logout. Kept under its
    /// own key (`it:<id>`), so the record read on every request stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The user's display e-mail, when the IdP sent one.
    pub email: Option<String>,
}

impl SessionRecord {
    /// Seconds since the last MFA.
    pub fn mfa_age(&self, now: u64) -> Option<Duration> {
        self.mfa_time
            .map(|t| Duration::from_secs(now.saturating_sub(t)))
    }

    /// Whether the session is over at `now` under these timeouts, and why.
    pub fn expired(&self, now: u64, idle: Duration, absolute: Duration) -> Option<&'static str> {
        if now.saturating_sub(self.created) >= absolute.as_secs() {
            Some("absolute")
        } else if now.saturating_sub(self.last_seen) >= idle.as_secs() {
            Some("idle")
        } else {
            None
        }
    }
}

/// A session id and its record.
#[derive(Debug, Clone)]
pub struct Session {
    /// The id (random, 32 bytes, base64url).
    pub id: String,
    /// The record.
    pub record: SessionRecord,
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn key(id: &str) -> String {
    format!("s:{id}")
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("session record: {e}"))
}

/// Session operations over a [`Store`].
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Store,
    /// The longest a record may live (the largest absolute timeout configured).
    pub max_absolute: Duration,
    cache: Arc<RecordCache>,
}

/// How long a record read from the store is reused by this process. A
/// revocation on another replica is seen within this (well inside the 1 s
/// promise); one on this replica at once.
pub const CACHE_FOR: Duration = Duration::from_millis(500);
const SHARDS: usize = 16;
const SHARD_CAPACITY: usize = 8192;

/// Values reused for a short time, sharded so concurrent requests rarely meet
/// on a lock; bounded per shard.
#[derive(Debug)]
pub struct TimedCache<T> {
    shards: [Mutex<HashMap<String, (Instant, T)>>; SHARDS],
    ttl: Duration,
}

impl<T: Clone> TimedCache<T> {
    /// Entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            ttl,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, (Instant, T)>> {
        let h = key.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        &self.shards[h % SHARDS]
    }

    /// A live entry.
    pub fn get(&self, key: &str) -> Option<T> {
        let m = self.shard(key).lock().ok()?;
        let (at, v) = m.get(key)?;
        (at.elapsed() < self.ttl).then(|| v.clone())
    }

    /// Stores an entry.
    pub fn put(&self, key: &str, v: &T) {
        if let Ok(mut m) = self.shard(key).lock() {
            if m.len() >= SHARD_CAPACITY {
                let ttl = self.ttl;
                m.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            if m.len() < SHARD_CAPACITY {
                m.insert(key.to_string(), (Instant::now(), v.clone()));
            }
        }
    }

    /// Drops an entry.
    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.shard(key).lock() {
            m.remove(key);
        }
    }
}

type RecordCache = TimedCache<SessionRecord>;

impl Sessions {
    /// Sessions in `store`.
    pub fn new(store: Store, max_absolute: Duration) -> Self {
        Self {
            store,
            max_absolute,
            cache: Arc::new(TimedCache::new(CACHE_FOR)),
        }
    }

    /// The store itself (one-time codes, TOTP state).
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn ttl(&self, rec: &SessionRecord) -> Duration {
        let age = now().saturating_sub(rec.created);
        self.max_absolute
            .saturating_sub(Duration::from_secs(age))
            .max(Duration::from_secs(1))
    }

    /// Stores a new session under a fresh random id.
    pub async fn create(&self, mut record: SessionRecord) -> Result<Session, StoreError> {
        let id = crate::keys::token(32).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let ttl = self.ttl(&record);
        if let Some(t) = record.id_token.take() {
            self.store
                .put(&format!("it:{id}"), t.as_bytes(), Some(ttl))
                .await?;
        }
        let json = serde_json::to_vec(&record).map_err(corrupt)?;
        self.store
            .put(&format!("u:{}:{id}", b64(&record.sub)), b"", Some(ttl))
            .await?;
        if let Some(sid) = &record.sid {
            self.store
                .put(&format!("sid:{}:{id}", b64(sid)), b"", Some(ttl))
                .await?;
        }
        self.store.put(&key(&id), &json, Some(ttl)).await?;
        Ok(Session { id, record })
    }

    /// The session `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        if let Some(r) = self.cache.get(id) {
            return Ok(Some(r));
        }
        self.get_fresh(id).await
    }

    /// The session `id` read from the store (never the local cache).
    pub async fn get_fresh(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        match self.store.get(&key(id)).await? {
            None => {
                self.cache.forget(id);
                Ok(None)
            }
            Some(b) => {
                let rec: SessionRecord = serde_json::from_slice(&b).map_err(corrupt)?;
                self.cache.put(id, &rec);
                Ok(Some(rec))
            }
        }
    }

    /// Writes an updated record (last seen, MFA time) back.
    pub async fn update(&self, id: &str, record: &SessionRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).map_err(corrupt)?;
        self.store
            .put(&key(id), &json, Some(self.ttl(record)))
            .await?;
        self.cache.put(id, record);
        Ok(())
    }

    /// The ID token of session `id` (for RP-initiated logout).
    pub async fn id_token(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .get(&format!("it:{id}"))
            .await?
            .and_then(|b| String::from_utf8(b).ok()))
    }

    /// Gives the session a new id (at step-up: no fixation), deleting the old one.
    pub async fn renew(&self, old: &str, mut record: SessionRecord) -> Result<Session, StoreError> {
        if record.id_token.is_none() {
            record.id_token = self.id_token(old).await?;
        }
        let s = self.create(record).await?;
        self.revoke(old).await?;
        Ok(s)
    }

    /// Ends one session; true when it existed.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.cache.forget(id);
        let Some(b) = self.store.take(&key(id)).await? else {
            return Ok(false);
        };
        self.store.delete(&format!("it:{id}")).await?;
        if let Ok(rec) = serde_json::from_slice::<SessionRecord>(&b) {
            self.store
                .delete(&format!("u:{}:{id}", b64(&rec.sub)))
                .await?;
            if let Some(sid) = rec.sid {
                self.store
                    .delete(&format!("sid:{}:{id}", b64(&sid)))
                    .await?;
            }
        }
        Ok(true)
    }

    async fn revoke_indexed(&self, prefix: String) -> Result<Vec<String>, StoreError> {
        let mut ended = Vec::new();
        for k in self.store.keys(&prefix).await? {
            let id = &k[prefix.len()..];
            if self.revoke(id).await? {
                ended.push(id.to_string());
            }
            self.store.delete(&k).await?;
        }
        Ok(ended)
    }

    /// Ends every session of `sub`; returns their ids.
    pub async fn revoke_user(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        self.revoke_indexed(format!("u:{}:", b64(sub))).await
    }

    /// Ends every session of the IdP session `sid`; returns their ids.
    pub async fn revoke_sid(&self, sid: &str) -> Result<Vec<String>, StoreError> {
        self.revoke_indexed(format!("sid:{}:", b64(sid))).await
    }

    /// All live sessions, or those of one user.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<Session>, StoreError> {
        let ids: Vec<String> = match user {
            Some(u) => {
                let prefix = format!("u:{}:", b64(u));
                self.store
                    .keys(&prefix)
                    .await?
                    .into_iter()
                    .map(|k| k[prefix.len()..].to_string())
                    .collect()
            }
            None => self
                .store
                .keys("s:")
                .await?
                .into_iter()
                .map(|k| k[2..].to_string())
                .collect(),
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(record) = self.get(&id).await? {
                out.push(Session { id, record });
            }
        }
        out.sort_by_key(|s| s.record.created);
        Ok(out)
    }
}
