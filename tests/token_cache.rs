//! The verified-token cache and revocation: cached verdicts are re-checked on every hit.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use tower_mcp_auth::dpop::{DpopConfig, DpopMode};
use tower_mcp_auth::policy::{Decision, PolicyRequest};
use tower_mcp_auth::testing::{DevDpopKey, DevIssuer};
use tower_mcp_auth::token::{CacheAdmission, InMemoryRevocationList};
use tower_mcp_auth::{AuthError, AuthErrorKind, McpAuth, McpAuthConfig};

const RESOURCE: &str = "https://mcp.example.com/mcp";

fn builder(dev: &DevIssuer) -> tower_mcp_auth::McpAuthBuilder {
    McpAuth::builder()
        .resource(RESOURCE)
        .issuer(dev.issuer_config())
        .policy(|_: &PolicyRequest<'_>| Decision::Allow)
}

async fn send(
    auth: &McpAuth,
    scheme: &str,
    token: &str,
    proof: Option<String>,
) -> (StatusCode, Option<AuthErrorKind>) {
    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
    });
    let mut request = Request::get(RESOURCE).header("authorization", format!("{scheme} {token}"));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let response = auth
        .layer()
        .layer(inner)
        .oneshot(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let kind = response
        .extensions()
        .get::<AuthError>()
        .map(AuthError::kind);
    (response.status(), kind)
}

/// Sends `token` until its verdict is cached (admitted on second sight by default).
async fn warm(auth: &McpAuth, scheme: &str, token: &str, proof: impl Fn() -> Option<String>) {
    for _ in 0..2 {
        assert_eq!(send(auth, scheme, token, proof()).await.0, 200);
    }
}

#[tokio::test]
async fn a_token_is_cached_on_its_second_sighting() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = builder(&dev).build().unwrap();
    let token = dev.token(RESOURCE).sign();
    let stats = || {
        let s = auth.cache_stats().unwrap();
        (s.misses, s.hits, s.entries)
    };
    assert_eq!(send(&auth, "Bearer", &token, None).await.0, 200);
    assert_eq!(stats(), (1, 0, 0), "first sighting: verified, not cached");
    assert_eq!(send(&auth, "Bearer", &token, None).await.0, 200);
    assert_eq!(stats(), (2, 0, 1), "second sighting: verified and cached");
    assert_eq!(send(&auth, "Bearer", &token, None).await.0, 200);
    assert_eq!(stats(), (2, 1, 1), "third: a hit");
    // An altered token is a different key: verified, and refused.
    let altered = format!("{token}x");
    assert_eq!(send(&auth, "Bearer", &altered, None).await.0, 401);
}

#[tokio::test]
async fn first_sight_admission_caches_at_once() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut config = McpAuthConfig::new(RESOURCE);
    config.token.cache_admission = CacheAdmission::FirstSight;
    let auth = builder(&dev)
        .config(config)
        .issuer(dev.issuer_config())
        .build()
        .unwrap();
    let token = dev.token(RESOURCE).sign();
    assert_eq!(send(&auth, "Bearer", &token, None).await.0, 200);
    assert_eq!(send(&auth, "Bearer", &token, None).await.0, 200);
    let stats = auth.cache_stats().unwrap();
    assert_eq!((stats.misses, stats.hits), (1, 1));
}

#[tokio::test]
async fn one_shot_tokens_never_fill_the_cache() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = builder(&dev).build().unwrap();
    let kept = dev.token(RESOURCE).sign();
    warm(&auth, "Bearer", &kept, || None).await;
    for _ in 0..300 {
        let once = dev.token(RESOURCE).sign();
        assert_eq!(send(&auth, "Bearer", &once, None).await.0, 200);
    }
    let stats = auth.cache_stats().unwrap();
    assert_eq!(stats.entries, 1, "only the repeated token is cached");
    assert_eq!(send(&auth, "Bearer", &kept, None).await.0, 200);
    assert_eq!(auth.cache_stats().unwrap().hits, 1);
}

#[tokio::test]
async fn refused_tokens_are_never_admitted() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = builder(&dev).build().unwrap();
    let token = dev.token("https://other.example.com/mcp").sign();
    for _ in 0..3 {
        assert_eq!(send(&auth, "Bearer", &token, None).await.0, 401);
    }
    let stats = auth.cache_stats().unwrap();
    assert_eq!((stats.misses, stats.hits), (3, 0));
}

#[tokio::test]
async fn revocation_applies_to_cached_verdicts() {
    let dev = DevIssuer::new("https://as.example.com");
    let list = Arc::new(InMemoryRevocationList::new());
    let auth = builder(&dev).revocation_list(list.clone()).build().unwrap();
    let until = SystemTime::now() + Duration::from_secs(600);

    let by_jti = dev.token(RESOURCE).claim("jti", "jti-1").sign();
    warm(&auth, "Bearer", &by_jti, || None).await;
    let hits = auth.cache_stats().unwrap().hits;
    list.revoke_jti("jti-1", until);
    assert_eq!(
        send(&auth, "Bearer", &by_jti, None).await,
        (StatusCode::UNAUTHORIZED, Some(AuthErrorKind::Revoked))
    );
    assert_eq!(
        auth.cache_stats().unwrap().hits,
        hits + 1,
        "refused on a cache hit"
    );

    let by_subject = dev.token(RESOURCE).subject("mallory").sign();
    warm(&auth, "Bearer", &by_subject, || None).await;
    list.revoke_subject("https://as.example.com", "mallory", until);
    assert_eq!(
        send(&auth, "Bearer", &by_subject, None).await.1,
        Some(AuthErrorKind::Revoked)
    );

    let by_client = dev.token(RESOURCE).client_id("leaky-client").sign();
    list.revoke_client("leaky-client", until);
    assert_eq!(
        send(&auth, "Bearer", &by_client, None).await.1,
        Some(AuthErrorKind::Revoked)
    );

    // Entries expire, so the list does not grow forever.
    list.revoke_jti("short", SystemTime::now());
    assert_eq!(list.len(), 3);
    let other = dev.token(RESOURCE).sign();
    assert_eq!(send(&auth, "Bearer", &other, None).await.0, 200);
    assert!(auth.cache_stats().unwrap().revoked >= 3);
}

