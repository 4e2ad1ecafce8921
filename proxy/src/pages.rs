//! The one renderer for responses the proxy makes itself (errors, refusals).
//!
//! Browsers get a small HTML page; API clients (whose `Accept` does not ask
//! for HTML) get JSON. Neither ever names internals: no upstream address, no
//! error chain, no echo of the request. Every such response carries HSTS and
//! is never cached.

use bytes::Bytes;
use http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

/// HSTS as DESIGN.md section 1 asks.
pub const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000; includeSubDomains");

/// True when the client prefers an HTML page (a browser navigation).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Escapes text for HTML (every page the proxy makes uses this one).
pub fn escape(s: &str) -> String {
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

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A page from the proxy: `title` names the problem, `detail` says what to do.
pub fn page(status: StatusCode, title: &str, detail: &str, html: bool) -> Response<Full<Bytes>> {
    let (body, ctype) = if html {
        (
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{code} {title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36em;\
margin:10vh auto;padding:0 1em;color:#1d2733}}h1{{font-size:1.4em}}.c{{color:#6b7785}}</style>\
</head><body><h1>{title}</h1><p>{detail}</p><p class=\"c\">{code} · dermgate</p></body></html>",
                code = status.as_u16(),
                title = escape(title),
                detail = escape(detail),
            ),
            "text/html; charset=utf-8",
        )
    } else {
        (
            format!(
                "{{\"status\":{},\"error\":{},\"detail\":{}}}",
                status.as_u16(),
                json_string(title),
                json_string(detail)
            ),
            "application/json",
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert(STRICT_TRANSPORT_SECURITY, HSTS);
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_sets_headers() {
        let r = page(StatusCode::BAD_GATEWAY, "<x>", "a\"b", true);
        assert_eq!(r.headers()[STRICT_TRANSPORT_SECURITY], HSTS);
        let r = page(StatusCode::BAD_GATEWAY, "t", "q\"\n", false);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}
