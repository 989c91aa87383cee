//! [`IntrospectionVerifier`]: opaque tokens checked at the authorization server (RFC 7662), and
//! [`RoutingVerifier`], which sends JWTs to the JWT verifier and everything else to
//! introspection.
//!
//! The response is held to the same rules as a JWT: `active` must be the JSON boolean `true`;
//! `aud` must contain this resource; `iss`, when an issuer is configured, is required and must
//! match exactly; `exp` is required and checked with the leeway; `sub`, `client_id`, `iat` and
//! `jti` are required as [`RequiredClaims`] says (by default all four, as for JWTs; RFC 7662
//! makes them optional, so relax them with [`IntrospectionVerifier::required_claims`] or
//! `[introspection] required_claims` for an authorization server that omits them);
//! `token_type`, when present, must be `Bearer` or `DPoP` (a `DPoP` token must carry
//! `cnf.jkt`); `cnf` is honoured as for JWTs. A 200 response whose body is not a JSON object
//! means the endpoint misbehaves: 503 with `Retry-After`, as for any other endpoint failure. Verdicts are cached by
//! the [`CachingVerifier`](super::CachingVerifier) in front (default at most 60 s, never past
//! `exp`): within that window a token revoked at the authorization server is still accepted.
//! An unreachable endpoint is a 503, never an acceptance.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use url::Url;

use super::{HashedToken, RequiredClaims, TokenVerifier};
use crate::error::{AuthError, AuthErrorKind};
use crate::http_client::HttpClient;
use crate::jose::{numeric_date, string};
use crate::principal::{Binding, Confirmation, Principal, PrincipalParts};

/// Signs a client assertion: receives the `header.payload` signing input, returns the signature.
pub type AssertionSigner = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// How the resource server authenticates to the introspection endpoint.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    SecretBasic {
        /// Client id.
        client_id: String,
        /// Client secret.
        secret: String,
    },
    /// Client id and secret in the form body (`client_secret_post`).
    SecretPost {
        /// Client id.
        client_id: String,
        /// Client secret.
        secret: String,
    },
    /// A signed client assertion (`private_key_jwt`, RFC 7523) made with `sign`, which receives
    /// the `header.payload` signing input and returns the signature bytes.
    PrivateKeyJwt {
        /// Client id.
        client_id: String,
        /// The JWS `alg` of the assertion.
        alg: crate::keys::SigningAlgorithm,
        /// The `kid` of the signing key.
        kid: Option<String>,
        /// Signs the assertion.
        sign: AssertionSigner,
    },
}

impl fmt::Debug for ClientAuth {
    // Secrets and keys are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretBasic { client_id, .. } => write!(f, "SecretBasic({client_id})"),
            Self::SecretPost { client_id, .. } => write!(f, "SecretPost({client_id})"),
            Self::PrivateKeyJwt { client_id, alg, .. } => {
                write!(f, "PrivateKeyJwt({client_id}, {alg})")
            }
        }
    }
}

/// Where the introspection endpoint is.
enum Endpoint {
    Fixed(Url),
    /// The `introspection_endpoint` of the issuer metadata, found on first use.
    Discovered(Arc<crate::keys::DiscoveredKeys>),
}

/// Verifies opaque tokens at an RFC 7662 introspection endpoint.
pub struct IntrospectionVerifier {
    endpoint: Endpoint,
    auth: ClientAuth,
    resource: String,
    issuer: Option<String>,
    leeway: u64,
    required: RequiredClaims,
    client: Arc<dyn HttpClient>,
}

