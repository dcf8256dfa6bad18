//! `floe model …`: register ONNX files, deploy and undeploy warm replicas,
//! show where they run and how they perform, and run one request.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{connect, print_json, status_error, table, ClientArgs};
use crate::api;

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Register an ONNX file as the next version of NAME (checked by loading it).
    Put {
        #[command(flatten)]
        client: ClientArgs,
        name: String,
        file: PathBuf,
    },
    /// Registered models and versions, with their inputs and outputs.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this model's versions.
        name: Option<String>,
    },
    /// Keep warm replicas of NAME[:VERSION] (default: the latest version).
    Deploy {
        #[command(flatten)]
        client: ClientArgs,
        model: String,
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// ONNX Runtime threads per replica.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Requests merged into one run (1: no batching).
        #[arg(long, default_value_t = 8)]
        max_batch: u32,
        /// How long a request waits for others to join its batch.
        #[arg(long, default_value_t = 2)]
        max_delay_ms: u64,
        /// Requests a replica queues before refusing more.
        #[arg(long, default_value_t = 256)]
        queue: u32,
        /// Share of one GPU per replica, e.g. 0.5.
        #[arg(long, default_value_t = 0.0)]
        gpu: f64,
    },
    /// Stop serving NAME[:VERSION] (default: the highest deployed version).
    Undeploy {
        #[command(flatten)]
        client: ClientArgs,
        model: String,
    },
    /// Deployments and every replica: node, state, queue, latency, memory.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        name: Option<String>,
    },
    /// Run NAME[:VERSION] once on a warm replica; inputs as JSON tensors
    /// ({"x": {"dtype": "f32", "shape": [1, 3], "data": [1, 2, 3]}}).
    Infer {
        #[command(flatten)]
        client: ClientArgs,
        model: String,
        /// JSON object of input name → tensor, or @FILE.
        #[arg(long)]
        input: String,
        /// Write output tensors as number lists instead of base64.
        #[arg(long)]
        list: bool,
    },
}

