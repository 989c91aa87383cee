//! [`AuthError`]: why a request was refused, and the one place that turns that into a status,
//! a `WWW-Authenticate` challenge and a JSON body.
//!
//! Every rejection the layers make goes through [`AuthError::to_response`]. The error is also
//! attached to the response extensions, so an outer layer (audit, metrics) can read *why* a
//! request was refused without parsing headers.
//!
//! Descriptions are fixed strings chosen by this crate: nothing the client sent is ever reflected
//! into a header or body, which keeps challenges well-formed and free of injected content.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Why a request was refused. Stable across releases: [`AuthErrorKind::as_str`] is the code the
/// audit events record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// No credentials were sent, or they used a scheme this server does not take. 401, no `error`.
    MissingCredentials,
    /// More than one `Authorization` header, or more than one way of sending a token.
    MultipleCredentials,
    /// The `Authorization` header is not `scheme SP token68`, is not visible ASCII, or is too long.
    MalformedAuthorization,
    /// A token was sent in the URI query string (`access_token=`), which OAuth 2.1 forbids.
    TokenInQuery,
    /// A form-encoded body was sent to a protected endpoint (a token may hide in it).
    FormEncodedBody,
    /// The `DPoP` scheme was used but no DPoP proof layer is configured.
    DpopNotEnabled,
    /// The token is not a compact JWS: wrong segment count, bad base64url, bad JSON, or a JWE.
    MalformedToken,
    /// The token is longer than the configured maximum.
    TokenTooLarge,
    /// The JOSE header `typ` is missing or not `at+jwt` / `application/at+jwt`.
    WrongTokenType,
    /// The JOSE header `alg` is not in the allow-list, or does not match the key.
    AlgorithmNotAllowed,
    /// The JOSE header lists a critical extension (`crit`) this crate does not understand.
    UnsupportedCriticalHeader,
    /// No trusted key matches the token's `kid` and `alg`.
    UnknownKey,
    /// The signature does not verify.
    InvalidSignature,
    /// `iss` is not a trusted issuer.
    UntrustedIssuer,
    /// `aud` does not contain this server's canonical resource URI.
    WrongAudience,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    IssuedInFuture,
    /// `exp - iat` exceeds the configured maximum lifetime.
    LifetimeTooLong,
    /// A claim this server requires is absent.
    MissingClaim,
    /// A claim has the wrong JSON type or an unusable value.
    InvalidClaim,
    /// The token is sender-constrained (`cnf`) but no matching proof of possession was presented.
    MissingProofOfPossession,
    /// The token has been revoked.
    Revoked,
    /// The token is valid but lacks a scope the operation needs. 403 `insufficient_scope`.
    InsufficientScope,
    /// The token is valid but the policy refuses the operation, and no scope can cure it. 403.
    AccessDenied,
    /// The keys needed to verify the token cannot be obtained right now. 503 with `Retry-After`.
    KeysUnavailable,
    /// No verified principal reached the policy layer (a missing or misordered token layer).
    NoPrincipal,
    /// The JSON-RPC body cannot be read unambiguously (not UTF-8, a BOM, not JSON, a duplicate
    /// member, too deep, not an object, no `jsonrpc: "2.0"`). 400.
    MalformedMessage,
    /// The request body is not `application/json`, or has a `Content-Encoding`. 400.
    UnsupportedContent,
    /// The request body exceeds the configured limit. 413.
    BodyTooLarge,
    /// `Mcp-Method` / `Mcp-Name` headers disagree with the body. 400.
    HeaderMismatch,
    /// A JSON-RPC batch was sent and batches are refused by configuration. 400.
    BatchRefused,
    /// The `Mcp-Session-Id` belongs to another principal. 404.
    SessionNotOwned,
    /// The `Mcp-Session-Id` is not bound to anyone (never minted here, ended, or expired).
    /// 404, indistinguishable from [`SessionNotOwned`](Self::SessionNotOwned) for the client.
    UnknownSession,
    /// The session store is full; a new `initialize` is refused rather than forgetting a live
    /// binding. 503 with `Retry-After`.
    SessionStoreFull,
    /// The principal already holds as many sessions as one principal may; a new `initialize`
    /// is refused. 429 with `Retry-After`.
    TooManySessions,
    /// The HTTP method is not one the MCP endpoint accepts (`GET`, `POST`, `DELETE`). 405 with
    /// `Allow`.
    MethodNotAllowed,
    /// The audit queue is full and the overflow policy refuses requests. 503.
    AuditUnavailable,
    /// The `DPoP` scheme was used without a `DPoP` proof header. 400.
    MissingDpopProof,
    /// More than one `DPoP` header, or one holding more than a compact JWS. 400.
    MultipleDpopProofs,
    /// The DPoP proof is invalid (syntax, `typ`, `alg`, `jwk`, signature, `htm`, `htu`, `iat`,
    /// `ath`, `jti`). 401 `invalid_dpop_proof`.
    InvalidDpopProof,
    /// The DPoP proof's `jti` was already used (a replay). 401 `invalid_dpop_proof`.
    DpopReplay,
    /// The server requires a fresh nonce in the proof. 401 `use_dpop_nonce` with `DPoP-Nonce`.
    UseDpopNonce,
    /// The proof key does not match the token's `cnf.jkt`. 401 `invalid_token`.
    DpopKeyMismatch,
    /// Only DPoP-bound tokens are accepted and this one is not. 401 `invalid_token`.
    DpopRequired,
    /// The replay store is full; new proofs are refused until entries expire. 503.
    ReplayStoreFull,
    /// The token is bound to a client certificate (`cnf.x5t#S256`) that was not presented. 401.
    CertificateMismatch,
}

