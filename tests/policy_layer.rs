//! The policy layer in process: composition invariants, the tool-result denial style,
//! combinators, the TOML scope map, the README's "Writing a policy" example, fail-closed
//! session binding, HTTP methods, batch and listing settings, resource URI dot segments and
//! the protocol version policies see.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_mcp_auth::error::ChallengeConfig;
use tower_mcp_auth::policy::{
    BatchMode, Decision, DenialStyle, InMemorySessionStore, McpPolicyLayer, Policy, PolicyConfig,
    PolicyRequest, SessionStore, ToolScopes, all, any, not,
};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth, McpAuthConfig};

const RESOURCE: &str = "https://mcp.example.com/mcp";

fn inner() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
        ))))
    })
}

fn call(tool: &str) -> Full<Bytes> {
    Full::new(Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":"req-1","method":"tools/call","params":{{"name":"{tool}","arguments":{{"owner":"dev-user"}}}}}}"#
    )))
}

fn post(token: Option<&str>, body: Full<Bytes>) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/mcp").header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(body).unwrap()
}

async fn json(
    response: Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn challenge() -> ChallengeConfig {
    ChallengeConfig::new("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
}

#[tokio::test]
async fn policy_layer_without_token_layer_refuses() {
    // A misordered or missing token layer must never widen access.
    let layer = McpPolicyLayer::new(
        Arc::new(|_: &PolicyRequest<'_>| Decision::Allow),
        challenge(),
    );
    let response = layer
        .layer(inner())
        .oneshot(post(None, call("x")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<AuthError>().unwrap().kind(),
        AuthErrorKind::NoPrincipal
    );
}

#[tokio::test]
async fn policy_outside_token_layer_refuses_even_with_a_valid_token() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap();
    // Wrong order: policy outside, token inside.
    let service = auth.policy_layer().layer(auth.token_layer().layer(inner()));
    let token = dev.token(RESOURCE).sign();
    let response = service
        .oneshot(post(Some(&token), call("x")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tool_result_denial_style() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut policy = PolicyConfig::default();
    policy.denial = DenialStyle::ToolResult;
    policy
        .tools
        .insert("add_note".into(), vec!["notes:write".into()]);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy_config(policy)
        .build()
        .unwrap();
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let response = auth
        .layer()
        .layer(inner())
        .oneshot(post(Some(&token), call("add_note")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.extensions().get::<AuthError>().unwrap().kind(),
        AuthErrorKind::InsufficientScope
    );
    let body = json(response).await;
    assert_eq!(body["id"], "req-1");
    assert_eq!(body["result"]["isError"], true);
    let challenge = body["result"]["_meta"]["mcp/www_authenticate"][0]
        .as_str()
        .unwrap();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"notes:write\""), "{challenge}");
}

#[tokio::test]
async fn combinators() {
    let dev = DevIssuer::new("https://as.example.com");
    let scopes: Arc<dyn Policy> = Arc::new(ToolScopes::new().tool("delete_note", ["notes:admin"]));
    let owner_only: Arc<dyn Policy> = Arc::new(|r: &PolicyRequest<'_>| {
        #[derive(serde::Deserialize)]
        struct Args {
            owner: String,
        }
        match r.arguments_as::<Args>() {
            Some(a) if a.owner == r.principal().subject() => Decision::Allow,
            _ => Decision::deny("not the owner"),
        }
    });
    let deny_all: Arc<dyn Policy> = Arc::new(|_: &PolicyRequest<'_>| Decision::deny("no"));
    let cases: Vec<(&str, Arc<dyn Policy>, &str, u16)> = vec![
        (
            "all: scope missing",
            Arc::new(all(vec![scopes.clone(), owner_only.clone()])),
            "notes:read",
            403,
        ),
        (
            "all: both hold",
            Arc::new(all(vec![scopes.clone(), owner_only.clone()])),
            "notes:admin",
            200,
        ),
        (
            "any: owner suffices",
            Arc::new(any(vec![scopes.clone(), owner_only.clone()])),
            "",
            200,
        ),
        (
            "not: deny_all negated",
            Arc::new(not(deny_all.clone())),
            "",
            200,
        ),
        (
            "not: allow negated",
            Arc::new(not(owner_only.clone())),
            "",
            403,
        ),
        (
            "any: nothing allows",
            Arc::new(any(vec![deny_all.clone()])),
            "",
            403,
        ),
    ];
    for (name, policy, scope, status) in cases {
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .policy(policy)
            .build()
            .unwrap();
        let token = dev.token(RESOURCE).scope(scope).sign();
        let response = auth
            .layer()
            .layer(inner())
            .oneshot(post(Some(&token), call("delete_note")))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
    }
}

#[tokio::test]
async fn toml_scope_map() {
    let dev = DevIssuer::new("https://as.example.com");
    let toml = format!(
        r#"
resource = "{RESOURCE}"

[[issuers]]
issuer = "{issuer}"
jwks = '{jwks}'

[policy]
tools = {{ list_notes = ["notes:read"], delete_note = ["notes:admin"] }}
implies = {{ "notes:admin" = ["notes:read"] }}
unlisted_targets = "allow"
"#,
        issuer = dev.issuer(),
        jwks = dev.jwks_json()
    );
    let auth = McpAuth::from_config(McpAuthConfig::from_toml_str(&toml).unwrap()).unwrap();
    let service = auth.layer().layer(inner());
    for (tool, scope, status) in [
        ("list_notes", "notes:admin", 200),
        ("list_notes", "notes:write", 403),
        ("delete_note", "notes:read", 403),
        ("anything_else", "", 200),
    ] {
        let token = dev.token(RESOURCE).scope(scope).sign();
        let response = service
            .clone()
            .oneshot(post(Some(&token), call(tool)))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{tool} with {scope:?}");
    }
    let bad = toml.replace(
        r#"["notes:read"], delete_note"#,
        r#"["notes read"], delete_note"#,
    );
    let config = McpAuthConfig::from_toml_str(&bad).unwrap();
    let err = McpAuth::from_config(config).unwrap_err();
    assert!(
        matches!(err, tower_mcp_auth::ConfigError::InvalidScope(ref s) if s == "notes read"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Shared helpers for the tables below.

const METADATA: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

/// The `WWW-Authenticate` of a denial no scope can cure.
fn plain_challenge() -> String {
    format!("Bearer resource_metadata=\"{METADATA}\"")
}

/// The `WWW-Authenticate` of a step-up.
fn scope_challenge(scope: &str) -> String {
    format!(
        "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a scope this operation requires\", scope=\"{scope}\", resource_metadata=\"{METADATA}\""
    )
}

/// What the server behind the layer saw and answers: `initialize` mints `Mcp-Session-Id:
/// sess-N`, `tools/list` lists four tools, anything else is a plain result.
#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<(http::Method, Bytes)>>>,
    minted: Arc<AtomicUsize>,
}

impl Server {
    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let server = self.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let server = server.clone();
            async move {
                let method = req.method().clone();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                server.seen.lock().unwrap().push((method, body.clone()));
                let text = std::str::from_utf8(&body).unwrap_or_default();
                let mut response = Response::builder().header("content-type", "application/json");
                let answer = if text.contains(r#""method":"initialize""#) {
                    let n = server.minted.fetch_add(1, Ordering::SeqCst) + 1;
                    response = response.header("mcp-session-id", format!("sess-{n}"));
                    r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18"}}"#
                } else if text.contains(r#""method":"tools/list""#) {
                    r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"whoami"},{"name":"list_notes"},{"name":"add_note"},{"name":"delete_note"}]}}"#
                } else {
                    r#"{"jsonrpc":"2.0","id":1,"result":{}}"#
                };
                Ok::<_, std::convert::Infallible>(
                    response
                        .body(Full::new(Bytes::from_static(answer.as_bytes())))
                        .unwrap(),
                )
            }
        })
    }
}

