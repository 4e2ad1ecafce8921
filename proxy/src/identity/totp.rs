//! dermgate's own TOTP step-up (RFC 6238: SHA-1, 6 digits, 30 s, ±1 step).
//!
//! Store keys (`<u>` = base64url of the subject):
//! - `t:<u>`: the enrolled secret, AES-256-GCM sealed with the `[keys]` TOTP key
//!   and bound to the user (never expires);
//! - `tp:<u>`: a secret being enrolled (15 min), until the first code is right;
//! - `tu:<u>:<step>`: a used time step (a code is accepted once);
//! - `tf:<u>`: failures in the current 5-minute window;
//! - `tl:<u>`: the 15-minute lock after 5 failures.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use totp_rs::{Algorithm, Builder, Secret, Totp as Generator};

use crate::keys::SealKey;
use crate::store::{SessionStore, Store, StoreError};

/// Failures allowed within [`FAIL_WINDOW`] before the lock.
pub const MAX_FAILURES: u64 = 5;
/// The window failures are counted in.
pub const FAIL_WINDOW: Duration = Duration::from_secs(300);
/// How long step-up stays locked.
pub const LOCK_FOR: Duration = Duration::from_secs(900);
const STEP: u64 = 30;
const ISSUER: &str = "dermgate";

/// The outcome of a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right code, first use. The secret is (now) enrolled.
    Accepted,
    /// Wrong code.
    Wrong,
    /// Right code, but already used.
    Replayed,
    /// This failure locked step-up.
    LockedNow,
    /// Step-up is locked for this user.
    Locked,
    /// No secret enrolled or pending.
    NotEnrolled,
}

/// Where a user stands.
#[derive(Debug, Clone)]
pub enum Enrollment {
    /// A secret is enrolled.
    Enrolled,
    /// A secret is pending (shown to the user until the first right code).
    Pending(Vec<u8>),
}

/// TOTP secrets and checks over the store.
#[derive(Debug)]
pub struct Totp {
    key: SealKey,
}

fn u(sub: &str) -> String {
    URL_SAFE_NO_PAD.encode(sub)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("TOTP {what}"))
}

/// The TOTP generator for `secret` and account `sub`.
pub fn generator(secret: &[u8], sub: &str) -> Result<Generator, String> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP)
        .with_secret(secret.to_vec())
        .with_issuer(Some(ISSUER))
        .with_account_name(sub)
        .build()
        .map_err(|e| e.to_string())
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(secret: &[u8], sub: &str) -> Result<String, String> {
    generator(secret, sub)?.to_url().map_err(|e| e.to_string())
}

/// Base32 text of a secret (for typing it in by hand).
pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The QR code of `text` as inline SVG.
pub fn qr_svg(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build())
}

/// The QR code of `text` for a terminal.
pub fn qr_terminal(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}

/// Which step (if any) within ±1 of `now` `code` belongs to.
pub fn matching_step(secret: &[u8], sub: &str, code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // ±1 step (the generator's skew); the caller makes each step count once.
    generator(secret, sub).ok()?.check(code, now)
}

impl Totp {
    /// TOTP with secrets sealed by `key`.
    pub fn new(key: SealKey) -> Self {
        Self { key }
    }

    fn aad(sub: &str) -> Vec<u8> {
        format!("totp:{sub}").into_bytes()
    }

    async fn secret(
        &self,
        store: &Store,
        key: &str,
        sub: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match store.get(key).await? {
            None => Ok(None),
            Some(sealed) => self
                .key
                .open(&Self::aad(sub), &sealed)
                .map(Some)
                .ok_or_else(|| corrupt("secret does not open")),
        }
    }

