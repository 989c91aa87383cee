//! Test support (feature `testing`): [`DevIssuer`] mints signed access tokens; [`DevDpopKey`]
//! signs DPoP proofs and answers nonce challenges ([`nonce_challenge`]).
//!
//! For your own tests, the quickstart, and local development. Never use a `DevIssuer` to trust
//! tokens in production: its key lives in process memory and it signs whatever you ask.
//!
//! ```
//! use tower_mcp_auth::testing::DevIssuer;
//! use tower_mcp_auth::McpAuth;
//!
//! let dev = DevIssuer::new("http://127.0.0.1:9999");
//! let auth = McpAuth::builder()
//!     .resource("http://127.0.0.1:8080/mcp")
//!     .issuer(dev.issuer_config())
//!     .build()?;
//! let token = dev.token("http://127.0.0.1:8080/mcp").scope("notes:read").sign();
//! assert_eq!(token.split('.').count(), 3);
//! # let _ = auth;
//! # Ok::<(), tower_mcp_auth::ConfigError>(())
//! ```

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value, json};

use crate::config::IssuerConfig;
use crate::keys::SigningAlgorithm;

/// A development issuer with an in-memory ES256 key.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    key: SigningKey,
}

impl DevIssuer {
    /// An issuer named `issuer` with a fresh random key.
    pub fn new(issuer: impl Into<String>) -> Self {
        let key = SigningKey::random(&mut OsRng);
        Self {
            issuer: issuer.into(),
            kid: random_id(),
            key,
        }
    }

    /// The issuer identifier (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id tokens carry in `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK object.
    pub fn public_jwk(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let x = point
            .x()
            .map(|x| URL_SAFE_NO_PAD.encode(x))
            .unwrap_or_default();
        let y = point
            .y()
            .map(|y| URL_SAFE_NO_PAD.encode(y))
            .unwrap_or_default();
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid, "x": x, "y": y})
    }

    /// The public JWK Set document.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.public_jwk()] }).to_string()
    }

    /// The public key in PEM (SPKI) form.
    pub fn public_key_pem(&self) -> String {
        use p256::pkcs8::EncodePublicKey as _;
        self.key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_default()
    }

    /// An [`IssuerConfig`] trusting this issuer's key (inline JWKS, ES256 only).
    pub fn issuer_config(&self) -> IssuerConfig {
        IssuerConfig::new(&self.issuer)
            .jwks(self.jwks_json())
            .algorithms([SigningAlgorithm::ES256])
    }

    /// Starts a token for `resource` with every RFC 9068 claim set: `iss`, `aud`, `sub`
    /// (`dev-user`), `client_id` (`dev-client`), `iat` (now), `exp` (in 10 minutes), `jti`.
    pub fn token(&self, resource: &str) -> TokenBuilder<'_> {
        let now = crate::jose::unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), resource.into());
        claims.insert("sub".into(), "dev-user".into());
        claims.insert("client_id".into(), "dev-client".into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 600).into());
        claims.insert("jti".into(), random_id().into());
        let mut header = Map::new();
        header.insert("alg".into(), "ES256".into());
        header.insert("typ".into(), "at+jwt".into());
        header.insert("kid".into(), self.kid.clone().into());
        TokenBuilder {
            issuer: self,
            header,
            claims,
        }
    }

    /// Signs arbitrary header and payload bytes with ES256: `b64(header).b64(payload).sig`.
    /// For hostile-input tests; nothing is checked.
    pub fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// A raw ES256 signature (r || s) over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.key.sign(message);
        signature.to_bytes().to_vec()
    }
}

impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A token being built by [`DevIssuer::token`].
#[derive(Debug)]
#[must_use]
pub struct TokenBuilder<'a> {
    issuer: &'a DevIssuer,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl TokenBuilder<'_> {
    /// Sets `scope` (space-separated).
    pub fn scope(self, scope: &str) -> Self {
        self.claim("scope", scope)
    }

    /// Sets `sub`.
    pub fn subject(self, subject: &str) -> Self {
        self.claim("sub", subject)
    }

    /// Sets `client_id`.
    pub fn client_id(self, client_id: &str) -> Self {
        self.claim("client_id", client_id)
    }

    /// Binds the token to a DPoP key: `cnf.jkt` = `jkt` (see [`DevDpopKey::jkt`]).
    pub fn dpop_bound(self, jkt: &str) -> Self {
        self.claim("cnf", json!({ "jkt": jkt }))
    }

    /// Sets `exp` to now plus `lifetime`.
    pub fn expires_in(self, lifetime: Duration) -> Self {
        let exp = crate::jose::unix_now() + lifetime.as_secs();
        self.claim("exp", exp)
    }

    /// Sets any claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    /// Removes a claim.
    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets a JOSE header member.
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.to_owned(), value.into());
        self
    }

    /// Removes a JOSE header member.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// Signs the token (ES256, whatever `alg` the header claims).
    pub fn sign(self) -> String {
        let header = Value::Object(self.header).to_string();
        let claims = Value::Object(self.claims).to_string();
        self.issuer.sign_raw(header.as_bytes(), claims.as_bytes())
    }
}

