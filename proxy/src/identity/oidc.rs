//! The identity provider: discovery, the authorization-code flow with PKCE
//! (openidconnect), ID-token checks, bearer JWTs and back-channel logout
//! tokens (jsonwebtoken), over one JWKS cache.
//!
//! The IdP is a value ([`Idp`]), not a global, so several can be configured
//! later. Its metadata and keys are one immutable [`IdpState`] swapped
//! atomically; an unknown `kid` triggers a (rate-limited) JWKS refresh, so an
//! IdP key rotation needs no restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJsonWebKeySet, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::OidcConfig;

/// Why the IdP could not answer, or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// Discovery, JWKS or the token endpoint could not be reached or made no sense.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The IdP refused the code, or its answer failed a check.
    #[error("sign-in refused: {0}")]
    Refused(String),
    /// A bearer or logout token failed a check.
    #[error("token refused: {0}")]
    Token(&'static str),
}

/// A verification key and the one algorithm it may be used with.
type VerifyKey = Arc<(DecodingKey, Algorithm)>;
/// Keys by `kid`; an unusable key keeps the reason it is refused.
type KeyMap = HashMap<String, Result<VerifyKey, &'static str>>;

/// Metadata and keys, fetched together and swapped atomically.
struct IdpState {
    /// `None` when only keys were installed (tools, benchmarks).
    metadata: Option<CoreProviderMetadata>,
    /// Verification keys by `kid`, each with the one algorithm it may be used
    /// with, parsed once per JWKS fetch (not per token).
    keys: KeyMap,
    end_session: Option<String>,
}

/// What the pre-login cookie carries between `/login` and `/callback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginState {
    /// CSRF `state`.
    pub state: String,
    /// ID-token `nonce`.
    pub nonce: String,
    /// PKCE verifier (the challenge went to the IdP).
    pub verifier: String,
    /// Where the user goes afterwards.
    pub rd: String,
    /// Unix seconds after which the login attempt is stale.
    pub exp: u64,
}

/// The facts dermgate keeps from a verified ID token or bearer token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// `sub`.
    pub sub: String,
    /// The groups claim.
    pub groups: Vec<String>,
    /// `amr`.
    pub amr: Vec<String>,
    /// `acr`.
    pub acr: Option<String>,
    /// `auth_time` (unix s).
    pub auth_time: Option<u64>,
    /// `sid`.
    pub sid: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// Every claim, for policy `claims` conditions.
    pub all: Map<String, Value>,
    /// For bearer tokens: when MFA happened (`auth_time`, when `amr` names MFA).
    pub mfa_age: Option<u64>,
}

impl Claims {
    fn from_json(all: Map<String, Value>, groups_claim: &str) -> Result<Self, &'static str> {
        let s = |k: &str| all.get(k).and_then(Value::as_str).map(str::to_string);
        let list = |k: &str| match all.get(k) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(x)) => vec![x.clone()],
            _ => Vec::new(),
        };
        let sub = s("sub")
            .filter(|s| !s.is_empty())
            .ok_or("the token has no sub")?;
        Ok(Self {
            sub,
            groups: list(groups_claim),
            amr: list("amr"),
            acr: s("acr"),
            auth_time: all.get("auth_time").and_then(Value::as_u64),
            sid: s("sid"),
            email: s("email"),
            all,
            mfa_age: None,
        })
    }

    /// The MFA method, if `amr` (or `acr`) names one of `mfa_amr`.
    pub fn mfa_method(&self, mfa_amr: &[String]) -> Option<String> {
        self.amr
            .iter()
            .chain(self.acr.iter())
            .find(|m| mfa_amr.iter().any(|x| x == *m))
            .cloned()
    }
}

/// One configured identity provider.
pub struct Idp {
    /// `[oidc]`.
    pub cfg: OidcConfig,
    secret: String,
    http: reqwest::Client,
    state: ArcSwapOption<IdpState>,
    last_fetch_ms: AtomicU64,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Idp({})", self.cfg.issuer)
    }
}

