//! A fixed number of warm requests, for counting instructions with callgrind: unlike wall-clock
//! medians on a noisy machine, the count is the same run after run, so a change of a few hundred
//! instructions per request shows.
//!
//! `scripts/instructions` runs it; by hand:
//!
//! ```text
//! instructions-<hash> stack 4000   # the whole stack, same token every time (cache hit)
//! instructions-<hash> bare 4000    # the bare service
//! instructions-<hash> sha256 4000  # only the SHA-256 of the token (the cache key)
//! instructions-<hash> stack-64k 400  # the whole stack, a 64 KiB `tools/call`
//! instructions-<hash> bare-64k 400   # the bare service, the same body
//! ```
//!
//! Under `cargo bench` (no mode given) it prints this usage and exits.

use std::hint::black_box;

use bytes::Bytes;
use http::StatusCode;
use sha2::{Digest, Sha256};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

mod common;
use common::{CALL_WHOAMI, fixture, install_jsonwebtoken_provider, ok_handler, post};

const MODES: [&str; 5] = ["stack", "bare", "sha256", "stack-64k", "bare-64k"];

fn main() {
    let mut args = std::env::args().skip(1);
    let (mode, n) = match (
        args.next(),
        args.next().and_then(|n| n.parse::<usize>().ok()),
    ) {
        (Some(mode), Some(n)) if MODES.contains(&mode.as_str()) => (mode, n),
        _ => {
            println!(
                "instructions: run by scripts/instructions (modes: {} N)",
                MODES.join("|")
            );
            return;
        }
    };
    install_jsonwebtoken_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_dev, auth, token) = fixture();
    let bearer = format!("Bearer {token}");
    let mut stack = auth.layer().layer(tower::service_fn(ok_handler));
    let mut bare = tower::service_fn(ok_handler);
    let small = Bytes::from_static(CALL_WHOAMI);
    let large = common::large_call("whoami");
    rt.block_on(async {
        // Verifies and caches the token: every counted request is a cache hit.
        let first = stack
            .ready()
            .await
            .unwrap()
            .call(post(Bytes::from_static(CALL_WHOAMI), &bearer, None))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        for _ in 0..n {
            match mode.as_str() {
                "stack" => call_ok(&mut stack, &small, &bearer).await,
                "bare" => call_ok(&mut bare, &small, &bearer).await,
                "stack-64k" => call_ok(&mut stack, &large, &bearer).await,
                "bare-64k" => call_ok(&mut bare, &large, &bearer).await,
                _ => drop(black_box(Sha256::digest(black_box(token.as_bytes())))),
            }
        }
    });
}

/// One warm request through `svc`, checked to be a 200 and then dropped.
async fn call_ok<S, B>(svc: &mut S, body: &Bytes, bearer: &str)
where
    S: Service<http::Request<common::Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    let request = black_box(post(body.clone(), bearer, None));
    let response = svc.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(black_box(response));
}
