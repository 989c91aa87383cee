//! The policy layer in process: composition invariants, the tool-result denial style,
//! combinators and the TOML scope map.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_mcp_auth::error::ChallengeConfig;
use tower_mcp_auth::policy::{
    Decision, DenialStyle, McpPolicyLayer, Policy, PolicyConfig, PolicyRequest, ToolScopes, all,
    any, not,
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
