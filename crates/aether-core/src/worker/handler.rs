//! Handlers with their types erased, and how a run ends.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::TaskContext;
use crate::envelope::{Codec, Envelope};
use crate::error::{BoxError, Result};

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Encodes a handler's result data in the codec the perform came in.
pub(crate) type Produce = Box<dyn FnOnce(Codec) -> Result<Vec<u8>> + Send>;

/// A failed handler run: the message, and data for the completion if the handler gave any.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) data: Option<Produce>,
}

impl Failure {
    pub(crate) fn message(message: String) -> Failure {
        Failure {
            message,
            data: None,
        }
    }
}

/// A handler with its types erased.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Starts the handler on `env`'s data (read before it returns).
    fn call(&self, ctx: TaskContext, env: &Envelope) -> BoxFuture<Result<Produce, Failure>>;
}

pub(super) struct FnHandler<F, P, R, E, Fut> {
    pub(super) f: F,
    #[allow(clippy::type_complexity)]
    pub(super) _types: std::marker::PhantomData<fn(P) -> (R, E, Fut)>,
}

impl<F, P, R, E, Fut> Handler for FnHandler<F, P, R, E, Fut>
where
    F: Fn(TaskContext, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    fn call(&self, ctx: TaskContext, env: &Envelope) -> BoxFuture<Result<Produce, Failure>> {
        let payload = match env.data::<P>() {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("payload does not fit the handler: {e}");
                return Box::pin(async move { Err(Failure::message(msg)) });
            }
        };
        let fut = (self.f)(ctx, payload);
        Box::pin(async move {
            match fut.await {
                Ok(r) => Ok(Box::new(move |codec: Codec| codec.to_vec(&r)) as Produce),
                Err(e) => Err(Failure::message(e.into().to_string())),
            }
        })
    }
}
