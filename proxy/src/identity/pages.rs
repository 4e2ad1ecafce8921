//! The sign-in pages: step-up, enrollment, signed out, and redirects. Plain
//! accessible HTML, no external assets, a strict CSP, readable on a phone.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::pages::HSTS;

pub use crate::pages::escape as esc;

const STYLE: &str = "body{font:17px/1.5 system-ui,sans-serif;max-width:34em;margin:6vh auto;\
padding:0 1em;color:#1d2733}h1{font-size:1.4em}label{display:block;margin:1em 0 .3em}\
input{font:inherit;font-size:1.4em;letter-spacing:.2em;width:8em;padding:.3em}\
button{font:inherit;padding:.6em 1.4em;margin-top:1em;background:#0b5cad;color:#fff;border:0;\
border-radius:4px}.e{color:#a4161a;font-weight:600}.c{color:#6b7785}code{word-break:break-all}\
svg{max-width:100%;height:auto}";

/// A complete HTML page with the strict headers.
pub fn html(status: StatusCode, title: &str, body: &str) -> Response<Full<Bytes>> {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title>\
<style>{STYLE}</style></head><body><h1>{t}</h1>{body}<p class=\"c\">dermgate</p></body></html>",
        t = esc(title),
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(http::header::STRICT_TRANSPORT_SECURITY, HSTS);
    r
}

/// 303 See Other to `to`, with cookies to set.
pub fn redirect(to: &str, cookies: &[String]) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(SET_COOKIE, v);
        }
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(http::header::STRICT_TRANSPORT_SECURITY, HSTS);
    r
}

/// A `Set-Cookie` for a `__Host-` cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    match max_age {
        Some(a) => format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={a}"),
        None => format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax"),
    }
}

/// A `Set-Cookie` that removes a `__Host-` cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The code form (step-up, and the second half of enrollment).
fn code_form(rd: &str, error: Option<&str>) -> String {
    format!(
        "{err}<form method=\"post\" action=\"/.dermgate/mfa\">\
<input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
<label for=\"code\">6-digit code from your authenticator app</label>\
<input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
pattern=\"[0-9]{{6}}\" maxlength=\"6\" required autofocus>\
<div><button id=\"submit\" type=\"submit\">Verify</button></div></form>",
        err = error.map_or(String::new(), |e| format!(
            "<p class=\"e\" role=\"alert\">{}</p>",
            esc(e)
        )),
        rd = esc(rd),
    )
}

/// Step-up for an enrolled user.
pub fn step_up(
    status: StatusCode,
    user: &str,
    rd: &str,
    error: Option<&str>,
) -> Response<Full<Bytes>> {
    html(
        status,
        "Confirm it's you",
        &format!(
            "<p>Signed in as <b>{}</b>. This page needs a recent second-factor check.</p>{}",
            esc(user),
            code_form(rd, error)
        ),
    )
}

/// First-time enrollment: the QR code, the secret as text, and the code form.
pub fn enroll(
    status: StatusCode,
    user: &str,
    qr_svg: &str,
    secret_b32: &str,
    rd: &str,
    error: Option<&str>,
) -> Response<Full<Bytes>> {
    html(
        status,
        "Set up your second factor",
        &format!(
            "<p>Signed in as <b>{user}</b>. Your sign-in did not include a second factor, so this \
gateway asks for one. Scan this code with an authenticator app (such as a TOTP app on your phone), \
then enter the 6-digit code it shows.</p><figure role=\"img\" aria-label=\"QR code for your \
authenticator app\">{qr_svg}</figure><p>Can't scan? Enter this key by hand: \
<code id=\"totp-secret\">{secret}</code></p>{form}",
            user = esc(user),
            secret = esc(secret_b32),
            form = code_form(rd, error),
        ),
    )
}

/// A page with a message and an optional link.
pub fn message(
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Response<Full<Bytes>> {
    let link = link.map_or(String::new(), |(href, label)| {
        format!("<p><a href=\"{}\">{}</a></p>", esc(href), esc(label))
    });
    html(status, title, &format!("<p>{}</p>{link}", esc(text)))
}
