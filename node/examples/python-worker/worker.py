#!/usr/bin/env python3
"""A floe worker in Python: blocks are language-agnostic.

Connects to a node's gRPC API (TLS with a client certificate), says which
blocks it serves, receives the tasks pushed to it and answers each one with
the task's key and attempt (fencing number). Reconnects with backoff, trying
the endpoints in order, whenever the stream ends.

Blocks served:
  upper       a JSON string -> the string upper-cased
  word_count  {"text": "..."} -> {"words": n}

Generate the stubs first: ./generate.sh (writes gen/).
"""

import argparse
import concurrent.futures
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("floe-python-worker")


class TaskError(Exception):
    """A failed task; retryable=False tells the engine not to retry it."""

    def __init__(self, message, retryable=False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


def json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def block_upper(value):
    if not isinstance(value, str):
        raise TaskError(f"upper: input must be a JSON string, got {json_type(value)}", retryable=False)
    return value.upper()


def block_word_count(value):
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise TaskError(
            f'word_count: input must be an object {{"text": string}}, got {json_type(value)}', retryable=False
        )
    return {"words": len(value["text"].split())}


BLOCKS = {"upper": block_upper, "word_count": block_word_count}


def parse_args(argv):
    parser = argparse.ArgumentParser(description="floe example worker in Python")
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("FLOE_ENDPOINT"),
        help="host:port of a node's API; a comma-separated list is tried in order (env FLOE_ENDPOINT)",
    )
    parser.add_argument("--ca", default=os.environ.get("FLOE_CA"), help="cluster CA certificate (env FLOE_CA)")
    parser.add_argument("--cert", default=os.environ.get("FLOE_CERT"), help="client certificate (env FLOE_CERT)")
    parser.add_argument("--key", default=os.environ.get("FLOE_KEY"), help="client private key (env FLOE_KEY)")
    parser.add_argument("--id", default=f"py-{socket.gethostname()}-{os.getpid()}", help="worker id")
    parser.add_argument(
        "--block",
        action="append",
        choices=sorted(BLOCKS),
        help="a block to serve (repeatable; default: all of them)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="tasks run at once (default 4)")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label declared to the node (repeatable); steps with worker_labels need all of theirs",
    )
    parser.add_argument(
        "--stubs",
        default=os.path.join(HERE, "gen"),
        help="directory holding floe_pb2.py and floe_pb2_grpc.py (default: gen/ next to this file)",
    )
    args = parser.parse_args(argv)
    missing = [flag for flag in ("endpoint", "ca", "cert", "key") if not getattr(args, flag)]
    if missing:
        parser.error("missing " + ", ".join("--" + flag for flag in missing))
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    args.labels = {}
    for label in args.label:
        key, sep, value = label.partition("=")
        if not sep or not key or not value:
            parser.error(f"--label {label!r} is not KEY=VALUE")
        args.labels[key] = value
    args.endpoints = [e.strip() for e in args.endpoint.split(",") if e.strip()]
    if not args.endpoints:
        parser.error("--endpoint names no address")
    args.blocks = sorted(set(args.block or BLOCKS))
    return args


