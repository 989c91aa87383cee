//! `peers`: one rmcp streamable-HTTP server (stateless, JSON responses, a `whoami` tool) behind
//! each of several bearer-token layers, for `scripts/loadbench`.
//!
//! ```text
//! peers mint --dir DIR [--count N] [--threads T]
//!     a fresh ES256 key pair (kid "bench-es256") and tokens signed with it:
//!     DIR/private.pem, DIR/public.pem, DIR/jwks.json,
//!     DIR/token            one token, for the repeated-token workload
//!     DIR/tokens.K.txt     N distinct tokens (distinct jti, sub), split over T files (one per
//!                          wrk thread, K = 0..T-1), for the unique-token workload
//!     DIR/probe.NAME       one token per probe (see PROBES)
//! peers --variant VARIANT --listen ADDR --dir DIR [--audit-log FILE]
//!     serves POST /mcp; prints `listening on http://ADDR` once ready. VARIANT: bare, ours
//!     (McpAuth::layer: token + policy layers, verified-token cache on), ours-audit (+ the
//!     audit layer writing JSON lines to FILE), jwt-authorizer, tower-oauth2 (tower-oauth2-
//!     resource-server), tower-mcp (its OAuthLayer); diagnostics: ours-nocache, ours-token
//! peers variants [--all] | peers probes
//!     the default (or every) variant name; the probe names
//! ```
//!
//! Every variant verifies the same tokens against the same key, issuer and audience where the
//! layer can be told to: see `docs/load.md` for what each one checks.

use std::{net::SocketAddr, path::Path, sync::Arc, time::SystemTime};

use axum::Router;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::request::Parts;
use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, tool::Extension},
    model::{Implementation, ServerCapabilities, ServerConfig},
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::never::NeverSessionManager,
    },
};
use serde::Deserialize;
use serde_json::json;

/// The canonical resource URI: the audience every token carries and every layer that can check
/// an audience is told to require. Independent of the listening port, so one set of tokens fits
/// every run.
const RESOURCE: &str = "https://mcp.bench.example/mcp";
const ISSUER: &str = "https://issuer.bench.example";
const KID: &str = "bench-es256";
const LIFETIME_SECS: u64 = 3600;

/// The variants `scripts/loadbench` runs by default.
const VARIANTS: &[&str] = &[
    "bare",
    "ours",
    "ours-audit",
    "jwt-authorizer",
    "tower-oauth2",
    "tower-mcp",
];

/// Diagnostic variants of tower-mcp-auth, run only when named
/// (`scripts/loadbench ours ours-nocache ours-token`): the full stack with the verified-token
/// cache off, and the token layer alone (no policy layer, no metadata routing).
const DIAGNOSTIC_VARIANTS: &[&str] = &["ours-nocache", "ours-token"];

/// Tokens for the correctness probes `scripts/loadbench` sends to each variant before loading
/// it: which of them a layer accepts is what it checks in this setup.
const PROBES: &[&str] = &[
    "valid",
    "wrong_aud",
    "no_aud",
    "wrong_iss",
    "expired",
    "no_exp",
    "bad_sig",
    "untyped",
    "alg_none",
];

// ---------------------------------------------------------------------------
// The MCP server: the same for every variant.
// ---------------------------------------------------------------------------

/// The claims the generic JWT layers (jwt-authorizer, tower-oauth2-resource-server) deserialize
/// and put into the request extensions.
#[derive(Debug, Clone, Deserialize)]
struct BenchClaims {
    sub: String,
}