/// A client's DPoP key (ES256) that signs proofs: for tests, the quickstart, and Rust MCP clients
/// talking to a DPoP-protected server.
///
/// ```
/// use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
///
/// let dev = DevIssuer::new("https://as.example.com");
/// let key = DevDpopKey::new();
/// let token = dev.token("https://mcp.example.com/mcp").dpop_bound(key.jkt()).sign();
/// let proof = key.proof("POST", "https://mcp.example.com/mcp", &token);
/// // Send: `Authorization: DPoP {token}` and `DPoP: {proof}`.
/// # assert_eq!(proof.split('.').count(), 3);
/// ```
pub struct DevDpopKey {
    key: SigningKey,
    jwk: Value,
    jkt: String,
}

impl DevDpopKey {
    /// A fresh random P-256 key.
    pub fn new() -> Self {
        Self::from_signing_key(SigningKey::random(&mut OsRng))
    }

    /// An existing P-256 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), e.g. a
    /// client's long-lived DPoP key, so its `jkt` stays the same across runs. Other curves,
    /// SEC1 (`BEGIN EC PRIVATE KEY`) and encrypted PEM are refused.
    ///
    /// ```
    /// use tower_mcp_auth::testing::DevDpopKey;
    ///
    /// // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    /// let pem = "-----BEGIN PRIVATE KEY-----
    /// MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMG7xZj7Xv+Y2nIVv
    /// y0oWR6V2OTtaAN0iihEn9E4dWu6hRANCAATRtiLbear7CTKqRa2sch4zDK7osw89
    /// vgtmWxcUe6oG7JL2g24jD9YCPtxH88vpoHpq22kE45LFm53a3zImqgS/
    /// -----END PRIVATE KEY-----
    /// ";
    /// let key = DevDpopKey::from_pkcs8_pem(pem)?;
    /// // The same key, the same thumbprint, every time.
    /// assert_eq!(key.jkt(), DevDpopKey::from_pkcs8_pem(pem)?.jkt());
    /// assert!(DevDpopKey::from_pkcs8_pem("not a key").is_err());
    /// # Ok::<(), tower_mcp_auth::testing::DevKeyError>(())
    /// ```
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, DevKeyError> {
        use p256::pkcs8::DecodePrivateKey as _;
        // The decoder's error is dropped: nothing derived from key material goes into errors.
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(Self::from_signing_key)
            .map_err(|_| DevKeyError::InvalidKey)
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let point = key.verifying_key().to_encoded_point(false);
        let x = point
            .x()
            .map(|x| URL_SAFE_NO_PAD.encode(x))
            .unwrap_or_default();
        let y = point
            .y()
            .map(|y| URL_SAFE_NO_PAD.encode(y))
            .unwrap_or_default();
        // RFC 7638: required members only, sorted, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let jkt = crate::jose::thumbprint(&canonical);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        Self { key, jwk, jkt }
    }

    /// The RFC 7638 SHA-256 thumbprint: the `cnf.jkt` of tokens bound to this key.
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The public key as a JWK object (what proofs carry in their `jwk` header).
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// A fresh proof for `method` on `url`, bound to `access_token` (`ath`), issued now with a
    /// random `jti`.
    pub fn proof(&self, method: &str, url: &str, access_token: &str) -> String {
        self.proof_builder(method, url, access_token).sign()
    }

    /// A proof to adjust before signing (nonce, hostile edits).
    pub fn proof_builder(&self, method: &str, url: &str, access_token: &str) -> ProofBuilder<'_> {
        let mut header = Map::new();
        header.insert("typ".into(), "dpop+jwt".into());
        header.insert("alg".into(), "ES256".into());
        header.insert("jwk".into(), self.jwk.clone());
        let mut claims = Map::new();
        claims.insert("jti".into(), random_id().into());
        claims.insert("htm".into(), method.into());
        claims.insert("htu".into(), url.into());
        claims.insert("iat".into(), crate::jose::unix_now().into());
        claims.insert("ath".into(), crate::jose::thumbprint(access_token).into());
        ProofBuilder {
            key: self,
            header,
            claims,
        }
    }

    /// The proof to retry a request that `response` refused with `use_dpop_nonce`: a fresh
    /// proof (new `jti`, `iat` now) for `method` on `url` carrying the server's `DPoP-Nonce`.
    /// `None` when `response` is not such a refusal (see [`nonce_challenge`]), so a client
    /// retries at most once per challenge.
    ///
    /// ```
    /// use tower_mcp_auth::testing::DevDpopKey;
    ///
    /// let key = DevDpopKey::new();
    /// let refused = http::Response::builder()
    ///     .status(401)
    ///     .header("www-authenticate", r#"Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#)
    ///     .header("www-authenticate", r#"DPoP error="use_dpop_nonce", algs="ES256""#)
    ///     .header("dpop-nonce", "eyJ7S_zG.eyJH0-Z.HX4w-7v")
    ///     .body(())?;
    /// let proof = key
    ///     .retry_proof(&refused, "POST", "https://mcp.example.com/mcp", "the-token")
    ///     .expect("a nonce challenge");
    /// // The proof's payload carries the nonce.
    /// use base64::Engine as _;
    /// let payload = proof.split('.').nth(1).unwrap();
    /// let claims: serde_json::Value = serde_json::from_slice(
    ///     &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?,
    /// )?;
    /// assert_eq!(claims["nonce"], "eyJ7S_zG.eyJH0-Z.HX4w-7v");
    ///
    /// // Any other response: no retry.
    /// let ok = http::Response::builder().status(200).header("dpop-nonce", "n").body(())?;
    /// assert!(key.retry_proof(&ok, "POST", "https://mcp.example.com/mcp", "the-token").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry_proof<B>(
        &self,
        response: &http::Response<B>,
        method: &str,
        url: &str,
        access_token: &str,
    ) -> Option<String> {
        let nonce = nonce_challenge(response)?;
        Some(
            self.proof_builder(method, url, access_token)
                .nonce(nonce)
                .sign(),
        )
    }

    fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// Why [`DevDpopKey::from_pkcs8_pem`] refused a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DevKeyError {
    /// Not an unencrypted PKCS#8 PEM P-256 private key.
    #[error("not an unencrypted PKCS#8 PEM P-256 private key")]
    InvalidKey,
}