impl AuthErrorKind {
    /// Every kind, in declaration order (for exhaustive tests, fuzzing and documentation).
    pub const ALL: &'static [Self] = &[
        Self::MissingCredentials,
        Self::MultipleCredentials,
        Self::MalformedAuthorization,
        Self::TokenInQuery,
        Self::FormEncodedBody,
        Self::DpopNotEnabled,
        Self::MalformedToken,
        Self::TokenTooLarge,
        Self::WrongTokenType,
        Self::AlgorithmNotAllowed,
        Self::UnsupportedCriticalHeader,
        Self::UnknownKey,
        Self::InvalidSignature,
        Self::UntrustedIssuer,
        Self::WrongAudience,
        Self::Expired,
        Self::NotYetValid,
        Self::IssuedInFuture,
        Self::LifetimeTooLong,
        Self::MissingClaim,
        Self::InvalidClaim,
        Self::MissingProofOfPossession,
        Self::Revoked,
        Self::InsufficientScope,
        Self::AccessDenied,
        Self::KeysUnavailable,
        Self::NoPrincipal,
        Self::MalformedMessage,
        Self::UnsupportedContent,
        Self::BodyTooLarge,
        Self::HeaderMismatch,
        Self::BatchRefused,
        Self::SessionNotOwned,
        Self::UnknownSession,
        Self::SessionStoreFull,
        Self::TooManySessions,
        Self::MethodNotAllowed,
        Self::AuditUnavailable,
        Self::MissingDpopProof,
        Self::MultipleDpopProofs,
        Self::InvalidDpopProof,
        Self::DpopReplay,
        Self::UseDpopNonce,
        Self::DpopKeyMismatch,
        Self::DpopRequired,
        Self::ReplayStoreFull,
        Self::CertificateMismatch,
    ];

    /// The stable snake_case code of this kind, as recorded in audit events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::MultipleCredentials => "multiple_credentials",
            Self::MalformedAuthorization => "malformed_authorization",
            Self::TokenInQuery => "token_in_query",
            Self::FormEncodedBody => "form_encoded_body",
            Self::DpopNotEnabled => "dpop_not_enabled",
            Self::MalformedToken => "malformed_token",
            Self::TokenTooLarge => "token_too_large",
            Self::WrongTokenType => "wrong_token_type",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnsupportedCriticalHeader => "unsupported_critical_header",
            Self::UnknownKey => "unknown_key",
            Self::InvalidSignature => "invalid_signature",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::MissingClaim => "missing_claim",
            Self::InvalidClaim => "invalid_claim",
            Self::MissingProofOfPossession => "missing_proof_of_possession",
            Self::Revoked => "revoked",
            Self::InsufficientScope => "insufficient_scope",
            Self::AccessDenied => "access_denied",
            Self::KeysUnavailable => "keys_unavailable",
            Self::NoPrincipal => "no_principal",
            Self::MalformedMessage => "malformed_message",
            Self::UnsupportedContent => "unsupported_content",
            Self::BodyTooLarge => "body_too_large",
            Self::HeaderMismatch => "header_mismatch",
            Self::BatchRefused => "batch_refused",
            Self::SessionNotOwned => "session_not_owned",
            Self::UnknownSession => "unknown_session",
            Self::SessionStoreFull => "session_store_full",
            Self::TooManySessions => "too_many_sessions",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AuditUnavailable => "audit_unavailable",
            Self::MissingDpopProof => "missing_dpop_proof",
            Self::MultipleDpopProofs => "multiple_dpop_proofs",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::DpopReplay => "dpop_replay",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::DpopKeyMismatch => "dpop_key_mismatch",
            Self::DpopRequired => "dpop_required",
            Self::ReplayStoreFull => "replay_store_full",
            Self::CertificateMismatch => "certificate_mismatch",
        }
    }

    /// The HTTP status this kind maps to.
    pub const fn status(self) -> StatusCode {
        match self.error_code() {
            Some(ErrorCode::InvalidRequest) => StatusCode::BAD_REQUEST,
            Some(ErrorCode::InsufficientScope) => StatusCode::FORBIDDEN,
            _ => match self {
                Self::AccessDenied => StatusCode::FORBIDDEN,
                Self::KeysUnavailable
                | Self::AuditUnavailable
                | Self::ReplayStoreFull
                | Self::SessionStoreFull => StatusCode::SERVICE_UNAVAILABLE,
                Self::MalformedMessage
                | Self::UnsupportedContent
                | Self::HeaderMismatch
                | Self::BatchRefused => StatusCode::BAD_REQUEST,
                Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Self::SessionNotOwned | Self::UnknownSession => StatusCode::NOT_FOUND,
                Self::TooManySessions => StatusCode::TOO_MANY_REQUESTS,
                Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                _ => StatusCode::UNAUTHORIZED,
            },
        }
    }

    /// The RFC 6750 `error` code, or `None` where none may be sent (no credentials, RFC 6750
    /// §3.1) or none applies (a policy denial, an outage).
    pub const fn error_code(self) -> Option<ErrorCode> {
        match self {
            Self::MissingCredentials
            | Self::AccessDenied
            | Self::KeysUnavailable
            | Self::NoPrincipal
            | Self::MalformedMessage
            | Self::UnsupportedContent
            | Self::BodyTooLarge
            | Self::HeaderMismatch
            | Self::BatchRefused
            | Self::SessionNotOwned
            | Self::UnknownSession
            | Self::SessionStoreFull
            | Self::TooManySessions
            | Self::MethodNotAllowed
            | Self::AuditUnavailable
            | Self::ReplayStoreFull => None,
            Self::InvalidDpopProof | Self::DpopReplay => Some(ErrorCode::InvalidDpopProof),
            Self::UseDpopNonce => Some(ErrorCode::UseDpopNonce),
            Self::MissingDpopProof | Self::MultipleDpopProofs => Some(ErrorCode::InvalidRequest),
            Self::MultipleCredentials
            | Self::MalformedAuthorization
            | Self::TokenInQuery
            | Self::FormEncodedBody => Some(ErrorCode::InvalidRequest),
            Self::InsufficientScope => Some(ErrorCode::InsufficientScope),
            _ => Some(ErrorCode::InvalidToken),
        }
    }

    /// A fixed, human-readable description (sent as `error_description`).
    pub const fn description(self) -> &'static str {
        match self {
            Self::MissingCredentials => "authentication required",
            Self::MultipleCredentials => "exactly one Authorization header is allowed",
            Self::MalformedAuthorization => "malformed Authorization header",
            Self::TokenInQuery => "access tokens are not accepted in the query string",
            Self::FormEncodedBody => "form-encoded bodies are not accepted",
            Self::DpopNotEnabled => "the DPoP scheme is not enabled on this server",
            Self::MalformedToken => "the access token is not a well-formed signed JWT",
            Self::TokenTooLarge => "the access token is too large",
            Self::WrongTokenType => "the token is not a JWT access token (typ at+jwt)",
            Self::AlgorithmNotAllowed => "the token's signing algorithm is not allowed",
            Self::UnsupportedCriticalHeader => "the token has an unsupported critical header",
            Self::UnknownKey => "the token was not signed by a trusted key",
            Self::InvalidSignature => "the token's signature is invalid",
            Self::UntrustedIssuer => "the token's issuer is not trusted",
            Self::WrongAudience => "the token was not issued for this resource",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not yet valid",
            Self::IssuedInFuture => "the token was issued in the future",
            Self::LifetimeTooLong => "the token's lifetime exceeds the allowed maximum",
            Self::MissingClaim => "the token lacks a required claim",
            Self::InvalidClaim => "the token has an invalid claim",
            Self::MissingProofOfPossession => {
                "the token is sender-constrained and no matching proof was presented"
            }
            Self::Revoked => "the token has been revoked",
            Self::InsufficientScope => "the token lacks a scope this operation requires",
            Self::AccessDenied => "the operation is not permitted for this caller",
            Self::KeysUnavailable => "token verification is temporarily unavailable",
            Self::NoPrincipal => "authentication required",
            Self::MalformedMessage => "the JSON-RPC message cannot be read unambiguously",
            Self::UnsupportedContent => "the body must be uncompressed application/json",
            Self::BodyTooLarge => "the request body is too large",
            Self::HeaderMismatch => "Mcp-Method or Mcp-Name disagrees with the body",
            Self::BatchRefused => "JSON-RPC batches are not accepted",
            // The same text for both: a non-owner must not learn whether a session exists.
            Self::SessionNotOwned | Self::UnknownSession => "session not found",
            Self::SessionStoreFull => "the session limit is reached; retry shortly",
            Self::TooManySessions => "too many open sessions for this caller; end one first",
            Self::MethodNotAllowed => "the HTTP method is not allowed on the MCP endpoint",
            Self::AuditUnavailable => "the audit log cannot accept more events right now",
            Self::MissingDpopProof => "the DPoP scheme needs exactly one DPoP proof header",
            Self::MultipleDpopProofs => "exactly one DPoP proof is allowed",
            Self::InvalidDpopProof => "the DPoP proof is invalid",
            Self::DpopReplay => "the DPoP proof was already used",
            Self::UseDpopNonce => "a fresh DPoP nonce is required",
            Self::DpopKeyMismatch => "the DPoP proof key does not match the token",
            Self::DpopRequired => "only DPoP-bound access tokens are accepted",
            Self::ReplayStoreFull => "proof replay protection is at capacity; retry shortly",
            Self::CertificateMismatch => {
                "the token is bound to a client certificate that was not presented"
            }
        }
    }

    /// Whether the error concerns the DPoP proof itself, so its `error` goes on the DPoP
    /// challenge whatever scheme was used.
    pub const fn is_dpop_proof_error(self) -> bool {
        matches!(
            self,
            Self::MissingDpopProof
                | Self::MultipleDpopProofs
                | Self::InvalidDpopProof
                | Self::DpopReplay
                | Self::UseDpopNonce
                | Self::DpopKeyMismatch
        )
    }

    /// Whether responses of this kind carry a `WWW-Authenticate` challenge: every 401 and 403,
    /// and the 400s about credentials.
    pub const fn has_challenge(self) -> bool {
        match self.status().as_u16() {
            401 | 403 => true,
            400 => self.error_code().is_some(),
            _ => false,
        }
    }
}

