//! A DEVELOPMENT-ONLY OpenID provider, run in-process by `dermgate demo`. Never for real patients.
//!
//! dermgate is an OIDC relying party; the demo needs something to sign users
//! in with, so this module is a small but honest OP: discovery, an ES256 JWKS,
//! the authorization-code flow with PKCE (S256 only), `state`, `nonce`, the
//! RFC 9207 `iss` authorization-response parameter, ID tokens carrying
//! `amr`/`acr`/`auth_time`/`groups`/`sid`, RFC 9068-style JWT access tokens
//! (for the demo's bearer call), userinfo, and RP-initiated logout.
//!
//! It has no session of its own (every authorization request shows the login
//! form, so `auth_time` is always the moment of that sign-in), one client, and
//! the fixed [`DEMO_USERS`], whose passwords it prints on its own login page.
//! Its signing key is generated at start and lives only in memory.
//!
//! Shape: [`Provider`] answers one already-read request for a given time
//! (`handle(request, now)`); [`start`] only adapts TLS and HTTP/1.1 to it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, ORIGIN, PRAGMA,
    REFERRER_POLICY, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One demo account.
#[derive(Debug, Clone, Copy)]
pub struct DevUser {
    /// Login name; also the `sub` claim.
    pub username: &'static str,
    /// Password (shown on the login page: this is a demo).
    pub password: &'static str,
    /// Display name (`name` claim).
    pub name: &'static str,
    /// The `groups` claim.
    pub groups: &'static [&'static str],
    /// Whether the IdP claims to have done MFA (`amr` `["pwd","otp"]`, `acr` `"mfa"`);
    /// without it dermgate's own TOTP step-up is needed where policy asks for MFA.
    pub mfa: bool,
}

/// The demo accounts.
pub const DEMO_USERS: &[DevUser] = &[
    DevUser {
        username: "dr-mfa",
        password: "demo-mfa-pass",
        name: "Dr. Demo (MFA at the IdP)",
        groups: &["clinicians"],
        mfa: true,
    },
    DevUser {
        username: "dr-nomfa",
        password: "demo-nomfa-pass",
        name: "Dr. Demo (password only)",
        groups: &["clinicians"],
        mfa: false,
    },
    DevUser {
        username: "patient",
        password: "demo-patient-pass",
        name: "Demo Patient",
        groups: &["patients"],
        mfa: false,
    },
    DevUser {
        username: "nogroups",
        password: "demo-nogroups-pass",
        name: "Demo User Without Groups",
        groups: &[],
        mfa: false,
    },
];

/// The `aud` of the access tokens this provider issues (dermgate's `oidc.api_audience`).
pub const API_AUDIENCE: &str = "dermgate-api";

/// How long an authorization code may be redeemed.
const CODE_TTL: u64 = 60;
/// Lifetime of ID and access tokens.
const TOKEN_TTL: u64 = 600;
/// Largest request body read (forms are tiny).
const MAX_BODY: usize = 16 * 1024;
/// Codes waiting to be redeemed, at most; a flood of logins cannot grow memory without bound.
const MAX_PENDING_CODES: usize = 10_000;
/// Longest `state` and `nonce` accepted.
const MAX_STATE_LEN: usize = 512;
/// Time allowed for the TLS handshake and for the request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the provider serves and for whom.
#[derive(Clone)]
pub struct DevIdpConfig {
    /// TLS for the provider (ALPN is set to `http/1.1` here).
    pub tls: Arc<rustls::ServerConfig>,
    /// The issuer, an origin without path or trailing slash, e.g. `https://localhost:8444`;
    /// every endpoint is `<issuer>/<name>` and tokens carry exactly this `iss`.
    pub issuer: String,
    /// The one client's id.
    pub client_id: String,
    /// The one client's secret (`client_secret_basic` or `client_secret_post`).
    pub client_secret: String,
    /// Registered redirect URIs, compared exactly.
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs, compared exactly.
    pub post_logout_redirect_uris: Vec<String>,
}

