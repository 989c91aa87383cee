//! `tower_mcp_auth::dpop::normalize_htu` on arbitrary strings.
//!
//! Invariants: never panics; a normalized URL starts with `http://` or `https://`, is ASCII,
//! holds no `?` or `#` (query and fragment are dropped) and no whitespace, and normalizing it
//! again gives the same string (idempotent); normalizing the input with a query or fragment
//! appended gives the same result as without.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use tower_mcp_auth::dpop::normalize_htu;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Some(out) = normalize_htu(input) else {
        common::trace(|| format!("{input:?} -> None"));
        return;
    };
    common::trace(|| format!("{input:?} -> {out:?}"));
    assert!(
        out.starts_with("http://") || out.starts_with("https://"),
        "{input:?} -> {out:?}"
    );
    assert!(!out.contains(['?', '#']), "{input:?} -> {out:?}");
    assert!(out.is_ascii(), "{input:?} -> {out:?}");
    assert!(
        !out.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
        "{input:?} -> {out:?}"
    );
    let again = normalize_htu(&out);
    assert_eq!(
        again.as_deref(),
        Some(out.as_str()),
        "not idempotent: {input:?}"
    );
    // (The URL parser trims trailing C0 controls and spaces, which an appended query would
    // move inside the URL.)
    if !input.contains(['?', '#']) && !input.ends_with(|c: char| c <= ' ') {
        let with_query = format!("{input}?q=1#f");
        assert_eq!(
            normalize_htu(&with_query).as_deref(),
            Some(out.as_str()),
            "the query changed the result: {input:?}"
        );
    }
});