impl fmt::Display for AuthErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The RFC 6750 §3.1 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `invalid_request` (400).
    InvalidRequest,
    /// `invalid_token` (401).
    InvalidToken,
    /// `insufficient_scope` (403).
    InsufficientScope,
    /// `invalid_dpop_proof` (401, RFC 9449 §7.1).
    InvalidDpopProof,
    /// `use_dpop_nonce` (401, RFC 9449 §9).
    UseDpopNonce,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
        }
    }
}

/// A refused request: the kind, an optional fixed detail, and for `insufficient_scope` the scopes
/// the operation needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct AuthError {
    kind: AuthErrorKind,
    detail: Option<&'static str>,
    required_scope: Option<Arc<str>>,
    retry_after_secs: Option<u32>,
    /// The request used the DPoP scheme: error parameters go on the DPoP challenge.
    dpop: bool,
    /// A fresh `DPoP-Nonce` to send with the response.
    nonce: Option<Arc<str>>,
}

impl AuthError {
    /// An error of this kind with its default description.
    pub const fn new(kind: AuthErrorKind) -> Self {
        Self {
            kind,
            detail: None,
            required_scope: None,
            retry_after_secs: None,
            dpop: false,
            nonce: None,
        }
    }

    /// Marks the request as having used the DPoP scheme (the error goes on the DPoP challenge).
    pub fn on_dpop(mut self) -> Self {
        self.dpop = true;
        self
    }

