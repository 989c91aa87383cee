//! `mtls_notes_server`: certificate-bound access tokens (RFC 8705) end to end.
//!
//! The notes MCP server of `notes_server` (stateless Streamable HTTP; its tools, prompt, resource
//! and scope map come from `common/notes.rs`) served over TLS with
//! rustls *requiring* client certificates, behind [`McpAuth`]. At startup it generates a test CA,
//! a server certificate for `127.0.0.1`/`localhost` and a client certificate, writes the CA and
//! the client's certificate and key as PEM into `--out DIR`, and prints two tokens from an
//! embedded development issuer: one bound to the client certificate (`cnf.x5t#S256`) and one
//! plain bearer token.
//!
//! ```text
//! cargo run --example mtls_notes_server --features testing -- [--listen ADDR] [--out DIR]
//!
//!   --listen ADDR   socket to bind (default 127.0.0.1:8443)
//!   --out DIR       where ca.pem, client.pem and client-key.pem are written
//!                   (default: $TMPDIR/mtls_notes_server)
//! ```
//!
//! # The wiring
//!
//! 1. rustls verifies the client's chain against the test CA ([`WebPkiClientVerifier`]); a
//!    client without a certificate from that CA never completes the handshake.
//! 2. For each accepted connection, the peer's end-entity certificate (the first one of the
//!    verified chain) becomes a [`ClientCertificate`], and a `map_request` in front of the axum
//!    router inserts it into the extensions of every request on that connection (after removing
//!    any copy already there). The router is served per connection with hyper-util's auto
//!    (HTTP/1.1 and HTTP/2) connection builder through [`TowerToHyperService`].
//! 3. `McpAuth`'s token layer compares a token's `cnf.x5t#S256` with that certificate's
//!    SHA-256 thumbprint: a bound token is accepted only on a connection authenticated with the
//!    same certificate, and otherwise refused with 401 `invalid_token`. Unbound tokens are
//!    accepted as bearer tokens on any connection.
//!
//! # Behind a TLS-terminating proxy
//!
//! When a proxy (load balancer, ingress, service mesh) terminates TLS, this process never sees
//! the handshake. The proxy must verify the client certificate itself and pass the verified
//! certificate on (for example in a header only the proxy can set, or over a mutually
//! authenticated hop), and the server must strip any client-supplied copy of that header before
//! building the [`ClientCertificate`] from it, and trust it only on connections from the proxy.
//! Otherwise any client could claim any certificate and present tokens stolen from its owner.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_mcp_auth::McpAuth;
use tower_mcp_auth::mtls::ClientCertificate;
use tower_mcp_auth::testing::DevIssuer;

/// A client that opens a connection but never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The MCP server: the notes server of `notes_server` (`common/notes.rs`), whose `whoami`
// reports the principal and how its token was bound (`mtls` and the certificate's
// `x5t#S256` for a certificate-bound token).
// ---------------------------------------------------------------------------

#[path = "common/notes.rs"]
mod notes;

use notes::{NotesServer, NotesStore, notes_scopes};

// ---------------------------------------------------------------------------
// Test PKI: a CA, a server certificate and a client certificate.
// ---------------------------------------------------------------------------

/// A certificate and its private key.
struct Identity {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pkcs8_der: Vec<u8>,
    key_pem: String,
}

impl Identity {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_pkcs8_der.clone()).into()
    }
}

/// Everything the server and its one client need.
struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server: Identity,
    client: Identity,
}

impl Pki {
    /// A fresh CA (P-256) and the server and client certificates it signs.
    fn generate() -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mtls_notes_server test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        let server = leaf(
            &ca,
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = leaf(
            &ca,
            Vec::new(),
            "mtls-notes-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server,
            client,
        })
    }
}

/// An end-entity certificate signed by `ca`.
fn leaf(
    ca: &Issuer<'_, KeyPair>,
    subject_alt_names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<Identity, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(subject_alt_names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca)?;
    Ok(Identity {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pkcs8_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    })
}

/// rustls server settings: the server identity, and client certificates required and verified
/// against `ca` (aws-lc-rs provider).
fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone())?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.cert_der.clone()], pki.server.key_der())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------
// HTTP wiring.
// ---------------------------------------------------------------------------

