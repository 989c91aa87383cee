//! Reading the access token from a request (RFC 6750 §2, RFC 9449 §7.1), strictly.

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Uri};

use crate::error::{AuthError, AuthErrorKind};

/// The authentication scheme a token was presented with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Bearer,
    Dpop,
}

/// A token taken from the `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credentials<'a> {
    pub(crate) scheme: Scheme,
    pub(crate) token: &'a str,
}

/// Extracts exactly one token from exactly one `Authorization` header.
///
/// Refuses tokens in the query string and form-encoded bodies (OAuth 2.1 allows the header only
/// for MCP), more than one header, a value longer than `max_len`, anything but visible ASCII, and
/// a credential that is not RFC 7235 token68.
pub(crate) fn extract<'a>(
    headers: &'a HeaderMap,
    uri: &Uri,
    max_len: usize,
) -> Result<Credentials<'a>, AuthError> {
    if let Some(query) = uri.query()
        && url::form_urlencoded::parse(query.as_bytes()).any(|(name, _)| name == "access_token")
    {
        return Err(AuthErrorKind::TokenInQuery.into());
    }
    if let Some(content_type) = headers.get(CONTENT_TYPE)
        && is_form(content_type.as_bytes())
    {
        return Err(AuthErrorKind::FormEncodedBody.into());
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(AuthErrorKind::MissingCredentials.into()),
        (Some(_), Some(_)) => return Err(AuthErrorKind::MultipleCredentials.into()),
        (Some(value), None) => value,
    };
    if value.len() > max_len {
        return Err(AuthErrorKind::MalformedAuthorization.into());
    }
    // Bytes, not `to_str`: a supported scheme, spaces and a token68 are all visible ASCII, so
    // the value is checked exactly once.
    let bytes = value.as_bytes();
    let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
        Some(space) => (&bytes[..space], &bytes[space + 1..]),
        None => (bytes, &b""[..]),
    };
    let scheme = if scheme.eq_ignore_ascii_case(b"bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case(b"dpop") {
        Scheme::Dpop
    } else if value.to_str().is_ok() {
        // An unsupported scheme counts as no credentials (RFC 6750 §3.1).
        return Err(AuthErrorKind::MissingCredentials.into());
    } else {
        return Err(AuthErrorKind::MalformedAuthorization.into());
    };
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let token = &rest[start..];
    if !is_token68(token) {
        return Err(AuthErrorKind::MalformedAuthorization.into());
    }
    // Token68 is ASCII, so this cannot fail; refuse rather than assume.
    let token = std::str::from_utf8(token)
        .map_err(|_| AuthError::new(AuthErrorKind::MalformedAuthorization))?;
    Ok(Credentials { scheme, token })
}

/// RFC 7235 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &[u8]) -> bool {
    let end = s
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |last| last + 1);
    let body = &s[..end];
    // Every byte is checked (no early exit) with branch-free compares, which the compiler turns
    // into SIMD: tokens are hundreds of bytes and almost always valid.
    !body.is_empty() && body.iter().fold(true, |ok, &b| ok & is_token68_char(b))
}

/// A token68 character other than the trailing `=`.
#[inline]
fn is_token68_char(b: u8) -> bool {
    // `| 0x20` lowercases ASCII letters and maps no other byte into `a..=z`; `-` `.` `/` and
    // the digits are the one run 0x2D..=0x39. Five tests, not eight, per SIMD lane.
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'-') <= b'9' - b'-')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
}

fn is_form(content_type: &[u8]) -> bool {
    const FORM: &[u8] = b"application/x-www-form-urlencoded";
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(FORM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn run(values: &[&[u8]], uri: &str) -> Result<(Scheme, String), AuthErrorKind> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        extract(&headers, &uri.parse().unwrap(), 8192)
            .map(|c| (c.scheme, c.token.to_owned()))
            .map_err(|e| e.kind())
    }

    #[test]
    fn table() {
        use AuthErrorKind::*;
        let ok = |s: Scheme, t: &str| Ok((s, t.to_owned()));
        type Case<'a> = (
            &'a [&'a [u8]],
            &'a str,
            Result<(Scheme, String), AuthErrorKind>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                &[b"Bearer abc.def.ghi"],
                "/mcp",
                ok(Scheme::Bearer, "abc.def.ghi"),
            ),
            (&[b"bEaReR abc"], "/mcp", ok(Scheme::Bearer, "abc")),
            (&[b"Bearer   abc=="], "/mcp", ok(Scheme::Bearer, "abc==")),
            (&[b"DPoP abc"], "/mcp", ok(Scheme::Dpop, "abc")),
            (&[], "/mcp", Err(MissingCredentials)),
            (&[b"Basic dXNlcjpwYXNz"], "/mcp", Err(MissingCredentials)),
            (&[b"Bearer"], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer "], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer a b"], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer a\"b"], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer =abc"], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer abc "], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer ab\xffc"], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bearer\tabc"], "/mcp", Err(MissingCredentials)),
            // Not visible ASCII anywhere: malformed, whatever the scheme.
            (&[b"Basic ab\xffc"], "/mcp", Err(MalformedAuthorization)),
            (&[b"Bear\xe9r abc"], "/mcp", Err(MalformedAuthorization)),
            (
                &[b"Bearer a", b"Bearer b"],
                "/mcp",
                Err(MultipleCredentials),
            ),
            (&[b"Bearer a"], "/mcp?access_token=x", Err(TokenInQuery)),
            (&[], "/mcp?a=1&access%5Ftoken=x", Err(TokenInQuery)),
            (
                &[b"Bearer a"],
                "/mcp?other=access_token",
                ok(Scheme::Bearer, "a"),
            ),
        ];
        for (values, uri, expected) in cases {
            assert_eq!(run(values, uri), expected, "{values:?} {uri}");
        }
    }

    #[test]
    fn token68_alphabet_is_exact() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(
                is_token68(&[b'a', b'b', b, b'c', b'd']),
                expected,
                "{b:#04x}"
            );
            assert_eq!(is_token68(&[b]), expected, "alone {b:#04x}");
            // Past the SIMD chunk width too, in every position.
            for at in [0, 31, 32, 63, 64, 99] {
                let mut long = vec![b'x'; 100];
                long[at] = b;
                let padding = at == 99 && b == b'=';
                assert_eq!(is_token68(&long), expected || padding, "{b:#04x} at {at}");
            }
        }
        assert!(is_token68(b"abc=="));
        assert!(!is_token68(b"=="));
        assert!(!is_token68(b""));
        assert!(!is_token68(b"a=b"));
    }

    #[test]
    fn oversized_header_is_malformed() {
        let long = format!("Bearer {}", "a".repeat(70_000));
        assert_eq!(
            run(&[long.as_bytes()], "/mcp"),
            Err(AuthErrorKind::MalformedAuthorization)
        );
    }

    #[test]
    fn form_bodies_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
        );
        let err = extract(&headers, &"/mcp".parse().unwrap(), 8192).unwrap_err();
        assert_eq!(err.kind(), AuthErrorKind::FormEncodedBody);
    }
}
