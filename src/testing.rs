//! Test support (feature `testing`): [`DevIssuer`] mints signed access tokens.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        let now = now();
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
        let exp = now() + lifetime.as_secs();
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
        let key = SigningKey::random(&mut OsRng);
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
        claims.insert("iat".into(), now().into());
        claims.insert("ath".into(), crate::jose::thumbprint(access_token).into());
        ProofBuilder {
            key: self,
            header,
            claims,
        }
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