class Worker:
    def __init__(self, args, pb2, pb2_grpc, grpc):
        self.args = args
        self.pb2 = pb2
        self.pb2_grpc = pb2_grpc
        self.grpc = grpc
        self.stop = threading.Event()
        self.call = None
        self.call_lock = threading.RLock()  # the signal handler may run while main holds it
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="task")

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        self.credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key),
            certificate_chain=read(args.cert),
        )
        # Task inputs and outputs may be as large as the cluster's
        # runs.max_payload_bytes (16 MiB by default), above gRPC's 4 MiB default.
        self.options = [
            ("grpc.ssl_target_name_override", "api.floe"),
            ("grpc.max_receive_message_length", 49 * 1024 * 1024),
            ("grpc.max_send_message_length", 49 * 1024 * 1024),
        ]

    def shutdown(self, signum=None, _frame=None):
        if signum is not None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
        self.stop.set()
        with self.call_lock:
            if self.call is not None:
                self.call.cancel()

    def run(self):
        backoff = 0.1
        attempt = 0
        while not self.stop.is_set():
            endpoint = self.args.endpoints[attempt % len(self.args.endpoints)]
            started = time.monotonic()
            try:
                self.serve_once(endpoint)
                log.info("stream from %s ended", endpoint)
            except self.grpc.RpcError as err:
                if self.stop.is_set():
                    break
                log.warning("stream from %s ended: %s: %s", endpoint, err.code().name, err.details())
                attempt += 1  # next endpoint
            if time.monotonic() - started > 5:
                backoff = 0.1
            if self.stop.wait(backoff):
                break
            backoff = min(backoff * 2, 2.0)
        self.pool.shutdown(wait=True, cancel_futures=True)
        log.info("worker %s stopped", self.args.id)

    def serve_once(self, endpoint):
        outbound = queue.Queue()
        hello = self.pb2.WorkerHello(
            worker_id=self.args.id,
            blocks=self.args.blocks,
            concurrency=self.args.concurrency,
            labels=self.args.labels,
            accepts_refusals=True,
        )
        outbound.put(self.pb2.WorkerMessage(hello=hello))

        def requests():
            while True:
                message = outbound.get()
                if message is None:
                    return
                yield message

        log.info("attaching to %s as %s (blocks %s, concurrency %d)", endpoint, self.args.id,
                 ",".join(self.args.blocks), self.args.concurrency)
        channel = self.grpc.secure_channel(endpoint, self.credentials, options=self.options)
        try:
            stub = self.pb2_grpc.WorkersStub(channel)
            call = stub.Attach(requests())
            with self.call_lock:
                self.call = call
                if self.stop.is_set():
                    call.cancel()
            for task in call:
                if task.HasField("refused"):
                    refused = task.refused
                    log.warning("node refused the result of task %s attempt %d (%s): %s", refused.task,
                                refused.attempt, refused.code, refused.reason)
                    continue
                self.pool.submit(self.handle, task, outbound)
        finally:
            with self.call_lock:
                self.call = None
            outbound.put(None)  # ends the request iterator
            channel.close()

    def handle(self, task, outbound):
        result = self.pb2.TaskResult(task=task.task, attempt=task.attempt)
        try:
            value = json.loads(task.input) if task.input else None
            block = BLOCKS.get(task.block)
            if block is None or task.block not in self.args.blocks:
                raise TaskError(f"block {task.block!r} is not served by worker {self.args.id}", retryable=False)
            result.output = json.dumps(block(value)).encode()
            log.info("task %s attempt %d (%s, run %s step %s) done", task.task, task.attempt, task.block,
                     task.run_id, task.step_id)
        except TaskError as err:
            result.failed, result.error, result.retryable = True, err.message, err.retryable
        except json.JSONDecodeError as err:
            result.failed, result.error, result.retryable = True, f"input is not JSON: {err}", False
        except Exception as err:  # a bug in a block: let the engine retry
            result.failed, result.error, result.retryable = True, f"{type(err).__name__}: {err}", True
        if result.failed:
            log.warning("task %s attempt %d (%s) failed (retryable=%s): %s", task.task, task.attempt, task.block,
                        result.retryable, result.error)
        outbound.put(self.pb2.WorkerMessage(result=result))


def main(argv=None):
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, args.stubs)
    try:
        import grpc
        import floe_pb2
        import floe_pb2_grpc
    except ImportError as err:
        log.error("%s (install requirements.txt and run generate.sh first)", err)
        return 2
    worker = Worker(args, floe_pb2, floe_pb2_grpc, grpc)
    signal.signal(signal.SIGTERM, worker.shutdown)
    signal.signal(signal.SIGINT, worker.shutdown)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