    /// Attaches a fresh `DPoP-Nonce` for the client.
    pub fn with_nonce(mut self, nonce: impl Into<Arc<str>>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// The `DPoP-Nonce` sent with this error, if any.
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// Adds a fixed detail, e.g. the name of a missing claim. Must not contain client input.
    pub const fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// `insufficient_scope` naming the space-separated scopes the operation needs.
    pub fn insufficient_scope(scope: impl Into<Arc<str>>) -> Self {
        Self {
            required_scope: Some(scope.into()),
            ..Self::new(AuthErrorKind::InsufficientScope)
        }
    }

    /// A 503 telling the client when to retry.
    pub fn unavailable(kind: AuthErrorKind, retry_after_secs: u32) -> Self {
        Self::new(kind).with_retry_after(retry_after_secs)
    }

    /// The same error with a `Retry-After` (seconds) on its response.
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The kind of failure.
    pub const fn kind(&self) -> AuthErrorKind {
        self.kind
    }

    /// The fixed detail, if any.
    pub const fn detail(&self) -> Option<&'static str> {
        self.detail
    }

    /// The scopes required by the refused operation (`insufficient_scope` only).
    pub fn required_scope(&self) -> Option<&str> {
        self.required_scope.as_deref()
    }

    /// The HTTP status.
    pub const fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The description sent to the client: the kind's description plus the detail.
    pub fn message(&self) -> String {
        match self.detail {
            Some(detail) => format!("{}: {detail}", self.kind.description()),
            None => self.kind.description().to_owned(),
        }
    }

