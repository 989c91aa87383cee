//! `notes_server`: an rmcp MCP server protected by tower-mcp-auth.
//!
//! An in-memory notes store served over Streamable HTTP behind [`McpAuth`]: every request needs
//! an access token for this server's resource URI; tools read the caller's `Principal`.
//!
//! | capability                                     | scope             |
//! |------------------------------------------------|-------------------|
//! | `list_notes`, `notes://all`, `summarize_notes` | `notes:read`      |
//! | `add_note`                                     | `notes:write`     |
//! | `delete_note`                                  | `notes:admin`     |
//! | `whoami`                                       | any valid token   |
//!
//! ```text
//! cargo run --example notes_server --features testing -- [OPTIONS]
//!
//!   --listen ADDR        socket to bind (default 127.0.0.1:8080)
//!   --resource URL       canonical resource URI (default http://ADDR/mcp); served at its path
//!   --issuer URL         trusted issuer; without it an embedded development issuer signs
//!                        tokens and ready-to-use tokens are printed
//!   --jwks-uri URL       the issuer's JWK Set (default: discovered from the issuer's metadata)
//!   --config FILE        a TOML McpAuthConfig (resource, issuers, token rules, [policy]);
//!                        its [[issuers]] are the trusted issuers, so --issuer and --jwks-uri
//!                        are refused with it (exit 2) rather than silently ignored;
//!                        --resource, --dpop, --dpop-nonces and the introspection flags
//!                        override the file
//!   --sessions           rmcp's stateful mode (Mcp-Session-Id, SSE responses), sessions
//!                        bound to the principal that created them
//!   --audit-log FILE     audit events as JSON lines (flushed every second and on shutdown)
//!   --dpop MODE          off (default), allowed (Bearer or DPoP-bound) or required
//!   --dpop-nonces        require server nonces in DPoP proofs (needs DPoP on: --dpop
//!                        allowed|required, or [dpop] mode in --config)
//!   --introspection-endpoint URL  RFC 7662 introspection of opaque (non-JWT) tokens at URL,
//!                        authenticated with client_secret_basic as
//!   --client-id ID --client-secret S  (all three together); JWT-shaped tokens still go to
//!                        the JWT verifier of --issuer (or --config). Responses need `iss`
//!                        (the issuer), `client_id` and `iat`; `sub` and `jti` may be absent
//!                        (client-credentials tokens, opaque tokens at oidc-provider).
//!                        Verdicts are cached for 60 s: a token revoked at the authorization
//!                        server within that time is still accepted until its cached verdict
//!                        expires
//!   --introspection-cache-ttl SECS  that cache lifetime instead of 60 s (with the flags above)
//! ```
//!
//! The scope map is enforced by the policy layer before any handler runs (`--config` may
//! replace it with a TOML `[policy]` section).

use std::{net::SocketAddr, sync::Arc};

use axum::Router;
use axum::extract::ConnectInfo;
use http::Uri;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    session::never::NeverSessionManager,
};
use tower_mcp_auth::audit::{self, AuditEmitter, AuditOptions, FsyncPolicy, JsonLinesSink};
use tower_mcp_auth::config::IntrospectionConfig;
use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::token::RequiredClaims;
use tower_mcp_auth::{IssuerConfig, McpAuth, McpAuthConfig};

// The notes server itself (tools, prompt, resource, scope map) lives in `common/notes.rs`,
// shared with `mtls_notes_server` and `tests/mtls.rs`.
#[path = "common/notes.rs"]
mod notes;

use notes::{NotesServer, NotesStore, notes_scopes};

// ---------------------------------------------------------------------------
// Command line and HTTP wiring.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Args {
    listen: Option<String>,
    resource: Option<String>,
    issuer: Option<String>,
    jwks_uri: Option<String>,
    config: Option<String>,
    sessions: bool,
    audit_log: Option<String>,
    dpop: DpopMode,
    dpop_nonces: bool,
    introspection_endpoint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    introspection_cache_ttl: Option<u64>,
}

impl Args {
    /// `--introspection-endpoint`, `--client-id` and `--client-secret`, given all together.
    fn introspection(&self) -> Result<Option<IntrospectionConfig>, String> {
        match (
            &self.introspection_endpoint,
            &self.client_id,
            &self.client_secret,
        ) {
            (Some(endpoint), Some(id), Some(secret)) => {
                let mut config = IntrospectionConfig::new(endpoint, id, secret);
                config.issuer = self.issuer.clone();
                // RFC 7662 makes `sub` and `jti` optional, and oidc-provider omits them for
                // client-credentials and opaque tokens: relax those two, keep the rest strict.
                let mut required = RequiredClaims::default();
                required.sub = false;
                required.jti = false;
                config.required_claims = Some(required);
                if let Some(ttl) = self.introspection_cache_ttl {
                    config.cache_max_ttl_secs = ttl;
                }
                Ok(Some(config))
            }
            (None, None, None) if self.introspection_cache_ttl.is_none() => Ok(None),
            _ => {
                Err("--introspection-endpoint, --client-id and --client-secret go together".into())
            }
        }
    }
}

