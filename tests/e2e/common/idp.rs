//! A real OIDC provider (the npm package `oidc-provider`, tests/oidc/server.js)
//! on a loopback port, and a small cookie-jar browser for login flows.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Certs, TempDir};

/// tests/oidc, with its node_modules installed (once per test run).
pub fn oidc_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc");
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !dir.join("node_modules/oidc-provider").exists() {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .output()
                .expect("npm must be installed (the test command installs it)");
            assert!(out.status.success(), "npm ci failed: {out:?}");
        }
    });
    dir
}

/// A free loopback port (TCP and UDP), for configurations that must name it up front.
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The oidc-provider process; killed on drop.
pub struct Idp {
    child: Child,
    pub issuer: String,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

/// The OIDC client dermgate is registered as.
pub const CLIENT_ID: &str = "dermgate";
pub const CLIENT_SECRET: &str = "e2e-client-secret-0f3a9d";

impl Idp {
    /// Starts the provider with dermgate registered for a proxy on `proxy_port`
    /// whose auth host is `auth_host`.
    pub fn start(certs: &Certs, auth_host: &str, proxy_port: u16) -> Self {
        let base = format!("https://{auth_host}:{proxy_port}");
        let clients = serde_json::json!([{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("{base}/.dermgate/callback")],
            "post_logout_redirect_uris": [format!("{base}/.dermgate/logged-out")],
            "backchannel_logout_uri": format!("{base}/.dermgate/backchannel-logout"),
            "backchannel_logout_session_required": true,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }]);
        let dir = oidc_dir();
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("OIDC_PORT", "0")
            .env("OIDC_CERT", certs.server_cert())
            .env("OIDC_KEY", certs.server_key())
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_RP_CA", certs.ca())
            .env("OIDC_RP_RESOLVE", format!("{auth_host}=127.0.0.1"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node must be installed");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("oidc-provider listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_string());
                }
                l2.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let l3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                l3.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("oidc-provider did not start:\n{}", log.lock().unwrap());
            }
        };
        let addr = issuer.trim_start_matches("https://").parse().unwrap();
        Self {
            child,
            issuer,
            addr,
            log,
        }
    }

    /// POSTs JSON to a test-control endpoint.
    pub async fn control(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let r = client
            .post(format!("{}{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A token signed with the IdP's current key of `alg`, with exactly `claims`.
    pub async fn mint(
        &self,
        client: &reqwest::Client,
        alg: &str,
        claims: serde_json::Value,
    ) -> String {
        let v = self
            .control(
                client,
                "/__test/mint",
                serde_json::json!({ "alg": alg, "claims": claims }),
            )
            .await;
        v["token"].as_str().unwrap().to_string()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[oidc]`, `[session]`, `[store]`, `[keys]` part of a test configuration.
pub fn identity_config(
    idp: &Idp,
    certs: &Certs,
    dir: &TempDir,
    port: u16,
    extra_session: &str,
    store: &str,
) -> String {
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    format!(
        r#"
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
callback = "https://gate.test:{port}/.dermgate/callback"
ca = "{ca}"
api_audience = "dermgate-api"

[session]
auth_host = "gate.test"
{extra_session}

[keys]
dir = "{keys}"

{store}
"#,
        issuer = idp.issuer,
        secret = secret.display(),
        ca = certs.ca().display(),
        keys = dir.path().join("keys").display(),
    )
}

/// A browser: a cookie jar per host, redirects followed by hand (so tests can
/// stop, inspect and tamper), TLS trusting the dev CA, and `*.test` resolved
/// to the proxy.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: HashMap<String, HashMap<String, String>>,
    pub proxy_port: u16,
}

/// One response, read whole.
#[derive(Debug)]
pub struct Page {
    pub url: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<String> {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
    }
}

fn host_of(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    u.host_str().unwrap().to_string()
}

impl Browser {
    pub fn new(certs: &Certs, proxy_port: u16) -> Self {
        Self::with_ca(&certs.ca(), proxy_port)
    }

    pub fn with_ca(ca: &Path, proxy_port: u16) -> Self {
        super::install_provider();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], proxy_port));
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .resolve("gate.test", local)
            .resolve("ehr.test", local)
            .resolve("img.test", local)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            client,
            jar: HashMap::new(),
            proxy_port,
        }
    }

    /// The Cookie header this browser sends to `url`.
    pub fn cookie_header(&self, url: &str) -> String {
        self.jar
            .get(&host_of(url))
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.get(host).and_then(|c| c.get(name)).cloned()
    }

    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        self.jar
            .entry(host.to_string())
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    fn store_cookies(&mut self, url: &str, headers: &reqwest::header::HeaderMap) {
        let host = host_of(url);
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let first = v.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            let expired = v
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            let c = self.jar.entry(host.clone()).or_default();
            if expired {
                c.remove(name.trim());
            } else {
                c.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// One request (no redirect following).
    pub async fn request(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
        origin: Option<&str>,
    ) -> Page {
        let mut rb = self
            .client
            .request(method, url)
            .header("accept", "text/html,application/xhtml+xml");
        let cookies = self.cookie_header(url);
        if !cookies.is_empty() {
            rb = rb.header("cookie", cookies);
        }
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        if let Some(f) = form {
            rb = rb.form(f);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        if std::env::var_os("E2E_TRACE").is_some() {
            eprintln!(
                "{url} -> {} {:?}",
                resp.status(),
                resp.headers().get("location")
            );
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.store_cookies(url, &headers);
        let body = resp.text().await.unwrap_or_default();
        Page {
            url: url.to_string(),
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, url: &str) -> Page {
        self.request(reqwest::Method::GET, url, None, None).await
    }

    /// GETs `url` and follows redirects (relative ones too) until a non-redirect
    /// or until `stop` says so for the next URL. Returns the last page.
    pub async fn follow_until(&mut self, url: &str, stop: impl Fn(&str) -> bool) -> Page {
        let mut url = url.to_string();
        for _ in 0..20 {
            let p = self.get(&url).await;
            match p.location() {
                Some(loc) if (300..400).contains(&p.status) => {
                    let next = reqwest::Url::parse(&url)
                        .unwrap()
                        .join(&loc)
                        .unwrap()
                        .to_string();
                    if stop(&next) {
                        return Page { url: next, ..p };
                    }
                    url = next;
                }
                _ => return p,
            }
        }
        panic!("too many redirects from {url}");
    }

    pub async fn follow(&mut self, url: &str) -> Page {
        self.follow_until(url, |_| false).await
    }

    /// Fills the IdP's login form on `page` and follows what comes after.
    pub async fn idp_login(&mut self, page: &Page, login: &str, password: &str) -> Page {
        self.idp_login_until(page, login, password, |_| false).await
    }

    pub async fn idp_login_until(
        &mut self,
        page: &Page,
        login: &str,
        password: &str,
        stop: impl Fn(&str) -> bool,
    ) -> Page {
        let action = form_action(&page.body)
            .unwrap_or_else(|| panic!("no login form on {}:\n{}", page.url, page.body));
        let url = reqwest::Url::parse(&page.url)
            .unwrap()
            .join(&action)
            .unwrap()
            .to_string();
        let mut fields = hidden_inputs(&page.body);
        fields.push(("login".into(), login.into()));
        fields.push(("password".into(), password.into()));
        let form: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let p = self
            .request(
                reqwest::Method::POST,
                &url,
                Some(&form),
                Some(&origin_of(&url)),
            )
            .await;
        match p.location() {
            Some(loc) if (300..400).contains(&p.status) => {
                let next = reqwest::Url::parse(&url)
                    .unwrap()
                    .join(&loc)
                    .unwrap()
                    .to_string();
                if stop(&next) {
                    return Page { url: next, ..p };
                }
                self.follow_until(&next, stop).await
            }
            _ => p,
        }
    }
}

/// `name`/`value` of the hidden inputs in `html`.
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        let i = tag.find(&key)? + key.len();
        let end = tag[i..].find('"')?;
        Some(
            tag[i..i + end]
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
            if !tag.contains("type=\"hidden\"") {
                return None;
            }
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect()
}

/// `https://host:port` of a URL.
pub fn origin_of(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap();
    match u.port() {
        Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap()),
        None => format!("{}://{}", u.scheme(), u.host_str().unwrap()),
    }
}

/// The `action` of the first form in `html`.
pub fn form_action(html: &str) -> Option<String> {
    let i = html.find("<form")?;
    let rest = &html[i..];
    let a = rest.find("action=\"")? + 8;
    let end = rest[a..].find('"')?;
    Some(rest[a..a + end].replace("&amp;", "&"))
}

/// The text of the element with `id` (e.g. the TOTP secret on the enrollment page).
pub fn element_text(html: &str, id: &str) -> Option<String> {
    let i = html.find(&format!("id=\"{id}\""))?;
    let start = html[i..].find('>')? + i + 1;
    let end = html[start..].find('<')? + start;
    Some(html[start..end].trim().to_string())
}

/// The current TOTP code for a base32 secret (what an authenticator app shows).
pub fn totp_now(secret_b32: &str, offset_steps: i64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_b32).unwrap();
    let t = totp_rs::Builder::new()
        .with_secret(secret.as_ref().to_vec())
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    t.generate((now + offset_steps * 30) as u64).to_string()
}