    /// The `WWW-Authenticate` value for this error (the Bearer challenge), or `None` for statuses
    /// that carry no challenge (503).
    pub fn www_authenticate(&self, challenge: &ChallengeConfig) -> Option<String> {
        if !self.kind.has_challenge() {
            return None;
        }
        let mut out = String::with_capacity(160);
        out.push_str("Bearer ");
        let mut params = ParamWriter(&mut out, false);
        if !self.on_dpop_challenge(challenge)
            && let Some(code) = self.kind.error_code()
        {
            params.push("error", code.as_str());
            params.push("error_description", &self.message());
        }
        let scope = match self.kind {
            AuthErrorKind::InsufficientScope => self.required_scope.as_deref(),
            _ if self.status() == StatusCode::UNAUTHORIZED => challenge.scope.as_deref(),
            _ => None,
        };
        if let Some(scope) = scope {
            params.push("scope", scope);
        }
        params.push("resource_metadata", &challenge.resource_metadata);
        Some(out)
    }

    /// Whether the error parameters belong on the DPoP challenge.
    fn on_dpop_challenge(&self, challenge: &ChallengeConfig) -> bool {
        challenge.dpop_algs.is_some() && (self.dpop || self.kind.is_dpop_proof_error())
    }

    /// The second challenge, `DPoP algs="…"` (RFC 9449 §7.1), when DPoP is enabled; it carries
    /// the error when the request used the DPoP scheme or the proof was at fault.
    pub fn dpop_challenge(&self, challenge: &ChallengeConfig) -> Option<String> {
        let algs = challenge.dpop_algs.as_deref()?;
        if !self.kind.has_challenge() {
            return None;
        }
        let mut out = String::with_capacity(120);
        out.push_str("DPoP ");
        let mut params = ParamWriter(&mut out, false);
        if self.on_dpop_challenge(challenge)
            && let Some(code) = self.kind.error_code()
        {
            params.push("error", code.as_str());
            params.push("error_description", &self.message());
        }
        if self.kind == AuthErrorKind::InsufficientScope
            && let Some(scope) = self.required_scope.as_deref()
        {
            params.push("scope", scope);
        }
        params.push("algs", algs);
        params.push("resource_metadata", &challenge.resource_metadata);
        Some(out)
    }

