//! [`JwtVerifier`]: RFC 9068 JWT access tokens, verified as RFC 8725 asks.
//!
//! The pipeline, cheapest checks first: size; compact-JWS shape (three base64url segments, no
//! padding); the JOSE header (a JSON object with no duplicate members; no `crit`; not a JWE;
//! `typ` `at+jwt`; `alg` allowed); the claims (typed strictly, parsed once); the issuer (exact
//! match, selecting that issuer's keys and algorithms only); the key (by `kid`, bound to one
//! algorithm); the signature; then time, audience, required claims and binding.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::{HashedToken, TokenVerifier};
use crate::error::{AuthError, AuthErrorKind};
use crate::jose::{CompactJws, json_object, numeric_date, present, string};
use crate::keys::{
    AlgorithmSet, KeyLookupError, KeySet, KeySource, MAX_KID_LEN, RefreshReason, SigningAlgorithm,
};
use crate::principal::{Actor, Binding, Confirmation, Principal, PrincipalParts};

/// Deepest `act` nesting read; deeper chains are refused.
const MAX_ACT_DEPTH: usize = 16;

/// One trusted issuer: its exact `iss`, its keys and the algorithms its tokens may use.
#[derive(Clone)]
pub struct TrustedIssuer {
    issuer: String,
    keys: Arc<dyn KeySource>,
    algorithms: AlgorithmSet,
    required: Option<RequiredClaims>,
}

impl TrustedIssuer {
    /// Tokens whose `iss` equals `issuer` exactly are verified with `keys`, using any asymmetric
    /// algorithm by default.
    pub fn new(issuer: impl Into<String>, keys: Arc<dyn KeySource>) -> Self {
        Self {
            issuer: issuer.into(),
            keys,
            algorithms: AlgorithmSet::ASYMMETRIC,
            required: None,
        }
    }

    /// The claims this issuer's tokens must carry, instead of the verifier's default.
    pub fn required_claims(mut self, required: RequiredClaims) -> Self {
        self.required = Some(required);
        self
    }

    /// The key source's counters, if it keeps any.
    pub fn key_stats(&self) -> Option<crate::keys::KeySourceStats> {
        self.keys.stats()
    }

    /// Restricts (or, for HMAC with a shared secret, extends) the allowed algorithms.
    pub fn algorithms(mut self, algorithms: AlgorithmSet) -> Self {
        self.algorithms = algorithms;
        self
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The allowed algorithms.
    pub fn allowed_algorithms(&self) -> AlgorithmSet {
        self.algorithms
    }
}

impl fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedIssuer")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// Which RFC 9068 §2.2 claims must be present (`iss`, `aud` and `exp` always are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RequiredClaims {
    /// `sub`.
    pub sub: bool,
    /// `client_id`.
    pub client_id: bool,
    /// `iat`.
    pub iat: bool,
    /// `jti`.
    pub jti: bool,
}

impl RequiredClaims {
    /// The first required claim that is absent, given which of `sub`, `client_id`, `iat` and
    /// `jti` are present (the order the checks report them in).
    pub(crate) fn first_missing(
        &self,
        sub: bool,
        client_id: bool,
        iat: bool,
        jti: bool,
    ) -> Option<&'static str> {
        [
            (self.sub && !sub, "sub"),
            (self.client_id && !client_id, "client_id"),
            (self.iat && !iat, "iat"),
            (self.jti && !jti, "jti"),
        ]
        .into_iter()
        .find_map(|(missing, name)| missing.then_some(name))
    }
}

impl Default for RequiredClaims {
    fn default() -> Self {
        Self {
            sub: true,
            client_id: true,
            iat: true,
            jti: true,
        }
    }
}

/// Verifies RFC 9068 JWT access tokens for one resource.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    resource: String,
    issuers: Vec<TrustedIssuer>,
    leeway: u64,
    required: RequiredClaims,
    max_lifetime: Option<u64>,
    accept_untyped: bool,
    max_token_len: usize,
    clock: fn() -> u64,
}

