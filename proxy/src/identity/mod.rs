//! Stage 2, who is asking: sessions (OIDC login, TOTP step-up), bearer JWTs,
//! and the proxy's own endpoints under `/.dermgate/`.
//!
//! - [`oidc`]: the identity provider (discovery, code flow with PKCE, JWKS).
//! - [`session`]: session records in the [`crate::store`].
//! - [`totp`]: the step-up.
//! - [`endpoints`]: `login`, `callback`, `handoff`, `logout`, `mfa`,
//!   `backchannel-logout`, `jwks.json`, `logged-out`.
//!
//! Every failure on the way to an identity fails closed: a store that cannot
//! answer is a 503, never an anonymous or an allowed request.

pub mod endpoints;
pub mod oidc;
pub mod ops;
pub mod pages;
pub mod session;
pub mod streams;
pub mod totp;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use crate::config::{Config, IdentityConfig, RouteConfig, StoreConfig};
use crate::keys::{AssertionKey, CookieKeys};
use crate::store::{Embedded, Redis, Store, StoreError};

pub use oidc::{Claims, Idp};
pub use session::{Session, SessionRecord, Sessions};

/// The session cookie (one per host; `__Host-` pins it to the host, path `/`, Secure).
pub const COOKIE_NAME: &str = "__Host-dermgate";
/// The short-lived pre-login cookie (state, nonce, PKCE verifier).
pub const LOGIN_COOKIE: &str = "__Host-dermgate-login";

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No credentials were presented.
    Anonymous,
    /// A browser session.
    Session(Box<Session>),
    /// A verified bearer JWT.
    Bearer(Box<Claims>),
}

impl Identity {
    /// The authenticated subject, if any.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::Session(s) => Some(&s.record.sub),
            Self::Bearer(c) => Some(&c.sub),
        }
    }

    /// The user's groups.
    pub fn groups(&self) -> &[String] {
        match self {
            Self::Anonymous => &[],
            Self::Session(s) => &s.record.groups,
            Self::Bearer(c) => &c.groups,
        }
    }

    /// Authentication methods.
    pub fn amr(&self) -> &[String] {
        match self {
            Self::Anonymous => &[],
            Self::Session(s) => &s.record.amr,
            Self::Bearer(c) => &c.amr,
        }
    }

    /// How long ago MFA was passed (session: step-up or IdP; bearer: its `auth_time`
    /// when its `amr` names MFA).
    pub fn mfa_age(&self, now: u64) -> Option<Duration> {
        match self {
            Self::Anonymous => None,
            Self::Session(s) => s.record.mfa_age(now),
            Self::Bearer(c) => c
                .mfa_age
                .map(|t| Duration::from_secs(now.saturating_sub(t))),
        }
    }

    /// The session id, for a browser session.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Self::Session(s) => Some(&s.id),
            _ => None,
        }
    }

    /// The IdP session id (`sid`).
    pub fn sid(&self) -> Option<&str> {
        match self {
            Self::Anonymous => None,
            Self::Session(s) => s.record.sid.as_deref(),
            Self::Bearer(c) => c.sid.as_deref(),
        }
    }

    /// The kind, for audit records: `session`, `bearer` or `anonymous`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Session(_) => "session",
            Self::Bearer(_) => "bearer",
        }
    }
}

/// What the session cookie carries (sealed): the id and an integrity-protected
/// summary. Encoded compactly (it is opened on every request):
/// `expiry (8, big-endian) || id length (1) || id || subject`.
#[derive(Debug, PartialEq, Eq)]
pub struct CookieBody {
    /// Session id.
    pub i: String,
    /// Subject.
    pub s: String,
    /// Absolute expiry (unix s).
    pub e: u64,
}

