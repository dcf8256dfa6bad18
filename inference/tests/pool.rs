//! Pools on the tiny fixture models: batching is exact, outputs reach the right
//! caller, a full queue pushes back, close drains.
//!
//! Determinism: every request of a scenario is enqueued in the first poll of
//! `join_all` (infer enqueues before its first await), so the batches formed do not
//! depend on timing. Waits are bounded by tokio timeouts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use floe_inference::{
    Device, Error, GpuInventory, Pool, PoolHandle, PoolOptions, Tensor, TensorMap,
};
use futures::future::join_all;

const BOUND: Duration = Duration::from_secs(60);

async fn pool(model: &str, options: PoolOptions) -> PoolHandle {
    Pool::start(&common::runtime(), common::fixture(model), options)
        .await
        .unwrap()
}

fn double_inputs(rows: usize, width: usize, tag: f32) -> TensorMap {
    let x: Vec<f32> = (0..rows * width).map(|i| tag * 1000.0 + i as f32).collect();
    let k: Vec<i64> = (0..rows).map(|i| (tag as i64) * 100 + i as i64).collect();
    TensorMap::from([
        (
            "x".to_string(),
            Tensor::from_vec(vec![rows, width], x).unwrap(),
        ),
        ("k".to_string(), Tensor::from_vec(vec![rows, 1], k).unwrap()),
    ])
}

fn assert_doubled(inputs: &TensorMap, outputs: &TensorMap) {
    let x = inputs["x"].to_vec::<f32>().unwrap();
    let y = outputs["y"].to_vec::<f32>().unwrap();
    assert_eq!(outputs["y"].shape(), inputs["x"].shape());
    assert_eq!(y, x.iter().map(|v| v * 2.0).collect::<Vec<_>>());
    let k = inputs["k"].to_vec::<i64>().unwrap();
    assert_eq!(
        outputs["z"].to_vec::<i64>().unwrap(),
        k.iter().map(|v| v + 1).collect::<Vec<_>>()
    );
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .expect("did not finish within the bound")
}

#[tokio::test]
async fn concurrent_callers_share_batches_and_get_their_own_outputs() {
    let options = PoolOptions {
        name: "double".into(),
        max_batch: 4,
        max_delay: Duration::from_secs(10),
        ..PoolOptions::default()
    };
    let pool = pool("double.onnx", options).await;
    assert!(pool.is_batched());
    let requests: Vec<TensorMap> = (0..16).map(|tag| double_inputs(1, 3, tag as f32)).collect();
    let answers = bounded(join_all(
        requests.iter().map(|inputs| pool.infer(inputs.clone())),
    ))
    .await;
    for (inputs, outputs) in requests.iter().zip(answers) {
        assert_doubled(inputs, &outputs.unwrap());
    }
    // Full batches leave at once: four runs of four, none waiting out the 10 s delay.
    let stats = pool.stats();
    assert_eq!(stats.batch_size_histogram, BTreeMap::from([(4, 4)]));
    assert_eq!((stats.completed, stats.failed, stats.rejected), (16, 0, 0));
    assert_eq!(stats.mean_batch_size, 4.0);
    assert!(stats.latency_p99_ms < 10_000.0);
}

#[tokio::test]
async fn multi_row_requests_are_split_back_by_their_row_counts() {
    let options = PoolOptions {
        name: "double".into(),
        max_batch: 5,
        max_delay: Duration::from_millis(20),
        ..PoolOptions::default()
    };
    let pool = pool("double.onnx", options).await;
    let requests: Vec<TensorMap> = (0..12)
        .map(|tag| double_inputs(1 + tag % 3, 2, tag as f32))
        .collect();
    let answers = bounded(join_all(
        requests.iter().map(|inputs| pool.infer(inputs.clone())),
    ))
    .await;
    for (inputs, outputs) in requests.iter().zip(answers) {
        assert_doubled(inputs, &outputs.unwrap());
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, 12);
    assert!(
        stats.batches < 12,
        "some requests must have shared a run: {stats:?}"
    );
}