/// "name" or "name:version" (version 0: the default the server picks).
fn model_ref(text: &str) -> anyhow::Result<(String, u64)> {
    match text.split_once(':') {
        None => Ok((text.to_string(), 0)),
        Some((name, version)) => {
            let version: u64 = version
                .parse()
                .map_err(|_| anyhow::anyhow!("{text:?}: the version after ':' must be a number"))?;
            anyhow::ensure!(version > 0, "{text:?}: versions start at 1");
            Ok((name.to_string(), version))
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

pub async fn model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Put { client, name, file } => {
            let onnx = std::fs::read(&file)
                .map_err(|err| anyhow::anyhow!("model file {}: {err}", file.display()))?;
            let mut conn = connect(&client).await?;
            let reply = conn
                .models
                .put(api::PutModelRequest {
                    name: name.clone(),
                    onnx,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if client.json {
                let signature: Value =
                    serde_json::from_str(&reply.signature_json).unwrap_or(Value::Null);
                print_json(
                    json!({"name": name, "version": reply.version, "created": reply.created, "hash": reply.hash, "signature": signature}),
                );
            } else if reply.created {
                println!(
                    "{name} version {} registered (sha256:{})",
                    reply.version, reply.hash
                );
            } else {
                println!(
                    "{name} version {} already holds this file (sha256:{})",
                    reply.version, reply.hash
                );
            }
        }
        ModelCommand::List { client, name } => {
            let mut conn = connect(&client).await?;
            let request = api::ListModelsRequest {
                name: name.unwrap_or_default(),
            };
            let models = conn
                .models
                .list(request)
                .await
                .map_err(status_error)?
                .into_inner()
                .models;
            if client.json {
                let rows: Vec<Value> = models
                    .iter()
                    .map(|m| {
                        let signature: Value = serde_json::from_str(&m.signature_json).unwrap_or(Value::Null);
                        json!({"name": m.name, "version": m.version, "hash": m.hash, "size": m.size, "signature": signature, "created_at_ms": m.created_at_ms})
                    })
                    .collect();
                print_json(Value::Array(rows));
            } else {
                let rows: Vec<Vec<String>> = models
                    .iter()
                    .map(|m| {
                        let signature: Value =
                            serde_json::from_str(&m.signature_json).unwrap_or(Value::Null);
                        vec![
                            m.name.clone(),
                            m.version.to_string(),
                            mib(m.size),
                            tensor_names(&signature["inputs"]),
                            tensor_names(&signature["outputs"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["NAME", "VERSION", "MIB", "INPUTS", "OUTPUTS"], &rows)
                );
            }
        }
        ModelCommand::Deploy {
            client,
            model,
            replicas,
            threads,
            max_batch,
            max_delay_ms,
            queue,
            gpu,
        } => {
            let (name, version) = model_ref(&model)?;
            let mut conn = connect(&client).await?;
            let request = api::DeployModelRequest {
                name: name.clone(),
                version,
                replicas,
                threads,
                max_batch,
                max_delay_ms,
                queue,
                gpu,
            };
            let reply = conn
                .models
                .deploy(request)
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("{name} version {} deployed: {replicas} replica(s); `floe model status {name}` shows them warming up", reply.version);
        }
        ModelCommand::Undeploy { client, model } => {
            let (name, version) = model_ref(&model)?;
            let mut conn = connect(&client).await?;
            let reply = conn
                .models
                .undeploy(api::UndeployModelRequest {
                    name: name.clone(),
                    version,
                })
                .await
                .map_err(status_error)?;
            eprintln!("{name} version {} undeployed", reply.into_inner().version);
        }
        ModelCommand::Status { client, name } => {
            let mut conn = connect(&client).await?;
            let request = api::ModelStatusRequest {
                name: name.unwrap_or_default(),
            };
            let deployments = conn
                .models
                .status(request)
                .await
                .map_err(status_error)?
                .into_inner()
                .deployments;
            if client.json {
                print_json(Value::Array(
                    deployments.iter().map(deployment_json).collect(),
                ));
            } else {
                let mut rows = Vec::new();
                for d in &deployments {
                    for r in &d.replica_status {
                        let node = if r.node == 0 {
                            "-".to_string()
                        } else {
                            r.node.to_string()
                        };
                        let gpu = if r.gpu > 0.0 {
                            format!("{}:{}", r.gpu_device, r.gpu)
                        } else {
                            "-".to_string()
                        };
                        rows.push(vec![
                            format!("{}:{}", d.model, d.version),
                            r.replica.to_string(),
                            node,
                            r.state.clone(),
                            gpu,
                            format!("{}/{}", r.queue_depth, r.queue_capacity),
                            format!("{:.1}", r.p50_ms),
                            format!("{:.1}", r.p99_ms),
                            r.completed.to_string(),
                            mib(r.memory_bytes),
                            r.detail.clone(),
                        ]);
                    }
                }
                let headers = [
                    "MODEL", "REPLICA", "NODE", "STATE", "GPU", "QUEUE", "P50_MS", "P99_MS",
                    "DONE", "MIB", "DETAIL",
                ];
                print!("{}", table(&headers, &rows));
            }
        }
        ModelCommand::Infer {
            client,
            model,
            input,
            list,
        } => {
            let (name, version) = model_ref(&model)?;
            let text = match input.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|err| anyhow::anyhow!("input file {path}: {err}"))?,
                None => input,
            };
            let value: Value = serde_json::from_str(&text)
                .map_err(|err| anyhow::anyhow!("--input is not JSON: {err}"))?;
            let tensors = floe_inference::tensors_from_json(&value, "input")
                .map_err(|err| anyhow::anyhow!("{err}"))?;
            let inputs = tensors
                .into_iter()
                .map(|(name, tensor)| (name, crate::grpc::tensor_to_wire(tensor)))
                .collect();
            let mut conn = connect(&client).await?;
            let reply = conn
                .models
                .infer(api::InferRequest {
                    model: name,
                    version,
                    inputs,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let encoding = if list {
                floe_inference::Encoding::List
            } else {
                floe_inference::Encoding::Base64
            };
            let mut outputs = serde_json::Map::new();
            for (name, data) in reply.outputs {
                let tensor = crate::grpc::tensor_from_wire(data)
                    .map_err(|err| anyhow::anyhow!("output {name}: {err}"))?;
                outputs.insert(name, floe_inference::tensor_to_json(&tensor, encoding));
            }
            print_json(json!({"node": reply.node, "replica": reply.replica, "outputs": outputs}));
        }
    }
    Ok(())
}

fn tensor_names(specs: &Value) -> String {
    let names: Vec<&str> = specs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|spec| spec["name"].as_str())
        .collect();
    names.join(",")
}

fn deployment_json(d: &api::DeploymentStatus) -> Value {
    let replicas: Vec<Value> = d
        .replica_status
        .iter()
        .map(|r| {
            json!({
                "replica": r.replica, "node": (r.node != 0).then_some(r.node), "state": r.state, "detail": r.detail,
                "gpu_device": r.gpu_device, "gpu": r.gpu, "memory_bytes": r.memory_bytes,
                "queue_depth": r.queue_depth, "queue_capacity": r.queue_capacity,
                "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "completed": r.completed, "last_used_ms": r.last_used_ms,
            })
        })
        .collect();
    json!({
        "model": d.model, "version": d.version, "replicas": d.replicas, "threads": d.threads,
        "max_batch": d.max_batch, "max_delay_ms": d.max_delay_ms, "queue": d.queue, "gpu": d.gpu,
        "replica_status": replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_references_parse_name_and_version() {
        assert_eq!(model_ref("det").unwrap(), ("det".to_string(), 0));
        assert_eq!(model_ref("det:3").unwrap(), ("det".to_string(), 3));
        assert!(model_ref("det:x")
            .unwrap_err()
            .to_string()
            .contains("must be a number"));
        assert!(model_ref("det:0")
            .unwrap_err()
            .to_string()
            .contains("start at 1"));
    }
}