impl CookieBody {
    fn encode(&self) -> Option<Vec<u8>> {
        let len = u8::try_from(self.i.len()).ok()?;
        let mut v = Vec::with_capacity(9 + self.i.len() + self.s.len());
        v.extend_from_slice(&self.e.to_be_bytes());
        v.push(len);
        v.extend_from_slice(self.i.as_bytes());
        v.extend_from_slice(self.s.as_bytes());
        Some(v)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (e, rest) = b.split_first_chunk::<8>()?;
        let (&len, rest) = rest.split_first()?;
        let (i, s) = rest.split_at_checked(usize::from(len))?;
        Some(Self {
            i: std::str::from_utf8(i).ok()?.to_string(),
            s: std::str::from_utf8(s).ok()?.to_string(),
            e: u64::from_be_bytes(*e),
        })
    }
}

/// Why identification ended the request.
#[derive(Debug)]
pub enum IdentifyError {
    /// The store could not answer: 503.
    Store(StoreError),
    /// A bearer token was presented and refused: 401.
    Bearer(&'static str),
    /// The IdP (its keys) could not be reached to check a bearer token: 503.
    IdpUnavailable,
}

/// How an anonymous request came to be anonymous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    /// No cookie.
    None,
    /// A cookie that does not open (tampered, or from another key set).
    BadCookie,
    /// The session ended (logout, revocation) or timed out.
    Ended,
}

/// The identity service of one running proxy.
pub struct IdentityService {
    /// `[oidc]`, `[session]`, `[store]`.
    pub cfg: IdentityConfig,
    /// The identity provider.
    pub idp: Idp,
    /// Sessions in the store.
    pub sessions: Sessions,
    /// Cookie keys (reloaded after `keys rotate`).
    pub cookie_keys: ArcSwap<CookieKeys>,
    /// Signs `X-Dermgate-Assertion`.
    pub assertion: AssertionKey,
    /// TOTP step-up.
    pub totp: totp::Totp,
    /// Hosts a return address (`rd`) may name.
    pub hosts: HashSet<String>,
    /// Assertion issuer: `https://<auth host>`.
    pub assertion_iss: String,
    /// Open live streams by session.
    pub streams: streams::LiveStreams,
    /// Recently signed assertions by route and session.
    assertions: session::TimedCache<String>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityService({})", self.cfg.oidc.issuer)
    }
}

