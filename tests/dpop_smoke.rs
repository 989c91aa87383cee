//! Smoke test of the DPoP flow through the whole stack.
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
use tower_mcp_auth::policy::ToolScopes;
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::{AuthError, Binding, McpAuth, Principal};

const RESOURCE: &str = "https://mcp.example.com/mcp";

#[tokio::test]
async fn dpop_flow() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(ToolScopes::new().tool("whoami", Vec::<String>::new()))
        .dpop(DpopConfig::with_mode(DpopMode::Allowed))
        .build()
        .unwrap();
    let inner = service_fn(|req: Request<Full<Bytes>>| async move {
        let p = req.extensions().get::<Principal>().unwrap();
        let body = format!("{:?} {:?}", p.binding(), p.key_thumbprint());
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    let svc = auth.layer().layer(inner);
    let key = DevDpopKey::new();
    let token = dev.token(RESOURCE).dpop_bound(key.jkt()).sign();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}}"#;
    let req = |scheme: &str, proof: Option<&str>| {
        let mut b = Request::post(RESOURCE)
            .header("authorization", format!("{scheme} {token}"))
            .header("content-type", "application/json");
        if let Some(p) = proof {
            b = b.header("dpop", p);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let proof = key.proof("POST", RESOURCE, &token);
    let resp = svc
        .clone()
        .oneshot(req("DPoP", Some(&proof)))
        .await
        .unwrap();
    let status = resp.status();
    let err = resp.extensions().get::<AuthError>().cloned();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{err:?} {text:?}");
    assert_eq!(
        String::from_utf8_lossy(&text),
        format!("{:?} {:?}", Binding::Dpop, Some(key.jkt()))
    );
    // Replay.
    let resp = svc
        .clone()
        .oneshot(req("DPoP", Some(&proof)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenges: Vec<_> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(challenges[0].starts_with("Bearer "), "{challenges:?}");
    assert!(
        challenges[1].starts_with("DPoP error=\"invalid_dpop_proof\""),
        "{challenges:?}"
    );
    // Downgrade.
    let resp = svc.clone().oneshot(req("Bearer", None)).await.unwrap();
    assert_eq!(resp.status(), 401);
    // Another key.
    let other = DevDpopKey::new();
    let resp = svc
        .clone()
        .oneshot(req("DPoP", Some(&other.proof("POST", RESOURCE, &token))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    println!("{:?}", resp.headers());
}