    /// The full response: status, `WWW-Authenticate`, `Cache-Control: no-store`, a JSON body, and
    /// this error in the extensions.
    pub fn to_response(&self, challenge: &ChallengeConfig) -> Response<Full<Bytes>> {
        let mut body = serde_json::Map::new();
        if let Some(code) = self.kind.error_code() {
            body.insert("error".into(), code.as_str().into());
        }
        body.insert("error_description".into(), self.message().into());
        let body = serde_json::Value::Object(body);
        self.to_response_with_body(challenge, Bytes::from(body.to_string()))
    }

    /// Like [`to_response`](Self::to_response) with a caller-built JSON body (the policy layer
    /// answers JSON-RPC requests with a JSON-RPC error).
    pub fn to_response_with_body(
        &self,
        challenge: &ChallengeConfig,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Bearer first (MCP clients read the first challenge), then DPoP. Every part is fixed
        // text or escaped, validated configuration.
        for value in [
            self.www_authenticate(challenge),
            self.dpop_challenge(challenge),
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.append(WWW_AUTHENTICATE, value);
            }
        }
        if let Some(nonce) = &self.nonce
            && let Ok(value) = HeaderValue::from_str(nonce)
        {
            headers.insert(DPOP_NONCE, value);
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self.clone());
        response
    }
}

impl From<AuthErrorKind> for AuthError {
    fn from(kind: AuthErrorKind) -> Self {
        Self::new(kind)
    }
}

/// The server-wide parts of every challenge, fixed at build time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChallengeConfig {
    /// The protected resource metadata URL (RFC 9728 §5.1).
    pub resource_metadata: Arc<str>,
    /// The `scope` to advertise on 401s (MCP clients request it), space-separated.
    pub scope: Option<Arc<str>>,
    /// The DPoP algorithms (space-separated) when DPoP is enabled: adds the DPoP challenge.
    pub dpop_algs: Option<Arc<str>>,
}

impl ChallengeConfig {
    /// Challenges naming `resource_metadata`, without a default scope or DPoP.
    pub fn new(resource_metadata: impl Into<Arc<str>>) -> Self {
        Self {
            resource_metadata: resource_metadata.into(),
            scope: None,
            dpop_algs: None,
        }
    }

