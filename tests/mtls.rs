//! Certificate-bound access tokens (RFC 8705) end to end, in process, over real TLS on loopback.
//!
//! The server wiring is the one of `examples/mtls_notes_server.rs`: rustls requires a client
//! certificate from a test CA; each connection's verified end-entity certificate is inserted as a
//! [`ClientCertificate`] into every request's extensions; the examples' notes server
//! (`examples/common/notes.rs`, included with `#[path]`, so no example binary is needed) sits
//! behind `McpAuth` with its scope map. A reqwest client with a client identity
//! calls `tools/call whoami`. A second, plain-HTTP stack (no certificate extension) shows that a
//! bound token is refused without a certificate while an unbound token still works.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::never::NeverSessionManager,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_mcp_auth::mtls::ClientCertificate;
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{AuthErrorKind, McpAuth};

const PROTOCOL_VERSION: &str = "2025-11-25";
const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The MCP server: the examples' notes server (`examples/common/notes.rs`, compiled in), whose
// `whoami` reports the principal and how its token was bound.
// ---------------------------------------------------------------------------

#[allow(dead_code)]
#[path = "../examples/common/notes.rs"]
mod notes;

use notes::{NotesServer, NotesStore, notes_scopes};

// ---------------------------------------------------------------------------
// Test PKI: one CA, a server certificate, two client certificates.
// ---------------------------------------------------------------------------

/// A certificate and its PKCS#8 private key.
struct Identity {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl Identity {
    /// What the token layer sees for a connection authenticated with this certificate.
    fn client_certificate(&self) -> ClientCertificate {
        ClientCertificate::from_der(self.der.to_vec())
    }

    /// A reqwest client identity: certificate and key in one PEM buffer.
    fn reqwest_identity(&self) -> reqwest::Identity {
        let pem = format!("{}{}", self.cert_pem, self.key_pem);
        reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
    }
}

struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server: Identity,
    alice: Identity,
    mallory: Identity,
}

impl Pki {
    fn generate() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca = Issuer::new(params, ca_key);
        let server_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server: leaf(&ca, server_names, ExtendedKeyUsagePurpose::ServerAuth),
            alice: leaf(&ca, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
            mallory: leaf(&ca, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
        }
    }

    /// An HTTPS client trusting only the test CA, presenting `identity` if given.
    fn client(&self, identity: Option<&Identity>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .no_proxy()
            .timeout(TIMEOUT);
        if let Some(identity) = identity {
            builder = builder.identity(identity.reqwest_identity());
        }
        builder.build().unwrap()
    }

    /// Server TLS settings: client certificates from the test CA required (aws-lc-rs).
    fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let key = PrivatePkcs8KeyDer::from(self.server.key_der.clone());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server.der.clone()], key.into())
            .unwrap();
        Arc::new(config)
    }
}