const USAGE: &str = "usage: notes_server [--listen ADDR] [--resource URL] \
    [--issuer URL [--jwks-uri URL] | --config FILE] [--sessions] [--audit-log FILE] \
    [--dpop off|allowed|required] [--dpop-nonces] \
    [--introspection-endpoint URL --client-id ID --client-secret S \
    [--introspection-cache-ttl SECS]]\n\
    --config FILE names the trusted issuers itself: --issuer and --jwks-uri cannot be \
    combined with it; --resource, --dpop, --dpop-nonces and the introspection flags \
    override the file.";

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = Some(value()?),
            "--resource" => args.resource = Some(value()?),
            "--issuer" => args.issuer = Some(value()?),
            "--jwks-uri" => args.jwks_uri = Some(value()?),
            "--config" => args.config = Some(value()?),
            "--sessions" => args.sessions = true,
            "--dpop" => {
                args.dpop = match value()?.as_str() {
                    "off" => DpopMode::Off,
                    "allowed" => DpopMode::Allowed,
                    "required" => DpopMode::Required,
                    other => {
                        return Err(format!("--dpop {other}: expected off, allowed or required"));
                    }
                }
            }
            "--dpop-nonces" => args.dpop_nonces = true,
            "--audit-log" => args.audit_log = Some(value()?),
            "--introspection-endpoint" => args.introspection_endpoint = Some(value()?),
            "--client-id" => args.client_id = Some(value()?),
            "--client-secret" => args.client_secret = Some(value()?),
            "--introspection-cache-ttl" => {
                let secs = value()?;
                args.introspection_cache_ttl = Some(secs.parse().map_err(|_| {
                    format!("--introspection-cache-ttl {secs}: expected whole seconds")
                })?);
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    args.check_combinations()?;
    Ok(args)
}

impl Args {
    /// Refuses flag combinations that would otherwise be ignored without a word.
    fn check_combinations(&self) -> Result<(), String> {
        if self.config.is_some() {
            let ignored: Vec<&str> = [
                ("--issuer", self.issuer.is_some()),
                ("--jwks-uri", self.jwks_uri.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, given)| given.then_some(flag))
            .collect();
            if !ignored.is_empty() {
                return Err(format!(
                    "{} cannot be combined with --config: the file's [[issuers]] are the \
                     trusted issuers (set issuer and jwks_uri or discover there)",
                    ignored.join(" and ")
                ));
            }
        } else if self.dpop_nonces && self.dpop == DpopMode::Off {
            return Err("--dpop-nonces needs --dpop allowed or --dpop required".into());
        }
        Ok(())
    }
}

/// `Host` values rmcp's DNS-rebinding check should accept: the bound address,
/// `localhost` on the bound port, loopback when bound to a wildcard address,
/// and the authority of the public resource URL.
fn allowed_hosts(addr: SocketAddr, resource: &Uri) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string(), format!("localhost:{port}")];
    if addr.ip().is_unspecified() {
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("[::1]:{port}"));
    }
    if let Some(authority) = resource.authority() {
        hosts.push(authority.to_string());
    }
    hosts
}

/// Builds the auth stack from the flags; returns the dev issuer when one is used.
fn build_auth(
    args: &Args,
    resource: &str,
    audit: Option<AuditEmitter>,
) -> Result<(McpAuth, Option<DevIssuer>), String> {
    let introspection = args.introspection()?;
    let mut builder = McpAuth::builder();
    if let Some(emitter) = audit {
        builder = builder.audit(emitter);
    }
    if let Some(path) = &args.config {
        let mut config = McpAuthConfig::from_toml_file(path).map_err(|e| e.to_string())?;
        if let Some(resource) = &args.resource {
            config.resource = resource.clone();
        }
        if config.resource.is_empty() {
            config.resource = resource.to_owned();
        }
        if args.dpop != DpopMode::Off {
            config.dpop.mode = args.dpop;
        }
        if args.dpop_nonces {
            if config.dpop.mode == DpopMode::Off {
                return Err(
                    "--dpop-nonces needs DPoP on: --dpop allowed|required or [dpop] mode".into(),
                );
            }
            config.dpop.nonces = true;
        }
        if introspection.is_some() {
            config.introspection = introspection;
        }
        let auth = builder.config(config).build().map_err(|e| e.to_string())?;
        return Ok((auth, None));
    }
    // Opaque tokens go to the introspection endpoint (`McpAuthConfig::introspection`); the
    // settings below are added to this configuration.
    let mut config = McpAuthConfig::new(resource);
    let introspecting = introspection.is_some();
    config.introspection = introspection;
    let builder = builder.config(config);
    let mut dpop = DpopConfig::with_mode(args.dpop);
    dpop.nonces = args.dpop_nonces;
    let builder = builder
        .dpop(dpop)
        .resource(resource)
        .policy(notes_scopes())
        .resource_name("Notes (tower-mcp-auth example)")
        .scopes_supported(["notes:read"]);
    match (&args.issuer, &args.jwks_uri) {
        (Some(issuer), Some(jwks_uri)) => {
            let auth = builder
                .issuer(IssuerConfig::new(issuer).jwks_uri(jwks_uri))
                .build()
                .map_err(|e| e.to_string())?;
            Ok((auth, None))
        }
        (Some(issuer), None) => {
            // No --jwks-uri: discover it from the issuer's metadata (RFC 8414 / OIDC).
            let auth = builder
                .issuer(IssuerConfig::new(issuer).discover())
                .build()
                .map_err(|e| e.to_string())?;
            Ok((auth, None))
        }
        (None, Some(_)) => Err("--jwks-uri needs --issuer".into()),
        (None, None) if introspecting => {
            // Introspection alone: opaque tokens only, no JWT issuer (and no development one).
            let auth = builder.build().map_err(|e| e.to_string())?;
            Ok((auth, None))
        }
        (None, None) => {
            let base = resource.split("/mcp").next().unwrap_or(resource);
            let dev = DevIssuer::new(format!("{}/dev-issuer", base.trim_end_matches('/')));
            let auth = builder
                .issuer(dev.issuer_config())
                .build()
                .map_err(|e| e.to_string())?;
            Ok((auth, Some(dev)))
        }
    }
}