#[tokio::test]
async fn requests_with_different_trailing_dims_run_in_separate_batches() {
    let options = PoolOptions {
        name: "double".into(),
        max_batch: 8,
        max_delay: Duration::from_millis(200),
        ..PoolOptions::default()
    };
    let pool = pool("double.onnx", options).await;
    let requests = [
        double_inputs(1, 3, 1.0),
        double_inputs(1, 5, 2.0),
        double_inputs(1, 3, 3.0),
        double_inputs(1, 5, 4.0),
    ];
    let answers = bounded(join_all(
        requests.iter().map(|inputs| pool.infer(inputs.clone())),
    ))
    .await;
    for (inputs, outputs) in requests.iter().zip(answers) {
        assert_doubled(inputs, &outputs.unwrap());
    }
    assert_eq!(pool.stats().batch_size_histogram, BTreeMap::from([(2, 2)]));
}

#[tokio::test]
async fn a_model_without_a_dynamic_batch_dim_runs_unbatched() {
    let pool = pool(
        "fixed.onnx",
        PoolOptions {
            name: "fixed".into(),
            max_batch: 8,
            ..PoolOptions::default()
        },
    )
    .await;
    assert!(!pool.is_batched());
    let requests: Vec<TensorMap> = (0..6)
        .map(|tag| {
            TensorMap::from([(
                "x".to_string(),
                Tensor::from_vec(vec![1, 4], vec![tag as f32; 4]).unwrap(),
            )])
        })
        .collect();
    let answers = bounded(join_all(
        requests.iter().map(|inputs| pool.infer(inputs.clone())),
    ))
    .await;
    for (tag, outputs) in answers.into_iter().enumerate() {
        assert_eq!(
            outputs.unwrap()["y"].to_vec::<f32>().unwrap(),
            vec![tag as f32 + 1.0; 4]
        );
    }
    assert_eq!(pool.stats().batch_size_histogram, BTreeMap::from([(1, 6)]));
}