/// Why the identity service could not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Keys could not be made or read.
    #[error("keys: {0}")]
    Keys(#[from] std::io::Error),
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The IdP client could not be built.
    #[error("{0}")]
    Idp(#[from] oidc::IdpError),
}

/// Opens the configured store.
pub async fn open_store(cfg: &StoreConfig) -> Result<Store, StoreError> {
    Ok(match cfg {
        StoreConfig::Embedded { path } => Store::Embedded(Embedded::open(path)?),
        StoreConfig::Redis { url, ca } => Store::Redis(Redis::connect(url, ca.as_deref()).await?),
    })
}

impl IdentityService {
    /// Keys, store and IdP client. Discovery is attempted once here; when the IdP
    /// is unreachable the proxy still starts (logins fail with a clear page and
    /// discovery is retried).
    pub async fn start(cfg: &Config, id: &IdentityConfig) -> Result<Self, IdentityError> {
        crate::keys::private_dir(&id.keys_dir)?;
        let cookie_keys = CookieKeys::load_or_create(&id.session.keys_file)?;
        let assertion = AssertionKey::load_or_create(&id.keys_dir)?;
        let totp = totp::Totp::new(crate::keys::totp_key(&id.keys_dir)?);
        let store = open_store(&id.store).await?;
        let max_absolute = cfg
            .routes
            .iter()
            .filter_map(|r| r.absolute)
            .chain([id.session.absolute])
            .max()
            .unwrap_or(id.session.absolute);
        let idp = Idp::new(id.oidc.clone())?;
        if let Err(e) = idp.refresh(true).await {
            tracing::warn!(error = %e, "identity provider not reachable yet; logins will retry");
        }
        let mut hosts: HashSet<String> = cfg.routes.iter().map(|r| r.host.clone()).collect();
        hosts.insert(id.session.auth_host.clone());
        Ok(Self {
            assertion_iss: format!("https://{}", id.session.auth_host),
            cfg: id.clone(),
            idp,
            sessions: Sessions::new(store, max_absolute),
            cookie_keys: ArcSwap::from_pointee(cookie_keys),
            assertion,
            totp,
            hosts,
            streams: Default::default(),
            assertions: session::TimedCache::new(Duration::from_secs(30)),
        })
    }

    /// Re-reads the cookie keys file (after `dermgate keys rotate`).
    pub fn reload_cookie_keys(&self) -> std::io::Result<Vec<String>> {
        let k = CookieKeys::load_or_create(&self.cfg.session.keys_file)?;
        let kids = k.kids().iter().map(|s| s.to_string()).collect();
        self.cookie_keys.store(Arc::new(k));
        Ok(kids)
    }

    /// Adds a cookie key and starts sealing with it; older keys keep opening
    /// cookies until they retire (one absolute timeout after being superseded).
    pub fn rotate_cookie_keys(&self) -> std::io::Result<String> {
        let kid = CookieKeys::rotate(&self.cfg.session.keys_file, self.sessions.max_absolute)?;
        self.reload_cookie_keys()?;
        Ok(kid)
    }

    /// Idle and absolute timeouts for a route.
    pub fn timeouts(&self, route: Option<&RouteConfig>) -> (Duration, Duration) {
        (
            route.and_then(|r| r.idle).unwrap_or(self.cfg.session.idle),
            route
                .and_then(|r| r.absolute)
                .unwrap_or(self.cfg.session.absolute),
        )
    }

    /// Seals a session cookie value.
    pub fn seal_cookie(&self, s: &Session) -> std::io::Result<String> {
        let body = CookieBody {
            i: s.id.clone(),
            s: s.record.sub.clone(),
            e: s.record.created + self.sessions.max_absolute.as_secs(),
        };
        let bytes = body
            .encode()
            .ok_or_else(|| std::io::Error::other("session id too long"))?;
        self.cookie_keys.load().seal(COOKIE_NAME.as_bytes(), &bytes)
    }

    /// Opens the session cookie of a request, if it has a valid one.
    pub fn open_cookie(&self, headers: &HeaderMap) -> Result<Option<CookieBody>, NoSession> {
        let Some(v) = cookie(headers, COOKIE_NAME) else {
            return Ok(None);
        };
        let body = self
            .cookie_keys
            .load()
            .open(COOKIE_NAME.as_bytes(), v)
            .and_then(|b| CookieBody::decode(&b))
            .ok_or(NoSession::BadCookie)?;
        if body.e <= session::now() {
            return Err(NoSession::Ended);
        }
        Ok(Some(body))
    }

    /// The session a request's cookie names, checked against the store and the
    /// route's timeouts. An expired session is ended in the store.
    pub async fn session(
        &self,
        headers: &HeaderMap,
        route: Option<&RouteConfig>,
    ) -> Result<Result<Session, NoSession>, StoreError> {
        let body = match self.open_cookie(headers) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Err(NoSession::None)),
            Err(e) => return Ok(Err(e)),
        };
        let Some(mut record) = self.sessions.get(&body.i).await? else {
            return Ok(Err(NoSession::Ended));
        };
        if record.sub != body.s {
            return Ok(Err(NoSession::BadCookie));
        }
        let now = session::now();
        let (idle, absolute) = self.timeouts(route);
        if let Some(why) = record.expired(now, idle, absolute) {
            // Only the global timeouts end the session for every host; a stricter
            // route override only refuses here.
            let (gi, ga) = self.timeouts(None);
            if record.expired(now, gi, ga).is_some() {
                self.sessions.revoke(&body.i).await?;
            }
            tracing::info!(sub = %record.sub, why, "session expired");
            return Ok(Err(NoSession::Ended));
        }
        // Last seen moves at most every 5 s (or a quarter of the idle timeout):
        // the store is not written on every request.
        let every = (idle.as_secs() / 4).clamp(1, 5);
        if now.saturating_sub(record.last_seen) >= every {
            record.last_seen = now;
            self.sessions.update(&body.i, &record).await?;
        }
        Ok(Ok(Session { id: body.i, record }))
    }

    /// Stage 2: bearer token, else session cookie, else anonymous.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        route: Option<&RouteConfig>,
    ) -> Result<(Identity, NoSession), IdentifyError> {
        if let Some(token) = bearer(headers) {
            return match self.idp.verify_bearer(token).await {
                Ok(c) => Ok((Identity::Bearer(Box::new(c)), NoSession::None)),
                Err(oidc::IdpError::Token(why)) => Err(IdentifyError::Bearer(why)),
                Err(_) => Err(IdentifyError::IdpUnavailable),
            };
        }
        match self.session(headers, route).await {
            Ok(Ok(s)) => Ok((Identity::Session(Box::new(s)), NoSession::None)),
            Ok(Err(why)) => Ok((Identity::Anonymous, why)),
            Err(e) => Err(IdentifyError::Store(e)),
        }
    }

    /// The signed identity assertion for the upstream of `route`. A session's
    /// assertion for a route is signed once and reused for up to 30 s of its
    /// 60 s lifetime (signing is the costliest step of a protected request).
    pub fn assertion(&self, identity: &Identity, route: &str) -> Option<String> {
        if let Identity::Session(s) = identity {
            let key = format!("{route}\u{0}{}", s.id);
            if let Some(a) = self.assertions.get(&key) {
                return Some(a);
            }
            let a = self.sign_assertion(identity, route)?;
            self.assertions.put(&key, &a);
            return Some(a);
        }
        self.sign_assertion(identity, route)
    }

    fn sign_assertion(&self, identity: &Identity, route: &str) -> Option<String> {
        let sub = identity.subject()?;
        let now = session::now();
        let claims = serde_json::json!({
            "iss": self.assertion_iss,
            "aud": route,
            "sub": sub,
            "sid": identity.session_id().map(session_handle),
            "groups": identity.groups(),
            "amr": identity.amr(),
            "device": match identity { Identity::Session(s) => s.record.device.clone(), _ => None },
            "iat": now,
            "exp": now + 60,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.assertion.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.assertion.encoding).ok()
    }
}