#[derive(Deserialize)]
struct Introspection {
    active: serde_json::Value,
    #[serde(default, deserialize_with = "string")]
    scope: Option<String>,
    #[serde(default, deserialize_with = "string")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "string")]
    token_type: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "string")]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "string")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "string")]
    jti: Option<String>,
    #[serde(default)]
    cnf: Option<CnfResponse>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CnfResponse {
    #[serde(default)]
    jkt: Option<String>,
    #[serde(default, rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

impl IntrospectionVerifier {
    /// Introspects at `endpoint`, authenticating with `auth`, for tokens meant for `resource`.
    pub fn new(
        endpoint: Url,
        auth: ClientAuth,
        resource: impl Into<String>,
        client: Arc<dyn HttpClient>,
    ) -> Self {
        Self::with_endpoint(Endpoint::Fixed(endpoint), auth, resource.into(), client)
    }

    /// Which of `sub`, `client_id`, `iat` and `jti` responses must carry (default: all four,
    /// as for JWTs). RFC 7662 makes them optional; relax this for an authorization server that
    /// omits them. A revocation list can only match what is present.
    pub fn required_claims(mut self, required: RequiredClaims) -> Self {
        self.required = required;
        self
    }

    /// Introspects at the `introspection_endpoint` of the metadata `issuer` discovers (RFC 8414,
    /// then OpenID Connect; the document's `issuer` must equal it exactly), sharing the
    /// discovery with the issuer's keys. Responses must carry that `iss`. The metadata is
    /// fetched on first use; until it is found, or when it names no introspection endpoint,
    /// opaque tokens get 503 with `Retry-After`.
    pub fn discovered(
        issuer: Arc<crate::keys::DiscoveredKeys>,
        auth: ClientAuth,
        resource: impl Into<String>,
        client: Arc<dyn HttpClient>,
    ) -> Self {
        let name = issuer.issuer().to_owned();
        Self::with_endpoint(Endpoint::Discovered(issuer), auth, resource.into(), client)
            .issuer(name)
    }

    fn with_endpoint(
        endpoint: Endpoint,
        auth: ClientAuth,
        resource: String,
        client: Arc<dyn HttpClient>,
    ) -> Self {
        Self {
            endpoint,
            auth,
            resource,
            issuer: None,
            leeway: 30,
            required: RequiredClaims::default(),
            client,
        }
    }

    /// Clock-skew leeway for `exp`, `nbf` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: std::time::Duration) -> Self {
        self.leeway = leeway.as_secs();
        self
    }

    /// Requires `iss` in every response, equal to `issuer` (a response without `iss` is
    /// refused).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The endpoint URL: fixed, or from the discovered metadata.
    async fn endpoint(&self) -> Result<std::borrow::Cow<'_, Url>, AuthError> {
        let unavailable = || AuthError::unavailable(AuthErrorKind::KeysUnavailable, 5);
        match &self.endpoint {
            Endpoint::Fixed(url) => Ok(std::borrow::Cow::Borrowed(url)),
            Endpoint::Discovered(keys) => {
                let metadata = keys.metadata().await.map_err(|_| unavailable())?;
                let Some(endpoint) = metadata.introspection_endpoint.as_deref() else {
                    tracing::warn!(
                        target: "tower_mcp_auth::introspection",
                        issuer = %keys.issuer(),
                        "the issuer metadata names no introspection_endpoint"
                    );
                    return Err(unavailable());
                };
                // Validated by discovery; parsed again here (cheap next to the request).
                Url::parse(endpoint)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|_| unavailable())
            }
        }
    }

    fn client_assertion(
        &self,
        endpoint: &Url,
        client_id: &str,
        alg: crate::keys::SigningAlgorithm,
        kid: Option<&str>,
        sign: &(dyn Fn(&[u8]) -> Vec<u8> + Send + Sync),
    ) -> String {
        let now = crate::jose::unix_now();
        let mut header = serde_json::json!({ "alg": alg.as_str(), "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": endpoint.as_str(),
            "iat": now,
            "exp": now + 60,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    async fn introspect(&self, token: &str) -> Result<Introspection, AuthError> {
        let unavailable = || AuthError::unavailable(AuthErrorKind::KeysUnavailable, 5);
        let endpoint = self.endpoint().await?;
        let mut headers = HeaderMap::new();
        let mut form: Vec<(&str, String)> = vec![
            ("token", token.to_owned()),
            ("token_type_hint", "access_token".to_owned()),
        ];
        match &self.auth {
            ClientAuth::SecretBasic { client_id, secret } => {
                // RFC 6749 §2.3.1: form-urlencode each part, then Basic.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let basic = STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)));
                let value =
                    HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| unavailable())?;
                headers.insert(AUTHORIZATION, value);
            }
            ClientAuth::SecretPost { client_id, secret } => {
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", secret.clone()));
            }
            ClientAuth::PrivateKeyJwt {
                client_id,
                alg,
                kid,
                sign,
            } => {
                let assertion = self.client_assertion(
                    &endpoint,
                    client_id,
                    *alg,
                    kid.as_deref(),
                    sign.as_ref(),
                );
                form.push(("client_id", client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let response = self
            .client
            .post_form(&endpoint, &headers, &pairs)
            .await
            .map_err(|e| {
                tracing::warn!(target: "tower_mcp_auth::introspection", error = %e, "introspection failed");
                unavailable()
            })?;
        if !response.status.is_success() {
            tracing::warn!(
                target: "tower_mcp_auth::introspection",
                status = response.status.as_u16(),
                "introspection endpoint refused the request"
            );
            return Err(unavailable());
        }
        // A 200 whose body is not a JSON object is the endpoint misbehaving, not a verdict on
        // the token: fail closed with a 503, as for a 5xx.
        let value = match serde_json::from_slice::<serde_json::Value>(&response.body) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            _ => {
                tracing::warn!(
                    target: "tower_mcp_auth::introspection",
                    "introspection endpoint answered 200 with a body that is not a JSON object"
                );
                return Err(unavailable());
            }
        };
        // An object with ill-typed members is an unacceptable verdict on this token: 401.
        serde_json::from_value(value).map_err(|_| AuthError::new(AuthErrorKind::InvalidClaim))
    }
}

#[async_trait]
impl TokenVerifier for IntrospectionVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_hashed(&HashedToken::new(token)).await
    }

    async fn verify_hashed(&self, hashed: &HashedToken<'_>) -> Result<Principal, AuthError> {
        let token = hashed.as_str();
        let r = self.introspect(token).await?;
        // Only the JSON boolean `true` means active (RFC 7662 §2.2).
        if r.active != serde_json::Value::Bool(true) {
            return Err(AuthError::new(AuthErrorKind::Revoked).with_detail("token is not active"));
        }
        let now = crate::jose::unix_now();
        let exp = r
            .exp
            .ok_or(AuthError::new(AuthErrorKind::MissingClaim).with_detail("exp"))?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(AuthErrorKind::Expired.into());
        }
        if r.nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(AuthErrorKind::NotYetValid.into());
        }
        let audience: Vec<String> = match r.aud {
            Some(serde_json::Value::String(a)) => vec![a],
            Some(serde_json::Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(AuthError::new(AuthErrorKind::InvalidClaim)),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(AuthErrorKind::InvalidClaim.into()),
            None => return Err(AuthError::new(AuthErrorKind::MissingClaim).with_detail("aud")),
        };
        if !audience.contains(&self.resource) {
            return Err(AuthErrorKind::WrongAudience.into());
        }
        let missing =
            |name: &'static str| AuthError::new(AuthErrorKind::MissingClaim).with_detail(name);
        if let Some(expected) = &self.issuer {
            match r.iss.as_deref() {
                None => return Err(missing("iss")),
                Some(iss) if iss != expected => return Err(AuthErrorKind::UntrustedIssuer.into()),
                Some(_) => {}
            }
        }
        if r.iat
            .is_some_and(|iat| iat > now.saturating_add(self.leeway))
        {
            return Err(AuthErrorKind::IssuedInFuture.into());
        }
        if let Some(name) = self.required.first_missing(
            r.sub.is_some(),
            r.client_id.is_some(),
            r.iat.is_some(),
            r.jti.is_some(),
        ) {
            return Err(missing(name));
        }
        let confirmation = match r.cnf {
            Some(CnfResponse {
                jkt: None,
                x5t_s256: None,
            }) => {
                return Err(AuthError::new(AuthErrorKind::InvalidClaim).with_detail("cnf"));
            }
            Some(c) => Some(Confirmation {
                jkt: c.jkt,
                x5t_s256: c.x5t_s256,
            }),
            None => None,
        };
        match r.token_type.as_deref() {
            None => {}
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(t)
                if t.eq_ignore_ascii_case("dpop")
                    && confirmation.as_ref().and_then(|c| c.jkt.as_ref()).is_none() =>
            {
                return Err(AuthError::new(AuthErrorKind::InvalidClaim).with_detail("cnf"));
            }
            Some(t) if t.eq_ignore_ascii_case("dpop") => {}
            Some(_) => return Err(AuthErrorKind::WrongTokenType.into()),
        }
        let scopes: BTreeSet<String> = r
            .scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let claims = serde_json::json!({
            "iss": r.iss, "sub": r.sub, "client_id": r.client_id, "aud": audience,
            "exp": exp, "iat": r.iat, "jti": r.jti, "scope": r.scope,
        });
        let raw = serde_json::value::RawValue::from_string(claims.to_string())
            .map_err(|_| AuthError::new(AuthErrorKind::InvalidClaim))?;
        Ok(Principal::new(PrincipalParts {
            issuer: r.iss.or_else(|| self.issuer.clone()).unwrap_or_default(),
            subject: r.sub.unwrap_or_default(),
            client_id: r.client_id,
            audience,
            scopes,
            delegation: Vec::new(),
            expires_at: exp,
            issued_at: r.iat,
            jti: r.jti,
            token_thumbprint: hashed.thumbprint(),
            binding: Binding::Bearer,
            confirmation,
            claims: raw,
        }))
    }
}

impl fmt::Debug for IntrospectionVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionVerifier")
            .field(
                "endpoint",
                &match &self.endpoint {
                    Endpoint::Fixed(url) => url.as_str(),
                    Endpoint::Discovered(_) => "(discovered)",
                },
            )
            .field("auth", &self.auth)
            .field("resource", &self.resource)
            .field("issuer", &self.issuer)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Sends JWT-shaped tokens (three segments whose header is a JSON object naming `alg`) to the
/// JWT verifier and all other tokens to introspection.
#[derive(Debug)]
pub struct RoutingVerifier {
    jwt: Arc<dyn TokenVerifier>,
    opaque: Arc<dyn TokenVerifier>,
}

impl RoutingVerifier {
    /// Routes between `jwt` and `opaque`.
    pub fn new(jwt: Arc<dyn TokenVerifier>, opaque: Arc<dyn TokenVerifier>) -> Self {
        Self { jwt, opaque }
    }
}

fn looks_like_jwt(token: &str) -> bool {
    crate::jose::CompactJws::split(token)
        .and_then(|jws| jws.header().ok())
        .is_some_and(|header| names_alg(&header))
}

/// Whether `header` is exactly one JSON object with an `alg` member. Keys are compared as they
/// stream past and values are skipped, so nothing is built (the same verdict as parsing into a
/// `Map`, which the tests check).
fn names_alg(header: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    /// A member name: whether it is `alg` (escaped or not).
    struct IsAlg(bool);

    impl<'de> Deserialize<'de> for IsAlg {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Name;
            impl Visitor<'_> for Name {
                type Value = IsAlg;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_str<E>(self, name: &str) -> Result<IsAlg, E> {
                    Ok(IsAlg(name == "alg"))
                }
            }
            deserializer.deserialize_str(Name)
        }
    }

    /// A JSON object: whether any member is named `alg`.
    struct HasAlg(bool);

    impl<'de> Deserialize<'de> for HasAlg {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Object;
            impl<'de> Visitor<'de> for Object {
                type Value = HasAlg;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HasAlg, A::Error> {
                    let mut alg = false;
                    while let Some(IsAlg(is_alg)) = map.next_key()? {
                        alg |= is_alg;
                        map.next_value::<IgnoredAny>()?;
                    }
                    Ok(HasAlg(alg))
                }
            }
            deserializer.deserialize_map(Object)
        }
    }

    // UTF-8 first: skipped values are not checked for it, and a `Map` parse would refuse them.
    std::str::from_utf8(header)
        .is_ok_and(|header| serde_json::from_str::<HasAlg>(header).is_ok_and(|HasAlg(alg)| alg))
}

