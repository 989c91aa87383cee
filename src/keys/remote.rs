//! [`RemoteJwks`]: a JWK Set fetched from the issuer's `jwks_uri`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use url::Url;

use super::{KeyError, KeySet, KeySource, RefreshReason};
use crate::http_client::HttpClient;

/// Refresh policy for a [`RemoteJwks`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteJwksOptions {
    /// How long a fetched set is used when the response has no `Cache-Control: max-age`.
    pub default_ttl: Duration,
    /// Lower bound applied to `max-age`.
    pub min_ttl: Duration,
    /// Upper bound applied to `max-age`.
    pub max_ttl: Duration,
    /// At most one fetch per this interval, whatever the reason (unknown `kid` floods, failures).
    pub cooldown: Duration,
    /// How long past its expiry a set is still used while fetches fail.
    pub max_stale: Duration,
    /// Bound on one fetch, on top of the client's own timeout.
    pub fetch_timeout: Duration,
}

impl Default for RemoteJwksOptions {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

type Fetch = Shared<BoxFuture<'static, Result<(Arc<KeySet>, Duration), KeyError>>>;

#[derive(Default)]
struct State {
    set: Option<Arc<KeySet>>,
    expires_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// The fetch in flight, shared by every caller that wants it (single flight).
    inflight: Option<Fetch>,
}

/// Counters of a remote key set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySourceStats {
    /// Fetches started.
    pub fetches: u64,
    /// Fetches that failed.
    pub failures: u64,
    /// Requests answered with keys past their expiry because a fetch failed or was cooling down.
    pub stale_serves: u64,
    /// Refreshes refused because of the cooldown.
    pub cooldown_skips: u64,
}

#[derive(Debug, Default)]
struct Counters {
    fetches: AtomicU64,
    failures: AtomicU64,
    stale_serves: AtomicU64,
    cooldown_skips: AtomicU64,
}

