# floe — the two commands a fresh machine needs are `make demo` and `make test`.
CARGO ?= cargo
RELEASE_BIN := target/release

.PHONY: all setup build demo test test-unit test-cluster python-worker-deps inference-runtime bench bench-inference lint clean

all: build

# Checks the toolchain. Everything else comes from crates.io through cargo
# (protoc is vendored), so no system packages are needed for this stage.
setup:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) --version

build: setup
	$(CARGO) build --release --bin floe --bin floe-worker --bin floe-demo --bin floe-bench

# A local 3-node cluster as separate processes: form, write, SIGKILL the
# leader, fail over, restart, catch up; then the document-intake flow with
# workers in separate processes; summary.
demo: build
	$(RELEASE_BIN)/floe-demo --binary $(RELEASE_BIN)/floe

test: setup test-unit test-cluster

# Unit and property tests of every crate.
test-unit: inference-runtime
	$(CARGO) test --workspace --lib --bins

# Integration tests of every crate, one at a time: storage conformance and
# crash tests, the inference tests (the real ONNX Runtime on the PP-OCR
# models), and the black-box cluster tests, which start several node
# processes each. python_worker.rs runs the Python example worker, hence its
# dependencies. `--workspace` as above, so cargo reuses the same build.
test-cluster: python-worker-deps inference-runtime
	$(CARGO) test --workspace --test '*' -- --test-threads=1

# grpcio and grpcio-tools for node/examples/python-worker (and its test).
# Quiet and quick when they are already installed at the pinned versions.
python-worker-deps:
	@python3 -c "import sys, importlib.metadata as m; pins = [l.split('==') for l in open('node/examples/python-worker/requirements.txt').read().split() if '==' in l]; sys.exit(any(m.version(n) != v for n, v in pins))" 2>/dev/null \
	  || python3 -m pip install -q --disable-pip-version-check -r node/examples/python-worker/requirements.txt

# ONNX Runtime 1.31.1 (from the onnxruntime wheel on PyPI), the PP-OCRv4
# models (from the rapidocr-onnxruntime wheel) and a font for rendering test
# pages, into .floe-runtime/. Quiet when they are already there.
inference-runtime:
	@bash inference/fetch-runtime.sh

# Pools against calling ONNX Runtime directly, batching, warm vs cold, memory.
bench-inference: inference-runtime
	$(CARGO) run --release -p floe-inference --bin floe-inference-bench -- --seconds 3 --out bench-inference.md

# Throughput, latency, failover and memory against etcd 3.4 (Debian's
# etcd-server, installed here when missing). Prints a Markdown table and
# writes it to bench-results.md for BENCHMARKS.md.
bench: build
	@command -v etcd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; }
	$(RELEASE_BIN)/floe-bench --binary $(RELEASE_BIN)/floe --etcd "$$(command -v etcd)" --out bench-results.md

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
