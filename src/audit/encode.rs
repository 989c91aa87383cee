//! The compact JSON of an [`AuditEvent`], byte for byte what `serde_json::to_vec` writes.
//!
//! serde_json escapes every key and every string byte by byte through a lookup table; most of an
//! event is static keys and strings with nothing to escape (ids, thumbprints, times, URIs). Here
//! the keys are literals and a string is copied as it is when no byte of it needs an escape;
//! any other string, and the redacted `arguments`, go through serde_json itself, so the output
//! cannot drift from it (`tests::same_bytes_as_serde_json` checks arbitrary events).

use super::event::{
    ActorFacts, AuditEvent, DecisionKind, HttpFacts, McpCall, Outcome, PrincipalFacts, TokenFacts,
};

impl AuditEvent {
    /// Appends the event's compact JSON (no newline) to `out`: the same bytes as
    /// `serde_json::to_vec(self)`, in about a quarter of the time (bench `audit/encode_*`).
    ///
    /// ```
    /// # let event: tower_mcp_auth::audit::AuditEvent = serde_json::from_str(
    /// #     r#"{"schema":1,"time":"2026-01-01T00:00:00.000000Z","event_id":"e","request_id":"r",
    /// #     "http":{"method":"POST","path":"/mcp","status":200},"decision":"allow","mcp":[],
    /// #     "required_scopes":[],"resource":"https://mcp.example.com/mcp","latency_us":1}"#,
    /// # ).unwrap();
    /// let mut line = Vec::new();
    /// event.write_json(&mut line)?;
    /// assert_eq!(line, serde_json::to_vec(&event)?);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Only if serde_json fails on the redacted `arguments` (it does not for a
    /// `serde_json::Value` written to memory).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"schema\":");
        number(out, self.schema);
        out.extend_from_slice(b",\"time\":");
        string(out, &self.time)?;
        out.extend_from_slice(b",\"event_id\":");
        string(out, &self.event_id)?;
        out.extend_from_slice(b",\"request_id\":");
        string(out, &self.request_id)?;
        out.extend_from_slice(b",\"http\":");
        http(out, &self.http)?;
        out.extend_from_slice(match self.decision {
            DecisionKind::Allow => b",\"decision\":\"allow\",\"reason\":",
            DecisionKind::Deny => b",\"decision\":\"deny\",\"reason\":",
        });
        optional(out, self.reason.as_deref())?;
        out.extend_from_slice(b",\"reason_detail\":");
        optional(out, self.reason_detail.as_deref())?;
        out.extend_from_slice(b",\"mcp\":");
        list(out, &self.mcp, call)?;
        out.extend_from_slice(b",\"session\":");
        optional(out, self.session.as_deref())?;
        out.extend_from_slice(b",\"principal\":");
        match &self.principal {
            Some(p) => principal(out, p)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"required_scopes\":");
        list(out, &self.required_scopes, |out, s| string(out, s))?;
        out.extend_from_slice(b",\"token\":");
        match &self.token {
            Some(t) => token(out, t)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"resource\":");
        string(out, &self.resource)?;
        out.extend_from_slice(b",\"remote_addr\":");
        optional(out, self.remote_addr.as_deref())?;
        out.extend_from_slice(b",\"latency_us\":");
        number(out, self.latency_us);
        out.extend_from_slice(b",\"arguments\":");
        match &self.arguments {
            Some(arguments) => serde_json::to_writer(&mut *out, arguments)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(match self.outcome {
            Outcome::Completed => b",\"outcome\":\"completed\"}",
            Outcome::Cancelled => b",\"outcome\":\"cancelled\"}",
        });
        Ok(())
    }
}

fn http(out: &mut Vec<u8>, http: &HttpFacts) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"method\":");
    string(out, &http.method)?;
    out.extend_from_slice(b",\"path\":");
    string(out, &http.path)?;
    out.extend_from_slice(b",\"status\":");
    number(out, http.status);
    out.push(b'}');
    Ok(())
}

