//! The canonical request form (DESIGN.md section 5): stage 0 of the request path.
//!
//! A request is decoded and normalised **once**, here, before routing. Routing,
//! policy and the audit record see the decoded form; the upstream receives the
//! same form re-encoded one deterministic way ([`CanonicalPath::encoded`]), so
//! no layer behind the proxy can read the request differently from the layer
//! that decided about it. Anything ambiguous is refused with 400 instead of
//! being guessed at: encoded `/`, `\` or dot segments, `..` above the root,
//! NUL and control bytes, invalid or overlong UTF-8, double encoding, dot
//! segments carrying `;` parameters, duplicate or conflicting `Host`,
//! `Content-Length` with `Transfer-Encoding`, conflicting `Content-Length`,
//! and an absolute-form URI whose host differs from `Host`.

use std::borrow::Cow;
use std::fmt;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Uri};

/// Why a request was refused before routing. Each maps to a 400 page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The path does not start with `/` (or is `*`, or authority-form).
    NotOriginForm,
    /// `%2F` or `%5C` in the path.
    EncodedSeparator,
    /// A raw `\` in the path.
    Backslash,
    /// `%2E` used to spell a `.` or `..` segment.
    EncodedDotSegment,
    /// A `.` or `..` segment with `;` parameters (`..;/`).
    DotSegmentParameters,
    /// `..` would climb above the root.
    EscapesRoot,
    /// `%00` (or another control byte) in the path.
    ControlCharacter,
    /// Percent-decoding gives bytes that are not valid (or are overlong) UTF-8.
    InvalidUtf8,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%25` followed by two hex digits: a second layer of encoding.
    DoubleEncoding,
    /// No `Host` / `:authority`.
    MissingHost,
    /// More than one `Host` header.
    DuplicateHost,
    /// `Host` is not a valid host name.
    BadHost,
    /// The request URI's host (absolute-form or `:authority`) differs from `Host`.
    HostMismatch,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndTransferEncoding,
    /// Several `Content-Length` values that disagree, or one that is not a number.
    BadContentLength,
    /// `CONNECT` and other methods the proxy does not forward.
    MethodNotAllowed,
}

impl Refusal {
    /// A sentence for the 400 page and the log: what was wrong, without echoing input.
    pub fn message(self) -> &'static str {
        match self {
            Self::NotOriginForm => "The request target must be a path starting with '/'.",
            Self::EncodedSeparator => "The path contains an encoded '/' or '\\' (%2F, %5C).",
            Self::Backslash => "The path contains a backslash.",
            Self::EncodedDotSegment => "The path spells '.' or '..' with percent-encoding.",
            Self::DotSegmentParameters => "The path has a '.' or '..' segment with ';' parameters.",
            Self::EscapesRoot => "The path climbs above the root with '..'.",
            Self::ControlCharacter => "The path contains NUL or another control character.",
            Self::InvalidUtf8 => "The path does not decode to valid UTF-8.",
            Self::BadPercentEncoding => {
                "The path has a '%' that is not followed by two hex digits."
            }
            Self::DoubleEncoding => {
                "The path is percent-encoded twice (%25 followed by hex digits)."
            }
            Self::MissingHost => "The request has no Host.",
            Self::DuplicateHost => "The request has more than one Host header.",
            Self::BadHost => "The Host is not a valid host name.",
            Self::HostMismatch => "The host in the request target differs from the Host header.",
            Self::LengthAndTransferEncoding => {
                "The request has both Content-Length and Transfer-Encoding."
            }
            Self::BadContentLength => "The request's Content-Length is invalid or conflicting.",
            Self::MethodNotAllowed => "This method is not accepted here.",
        }
    }

    /// A short stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotOriginForm => "not_origin_form",
            Self::EncodedSeparator => "encoded_separator",
            Self::Backslash => "backslash",
            Self::EncodedDotSegment => "encoded_dot_segment",
            Self::DotSegmentParameters => "dot_segment_parameters",
            Self::EscapesRoot => "escapes_root",
            Self::ControlCharacter => "control_character",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::BadPercentEncoding => "bad_percent_encoding",
            Self::DoubleEncoding => "double_encoding",
            Self::MissingHost => "missing_host",
            Self::DuplicateHost => "duplicate_host",
            Self::BadHost => "bad_host",
            Self::HostMismatch => "host_mismatch",
            Self::LengthAndTransferEncoding => "length_and_transfer_encoding",
            Self::BadContentLength => "bad_content_length",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A path in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// Decoded, normalised: what routing, policy and audit see.
    pub decoded: String,
    /// The same path re-encoded one deterministic way: what the upstream receives.
    pub encoded: String,
}

/// The parts of a request that routing needs, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalRequest<'a> {
    /// Lowercase host, no port, no trailing dot.
    pub host: Cow<'a, str>,
    /// The path.
    pub path: CanonicalPath,
}

/// Bytes that stay literal in an encoded path segment; everything else is %XX.
/// `;` is always encoded so that no upstream can read it as a path parameter.
fn keep_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one raw path segment, refusing every ambiguous spelling.
/// Returns the decoded text and whether any percent-escape was used.
fn decode_segment(raw: &[u8], out: &mut Vec<u8>) -> Result<bool, Refusal> {
    out.clear();
    let mut escaped = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex_val),
                    raw.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(Refusal::BadPercentEncoding);
                };
                let d = h << 4 | l;
                match d {
                    b'/' | b'\\' => return Err(Refusal::EncodedSeparator),
                    b'%' if raw.get(i + 3).copied().and_then(hex_val).is_some()
                        && raw.get(i + 4).copied().and_then(hex_val).is_some() =>
                    {
                        return Err(Refusal::DoubleEncoding);
                    }
                    _ => {}
                }
                out.push(d);
                escaped = true;
                i += 3;
            }
            b'\\' => return Err(Refusal::Backslash),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Refusal::ControlCharacter);
    }
    Ok(escaped)
}

/// Canonicalises a raw request path (as sent, percent-encoded, without query).
pub fn canonical_path(raw: &str) -> Result<CanonicalPath, Refusal> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Refusal::NotOriginForm);
    }
    // Segments as (start, end) into `decoded_buf`: no allocation per segment.
    let mut decoded_buf: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let mut seg = Vec::new();
    let mut trailing_slash = false;
    let mut raw_segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(raw_seg) = raw_segments.next() {
        let is_last = raw_segments.peek().is_none();
        let escaped = decode_segment(raw_seg, &mut seg)?;
        if std::str::from_utf8(&seg).is_err() {
            return Err(Refusal::InvalidUtf8);
        }
        let base = seg.split(|&b| b == b';').next().unwrap_or(&[]);
        let is_dot = base == b"." || base == b"..";
        if is_dot && escaped {
            return Err(Refusal::EncodedDotSegment);
        }
        if is_dot && base.len() != seg.len() {
            return Err(Refusal::DotSegmentParameters);
        }
        match seg.as_slice() {
            b"" => {
                trailing_slash = is_last;
            }
            b"." => trailing_slash = is_last,
            b".." => {
                let Some((start, _)) = stack.pop() else {
                    return Err(Refusal::EscapesRoot);
                };
                decoded_buf.truncate(start);
                trailing_slash = is_last;
            }
            s => {
                let start = decoded_buf.len();
                decoded_buf.extend_from_slice(s);
                stack.push((start, decoded_buf.len()));
                trailing_slash = false;
            }
        }
    }
    let mut decoded = String::with_capacity(decoded_buf.len() + stack.len() + 1);
    let mut encoded = String::with_capacity(raw.len() + 8);
    for &(start, end) in &stack {
        let s = &decoded_buf[start..end];
        decoded.push('/');
        encoded.push('/');
        // Each segment was checked as UTF-8 above.
        decoded.push_str(std::str::from_utf8(s).map_err(|_| Refusal::InvalidUtf8)?);
        for &b in s {
            if keep_literal(b) {
                encoded.push(char::from(b));
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                encoded.push('%');
                encoded.push(char::from(HEX[usize::from(b >> 4)]));
                encoded.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    if stack.is_empty() || trailing_slash {
        decoded.push('/');
        encoded.push('/');
    }
    Ok(CanonicalPath { decoded, encoded })
}

/// Canonicalises a host (with optional port): lowercase, no trailing dot, no port.
/// `None` when it is not a valid DNS name or IP literal.
pub fn canonical_host(raw: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = raw.strip_prefix('[') {
        let end = rest.find(']')?;
        let (lit, after) = (&rest[..end], &rest[end + 1..]);
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        let ip: std::net::Ipv6Addr = lit.parse().ok()?;
        return Some(Cow::Owned(format!("[{ip}]")));
    }
    let host = match raw.rfind(':') {
        Some(i) => {
            if !valid_port(&raw[i + 1..]) {
                return None;
            }
            &raw[..i]
        }
        None => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || host.len() > 253
        || host.split('.').any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) || host.len() != raw.len() {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Checks the request head and returns its canonical host and path.
pub fn canonicalize<'a>(
    method: &Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<CanonicalRequest<'a>, Refusal> {
    if method == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed);
    }
    // Host: exactly one source of truth.
    let mut host_headers = headers.get_all(HOST).iter();
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(Refusal::DuplicateHost);
    }
    let header_host = match host_header {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(canonical_host)
                .ok_or(Refusal::BadHost)?,
        ),
        None => None,
    };
    let uri_host = match uri.authority() {
        Some(a) => {
            if a.as_str().contains('@') {
                return Err(Refusal::BadHost);
            }
            Some(canonical_host(a.as_str()).ok_or(Refusal::BadHost)?)
        }
        None => None,
    };
    let host = match (uri_host, header_host) {
        (Some(u), Some(h)) if u != h => return Err(Refusal::HostMismatch),
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) => return Err(Refusal::MissingHost),
    };
    // Framing: one unambiguous body length.
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(Refusal::LengthAndTransferEncoding);
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        let parse = |v: &http::HeaderValue| -> Option<u64> {
            let s = v.to_str().ok()?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let n = parse(first).ok_or(Refusal::BadContentLength)?;
        for other in lengths {
            if parse(other) != Some(n) {
                return Err(Refusal::BadContentLength);
            }
        }
    }
    let path = canonical_path(uri.path())?;
    Ok(CanonicalRequest { host, path })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, String) {
        let c = canonical_path(raw).unwrap();
        (c.decoded, c.encoded)
    }

    #[test]
    fn normalises() {
        assert_eq!(ok("/"), ("/".into(), "/".into()));
        assert_eq!(ok("/a//b/./c/../d"), ("/a/b/d".into(), "/a/b/d".into()));
        assert_eq!(ok("/a/b/"), ("/a/b/".into(), "/a/b/".into()));
        assert_eq!(ok("/a/b/.."), ("/a/".into(), "/a/".into()));
        assert_eq!(ok("/a/%7euser"), ("/a/~user".into(), "/a/~user".into()));
        assert_eq!(ok("/caf%C3%A9"), ("/café".into(), "/caf%C3%A9".into()));
        assert_eq!(ok("/a%20b"), ("/a b".into(), "/a%20b".into()));
        assert_eq!(ok("/x;y"), ("/x;y".into(), "/x%3By".into()));
        assert_eq!(ok("/file%2Ejpg"), ("/file.jpg".into(), "/file.jpg".into()));
    }

    #[test]
    fn refuses() {
        use Refusal::*;
        for (raw, why) in [
            ("/a%2Fb", EncodedSeparator),
            ("/a%2fb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a\\b", Backslash),
            ("/%2e%2e/etc", EncodedDotSegment),
            ("/a/%2E/b", EncodedDotSegment),
            ("/a/.%2e/b", EncodedDotSegment),
            ("/..", EscapesRoot),
            ("/a/../../b", EscapesRoot),
            ("/a/..;/b", DotSegmentParameters),
            ("/a%00b", ControlCharacter),
            ("/a%0Ab", ControlCharacter),
            ("/%C0%AF", InvalidUtf8),
            ("/%E0%80%AF", InvalidUtf8),
            ("/%FF", InvalidUtf8),
            ("/a%zz", BadPercentEncoding),
            ("/a%2", BadPercentEncoding),
            ("/%252e%252e/", DoubleEncoding),
            ("*", NotOriginForm),
            ("a/b", NotOriginForm),
        ] {
            assert_eq!(canonical_path(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            canonical_host("EHR.Example.com.:443").unwrap(),
            "ehr.example.com"
        );
        assert_eq!(canonical_host("localhost").unwrap(), "localhost");
        assert!(matches!(
            canonical_host("localhost"),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(canonical_host("[::1]:8443").unwrap(), "[::1]");
        assert_eq!(canonical_host("127.0.0.1:8443").unwrap(), "127.0.0.1");
        for bad in [
            "", "a..b", "-a.com", "a b", "a.com:", "a.com:x", "a_b.com", "[::1", "é.com",
        ] {
            assert!(canonical_host(bad).is_none(), "{bad}");
        }
    }
}