/// Least time between two JWKS or discovery fetches.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Idp {
    /// Prepares the client; discovery happens in [`refresh`](Self::refresh).
    pub fn new(cfg: OidcConfig) -> Result<Self, IdpError> {
        let secret = std::fs::read_to_string(&cfg.client_secret_file)
            .map_err(|e| {
                IdpError::Unavailable(format!("{}: {e}", cfg.client_secret_file.display()))
            })?
            .trim()
            .to_string();
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .https_only(true);
        if let Some(ca) = &cfg.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| IdpError::Unavailable(format!("{}: {e}", ca.display())))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| IdpError::Unavailable(format!("{}: {e}", ca.display())))?
            {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| IdpError::Unavailable(format!("HTTP client: {e}")))?;
        Ok(Self {
            cfg,
            secret,
            http,
            state: ArcSwapOption::empty(),
            last_fetch_ms: AtomicU64::new(0),
        })
    }

    /// Discovery and JWKS, at most once per [`REFRESH_EVERY`] unless `force`.
    pub async fn refresh(&self, force: bool) -> Result<(), IdpError> {
        let now = now_ms();
        let last = self.last_fetch_ms.load(Ordering::Relaxed);
        if !force && now.saturating_sub(last) < REFRESH_EVERY.as_millis() as u64 {
            return if self.state.load().is_some() {
                Ok(())
            } else {
                Err(IdpError::Unavailable("discovery failed recently".into()))
            };
        }
        self.last_fetch_ms.store(now, Ordering::Relaxed);
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let raw: Value = self.get_json(&url).await?;
        let end_session = raw
            .get("end_session_endpoint")
            .and_then(Value::as_str)
            .map(str::to_string);
        let metadata: CoreProviderMetadata = serde_json::from_value(raw)
            .map_err(|e| IdpError::Unavailable(format!("discovery document: {e}")))?;
        if metadata.issuer().as_str().trim_end_matches('/') != self.cfg.issuer {
            return Err(IdpError::Unavailable(format!(
                "discovery names issuer {}, configured {}",
                metadata.issuer().as_str(),
                self.cfg.issuer
            )));
        }
        let jwks_url = metadata.jwks_uri().url().to_string();
        let raw_keys: Value = self.get_json(&jwks_url).await?;
        let oidc_keys: CoreJsonWebKeySet = serde_json::from_value(raw_keys.clone())
            .map_err(|e| IdpError::Unavailable(format!("JWKS: {e}")))?;
        let keys: JwkSet = serde_json::from_value(raw_keys)
            .map_err(|e| IdpError::Unavailable(format!("JWKS: {e}")))?;
        let keys = compile_keys(&keys);
        let metadata = metadata.set_jwks(oidc_keys);
        self.state.store(Some(Arc::new(IdpState {
            metadata: Some(metadata),
            keys,
            end_session,
        })));
        tracing::info!(issuer = %self.cfg.issuer, "identity provider metadata and keys loaded");
        Ok(())
    }

    async fn get_json(&self, url: &str) -> Result<Value, IdpError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| IdpError::Unavailable(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(IdpError::Unavailable(format!(
                "{url}: HTTP {}",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|e| IdpError::Unavailable(format!("{url}: {e}")))
    }

    async fn current(&self) -> Result<Arc<IdpState>, IdpError> {
        if let Some(s) = self.state.load_full() {
            return Ok(s);
        }
        self.refresh(false).await?;
        self.state
            .load_full()
            .ok_or_else(|| IdpError::Unavailable("no metadata".into()))
    }

    fn client(
        &self,
        st: &IdpState,
    ) -> Result<
        openidconnect::core::CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        IdpError,
    > {
        let redirect = RedirectUrl::new(self.cfg.callback.clone())
            .map_err(|e| IdpError::Unavailable(format!("callback URL: {e}")))?;
        let metadata = st
            .metadata
            .clone()
            .ok_or_else(|| IdpError::Unavailable("no discovery document".into()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.cfg.client_id.clone()),
            Some(ClientSecret::new(self.secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Starts a login: the IdP URL to send the browser to, and what the
    /// pre-login cookie must carry.
    pub async fn begin(&self, rd: &str, now: u64) -> Result<(String, LoginState), IdpError> {
        let st = self.current().await?;
        let client = self.client(&st)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url.to_string(),
            LoginState {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
                rd: rd.to_string(),
                exp: now + 600,
            },
        ))
    }

    /// Exchanges the code and verifies the ID token (signature from the JWKS,
    /// `iss`, `aud`, `exp`, `nonce`); returns its claims and the raw token.
    pub async fn finish(
        &self,
        code: &str,
        login: &LoginState,
    ) -> Result<(Claims, String), IdpError> {
        let st = self.current().await?;
        let client = self.client(&st)?;
        let resp = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| IdpError::Unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| IdpError::Refused(format!("code exchange failed: {}", oauth_error(&e))))?;
        let _ = resp.access_token();
        let id_token = resp
            .id_token()
            .ok_or_else(|| IdpError::Refused("the IdP sent no ID token".into()))?
            .clone();
        let nonce = Nonce::new(login.nonce.clone());
        let verified = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(_) => Ok(()),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // The IdP rotated its keys: fetch them once more and retry.
                self.refresh(false).await?;
                let st = self.current().await?;
                let client = self.client(&st)?;
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        verified.map_err(|e| IdpError::Refused(format!("ID token refused: {e}")))?;
        let raw = id_token.to_string();
        // The signature is verified: read the claims openidconnect does not model (groups, sid).
        let all = payload(&raw).ok_or_else(|| IdpError::Refused("ID token payload".into()))?;
        let claims = Claims::from_json(all, &self.cfg.groups_claim)
            .map_err(|e| IdpError::Refused(e.into()))?;
        Ok((claims, raw))
    }

    /// Installs a JWKS directly (no discovery): for tools and benchmarks that
    /// verify tokens offline. Logins still need [`refresh`](Self::refresh).
    pub fn install_keys(&self, jwks_json: &str) -> Result<(), IdpError> {
        let keys: JwkSet = serde_json::from_str(jwks_json)
            .map_err(|e| IdpError::Unavailable(format!("JWKS: {e}")))?;
        let keys = compile_keys(&keys);
        let current = self.state.load_full();
        self.state.store(Some(Arc::new(IdpState {
            metadata: current.as_ref().and_then(|s| s.metadata.clone()),
            end_session: current.as_ref().and_then(|s| s.end_session.clone()),
            keys,
        })));
        self.last_fetch_ms.store(now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// RP-initiated logout URL, when the IdP offers it.
    pub fn end_session_url(&self, id_token: Option<&str>, after: &str) -> Option<String> {
        let st = self.state.load_full()?;
        let base = st.end_session.as_ref()?;
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("client_id", &self.cfg.client_id);
        q.append_pair("post_logout_redirect_uri", after);
        if let Some(t) = id_token {
            q.append_pair("id_token_hint", t);
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(format!("{base}{sep}{}", q.finish()))
    }

    /// The key for `kid`, and the one algorithm it may be used with. An unknown
    /// `kid` refreshes the JWKS (rate-limited) once.
    async fn key_for(&self, kid: Option<&str>) -> Result<VerifyKey, IdpError> {
        let kid = kid.ok_or(IdpError::Token("the token names no key (kid)"))?;
        let st = self.current().await?;
        let found = match st.keys.get(kid) {
            Some(k) => k.clone(),
            None => {
                let _ = self.refresh(false).await;
                let st = self.current().await?;
                st.keys
                    .get(kid)
                    .cloned()
                    .ok_or(IdpError::Token("the token's key (kid) is unknown"))?
            }
        };
        found.map_err(IdpError::Token)
    }

    async fn verify(
        &self,
        token: &str,
        aud: &str,
        required: &[&str],
    ) -> Result<Map<String, Value>, IdpError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| IdpError::Token("malformed token"))?;
        let k = self.key_for(header.kid.as_deref()).await?;
        let (key, alg) = (&k.0, k.1);
        // The algorithm comes from the key, never from the token.
        if header.alg != alg {
            return Err(IdpError::Token(
                "the token's algorithm does not match its key",
            ));
        }
        let mut v = Validation::new(alg);
        v.leeway = 30;
        v.validate_nbf = true;
        v.set_issuer(&[self.cfg.issuer.as_str()]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            IdpError::Token(match e.kind() {
                K::ExpiredSignature => "the token has expired",
                K::ImmatureSignature => "the token is not valid yet",
                K::InvalidAudience => "the token is for another audience",
                K::InvalidIssuer => "the token is from another issuer",
                K::InvalidSignature => "the token's signature is invalid",
                K::MissingRequiredClaim(_) => "the token lacks a required claim",
                _ => "the token is invalid",
            })
        })?;
        Ok(data.claims)
    }

    /// Verifies an API bearer token (`aud` = `oidc.api_audience`).
    pub async fn verify_bearer(&self, token: &str) -> Result<Claims, IdpError> {
        let aud = self
            .cfg
            .api_audience
            .as_deref()
            .ok_or(IdpError::Token("bearer tokens are not accepted here"))?;
        let all = self
            .verify(token, aud, &["exp", "iss", "aud", "sub"])
            .await?;
        let mut c = Claims::from_json(all, &self.cfg.groups_claim).map_err(IdpError::Token)?;
        if c.mfa_method(&self.cfg.mfa_amr).is_some() {
            c.mfa_age = c
                .auth_time
                .or_else(|| c.all.get("iat").and_then(Value::as_u64));
        }
        Ok(c)
    }

    /// Verifies an OIDC Back-Channel Logout 1.0 logout token; returns (sub, sid).
    pub async fn verify_logout_token(
        &self,
        token: &str,
    ) -> Result<(Option<String>, Option<String>), IdpError> {
        let all = self
            .verify(token, &self.cfg.client_id, &["iss", "aud", "iat"])
            .await?;
        let event = all
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout"));
        if !event {
            return Err(IdpError::Token("not a logout token (events)"));
        }
        if all.contains_key("nonce") {
            return Err(IdpError::Token("a logout token must not carry a nonce"));
        }
        let sub = all.get("sub").and_then(Value::as_str).map(str::to_string);
        let sid = all.get("sid").and_then(Value::as_str).map(str::to_string);
        if sub.is_none() && sid.is_none() {
            return Err(IdpError::Token("a logout token names neither sub nor sid"));
        }
        Ok((sub, sid))
    }
}

fn oauth_error<E: std::error::Error>(e: &E) -> String {
    // The error chain may echo the IdP's body; keep its first line short.
    let s = e.to_string();
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// The (unverified) payload of a compact JWS; call only after verifying it.
fn payload(jwt: &str) -> Option<Map<String, Value>> {
    let p = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn compile_keys(set: &JwkSet) -> KeyMap {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let k = key_algorithm(jwk)
                .ok_or("the IdP key has no usable algorithm")
                .and_then(|alg| {
                    DecodingKey::from_jwk(jwk)
                        .map(|key| Arc::new((key, alg)))
                        .map_err(|_| "the IdP key is unusable")
                });
            Some((kid, k))
        })
        .collect()
}

/// The algorithm a JWK may be used with: its `alg`, else its key type's only one.
fn key_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => None,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        // Symmetric keys in a public JWKS are never trusted.
        _ => return None,
    };
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a: KeyAlgorithm| Algorithm::try_from(a).ok());
    let alg = match (declared, by_type) {
        (Some(d), Some(t)) if d != t => return None,
        (Some(d), _) => d,
        (None, Some(t)) => t,
        (None, None) => Algorithm::RS256,
    };
    match (alg, &jwk.algorithm) {
        (
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
            AlgorithmParameters::RSA(_),
        )
        | (Algorithm::ES256 | Algorithm::ES384, AlgorithmParameters::EllipticCurve(_))
        | (Algorithm::EdDSA, AlgorithmParameters::OctetKeyPair(_)) => Some(alg),
        _ => None,
    }
}