/// A JWK Set fetched over HTTP, cached for its TTL, refreshed on expiry and on an unknown `kid`
/// at most once per cooldown, with concurrent refreshes merged into one fetch. When a fetch fails
/// the last good set keeps serving until `max_stale`.
pub struct RemoteJwks {
    url: Url,
    client: Arc<dyn HttpClient>,
    options: RemoteJwksOptions,
    state: RwLock<State>,
    counters: Counters,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url.as_str())
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RemoteJwks {
    /// A key set at `url`, fetched with `client`.
    pub fn new(url: Url, client: Arc<dyn HttpClient>) -> Self {
        Self::with_options(url, client, RemoteJwksOptions::default())
    }

    /// With a custom refresh policy.
    pub fn with_options(url: Url, client: Arc<dyn HttpClient>, options: RemoteJwksOptions) -> Self {
        Self {
            url,
            client,
            options,
            state: RwLock::new(State::default()),
            counters: Counters::default(),
        }
    }

    /// The counters (fetches, failures, stale serves, cooldown skips).
    pub fn stats(&self) -> KeySourceStats {
        let c = &self.counters;
        KeySourceStats {
            fetches: c.fetches.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            stale_serves: c.stale_serves.load(Ordering::Relaxed),
            cooldown_skips: c.cooldown_skips.load(Ordering::Relaxed),
        }
    }

    /// The URL keys are fetched from.
    pub fn url(&self) -> &Url {
        &self.url
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached set if it is still within `max_stale` of its expiry.
    fn usable_stale(&self, now: Instant) -> Option<Arc<KeySet>> {
        let state = self.read();
        match (&state.set, state.expires_at) {
            (Some(set), Some(exp)) if now <= exp + self.options.max_stale => {
                if now >= exp {
                    self.counters.stale_serves.fetch_add(1, Ordering::Relaxed);
                    // Per request while stale: debug; the failed fetch itself warns once per
                    // cooldown.
                    tracing::debug!(
                        target: "tower_mcp_auth::keys",
                        url = %self.url,
                        expired_secs_ago = (now - exp).as_secs(),
                        max_stale_secs = self.options.max_stale.as_secs(),
                        "serving an expired JWKS: no fresh keys could be fetched"
                    );
                }
                Some(set.clone())
            }
            _ => None,
        }
    }

    /// One fetch, owning everything it needs so that it can be shared without a lock.
    async fn fetch(
        client: Arc<dyn HttpClient>,
        url: Url,
        options: RemoteJwksOptions,
    ) -> Result<(Arc<KeySet>, Duration), KeyError> {
        let response = tokio::time::timeout(options.fetch_timeout, client.get(&url))
            .await
            .map_err(|_| KeyError::Unavailable("JWKS fetch timed out".into()))?
            .map_err(|e| KeyError::Unavailable(format!("JWKS fetch failed: {e}")))?;
        if !response.status.is_success() {
            return Err(KeyError::Unavailable(format!(
                "JWKS endpoint answered {}",
                response.status.as_u16()
            )));
        }
        let set = KeySet::from_jwks_json(&response.body)?;
        if set.is_empty() {
            return Err(KeyError::Unavailable("JWKS has no usable keys".into()));
        }
        let ttl = max_age(&response.headers)
            .map(|age| age.clamp(options.min_ttl, options.max_ttl))
            .unwrap_or(options.default_ttl);
        Ok((Arc::new(set), ttl))
    }
}

/// The reason without the token's `kid` (client input stays out of logs).
fn reason_name(reason: RefreshReason<'_>) -> &'static str {
    match reason {
        RefreshReason::Expired => "expired",
        RefreshReason::UnknownKey { .. } => "unknown_key",
    }
}

/// `Cache-Control: max-age=N` (ignoring `no-store`/`no-cache`, which the floor overrides).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let (name, value) = directive.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("max-age") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .map(Duration::from_secs)
}

#[async_trait]
impl KeySource for RemoteJwks {
    fn current(&self) -> Option<Arc<KeySet>> {
        let state = self.read();
        match (&state.set, state.expires_at) {
            (Some(set), Some(exp)) if Instant::now() < exp => Some(set.clone()),
            _ => None,
        }
    }

    async fn refresh(&self, reason: RefreshReason<'_>) -> Result<Arc<KeySet>, KeyError> {
        // Join the fetch in flight, or start one if the cooldown allows. The lock is held only
        // to read and update the state, never across the fetch itself.
        let fetch = {
            let mut state = self.write();
            match &state.inflight {
                Some(fetch) => fetch.clone(),
                None => {
                    let now = Instant::now();
                    if let Some(attempt) = state.last_attempt
                        && now < attempt + self.options.cooldown
                    {
                        drop(state);
                        self.counters.cooldown_skips.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            target: "tower_mcp_auth::keys",
                            url = %self.url,
                            reason = reason_name(reason),
                            "JWKS refresh skipped: cooling down since the last fetch"
                        );
                        return self.usable_stale(now).ok_or_else(|| {
                            KeyError::Unavailable("JWKS unavailable (refresh cooling down)".into())
                        });
                    }
                    state.last_attempt = Some(now);
                    self.counters.fetches.fetch_add(1, Ordering::Relaxed);
                    let fetch: Fetch =
                        Self::fetch(self.client.clone(), self.url.clone(), self.options.clone())
                            .boxed()
                            .shared();
                    state.inflight = Some(fetch.clone());
                    fetch
                }
            }
        };
        let result = fetch.clone().await;
        {
            let mut state = self.write();
            if state.inflight.as_ref().is_some_and(|f| f.ptr_eq(&fetch)) {
                state.inflight = None;
                if let Ok((set, ttl)) = &result {
                    state.set = Some(set.clone());
                    state.expires_at = Some(Instant::now() + *ttl);
                    // Once per fetch (by the caller that stores it), not once per joined caller.
                    tracing::debug!(
                        target: "tower_mcp_auth::keys",
                        url = %self.url,
                        reason = reason_name(reason),
                        keys = set.keys().len(),
                        ttl_secs = ttl.as_secs(),
                        "JWKS refreshed"
                    );
                }
            }
        }
        match result {
            Ok((set, _)) => Ok(set),
            Err(err) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "tower_mcp_auth::keys",
                    url = %self.url,
                    reason = reason_name(reason),
                    error = %err,
                    "JWKS refresh failed; keeping the last good keys if any"
                );
                self.usable_stale(Instant::now()).ok_or(err)
            }
        }
    }

    fn stats(&self) -> Option<KeySourceStats> {
        Some(RemoteJwks::stats(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_client::{HttpError, HttpResponse};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Mock {
        calls: AtomicUsize,
        body: std::sync::Mutex<Result<&'static str, ()>>,
    }

    #[async_trait]
    impl HttpClient for Mock {
        async fn get(&self, _url: &Url) -> Result<HttpResponse, HttpError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            match *self.body.lock().unwrap() {
                Ok(body) => {
                    let mut headers = http::HeaderMap::new();
                    headers.insert("cache-control", "public, max-age=5".parse().unwrap());
                    Ok(HttpResponse {
                        status: http::StatusCode::OK,
                        headers,
                        body: body.into(),
                    })
                }
                Err(()) => Err(HttpError::Transport("down".into())),
            }
        }
    }

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn source(body: Result<&'static str, ()>) -> (Arc<Mock>, Arc<RemoteJwks>) {
        let mock = Arc::new(Mock {
            calls: AtomicUsize::new(0),
            body: std::sync::Mutex::new(body),
        });
        let jwks = RemoteJwks::new("https://as.example/jwks".parse().unwrap(), mock.clone());
        (mock, Arc::new(jwks))
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_cause_one_fetch() {
        let (mock, jwks) = source(Ok(JWKS));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let jwks = jwks.clone();
            tasks.push(tokio::spawn(async move {
                let kid = format!("random-{i}");
                jwks.refresh(RefreshReason::UnknownKey { kid: Some(&kid) })
                    .await
                    .map(|set| set.keys().len())
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
        assert!(jwks.current().is_some());
        // Still inside the cooldown: another unknown kid does not fetch.
        jwks.refresh(RefreshReason::UnknownKey { kid: Some("x") })
            .await
            .unwrap();
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
    }

    /// Held by the tests that reach the refresh-failure event. A test on another thread
    /// registering that callsite while the capturing test sets up its subscriber can leave the
    /// callsite's cached interest at "never", and the capture then misses the event.
    static FAILURE_EVENT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn failure_without_cached_keys_is_unavailable() {
        let _serial = FAILURE_EVENT.lock().await;
        let (mock, jwks) = source(Err(()));
        assert!(jwks.refresh(RefreshReason::Expired).await.is_err());
        assert!(jwks.refresh(RefreshReason::Expired).await.is_err());
        assert_eq!(mock.calls.load(Ordering::SeqCst), 1, "cooldown applies");
        assert!(jwks.current().is_none());
    }

    /// Captures formatted events of the current thread.
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[tokio::test]
    async fn stats_and_events_for_refresh_failure_stale_serve_and_cooldown() {
        let _serial = FAILURE_EVENT.lock().await;
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let mock = Arc::new(Mock {
            calls: AtomicUsize::new(0),
            body: std::sync::Mutex::new(Ok(JWKS)),
        });
        let options = RemoteJwksOptions {
            min_ttl: Duration::from_millis(100),
            max_ttl: Duration::from_millis(100),
            cooldown: Duration::from_millis(100),
            max_stale: Duration::from_secs(60),
            ..RemoteJwksOptions::default()
        };
        let jwks = RemoteJwks::with_options(
            "https://as.example/jwks".parse().unwrap(),
            mock.clone(),
            options,
        );
        let stats = |fetches, failures, stale_serves, cooldown_skips| KeySourceStats {
            fetches,
            failures,
            stale_serves,
            cooldown_skips,
        };
        assert_eq!(jwks.stats(), stats(0, 0, 0, 0));

        // A successful refresh.
        jwks.refresh(RefreshReason::Expired).await.unwrap();
        assert_eq!(jwks.stats(), stats(1, 0, 0, 0));

        // Expired and the cooldown over, the key server fails: a failure, and a stale serve.
        *mock.body.lock().unwrap() = Err(());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(jwks.current().is_none(), "expired");
        let set = jwks.refresh(RefreshReason::Expired).await.unwrap();
        assert_eq!(set.keys().len(), 1, "the last good keys");
        assert_eq!(jwks.stats(), stats(2, 1, 1, 0));

        // Right after: cooling down, served stale again, no fetch.
        jwks.refresh(RefreshReason::UnknownKey {
            kid: Some("secret-looking-kid"),
        })
        .await
        .unwrap();
        assert_eq!(jwks.stats(), stats(2, 1, 2, 1));
        assert_eq!(mock.calls.load(Ordering::SeqCst), 2);

        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        for (level, message) in [
            ("DEBUG", "JWKS refreshed"),
            ("WARN", "JWKS refresh failed"),
            ("DEBUG", "serving an expired JWKS"),
            ("DEBUG", "JWKS refresh skipped: cooling down"),
        ] {
            assert!(
                logs.lines()
                    .any(|l| l.contains(level) && l.contains(message)),
                "{level} {message:?} in {logs}"
            );
        }
        // Never key material, nor the token's kid.
        for secret in ["f83OJ3D2xF1Bg8vub9", "x_FEzRu9m36HLN", "secret-looking-kid"] {
            assert!(!logs.contains(secret), "{secret} in {logs}");
        }
    }

    #[test]
    fn max_age_parsing() {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", "no-cache, Max-Age=120".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert("cache-control", "max-age=abc".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }
}
