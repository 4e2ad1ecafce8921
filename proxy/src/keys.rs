//! `[keys] dir` and the session keys file: every secret dermgate makes itself.
//!
//! The directory is created 0700 on first start and each key file 0600, written
//! once with `create_new` and fsynced. Keys:
//! - `assertion-es256.pk8`: signs `X-Dermgate-Assertion` (ES256); public half at
//!   `/.dermgate/jwks.json`.
//! - `totp-aes256.key`: encrypts TOTP secrets at rest (AES-256-GCM); never expires.
//! - `audit-ed25519.pk8`: audit checkpoints (see [`crate::audit`]).
//! - `session.keys_file` (default `session-keys`): cookie keys with ids, one per
//!   line, newest last. The newest seals; older keys still open cookies until they
//!   retire, so a rotation logs nobody out.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Creates `dir` (and parents) and restricts it to its owner.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes a new file readable by its owner only, and syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads `path`, or creates it with `make()` first.
pub fn load_or_create(
    path: &Path,
    make: impl FnOnce() -> io::Result<Vec<u8>>,
) -> io::Result<Vec<u8>> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        match write_private(path, &make()?) {
            Ok(()) => {}
            // Another process made it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::read(path)
}

/// `n` random bytes from the system generator.
pub fn random(n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| io::Error::other("the system random generator failed"))?;
    Ok(b)
}

/// A random token: `n` bytes, base64url.
pub fn token(n: usize) -> io::Result<String> {
    random(n).map(|b| URL_SAFE_NO_PAD.encode(b))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One AES-256-GCM key. Sealed data is `nonce || ciphertext || tag`; the
/// associated data binds it to its use (a cookie name, a user).
pub struct SealKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A key from 32 bytes.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let k = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(k),
        })
    }

    /// Encrypts `plaintext` bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> io::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| io::Error::other("the system random generator failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts what [`seal`](Self::seal) made with the same `aad`; `None` when
    /// it was altered, truncated, or sealed by another key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (n, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = ct.to_vec();
        let pt = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .ok()?;
        let len = pt.len();
        buf.truncate(len);
        Some(buf)
    }
}

/// The TOTP-secret encryption key (`totp-aes256.key`), created on first start.
pub fn totp_key(dir: &Path) -> io::Result<SealKey> {
    let bytes = load_or_create(&dir.join("totp-aes256.key"), || random(32))?;
    SealKey::new(&bytes).ok_or_else(|| io::Error::other("totp-aes256.key: not a 32-byte key"))
}

/// One line of the session keys file.
#[derive(Debug)]
struct CookieKey {
    kid: String,
    created: u64,
    key: SealKey,
}

/// The session cookie keys: the newest seals, all open.
#[derive(Debug)]
pub struct CookieKeys {
    keys: Vec<CookieKey>,
}

impl CookieKeys {
    /// Reads the keys file, creating it with one key on first start.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let text = load_or_create(path, || Ok(new_key_line()?.into_bytes()))?;
        let text = String::from_utf8(text)
            .map_err(|_| io::Error::other(format!("{}: not text", path.display())))?;
        Self::parse(&text).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(kid), Some(created), Some(b64), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("line {}: expected `KID CREATED BASE64KEY`", n + 1));
            };
            let created = created
                .parse()
                .map_err(|_| format!("line {}: bad creation time", n + 1))?;
            let key = STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| SealKey::new(&b))
                .ok_or_else(|| format!("line {}: expected a base64 32-byte key", n + 1))?;
            if kid.is_empty() || kid.contains('.') {
                return Err(format!("line {}: bad key id", n + 1));
            }
            keys.push(CookieKey {
                kid: kid.to_string(),
                created,
                key,
            });
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(Self { keys })
    }

    /// Key ids, oldest first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// Seals `plaintext` with the newest key: `KID.BASE64URL`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> io::Result<String> {
        let k = self
            .keys
            .last()
            .ok_or_else(|| io::Error::other("no cookie key"))?;
        let sealed = k.key.seal(aad, plaintext)?;
        Ok(format!("{}.{}", k.kid, URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// Opens a value made by [`seal`](Self::seal) with any key still held.
    pub fn open(&self, aad: &[u8], value: &str) -> Option<Vec<u8>> {
        let (kid, b64) = value.split_once('.')?;
        let k = self.keys.iter().find(|k| k.kid == kid)?;
        let sealed = URL_SAFE_NO_PAD.decode(b64).ok()?;
        k.key.open(aad, &sealed)
    }

    /// Adds a new key to the file (it seals from now on) and drops keys that were
    /// superseded more than `retire_after` ago. Returns the new key id.
    pub fn rotate(path: &Path, retire_after: Duration) -> io::Result<String> {
        let text = std::fs::read_to_string(path)?;
        let current = Self::parse(&text).map_err(io::Error::other)?;
        let now = now_unix();
        let line = new_key_line()?;
        let mut kept = Vec::new();
        // A key retires when the key after it has sealed for longer than `retire_after`.
        for (i, raw) in text
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty() && !l.starts_with('#')
            })
            .enumerate()
        {
            let superseded_at = current.keys.get(i + 1).map_or(now, |k| k.created);
            if now.saturating_sub(superseded_at) <= retire_after.as_secs() {
                kept.push(raw.to_string());
            }
        }
        kept.push(line.trim_end().to_string());
        let kid = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        write_private(
            &tmp,
            format!(
                "# dermgate session cookie keys: KID CREATED(unix) KEY(base64); newest last\n{}\n",
                kept.join("\n")
            )
            .as_bytes(),
        )?;
        std::fs::rename(&tmp, path)?;
        Ok(kid)
    }
}