/// A running provider; dropping it stops accepting connections.
#[derive(Debug)]
pub struct DevIdp {
    /// The issuer, as configured.
    pub issuer: String,
    /// Where it listens.
    #[allow(
        dead_code,
        reason = "the address is for tests and callers that bind port 0"
    )]
    pub addr: SocketAddr,
    server: tokio::task::AbortHandle,
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts the provider on `listener` (bind it first, port 0 included, so the issuer can
/// name the real port). Fails, naming every problem, on an invalid configuration.
pub async fn start(listener: TcpListener, cfg: DevIdpConfig) -> Result<DevIdp, String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("development IdP: {e}"))?;
    let mut tls = (*cfg.tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let provider = Arc::new(Provider::new(cfg)?);
    let issuer = provider.issuer.clone();
    let task = tokio::spawn(serve(listener, acceptor, provider));
    Ok(DevIdp {
        issuer,
        addr,
        server: task.abort_handle(),
    })
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, provider: Arc<Provider>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let provider = provider.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = service_fn(move |req| {
                let provider = provider.clone();
                async move { Ok::<_, Infallible>(provider.answer(req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type Body = Full<Bytes>;

/// The signing key, its JWK and the key to check our own tokens with.
struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwk: Value,
}

impl SigningKey {
    fn generate() -> Result<Self, String> {
        let failed = |_| "development IdP: cannot generate the signing key".to_string();
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?;
        let pkcs8 = pair.to_pkcs8v1().map_err(failed)?;
        // The public key is the uncompressed point 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (Some(4), Some(x), Some(y)) = (point.first(), point.get(1..33), point.get(33..65))
        else {
            return Err("development IdP: unexpected public key encoding".into());
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // kid = the RFC 7638 thumbprint: required members, sorted, no whitespace.
        let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest(&SHA256, thumbprint.as_bytes()));
        let decoding =
            DecodingKey::from_ec_components(&x, &y).map_err(|e| format!("development IdP: {e}"))?;
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        Ok(Self {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            decoding,
            kid,
            jwk,
        })
    }

    fn sign(&self, typ: &str, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// Checks one of our own tokens: ES256 with this key, `iss`, `aud`, and `typ`.
    /// `exp` is left to the caller, who has the clock.
    fn verify(&self, token: &str, issuer: &str, aud: &str, typ: &str) -> Option<Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some(typ) || header.kid.as_deref() != Some(&self.kid) {
            return None;
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_exp = false;
        v.leeway = 0;
        v.set_issuer(&[issuer]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

/// A code waiting to be redeemed, and everything it is bound to.
struct Grant {
    client_id: String,
    redirect_uri: String,
    scope: String,
    nonce: String,
    code_challenge: String,
    user: &'static DevUser,
    auth_time: u64,
    sid: String,
    expires: u64,
}

/// Request parameters (query or form), each at most once (RFC 6749 section 3.1).
struct Params(HashMap<String, String>);

impl Params {
    fn parse(raw: &[u8]) -> Result<Self, &'static str> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(raw) {
            if map.insert(k.into_owned(), v.into_owned()).is_some() {
                return Err("a parameter appears more than once");
            }
        }
        Ok(Self(map))
    }

    /// A parameter; an empty value counts as absent (RFC 6749 section 3.1).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A checked authorization request.
struct AuthRequest {
    redirect_uri: String,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
}

/// Why an authorization request is refused.
enum AuthRefusal {
    /// The client or its redirect URI is not the registered one: explain on a page and
    /// never redirect (RFC 6749 section 4.1.2.1), or this would be an open redirector.
    Page(&'static str),
    /// Anything else goes back to the client as an error response.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: &'static str,
    },
}

/// Why the token endpoint refused the client.
#[derive(Clone, Copy)]
enum ClientRefusal {
    /// Basic and post together (RFC 6749 section 2.3: one method only).
    TwoMethods,
    /// Missing or wrong credentials; `basic` when they came in the header.
    Failed { basic: bool },
}

impl ClientRefusal {
    fn response(self) -> Response<Body> {
        match self {
            Self::TwoMethods => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method, not two",
            ),
            Self::Failed { basic } => invalid_client(basic),
        }
    }
}

/// The provider: configuration, key, pending codes. Answers requests that have been read.
struct Provider {
    issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    key: SigningKey,
    discovery: Bytes,
    jwks: Bytes,
    /// The login form may post to us and, through our 303, to the client.
    form_csp: HeaderValue,
    codes: Mutex<HashMap<String, Grant>>,
}

/// `scheme://authority` of an absolute https URI without fragment or user info.
fn https_origin(uri: &str) -> Option<String> {
    if uri.contains(['#', '@']) {
        return None;
    }
    let parsed: http::Uri = uri.parse().ok()?;
    if parsed.scheme_str() != Some("https") {
        return None;
    }
    Some(format!("https://{}", parsed.authority()?))
}

impl Provider {
    fn new(cfg: DevIdpConfig) -> Result<Self, String> {
        let mut errors = Vec::new();
        let issuer_ok = cfg.issuer.strip_prefix("https://").is_some_and(|rest| {
            !rest.is_empty()
                && !rest.contains(['/', '?', '#', '@'])
                && rest.parse::<http::uri::Authority>().is_ok()
        });
        if !issuer_ok {
            errors.push(format!(
                "issuer {:?} must be an https origin without path or trailing slash, e.g. https://localhost:8444",
                cfg.issuer
            ));
        }
        if cfg.client_id.is_empty() {
            errors.push("client_id is empty".to_string());
        }
        if cfg.client_secret.is_empty() {
            errors.push("client_secret is empty".to_string());
        }
        if cfg.redirect_uris.is_empty() {
            errors.push("no redirect_uris".to_string());
        }
        let mut form_action = vec!["'self'".to_string()];
        for uri in &cfg.redirect_uris {
            match https_origin(uri) {
                Some(origin) if !form_action.contains(&origin) => form_action.push(origin),
                Some(_) => {}
                None => errors.push(format!(
                    "redirect URI {uri:?} must be an absolute https URI without fragment"
                )),
            }
        }
        for uri in &cfg.post_logout_redirect_uris {
            if https_origin(uri).is_none() {
                errors.push(format!(
                    "post-logout redirect URI {uri:?} must be an absolute https URI without fragment"
                ));
            }
        }
        // Chromium applies form-action to the redirects that follow a form submission.
        let form_csp = HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'unsafe-inline'; form-action {}; frame-ancestors 'none'; base-uri 'none'",
            form_action.join(" ")
        ))
        .map_err(|_| "redirect URIs make an invalid CSP header".to_string());
        let form_csp = match form_csp {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let (Some(form_csp), true) = (form_csp, errors.is_empty()) else {
            return Err(format!("development IdP: {}", errors.join("; ")));
        };

        let key = SigningKey::generate()?;
        let issuer = cfg.issuer;
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
            "end_session_endpoint": format!("{issuer}/end_session"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "userinfo_signing_alg_values_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "at_hash",
                "name", "email", "groups", "amr", "acr"
            ],
            "acr_values_supported": ["pwd", "mfa"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "authorization_response_iss_parameter_supported": true,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "claims_parameter_supported": false,
            "frontchannel_logout_supported": false,
            "backchannel_logout_supported": false,
        });
        let jwks = json!({ "keys": [key.jwk.clone()] });
        Ok(Self {
            issuer,
            client_id: cfg.client_id,
            client_secret: cfg.client_secret,
            redirect_uris: cfg.redirect_uris,
            post_logout_redirect_uris: cfg.post_logout_redirect_uris,
            key,
            discovery: Bytes::from(discovery.to_string()),
            jwks: Bytes::from(jwks.to_string()),
            form_csp,
            codes: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the body (bounded) and answers.
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request refused",
                    "<p>The request body is too large or was cut off.</p>",
                    None,
                );
            }
        };
        self.handle(&Request::from_parts(parts, body), unix_now())
    }

    /// Answers one request at time `now` (unix seconds).
    fn handle(&self, req: &Request<Bytes>, now: u64) -> Response<Body> {
        let query = req.uri().query().unwrap_or("").as_bytes();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/.well-known/openid-configuration") => json_bytes(&self.discovery),
            (&Method::GET, "/jwks") => json_bytes(&self.jwks),
            (&Method::GET, "/authorize") => match Params::parse(query) {
                Ok(p) => self.authorize_get(&p),
                Err(e) => bad_request(e),
            },
            (&Method::POST, "/authorize") => self.authorize_post(req, now),
            (&Method::POST, "/token") => self.token(req, now),
            (&Method::GET | &Method::POST, "/userinfo") => self.userinfo(req.headers(), now),
            (&Method::GET, "/end_session") => match Params::parse(query) {
                Ok(p) => self.end_session(&p),
                Err(e) => bad_request(e),
            },
            (&Method::POST, "/end_session") => match form_params(req) {
                Ok(p) => self.end_session(&p),
                Err(e) => bad_request(e),
            },
            (
                _,
                "/.well-known/openid-configuration"
                | "/jwks"
                | "/authorize"
                | "/token"
                | "/userinfo"
                | "/end_session",
            ) => page(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "<p>This endpoint does not answer that method.</p>",
                None,
            ),
            _ => page(
                StatusCode::NOT_FOUND,
                "Not found",
                "<p>There is nothing here.</p>",
                None,
            ),
        }
    }

    /// Checks an authorization request, from the query or from the login form's hidden fields.
    fn auth_request(&self, p: &Params) -> Result<AuthRequest, AuthRefusal> {
        if p.get("client_id") != Some(self.client_id.as_str()) {
            return Err(AuthRefusal::Page(
                "The application (client_id) is missing or not registered with this provider.",
            ));
        }
        let Some(redirect_uri) = p
            .get("redirect_uri")
            .filter(|r| self.redirect_uris.iter().any(|u| u == r))
        else {
            return Err(AuthRefusal::Page(
                "The redirect_uri is missing or is not exactly one registered for this application.",
            ));
        };
        let state = p.get("state");
        let refuse = |error, description| {
            Err(AuthRefusal::Redirect {
                redirect_uri: redirect_uri.to_string(),
                state: state.map(str::to_string),
                error,
                description,
            })
        };
        if p.get("request").is_some() {
            return refuse("request_not_supported", "request objects are not supported");
        }
        if p.get("request_uri").is_some() {
            return refuse("request_uri_not_supported", "request_uri is not supported");
        }
        if p.get("response_type") != Some("code") {
            return refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        if p.get("response_mode").is_some_and(|m| m != "query") {
            return refuse("invalid_request", "only response_mode=query is supported");
        }
        let scope = p.get("scope").unwrap_or("");
        if !scope.split(' ').any(|s| s == "openid") {
            return refuse("invalid_scope", "the scope must include openid");
        }
        if p.get("code_challenge_method") != Some("S256") {
            return refuse(
                "invalid_request",
                "PKCE is required: code_challenge_method=S256",
            );
        }
        // A base64url SHA-256 digest is 43 characters.
        let Some(code_challenge) = p.get("code_challenge").filter(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) else {
            return refuse(
                "invalid_request",
                "code_challenge must be a base64url SHA-256 digest",
            );
        };
        let Some(state) = state.filter(|s| s.len() <= MAX_STATE_LEN) else {
            return refuse("invalid_request", "state is required (at most 512 bytes)");
        };
        let Some(nonce) = p.get("nonce").filter(|n| n.len() <= MAX_STATE_LEN) else {
            return refuse("invalid_request", "nonce is required (at most 512 bytes)");
        };
        // No session here: a silent request can never succeed.
        if p.get("prompt")
            .is_some_and(|v| v.split(' ').any(|x| x == "none"))
        {
            return refuse("login_required", "this provider always asks for a password");
        }
        Ok(AuthRequest {
            redirect_uri: redirect_uri.to_string(),
            scope: scope.to_string(),
            state: state.to_string(),
            nonce: nonce.to_string(),
            code_challenge: code_challenge.to_string(),
        })
    }

    fn refusal(&self, refusal: AuthRefusal) -> Response<Body> {
        match refusal {
            AuthRefusal::Page(why) => page(
                StatusCode::BAD_REQUEST,
                "Sign-in request refused",
                &format!("<p>{}</p>", escape(why)),
                None,
            ),
            AuthRefusal::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => {
                let mut params = vec![("error", error), ("error_description", description)];
                if let Some(s) = state.as_deref() {
                    params.push(("state", s));
                }
                params.push(("iss", self.issuer.as_str()));
                redirect(&redirect_uri, &params)
            }
        }
    }

    fn authorize_get(&self, p: &Params) -> Response<Body> {
        match self.auth_request(p) {
            Ok(ar) => self.login_page(&ar, None, ""),
            Err(r) => self.refusal(r),
        }
    }

    fn authorize_post(&self, req: &Request<Bytes>, now: u64) -> Response<Body> {
        // Login CSRF: a browser posting this form from another site names that site.
        if let Some(origin) = req.headers().get(ORIGIN)
            && origin.as_bytes() != self.issuer.as_bytes()
        {
            return page(
                StatusCode::FORBIDDEN,
                "Sign-in refused",
                "<p>The sign-in form was posted from another site.</p>",
                None,
            );
        }
        let p = match form_params(req) {
            Ok(p) => p,
            Err(e) => return bad_request(e),
        };
        let ar = match self.auth_request(&p) {
            Ok(ar) => ar,
            Err(r) => return self.refusal(r),
        };
        let login = p.get("login").unwrap_or("");
        let Some(user) = check_password(login, p.get("password").unwrap_or("")) else {
            tracing::info!("development IdP: wrong username or password");
            return self.login_page(&ar, Some("Wrong username or password."), login);
        };
        let (Some(code), Some(sid)) = (random_token(32), random_token(16)) else {
            return server_error();
        };
        {
            let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
            codes.retain(|_, g| g.expires >= now);
            if codes.len() >= MAX_PENDING_CODES {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sign-ins",
                    "<p>Too many sign-ins are waiting to complete. Try again in a minute.</p>",
                    None,
                );
            }
            codes.insert(
                code.clone(),
                Grant {
                    client_id: self.client_id.clone(),
                    redirect_uri: ar.redirect_uri.clone(),
                    scope: ar.scope,
                    nonce: ar.nonce,
                    code_challenge: ar.code_challenge,
                    user,
                    auth_time: now,
                    sid,
                    expires: now + CODE_TTL,
                },
            );
        }
        tracing::info!(user = user.username, "development IdP: signed in");
        redirect(
            &ar.redirect_uri,
            &[
                ("code", code.as_str()),
                ("state", ar.state.as_str()),
                ("iss", self.issuer.as_str()),
            ],
        )
    }

    fn login_page(&self, ar: &AuthRequest, error: Option<&str>, login: &str) -> Response<Body> {
        let hidden: String = [
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", ar.redirect_uri.as_str()),
            ("scope", ar.scope.as_str()),
            ("state", ar.state.as_str()),
            ("nonce", ar.nonce.as_str()),
            ("code_challenge", ar.code_challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(n, v)| {
            format!(
                "<input type=\"hidden\" name=\"{n}\" value=\"{}\">",
                escape(v)
            )
        })
        .collect();
        let users: String = DEMO_USERS
            .iter()
            .map(|u| {
                format!(
                    "<li><b><code>{}</code></b> · password <code>{}</code><br>\
<span class=\"muted\">groups: {} · {}</span></li>",
                    escape(u.username),
                    escape(u.password),
                    if u.groups.is_empty() {
                        "(none)".to_string()
                    } else {
                        escape(&u.groups.join(", "))
                    },
                    if u.mfa {
                        "MFA done here (amr pwd, otp)"
                    } else {
                        "password only (dermgate asks for its TOTP where policy needs MFA)"
                    },
                )
            })
            .collect();
        let (error_html, described_by) = match error {
            Some(e) => (
                format!(
                    "<p class=\"err\" id=\"err\" role=\"alert\">{}</p>",
                    escape(e)
                ),
                " aria-describedby=\"err\" aria-invalid=\"true\"",
            ),
            None => (String::new(), ""),
        };
        let (focus_login, focus_password) = if login.is_empty() {
            (" autofocus", "")
        } else {
            ("", " autofocus")
        };
        let back_to = https_origin(&ar.redirect_uri).unwrap_or_default();
        let body = format!(
            "<h1>Sign in</h1>\
<p>Application <b>{client}</b> asks you to sign in; you will return to <code>{back_to}</code>.</p>\
{error_html}\
<form method=\"post\" action=\"/authorize\">\
<label for=\"login\">Username</label>\
<input id=\"login\" name=\"login\" value=\"{login}\" autocomplete=\"username\" autocapitalize=\"none\" \
spellcheck=\"false\" required{described_by}{focus_login}>\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" \
required{described_by}{focus_password}>\
{hidden}\
<button id=\"submit\" type=\"submit\">Sign in</button>\
</form>\
<h2>Demo users</h2>\
<p class=\"muted\">Listed here because this provider exists only for the demo.</p>\
<ul class=\"users\">{users}</ul>",
            client = escape(&self.client_id),
            back_to = escape(&back_to),
            login = escape(login),
        );
        page(StatusCode::OK, "Sign in", &body, Some(&self.form_csp))
    }

    fn token(&self, req: &Request<Bytes>, now: u64) -> Response<Body> {
        if !is_form(req.headers()) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            );
        }
        let p = match Params::parse(req.body()) {
            Ok(p) => p,
            Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e),
        };
        if let Err(refusal) = self.authenticate_client(req.headers(), &p) {
            return refusal.response();
        }
        match p.get("grant_type") {
            Some("authorization_code") => {}
            Some(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only authorization_code is supported",
                );
            }
            None => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "grant_type is missing",
                );
            }
        }
        let Some(code) = p.get("code") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "code is missing",
            );
        };
        // Taken out at the first attempt, right or wrong: a code is single-use.
        let grant = self
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(code);
        let invalid_grant = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
        let Some(grant) = grant.filter(|g| g.expires >= now) else {
            return invalid_grant("the code is unknown, used or expired");
        };
        if grant.client_id != self.client_id {
            return invalid_grant("the code was issued to another client");
        }
        if p.get("redirect_uri") != Some(grant.redirect_uri.as_str()) {
            return invalid_grant("redirect_uri differs from the authorization request");
        }
        if !pkce_matches(p.get("code_verifier"), &grant.code_challenge) {
            return invalid_grant("code_verifier does not match the code_challenge");
        }
        self.tokens(&grant, now)
    }

    /// `client_secret_basic` or `client_secret_post`, never both (RFC 6749 section 2.3).
    fn authenticate_client(&self, headers: &HeaderMap, p: &Params) -> Result<(), ClientRefusal> {
        let basic = headers.get(AUTHORIZATION);
        let failed = ClientRefusal::Failed {
            basic: basic.is_some(),
        };
        let (id, secret) = match (basic, p.get("client_secret")) {
            (Some(_), Some(_)) => return Err(ClientRefusal::TwoMethods),
            (Some(h), None) => {
                let (id, secret) = parse_basic(h).ok_or(failed)?;
                if p.get("client_id").is_some_and(|c| c != id) {
                    return Err(failed);
                }
                (id, secret)
            }
            (None, Some(secret)) => {
                let id = p.get("client_id").ok_or(failed)?;
                (id.to_string(), secret.to_string())
            }
            (None, None) => return Err(failed),
        };
        // Both compared, whichever differs: no early exit to time.
        if same_secret(&id, &self.client_id) & same_secret(&secret, &self.client_secret) {
            Ok(())
        } else {
            Err(failed)
        }
    }

    fn tokens(&self, grant: &Grant, now: u64) -> Response<Body> {
        let user = grant.user;
        let (amr, acr) = if user.mfa {
            (&["pwd", "otp"][..], "mfa")
        } else {
            (&["pwd"][..], "pwd")
        };
        let Some(jti) = random_token(16) else {
            return server_error();
        };
        let exp = now + TOKEN_TTL;
        let access = json!({
            "iss": self.issuer,
            "sub": user.username,
            "aud": API_AUDIENCE,
            "client_id": grant.client_id,
            "exp": exp,
            "iat": now,
            "jti": jti,
            "scope": grant.scope,
            "auth_time": grant.auth_time,
            "groups": user.groups,
            "amr": amr,
            "acr": acr,
        });
        let Ok(access_token) = self.key.sign("at+jwt", &access) else {
            return server_error();
        };
        // at_hash: the left half of SHA-256 over the access token (OIDC Core 3.1.3.6).
        let at_digest = digest(&SHA256, access_token.as_bytes());
        let at_hash = URL_SAFE_NO_PAD.encode(at_digest.as_ref().get(..16).unwrap_or_default());
        let id = json!({
            "iss": self.issuer,
            "sub": user.username,
            "aud": grant.client_id,
            "exp": exp,
            "iat": now,
            "auth_time": grant.auth_time,
            "nonce": grant.nonce,
            "sid": grant.sid,
            "at_hash": at_hash,
            "name": user.name,
            "email": format!("{}@demo.dermgate.invalid", user.username),
            "groups": user.groups,
            "amr": amr,
            "acr": acr,
        });
        let Ok(id_token) = self.key.sign("JWT", &id) else {
            return server_error();
        };
        let body = json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL,
            "id_token": id_token,
            "scope": grant.scope,
        });
        let mut r = json_bytes(&Bytes::from(body.to_string()));
        r.headers_mut()
            .insert(PRAGMA, HeaderValue::from_static("no-cache"));
        r
    }

    fn userinfo(&self, headers: &HeaderMap, now: u64) -> Response<Body> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let claims = token
            .and_then(|t| self.key.verify(t, &self.issuer, API_AUDIENCE, "at+jwt"))
            .filter(|c| {
                c.get("exp")
                    .and_then(Value::as_u64)
                    .is_some_and(|e| e > now)
            });
        let user = claims.as_ref().and_then(|c| {
            let sub = c.get("sub").and_then(Value::as_str)?;
            DEMO_USERS.iter().find(|u| u.username == sub)
        });
        let Some(user) = user else {
            let mut r = json_bytes(&Bytes::from_static(
                br#"{"error":"invalid_token","error_description":"a valid access token is required"}"#,
            ));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer realm=\"dermgate development IdP\", error=\"invalid_token\"",
                ),
            );
            return r;
        };
        json_bytes(&Bytes::from(
            json!({
                "sub": user.username,
                "name": user.name,
                "email": format!("{}@demo.dermgate.invalid", user.username),
                "groups": user.groups,
            })
            .to_string(),
        ))
    }

    /// RP-initiated logout: back to a registered URI when the client is identified,
    /// else a page. There is no IdP session to end.
    fn end_session(&self, p: &Params) -> Response<Body> {
        let hint_ok = p.get("id_token_hint").map(|t| {
            self.key
                .verify(t, &self.issuer, &self.client_id, "JWT")
                .is_some()
        });
        let client_ok = p.get("client_id").map(|c| c == self.client_id);
        let identified = !matches!(
            (hint_ok, client_ok),
            (Some(false), _) | (_, Some(false)) | (None, None)
        );
        let mut note = String::new();
        if let Some(uri) = p.get("post_logout_redirect_uri") {
            let registered = self.post_logout_redirect_uris.iter().any(|u| u == uri);
            if registered && identified {
                let mut params = Vec::new();
                if let Some(state) = p.get("state") {
                    params.push(("state", state));
                }
                return redirect(uri, &params);
            }
            note = "<p class=\"muted\">You were not sent back to the application: its return \
address is not registered here, or the request did not identify it.</p>"
                .to_string();
        }
        page(
            StatusCode::OK,
            "Signed out",
            &format!("<h1>You are signed out of the development IdP</h1>{note}"),
            None,
        )
    }
}