fn call(out: &mut Vec<u8>, call: &McpCall) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"method\":");
    string(out, &call.method)?;
    out.extend_from_slice(b",\"target\":");
    optional(out, call.target.as_deref())?;
    out.push(b'}');
    Ok(())
}

fn principal(out: &mut Vec<u8>, p: &PrincipalFacts) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"issuer\":");
    string(out, &p.issuer)?;
    out.extend_from_slice(b",\"subject\":");
    string(out, &p.subject)?;
    out.extend_from_slice(b",\"client_id\":");
    optional(out, p.client_id.as_deref())?;
    out.extend_from_slice(b",\"delegation_chain\":");
    list(out, &p.delegation_chain, actor)?;
    out.extend_from_slice(b",\"scopes\":");
    list(out, &p.scopes, |out, s| string(out, s))?;
    out.push(b'}');
    Ok(())
}

fn actor(out: &mut Vec<u8>, a: &ActorFacts) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"subject\":");
    string(out, &a.subject)?;
    out.extend_from_slice(b",\"issuer\":");
    optional(out, a.issuer.as_deref())?;
    out.extend_from_slice(b",\"client_id\":");
    optional(out, a.client_id.as_deref())?;
    out.push(b'}');
    Ok(())
}

fn token(out: &mut Vec<u8>, t: &TokenFacts) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"jti\":");
    optional(out, t.jti.as_deref())?;
    out.extend_from_slice(b",\"thumbprint\":");
    string(out, &t.thumbprint)?;
    out.extend_from_slice(b",\"binding\":");
    string(out, &t.binding)?;
    out.extend_from_slice(b",\"key_thumbprint\":");
    optional(out, t.key_thumbprint.as_deref())?;
    out.push(b'}');
    Ok(())
}

fn list<T>(
    out: &mut Vec<u8>,
    items: &[T],
    mut item: impl FnMut(&mut Vec<u8>, &T) -> serde_json::Result<()>,
) -> serde_json::Result<()> {
    out.push(b'[');
    for (i, each) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(out, each)?;
    }
    out.push(b']');
    Ok(())
}