#[derive(Clone)]
struct Bench {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Bench {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    /// The caller's subject, from whichever layer verified the token ("anonymous" for `bare`).
    #[tool(description = "Show who the server thinks is calling.")]
    async fn whoami(&self, Extension(parts): Extension<Parts>) -> Result<String, String> {
        let ext = &parts.extensions;
        let sub = if let Some(p) = ext.get::<tower_mcp_auth::Principal>() {
            p.subject().to_owned()
        } else if let Some(t) = ext.get::<jsonwebtoken9::TokenData<BenchClaims>>() {
            t.claims.sub.clone()
        } else if let Some(c) = ext.get::<BenchClaims>() {
            c.sub.clone()
        } else if let Some(c) = ext.get::<tower_mcp::oauth::TokenClaims>() {
            c.sub.clone().unwrap_or_default()
        } else {
            "anonymous".to_owned()
        };
        Ok(sub)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Bench {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("peers-bench", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// The bare MCP endpoint at `/mcp`, as in `examples/notes_server.rs` (stateless, JSON responses).
fn mcp_router(addr: SocketAddr) -> Router {
    let port = addr.port();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts([addr.to_string(), format!("localhost:{port}")]);
    let service = StreamableHttpService::new(
        || Ok(Bench::new()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().nest_service("/mcp", service)
}

// ---------------------------------------------------------------------------
// The variants.
// ---------------------------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Keys {
    public_pem: String,
    jwks: String,
}

fn read_keys(dir: &Path) -> Result<Keys, BoxError> {
    Ok(Keys {
        public_pem: std::fs::read_to_string(dir.join("public.pem"))?,
        jwks: std::fs::read_to_string(dir.join("jwks.json"))?,
    })
}

/// The `_guard` keeps the audit task of `ours-audit` alive.
async fn build_app(
    variant: &str,
    addr: SocketAddr,
    keys: &Keys,
    audit_log: Option<&str>,
) -> Result<(Router, Option<Box<dyn std::any::Any + Send>>), BoxError> {
    let app = mcp_router(addr);
    Ok(match variant {
        "bare" => (app, None),
        "ours" | "ours-audit" | "ours-nocache" | "ours-token" => {
            use tower_mcp_auth::policy::ToolScopes;
            use tower_mcp_auth::{IssuerConfig, McpAuth, McpAuthConfig, SigningAlgorithm};
            let mut config = McpAuthConfig::new(RESOURCE);
            if variant == "ours-nocache" {
                config.token.cache_max_entries = 0;
            }
            let mut builder = McpAuth::builder()
                .config(config)
                .resource(RESOURCE)
                .issuer(
                    IssuerConfig::new(ISSUER)
                        .jwks(keys.jwks.clone())
                        .algorithms([SigningAlgorithm::ES256]),
                )
                .scopes_supported(["notes:read"])
                .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()));
            let mut guard: Option<Box<dyn std::any::Any + Send>> = None;
            if variant == "ours-audit" {
                use tower_mcp_auth::audit::{self, AuditOptions, FsyncPolicy, JsonLinesSink};
                let path = audit_log.ok_or("ours-audit needs --audit-log FILE")?;
                let sink = JsonLinesSink::file(path, FsyncPolicy::OnFlush)?;
                let (emitter, handle) = audit::spawn(Arc::new(sink), AuditOptions::default());
                builder = builder.audit(emitter);
                guard = Some(Box::new(handle));
            }
            let auth = builder.build()?;
            if variant == "ours-token" {
                (app.layer(auth.token_layer()), guard)
            } else {
                (app.layer(auth.layer()), guard)
            }
        }
        "jwt-authorizer" => {
            // jwt-authorizer 0.15 is written against axum 0.7 (its layer needs an inner service
            // answering `axum07::response::Response`); axum 0.7 and 0.8 coexist in one build
            // (both on http 1 / http-body 1), so the requests are re-boxed into axum 0.7 bodies
            // around its layer and back into axum 0.8 bodies inside it.
            use jwt_authorizer::{IntoLayer, JwtAuthorizer, Validation};
            let layer = JwtAuthorizer::<BenchClaims>::from_ec_pem_text(&keys.public_pem)
                .validation(
                    Validation::new()
                        .iss(&[ISSUER])
                        .aud(&[RESOURCE])
                        .nbf(true)
                        .algs(vec![jsonwebtoken9::Algorithm::ES256]),
                )
                .build()
                .await?
                .into_layer();
            let adapted = tower::ServiceBuilder::new()
                .map_request(|r: http::Request<axum::body::Body>| r.map(axum07::body::Body::new))
                .layer(layer)
                .map_request(|r: http::Request<axum07::body::Body>| r.map(axum::body::Body::new))
                .map_response(|r: http::Response<axum::body::Body>| r.map(axum07::body::Body::new));
            (app.layer(adapted), None)
        }
        "tower-oauth2" => {
            use tower_oauth2_resource_server::{
                server::OAuth2ResourceServer, tenant::TenantConfiguration,
                validation::ClaimsValidationSpec,
            };
            // A static JWK Set: no discovery and no network at startup. The static tenant
            // checks no `iss` by default, so the recommended spec (iss, exp, nbf, aud) is set.
            let tenant = TenantConfiguration::static_builder(keys.jwks.clone())
                .identifier(ISSUER)
                .claims_validation(ClaimsValidationSpec::recommended(
                    ISSUER,
                    &vec![RESOURCE.to_owned()],
                ))
                .allowed_algorithms(&[jsonwebtoken::Algorithm::ES256])
                .build()?;
            let server = OAuth2ResourceServer::<BenchClaims>::builder()
                .add_tenant(tenant)
                .build()
                .await?;
            (app.layer(server.into_layer::<axum::body::Body>()), None)
        }
        "tower-mcp" => {
            use tower_mcp::oauth::{JwtValidator, OAuthLayer, ProtectedResourceMetadata};
            let validator = JwtValidator::from_ec_pem(keys.public_pem.as_bytes())?
                .expected_issuer(ISSUER)
                .expected_audience(RESOURCE)
                .algorithms(vec![jsonwebtoken::Algorithm::ES256]);
            let metadata = ProtectedResourceMetadata::new(RESOURCE).authorization_server(ISSUER);
            (app.layer(OAuthLayer::new(validator, metadata)), None)
        }
        other => {
            let all: Vec<_> = VARIANTS
                .iter()
                .chain(DIAGNOSTIC_VARIANTS)
                .copied()
                .collect();
            return Err(format!("unknown variant {other}; one of {}", all.join(", ")).into());
        }
    })
}

async fn serve(args: &[String]) -> Result<(), BoxError> {
    let variant = flag(args, "--variant").ok_or("--variant is required")?;
    let listen = flag(args, "--listen").unwrap_or("127.0.0.1:0");
    let dir = Path::new(flag(args, "--dir").ok_or("--dir is required (see `peers mint`)")?);
    let keys = read_keys(dir)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (app, guard) = build_app(variant, addr, &keys, flag(args, "--audit-log")).await?;
    println!("variant {variant}");
    println!("listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    drop(guard);
    Ok(())
}

// ---------------------------------------------------------------------------
// Keys and tokens.
// ---------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

struct Signer {
    key: jsonwebtoken::EncodingKey,
}

fn new_key() -> Result<(p256::SecretKey, String), BoxError> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = secret.to_pkcs8_pem(LineEnding::LF)?.to_string();
    Ok((secret, pem))
}

impl Signer {
    fn from_pem(pem: &str) -> Result<Self, BoxError> {
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?,
        })
    }

    fn sign(&self, header: &jsonwebtoken::Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &self.key).expect("ES256 signing")
    }
}

fn header(typ: &str) -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.typ = Some(typ.to_owned());
    h.kid = Some(KID.to_owned());
    h
}