impl JwtVerifier {
    /// A verifier accepting tokens whose `aud` contains `resource` (the canonical URI, compared
    /// exactly), from the given issuers.
    pub fn new(resource: impl Into<String>, issuers: Vec<TrustedIssuer>) -> Self {
        Self {
            inner: Arc::new(Inner {
                resource: resource.into(),
                issuers,
                leeway: 30,
                required: RequiredClaims::default(),
                max_lifetime: None,
                accept_untyped: false,
                max_token_len: 8 * 1024,
                clock: crate::jose::unix_now,
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configure a JwtVerifier before cloning it")
    }

    /// Clock-skew leeway for `exp`, `nbf` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.inner_mut().leeway = leeway.as_secs();
        self
    }

    /// Which claims must be present (default: `sub`, `client_id`, `iat`, `jti`).
    pub fn required_claims(mut self, required: RequiredClaims) -> Self {
        self.inner_mut().required = required;
        self
    }

    /// Refuse tokens whose `exp - iat` exceeds `max` (needs `iat`).
    pub fn max_lifetime(mut self, max: Option<Duration>) -> Self {
        self.inner_mut().max_lifetime = max.map(|d| d.as_secs());
        self
    }

    /// Accept tokens without `typ`, or with the generic `typ` `JWT` / `application/jwt`
    /// (case-insensitive), from issuers that do not type their access tokens. Off by default:
    /// `typ` is what tells an access token from an ID token.
    ///
    /// Even with this on, every other `typ` is refused (401 `invalid_token`,
    /// [`AuthErrorKind::WrongTokenType`]): a token that says it is something else (`id+jwt`,
    /// `dpop+jwt`, `logout+jwt`, …) is never taken for an access token. The opt-in only
    /// relaxes the header check; `iss`, `aud`, `exp`, the signature and the required claims are
    /// verified as always.
    pub fn accept_untyped_tokens(mut self, accept: bool) -> Self {
        self.inner_mut().accept_untyped = accept;
        self
    }

    /// Longest token accepted, in bytes (default 8 KiB).
    pub fn max_token_len(mut self, max: usize) -> Self {
        self.inner_mut().max_token_len = max;
        self
    }

    #[cfg(all(test, feature = "testing"))]
    pub(crate) fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.inner_mut().clock = clock;
        self
    }

    /// The canonical resource URI tokens must be issued for.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> &[TrustedIssuer] {
        &self.inner.issuers
    }

    /// Verifies `token`, returning the caller on success.
    pub async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_hashed_token(&HashedToken::new(token)).await
    }

    async fn verify_hashed_token(&self, hashed: &HashedToken<'_>) -> Result<Principal, AuthError> {
        let token = hashed.as_str();
        let inner = &*self.inner;
        let parsed = parse(token, inner)?;
        let issuer = parsed
            .claims
            .iss
            .as_deref()
            .ok_or(AuthError::new(AuthErrorKind::MissingClaim).with_detail("iss"))?;
        let trusted = inner
            .issuers
            .iter()
            .find(|t| t.issuer == issuer)
            .ok_or(AuthErrorKind::UntrustedIssuer)?;
        if !trusted.algorithms.contains(parsed.alg) {
            return Err(AuthErrorKind::AlgorithmNotAllowed.into());
        }
        let kid = parsed.kid.as_deref();
        let keys = keys_for(trusted, kid, parsed.alg).await?;
        let key = match keys.find(kid, parsed.alg) {
            Ok(key) => key,
            Err(KeyLookupError::AlgorithmMismatch) => {
                return Err(AuthErrorKind::AlgorithmNotAllowed.into());
            }
            Err(KeyLookupError::NotFound) => return Err(AuthErrorKind::UnknownKey.into()),
            Err(KeyLookupError::Ambiguous) => {
                return Err(AuthError::new(AuthErrorKind::UnknownKey).with_detail("ambiguous kid"));
            }
        };
        if !key.verify(parsed.signing_input.as_bytes(), &parsed.signature) {
            return Err(AuthErrorKind::InvalidSignature.into());
        }
        let required = trusted.required.unwrap_or(inner.required);
        validate_claims(parsed.claims, &parsed.payload, hashed, inner, required)
    }
}

