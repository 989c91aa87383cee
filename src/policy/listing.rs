//! TEMPORARY stub; replaced by the streaming listing filter.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Tools,
    Prompts,
    Resources,
}

pub(crate) trait ListingFilter: Send + Sync + 'static {
    fn visible<'a>(
        &'a self,
        kind: ListKind,
        item: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

pub(crate) struct ListRequests(pub(crate) Vec<(String, ListKind)>);

pin_project! {
    pub(crate) struct ListingBody<B> { #[pin] inner: B }
}

impl<B> ListingBody<B> {
    pub(crate) fn new(
        inner: B,
        _es: bool,
        _r: ListRequests,
        _f: Arc<dyn ListingFilter>,
        _m: usize,
    ) -> Self {
        Self { inner }
    }
}

impl<B> Body for ListingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(Into::into)
    }
}