/// The nonce a resource server asks for (RFC 9449 §9): `Some` for a 401 whose `WWW-Authenticate`
/// has a `DPoP` challenge with `error="use_dpop_nonce"` and that carries one `DPoP-Nonce`
/// header with a valid nonce (RFC 9449 §8.1: one or more of `%x21 / %x23-5B / %x5D-7E`).
///
/// ```
/// use tower_mcp_auth::testing::nonce_challenge;
///
/// let refused = http::Response::builder()
///     .status(401)
///     .header("www-authenticate", r#"Bearer resource_metadata="https://x/m", DPoP error="use_dpop_nonce""#)
///     .header("dpop-nonce", "n-1")
///     .body(())?;
/// assert_eq!(nonce_challenge(&refused), Some("n-1"));
/// let bad_proof = http::Response::builder()
///     .status(401)
///     .header("www-authenticate", r#"DPoP error="invalid_dpop_proof""#)
///     .header("dpop-nonce", "n-1")
///     .body(())?;
/// assert_eq!(nonce_challenge(&bad_proof), None);
/// # Ok::<(), http::Error>(())
/// ```
pub fn nonce_challenge<B>(response: &http::Response<B>) -> Option<&str> {
    if response.status() != http::StatusCode::UNAUTHORIZED {
        return None;
    }
    let asks = response
        .headers()
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(asks_for_nonce);
    if !asks {
        return None;
    }
    let mut nonces = response.headers().get_all("dpop-nonce").iter();
    let (Some(nonce), None) = (nonces.next(), nonces.next()) else {
        return None;
    };
    nonce.to_str().ok().filter(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
    })
}

/// Whether a `WWW-Authenticate` value holds a `DPoP` challenge with `error="use_dpop_nonce"`.
/// Challenges may share one value (`Bearer …, DPoP …`); a `DPoP` scheme token starts a challenge
/// at the start of the value or after a comma.
fn asks_for_nonce(value: &str) -> bool {
    let mut in_dpop = false;
    // Split on commas outside quoted strings: good enough for the parameters servers send.
    for part in split_unquoted_commas(value) {
        let part = part.trim_start();
        let (first, rest) = part.split_once(' ').unwrap_or((part, ""));
        let param = if first.contains('=') {
            part
        } else {
            in_dpop = first.eq_ignore_ascii_case("dpop");
            rest.trim_start()
        };
        if in_dpop {
            let param = param.trim();
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("error")
                && value.trim().trim_matches('"') == "use_dpop_nonce"
            {
                return true;
            }
        }
    }
    false
}

fn split_unquoted_commas(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

impl Default for DevDpopKey {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DevDpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevDpopKey")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

/// A proof being built by [`DevDpopKey::proof_builder`].
#[derive(Debug)]
#[must_use]
pub struct ProofBuilder<'a> {
    key: &'a DevDpopKey,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl ProofBuilder<'_> {
    /// Sets the server-provided `nonce`.
    pub fn nonce(self, nonce: &str) -> Self {
        self.claim("nonce", nonce)
    }

    /// Sets `iat` (seconds since the epoch), e.g. to match a fixed
    /// [`Clock`](crate::dpop::Clock) on the server.
    pub fn issued_at(self, iat: u64) -> Self {
        self.claim("iat", iat)
    }

    /// Sets any claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    /// Removes a claim.
    pub fn without_claim(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets a JOSE header member.
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.header.insert(name.to_owned(), value.into());
        self
    }

    /// Removes a JOSE header member.
    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    /// Signs with the key (ES256, whatever the header claims).
    pub fn sign(self) -> String {
        let header = Value::Object(self.header).to_string();
        let claims = Value::Object(self.claims).to_string();
        self.key.sign_raw(header.as_bytes(), claims.as_bytes())
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