    /// The `scope` sent on 401s.
    pub fn with_scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Enables the DPoP challenge with these algorithms (space-separated).
    pub fn with_dpop_algs(mut self, algs: impl Into<Arc<str>>) -> Self {
        self.dpop_algs = Some(algs.into());
        self
    }
}

/// The `DPoP-Nonce` header (RFC 9449 §8).
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// Writes `name="value"` pairs, comma-separated, escaping values as RFC 9110 quoted-strings.
struct ParamWriter<'a>(&'a mut String, bool);

impl ParamWriter<'_> {
    fn push(&mut self, name: &str, value: &str) {
        if self.1 {
            self.0.push_str(", ");
        }
        self.1 = true;
        self.0.push_str(name);
        self.0.push('=');
        push_quoted(self.0, value);
    }
}

/// Appends `value` as an RFC 9110 quoted-string: `"` and `\` are escaped; control characters and
/// non-ASCII (not allowed in a header here) become a space.
pub(crate) fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' | '\t' => out.push(c),
            _ => out.push(' '),
        }
    }
    out.push('"');
}

/// Lets users reshape a rejection (its body, `Content-Type`, extra headers) after the crate has
/// built it.
///
/// The hook can change how a refusal looks, never what it means: after it runs, the layer puts
/// back the status, every `WWW-Authenticate` challenge, `Cache-Control`, `Retry-After`,
/// `DPoP-Nonce` and the [`AuthError`] in the extensions exactly as the crate computed them
/// (removing any the hook added). So a hook cannot turn a refusal into a success, drop or
/// rewrite the challenge clients act on, or hide the reason from the audit layer. The inner
/// service is never called for a rejected request, whatever the hook does.
///
/// ```
/// use tower_mcp_auth::{AuthError, McpAuth};
///
/// let builder = McpAuth::builder().shape_rejection(
///     |error: &AuthError, response: &mut http::Response<http_body_util::Full<bytes::Bytes>>| {
///         let body = format!(r#"{{"type":"about:blank","title":"{}"}}"#, error.kind());
///         *response.body_mut() = http_body_util::Full::new(body.into());
///         response.headers_mut().insert(
///             http::header::CONTENT_TYPE,
///             http::HeaderValue::from_static("application/problem+json"),
///         );
///     },
/// );
/// # let _ = builder;
/// ```
pub trait ShapeRejection: Send + Sync + 'static {
    /// Adjusts `response`, which was built from `error`.
    fn shape(&self, error: &AuthError, response: &mut Response<Full<Bytes>>);
}

/// The headers a [`ShapeRejection`] hook cannot change: what clients and caches act on.
const PINNED_HEADERS: [http::HeaderName; 4] =
    [WWW_AUTHENTICATE, CACHE_CONTROL, RETRY_AFTER, DPOP_NONCE];

/// Runs `shape` on `response` (built from `error`), then restores the status, the pinned
/// headers and the error extension as they were.
pub(crate) fn apply_shape(
    shape: &dyn ShapeRejection,
    error: &AuthError,
    response: &mut Response<Full<Bytes>>,
) {
    let status = response.status();
    let pinned: Vec<(http::HeaderName, Vec<HeaderValue>)> = PINNED_HEADERS
        .iter()
        .map(|name| {
            let values = response.headers().get_all(name).iter().cloned().collect();
            (name.clone(), values)
        })
        .collect();
    shape.shape(error, response);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, values) in pinned {
        headers.remove(&name);
        for value in values {
            headers.append(name.clone(), value);
        }
    }
    response.extensions_mut().insert(error.clone());
}

