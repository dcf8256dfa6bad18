//! The request-queue shape the node's batching tasks share (proposals,
//! forwarded writes, read rounds): a caller queues an item carrying its
//! reply channel and waits; one task drains the queue until cancelled.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The channel a queued item answers its caller on.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Queues the item `make` builds around a reply channel and waits for the
/// answer; `dropped` is the error when the task ends without answering.
pub(crate) async fn ask<I, T>(
    queue: &mpsc::Sender<I>,
    make: impl FnOnce(Reply<T>) -> I,
    dropped: impl FnOnce() -> ApiError,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    queue
        .send(make(reply))
        .await
        .map_err(|_| ApiError::Unavailable("node is shutting down".into()))?;
    answer.await.map_err(|_| dropped())?
}

/// The next queued item, or `None` once `cancel` fires or every sender is gone.
pub(crate) async fn next<I>(
    queue: &mut mpsc::Receiver<I>,
    cancel: &CancellationToken,
) -> Option<I> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        item = queue.recv() => item,
    }
}