fn leaf(ca: &Issuer<'_, KeyPair>, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).unwrap();
    Identity {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

// ---------------------------------------------------------------------------
// Servers.
// ---------------------------------------------------------------------------

struct Server {
    resource: String,
    dev: DevIssuer,
}

/// The MCP endpoint at `/mcp` behind a fresh `McpAuth` for `scheme://addr/mcp`.
fn app(scheme: &str, addr: SocketAddr) -> (Router, Server) {
    let resource = format!("{scheme}://{addr}/mcp");
    let dev = DevIssuer::new(format!("{scheme}://{addr}/dev-issuer"));
    let auth = McpAuth::builder()
        .resource(resource.clone())
        .issuer(dev.issuer_config())
        .scopes_supported(["notes:read", "notes:write", "notes:admin"])
        .policy(notes_scopes())
        .build()
        .unwrap();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts([addr.to_string()]);
    let store = NotesStore::default();
    let mcp = StreamableHttpService::new(
        move || Ok(NotesServer::new(store.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let router = Router::new().nest_service("/mcp", mcp).layer(auth.layer());
    (router, Server { resource, dev })
}

/// Every request of one connection carries that connection's verified client certificate.
fn tag_requests<B>(
    certificate: Option<ClientCertificate>,
) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |mut request| {
        let extensions = request.extensions_mut();
        extensions.remove::<ClientCertificate>();
        if let Some(certificate) = &certificate {
            extensions.insert(certificate.clone());
        }
        request
    }
}

/// HTTPS with required client certificates, the certificate handed to the auth layer.
async fn start_mtls(pki: &Pki) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (router, server) = app("https", addr);
    let acceptor = TlsAcceptor::from(pki.server_tls());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                // A client without an acceptable certificate fails here.
                let Ok(Ok(stream)) = tokio::time::timeout(TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| ClientCertificate::from_der(der.to_vec()));
                let service = tower::ServiceBuilder::new()
                    .map_request(tag_requests(certificate))
                    .service(router);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
    server
}

/// Plain HTTP: no TLS, so no `ClientCertificate` on any request.
async fn start_plain() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (router, server) = app("http", addr);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    server
}

// ---------------------------------------------------------------------------
// Client side.
// ---------------------------------------------------------------------------

struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    body: Value,
}

impl Reply {
    /// The JSON a tool returned (`whoami`, `add_note`, `list_notes`).
    fn whoami(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_ne!(self.body["result"]["isError"], true, "{}", self.body);
        let text = self.body["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text content: {}", self.body));
        serde_json::from_str(text).unwrap()
    }

    /// `whoami`'s subject, binding and key thumbprint.
    fn binding(&self) -> Value {
        let me = self.whoami();
        json!({
            "subject": me["subject"],
            "binding": me["binding"],
            "key_thumbprint": me["key_thumbprint"],
        })
    }

    /// Asserts a 401 `invalid_token` for a certificate mismatch, in the body and the challenge.
    fn assert_certificate_mismatch(&self) {
        let description = AuthErrorKind::CertificateMismatch.description();
        assert_eq!(self.status, 401, "{}", self.body);
        assert_eq!(self.body["error"], "invalid_token", "{}", self.body);
        assert_eq!(self.body["error_description"], description, "{}", self.body);
        let challenge = self.www_authenticate.as_deref().expect("WWW-Authenticate");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
        assert!(
            challenge.contains(&format!(r#"error_description="{description}""#)),
            "{challenge}"
        );
    }
}

async fn call_whoami(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
) -> reqwest::Result<Reply> {
    call_tool(client, server, token, "whoami", json!({})).await
}

async fn call_tool(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    name: &str,
    arguments: Value,
) -> reqwest::Result<Reply> {
    let call = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments}
    });
    let response = client
        .post(&server.resource)
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", PROTOCOL_VERSION)
        .body(call.to_string())
        .send()
        .await?;
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("WWW-Authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await?;
    let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "{status}: non-JSON body {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    Ok(Reply {
        status,
        www_authenticate,
        body,
    })
}

/// A `notes:read` token bound to `certificate` (`cnf.x5t#S256`).
fn bound_token(server: &Server, certificate: &ClientCertificate) -> String {
    server
        .dev
        .token(&server.resource)
        .claim("cnf", json!({ "x5t#S256": certificate.thumbprint() }))
        .scope("notes:read")
        .sign()
}

