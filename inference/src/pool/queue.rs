//! The pool's bounded request queue, shared by its replica threads, and the batching
//! policy they apply when they take work from it.
//!
//! Replica threads block on a `Condvar` (they are plain OS threads, never tokio
//! tasks). Callers never block: `push` fails at once when the queue is full.
//!
//! Batch forming: a replica takes the oldest request whose `BatchKey` no other replica
//! is filling, then keeps collecting requests of that key until `max_batch` items or
//! `max_delay` after the first request was enqueued. Only one batch per key is being
//! filled at a time, so concurrent callers end up in the same batch rather than spread
//! thinly over idle replicas; requests of other keys can still start elsewhere.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::batcher::BatchKey;
use crate::error::Result;
use crate::tensor::TensorMap;

pub(crate) struct Request {
    pub inputs: TensorMap,
    pub key: BatchKey,
    /// Items along dim 0 (1 for models that are not batched).
    pub items: usize,
    pub enqueued_at: Instant,
    pub reply: oneshot::Sender<Result<TensorMap>>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchPolicy {
    /// False when the model has no dynamic dim 0: every request runs alone.
    pub batchable: bool,
    pub max_batch: usize,
    pub max_delay: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    Full,
    Closed,
}

struct QueueState {
    pending: VecDeque<Request>,
    closed: bool,
    /// Keys some replica is currently filling a batch for.
    filling: Vec<BatchKey>,
}

pub(crate) struct RequestQueue {
    state: Mutex<QueueState>,
    wakeup: Condvar,
    capacity: usize,
}

impl RequestQueue {
    pub(crate) fn new(capacity: usize) -> RequestQueue {
        RequestQueue {
            state: Mutex::new(QueueState {
                pending: VecDeque::new(),
                closed: false,
                filling: Vec::new(),
            }),
            wakeup: Condvar::new(),
            capacity,
        }
    }

