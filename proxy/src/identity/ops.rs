//! Operations on live identity state shared by the admin API (proxy running)
//! and the CLI (no proxy running: it opens the store itself).
//!
//! Sessions are named by their *handle* (a hash of the id): the id itself is
//! a credential and never leaves the store.

use serde::{Deserialize, Serialize};

use super::session::{Sessions, now};
use super::session_handle;
use super::totp::{self, Totp, Verdict};
use crate::store::{Store, StoreError};

/// One session as admins see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    /// The handle (`sessions revoke --id` takes it).
    pub id: String,
    /// The user.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
    /// `amr`.
    pub amr: Vec<String>,
    /// How MFA was done, if it was.
    pub mfa: Option<String>,
    /// Created (unix s).
    pub created: u64,
    /// Last request (unix s).
    pub last_seen: u64,
    /// Seconds since the last request.
    pub idle_for: u64,
}

/// Live sessions, oldest first.
pub async fn list(sessions: &Sessions, user: Option<&str>) -> Result<Vec<SessionView>, StoreError> {
    let t = now();
    Ok(sessions
        .list(user)
        .await?
        .into_iter()
        .map(|s| SessionView {
            id: session_handle(&s.id),
            user: s.record.sub,
            groups: s.record.groups,
            amr: s.record.amr,
            mfa: s.record.mfa_method,
            created: s.record.created,
            last_seen: s.record.last_seen,
            idle_for: t.saturating_sub(s.record.last_seen),
        })
        .collect())
}

/// What to revoke.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// One session, by handle.
    pub id: Option<String>,
    /// Every session of a user.
    pub user: Option<String>,
}

/// Ends the sessions named; returns how many ended.
pub async fn revoke(sessions: &Sessions, what: &RevokeRequest) -> Result<usize, StoreError> {
    match (&what.id, &what.user) {
        (Some(handle), None) => {
            for s in sessions.list(None).await? {
                if session_handle(&s.id) == *handle {
                    return Ok(usize::from(sessions.revoke(&s.id).await?));
                }
            }
            Ok(0)
        }
        (None, Some(user)) => Ok(sessions.revoke_user(user).await?.len()),
        _ => Ok(0),
    }
}

/// A TOTP enrollment for the CLI to show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    /// The user.
    pub user: String,
    /// `otpauth://` URI.
    pub uri: String,
    /// The secret, base32 (for typing in).
    pub secret: String,
}

/// Enrolls (or re-enrolls) `user` at once.
pub async fn totp_enroll(t: &Totp, store: &Store, user: &str) -> Result<Enrolled, StoreError> {
    let secret = t.enroll_now(store, user).await?;
    Ok(Enrolled {
        user: user.to_string(),
        uri: totp::otpauth_uri(&secret, user).map_err(StoreError::Corrupt)?,
        secret: totp::base32(&secret),
    })
}

/// Checks a code for `user` (counts towards the lockout like a step-up).
pub async fn totp_verify(
    t: &Totp,
    store: &Store,
    user: &str,
    code: &str,
) -> Result<Verdict, StoreError> {
    t.verify(store, user, code, now()).await
}

/// The label of a verdict for JSON and the CLI.
pub fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Accepted => "accepted",
        Verdict::Wrong => "wrong",
        Verdict::Replayed => "replayed",
        Verdict::LockedNow | Verdict::Locked => "locked",
        Verdict::NotEnrolled => "not_enrolled",
    }
}