#[async_trait]
impl TokenVerifier for JwtVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_token(token).await
    }

    async fn verify_hashed(&self, token: &HashedToken<'_>) -> Result<Principal, AuthError> {
        self.verify_hashed_token(token).await
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("resource", &self.inner.resource)
            .field("issuers", &self.inner.issuers)
            .field("leeway", &self.inner.leeway)
            .field("required", &self.inner.required)
            .field("max_lifetime", &self.inner.max_lifetime)
            .field("accept_untyped", &self.inner.accept_untyped)
            .finish_non_exhaustive()
    }
}

/// The current keys, refreshing once when they are missing, expired, or lack the token's key.
async fn keys_for(
    trusted: &TrustedIssuer,
    kid: Option<&str>,
    alg: SigningAlgorithm,
) -> Result<Arc<KeySet>, AuthError> {
    let unavailable = |_| AuthError::unavailable(AuthErrorKind::KeysUnavailable, 30);
    let keys = match trusted.keys.current() {
        Some(keys) => keys,
        None => trusted
            .keys
            .refresh(RefreshReason::Expired)
            .await
            .map_err(unavailable)?,
    };
    if matches!(
        keys.find(kid, alg),
        Err(KeyLookupError::NotFound | KeyLookupError::Ambiguous)
    ) {
        // A rotation may have added the key (or removed a duplicate). The source rate-limits this; if it cannot fetch,
        // the token is simply not signed by a key we know.
        if let Ok(fresh) = trusted
            .keys
            .refresh(RefreshReason::UnknownKey { kid })
            .await
        {
            return Ok(fresh);
        }
    }
    Ok(keys)
}

/// A token split, decoded and typed, not yet verified.
struct Parsed<'t> {
    alg: SigningAlgorithm,
    kid: Option<String>,
    signing_input: &'t str,
    signature: Vec<u8>,
    payload: Vec<u8>,
    claims: Claims,
}

/// The JOSE header members this crate reads. Duplicate members are refused by serde.
#[derive(Deserialize)]
struct Header<'a> {
    // Cow: escaped strings (`"application\/at+jwt"`) are legal JSON and cannot be borrowed.
    #[serde(borrow)]
    alg: Cow<'a, str>,
    // `null` is not "absent": a member of the wrong JSON type is refused.
    #[serde(default, borrow, deserialize_with = "header_string")]
    typ: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "header_string")]
    kid: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    enc: bool,
    #[serde(default, deserialize_with = "present")]
    zip: bool,
    #[serde(default, deserialize_with = "present")]
    b64: bool,
}

/// A JOSE header string, borrowed when it has no escapes; `null` and other types are errors.
fn header_string<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Text::deserialize(d).map(|text| Some(text.0))
}

fn parse<'t>(token: &'t str, inner: &Inner) -> Result<Parsed<'t>, AuthError> {
    if token.len() > inner.max_token_len {
        return Err(AuthErrorKind::TokenTooLarge.into());
    }
    let malformed = || AuthError::new(AuthErrorKind::MalformedToken);
    let jws = CompactJws::split(token).ok_or_else(malformed)?;
    let header_bytes = jws.header()?;
    let header: Header<'_> = json_object(&header_bytes, AuthErrorKind::MalformedToken)?;
    if header.enc || header.zip || header.b64 {
        return Err(malformed());
    }
    if header.crit {
        return Err(AuthErrorKind::UnsupportedCriticalHeader.into());
    }
    check_typ(header.typ.as_deref(), inner.accept_untyped)?;
    let alg = SigningAlgorithm::from_alg(&header.alg).ok_or(AuthErrorKind::AlgorithmNotAllowed)?;
    let kid = match header.kid {
        Some(kid) if kid.len() > MAX_KID_LEN => return Err(AuthErrorKind::UnknownKey.into()),
        Some(kid) => Some(kid.into_owned()),
        None => None,
    };
    let payload = jws.payload()?;
    let claims: Claims = json_object(&payload, AuthErrorKind::InvalidClaim)?;
    let signature = jws.signature()?;
    let signing_input = jws.signing_input();
    Ok(Parsed {
        alg,
        kid,
        signing_input,
        signature,
        payload,
        claims,
    })
}