/// A request to the MCP endpoint.
fn request(
    method: &str,
    token: &str,
    session: Option<&str>,
    body: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri("/mcp")
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    if let Some(session) = session {
        builder = builder.header("mcp-session-id", session);
    }
    let body = body.map_or(Bytes::new(), |b| Bytes::from(b.to_owned()));
    builder.body(Full::new(body)).unwrap()
}

/// A refusal as the client sees it.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    /// JSON-RPC `error.code` and `id`, when the body is a JSON-RPC error.
    rpc: Option<(i64, serde_json::Value)>,
    www_authenticate: Option<String>,
}

async fn seen(
    response: Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
) -> (Seen, Response<()>, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let rpc = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(|v| v.get("error").is_some())
        .map(|v| (v["error"]["code"].as_i64().unwrap(), v["id"].clone()));
    let www_authenticate = parts
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let seen = Seen {
        status: parts.status.as_u16(),
        rpc,
        www_authenticate,
    };
    (seen, Response::from_parts(parts, ()), bytes)
}

fn ok() -> Seen {
    Seen {
        status: 200,
        rpc: None,
        www_authenticate: None,
    }
}

fn refused(status: u16, id: serde_json::Value, www_authenticate: Option<String>) -> Seen {
    Seen {
        status,
        rpc: Some((-32600, id)),
        www_authenticate,
    }
}

fn tools_call(id: u64, tool: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
}

const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

fn listed(body: &Bytes) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The README's "Writing a policy" example, run as is.

mod own_notes {
    include!("../src/policy/own_notes_example.rs");
}
use own_notes::{NoteOwners, OwnNotesOnly};