fn check_password(login: &str, password: &str) -> Option<&'static DevUser> {
    let user = DEMO_USERS.iter().find(|u| u.username == login)?;
    same_secret(password, user.password).then_some(user)
}

/// Compares two secrets in constant time (over their SHA-256, so the length is not told either).
fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(
        digest(&SHA256, a.as_bytes()).as_ref(),
        digest(&SHA256, b.as_bytes()).as_ref(),
    )
    .is_ok()
}

/// RFC 7636 section 4.6: BASE64URL(SHA256(verifier)) == challenge, and a well-formed verifier.
fn pkce_matches(verifier: Option<&str>, challenge: &str) -> bool {
    let Some(v) = verifier else { return false };
    let well_formed = (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed
        && aws_lc_rs::constant_time::verify_slices_are_equal(
            URL_SAFE_NO_PAD
                .encode(digest(&SHA256, v.as_bytes()))
                .as_bytes(),
            challenge.as_bytes(),
        )
        .is_ok()
}

/// `Authorization: Basic`: client id and secret, each form-urlencoded as RFC 6749
/// section 2.3.1 asks. A part that cannot be such an encoding (it holds `=` or `&`)
/// is taken as it is, for clients that do not encode.
fn parse_basic(h: &HeaderValue) -> Option<(String, String)> {
    let (scheme, b64) = h.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let decode = |s: &str| {
        if s.contains(['=', '&']) {
            return s.to_string();
        }
        form_urlencoded::parse(s.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

fn random_token(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).ok()?;
    Some(URL_SAFE_NO_PAD.encode(buf))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn form_params(req: &Request<Bytes>) -> Result<Params, &'static str> {
    if !is_form(req.headers()) {
        return Err("the body must be application/x-www-form-urlencoded");
    }
    Params::parse(req.body())
}

/// HTML-escapes text for element content and quoted attributes. Local rather than
/// `dermgate_proxy::pages`: this is another party's page, with its own banner.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:17px/1.5 system-ui,sans-serif;margin:0;color:#1d2733;background:#fff}\
.dev{background:#8a1c1c;color:#fff;padding:.8em 1em;font-size:1.3em;font-weight:700;text-align:center;margin:0}\
main{max-width:36em;margin:0 auto;padding:.5em 1em 2em}\
label{display:block;margin-top:1em;font-weight:600}\
input{box-sizing:border-box;width:100%;font:inherit;font-size:1.1em;padding:.6em;border:2px solid #56606b;border-radius:6px}\
input:focus,button:focus{outline:3px solid #1a5fb4;outline-offset:2px}\
button{margin-top:1.2em;width:100%;font:inherit;font-size:1.15em;font-weight:600;padding:.7em;border:0;border-radius:6px;background:#1a5fb4;color:#fff;cursor:pointer}\
.err{background:#fde7e7;border-left:5px solid #8a1c1c;padding:.6em .8em}\
.muted{color:#56606b}code{white-space:nowrap}\
.users{list-style:none;padding:0}.users li{padding:.5em 0;border-bottom:1px solid #d5dbe1}";

/// A page of this provider, under the development banner. `main` is trusted HTML.
fn page(status: StatusCode, title: &str, main: &str, csp: Option<&HeaderValue>) -> Response<Body> {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title} · development identity provider</title><style>{STYLE}</style></head><body>\
<p class=\"dev\" role=\"note\">DEVELOPMENT IDENTITY PROVIDER — not for real patients</p>\
<main>{main}</main></body></html>",
        title = escape(title),
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        CONTENT_SECURITY_POLICY,
        csp.cloned().unwrap_or(HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        )),
    );
    security_headers(h);
    r
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` even on same-origin form
    // posts, and the login form's CSRF check needs the real origin. `same-origin` still
    // keeps the authorization request's URL from the client.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

fn bad_request(why: &str) -> Response<Body> {
    page(
        StatusCode::BAD_REQUEST,
        "Bad request",
        &format!("<p>{}</p>", escape(why)),
        None,
    )
}

fn server_error() -> Response<Body> {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        "<p>The development IdP could not answer.</p>",
        None,
    )
}

fn json_bytes(body: &Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body.clone()));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    security_headers(h);
    r
}

/// An RFC 6749 section 5.2 error.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let body = json!({ "error": error, "error_description": description });
    let mut r = json_bytes(&Bytes::from(body.to_string()));
    *r.status_mut() = status;
    r
}

fn invalid_client(basic: bool) -> Response<Body> {
    let mut r = oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client authentication failed",
    );
    let challenge = if basic {
        "Basic realm=\"dermgate development IdP\""
    } else {
        "Basic realm=\"dermgate development IdP\", error=\"invalid_client\""
    };
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}

/// 303 to `uri` with `params` added to its query.
fn redirect(uri: &str, params: &[(&str, &str)]) -> Response<Body> {
    let mut location = uri.to_string();
    if !params.is_empty() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            q.append_pair(k, v);
        }
        location.push(if uri.contains('?') { '&' } else { '?' });
        location.push_str(&q.finish());
    }
    let Ok(location) = HeaderValue::from_str(&location) else {
        return server_error();
    };
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(LOCATION, location);
    security_headers(h);
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU32, Ordering};

    use jsonwebtoken::jwk::JwkSet;
    use openidconnect::core::{
        CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreUserInfoClaims,
    };
    use openidconnect::{
        AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyAdditionalClaims, IdTokenClaims,
        IssuerUrl, LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
        PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, Scope, TokenResponse,
    };

    const CLIENT_ID: &str = "dermgate";
    const CLIENT_SECRET: &str = "demo-client-secret";
    const CALLBACK: &str = "https://localhost:8443/.dermgate/callback";
    const LOGGED_OUT: &str = "https://localhost:8443/.dermgate/logged-out";
    const FORM: &str = "application/x-www-form-urlencoded";

    /// The provider on 127.0.0.1:0 with the dev certificates, and a client that trusts
    /// their CA, reaches `localhost` at the provider, and never follows redirects.
    async fn start_test_idp() -> (DevIdp, reqwest::Client) {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dermgate-devidp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let certs = dermgate_proxy::certs::generate_dev(&dir, &[]).unwrap();
        let tls =
            dermgate_proxy::tls::server_config(&certs.server_cert, &certs.server_key).unwrap();
        let ca = std::fs::read(&certs.ca_cert).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let idp = start(
            listener,
            DevIdpConfig {
                tls,
                issuer: format!("https://localhost:{port}"),
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![CALLBACK.into()],
                post_logout_redirect_uris: vec![LOGGED_OUT.into()],
            },
        )
        .await
        .unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .resolve("localhost", idp.addr)
            .build()
            .unwrap();
        (idp, http)
    }

    fn encode(pairs: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
        q.finish()
    }

    fn query(url: &str) -> HashMap<String, String> {
        let q = url.split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    fn unescape(s: &str) -> String {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    /// The login form's hidden fields, as a browser would submit them.
    fn hidden_fields(html: &str) -> Vec<(String, String)> {
        html.split("<input type=\"hidden\" name=\"")
            .skip(1)
            .map(|rest| {
                let (name, rest) = rest.split_once("\" value=\"").unwrap();
                let (value, _) = rest.split_once('"').unwrap();
                (name.to_string(), unescape(value))
            })
            .collect()
    }

    struct Pkce {
        verifier: String,
        challenge: String,
    }

    fn pkce() -> Pkce {
        let verifier = random_token(32).unwrap();
        let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }

    fn authorize_url(idp: &DevIdp, challenge: &str, redirect_uri: &str) -> String {
        format!(
            "{}/authorize?{}",
            idp.issuer,
            encode(&[
                ("response_type", "code"),
                ("client_id", CLIENT_ID),
                ("redirect_uri", redirect_uri),
                ("scope", "openid profile email"),
                ("state", "state-1"),
                ("nonce", "nonce-1"),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ])
        )
    }

    /// Opens the authorization URL, fills in the form as a browser would, and posts it.
    async fn submit_login(
        http: &reqwest::Client,
        idp: &DevIdp,
        url: &str,
        login: &str,
        password: &str,
    ) -> reqwest::Response {
        let form = http.get(url).send().await.unwrap();
        assert_eq!(form.status(), 200);
        let csp = form.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.starts_with("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https://localhost:8443;"), "{csp}");
        let html = form.text().await.unwrap();
        assert!(html.contains("DEVELOPMENT IDENTITY PROVIDER — not for real patients"));
        assert!(html.contains("name=\"viewport\""));
        assert!(html.contains("id=\"submit\""));
        let mut fields = hidden_fields(&html);
        assert!(fields.len() >= 8, "{fields:?}");
        fields.push(("login".into(), login.into()));
        fields.push(("password".into(), password.into()));
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // As a browser does: the form is posted from the provider's own origin.
        http.post(format!("{}/authorize", idp.issuer))
            .header("content-type", FORM)
            .header("origin", &idp.issuer)
            .body(encode(&pairs))
            .send()
            .await
            .unwrap()
    }

    /// Signs `user` in; returns the code from the redirect to the callback.
    async fn code_for(http: &reqwest::Client, idp: &DevIdp, user: &DevUser, p: &Pkce) -> String {
        let url = authorize_url(idp, &p.challenge, CALLBACK);
        let resp = submit_login(http, idp, &url, user.username, user.password).await;
        assert_eq!(resp.status(), 303);
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
        let q = query(&location);
        assert_eq!(q["state"], "state-1");
        assert_eq!(q["iss"], idp.issuer);
        assert_eq!(q["code"].len(), 43);
        q["code"].clone()
    }

    async fn redeem(
        http: &reqwest::Client,
        idp: &DevIdp,
        code: &str,
        verifier: &str,
    ) -> reqwest::Response {
        http.post(format!("{}/token", idp.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", FORM)
            .body(encode(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", verifier),
            ]))
            .send()
            .await
            .unwrap()
    }

    fn user(name: &str) -> &'static DevUser {
        DEMO_USERS.iter().find(|u| u.username == name).unwrap()
    }

    /// Verifies a token as dermgate's RP does: key from the JWKS by `kid`, ES256, iss, aud.
    async fn verify_with_jwks(
        http: &reqwest::Client,
        idp: &DevIdp,
        token: &str,
        aud: &str,
    ) -> Value {
        let jwks: JwkSet = http
            .get(format!("{}/jwks", idp.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[idp.issuer.as_str()]);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .unwrap()
            .claims
    }

    #[tokio::test]
    async fn discovery_and_jwks_describe_the_provider() {
        let (idp, http) = start_test_idp().await;
        let resp = http
            .get(format!("{}/.well-known/openid-configuration", idp.issuer))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json");
        let d: Value = resp.json().await.unwrap();
        let iss = &idp.issuer;
        assert_eq!(d["issuer"], *iss);
        assert_eq!(d["authorization_endpoint"], format!("{iss}/authorize"));
        assert_eq!(d["token_endpoint"], format!("{iss}/token"));
        assert_eq!(d["jwks_uri"], format!("{iss}/jwks"));
        assert_eq!(d["userinfo_endpoint"], format!("{iss}/userinfo"));
        assert_eq!(d["end_session_endpoint"], format!("{iss}/end_session"));
        assert_eq!(d["response_types_supported"], json!(["code"]));
        assert_eq!(d["subject_types_supported"], json!(["public"]));
        assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
        assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post"])
        );
        assert_eq!(d["authorization_response_iss_parameter_supported"], true);
        assert!(
            d["claims_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("groups"))
        );
        assert!(
            d["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("openid"))
        );
        assert_eq!(d["grant_types_supported"], json!(["authorization_code"]));

        let jwks: Value = http
            .get(format!("{iss}/jwks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let k = &jwks["keys"][0];
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["x"].as_str().unwrap().len(), 43);
        assert_eq!(k["y"].as_str().unwrap().len(), 43);
        assert!(
            k.get("d").is_none(),
            "the private key must not be published"
        );

        let missing = http.get(format!("{iss}/nothing")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        let wrong_method = http.delete(format!("{iss}/token")).send().await.unwrap();
        assert_eq!(wrong_method.status(), 405);
    }

    #[tokio::test]
    async fn code_flow_with_pkce_gives_tokens_that_verify_against_the_jwks() {
        let (idp, http) = start_test_idp().await;
        let p = pkce();
        let before = unix_now();
        let code = code_for(&http, &idp, user("dr-mfa"), &p).await;
        let resp = redeem(&http, &idp, &code, &p.verifier).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let t: Value = resp.json().await.unwrap();
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], 600);

        let id = verify_with_jwks(&http, &idp, t["id_token"].as_str().unwrap(), CLIENT_ID).await;
        assert_eq!(id["sub"], "dr-mfa");
        assert_eq!(id["nonce"], "nonce-1");
        assert_eq!(id["amr"], json!(["pwd", "otp"]));
        assert_eq!(id["acr"], "mfa");
        assert_eq!(id["groups"], json!(["clinicians"]));
        assert_eq!(id["email"], "dr-mfa@demo.dermgate.invalid");
        assert!(id["name"].as_str().is_some_and(|n| !n.is_empty()));
        assert!(id["sid"].as_str().is_some_and(|s| s.len() >= 16));
        let auth_time = id["auth_time"].as_u64().unwrap();
        assert!(auth_time >= before && auth_time <= unix_now());
        assert_eq!(
            id["exp"].as_u64().unwrap(),
            id["iat"].as_u64().unwrap() + 600
        );

        let access = t["access_token"].as_str().unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(access).unwrap().typ.as_deref(),
            Some("at+jwt")
        );
        let at = verify_with_jwks(&http, &idp, access, API_AUDIENCE).await;
        assert_eq!(at["sub"], "dr-mfa");
        assert_eq!(at["amr"], json!(["pwd", "otp"]));
        assert_eq!(at["groups"], json!(["clinicians"]));

        let info: Value = http
            .get(format!("{}/userinfo", idp.issuer))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["sub"], "dr-mfa");
        assert_eq!(info["groups"], json!(["clinicians"]));
        // The ID token is not an access token.
        let refused = http
            .get(format!("{}/userinfo", idp.issuer))
            .bearer_auth(t["id_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }

    #[tokio::test]
    async fn users_without_mfa_or_groups_say_so() {
        let (idp, http) = start_test_idp().await;
        for (name, groups) in [("dr-nomfa", json!(["clinicians"])), ("nogroups", json!([]))] {
            let p = pkce();
            let code = code_for(&http, &idp, user(name), &p).await;
            let t: Value = redeem(&http, &idp, &code, &p.verifier)
                .await
                .json()
                .await
                .unwrap();
            let id =
                verify_with_jwks(&http, &idp, t["id_token"].as_str().unwrap(), CLIENT_ID).await;
            assert_eq!(id["amr"], json!(["pwd"]));
            assert_eq!(id["acr"], "pwd");
            assert_eq!(id["groups"], groups);
        }
    }

    /// The relying-party side exactly as dermgate drives it: openidconnect discovery,
    /// code exchange, ID-token verification; plus userinfo and RP-initiated logout.
    #[tokio::test]
    async fn openidconnect_accepts_the_provider() {
        let (idp, http) = start_test_idp().await;
        let meta = ProviderMetadataWithLogout::discover_async(
            IssuerUrl::new(idp.issuer.clone()).unwrap(),
            &http,
        )
        .await
        .unwrap();
        let end_session = meta
            .additional_metadata()
            .end_session_endpoint
            .clone()
            .unwrap();
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(CLIENT_ID.into()),
            Some(ClientSecret::new(CLIENT_SECRET.into())),
        )
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).unwrap());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, csrf, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        let u = user("dr-mfa");
        let resp = submit_login(&http, &idp, url.as_str(), u.username, u.password).await;
        assert_eq!(resp.status(), 303);
        let q = query(resp.headers()["location"].to_str().unwrap());
        assert_eq!(&q["state"], csrf.secret());
        assert_eq!(q["iss"], idp.issuer, "RFC 9207");

        let tokens = client
            .exchange_code(AuthorizationCode::new(q["code"].clone()))
            .unwrap()
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
            .unwrap();
        let id_token = tokens.id_token().unwrap();
        let claims: &IdTokenClaims<EmptyAdditionalClaims, CoreGenderClaim> = id_token
            .claims(&client.id_token_verifier(), &nonce)
            .unwrap();
        assert_eq!(claims.subject().as_str(), "dr-mfa");
        let amr: Vec<&str> = claims
            .auth_method_refs()
            .unwrap()
            .iter()
            .map(|a| a.as_str())
            .collect();
        assert_eq!(amr, ["pwd", "otp"]);
        assert_eq!(claims.auth_context_ref().unwrap().as_str(), "mfa");
        assert!(claims.auth_time().is_some());
        // A wrong nonce is refused.
        assert!(
            id_token
                .claims(&client.id_token_verifier(), &Nonce::new("other".into()))
                .is_err()
        );

        let info: CoreUserInfoClaims = client
            .user_info(
                tokens.access_token().clone(),
                Some(claims.subject().clone()),
            )
            .unwrap()
            .request_async(&http)
            .await
            .unwrap();
        assert_eq!(
            info.email().map(|e| e.as_str()),
            Some("dr-mfa@demo.dermgate.invalid")
        );

        let logout = LogoutRequest::from(end_session)
            .set_id_token_hint(id_token)
            .set_client_id(ClientId::new(CLIENT_ID.into()))
            .set_post_logout_redirect_uri(PostLogoutRedirectUrl::new(LOGGED_OUT.into()).unwrap())
            .set_state(CsrfToken::new("bye".into()))
            .http_get_url();
        let resp = http.get(logout.as_str()).send().await.unwrap();
        assert_eq!(resp.status(), 303);
        assert_eq!(
            resp.headers()["location"],
            format!("{LOGGED_OUT}?state=bye").as_str()
        );
    }

    #[tokio::test]
    async fn wrong_password_shows_the_form_again() {
        let (idp, http) = start_test_idp().await;
        let p = pkce();
        let url = authorize_url(&idp, &p.challenge, CALLBACK);
        let resp = submit_login(&http, &idp, &url, "dr-mfa", "demo-nomfa-pass").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("location").is_none());
        let html = resp.text().await.unwrap();
        assert!(html.contains("role=\"alert\">Wrong username or password."));
        assert!(html.contains("value=\"dr-mfa\""));
        assert_eq!(hidden_fields(&html).len(), 8);
        let resp = submit_login(&http, &idp, &url, "nobody", "demo-mfa-pass").await;
        assert!(resp.text().await.unwrap().contains("Wrong username"));
    }

    #[tokio::test]
    async fn a_code_is_single_use() {
        let (idp, http) = start_test_idp().await;
        let p = pkce();
        let code = code_for(&http, &idp, user("patient"), &p).await;
        assert_eq!(redeem(&http, &idp, &code, &p.verifier).await.status(), 200);
        let again = redeem(&http, &idp, &code, &p.verifier).await;
        assert_eq!(again.status(), 400);
        let e: Value = again.json().await.unwrap();
        assert_eq!(e["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn a_wrong_verifier_is_invalid_grant_and_burns_the_code() {
        let (idp, http) = start_test_idp().await;
        let p = pkce();
        let code = code_for(&http, &idp, user("dr-mfa"), &p).await;
        let other = pkce();
        let resp = redeem(&http, &idp, &code, &other.verifier).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "invalid_grant"
        );
        let resp = redeem(&http, &idp, &code, &p.verifier).await;
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "invalid_grant"
        );
    }

    #[tokio::test]
    async fn client_authentication_is_required_and_checked() {
        let (idp, http) = start_test_idp().await;
        let p = pkce();
        let code = code_for(&http, &idp, user("dr-mfa"), &p).await;
        let token_url = format!("{}/token", idp.issuer);
        let body = |secret: &str| {
            encode(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", CALLBACK),
                ("code_verifier", &p.verifier),
                ("client_id", CLIENT_ID),
                ("client_secret", secret),
            ])
        };
        let resp = http
            .post(&token_url)
            .header("content-type", FORM)
            .body(body("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"],
            "invalid_client"
        );
        let resp = http
            .post(&token_url)
            .basic_auth(CLIENT_ID, Some("wrong"))
            .header("content-type", FORM)
            .body(encode(&[("grant_type", "authorization_code")]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert!(resp.headers().contains_key("www-authenticate"));
        // A refused client did not use up the code: client_secret_post works.
        let resp = http
            .post(&token_url)
            .header("content-type", FORM)
            .body(body(CLIENT_SECRET))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn an_unregistered_redirect_uri_is_never_followed() {
        let (idp, http) = start_test_idp().await;
        let p = pkce();
        for bad in [
            "https://evil.example/cb",
            "https://localhost:8443/.dermgate/callback/",
            "https://localhost:8443/.dermgate/callback?x=1",
        ] {
            let url = authorize_url(&idp, &p.challenge, bad);
            let resp = http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{bad}");
            assert!(resp.headers().get("location").is_none());
            assert!(resp.text().await.unwrap().contains("redirect_uri"));
            // Nor by posting the form directly.
            let resp = http
                .post(format!("{}/authorize", idp.issuer))
                .header("content-type", FORM)
                .body(format!(
                    "{}&login=dr-mfa&password=demo-mfa-pass",
                    url.split_once('?').unwrap().1
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400);
            assert!(resp.headers().get("location").is_none());
        }
        let wrong_client = authorize_url(&idp, &p.challenge, CALLBACK)
            .replace("client_id=dermgate", "client_id=other");
        let resp = http.get(&wrong_client).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert!(resp.headers().get("location").is_none());
    }

    #[tokio::test]
    async fn a_request_without_pkce_goes_back_with_an_error() {
        let (idp, http) = start_test_idp().await;
        let url = authorize_url(&idp, &pkce().challenge, CALLBACK);
        for (from, to) in [
            ("code_challenge_method=S256", "code_challenge_method=plain"),
            ("&code_challenge=", "&x="),
            ("nonce=", "x="),
            ("scope=openid+", "scope="),
            ("response_type=code", "response_type=token"),
        ] {
            let resp = http.get(url.replace(from, to)).send().await.unwrap();
            assert_eq!(resp.status(), 303, "{to}");
            let q = query(resp.headers()["location"].to_str().unwrap());
            assert!(q.contains_key("error"), "{to}");
            assert!(!q.contains_key("code"));
            assert_eq!(q["state"], "state-1");
            assert_eq!(q["iss"], idp.issuer);
        }
    }

    #[tokio::test]
    async fn malformed_input_gets_an_answer_not_a_crash() {
        let (idp, http) = start_test_idp().await;
        let iss = &idp.issuer;
        let post = |path: &str, ctype: &str, body: &'static [u8]| {
            http.post(format!("{iss}{path}"))
                .header("content-type", ctype)
                .body(body)
                .send()
        };
        let r = post("/authorize", "text/plain", b"login=x").await.unwrap();
        assert_eq!(r.status(), 400);
        let r = post("/authorize", FORM, b"\xff\xfe%zz&&==").await.unwrap();
        assert_eq!(r.status(), 400);
        let r = post("/authorize", FORM, b"client_id=a&client_id=b")
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = post("/token", "application/json", b"{}").await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
        let r = post("/token", FORM, b"%%%").await.unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(format!("{iss}/authorize?%ff%00=&x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = http
            .get(format!("{iss}/userinfo"))
            .header("authorization", "Bearer not.a.jwt")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let big = vec![b'a'; MAX_BODY + 1];
        let r = http
            .post(format!("{iss}/token"))
            .header("content-type", FORM)
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        // A cross-site post of the login form is refused.
        let r = http
            .post(format!("{iss}/authorize"))
            .header("content-type", FORM)
            .header("origin", "https://evil.example")
            .body("login=dr-mfa")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }

    #[tokio::test]
    async fn end_session_redirects_only_where_registered() {
        let (idp, http) = start_test_idp().await;
        let end = |params: &[(&str, &str)]| {
            http.get(format!("{}/end_session?{}", idp.issuer, encode(params)))
                .send()
        };
        let r = end(&[
            ("client_id", CLIENT_ID),
            ("post_logout_redirect_uri", LOGGED_OUT),
        ])
        .await
        .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], LOGGED_OUT);
        for params in [
            vec![
                ("client_id", CLIENT_ID),
                ("post_logout_redirect_uri", "https://evil.example/"),
            ],
            vec![("post_logout_redirect_uri", LOGGED_OUT)],
            vec![
                ("id_token_hint", "forged.token.here"),
                ("post_logout_redirect_uri", LOGGED_OUT),
            ],
            vec![],
        ] {
            let r = end(&params).await.unwrap();
            assert_eq!(r.status(), 200, "{params:?}");
            assert!(r.headers().get("location").is_none());
            assert!(
                r.text()
                    .await
                    .unwrap()
                    .contains("You are signed out of the development IdP")
            );
        }
    }

    #[test]
    fn configuration_errors_are_all_reported() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        let Err(e) = Provider::new(DevIdpConfig {
            tls: Arc::new(tls),
            issuer: "https://localhost:1/".into(),
            client_id: String::new(),
            client_secret: "s".into(),
            redirect_uris: vec!["http://localhost/cb".into()],
            post_logout_redirect_uris: vec!["https://x/#f".into()],
        }) else {
            panic!("an invalid configuration was accepted");
        };
        for part in ["issuer", "client_id", "redirect URI", "post-logout"] {
            assert!(e.contains(part), "{e}");
        }
    }

    #[test]
    fn pkce_checks_the_verifier_form_and_digest() {
        let p = pkce();
        assert!(pkce_matches(Some(&p.verifier), &p.challenge));
        assert!(!pkce_matches(None, &p.challenge));
        assert!(!pkce_matches(Some("short"), &p.challenge));
        assert!(!pkce_matches(Some(&p.challenge), &p.challenge));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let h = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("my+client:a%2Fb")))
            .unwrap();
        assert_eq!(
            parse_basic(&h),
            Some(("my client".to_string(), "a/b".to_string()))
        );
        let h = HeaderValue::from_str(&format!("basic {}", STANDARD.encode("c:x=y"))).unwrap();
        assert_eq!(parse_basic(&h), Some(("c".to_string(), "x=y".to_string())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer abc")), None);
    }
}