/// `at+jwt` / `application/at+jwt` always; with the opt-in, also no `typ` or the generic
/// `JWT` / `application/jwt`; nothing else, ever.
fn check_typ(typ: Option<&str>, accept_untyped: bool) -> Result<(), AuthError> {
    let is = |t: &str, v: &str| t.eq_ignore_ascii_case(v);
    match typ {
        Some(t) if is(t, "at+jwt") || is(t, "application/at+jwt") => Ok(()),
        None if accept_untyped => Ok(()),
        Some(t) if accept_untyped && (is(t, "JWT") || is(t, "application/jwt")) => Ok(()),
        _ => Err(AuthErrorKind::WrongTokenType.into()),
    }
}

/// The registered claims, strictly typed: a claim of the wrong JSON type fails the parse.
#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "string")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "string")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "string")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "string")]
    jti: Option<String>,
    #[serde(default, deserialize_with = "strings")]
    aud: Option<Vec<String>>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default, deserialize_with = "string")]
    scope: Option<String>,
    #[serde(default, deserialize_with = "strings")]
    scp: Option<Vec<String>>,
    #[serde(default, deserialize_with = "act")]
    act: Option<ActClaim>,
    #[serde(default, deserialize_with = "cnf")]
    cnf: Option<Confirmation>,
}

/// `cnf` must be an object with exactly the members this crate can check: `jkt` (DPoP) and/or
/// `x5t#S256` (mTLS). Any other confirmation method is refused: it cannot be honoured.
fn cnf<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Confirmation>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cnf {
        #[serde(default, deserialize_with = "string")]
        jkt: Option<String>,
        #[serde(default, rename = "x5t#S256", deserialize_with = "string")]
        x5t_s256: Option<String>,
    }
    let cnf = Cnf::deserialize(d)?;
    if cnf.jkt.is_none() && cnf.x5t_s256.is_none() {
        return Err(de::Error::custom(
            "cnf names no supported confirmation method",
        ));
    }
    Ok(Some(Confirmation {
        jkt: cnf.jkt,
        x5t_s256: cnf.x5t_s256,
    }))
}

#[derive(Deserialize)]
struct ActClaim {
    sub: String,
    #[serde(default, deserialize_with = "string")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "string")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "act")]
    act: Option<Box<ActClaim>>,
}

fn act<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A string or an array of strings (`aud`, `scp`).
fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