/// The newcomer's first five minutes: tokens for each scope set and a curl session.
fn print_dev_session(dev: &DevIssuer, resource: &str) {
    println!(
        "development issuer {} (tokens valid for 1 hour)",
        dev.issuer()
    );
    let sets = [
        ("READ_TOKEN", "notes:read"),
        ("WRITE_TOKEN", "notes:read notes:write"),
        ("ADMIN_TOKEN", "notes:read notes:write notes:admin"),
    ];
    for (name, scopes) in sets {
        let token = dev
            .token(resource)
            .scope(scopes)
            .expires_in(std::time::Duration::from_secs(3600))
            .sign();
        println!("export {name}={token}   # {scopes}");
    }
    println!(
        r#"
# try it:
curl -i {resource} -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
  -d '{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}'          # 401 + WWW-Authenticate
curl -s {resource} -H "Authorization: Bearer $READ_TOKEN" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2025-11-25' \
  -d '{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"whoami","arguments":{{}}}}}}'
curl -s {resource} -H "Authorization: Bearer $WRITE_TOKEN" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2025-11-25' \
  -d '{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"add_note","arguments":{{"text":"hello"}}}}}}'
"#
    );
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Serves `service` at `path`; axum refuses to nest at `/`, so a root endpoint is the fallback.
fn mount<S>(path: &str, service: S) -> Router
where
    S: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send,
{
    if path.is_empty() {
        Router::new().fallback_service(service)
    } else {
        Router::new().nest_service(path, service)
    }
}

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("notes_server: {err}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;

    let listener =
        tokio::net::TcpListener::bind(args.listen.as_deref().unwrap_or("127.0.0.1:8080")).await?;
    let addr = listener.local_addr()?;
    let resource_url = args
        .resource
        .clone()
        .unwrap_or_else(|| format!("http://{addr}/mcp"));
    let resource: Uri = resource_url.parse()?;
    // `--audit-log FILE`: one JSON line per request, flushed every second and on shutdown.
    let audit = match &args.audit_log {
        Some(path) => {
            let sink = JsonLinesSink::file(path, FsyncPolicy::OnFlush)?;
            Some(audit::spawn(Arc::new(sink), AuditOptions::default()))
        }
        None => None,
    };
    let (auth, dev) = build_auth(
        &args,
        &resource_url,
        audit.as_ref().map(|(emitter, _)| emitter.clone()),
    )?;

    // Default: stateless mode: no `Mcp-Session-Id`, every POST is handled on
    // its own with that request's HTTP parts (and so that request's principal),
    // and `json_response` answers plain calls with `application/json`.
    // `--sessions`: rmcp's stateful mode (session ids, SSE responses); the
    // policy layer binds each session id to the principal that created it.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(args.sessions)
        .with_json_response(!args.sessions)
        .with_allowed_hosts(allowed_hosts(addr, &resource));

    let store = NotesStore::default();
    let factory = move || Ok(NotesServer::new(store.clone()));
    let path = resource.path().trim_end_matches('/');
    let app = if args.sessions {
        let sessions = Arc::new(LocalSessionManager::default());
        mount(path, StreamableHttpService::new(factory, sessions, config))
    } else {
        let sessions = Arc::new(NeverSessionManager::default());
        mount(path, StreamableHttpService::new(factory, sessions, config))
    };
    // One layer: serves the RFC 9728 metadata, audits, authenticates and authorizes the rest.
    // The outer map_request hands the peer address to the audit layer.
    let app = app
        .layer(auth.layer())
        .layer(axum::middleware::map_request(
            |ConnectInfo(peer): ConnectInfo<SocketAddr>, mut request: axum::extract::Request| async move {
                request.extensions_mut().insert(peer);
                request
            },
        ));

    if let Some(dev) = &dev {
        print_dev_session(dev, &resource_url);
    }
    println!("listening on http://{addr}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    if let Some((_, handle)) = audit {
        // Every accepted event reaches the file before the process exits.
        handle.shutdown().await?;
    }
    Ok(())
}
