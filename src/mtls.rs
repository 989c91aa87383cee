//! Certificate-bound access tokens (RFC 8705).
//!
//! The TLS acceptor (rustls, a TLS-terminating proxy in front, …) verifies the client certificate
//! and puts a [`ClientCertificate`] into the request extensions before the auth layers run. A
//! token whose `cnf` holds `x5t#S256` is then accepted only when that value equals the SHA-256
//! thumbprint of this certificate; without the certificate, or with another one, it is refused
//! (401 `invalid_token`). Certificate-bound tokens are presented with the `Bearer` scheme.
//!
//! ```
//! use tower_mcp_auth::mtls::ClientCertificate;
//!
//! # let der_bytes_from_tls: Vec<u8> = vec![0x30, 0x00];
//! let mut request = http::Request::new(());
//! request.extensions_mut().insert(ClientCertificate::from_der(der_bytes_from_tls));
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The client certificate of the connection, as DER, verified by the TLS layer.
#[derive(Clone)]
pub struct ClientCertificate {
    der: Bytes,
    thumbprint: String,
}

impl ClientCertificate {
    /// The end-entity certificate in DER form.
    pub fn from_der(der: impl Into<Bytes>) -> Self {
        let der = der.into();
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&der));
        Self { der, thumbprint }
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// base64url(SHA-256(DER)): the `x5t#S256` a bound token carries.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint)
            .finish()
    }
}