fn validate_claims(
    claims: Claims,
    payload: &[u8],
    token: &HashedToken<'_>,
    inner: &Inner,
    required: RequiredClaims,
) -> Result<Principal, AuthError> {
    let missing =
        |name: &'static str| AuthError::new(AuthErrorKind::MissingClaim).with_detail(name);
    let now = (inner.clock)();
    let leeway = inner.leeway;

    let exp = claims.exp.ok_or_else(|| missing("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthErrorKind::Expired.into());
    }
    if let Some(nbf) = claims.nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthErrorKind::NotYetValid.into());
    }
    if let Some(iat) = claims.iat
        && iat > now.saturating_add(leeway)
    {
        return Err(AuthErrorKind::IssuedInFuture.into());
    }
    let audience = claims.aud.ok_or_else(|| missing("aud"))?;
    if !audience.contains(&inner.resource) {
        return Err(AuthErrorKind::WrongAudience.into());
    }
    if let Some(name) = required.first_missing(
        claims.sub.is_some(),
        claims.client_id.is_some(),
        claims.iat.is_some(),
        claims.jti.is_some(),
    ) {
        return Err(missing(name));
    }
    if let Some(max) = inner.max_lifetime {
        let iat = claims.iat.ok_or_else(|| missing("iat"))?;
        if exp.saturating_sub(iat) > max {
            return Err(AuthErrorKind::LifetimeTooLong.into());
        }
    }

    let mut scopes = BTreeSet::new();
    if let Some(scope) = &claims.scope {
        scopes.extend(
            scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
    }
    if let Some(scp) = claims.scp {
        for entry in scp {
            scopes.extend(
                entry
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
    }

    let mut delegation = Vec::new();
    let mut next = claims.act.map(Box::new);
    while let Some(actor) = next {
        if delegation.len() == MAX_ACT_DEPTH {
            return Err(AuthError::new(AuthErrorKind::InvalidClaim).with_detail("act"));
        }
        let actor = *actor;
        delegation.push(Actor {
            subject: actor.sub,
            issuer: actor.iss,
            client_id: actor.client_id,
        });
        next = actor.act;
    }

    let raw = std::str::from_utf8(payload)
        .ok()
        .and_then(|s| serde_json::value::RawValue::from_string(s.to_owned()).ok())
        .ok_or(AuthErrorKind::MalformedToken)?;

    Ok(Principal::new(PrincipalParts {
        issuer: claims.iss.unwrap_or_default(),
        subject: claims.sub.unwrap_or_default(),
        client_id: claims.client_id,
        audience,
        scopes,
        delegation,
        expires_at: exp,
        issued_at: claims.iat,
        jti: claims.jti,
        token_thumbprint: token.thumbprint(),
        binding: Binding::Bearer,
        confirmation: claims.cnf,
        claims: raw,
    }))
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::jose::thumbprint;
    use crate::keys::StaticKeys;
    use crate::testing::DevIssuer;

    const RESOURCE: &str = "https://mcp.example.com/mcp";
    const NOW: u64 = 1_800_000_000;

    fn verifier(dev: &DevIssuer) -> JwtVerifier {
        let keys = StaticKeys::new(KeySet::from_jwks_json(dev.jwks_json().as_bytes()).unwrap());
        JwtVerifier::new(
            RESOURCE,
            vec![TrustedIssuer::new(dev.issuer(), Arc::new(keys))],
        )
        .with_clock(|| NOW)
    }

    fn at(dev: &DevIssuer, iat: u64, exp: u64) -> String {
        dev.token(RESOURCE)
            .claim("iat", iat)
            .claim("exp", exp)
            .sign()
    }

    #[tokio::test]
    async fn leeway_boundaries() {
        let dev = DevIssuer::new("https://as.example.com");
        let v = verifier(&dev);
        let kind = |r: Result<Principal, AuthError>| r.err().map(|e| e.kind());
        // exp: accepted until exp + 30 s, refused from then on.
        assert_eq!(
            kind(v.verify_token(&at(&dev, NOW - 100, NOW - 29)).await),
            None
        );
        assert_eq!(
            kind(v.verify_token(&at(&dev, NOW - 100, NOW - 30)).await),
            Some(AuthErrorKind::Expired)
        );
        // iat: up to 30 s in the future.
        assert_eq!(
            kind(v.verify_token(&at(&dev, NOW + 30, NOW + 100)).await),
            None
        );
        assert_eq!(
            kind(v.verify_token(&at(&dev, NOW + 31, NOW + 100)).await),
            Some(AuthErrorKind::IssuedInFuture)
        );
        let nbf = dev
            .token(RESOURCE)
            .claim("iat", NOW)
            .claim("exp", NOW + 60)
            .claim("nbf", NOW + 31)
            .sign();
        assert_eq!(
            kind(v.verify_token(&nbf).await),
            Some(AuthErrorKind::NotYetValid)
        );
    }

    #[test]
    fn typ_opt_in_accepts_only_untyped_or_generic_jwt() {
        let ok = |typ: Option<&str>, untyped: bool| check_typ(typ, untyped).is_ok();
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+JWT",
        ] {
            assert!(ok(Some(typ), false), "{typ}");
            assert!(ok(Some(typ), true), "{typ}");
        }
        for typ in [None, Some("JWT"), Some("jwt"), Some("application/jwt")] {
            assert!(!ok(typ, false), "{typ:?} refused by default");
            assert!(ok(typ, true), "{typ:?} accepted with the opt-in");
        }
        for typ in [
            "id+jwt",
            "dpop+jwt",
            "logout+jwt",
            "secevent+jwt",
            "at+jwt ",
            "application/jwt+at",
            "",
            "JWS",
        ] {
            assert!(!ok(Some(typ), false), "{typ:?}");
            assert!(!ok(Some(typ), true), "{typ:?} refused even with the opt-in");
        }
    }

    #[tokio::test]
    async fn max_lifetime() {
        let dev = DevIssuer::new("https://as.example.com");
        let v = verifier(&dev).max_lifetime(Some(Duration::from_secs(600)));
        assert!(v.verify_token(&at(&dev, NOW, NOW + 600)).await.is_ok());
        assert_eq!(
            v.verify_token(&at(&dev, NOW, NOW + 601))
                .await
                .unwrap_err()
                .kind(),
            AuthErrorKind::LifetimeTooLong
        );
    }

    #[tokio::test]
    async fn principal_fields() {
        let dev = DevIssuer::new("https://as.example.com");
        let token = dev
            .token(RESOURCE)
            .claim("iat", NOW)
            .claim("exp", NOW + 60)
            .claim("aud", serde_json::json!(["https://other", RESOURCE]))
            .scope("a b")
            .claim("scp", serde_json::json!(["c", "a"]))
            .claim("act", serde_json::json!({"sub": "agent-1", "client_id": "c1", "act": {"sub": "agent-0", "iss": "https://x"}}))
            .claim("tenant", "t-42")
            .sign();
        let p = verifier(&dev).verify_token(&token).await.unwrap();
        assert_eq!(p.issuer(), "https://as.example.com");
        assert_eq!(p.subject(), "dev-user");
        assert_eq!(p.client_id(), Some("dev-client"));
        assert_eq!(
            p.scopes().iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(p.delegation_chain().len(), 2);
        assert_eq!(p.actor().unwrap().subject, "agent-1");
        assert_eq!(p.delegation_chain()[1].issuer.as_deref(), Some("https://x"));
        assert_eq!(p.expires_at_unix(), NOW + 60);
        assert_eq!(p.token_thumbprint(), thumbprint(&token));
        assert_eq!(
            p.claim::<String>("tenant").unwrap().as_deref(),
            Some("t-42")
        );
        assert_eq!(p.claim::<String>("absent").unwrap(), None);
        assert!(!format!("{p:?}").contains(&token));
    }

    #[tokio::test]
    async fn deep_act_chain_is_refused() {
        let dev = DevIssuer::new("https://as.example.com");
        let mut act = serde_json::json!({"sub": "a"});
        for _ in 0..MAX_ACT_DEPTH {
            act = serde_json::json!({"sub": "a", "act": act});
        }
        let token = dev
            .token(RESOURCE)
            .claim("iat", NOW)
            .claim("exp", NOW + 60)
            .claim("act", act)
            .sign();
        assert_eq!(
            verifier(&dev)
                .verify_token(&token)
                .await
                .unwrap_err()
                .kind(),
            AuthErrorKind::InvalidClaim
        );
    }
}