/// The MCP endpoint at `/mcp` behind `auth` (which also serves the RFC 9728 metadata).
fn app(auth: &McpAuth, addr: SocketAddr) -> Router {
    let port = addr.port();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts([
            addr.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
        ]);
    let store = NotesStore::default();
    let mcp = StreamableHttpService::new(
        move || Ok(NotesServer::new(store.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().nest_service("/mcp", mcp).layer(auth.layer())
}

/// Tags every request of one connection with the connection's verified client certificate and
/// peer address. A copy already in the extensions is removed first: only the TLS layer speaks
/// for the certificate.
fn tag_requests<B>(
    certificate: Option<ClientCertificate>,
    peer: SocketAddr,
) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |mut request| {
        let extensions = request.extensions_mut();
        extensions.remove::<ClientCertificate>();
        if let Some(certificate) = &certificate {
            extensions.insert(certificate.clone());
        }
        extensions.insert(peer);
        request
    }
}

/// Accepts TLS connections until `shutdown` resolves; each one is served on its own task.
async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    eprintln!("accept: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return eprintln!("{peer}: TLS handshake failed: {err}"),
                Err(_) => return eprintln!("{peer}: TLS handshake timed out"),
            };
            // The verifier checked the whole chain; the first certificate is the client's own.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| ClientCertificate::from_der(der.to_vec()));
            let service = tower::ServiceBuilder::new()
                .map_request(tag_requests(certificate, peer))
                .service(app);
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await
            {
                eprintln!("{peer}: {err}");
            }
        });
    }
}

// ---------------------------------------------------------------------------
// Command line.
// ---------------------------------------------------------------------------

struct Args {
    listen: String,
    out: PathBuf,
}

const USAGE: &str = "usage: mtls_notes_server [--listen ADDR] [--out DIR]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:8443".to_owned(),
        out: std::env::temp_dir().join("mtls_notes_server"),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--out" => args.out = PathBuf::from(value()?),
            "--help" | "-h" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// Writes `ca.pem`, `client.pem` and `client-key.pem` (mode 0600 on Unix) into `dir`.
fn write_client_files(dir: &Path, pki: &Pki) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem)?;
    std::fs::write(dir.join("client.pem"), &pki.client.cert_pem)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(
        &mut options.open(dir.join("client-key.pem"))?,
        pki.client.key_pem.as_bytes(),
    )
}

fn print_session(dev: &DevIssuer, resource: &str, client: &ClientCertificate, out: &Path) {
    let bound = dev
        .token(resource)
        .claim("cnf", json!({ "x5t#S256": client.thumbprint() }))
        .scope("notes:read notes:write")
        .sign();
    let unbound = dev.token(resource).scope("notes:read").sign();
    let out = out.display();
    println!("client certificate x5t#S256 {}", client.thumbprint());
    println!("export BOUND_TOKEN={bound}   # cnf.x5t#S256 = the client certificate");
    println!("export BEARER_TOKEN={unbound}   # not bound");
    println!(
        r#"
# try it (tokens are valid for 10 minutes):
curl -s {resource} --cacert {out}/ca.pem --cert {out}/client.pem --key {out}/client-key.pem \
  -H "Authorization: Bearer $BOUND_TOKEN" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2025-11-25' \
  -d '{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"whoami","arguments":{{}}}}}}'
"#
    );
}

/// Resolves on Ctrl-C.
async fn shutdown_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("mtls_notes_server: {err}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let listener = TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let resource = format!("https://{addr}/mcp");

    let pki = Pki::generate()?;
    write_client_files(&args.out, &pki)?;
    let tls = tls_config(&pki)?;

    let dev = DevIssuer::new(format!("https://{addr}/dev-issuer"));
    let auth = McpAuth::builder()
        .resource(resource.clone())
        .issuer(dev.issuer_config())
        .resource_name("Notes over mTLS (tower-mcp-auth example)")
        .scopes_supported(["notes:read", "notes:write", "notes:admin"])
        .policy(notes_scopes())
        .build()?;

    let client = ClientCertificate::from_der(pki.client.cert_der.to_vec());
    println!(
        "wrote ca.pem, client.pem, client-key.pem to {}",
        args.out.display()
    );
    print_session(&dev, &resource, &client, &args.out);
    println!("listening on https://{addr}");
    serve(listener, tls, app(&auth, addr), shutdown_signal()).await;
    Ok(())
}
