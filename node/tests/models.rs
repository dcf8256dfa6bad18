//! Model registry, deployments and warm replicas on real clusters: real
//! ONNX Runtime, the PP-OCRv4 orientation model, separate node processes.
//! Needs `.floe-runtime` (`make inference-runtime`, run by `make test`).

use std::time::{Duration, Instant};

use floe_api::client::FloeClient;
use floe_harness::{ClusterOptions, TestCluster};
use floe_inference::{DevRuntimeFiles, Tensor};
use floe_node::api;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_floe");
const WAIT: Duration = Duration::from_secs(60);

fn runtime_files() -> DevRuntimeFiles {
    let files = DevRuntimeFiles::locate();
    if let Err(missing) = files.require() {
        panic!("ONNX Runtime files missing ({missing}); run `make inference-runtime`");
    }
    files
}

fn options(nodes: u64, files: &DevRuntimeFiles) -> ClusterOptions {
    let mut options = ClusterOptions::new(BINARY, nodes);
    options.overrides = vec![format!(
        "inference.ort_library={}",
        files.ort_library.display()
    )];
    options
}

/// A cls input: one 48×192 RGB crop, normalised, as the model takes it.
fn cls_input(value: f32) -> Tensor {
    Tensor::from_vec(vec![1, 3, 48, 192], vec![value; 3 * 48 * 192]).unwrap()
}

async fn infer(
    client: &mut FloeClient,
    model: &str,
    inputs: Vec<(&str, Tensor)>,
) -> Result<api::InferResponse, tonic::Status> {
    let inputs = inputs
        .into_iter()
        .map(|(name, tensor)| (name.to_string(), floe_node::grpc::tensor_to_wire(tensor)))
        .collect();
    let request = api::InferRequest {
        model: model.into(),
        version: 0,
        inputs,
    };
    client
        .models
        .infer(request)
        .await
        .map(|reply| reply.into_inner())
}

async fn status(
    client: &mut FloeClient,
    model: &str,
) -> Result<api::DeploymentStatus, tonic::Status> {
    let reply = client
        .models
        .status(api::ModelStatusRequest { name: model.into() })
        .await?
        .into_inner();
    Ok(reply
        .deployments
        .into_iter()
        .next()
        .expect("one deployment"))
}