fn new_key_line() -> io::Result<String> {
    let kid = URL_SAFE_NO_PAD.encode(random(6)?);
    Ok(format!(
        "{kid} {} {}\n",
        now_unix(),
        STANDARD.encode(random(32)?)
    ))
}

/// The ES256 key that signs identity assertions, and its JWKS.
pub struct AssertionKey {
    /// Key id (first bytes of the public key's SHA-256).
    pub kid: String,
    /// For jsonwebtoken.
    pub encoding: jsonwebtoken::EncodingKey,
    /// `{"keys":[…]}`, served at `/.dermgate/jwks.json`.
    pub jwks: String,
    /// The public key, for verifying in tests and tools.
    pub decoding: jsonwebtoken::DecodingKey,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AssertionKey({})", self.kid)
    }
}

impl AssertionKey {
    /// Loads `assertion-es256.pk8` from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        let path = dir.join("assertion-es256.pk8");
        let pk8 = load_or_create(&path, || {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| io::Error::other("cannot generate the assertion key"))
        })?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pk8)
            .map_err(|_| io::Error::other(format!("{}: not a P-256 key", path.display())))?;
        let public = pair.public_key().as_ref();
        if public.len() != 65 || public[0] != 4 {
            return Err(io::Error::other("unexpected public key encoding"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        let x = URL_SAFE_NO_PAD.encode(&public[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&public[33..65]);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        }]})
        .to_string();
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| io::Error::other(format!("assertion key: {e}")))?;
        Ok(Self {
            kid,
            encoding: jsonwebtoken::EncodingKey::from_ec_der(&pk8),
            jwks,
            decoding,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("dermgate-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn seal_open_and_tamper() {
        let k = SealKey::new(&[7u8; 32]).unwrap();
        let s = k.seal(b"aad", b"hello").unwrap();
        assert_eq!(k.open(b"aad", &s).unwrap(), b"hello");
        assert!(k.open(b"other", &s).is_none());
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(k.open(b"aad", &t).is_none());
        assert!(k.open(b"aad", &s[..10]).is_none());
        let other = SealKey::new(&[8u8; 32]).unwrap();
        assert!(other.open(b"aad", &s).is_none());
    }

    #[test]
    fn rotation_keeps_old_cookies_open() {
        let dir = tmp("rotate");
        let path = dir.join("session-keys");
        let keys = CookieKeys::load_or_create(&path).unwrap();
        let old = keys.seal(b"c", b"session").unwrap();
        let kid = CookieKeys::rotate(&path, Duration::from_secs(3600)).unwrap();
        let keys = CookieKeys::load_or_create(&path).unwrap();
        assert_eq!(keys.kids().len(), 2);
        assert_eq!(keys.kids()[1], kid);
        assert_eq!(keys.open(b"c", &old).unwrap(), b"session");
        let new = keys.seal(b"c", b"x").unwrap();
        assert!(new.starts_with(&format!("{kid}.")));
        // A key from another key set does not open.
        let other = CookieKeys::parse(&new_key_line().unwrap()).unwrap();
        assert!(other.open(b"c", &new).is_none());
        assert!(keys.open(b"c", "garbage").is_none());
        assert!(keys.open(b"c", &format!("{kid}.!!!")).is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // Retired keys go: with retire_after = 0 only the newest remains after another rotation.
        std::thread::sleep(Duration::from_millis(1100));
        CookieKeys::rotate(&path, Duration::ZERO).unwrap();
        let keys = CookieKeys::load_or_create(&path).unwrap();
        assert!(keys.open(b"c", &old).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn assertion_key_is_stable_across_loads() {
        let dir = tmp("assert");
        let a = AssertionKey::load_or_create(&dir).unwrap();
        let b = AssertionKey::load_or_create(&dir).unwrap();
        assert_eq!(a.kid, b.kid);
        assert!(a.jwks.contains("\"ES256\""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