fn optional(out: &mut Vec<u8>, text: Option<&str>) -> serde_json::Result<()> {
    match text {
        Some(text) => string(out, text),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn string(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if needs_escape(text.as_bytes()) {
        return serde_json::to_writer(&mut *out, text);
    }
    out.reserve(text.len() + 2);
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
    Ok(())
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Whether serde_json would escape any byte of `bytes`: a control character (below 0x20), `"`
/// or `\`. Eight bytes at a time: a word has a byte below `n` (for `n` ≤ 0x80) exactly when
/// `(w - n·0x01…01) & !w & 0x80…80` is not zero, and a byte equal to `c` when `w ^ c·0x01…01`
/// has a zero byte (the borrows can mark the wrong byte, never a word with none).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 0xff;
    const HIGH: u64 = ONES * 0x80;
    fn below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH
    }
    let (words, rest) = bytes.as_chunks::<8>();
    for word in words {
        let word = u64::from_le_bytes(*word);
        let hit = below(word, 0x20)
            | below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1);
        if hit != 0 {
            return true;
        }
    }
    rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Text mixing what serde_json escapes (controls, `"`, `\`), what it does not (DEL, `/`,
    /// U+2028, non-ASCII), and plain ASCII, long enough to cross several 8-byte words.
    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => "[a-zA-Z0-9:/._-]{0,20}",
            1 => prop::sample::select(vec![
                "\"", "\\", "\u{0}", "\n", "\t", "\u{1f}", "\u{7f}", "\u{2028}", "é", "😀", "</",
            ])
            .prop_map(str::to_owned),
        ];
        prop::collection::vec(piece, 0..5).prop_map(|pieces| pieces.concat())
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    prop_compose! {
        fn actor_facts()(subject in text(), issuer in proptest::option::of(text()),
                         client_id in proptest::option::of(text())) -> ActorFacts {
            ActorFacts { subject, issuer, client_id }
        }
    }

    prop_compose! {
        fn principal_facts()(issuer in text(), subject in text(),
                             client_id in proptest::option::of(text()),
                             delegation_chain in prop::collection::vec(actor_facts(), 0..3),
                             scopes in prop::collection::vec(text(), 0..3)) -> PrincipalFacts {
            PrincipalFacts { issuer, subject, client_id, delegation_chain, scopes }
        }
    }

    prop_compose! {
        fn token_facts()(jti in proptest::option::of(text()), thumbprint in text(),
                         binding in text(), key_thumbprint in proptest::option::of(text()))
                         -> TokenFacts {
            TokenFacts { jti, thumbprint, binding, key_thumbprint }
        }
    }

    prop_compose! {
        fn head()(schema in any::<u32>(), time in text(), event_id in text(),
                  request_id in text(), method in text(), path in text(),
                  status in any::<u16>(), allow in any::<bool>())
                  -> (u32, String, String, String, HttpFacts, DecisionKind) {
            let decision = if allow { DecisionKind::Allow } else { DecisionKind::Deny };
            (schema, time, event_id, request_id, HttpFacts { method, path, status }, decision)
        }
    }

    prop_compose! {
        fn audit_event()(
            (schema, time, event_id, request_id, http, decision) in head(),
            reason in proptest::option::of(text()),
            reason_detail in proptest::option::of(text()),
            mcp in prop::collection::vec(
                (text(), proptest::option::of(text()))
                    .prop_map(|(method, target)| McpCall { method, target }),
                0..3,
            ),
            session in proptest::option::of(text()),
            principal in proptest::option::of(principal_facts()),
            required_scopes in prop::collection::vec(text(), 0..3),
            token in proptest::option::of(token_facts()),
            resource in text(),
            remote_addr in proptest::option::of(text()),
            latency_us in any::<u64>(),
            arguments in proptest::option::of(prop::collection::vec(value(), 0..3)),
            cancelled in any::<bool>(),
        ) -> AuditEvent {
            let outcome = if cancelled { Outcome::Cancelled } else { Outcome::Completed };
            AuditEvent {
                schema, time, event_id, request_id, http, decision, reason, reason_detail, mcp,
                session, principal, required_scopes, token, resource, remote_addr, latency_us,
                arguments, outcome,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The oracle: the derived `Serialize` impl, through serde_json. A field added to the
        /// event and not here, a reordered field or a wrong escape decision fails this.
        #[test]
        fn same_bytes_as_serde_json(event in audit_event()) {
            let mut ours = Vec::new();
            event.write_json(&mut ours).unwrap();
            prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&event).unwrap()
            );
        }

        #[test]
        fn needs_escape_is_serde_jsons_rule(
            bytes in prop::collection::vec(prop_oneof![15 => 0x20u8.., 1 => any::<u8>()], 0..48)
        ) {
            let expected = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escape(&bytes), expected);
        }
    }

    /// Each byte serde_json escapes, alone and at each position of a chunk and its remainder.
    #[test]
    fn every_escaped_byte_is_caught_at_every_offset() {
        let escaped = (0u8..0x20).chain([b'"', b'\\']);
        for b in escaped {
            for len in [1, 7, 8, 9, 15, 16, 17, 33] {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert!(needs_escape(&bytes), "byte {b:#x} at {at} of {len}");
                    let text = String::from_utf8(bytes).unwrap();
                    let mut out = Vec::new();
                    string(&mut out, &text).unwrap();
                    assert_eq!(out, serde_json::to_vec(&text).unwrap());
                }
            }
        }
        for b in (0x20u8..=0xff).filter(|&b| b != b'"' && b != b'\\') {
            assert!(!needs_escape(&[b; 17]), "byte {b:#x}");
        }
    }
}
