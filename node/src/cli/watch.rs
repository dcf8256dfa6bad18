//! `floe run watch`: stream a run's events until it ends, and say so
//! truthfully when the stream ends first.
//!
//! A node that stops ends its watch streams with `UNAVAILABLE` ("node N is
//! shutting down"); an older node just closes them. Either way the run goes
//! on, so the watch exits [`EXIT_STREAM_LOST`] — or, with `--follow`, opens
//! the watch again on the next endpoint. A new stream replays the run's
//! history first; events already printed are left out.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    connect, event_json, event_line, print_json, print_run, status_error, ClientArgs, Exit,
    EXIT_RUN_NOT_COMPLETED, EXIT_STREAM_LOST,
};
use crate::api;
use floe_api::client::{FloeClient, Repeat};

/// Most times `--follow` opens the watch again in one watch's lifetime.
pub const MAX_RECONNECTS: u32 = 10;
/// Wait before opening the watch again, so a node that is restarting or a
/// cluster that is electing has a moment.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// How one stream ended.
enum Ended {
    /// The run reached a terminal state.
    RunEnded,
    /// The stream ended (or could not be opened again) while the run went on.
    Lost(String),
}

/// What a watch has shown so far, across streams.
struct Shown {
    json: bool,
    /// Each printed event, as its full text: a replay prints none twice.
    events: HashSet<String>,
    run: Option<Value>,
}

pub async fn watch(args: &ClientArgs, run_id: String, follow: bool) -> anyhow::Result<()> {
    let mut conn = connect(args).await?;
    let request = api::WatchRunRequest {
        run_id: run_id.clone(),
    };
    let mut shown = Shown {
        json: args.json,
        events: HashSet::new(),
        run: None,
    };
    let mut reconnects = 0;
    loop {
        // The first open fails like any command; later ones are part of following.
        let ended = match stream_once(&mut conn, &request, &mut shown).await {
            Ok(ended) => ended,
            Err(status) if reconnects > 0 && Repeat::Read.allows(&status) => {
                Ended::Lost(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(status) => return Err(status_error(status)),
        };
        let Ended::Lost(reason) = ended else { break };
        if !follow || reconnects >= MAX_RECONNECTS {
            let advice = if follow {
                format!(" (gave up after {MAX_RECONNECTS} reconnects)")
            } else {
                " (pass --follow to go on watching through another endpoint)".to_string()
            };
            let message = format!("error: lost the watch of run {run_id} on {} before the run ended: {reason}{advice}", conn.endpoint);
            return Err(Exit {
                code: EXIT_STREAM_LOST,
                message,
            }
            .into());
        }
        reconnects += 1;
        eprintln!(
            "watch of run {run_id} on {} lost ({reason}); following through another endpoint",
            conn.endpoint
        );
        tokio::time::sleep(RECONNECT_PAUSE).await;
        // Every endpoint refusing a connection counts as one more loss.
        if let Err(err) = conn.reconnect_elsewhere().await {
            eprintln!(
                "watch of run {run_id}: {}",
                floe_api::client::error_chain(&err)
            );
        }
    }
    finish(&run_id, &shown)
}

/// Opens the watch and prints what it streams until it ends.
async fn stream_once(
    conn: &mut FloeClient,
    request: &api::WatchRunRequest,
    shown: &mut Shown,
) -> Result<Ended, tonic::Status> {
    let mut updates = conn
        .call(Repeat::Read, |mut client| {
            let request = request.clone();
            async move { client.runs.watch(request).await }
        })
        .await?;
    loop {
        let update = match updates.message().await {
            Ok(Some(update)) => update,
            Ok(None) => break,
            Err(status) => {
                return Ok(Ended::Lost(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                )))
            }
        };
        let run: Value = match serde_json::from_slice(&update.run) {
            Ok(run) => run,
            Err(err) => {
                return Err(tonic::Status::internal(format!(
                    "run record is not JSON: {err}"
                )))
            }
        };
        let fresh: Vec<&api::RunHistoryEvent> = update
            .events
            .iter()
            .filter(|event| shown.events.insert(format!("{event:?}")))
            .collect();
        if shown.json {
            let events: Vec<Value> = fresh.iter().map(|event| event_json(event)).collect();
            print_json(json!({ "events": events, "run": run }));
        } else {
            for event in fresh {
                println!("{}", event_line(event));
            }
        }
        shown.run = Some(run);
    }
    if shown
        .run
        .as_ref()
        .is_some_and(|run| status_of(run) != "Running")
    {
        Ok(Ended::RunEnded)
    } else {
        Ok(Ended::Lost(
            "the stream ended before the run did".to_string(),
        ))
    }
}

fn status_of(run: &Value) -> &str {
    run.get("status")
        .and_then(Value::as_str)
        .unwrap_or("Running")
}

/// Prints the run (tables only) and exits by how it ended.
fn finish(run_id: &str, shown: &Shown) -> anyhow::Result<()> {
    let Some(run) = &shown.run else { return Ok(()) };
    if !shown.json {
        println!();
        print_run(run);
    }
    match status_of(run) {
        "Completed" => Ok(()),
        status => {
            let error = run
                .get("error")
                .and_then(Value::as_str)
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            let message = format!("run {run_id} ended {}{error}", status.to_lowercase());
            Err(Exit {
                code: EXIT_RUN_NOT_COMPLETED,
                message,
            }
            .into())
        }
    }
}