/// Waits until `check` holds for the model's status; returns that status.
async fn wait_status(
    client: &mut FloeClient,
    model: &str,
    what: &str,
    check: impl Fn(&api::DeploymentStatus) -> bool,
) -> api::DeploymentStatus {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(found) = status(client, model).await {
            if check(&found) {
                return found;
            }
            last = Some(found);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{model}: {what} did not happen; last status {last:#?}");
}

fn warm_nodes(status: &api::DeploymentStatus) -> Vec<u64> {
    let mut nodes: Vec<u64> = status
        .replica_status
        .iter()
        .filter(|r| r.state == "warm")
        .map(|r| r.node)
        .collect();
    nodes.sort();
    nodes
}

fn deploy_request(name: &str, replicas: u32) -> api::DeployModelRequest {
    api::DeployModelRequest {
        name: name.into(),
        version: 0,
        replicas,
        threads: 1,
        max_batch: 8,
        max_delay_ms: 2,
        queue: 64,
        gpu: 0.0,
    }
}

/// A run without its (large) input, for failure messages.
fn summary(run: &Value) -> String {
    json!({ "status": run["status"], "error": run["error"], "steps": run["steps"].as_object().map(|steps| {
        steps.iter().map(|(id, step)| (id.clone(), json!({"status": step["status"], "error": step["error"], "attempts": step["attempts"]}))).collect::<serde_json::Map<_, _>>()
    }) })
    .to_string()
}

fn probabilities(response: &api::InferResponse) -> Vec<f32> {
    let (_, output) = response.outputs.iter().next().expect("one output");
    assert_eq!(output.dtype, "f32");
    assert_eq!(output.shape, vec![1, 2]);
    output
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_register_deploy_serve_flows_and_move_off_a_dead_node() {
    let files = runtime_files();
    let onnx = std::fs::read(files.models_dir.join("cls.onnx")).unwrap();
    let mut cluster = TestCluster::start(options(3, &files)).await.unwrap();
    let mut client = cluster.client(1).await.unwrap();

    // Bad artifacts and names are refused, and nothing is registered.
    let put = |name: &str, onnx: Vec<u8>| api::PutModelRequest {
        name: name.into(),
        onnx,
    };
    let err = client
        .models
        .put(put("cls", b"not an onnx file".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("cls"),
        "the error names the model: {}",
        err.message()
    );
    let err = client
        .models
        .put(put("Bad Name", onnx.clone()))
        .await
        .unwrap_err();
    assert!(err.message().contains("must match"), "{}", err.message());
    let listed = client
        .models
        .list(api::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.models.is_empty(),
        "nothing stored after refusals: {listed:?}"
    );

    // The real file registers as version 1; the same bytes again are version 1.
    let first = client
        .models
        .put(put("cls", onnx.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.version, first.created), (1, true));
    let signature: Value = serde_json::from_str(&first.signature_json).unwrap();
    assert_eq!(signature["inputs"][0]["name"], "x", "{signature}");
    let again = client
        .models
        .put(put("cls", onnx.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.version, again.created), (1, false));

    // Deployment errors name what is wrong.
    let err = client
        .models
        .deploy(api::DeployModelRequest {
            version: 7,
            ..deploy_request("cls", 2)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = client
        .models
        .deploy(deploy_request("cls", 0))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("replicas must be 1 to 64"),
        "{}",
        err.message()
    );
    let err = client
        .models
        .deploy(api::DeployModelRequest {
            gpu: 1.5,
            ..deploy_request("cls", 1)
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("fraction from 0 to 1"),
        "{}",
        err.message()
    );

    client
        .models
        .deploy(deploy_request("cls", 2))
        .await
        .unwrap();
    let warm = wait_status(&mut client, "cls", "two warm replicas", |s| {
        warm_nodes(s).len() == 2
    })
    .await;
    let holders = warm_nodes(&warm);
    assert_ne!(
        holders[0], holders[1],
        "replicas spread over nodes: {warm:#?}"
    );
    assert!(
        warm.replica_status.iter().all(|r| r.memory_bytes > 0),
        "footprints measured: {warm:#?}"
    );

    // A node without a replica sends the request over QUIC; a holder runs it itself.
    let outsider = (1..=3).find(|id| !holders.contains(id)).unwrap();
    let mut outside = cluster.client(outsider).await.unwrap();
    let remote = infer(&mut outside, "cls", vec![("x", cls_input(0.5))])
        .await
        .unwrap();
    assert!(
        holders.contains(&remote.node),
        "served by a holder, not node {outsider}"
    );
    let sum: f32 = probabilities(&remote).iter().sum();
    assert!(
        (sum - 1.0).abs() < 1e-3,
        "softmax output: {:?}",
        probabilities(&remote)
    );
    let mut inside = cluster.client(holders[0]).await.unwrap();
    let local = infer(&mut inside, "cls", vec![("x", cls_input(0.5))])
        .await
        .unwrap();
    assert_eq!(local.node, holders[0], "a holder prefers its own replica");
    assert_eq!(
        probabilities(&local),
        probabilities(&remote),
        "same model, same input, same answer"
    );

    let wrong_rank = Tensor::from_vec(vec![1, 3, 48], vec![0.0f32; 3 * 48]).unwrap();
    let err = infer(&mut outside, "cls", vec![("x", wrong_rank)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = infer(&mut outside, "nope", vec![("x", cls_input(0.5))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // An inference step in a flow runs on a node holding a warm replica.
    let flow = json!({
        "name": "orient",
        "steps": [
            { "id": "classify", "type": "inference", "model": "cls", "input": "input.tensors", "outputs": "list",
              "retry": { "max_attempts": 3, "initial_backoff_ms": 200 } }
        ]
    });
    client
        .flows
        .put(api::PutFlowRequest {
            definition: serde_json::to_vec(&flow).unwrap(),
        })
        .await
        .unwrap();
    let tensor = floe_inference::tensor_to_json(&cls_input(0.5), floe_inference::Encoding::Base64);
    let input = serde_json::to_vec(&json!({ "tensors": { "x": tensor } })).unwrap();
    let request = api::StartRunRequest {
        flow: "orient".into(),
        input,
        ..Default::default()
    };
    let run_id = client
        .runs
        .start(request)
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let run = floe_harness::finished_run(&mut client, &run_id, WAIT)
        .await
        .unwrap();
    assert_eq!(run["status"], "Completed", "{}", summary(&run));
    let output = run["output"]
        .as_object()
        .expect("output tensors")
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(output["shape"], json!([1, 2]));
    let listed: Vec<f32> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        listed,
        probabilities(&remote),
        "the flow's step got the same answer"
    );
    let ran_on = run["steps"]["classify"]["attempts"][0]["node"]
        .as_u64()
        .expect("attempt node");
    assert!(
        holders.contains(&ran_on),
        "placed on a holder: {}",
        summary(&run)
    );
    let replica = run["steps"]["classify"]["attempts"][0]["worker"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        replica.starts_with("cls@1#"),
        "the attempt names the replica that ran it: {}",
        summary(&run)
    );

    // Bad tensors fail the step for good, naming the field.
    let input = serde_json::to_vec(
        &json!({ "tensors": { "x": { "dtype": "f32", "shape": [2], "data": [1] } } }),
    )
    .unwrap();
    let request = api::StartRunRequest {
        flow: "orient".into(),
        input,
        ..Default::default()
    };
    let run_id = client
        .runs
        .start(request)
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let run = floe_harness::finished_run(&mut client, &run_id, WAIT)
        .await
        .unwrap();
    assert_eq!(run["status"], "Failed", "{}", summary(&run));
    assert!(
        run["error"].to_string().contains("input.x"),
        "the error names the tensor: {}",
        summary(&run)
    );
    assert_eq!(
        run["steps"]["classify"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "not retried: {}",
        summary(&run)
    );

    // SIGKILL a holder: its replica is placed again on a live node.
    let leader = cluster.wait_leader(WAIT).await.unwrap();
    let victim = *holders
        .iter()
        .find(|id| **id != leader)
        .unwrap_or(&holders[0]);
    cluster.kill(victim).unwrap();
    let survivor = (1..=3).find(|id| *id != victim).unwrap();
    let mut client = cluster.client(survivor).await.unwrap();
    let moved = wait_status(&mut client, "cls", "replicas off the dead node", |s| {
        let nodes = warm_nodes(s);
        nodes.len() == 2 && !nodes.contains(&victim)
    })
    .await;
    let answer = infer(&mut client, "cls", vec![("x", cls_input(0.5))])
        .await
        .unwrap();
    assert!(warm_nodes(&moved).contains(&answer.node));

    // Undeploy: nothing serves it any more.
    client
        .models
        .undeploy(api::UndeployModelRequest {
            name: "cls".into(),
            version: 0,
        })
        .await
        .unwrap();
    let err = infer(&mut client, "cls", vec![("x", cls_input(0.5))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = status(&mut client, "cls").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replicas_are_evicted_for_a_new_model_and_come_back_on_demand() {
    let files = runtime_files();
    let onnx = std::fs::read(files.models_dir.join("cls.onnx")).unwrap();
    // A budget for one replica of this model but not two: an unmeasured
    // replica is assumed to take twice its file plus 16 MiB, a measured one
    // at least its file plus 16 MiB.
    let budget = floe_node::models::estimated_footprint(onnx.len() as u64) * 3 / 2;
    let mut options = options(1, &files);
    options
        .overrides
        .push("inference.idle_evict_ms=1000".into());
    options
        .overrides
        .push(format!("inference.memory_budget_bytes={budget}"));
    let cluster = TestCluster::start(options).await.unwrap();
    let mut client = cluster.client(1).await.unwrap();
    for name in ["first", "second"] {
        client
            .models
            .put(api::PutModelRequest {
                name: name.into(),
                onnx: onnx.clone(),
            })
            .await
            .unwrap();
    }
    client
        .models
        .deploy(deploy_request("first", 1))
        .await
        .unwrap();
    wait_status(&mut client, "first", "first warm", |s| {
        warm_nodes(s).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // `first` has been idle past the window: it makes room for `second`.
    client
        .models
        .deploy(deploy_request("second", 1))
        .await
        .unwrap();
    wait_status(&mut client, "second", "second warm", |s| {
        warm_nodes(s).len() == 1
    })
    .await;
    let evicted = wait_status(&mut client, "first", "first evicted", |s| {
        s.replica_status[0].state == "evicted"
    })
    .await;
    assert!(
        evicted.replica_status[0]
            .detail
            .contains("to make room for second"),
        "{evicted:#?}"
    );

    // A request for `first` brings it back (evicting the now idle `second`).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = infer(&mut client, "first", vec![("x", cls_input(0.5))])
        .await
        .unwrap();
    assert_eq!(answer.node, 1);
    wait_status(&mut client, "second", "second evicted", |s| {
        s.replica_status[0].state == "evicted"
    })
    .await;
}

fn page_png_base64(files: &DevRuntimeFiles, lines: &[&str]) -> String {
    use base64::Engine as _;
    let font = std::fs::read(&files.font).unwrap();
    let rendered: Vec<_> = lines
        .iter()
        .map(|text| floe_ocr::render_text_line(&font, text, 40.0, 24).unwrap())
        .collect();
    let page = floe_ocr::stack_lines(&rendered, 16);
    let mut png = Vec::new();
    page.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// The OCR flow of docs/examples/flows/ocr.json: image stages in the OCR
/// worker, the three PP-OCR models as inference steps on shared replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ocr_flow_reads_rendered_pages_through_shared_replicas() {
    let files = runtime_files();
    let mut cluster = TestCluster::start(options(3, &files)).await.unwrap();
    let mut client = cluster.client(1).await.unwrap();
    for (name, file) in [
        ("ppocr-det", "det.onnx"),
        ("ppocr-cls", "cls.onnx"),
        ("ppocr-rec", "rec.onnx"),
    ] {
        let onnx = std::fs::read(files.models_dir.join(file)).unwrap();
        client
            .models
            .put(api::PutModelRequest {
                name: name.into(),
                onnx,
            })
            .await
            .unwrap();
        client.models.deploy(deploy_request(name, 1)).await.unwrap();
    }
    for name in ["ppocr-det", "ppocr-cls", "ppocr-rec"] {
        wait_status(&mut client, name, "warm", |s| warm_nodes(s).len() == 1).await;
    }
    cluster
        .spawn_client_process(
            "floe-ocr-worker",
            "ocr-worker",
            &[1, 2, 3],
            &["--concurrency".into(), "2".into()],
        )
        .unwrap();
    let flow = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/flows/ocr.json"
    ))
    .unwrap();
    client
        .flows
        .put(api::PutFlowRequest { definition: flow })
        .await
        .unwrap();

    let pages: [&[&str]; 3] = [
        &["FLOE 42 INVOICE TOTAL"],
        &["SHIP TO NORTH PLANT", "LINE 3"],
        &[],
    ];
    let mut runs = Vec::new();
    for lines in pages {
        let image = if lines.is_empty() {
            use base64::Engine as _;
            let blank = image::RgbImage::from_pixel(200, 80, image::Rgb([255, 255, 255]));
            let mut png = Vec::new();
            blank
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            base64::engine::general_purpose::STANDARD.encode(png)
        } else {
            page_png_base64(&files, lines)
        };
        let input = serde_json::to_vec(&json!({ "image": image })).unwrap();
        let request = api::StartRunRequest {
            flow: "ocr".into(),
            input,
            ..Default::default()
        };
        runs.push((
            lines,
            client
                .runs
                .start(request)
                .await
                .unwrap()
                .into_inner()
                .run_id,
        ));
    }
    for (lines, run_id) in runs {
        let run = floe_harness::finished_run(&mut client, &run_id, WAIT)
            .await
            .unwrap();
        assert_eq!(run["status"], "Completed", "{}", summary(&run));
        assert_eq!(run["output"]["text"], lines.join("\n"), "{}", summary(&run));
    }
}
