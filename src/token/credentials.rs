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
    let value = value
        .to_str()
        .map_err(|_| AuthError::new(AuthErrorKind::MalformedAuthorization))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        // An unsupported scheme counts as no credentials (RFC 6750 §3.1).
        return Err(AuthErrorKind::MissingCredentials.into());
    };
    let token = rest.trim_start_matches(' ');
    if !is_token68(token) {
        return Err(AuthErrorKind::MalformedAuthorization.into());
    }
    Ok(Credentials { scheme, token })
}

/// RFC 7235 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    // Every byte is checked (no early exit), a table lookup each: tokens are hundreds of bytes
    // and almost always valid.
    !body.is_empty()
        && body
            .bytes()
            .fold(true, |ok, b| ok & TOKEN68[usize::from(b)])
}

/// The token68 characters before the trailing `=`s.
static TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

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
            let token = format!("ab{}cd", char::from(b));
            assert_eq!(
                is_token68(&token),
                expected && b.is_ascii(),
                "byte {b:#04x}"
            );
        }
        assert!(is_token68("abc=="));
        assert!(!is_token68("=="));
        assert!(!is_token68("a=b"));
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