    // Every critical section leaves the state consistent before anything that could
    // panic, so a poisoned lock still guards valid data.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Enqueues without blocking; `Full` is backpressure the caller may retry.
    pub(crate) fn push(&self, request: Request) -> std::result::Result<(), PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.pending.len() >= self.capacity {
            return Err(PushError::Full);
        }
        state.pending.push_back(request);
        drop(state);
        // All: an idle replica may be waiting for an unfilled key while the filler of
        // this key waits for exactly this request.
        self.wakeup.notify_all();
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Refuses new requests; replicas drain what is queued, then `next_batch` gives `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wakeup.notify_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Blocks until a batch is ready under `policy`; `None` once closed and drained.
    /// Requests whose caller has gone away are dropped here instead of being run.
    pub(crate) fn next_batch(&self, policy: &BatchPolicy) -> Option<Vec<Request>> {
        let mut state = self.lock();
        let first = loop {
            let startable = state
                .pending
                .iter()
                .position(|request| !state.filling.contains(&request.key));
            if let Some(request) = startable.and_then(|index| state.pending.remove(index)) {
                if request.reply.is_closed() {
                    continue;
                }
                break request;
            }
            if state.closed && state.pending.is_empty() {
                return None;
            }
            state = self
                .wakeup
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        };
        if !policy.batchable || first.items >= policy.max_batch {
            return Some(vec![first]);
        }

        let key = first.key.clone();
        let deadline = first.enqueued_at + policy.max_delay;
        let mut items = first.items;
        let mut batch = vec![first];
        state.filling.push(key.clone());
        loop {
            let mut index = 0;
            while index < state.pending.len() && items < policy.max_batch {
                let candidate = &state.pending[index];
                let fits = candidate.key == key && items + candidate.items <= policy.max_batch;
                if !fits {
                    index += 1;
                    continue;
                }
                if let Some(request) = state.pending.remove(index) {
                    if !request.reply.is_closed() {
                        items += request.items;
                        batch.push(request);
                    }
                }
            }
            let now = Instant::now();
            if items >= policy.max_batch || state.closed || now >= deadline {
                break;
            }
            state = self
                .wakeup
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.filling.retain(|filling| *filling != key);
        drop(state);
        // Another replica may have been waiting for this key to stop filling.
        self.wakeup.notify_all();
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tensor::Tensor;

    fn request(
        width: usize,
        rows: usize,
        tag: f32,
    ) -> (Request, oneshot::Receiver<Result<TensorMap>>) {
        let tensor = Tensor::from_vec(vec![rows, width], vec![tag; rows * width]).unwrap();
        let inputs = TensorMap::from([("x".to_string(), tensor)]);
        let (reply, receiver) = oneshot::channel();
        let request = Request {
            key: BatchKey::of(&inputs),
            inputs,
            items: rows,
            enqueued_at: Instant::now(),
            reply,
        };
        (request, receiver)
    }

    fn tags(batch: &[Request]) -> Vec<f32> {
        batch
            .iter()
            .map(|request| request.inputs["x"].to_vec::<f32>().unwrap()[0])
            .collect()
    }

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn full_queue_refuses_without_blocking_and_close_refuses_everything() {
        let queue = RequestQueue::new(2);
        let mut receivers = Vec::new();
        for tag in 0..2 {
            let (request, receiver) = request(2, 1, tag as f32);
            receivers.push(receiver);
            assert_eq!(queue.push(request), Ok(()));
        }
        let (third, _receiver) = request(2, 1, 2.0);
        assert_eq!(queue.push(third), Err(PushError::Full));
        assert_eq!(queue.len(), 2);
        queue.close();
        let (late, _receiver) = request(2, 1, 3.0);
        assert_eq!(queue.push(late), Err(PushError::Closed));
    }

    #[test]
    fn a_full_batch_leaves_at_once_and_keeps_arrival_order() {
        let queue = RequestQueue::new(16);
        let mut receivers = Vec::new();
        for tag in 0..5 {
            let (request, receiver) = request(2, 1, tag as f32);
            receivers.push(receiver);
            queue.push(request).unwrap();
        }
        let policy = BatchPolicy {
            batchable: true,
            max_batch: 4,
            max_delay: LONG,
        };
        let started = Instant::now();
        let batch = queue.next_batch(&policy).unwrap();
        assert!(
            started.elapsed() < LONG / 2,
            "a full batch must not wait for the delay"
        );
        assert_eq!(tags(&batch), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn requests_with_other_trailing_dims_are_not_merged() {
        let queue = RequestQueue::new(16);
        let mut receivers = Vec::new();
        for (width, tag) in [(2, 0.0), (3, 1.0), (2, 2.0), (3, 3.0)] {
            let (request, receiver) = request(width, 1, tag);
            receivers.push(receiver);
            queue.push(request).unwrap();
        }
        queue.close(); // closing makes the fillers leave without waiting for the delay
        let policy = BatchPolicy {
            batchable: true,
            max_batch: 8,
            max_delay: LONG,
        };
        assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![0.0, 2.0]);
        assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![1.0, 3.0]);
        assert!(queue.next_batch(&policy).is_none());
    }

    #[test]
    fn items_never_exceed_max_batch_and_oversized_requests_run_alone() {
        let queue = RequestQueue::new(16);
        let mut receivers = Vec::new();
        for (rows, tag) in [(3, 0.0), (2, 1.0), (1, 2.0), (9, 3.0)] {
            let (request, receiver) = request(2, rows, tag);
            receivers.push(receiver);
            queue.push(request).unwrap();
        }
        queue.close();
        let policy = BatchPolicy {
            batchable: true,
            max_batch: 4,
            max_delay: LONG,
        };
        // 3 + 2 would be 5: the 2-row request waits, the 1-row one fits.
        assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![0.0, 2.0]);
        assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![1.0]);
        assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![3.0]);
        assert!(queue.next_batch(&policy).is_none());
    }

    #[test]
    fn an_unbatchable_policy_gives_one_request_per_batch() {
        let queue = RequestQueue::new(16);
        let mut receivers = Vec::new();
        for tag in 0..3 {
            let (request, receiver) = request(2, 1, tag as f32);
            receivers.push(receiver);
            queue.push(request).unwrap();
        }
        let policy = BatchPolicy {
            batchable: false,
            max_batch: 8,
            max_delay: LONG,
        };
        for tag in 0..3 {
            assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![tag as f32]);
        }
    }

    #[test]
    fn a_partial_batch_leaves_after_max_delay() {
        let queue = RequestQueue::new(16);
        let (request, _receiver) = request(2, 1, 0.0);
        queue.push(request).unwrap();
        let delay = Duration::from_millis(50);
        let policy = BatchPolicy {
            batchable: true,
            max_batch: 8,
            max_delay: delay,
        };
        let started = Instant::now();
        let batch = queue.next_batch(&policy).unwrap();
        assert_eq!(batch.len(), 1);
        assert!(started.elapsed() >= delay - Duration::from_millis(5));
    }

    #[test]
    fn cancelled_requests_are_dropped_not_run() {
        let queue = RequestQueue::new(16);
        let (cancelled, receiver) = request(2, 1, 0.0);
        queue.push(cancelled).unwrap();
        drop(receiver);
        let (kept, _receiver) = request(2, 1, 1.0);
        queue.push(kept).unwrap();
        queue.close();
        let policy = BatchPolicy {
            batchable: true,
            max_batch: 8,
            max_delay: LONG,
        };
        assert_eq!(tags(&queue.next_batch(&policy).unwrap()), vec![1.0]);
        assert!(queue.next_batch(&policy).is_none());
    }

    #[test]
    fn a_waiting_filler_collects_requests_pushed_from_other_threads() {
        let queue = Arc::new(RequestQueue::new(16));
        let (first, _first_receiver) = request(2, 1, 0.0);
        queue.push(first).unwrap();
        let filler = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                let policy = BatchPolicy {
                    batchable: true,
                    max_batch: 3,
                    max_delay: LONG,
                };
                tags(&queue.next_batch(&policy).unwrap())
            })
        };
        let mut receivers = Vec::new();
        for tag in 1..3 {
            let (request, receiver) = request(2, 1, tag as f32);
            receivers.push(receiver);
            queue.push(request).unwrap();
        }
        // Completes once the third item arrives, far before the 30 s delay.
        assert_eq!(filler.join().unwrap(), vec![0.0, 1.0, 2.0]);
    }
}