#[tokio::test]
async fn revocation_works_without_the_cache() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut config = McpAuthConfig::new(RESOURCE);
    config.token.cache_max_entries = 0;
    let list = Arc::new(InMemoryRevocationList::new());
    let auth = builder(&dev)
        .config(config)
        .issuer(dev.issuer_config())
        .revocation_list(list.clone())
        .build()
        .unwrap();
    assert!(auth.cache_stats().is_none());
    let token = dev.token(RESOURCE).claim("jti", "j").sign();
    assert_eq!(send(&auth, "Bearer", &token, None).await.0, 200);
    list.revoke_jti("j", SystemTime::now() + Duration::from_secs(60));
    assert_eq!(
        send(&auth, "Bearer", &token, None).await.1,
        Some(AuthErrorKind::Revoked)
    );
}

#[tokio::test]
async fn cached_token_still_expires() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = builder(&dev).leeway(Duration::ZERO).build().unwrap();
    let token = dev
        .token(RESOURCE)
        .expires_in(Duration::from_secs(2))
        .sign();
    // `exp` is whole seconds: two seconds leave at least one for warming on a busy machine.
    warm(&auth, "Bearer", &token, || None).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        send(&auth, "Bearer", &token, None).await,
        (StatusCode::UNAUTHORIZED, Some(AuthErrorKind::Expired))
    );
}

#[tokio::test]
async fn binding_is_checked_on_every_hit() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = builder(&dev)
        .dpop(DpopConfig::with_mode(DpopMode::Allowed))
        .build()
        .unwrap();
    let key = DevDpopKey::new();
    let token = dev.token(RESOURCE).dpop_bound(key.jkt()).sign();
    let proof = || Some(key.proof("GET", RESOURCE, &token));
    warm(&auth, "DPoP", &token, proof).await;
    assert_eq!(send(&auth, "DPoP", &token, proof()).await.0, 200);
    assert_eq!(auth.cache_stats().unwrap().hits, 1);
    // Cached, but presented as a bearer token: refused.
    assert_eq!(
        send(&auth, "Bearer", &token, None).await,
        (
            StatusCode::UNAUTHORIZED,
            Some(AuthErrorKind::MissingProofOfPossession)
        )
    );
    // Cached, with another key's proof: refused.
    let other = DevDpopKey::new();
    let foreign = Some(other.proof("GET", RESOURCE, &token));
    assert_eq!(
        send(&auth, "DPoP", &token, foreign).await.1,
        Some(AuthErrorKind::DpopKeyMismatch)
    );
}

#[tokio::test]
async fn the_cache_is_bounded_in_bytes_as_well_as_entries() {
    let dev = DevIssuer::new("https://as.example.com");
    let mut config = McpAuthConfig::new(RESOURCE);
    config.token.cache_max_entries = 1_000;
    config.token.cache_max_bytes = 64 * 1024;
    let auth = builder(&dev)
        .config(config)
        .issuer(dev.issuer_config())
        .build()
        .unwrap();
    // 100 tokens with 4 KiB of custom claims each: about 400 KiB of verdicts, 6x the budget.
    let padding = "p".repeat(4096);
    for i in 0..100 {
        let token = dev
            .token(RESOURCE)
            .claim("padding", padding.as_str())
            .claim("jti", format!("big-{i}"))
            .sign();
        warm(&auth, "Bearer", &token, || None).await;
    }
    let stats = auth.cache_stats().unwrap();
    assert!(stats.bytes <= 64 * 1024, "{stats:?}");
    assert!(
        (1..=16).contains(&stats.entries),
        "at most 64 KiB / 4 KiB entries: {stats:?}"
    );
    // Small tokens are limited by the per-entry share (64 KiB / 1000 = 65 B each: by count,
    // never more than 1000), and each is weighed at its estimated size.
    let small = dev.token(RESOURCE).sign();
    warm(&auth, "Bearer", &small, || None).await;
    assert!(auth.cache_stats().unwrap().bytes <= 64 * 1024);
}

/// What a hit hands on: the principal, its binding, and no `Authorization` header. (Whether the
/// hit was settled inside `call` or in the future is not observable through the whole stack;
/// the unit table in `src/token/service.rs` pins that.)
#[tokio::test]
async fn a_cache_hit_hands_on_the_principal_without_the_token() {
    let dev = DevIssuer::new("https://as.example.com");
    let auth = builder(&dev).build().unwrap();
    let token = dev.token(RESOURCE).subject("alice").sign();
    warm(&auth, "Bearer", &token, || None).await;
    let inner = service_fn(|req: Request<Full<Bytes>>| async move {
        let principal = req.extensions().get::<tower_mcp_auth::Principal>();
        let seen = format!(
            "{:?} {:?} {}",
            principal.map(|p| p.subject().to_owned()),
            principal.map(|p| p.binding()),
            req.headers().contains_key("authorization"),
        );
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(seen))))
    });
    let request = Request::get(RESOURCE)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = auth.layer().layer(inner).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"Some(\"alice\") Some(Bearer) false");
    let stats = auth.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 2));
}