impl<F> ShapeRejection for F
where
    F: Fn(&AuthError, &mut Response<Full<Bytes>>) + Send + Sync + 'static,
{
    fn shape(&self, error: &AuthError, response: &mut Response<Full<Bytes>>) {
        self(error, response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> ChallengeConfig {
        ChallengeConfig::new("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
            .with_scope("notes:read")
    }

    #[test]
    fn missing_credentials_has_no_error_attribute() {
        let header = AuthError::new(AuthErrorKind::MissingCredentials)
            .www_authenticate(&challenge())
            .unwrap();
        assert_eq!(
            header,
            "Bearer scope=\"notes:read\", resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
    }

    #[test]
    fn invalid_token_challenge_matches_rfc6750_shape() {
        let header = AuthError::new(AuthErrorKind::Expired)
            .www_authenticate(&challenge())
            .unwrap();
        assert_eq!(
            header,
            "Bearer error=\"invalid_token\", error_description=\"the token has expired\", scope=\"notes:read\", resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
    }

    #[test]
    fn insufficient_scope_names_the_required_scope_not_the_default() {
        let err = AuthError::insufficient_scope("notes:write");
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        let header = err.www_authenticate(&challenge()).unwrap();
        assert!(header.starts_with("Bearer error=\"insufficient_scope\""));
        assert!(header.contains("scope=\"notes:write\""));
        assert!(!header.contains("notes:read"));
    }

    #[test]
    fn quoting_escapes_and_strips() {
        let mut s = String::new();
        push_quoted(&mut s, "a\"b\\c\r\nd\u{e9}");
        assert_eq!(s, r#""a\"b\\c  d ""#);
    }

    fn all_kinds() -> Vec<AuthErrorKind> {
        AuthErrorKind::ALL.to_vec()
    }

    /// `ALL` is complete: its codes are exactly the audit schema's reason codes (less the audit
    /// layer's own `cancelled`), so a kind missing from either fails here.
    #[test]
    fn all_kinds_match_the_audit_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/audit-event-v1.json")).unwrap();
        let mut in_schema: Vec<&str> = schema["properties"]["reason"]["oneOf"][1]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|code| *code != "cancelled")
            .collect();
        let mut in_all: Vec<&str> = AuthErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        in_schema.sort_unstable();
        in_all.sort_unstable();
        assert_eq!(in_all, in_schema);
    }

    /// RFC 6750 §3: `error_description` is `1*( %x20-21 / %x23-5B / %x5D-7E )`, so it never needs
    /// escaping; the `error` codes and audit codes are unique snake_case.
    #[test]
    fn descriptions_and_codes_use_the_rfc6750_charsets() {
        let nqschar = |b: u8| {
            b == 0x20 || b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
        };
        let mut codes = std::collections::HashSet::new();
        for kind in all_kinds() {
            let description = kind.description();
            assert!(!description.is_empty(), "{kind}");
            assert!(description.bytes().all(nqschar), "{kind}: {description:?}");
            assert!(
                kind.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{kind}"
            );
            assert!(codes.insert(kind.as_str()), "duplicate code {kind}");
            if let Some(code) = kind.error_code() {
                assert!(code.as_str().bytes().all(nqschar));
            }
            // The rendered description (with a detail) is never escaped.
            let header = AuthError::new(kind)
                .with_detail("jti")
                .www_authenticate(&challenge());
            if let Some(header) = header {
                assert!(!header.contains('\\'), "{kind}: {header}");
            }
        }
    }

    #[test]
    fn statuses() {
        use AuthErrorKind::*;
        for (kind, status) in [
            (MissingCredentials, 401),
            (MultipleCredentials, 400),
            (MalformedAuthorization, 400),
            (TokenInQuery, 400),
            (Expired, 401),
            (InsufficientScope, 403),
            (AccessDenied, 403),
            (KeysUnavailable, 503),
        ] {
            assert_eq!(kind.status().as_u16(), status, "{kind}");
        }
    }

    #[test]
    fn response_carries_error_extension_and_no_store() {
        let err = AuthError::unavailable(AuthErrorKind::KeysUnavailable, 5);
        let resp = err.to_response(&challenge());
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[RETRY_AFTER], "5");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
        assert!(resp.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(resp.extensions().get::<AuthError>(), Some(&err));
    }
}
