//! Checks on JSON text that serde's borrowed parsing does not make.
//!
//! serde skips the strings of members it ignores without decoding them, so a lone UTF-16
//! surrogate escape (`"\ud800"`) there passes, while `serde_json::Value` refuses it and other
//! readers substitute U+FFFD. Text that two readers see differently is refused instead
//! (RFC 7493 §2.1: I-JSON strings hold no surrogate code points).

/// Whether `text` holds a `\uD800`..`\uDFFF` escape that is not one half of a proper pair
/// (a high surrogate escape directly followed by a low one).
///
/// Exact for text serde accepts as JSON, where a backslash only ever starts an escape inside a
/// string; linear, and allocation-free.
pub(crate) fn has_lone_surrogate_escape(text: &[u8]) -> bool {
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'\\', &text[i..]) {
        i += offset;
        match text.get(i + 1) {
            Some(b'u') => match unit(text, i) {
                Some(0xD800..=0xDBFF) => match text.get(i + 6) {
                    Some(b'\\') if matches!(unit(text, i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
                    _ => return true,
                },
                Some(0xDC00..=0xDFFF) => return true,
                // Any other unit, or bad hex (which serde refuses).
                _ => i += 6,
            },
            // `\\`, `\"`, `\n`, …: the escaped character is never the start of another escape.
            _ => i += 2,
        }
        if i >= text.len() {
            return false;
        }
    }
    false
}

/// The UTF-16 unit of the `\uXXXX` escape at `at`, if it is one.
fn unit(text: &[u8], at: usize) -> Option<u16> {
    let escape = text.get(at..at + 6)?;
    if &escape[..2] != b"\\u" {
        return None;
    }
    let hex = std::str::from_utf8(&escape[2..]).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::has_lone_surrogate_escape;
    use proptest::prelude::*;

    #[test]
    fn cases() {
        for (text, lone) in [
            (r#"{"x":"plain"}"#, false),
            (r#"{"x":"\ud800"}"#, true),
            (r#"{"x":"\uDBFF"}"#, true),
            (r#"{"x":"\udc00"}"#, true),
            (r#"{"x":"a\uDFFFb"}"#, true),
            (r#"{"x":"\ud83d\ude00"}"#, false),
            (r#"{"x":"\uD83D\uDE00\uD83D\uDE00"}"#, false),
            (r#"{"x":"\ude00\ud83d"}"#, true),
            (r#"{"x":"\ud83d\ud83d\ude00"}"#, true),
            (r#"{"x":"\ud83d\u0041"}"#, true),
            (r#"{"x":"\ud83dx\ude00"}"#, true),
            (r#"{"x":"\\ud800"}"#, false),
            (r#"{"x":"\\\ud800"}"#, true),
            (r#"{"x":"\\\\ud800"}"#, false),
            (r#"{"x":"\u0041\ud800"}"#, true),
            (r#"{"\udbff":1}"#, true),
            (r#"{"x":"\ud800"#, true),
            (r#"{"x":"\"#, false),
            (r#"{"x":"\u"#, false),
            (r#"{"x":"\ud8"#, false),
            ("", false),
            ("\\", false),
        ] {
            assert_eq!(has_lone_surrogate_escape(text.as_bytes()), lone, "{text}");
        }
    }

    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a",
            "\\\\",
            "\\\"",
            "\\n",
            "\\u0041",
            "\\ud800",
            "\\uDBFF",
            "\\udc00",
            "\\uDFFF",
            "\\ud83d\\ude00",
            "\\",
            "u",
            "d800",
            "é",
        ])
    }

    proptest! {
        /// On every string serde accepts, the check agrees with whether `serde_json::Value`
        /// (which decodes every string) refuses it.
        #[test]
        fn agrees_with_a_full_reading(pieces in prop::collection::vec(piece(), 0..12)) {
            let text = format!(r#"{{"x":"{}","y":1}}"#, pieces.concat());
            if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
                let refused = serde_json::from_str::<serde_json::Value>(&text).is_err();
                prop_assert_eq!(has_lone_surrogate_escape(text.as_bytes()), refused, "{}", text);
            }
        }
    }
}
