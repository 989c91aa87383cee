//! Several trusted issuers: each token is verified only with its own issuer's keys, algorithms
//! and required claims, and the metadata lists every issuer.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use tower_mcp_auth::policy::{Decision, PolicyRequest};
use tower_mcp_auth::testing::DevIssuer;
use tower_mcp_auth::token::RequiredClaims;
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth};

const RESOURCE: &str = "https://mcp.example.com/mcp";

async fn status(auth: &McpAuth, token: &str) -> (u16, Option<AuthErrorKind>) {
    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let response = auth
        .layer()
        .layer(inner)
        .oneshot(
            Request::get(RESOURCE)
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let kind = response
        .extensions()
        .get::<AuthError>()
        .map(AuthError::kind);
    (response.status().as_u16(), kind)
}

#[tokio::test]
async fn each_issuer_keeps_its_own_keys_and_rules() {
    let a = DevIssuer::new("https://a.example.com");
    let b = DevIssuer::new("https://b.example.com");
    let mut lenient = RequiredClaims::default();
    lenient.jti = false;
    let mut b_config = b.issuer_config();
    b_config.required_claims = Some(lenient);
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(a.issuer_config())
        .issuer(b_config)
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
        .build()
        .unwrap();
    assert_eq!(
        auth.metadata().authorization_servers,
        ["https://a.example.com", "https://b.example.com"]
    );
    assert_eq!(status(&auth, &a.token(RESOURCE).sign()).await.0, 200);
    assert_eq!(status(&auth, &b.token(RESOURCE).sign()).await.0, 200);
    // B's token without `jti` is fine under B's rules; A's is not under A's.
    assert_eq!(
        status(&auth, &b.token(RESOURCE).without_claim("jti").sign())
            .await
            .0,
        200
    );
    assert_eq!(
        status(&auth, &a.token(RESOURCE).without_claim("jti").sign()).await,
        (401, Some(AuthErrorKind::MissingClaim))
    );
    // A token naming issuer A but signed with B's key is refused: keys are per issuer.
    let forged = b
        .token(RESOURCE)
        .claim("iss", "https://a.example.com")
        .sign();
    assert_eq!(
        status(&auth, &forged).await.1,
        Some(AuthErrorKind::UnknownKey)
    );
}

#[tokio::test]
async fn mtls_support_is_advertised_when_configured() {
    let dev = DevIssuer::new("https://a.example.com");
    let mut config = tower_mcp_auth::McpAuthConfig::new(RESOURCE);
    config.mtls = true;
    let auth = McpAuth::builder()
        .config(config)
        .issuer(dev.issuer_config())
        .build()
        .unwrap();
    let json = serde_json::to_value(auth.metadata()).unwrap();
    assert_eq!(json["tls_client_certificate_bound_access_tokens"], true);
}