#[test]
fn readme_shows_the_example_verbatim() {
    let example = include_str!("../src/policy/own_notes_example.rs");
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(example),
        "README \"Writing a policy\" must show src/policy/own_notes_example.rs verbatim"
    );
    let docs = include_str!("../src/policy/mod.rs");
    assert!(docs.contains(r#"#![doc = include_str!("own_notes_example.rs")]"#));
}

#[tokio::test]
async fn writing_a_policy_example_owner_deletes_others_do_not() {
    let dev = DevIssuer::new("https://as.example.com");
    let owners = NoteOwners::default();
    owners.insert(1, dev.issuer(), "alice");
    owners.insert(2, dev.issuer(), "bob");
    // The scope map and the policy exactly as the README combines them.
    let scopes = ToolScopes::new()
        .tool("delete_note", ["notes:write"])
        .tool("list_notes", ["notes:read"]);
    let own = OwnNotesOnly {
        owners: owners.clone(),
    };
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(all(vec![Arc::new(scopes), Arc::new(own)]))
        .build()
        .unwrap();
    let other_issuer = DevIssuer::new("https://other-as.example.com");
    let auth_two_issuers = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .issuer(other_issuer.issuer_config())
        .policy(all(vec![
            Arc::new(ToolScopes::new().tool("delete_note", ["notes:write"])),
            Arc::new(OwnNotesOnly {
                owners: owners.clone(),
            }),
        ]))
        .build()
        .unwrap();
    let alice = dev
        .token(RESOURCE)
        .subject("alice")
        .scope("notes:write")
        .sign();
    let bob = dev
        .token(RESOURCE)
        .subject("bob")
        .scope("notes:write")
        .sign();
    let alice_read = dev
        .token(RESOURCE)
        .subject("alice")
        .scope("notes:read")
        .sign();
    // Same subject, another issuer: not the owner.
    let alice_elsewhere = other_issuer
        .token(RESOURCE)
        .subject("alice")
        .scope("notes:write")
        .sign();
    let no_scope = |id| refused(403, serde_json::json!(id), Some(plain_challenge()));
    let cases: Vec<(&str, &McpAuth, &str, String, Seen)> = vec![
        (
            "owner deletes",
            &auth,
            &alice,
            tools_call(11, "delete_note", r#"{"id":1}"#),
            ok(),
        ),
        (
            "bob's own",
            &auth,
            &bob,
            tools_call(12, "delete_note", r#"{"id":2}"#),
            ok(),
        ),
        (
            "another subject",
            &auth,
            &bob,
            tools_call(13, "delete_note", r#"{"id":1}"#),
            no_scope(13),
        ),
        (
            "claims to be the owner in the arguments",
            &auth,
            &bob,
            tools_call(14, "delete_note", r#"{"id":1,"owner":"bob"}"#),
            no_scope(14),
        ),
        (
            "no such note",
            &auth,
            &alice,
            tools_call(15, "delete_note", r#"{"id":99}"#),
            no_scope(15),
        ),
        (
            "id as a string",
            &auth,
            &alice,
            tools_call(16, "delete_note", r#"{"id":"1"}"#),
            no_scope(16),
        ),
        (
            "repeated id",
            &auth,
            &bob,
            tools_call(17, "delete_note", r#"{"id":2,"id":1}"#),
            no_scope(17),
        ),
        (
            "a real call without arguments is not a listing check",
            &auth,
            &alice,
            r#"{"jsonrpc":"2.0","id":18,"method":"tools/call","params":{"name":"delete_note"}}"#
                .to_owned(),
            no_scope(18),
        ),
        (
            "owner without the scope: step-up",
            &auth,
            &alice_read,
            tools_call(19, "delete_note", r#"{"id":1}"#),
            refused(
                403,
                serde_json::json!(19),
                Some(scope_challenge("notes:write")),
            ),
        ),
        (
            "same subject from another issuer",
            &auth_two_issuers,
            &alice_elsewhere,
            tools_call(20, "delete_note", r#"{"id":1}"#),
            no_scope(20),
        ),
    ];
    for (name, auth, token, body, want) in cases {
        let server = Server::default();
        let response = auth
            .layer()
            .layer(server.service())
            .oneshot(request("POST", token, None, Some(&body)))
            .await
            .unwrap();
        let (got, _, _) = seen(response).await;
        assert_eq!(got, want, "{name}");
        assert_eq!(
            server.calls(),
            usize::from(want.status == 200),
            "{name}: forwarded"
        );
    }
    // tools/list still shows delete_note to a caller who owns nothing.
    let carol = dev
        .token(RESOURCE)
        .subject("carol")
        .scope("notes:write")
        .sign();
    let server = Server::default();
    let response = auth
        .layer()
        .layer(server.service())
        .oneshot(request("POST", &carol, None, Some(TOOLS_LIST)))
        .await
        .unwrap();
    let (got, _, body) = seen(response).await;
    assert_eq!(got, ok());
    // whoami and add_note are not in this scope map (denied), list_notes needs notes:read.
    assert_eq!(listed(&body), ["delete_note"]);
}

// ---------------------------------------------------------------------------
// 2. Session binding fails closed.

/// The stack with `store` for session bindings: token layer, then the policy layer.
fn session_stack(
    dev: &DevIssuer,
    store: Arc<dyn SessionStore>,
    server: &Server,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
    Error = std::convert::Infallible,
> + Clone {
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .build()
        .unwrap();
    let policy = auth.policy_layer().session_store(Some(store));
    auth.token_layer().layer(policy.layer(server.service()))
}

async fn send<S, B>(service: &S, req: Request<Full<Bytes>>) -> (Seen, Response<()>, Bytes)
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<B>,
            Error = std::convert::Infallible,
        > + Clone,
    B: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
{
    seen(service.clone().oneshot(req).await.unwrap()).await
}

#[tokio::test]
async fn session_binding_fails_closed() {
    let dev = DevIssuer::new("https://as.example.com");
    let server = Server::default();
    let store = Arc::new(InMemorySessionStore::new(100, Duration::from_secs(3600)));
    let svc = session_stack(&dev, store.clone(), &server);
    let alice = dev.token(RESOURCE).subject("alice").sign();
    let alice_again = dev
        .token(RESOURCE)
        .subject("alice")
        .scope("notes:read")
        .sign();
    let bob = dev.token(RESOURCE).subject("bob").sign();
    let alice_other_client = dev
        .token(RESOURCE)
        .subject("alice")
        .client_id("other")
        .sign();

    // The initialize that mints a session carries none; its id is bound to the caller.
    let (init, head, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
    assert_eq!(init, ok());
    assert_eq!(head.headers()["mcp-session-id"], "sess-1");

    let whoami = tools_call(5, "whoami", "{}");
    let not_found = || refused(404, serde_json::Value::Null, None);
    // (name, HTTP method, token, Mcp-Session-Id, body, expected)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Seen,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "owner POST",
            "POST",
            &alice,
            Some("sess-1"),
            Some(&whoami),
            ok(),
        ),
        (
            "owner with a new token",
            "POST",
            &alice_again,
            Some("sess-1"),
            Some(&whoami),
            ok(),
        ),
        ("owner GET", "GET", &alice, Some("sess-1"), None, ok()),
        (
            "another subject",
            "POST",
            &bob,
            Some("sess-1"),
            Some(&whoami),
            not_found(),
        ),
        (
            "another client",
            "POST",
            &alice_other_client,
            Some("sess-1"),
            Some(&whoami),
            not_found(),
        ),
        (
            "another subject GET",
            "GET",
            &bob,
            Some("sess-1"),
            None,
            not_found(),
        ),
        (
            "another subject DELETE",
            "DELETE",
            &bob,
            Some("sess-1"),
            None,
            not_found(),
        ),
        (
            "unknown session id",
            "POST",
            &alice,
            Some("sess-999"),
            Some(&whoami),
            not_found(),
        ),
        (
            "unknown session id GET",
            "GET",
            &alice,
            Some("made-up"),
            None,
            not_found(),
        ),
        (
            "unknown session id DELETE",
            "DELETE",
            &alice,
            Some("made-up"),
            None,
            not_found(),
        ),
        (
            "unknown session id, notification",
            "POST",
            &alice,
            Some("made-up"),
            Some(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            not_found(),
        ),
        // An initialize presenting an id the store does not know must not bind it.
        (
            "initialize with an unknown id",
            "POST",
            &bob,
            Some("sess-7"),
            Some(INITIALIZE),
            not_found(),
        ),
        (
            "no session id at all",
            "POST",
            &bob,
            None,
            Some(&whoami),
            ok(),
        ),
    ];
    for (name, method, token, session, body, want) in cases {
        let before = server.calls();
        let (got, _, _) = send(&svc, request(method, token, session, body)).await;
        assert_eq!(got, want, "{name}");
        let forwarded = server.calls() - before;
        assert_eq!(
            forwarded,
            usize::from(want.status == 200),
            "{name}: forwarded"
        );
    }
    assert_eq!(
        server.minted.load(Ordering::SeqCst),
        1,
        "no session minted for a refused initialize"
    );

    // DELETE by the owner ends the binding; the id is then unknown.
    let (deleted, _, _) = send(&svc, request("DELETE", &alice, Some("sess-1"), None)).await;
    assert_eq!(deleted, ok());
    let (gone, _, _) = send(&svc, request("POST", &alice, Some("sess-1"), Some(&whoami))).await;
    assert_eq!(gone, not_found());
    assert!(store.is_empty());

    // Both refusals look the same to the client, but audit tells them apart.
    let response = svc
        .clone()
        .oneshot(request("POST", &alice, Some("never-minted"), Some(&whoami)))
        .await
        .unwrap();
    assert_eq!(
        response.extensions().get::<AuthError>().unwrap().kind(),
        AuthErrorKind::UnknownSession
    );
}

#[tokio::test]
async fn expired_session_binding_is_refused() {
    let dev = DevIssuer::new("https://as.example.com");
    let server = Server::default();
    let store = Arc::new(InMemorySessionStore::new(100, Duration::from_millis(100)));
    let svc = session_stack(&dev, store, &server);
    let alice = dev.token(RESOURCE).subject("alice").sign();
    let whoami = tools_call(5, "whoami", "{}");
    let (init, _, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
    assert_eq!(init, ok());
    let (used, _, _) = send(&svc, request("POST", &alice, Some("sess-1"), Some(&whoami))).await;
    assert_eq!(used, ok());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = server.calls();
    let (expired, _, _) = send(&svc, request("POST", &alice, Some("sess-1"), Some(&whoami))).await;
    assert_eq!(expired, refused(404, serde_json::Value::Null, None));
    assert_eq!(server.calls(), before, "not forwarded");
    // The client re-initializes (MCP: 404 → new session) and goes on.
    let (again, head, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
    assert_eq!(again, ok());
    assert_eq!(head.headers()["mcp-session-id"], "sess-2");
}

#[tokio::test]
async fn full_session_store_refuses_initialize_and_keeps_bindings() {
    let dev = DevIssuer::new("https://as.example.com");
    let server = Server::default();
    let store = Arc::new(InMemorySessionStore::new(1, Duration::from_secs(3600)));
    let svc = session_stack(&dev, store, &server);
    let alice = dev.token(RESOURCE).subject("alice").sign();
    let bob = dev.token(RESOURCE).subject("bob").sign();
    let whoami = tools_call(5, "whoami", "{}");

    let (init, _, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
    assert_eq!(init, ok());
    // Full: a new initialize gets 503 + Retry-After, before the server creates a session.
    let (full, head, _) = send(&svc, request("POST", &bob, None, Some(INITIALIZE))).await;
    assert_eq!(
        full,
        Seen {
            status: 503,
            rpc: Some((-32600, serde_json::json!(0))),
            www_authenticate: None,
        }
    );
    assert_eq!(head.headers()["retry-after"], "30");
    assert_eq!(server.minted.load(Ordering::SeqCst), 1, "not forwarded");
    // A batch holding an initialize is refused the same way.
    let batch = format!("[{INITIALIZE}]");
    let (full_batch, _, _) = send(&svc, request("POST", &bob, None, Some(&batch))).await;
    assert_eq!(full_batch.status, 503);
    // The live binding was not evicted: alice still works, bob still cannot use it.
    let (mine, _, _) = send(&svc, request("POST", &alice, Some("sess-1"), Some(&whoami))).await;
    assert_eq!(mine, ok());
    let (theirs, _, _) = send(&svc, request("POST", &bob, Some("sess-1"), Some(&whoami))).await;
    assert_eq!(theirs, refused(404, serde_json::Value::Null, None));
    // Requests that open no session are unaffected.
    let (plain, _, _) = send(&svc, request("POST", &bob, None, Some(&whoami))).await;
    assert_eq!(plain, ok());
    // Ending the session frees the slot.
    let (deleted, _, _) = send(&svc, request("DELETE", &alice, Some("sess-1"), None)).await;
    assert_eq!(deleted, ok());
    let (init_bob, head, _) = send(&svc, request("POST", &bob, None, Some(INITIALIZE))).await;
    assert_eq!(init_bob, ok());
    assert_eq!(head.headers()["mcp-session-id"], "sess-2");
}

#[tokio::test]
async fn one_principal_cannot_fill_the_session_store() {
    let dev = DevIssuer::new("https://as.example.com");
    let server = Server::default();
    let store =
        Arc::new(InMemorySessionStore::new(100, Duration::from_secs(3600)).with_owner_limit(2));
    let svc = session_stack(&dev, store, &server);
    let alice = dev.token(RESOURCE).subject("alice").sign();
    let bob = dev.token(RESOURCE).subject("bob").sign();
    let whoami = tools_call(5, "whoami", "{}");

    for _ in 0..2 {
        let (init, _, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
        assert_eq!(init, ok());
    }
    // Alice's third session: 429 + Retry-After, before the server creates it.
    let (third, head, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
    assert_eq!(
        third,
        Seen {
            status: 429,
            rpc: Some((-32600, serde_json::json!(0))),
            www_authenticate: None,
        }
    );
    assert_eq!(head.headers()["retry-after"], "30");
    assert_eq!(
        head.extensions().get::<AuthError>().unwrap().kind(),
        AuthErrorKind::TooManySessions
    );
    assert_eq!(server.minted.load(Ordering::SeqCst), 2, "not forwarded");
    // Another token for the same subject and client is the same owner.
    let alice_again = dev.token(RESOURCE).subject("alice").sign();
    let (same_owner, _, _) =
        send(&svc, request("POST", &alice_again, None, Some(INITIALIZE))).await;
    assert_eq!(same_owner.status, 429);
    // Bob is unaffected, and alice's sessions keep working.
    let (init_bob, head, _) = send(&svc, request("POST", &bob, None, Some(INITIALIZE))).await;
    assert_eq!(init_bob, ok());
    assert_eq!(head.headers()["mcp-session-id"], "sess-3");
    let (mine, _, _) = send(&svc, request("POST", &alice, Some("sess-1"), Some(&whoami))).await;
    assert_eq!(mine, ok());
    // Ending one of her sessions lets alice open another.
    let (deleted, _, _) = send(&svc, request("DELETE", &alice, Some("sess-1"), None)).await;
    assert_eq!(deleted, ok());
    let (again, head, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
    assert_eq!(again, ok());
    assert_eq!(head.headers()["mcp-session-id"], "sess-4");
}

/// A store that always claims room but refuses every binding (the race for the last slot, or
/// for the owner's last slot) with the given reason.
#[derive(Debug)]
struct RefusingStore(tower_mcp_auth::policy::BindRefused);

#[async_trait::async_trait]
impl SessionStore for RefusingStore {
    async fn bind(
        &self,
        _: tower_mcp_auth::policy::SessionKey,
        _: tower_mcp_auth::policy::SessionOwner,
    ) -> Result<(), tower_mcp_auth::policy::BindRefused> {
        Err(self.0)
    }
    async fn owner(
        &self,
        _: &tower_mcp_auth::policy::SessionKey,
    ) -> Option<tower_mcp_auth::policy::SessionOwner> {
        None
    }
    async fn remove(&self, _: &tower_mcp_auth::policy::SessionKey) {}
}

#[tokio::test]
async fn a_session_that_cannot_be_bound_never_reaches_the_client() {
    let dev = DevIssuer::new("https://as.example.com");
    let server = Server::default();
    let alice = dev.token(RESOURCE).subject("alice").sign();
    use tower_mcp_auth::policy::BindRefused;
    for (refused, status, kind) in [
        (BindRefused::StoreFull, 503, AuthErrorKind::SessionStoreFull),
        (BindRefused::OwnerLimit, 429, AuthErrorKind::TooManySessions),
    ] {
        let svc = session_stack(&dev, Arc::new(RefusingStore(refused)), &server);
        let (got, head, _) = send(&svc, request("POST", &alice, None, Some(INITIALIZE))).await;
        assert_eq!(got.status, status, "{refused:?}");
        assert_eq!(got.rpc, Some((-32600, serde_json::json!(0))), "{refused:?}");
        assert_eq!(head.headers()["retry-after"], "30", "{refused:?}");
        assert_eq!(
            head.extensions().get::<AuthError>().unwrap().kind(),
            kind,
            "{refused:?}"
        );
        assert!(
            head.headers().get("mcp-session-id").is_none(),
            "{refused:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. HTTP methods: only POST is classified; GET, DELETE and OPTIONS pass; the rest get 405.

#[tokio::test]
async fn http_methods() {
    let dev = DevIssuer::new("https://as.example.com");
    let server = Server::default();
    let store = Arc::new(InMemorySessionStore::default());
    let svc = session_stack(&dev, store, &server);
    let token = dev.token(RESOURCE).sign();
    let not_allowed = || refused(405, serde_json::Value::Null, None);
    let whoami = tools_call(5, "whoami", "{}");
    let cases: Vec<(&str, Option<&str>, Seen)> = vec![
        ("POST", Some(&whoami), ok()),
        ("GET", None, ok()),
        ("DELETE", None, ok()),
        ("OPTIONS", None, ok()),
        // Would reach the server unclassified: refused whatever the body says.
        ("PUT", Some(&whoami), not_allowed()),
        ("PATCH", Some(&whoami), not_allowed()),
        ("PUT", None, not_allowed()),
        ("HEAD", None, not_allowed()),
        ("TRACE", None, not_allowed()),
        ("CONNECT", None, not_allowed()),
        ("PROPFIND", Some(&whoami), not_allowed()),
        ("post", Some(&whoami), not_allowed()),
    ];
    for (method, body, want) in cases {
        let before = server.calls();
        let mut req = request("POST", &token, None, body);
        *req.method_mut() = http::Method::from_bytes(method.as_bytes()).unwrap();
        let (got, head, _) = send(&svc, req).await;
        assert_eq!(got, want, "{method}");
        let forwarded = server.calls() - before;
        assert_eq!(
            forwarded,
            usize::from(want.status == 200),
            "{method}: forwarded"
        );
        if want.status == 405 {
            assert_eq!(
                head.headers()["allow"],
                "GET, POST, DELETE, OPTIONS",
                "{method}"
            );
            assert_eq!(
                head.headers()["content-type"],
                "application/json",
                "{method}"
            );
        }
    }
    // Without a token, the token layer answers first (401), whatever the method.
    let mut anonymous = Request::builder().method("PUT").uri("/mcp");
    anonymous = anonymous.header("content-type", "application/json");
    let (got, _, _) = send(&svc, anonymous.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(got.status, 401);
}

// ---------------------------------------------------------------------------
// 4. `batches = "refuse"` and `filter_listings = false`.

fn configured(dev: &DevIssuer, config: PolicyConfig) -> McpAuth {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy_config(config)
        .build()
        .unwrap()
}

fn notes_map() -> PolicyConfig {
    let mut config = PolicyConfig::default();
    for (tool, scope) in [
        ("whoami", None),
        ("list_notes", Some("notes:read")),
        ("add_note", Some("notes:write")),
        ("delete_note", Some("notes:admin")),
    ] {
        config
            .tools
            .insert(tool.into(), scope.into_iter().map(String::from).collect());
    }
    config
        .implies
        .insert("notes:admin".into(), vec!["notes:write".into()]);
    config
        .implies
        .insert("notes:write".into(), vec!["notes:read".into()]);
    config
}

#[tokio::test]
async fn batches_refuse_setting() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut config = notes_map();
    config.batches = BatchMode::Refuse;
    let refuse = configured(&dev, config);
    let authorize = configured(&dev, notes_map());
    let token = dev.token(RESOURCE).scope("notes:admin").sign();
    let allowed_batch = format!("[{},{}]", tools_call(1, "whoami", "{}"), TOOLS_LIST);
    let one_element = format!("[{}]", tools_call(1, "whoami", "{}"));
    let bad_request = || refused(400, serde_json::Value::Null, None);
    let cases: Vec<(&str, &McpAuth, String, Seen)> = vec![
        (
            "refuse: allowed batch",
            &refuse,
            allowed_batch.clone(),
            bad_request(),
        ),
        (
            "refuse: one-element batch",
            &refuse,
            one_element.clone(),
            bad_request(),
        ),
        (
            "refuse: batch of notifications",
            &refuse,
            r#"[{"jsonrpc":"2.0","method":"notifications/initialized"}]"#.into(),
            bad_request(),
        ),
        (
            "refuse: a single message still passes",
            &refuse,
            tools_call(1, "whoami", "{}"),
            ok(),
        ),
        (
            "authorize (default): allowed batch",
            &authorize,
            allowed_batch,
            ok(),
        ),
        (
            "authorize (default): one-element batch",
            &authorize,
            one_element,
            ok(),
        ),
    ];
    for (name, auth, body, want) in cases {
        let server = Server::default();
        let response = auth
            .layer()
            .layer(server.service())
            .oneshot(request("POST", &token, None, Some(&body)))
            .await
            .unwrap();
        let refused_kind = response
            .extensions()
            .get::<AuthError>()
            .map(AuthError::kind);
        let (got, _, _) = seen(response).await;
        assert_eq!(got, want, "{name}");
        assert_eq!(
            server.calls(),
            usize::from(want.status == 200),
            "{name}: never forwarded"
        );
        if want.status == 400 {
            assert_eq!(refused_kind, Some(AuthErrorKind::BatchRefused), "{name}");
        }
    }
}

#[tokio::test]
async fn filter_listings_setting() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut config = notes_map();
    config.filter_listings = false;
    let unfiltered = configured(&dev, config);
    let filtered = configured(&dev, notes_map());
    let all_tools = ["whoami", "list_notes", "add_note", "delete_note"];
    let cases: Vec<(&str, &McpAuth, &str, Vec<&str>)> = vec![
        (
            "filter on, notes:read",
            &filtered,
            "notes:read",
            vec!["whoami", "list_notes"],
        ),
        ("filter on, no scope", &filtered, "", vec!["whoami"]),
        (
            "filter on, notes:admin",
            &filtered,
            "notes:admin",
            all_tools.to_vec(),
        ),
        (
            "filter off, notes:read",
            &unfiltered,
            "notes:read",
            all_tools.to_vec(),
        ),
        ("filter off, no scope", &unfiltered, "", all_tools.to_vec()),
    ];
    for (name, auth, scope, want) in cases {
        let token = dev.token(RESOURCE).scope(scope).sign();
        let response = auth
            .layer()
            .layer(Server::default().service())
            .oneshot(request("POST", &token, None, Some(TOOLS_LIST)))
            .await
            .unwrap();
        let (got, _, body) = seen(response).await;
        assert_eq!(got, ok(), "{name}");
        assert_eq!(listed(&body), want, "{name}");
    }
    // With the filter off, calls are still authorized.
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let response = unfiltered
        .layer()
        .layer(Server::default().service())
        .oneshot(request(
            "POST",
            &token,
            None,
            Some(&tools_call(3, "add_note", "{}")),
        ))
        .await
        .unwrap();
    let (got, _, _) = seen(response).await;
    assert_eq!(
        got,
        refused(
            403,
            serde_json::json!(3),
            Some(scope_challenge("notes:write"))
        )
    );
}

// ---------------------------------------------------------------------------
// 6. Resource URIs are matched raw; dot segments and encoded dots are denied.

#[tokio::test]
async fn resource_uri_dot_segments_are_denied() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut config = PolicyConfig::default();
    config
        .resources
        .insert("notes://x/*".into(), vec!["notes:read".into()]);
    config
        .resources
        .insert("notes://secret/*".into(), vec!["notes:admin".into()]);
    let auth = configured(&dev, config);
    let token = dev.token(RESOURCE).scope("notes:read").sign();
    let denied = |id| refused(403, serde_json::json!(id), Some(plain_challenge()));
    let cases: Vec<(&str, &str, Seen)> = vec![
        ("resources/read", "notes://x/1", ok()),
        ("resources/read", "notes://x/a.b..c", ok()),
        (
            "resources/read",
            "notes://secret/1",
            refused(
                403,
                serde_json::json!(1),
                Some(scope_challenge("notes:admin")),
            ),
        ),
        ("resources/read", "notes://x/../secret/1", denied(1)),
        ("resources/read", "notes://x/./1", denied(1)),
        ("resources/read", "notes://x/%2e%2e/secret/1", denied(1)),
        ("resources/read", "notes://x/%2E%2E/secret/1", denied(1)),
        ("resources/read", "notes://x/.%2E/secret/1", denied(1)),
        ("resources/read", "notes://x/..%2fsecret/1", denied(1)),
        ("resources/read", "notes://x/..\\\\secret/1", denied(1)),
        ("resources/read", "notes://x/1/..", denied(1)),
        ("resources/subscribe", "notes://x/../secret/1", denied(1)),
        (
            "resources/unsubscribe",
            "notes://x/%2e%2e/secret/1",
            denied(1),
        ),
        // The URI as JSON escapes it: still a dot segment once unescaped.
        (
            "resources/read",
            "notes://x/\\u002e\\u002e/secret/1",
            denied(1),
        ),
    ];
    for (method, uri, want) in cases {
        let body =
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"uri":"{uri}"}}}}"#);
        let server = Server::default();
        let response = auth
            .layer()
            .layer(server.service())
            .oneshot(request("POST", &token, None, Some(&body)))
            .await
            .unwrap();
        let (got, _, _) = seen(response).await;
        assert_eq!(got, want, "{method} {uri}");
        assert_eq!(
            server.calls(),
            usize::from(want.status == 200),
            "{method} {uri}"
        );
    }
}

// ---------------------------------------------------------------------------
// 7. The protocol version policies see.

#[tokio::test]
async fn policies_see_the_initialize_protocol_version() {
    let dev = DevIssuer::new("https://as.example.com");
    type Asked = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let versions: Asked = Arc::default();
    let record = versions.clone();
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(move |r: &PolicyRequest<'_>| {
            record.lock().unwrap().push((
                r.method().to_owned(),
                r.protocol_version().map(str::to_owned),
            ));
            // Refuse initialize for a revision this server does not serve.
            match (r.method(), r.protocol_version()) {
                ("initialize", Some("2024-11-05")) => Decision::deny("revision too old"),
                _ => Decision::Allow,
            }
        })
        .build()
        .unwrap();
    let token = dev.token(RESOURCE).sign();
    let init = |version: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}}}}}}"#
        )
    };
    let with_header = |mut req: Request<Full<Bytes>>| {
        req.headers_mut().insert(
            "mcp-protocol-version",
            http::HeaderValue::from_static("2025-11-25"),
        );
        req
    };
    // (name, request, status, (method, version) the policy saw first)
    type Case<'a> = (
        &'a str,
        Request<Full<Bytes>>,
        u16,
        (&'a str, Option<&'a str>),
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "initialize, body only",
            request("POST", &token, None, Some(&init("2025-06-18"))),
            200,
            ("initialize", Some("2025-06-18")),
        ),
        (
            "initialize, old revision",
            request("POST", &token, None, Some(&init("2024-11-05"))),
            403,
            ("initialize", Some("2024-11-05")),
        ),
        (
            "initialize, old revision: a newer header cannot override the body the server negotiates from",
            with_header(request("POST", &token, None, Some(&init("2024-11-05")))),
            403,
            ("initialize", Some("2024-11-05")),
        ),
        (
            "initialize without params",
            request(
                "POST",
                &token,
                None,
                Some(r#"{"jsonrpc":"2.0","id":0,"method":"initialize"}"#),
            ),
            200,
            ("initialize", None),
        ),
        (
            "other methods: header only",
            request("POST", &token, None, Some(TOOLS_LIST)),
            200,
            ("tools/list", None),
        ),
        (
            "other methods with the header",
            with_header(request("POST", &token, None, Some(TOOLS_LIST))),
            200,
            ("tools/list", Some("2025-11-25")),
        ),
    ];
    for (name, req, status, want) in cases {
        versions.lock().unwrap().clear();
        let response = auth
            .layer()
            .layer(Server::default().service())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        let first = versions.lock().unwrap().first().cloned().unwrap();
        assert_eq!((first.0.as_str(), first.1.as_deref()), want, "{name}");
    }
    // A repeated protocolVersion is ambiguous: 400, the policy is not asked.
    versions.lock().unwrap().clear();
    let twice = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2024-11-05","protocolVersion":"2025-06-18"}}"#;
    let response = auth
        .layer()
        .layer(Server::default().service())
        .oneshot(request("POST", &token, None, Some(twice)))
        .await
        .unwrap();
    let (got, _, _) = seen(response).await;
    assert_eq!(got, refused(400, serde_json::Value::Null, None));
    assert!(versions.lock().unwrap().is_empty());
}

/// Counts its clones and whether every called instance was polled ready first.
#[derive(Default)]
struct CloneCounts {
    clones: AtomicUsize,
    calls: AtomicUsize,
    unpolled_calls: AtomicUsize,
}

struct CountingService {
    counts: Arc<CloneCounts>,
    polled: bool,
}

impl Clone for CountingService {
    fn clone(&self) -> Self {
        self.counts.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            counts: Arc::clone(&self.counts),
            polled: false,
        }
    }
}

impl Service<Request<Full<Bytes>>> for CountingService {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.polled = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        self.counts.calls.fetch_add(1, Ordering::SeqCst);
        if !std::mem::take(&mut self.polled) {
            self.counts.unpolled_calls.fetch_add(1, Ordering::SeqCst);
        }
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            b"{\"jsonrpc\":\"2.0\",\"id\":\"req-1\",\"result\":{}}",
        )))))
    }
}