/// RFC 9068 access-token claims: what every variant is configured to accept.
fn claims(sub: &str, now: u64) -> serde_json::Value {
    json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": RESOURCE,
        "client_id": "bench-client",
        "scope": "notes:read",
        "iat": now,
        "nbf": now,
        "exp": now + LIFETIME_SECS,
        "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn mint(args: &[String]) -> Result<(), BoxError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    let dir = Path::new(flag(args, "--dir").ok_or("--dir is required")?);
    let count: usize = flag(args, "--count").unwrap_or("20000").parse()?;
    let files: usize = flag(args, "--threads").unwrap_or("2").parse()?;
    if files == 0 {
        return Err("--threads must be at least 1".into());
    }
    std::fs::create_dir_all(dir)?;

    let (secret, private_pem) = new_key()?;
    let public = secret.public_key();
    let point = public.to_encoded_point(false);
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": KID,
        "x": URL_SAFE_NO_PAD.encode(point.x().expect("uncompressed point")),
        "y": URL_SAFE_NO_PAD.encode(point.y().expect("uncompressed point")),
    }]});
    std::fs::write(dir.join("private.pem"), &private_pem)?;
    std::fs::write(
        dir.join("public.pem"),
        public.to_public_key_pem(LineEnding::LF)?,
    )?;
    std::fs::write(dir.join("jwks.json"), serde_json::to_string(&jwks)?)?;

    let signer = Signer::from_pem(&private_pem)?;
    let t = now();
    std::fs::write(
        dir.join("token"),
        signer.sign(&header("at+jwt"), &claims("bench-user", t)),
    )?;

    // The probes.
    let (_, other_pem) = new_key()?;
    let other = Signer::from_pem(&other_pem)?;
    for name in PROBES {
        let mut c = claims("probe-user", t);
        let mut h = header("at+jwt");
        let mut key = &signer;
        match *name {
            "valid" => {}
            "wrong_aud" => c["aud"] = json!("https://other.example/mcp"),
            "no_aud" => drop(c.as_object_mut().unwrap().remove("aud")),
            "wrong_iss" => c["iss"] = json!("https://evil.example"),
            "expired" => {
                c["iat"] = json!(t - 7200);
                c["nbf"] = json!(t - 7200);
                c["exp"] = json!(t - 3600);
            }
            "no_exp" => drop(c.as_object_mut().unwrap().remove("exp")),
            "bad_sig" => key = &other,
            "untyped" => h.typ = Some("JWT".to_owned()),
            "alg_none" => {
                // jsonwebtoken cannot produce `none`; assemble it by hand.
                let head = URL_SAFE_NO_PAD
                    .encode(json!({"alg": "none", "typ": "at+jwt", "kid": KID}).to_string());
                let body = URL_SAFE_NO_PAD.encode(c.to_string());
                std::fs::write(dir.join(format!("probe.{name}")), format!("{head}.{body}."))?;
                continue;
            }
            _ => unreachable!(),
        }
        std::fs::write(dir.join(format!("probe.{name}")), key.sign(&h, &c))?;
    }

    // The unique-token pool, signed on every core; file K holds tokens K, K+T, K+2T, ...
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(cores);
    let tokens: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|c| {
                let signer = &signer;
                s.spawn(move || {
                    let h = header("at+jwt");
                    (c * chunk..((c + 1) * chunk).min(count))
                        .map(|i| signer.sign(&h, &claims(&format!("user-{i}"), t)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signer thread"))
            .collect()
    });
    for k in 0..files {
        let mut out = String::with_capacity(count / files * 520);
        for token in tokens.iter().skip(k).step_by(files) {
            out.push_str(token);
            out.push('\n');
        }
        std::fs::write(dir.join(format!("tokens.{k}.txt")), out)?;
    }
    println!(
        "minted {count} tokens ({} bytes each) in {files} files, {} probes, in {}",
        tokens.first().map_or(0, String::len),
        PROBES.len(),
        dir.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

const USAGE: &str = "usage: peers mint --dir DIR [--count N] [--threads T]\n       \
    peers --variant bare|ours|ours-audit|jwt-authorizer|tower-oauth2|tower-mcp\
    |ours-nocache|ours-token --listen ADDR --dir DIR [--audit-log FILE]\n       \
    peers variants [--all] | probes";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("mint") => mint(&args[1..]),
        Some("variants") if args.get(1).is_some_and(|a| a == "--all") => {
            let all: Vec<_> = VARIANTS
                .iter()
                .chain(DIAGNOSTIC_VARIANTS)
                .copied()
                .collect();
            println!("{}", all.join(" "));
            Ok(())
        }
        Some("variants") => {
            println!("{}", VARIANTS.join(" "));
            Ok(())
        }
        Some("probes") => {
            println!("{}", PROBES.join(" "));
            Ok(())
        }
        Some("--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(serve(&args))),
    };
    if let Err(err) = result {
        eprintln!("peers: {err}");
        std::process::exit(2);
    }
}