/// A stable, non-secret handle for a session id (audit records, assertions,
/// the admin API): the session id itself is a bearer secret.
pub fn session_handle(id: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    hex::encode(&d.as_ref()[..8])
}

/// A cookie's value by name (the first one).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Removes dermgate's own cookies from a request going upstream: they are the
/// proxy's credentials, not the application's.
pub fn strip_own_cookies(headers: &mut HeaderMap) {
    let values: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|kv| {
                    let name = kv.split('=').next().unwrap_or("");
                    !name.starts_with(COOKIE_NAME)
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    if values.len() == headers.get_all(COOKIE).iter().count()
        && !headers
            .get_all(COOKIE)
            .iter()
            .any(|v| v.to_str().map_or(true, |s| s.contains(COOKIE_NAME)))
    {
        return;
    }
    headers.remove(COOKIE);
    for v in values {
        if let Ok(hv) = http::HeaderValue::from_str(&v) {
            headers.append(COOKIE, hv);
        }
    }
}

/// Where `[keys] dir` and friends are, for tools.
pub fn keys_dir(cfg: &Config) -> Option<PathBuf> {
    cfg.identity.as_ref().map(|i| i.keys_dir.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookies_are_parsed_and_stripped() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1; __Host-dermgate=xyz; b=2".parse().unwrap());
        h.append(COOKIE, "__Host-dermgate-login=q".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE_NAME), Some("xyz"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("q"));
        strip_own_cookies(&mut h);
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all, vec!["a=1; b=2"]);
    }

    #[test]
    fn cookie_body_round_trips_and_refuses_garbage() {
        let b = CookieBody {
            i: "abc".into(),
            s: "dr.lee@example".into(),
            e: 42,
        };
        assert_eq!(CookieBody::decode(&b.encode().unwrap()), Some(b));
        assert_eq!(CookieBody::decode(&[0; 8]), None);
        assert_eq!(CookieBody::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9, b'a']), None);
    }

    #[test]
    fn bearer_scheme() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