    /// Whether `sub` is enrolled; if not, the pending secret (made now if needed).
    pub async fn enrollment(&self, store: &Store, sub: &str) -> Result<Enrollment, StoreError> {
        if store.get(&format!("t:{}", u(sub))).await?.is_some() {
            return Ok(Enrollment::Enrolled);
        }
        if let Some(s) = self.secret(store, &format!("tp:{}", u(sub)), sub).await? {
            return Ok(Enrollment::Pending(s));
        }
        let secret = crate::keys::random(20).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.store_secret(
            store,
            &format!("tp:{}", u(sub)),
            sub,
            &secret,
            Some(LOCK_FOR),
        )
        .await?;
        Ok(Enrollment::Pending(secret))
    }

    async fn store_secret(
        &self,
        store: &Store,
        key: &str,
        sub: &str,
        secret: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let sealed = self
            .key
            .seal(&Self::aad(sub), secret)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        store.put(key, &sealed, ttl).await
    }

    /// Enrolls a new secret at once (the admin CLI), replacing any old one.
    pub async fn enroll_now(&self, store: &Store, sub: &str) -> Result<Vec<u8>, StoreError> {
        let secret = crate::keys::random(20).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.store_secret(store, &format!("t:{}", u(sub)), sub, &secret, None)
            .await?;
        store.delete(&format!("tp:{}", u(sub))).await?;
        Ok(secret)
    }

    /// Checks `code` for `sub` at unix time `now`: lock, replay guard, failure count.
    pub async fn verify(
        &self,
        store: &Store,
        sub: &str,
        code: &str,
        now: u64,
    ) -> Result<Verdict, StoreError> {
        let who = u(sub);
        if store.get(&format!("tl:{who}")).await?.is_some() {
            return Ok(Verdict::Locked);
        }
        let (secret, pending) = match self.secret(store, &format!("t:{who}"), sub).await? {
            Some(s) => (s, false),
            None => match self.secret(store, &format!("tp:{who}"), sub).await? {
                Some(s) => (s, true),
                None => return Ok(Verdict::NotEnrolled),
            },
        };
        let verdict = match matching_step(&secret, sub, code, now) {
            Some(step) => {
                let first = store
                    .put_new(
                        &format!("tu:{who}:{step}"),
                        b"",
                        Some(Duration::from_secs(4 * STEP)),
                    )
                    .await?;
                if first {
                    Verdict::Accepted
                } else {
                    Verdict::Replayed
                }
            }
            None => Verdict::Wrong,
        };
        if verdict == Verdict::Accepted {
            if pending {
                self.store_secret(store, &format!("t:{who}"), sub, &secret, None)
                    .await?;
                store.delete(&format!("tp:{who}")).await?;
            }
            store.delete(&format!("tf:{who}")).await?;
            return Ok(verdict);
        }
        let failures = store.incr(&format!("tf:{who}"), FAIL_WINDOW).await?;
        if failures >= MAX_FAILURES {
            store.put(&format!("tl:{who}"), b"", Some(LOCK_FOR)).await?;
            store.delete(&format!("tf:{who}")).await?;
            return Ok(Verdict::LockedNow);
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc6238_vector_and_skew() {
        // RFC 6238 appendix B, SHA-1, T = 59 → 94287082 (8 digits); 6 digits: 287082.
        let secret = b"12345678901234567890";
        assert_eq!(matching_step(secret, "u", "287082", 59), Some(1));
        // One step either side is accepted, two are not.
        assert_eq!(matching_step(secret, "u", "287082", 59 + 30), Some(1));
        assert_eq!(matching_step(secret, "u", "287082", 59 + 60), None);
        assert_eq!(matching_step(secret, "u", "28708", 59), None);
        assert_eq!(matching_step(secret, "u", "abcdef", 59), None);
    }

    #[test]
    fn qr_renders() {
        let uri = otpauth_uri(&[1u8; 20], "dr@example").unwrap();
        assert!(uri.starts_with("otpauth://totp/"));
        assert!(qr_svg(&uri).unwrap().contains("<svg"));
        assert!(!qr_terminal(&uri).unwrap().is_empty());
    }
}