fn unbound_token(server: &Server) -> String {
    server
        .dev
        .token(&server.resource)
        .scope("notes:read")
        .sign()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

/// The bound token over a connection authenticated with its certificate reaches the tool, which
/// sees an `mtls` binding to that certificate.
#[tokio::test]
async fn bound_token_with_its_certificate_is_accepted() {
    let pki = Pki::generate();
    let server = start_mtls(&pki).await;
    let alice = pki.alice.client_certificate();
    let token = bound_token(&server, &alice);

    let reply = call_whoami(&pki.client(Some(&pki.alice)), &server, &token)
        .await
        .unwrap();
    assert_eq!(
        reply.binding(),
        json!({
            "subject": "dev-user",
            "binding": "mtls",
            "key_thumbprint": alice.thumbprint(),
        })
    );
}

/// The notes tools over mTLS: a bound `notes:read notes:write` token adds and lists notes; the
/// scope map still applies (`delete_note` needs `notes:admin`: 403 `insufficient_scope`).
#[tokio::test]
async fn notes_tools_over_mtls_with_the_scope_map() {
    let pki = Pki::generate();
    let server = start_mtls(&pki).await;
    let alice = pki.alice.client_certificate();
    let client = pki.client(Some(&pki.alice));
    let token = server
        .dev
        .token(&server.resource)
        .claim("cnf", json!({ "x5t#S256": alice.thumbprint() }))
        .scope("notes:read notes:write")
        .sign();

    let added = call_tool(
        &client,
        &server,
        &token,
        "add_note",
        json!({"text": "over mTLS"}),
    )
    .await
    .unwrap()
    .whoami();
    assert_eq!(added, json!({"id": 1, "text": "over mTLS"}));
    let listed = call_tool(&client, &server, &token, "list_notes", json!({}))
        .await
        .unwrap()
        .whoami();
    assert_eq!(listed, json!([{"id": 1, "text": "over mTLS"}]));

    let denied = call_tool(&client, &server, &token, "delete_note", json!({"id": 1}))
        .await
        .unwrap();
    assert_eq!(denied.status, 403, "{}", denied.body);
    let challenge = denied
        .www_authenticate
        .as_deref()
        .expect("WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(r#"scope="notes:admin""#),
        "{challenge}"
    );
    // The same token from another client's certificate: refused before any tool runs.
    let mallory = pki.client(Some(&pki.mallory));
    call_tool(&mallory, &server, &token, "list_notes", json!({}))
        .await
        .unwrap()
        .assert_certificate_mismatch();
}

/// The same token from a client with another certificate of the same CA is refused with 401
/// `invalid_token` (certificate mismatch), though that client's TLS identity is valid: its own
/// bound token and an unbound token pass.
#[tokio::test]
async fn bound_token_with_another_certificate_is_refused() {
    let pki = Pki::generate();
    let server = start_mtls(&pki).await;
    let stolen = bound_token(&server, &pki.alice.client_certificate());
    let mallory = pki.client(Some(&pki.mallory));

    let reply = call_whoami(&mallory, &server, &stolen).await.unwrap();
    reply.assert_certificate_mismatch();

    let own = bound_token(&server, &pki.mallory.client_certificate());
    let me = call_whoami(&mallory, &server, &own).await.unwrap().whoami();
    assert_eq!(me["binding"], "mtls");
    assert_eq!(
        me["key_thumbprint"],
        pki.mallory.client_certificate().thumbprint()
    );

    let unbound = unbound_token(&server);
    let me = call_whoami(&mallory, &server, &unbound)
        .await
        .unwrap()
        .whoami();
    assert_eq!(me["binding"], "bearer");
    assert_eq!(me["key_thumbprint"], Value::Null);
}

/// The server requires client certificates: without one there is no HTTP exchange at all.
#[tokio::test]
async fn client_without_certificate_fails_the_handshake() {
    let pki = Pki::generate();
    let server = start_mtls(&pki).await;
    let token = bound_token(&server, &pki.alice.client_certificate());

    let Err(err) = call_whoami(&pki.client(None), &server, &token).await else {
        panic!("the handshake must fail without a client certificate");
    };
    assert!(!err.is_timeout(), "{err}");
}

/// Without any `ClientCertificate` in the request (plain HTTP), a bound token is refused and an
/// unbound token still works.
#[tokio::test]
async fn without_a_certificate_bound_tokens_are_refused_and_bearer_tokens_work() {
    let pki = Pki::generate();
    let server = start_plain().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .unwrap();

    let bound = bound_token(&server, &pki.alice.client_certificate());
    call_whoami(&client, &server, &bound)
        .await
        .unwrap()
        .assert_certificate_mismatch();

    let unbound = unbound_token(&server);
    let me = call_whoami(&client, &server, &unbound)
        .await
        .unwrap()
        .binding();
    assert_eq!(
        me,
        json!({"subject": "dev-user", "binding": "bearer", "key_thumbprint": null})
    );
}
