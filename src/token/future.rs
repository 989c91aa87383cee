//! [`ResponseFuture`] of the token layer: verify, then call the inner service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::ResponseBody;
use super::layer::TokenConfig;
use crate::audit::AuditRecord;
use crate::error::AuthError;
use crate::principal::Principal;

type VerifyFuture = Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send>>;

pin_project! {
    /// Response future of [`Token`](super::Token).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, S::Future, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, ReqBody> {
        Verifying {
            verify: VerifyFuture,
            request: Option<Request<ReqBody>>,
            service: Option<S>,
            config: Arc<TokenConfig>,
        },
        Calling {
            #[pin]
            future: F,
        },
        Rejected {
            response: Option<Response<Full<Bytes>>>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn verifying(
        verify: VerifyFuture,
        request: Request<ReqBody>,
        service: S,
        config: Arc<TokenConfig>,
    ) -> Self {
        Self {
            state: State::Verifying {
                verify,
                request: Some(request),
                service: Some(service),
                config,
            },
        }
    }

    pub(crate) fn called(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }

    pub(crate) fn rejected(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Verifying {
                    verify,
                    request,
                    service,
                    config,
                } => {
                    let result = ready!(verify.as_mut().poll(cx));
                    match result {
                        Ok(principal) => {
                            let (Some(mut request), Some(mut service)) =
                                (request.take(), service.take())
                            else {
                                panic!("ResponseFuture polled after completion");
                            };
                            admit(&mut request, principal, config);
                            let future = service.call(request);
                            this.state.set(State::Calling { future });
                        }
                        Err(error) => {
                            let response = config.reject(error);
                            this.state.set(State::Rejected { response: None });
                            return Poll::Ready(Ok(response.map(ResponseBody::local)));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    return future
                        .poll(cx)
                        .map(|result| result.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::local)));
                }
            }
        }
    }
}

/// Hands a verified request on: drops the `Authorization` header (unless kept), tells the audit
/// record who is calling and inserts the [`Principal`].
pub(super) fn admit<B>(request: &mut Request<B>, principal: Principal, config: &TokenConfig) {
    if !config.keep_authorization {
        request.headers_mut().remove(AUTHORIZATION);
    }
    if let Some(record) = request.extensions().get::<AuditRecord>() {
        record.set_principal(&principal);
    }
    request.extensions_mut().insert(principal);
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