#[tokio::test]
async fn a_full_queue_refuses_with_a_retryable_error() {
    // The replica holds the first request while it waits (up to 2 s) for more of its
    // shape; requests of another shape can only queue, and the queue holds two.
    let options = PoolOptions {
        name: "double".into(),
        max_batch: 8,
        max_delay: Duration::from_secs(2),
        queue_capacity: 2,
        ..PoolOptions::default()
    };
    let pool = pool("double.onnx", options).await;
    let mut requests = vec![double_inputs(1, 3, 0.0)];
    requests.extend((1..=5).map(|tag| double_inputs(1, 5, tag as f32)));
    let answers = bounded(join_all(
        requests.iter().map(|inputs| pool.infer(inputs.clone())),
    ))
    .await;

    let mut rejected = 0;
    for (inputs, answer) in requests.iter().zip(&answers) {
        match answer {
            Ok(outputs) => assert_doubled(inputs, outputs),
            Err(error @ Error::QueueFull { capacity: 2, .. }) => {
                assert!(error.is_retryable());
                assert_eq!(
                    error.to_string(),
                    "pool double: queue full (2 requests waiting); retry later"
                );
                rejected += 1;
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert!(answers[0].is_ok());
    assert!(
        rejected >= 3,
        "at most 2 of the 5 other-shape requests fit the queue; {rejected} rejected"
    );
    let stats = pool.stats();
    assert_eq!(stats.rejected, rejected);
    assert_eq!(stats.completed, 6 - rejected);
    // Backpressure is transient: once drained, the same request goes through.
    let retry = double_inputs(1, 5, 9.0);
    assert_doubled(&retry, &bounded(pool.infer(retry.clone())).await.unwrap());
}

#[tokio::test]
async fn bad_inputs_are_refused_before_queueing() {
    let pool = pool(
        "fixed.onnx",
        PoolOptions {
            name: "fixed".into(),
            ..PoolOptions::default()
        },
    )
    .await;
    let wrong_width = TensorMap::from([(
        "x".to_string(),
        Tensor::from_vec(vec![1, 5], vec![0f32; 5]).unwrap(),
    )]);
    let error = pool.infer(wrong_width).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "pool fixed: input \"x\": dim 1 is 5, the model needs 4 (shape [1, 5])"
    );
    assert!(error.is_invalid_argument());
    assert_eq!(pool.stats().batches, 0);
}

#[tokio::test]
async fn close_drains_queued_requests_then_refuses() {
    let options = PoolOptions {
        name: "double".into(),
        max_batch: 4,
        max_delay: Duration::from_millis(50),
        ..PoolOptions::default()
    };
    let pool = pool("double.onnx", options).await;
    let requests: Vec<TensorMap> = (0..10).map(|tag| double_inputs(1, 2, tag as f32)).collect();
    let in_flight = join_all(requests.iter().map(|inputs| pool.infer(inputs.clone())));
    let closer = async {
        pool.close();
        pool.shutdown().await;
    };
    // infer enqueues on first poll, and join polls `in_flight` first.
    let (answers, ()) = bounded(async { tokio::join!(in_flight, closer) }).await;
    for (inputs, outputs) in requests.iter().zip(answers) {
        assert_doubled(inputs, &outputs.unwrap());
    }
    let error = pool.infer(double_inputs(1, 2, 0.0)).await.unwrap_err();
    assert!(matches!(error, Error::PoolClosed { .. }), "{error:?}");
}

#[tokio::test]
async fn garbage_model_bytes_fail_the_start_with_invalid_model() {
    let error = Pool::start(
        &common::runtime(),
        b"definitely not onnx".to_vec(),
        PoolOptions {
            name: "junk@1".into(),
            ..PoolOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, Error::InvalidModel { ref model, .. } if model == "junk@1"),
        "{error:?}"
    );
}

#[tokio::test]
async fn replicas_all_serve() {
    let options = PoolOptions {
        name: "double".into(),
        replicas: 2,
        max_batch: 1,
        ..PoolOptions::default()
    };
    let pool = pool("double.onnx", options).await;
    let requests: Vec<TensorMap> = (0..20).map(|tag| double_inputs(2, 2, tag as f32)).collect();
    let answers = bounded(join_all(
        requests.iter().map(|inputs| pool.infer(inputs.clone())),
    ))
    .await;
    for (inputs, outputs) in requests.iter().zip(answers) {
        assert_doubled(inputs, &outputs.unwrap());
    }
    assert_eq!(pool.stats().batch_size_histogram, BTreeMap::from([(1, 20)]));
    bounded(pool.shutdown()).await;
}

/// Without the `cuda` feature a GPU pool is a clear error; with it but no GPU, the
/// CUDA provider must fail the start rather than fall back to the CPU. A real GPU run
/// happens only where NVML finds one.
#[tokio::test]
async fn gpu_pools_never_fall_back_to_cpu() {
    let options = PoolOptions {
        name: "double-gpu".into(),
        device: Device::Cuda {
            device_id: 0,
            mem_limit_bytes: 256 << 20,
        },
        ..PoolOptions::default()
    };
    let started = Pool::start(&common::runtime(), common::fixture("double.onnx"), options).await;
    if !cfg!(feature = "cuda") {
        let error = started.unwrap_err();
        assert!(
            matches!(error, Error::CudaNotBuilt { device_id: 0, .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("without the `cuda` feature"),
            "{error}"
        );
        return;
    }
    if GpuInventory::detect().devices.is_empty() {
        let error = started.unwrap_err();
        assert!(matches!(error, Error::SessionCreate { .. }), "{error:?}");
        return;
    }
    let pool = started.unwrap();
    let inputs = double_inputs(2, 3, 1.0);
    assert_doubled(&inputs, &bounded(pool.infer(inputs.clone())).await.unwrap());
}
