//! [`McpAuthService`]: routes the metadata paths, authenticates everything else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::dpop::{self, Dpop};
use crate::metadata::MetadataService;
use crate::policy::McpPolicy;
use crate::token::{ResponseBody, ResponseFuture, Token};

/// The service built by [`McpAuthLayer`](super::McpAuthLayer).
#[derive(Debug, Clone)]
pub struct McpAuthService<S> {
    pub(crate) inner: Dpop<Token<McpPolicy<S>>>,
    pub(crate) metadata: MetadataService,
    pub(crate) metadata_paths: Arc<[String; 2]>,
}

impl<S: Clone> McpAuthService<S> {
    /// Unwraps the inner service. (There is no `get_ref`: between a call and the next
    /// `poll_ready` the policy layer holds no service of its own, see [`McpPolicy`].)
    pub fn into_inner(self) -> S {
        self.inner.into_inner().into_inner().into_inner()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for McpAuthService<S>
where
    McpPolicy<S>: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = <McpPolicy<S> as Service<Request<ReqBody>>>::Error;
    type Future = McpAuthFuture<dpop::ResponseFuture<ResponseFuture<McpPolicy<S>, ReqBody>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        if self.metadata_paths.iter().any(|p| p == path) {
            let response = Some(self.metadata.respond(req.method()));
            return McpAuthFuture {
                kind: Kind::Metadata { response },
            };
        }
        McpAuthFuture {
            kind: Kind::Inner {
                future: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`McpAuthService`].
    pub struct McpAuthFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Metadata { response: Option<Response<Full<Bytes>>> },
        Inner { #[pin] future: F },
    }
}

impl<F, B, E> Future for McpAuthFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody<B>>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Metadata { response } => {
                let response = response
                    .take()
                    .expect("McpAuthFuture polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::local)))
            }
            KindProj::Inner { future } => future.poll(cx),
        }
    }
}

impl<F> std::fmt::Debug for McpAuthFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpAuthFuture").finish_non_exhaustive()
    }
}