#[tokio::test]
async fn the_policy_layer_reuses_called_services_and_drops_refused_ones() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(|r: &PolicyRequest<'_>| verdict(r))
        .build()
        .unwrap();
    let token = dev.token(RESOURCE).sign();
    let counts = Arc::new(CloneCounts::default());
    let stack = || {
        auth.layer().layer(CountingService {
            counts: Arc::clone(&counts),
            polled: false,
        })
    };
    let snapshot = |counts: &CloneCounts| {
        (
            counts.clones.swap(0, Ordering::SeqCst),
            counts.calls.swap(0, Ordering::SeqCst),
            counts.unpolled_calls.swap(0, Ordering::SeqCst),
        )
    };
    let send = |service: _, tool: &str| {
        let request = post(Some(&token), call(tool));
        async move {
            let response: Response<_> = ServiceExt::oneshot(service, request).await.unwrap();
            response.status()
        }
    };

    // A clone of the stack per request, each called once (as axum serves). Only the first
    // request clones the inner service: each call hands its service back to the pool once the
    // request is in, and the next `poll_ready` takes it. The first token is not cached yet, so
    // the token layer also clones the stack below it to verify asynchronously; that clone is
    // never polled and clones nothing.
    let prototype = stack();
    snapshot(&counts);
    for _ in 0..3 {
        assert_eq!(send(prototype.clone(), "x").await, StatusCode::OK);
    }
    assert_eq!(
        snapshot(&counts),
        (1, 3, 0),
        "(clones, calls, unpolled calls)"
    );

    // One value called again and again (as a buffer's worker does): the pooled service each
    // time, polled before each use.
    let mut service = prototype.clone();
    for _ in 0..3 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(post(Some(&token), call("x")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        snapshot(&counts),
        (0, 3, 0),
        "(clones, calls, unpolled calls)"
    );

    // A caller that skips `poll_ready` (a contract violation) gets the pooled service unpolled,
    // as a clone-and-call middleware would call its unpolled clone. The layer does not panic
    // (an inner service that insists on readiness, such as tower's `Buffer`, may).
    let response = service.call(post(Some(&token), call("x"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        snapshot(&counts),
        (0, 1, 1),
        "(clones, calls, unpolled calls)"
    );

    // A refused request's service was polled but never called: it is dropped, not pooled (for a
    // service whose readiness holds a permit, that releases it), so the next request clones a
    // new one.
    let prototype = stack();
    snapshot(&counts);
    assert_eq!(send(prototype.clone(), "x").await, StatusCode::OK);
    assert_eq!(
        send(prototype.clone(), "refused").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(prototype.clone(), "x").await, StatusCode::OK);
    assert_eq!(
        snapshot(&counts),
        (2, 2, 0),
        "(clones, calls, unpolled calls)"
    );

    // A spent value still unwraps.
    let inner = service.into_inner().into_inner();
    assert!(Arc::ptr_eq(&inner.counts, &counts));
}

/// A policy that answers `decide_now` or only `decide`, and counts both.
struct CountingPolicy {
    answers_now: bool,
    decide_calls: Arc<AtomicUsize>,
    now_calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Policy for CountingPolicy {
    async fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        self.decide_calls.fetch_add(1, Ordering::SeqCst);
        verdict(request)
    }

    fn decide_now(&self, request: &PolicyRequest<'_>) -> Option<Decision> {
        self.now_calls.fetch_add(1, Ordering::SeqCst);
        self.answers_now.then(|| verdict(request))
    }
}

fn verdict(request: &PolicyRequest<'_>) -> Decision {
    match request.target() {
        Some("refused") => Decision::deny("test"),
        Some("scoped") => Decision::needs_scopes(["notes:write"]),
        _ => Decision::Allow,
    }
}

#[tokio::test]
async fn each_message_gets_one_answer_decide_now_first() {
    let dev = DevIssuer::new("https://as.example.com");
    let token = dev.token(RESOURCE).sign();
    // (answers now, tool, expected status, decide calls, decide_now calls)
    let cases = [
        (true, "x", StatusCode::OK, 0, 1),
        (true, "refused", StatusCode::FORBIDDEN, 0, 1),
        (true, "scoped", StatusCode::FORBIDDEN, 0, 1),
        (false, "x", StatusCode::OK, 1, 1),
        (false, "refused", StatusCode::FORBIDDEN, 1, 1),
        (false, "scoped", StatusCode::FORBIDDEN, 1, 1),
    ];
    for (answers_now, tool, status, decides, nows) in cases {
        let decide_calls = Arc::new(AtomicUsize::new(0));
        let now_calls = Arc::new(AtomicUsize::new(0));
        let auth = McpAuth::builder()
            .resource(RESOURCE)
            .issuer(dev.issuer_config())
            .policy(CountingPolicy {
                answers_now,
                decide_calls: Arc::clone(&decide_calls),
                now_calls: Arc::clone(&now_calls),
            })
            .build()
            .unwrap();
        let response = auth
            .layer()
            .layer(inner())
            .oneshot(post(Some(&token), call(tool)))
            .await
            .unwrap();
        let case = format!("answers now {answers_now}, {tool}");
        assert_eq!(response.status(), status, "{case}");
        let error = response
            .extensions()
            .get::<AuthError>()
            .map(AuthError::kind);
        let expected = match tool {
            "refused" => Some(AuthErrorKind::AccessDenied),
            "scoped" => Some(AuthErrorKind::InsufficientScope),
            _ => None,
        };
        assert_eq!(error, expected, "{case}");
        assert_eq!(
            decide_calls.load(Ordering::SeqCst),
            decides,
            "{case}: decide"
        );
        assert_eq!(now_calls.load(Ordering::SeqCst), nows, "{case}: decide_now");
    }
}
