//! `htu` comparison (RFC 9449 §4.3 step 9): both sides normalized per RFC 3986 §6.2.2 and §6.2.3,
//! query and fragment ignored.

use url::Url;

/// The normalized form of an `http(s)` URL without query and fragment: lowercase scheme and
/// host, no default port, dot segments removed, an empty path as `/`, percent-encodings in upper
/// case and unreserved characters decoded. `None` for anything else (no host, credentials, another
/// scheme, unparsable).
pub fn normalize_htu(value: &str) -> Option<String> {
    let url = Url::parse(value).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    // A `%` not followed by two hex digits is not a percent-encoding; refuse rather than guess
    // (decoding around it would make normalization depend on how often it is applied).
    if !valid_percent_encodings(url.path()) {
        return None;
    }
    let host = url.host_str()?;
    let mut out = String::with_capacity(value.len());
    out.push_str(url.scheme());
    out.push_str("://");
    out.push_str(host);
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    normalize_percent(url.path(), &mut out);
    Some(out)
}

/// Upper-cases percent-encoding hex digits and decodes unreserved characters (§6.2.2.1–2).
fn normalize_percent(path: &str, out: &mut String) {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let decoded = hi << 4 | lo;
            if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                out.push(decoded as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
}

fn valid_percent_encodings(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::normalize_htu as n;

    #[test]
    fn equivalent_forms() {
        let canonical = n("https://mcp.example.com/mcp").unwrap();
        for same in [
            "HTTPS://MCP.Example.COM/mcp",
            "https://mcp.example.com:443/mcp",
            "https://mcp.example.com/a/../mcp",
            "https://mcp.example.com/./mcp",
            "https://mcp.example.com/%6Dcp",
            "https://mcp.example.com/mcp?query=1",
            "https://mcp.example.com/mcp#fragment",
        ] {
            assert_eq!(n(same).as_deref(), Some(canonical.as_str()), "{same}");
        }
        assert_eq!(n("http://h:80").unwrap(), "http://h/");
        assert_eq!(n("https://h/a%2fb").unwrap(), "https://h/a%2Fb");
    }

    #[test]
    fn different_or_refused() {
        let canonical = n("https://mcp.example.com/mcp").unwrap();
        for other in [
            "http://mcp.example.com/mcp",
            "https://mcp.example.com:8443/mcp",
            "https://evil.example.com/mcp",
            "https://mcp.example.com/MCP",
            "https://mcp.example.com/mcp/",
            "https://mcp.example.com/mcp2",
        ] {
            assert_ne!(n(other).as_deref(), Some(canonical.as_str()), "{other}");
        }
        for refused in [
            "ftp://h/x",
            "https://u:p@h/x",
            "/mcp",
            "",
            "https://",
            "http:0/%6%63",
            "https://h/%",
            "https://h/%zz",
        ] {
            assert_eq!(n(refused), None, "{refused}");
        }
    }
}