#[async_trait]
impl TokenVerifier for RoutingVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if looks_like_jwt(token) {
            self.jwt.verify(token).await
        } else {
            self.opaque.verify(token).await
        }
    }

    async fn verify_hashed(&self, token: &HashedToken<'_>) -> Result<Principal, AuthError> {
        if looks_like_jwt(token.as_str()) {
            self.jwt.verify_hashed(token).await
        } else {
            self.opaque.verify_hashed(token).await
        }
    }

    /// Routed as [`verify`](Self::verify) is, so a cached verdict on either side is at hand.
    fn verify_now(&self, token: &HashedToken<'_>) -> Option<Result<Principal, AuthError>> {
        if looks_like_jwt(token.as_str()) {
            self.jwt.verify_now(token)
        } else {
            self.opaque.verify_now(token)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The definition `names_alg` replaces: parse into a `Map`, look for `alg`.
    fn names_alg_by_map(header: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(header)
            .is_ok_and(|h| h.contains_key("alg"))
    }

    #[test]
    fn names_alg_table() {
        for (header, expected) in [
            (r#"{"alg":"ES256","typ":"at+jwt"}"#, true),
            (r#"{"typ":"at+jwt","alg":null}"#, true),
            (r#" { "alg" : {"nested": [1, 2]} } "#, true),
            (r#"{"al\u0067":"ES256"}"#, true),
            (r#"{"alg":"a","alg":"b"}"#, true),
            (r#"{"typ":"at+jwt"}"#, false),
            (r#"{"x":{"alg":"ES256"}}"#, false),
            (r#"{"ALG":"ES256"}"#, false),
            (r#"{"alg ":"ES256"}"#, false),
            ("{}", false),
            (r#"["alg"]"#, false),
            (r#""alg""#, false),
            (r#"{"alg":"ES256"} {}"#, false),
            (r#"{"alg":"ES256""#, false),
            (r#"{"alg":"ES256",}"#, false),
            (r#"{"alg":01}"#, false),
            ("", false),
        ] {
            assert_eq!(names_alg(header.as_bytes()), expected, "{header}");
            assert_eq!(
                names_alg_by_map(header.as_bytes()),
                expected,
                "{header} (by map)"
            );
        }
        assert!(
            !names_alg(b"{\"alg\":\"\xff\"}"),
            "invalid UTF-8 is not JSON"
        );
    }

    #[test]
    fn routes_by_shape() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#);
        assert!(looks_like_jwt(&format!("{header}.e30.c2ln")));
        assert!(!looks_like_jwt(&format!("{header}.e30")));
        assert!(!looks_like_jwt("2YotnFZFEjr1zCsicMWpAA"));
        let no_alg = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT"}"#);
        assert!(!looks_like_jwt(&format!("{no_alg}.e30.c2ln")));
    }

    /// Says which side it is through the error kind of its verdicts.
    #[derive(Debug)]
    struct Side(AuthErrorKind);

    #[async_trait]
    impl TokenVerifier for Side {
        async fn verify(&self, _token: &str) -> Result<Principal, AuthError> {
            Err(self.0.into())
        }

        fn verify_now(&self, _token: &HashedToken<'_>) -> Option<Result<Principal, AuthError>> {
            Some(Err(self.0.into()))
        }
    }

    #[tokio::test]
    async fn verdicts_at_hand_are_routed_as_verify_routes() {
        let jwt = Arc::new(Side(AuthErrorKind::Revoked));
        let opaque = Arc::new(Side(AuthErrorKind::Expired));
        let router = RoutingVerifier::new(jwt, opaque);
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#);
        for (token, side) in [
            (format!("{header}.e30.c2ln"), AuthErrorKind::Revoked),
            ("2YotnFZFEjr1zCsicMWpAA".to_owned(), AuthErrorKind::Expired),
            (format!("{header}.e30"), AuthErrorKind::Expired),
        ] {
            let now = router
                .verify_now(&HashedToken::new(&token))
                .map(|v| v.unwrap_err().kind());
            assert_eq!(now, Some(side), "{token}: verify_now");
            let later = router.verify(&token).await.unwrap_err().kind();
            assert_eq!(later, side, "{token}: verify");
        }
    }

    proptest! {
        #[test]
        fn names_alg_agrees_with_a_map_parse(
            keys in prop::collection::vec("(alg|typ|kid|al|a\\\\u006cg|x)", 0..4),
            junk in "[ {}\\[\\],:\"a-z0-9]{0,12}",
        ) {
            let members: Vec<String> = keys.iter().map(|k| format!("\"{k}\":1")).collect();
            let object = format!("{{{}}}", members.join(","));
            for header in [object.clone(), junk.clone(), format!("{object}{junk}")] {
                let by_map = names_alg_by_map(header.as_bytes());
                prop_assert_eq!(names_alg(header.as_bytes()), by_map, "{}", header);
            }
        }
    }
}
