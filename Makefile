# floe — the two commands a fresh machine needs are `make demo` and `make test`.
CARGO ?= cargo
RELEASE_BIN := target/release

.PHONY: all setup build demo test test-unit test-cluster python-worker-deps inference-runtime bench bench-inference lint clean \
	faketime test-chaos chaos chaos-soak chaos-containers chaos-defects chaos-rejoin image fuzz fuzz-seeds

all: build

# Checks the toolchain. Everything else comes from crates.io through cargo
# (protoc is vendored), so no system packages are needed for this stage.
setup:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) --version

build: setup
	$(CARGO) build --release --bin floe --bin floe-worker --bin floe-ocr-worker --bin floe-demo --bin floe-bench

# A local 3-node cluster as separate processes: form, write, SIGKILL the
# leader, fail over, restart, catch up; then the document-intake flow with
# workers in separate processes; then the PP-OCR models deployed as shared
# replicas and the OCR flow on several pages at once; summary.
demo: build inference-runtime
	$(RELEASE_BIN)/floe-demo --binary $(RELEASE_BIN)/floe

test: setup lint test-unit test-cluster

# Unit and property tests of every crate.
test-unit: inference-runtime
	$(CARGO) test --workspace --lib --bins

# Integration tests of every crate, one at a time: storage conformance and
# crash tests, the inference and OCR tests (the real ONNX Runtime on the PP-OCR
# models), and the black-box cluster tests, which start several node
# processes each, and the bounded chaos matrix (every nemesis once on local
# processes, two on the container appliance when docker works; libfaketime
# for clock skew). python_worker.rs runs the Python example worker, hence its
# dependencies. `--workspace` as above, so cargo reuses the same build.
test-cluster: python-worker-deps inference-runtime faketime
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
bench-inference: inference-runtime build
	$(CARGO) run --release -p floe-inference --bin floe-inference-bench -- --seconds 3 --out bench-inference.md
	$(CARGO) run --release -p floe-tools --bin floe-infer-bench -- --binary $(RELEASE_BIN)/floe --out bench-infer-hop.md

# Throughput, latency, failover and memory against etcd 3.4 (Debian's
# etcd-server, installed here when missing). Prints a Markdown table and
# writes it to bench-results.md for BENCHMARKS.md.
bench: build
	@command -v etcd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; }
	$(RELEASE_BIN)/floe-bench --binary $(RELEASE_BIN)/floe --etcd "$$(command -v etcd)" --out bench-results.md

# The gate `make test` starts with: formatting (rustfmt.toml) and clippy with
# the workspace lints (Cargo.toml), warnings as errors.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# --- chaos suite (docs/chaos.md) -------------------------------------------
# Partitions (iptables) and disk-full (tmpfs) need root; clock skew needs
# libfaketime from Debian's faketime package, installed here when missing.
CHAOS_OUT ?= chaos-out
CHAOS_SEED ?=
CHAOS_SOAK_SECONDS ?= 600
CHAOS_SEED_FLAG = $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

faketime:
	@ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime; }

# The bounded matrix CI runs: every nemesis once on local processes, two on
# the container appliance when docker works (skipped cleanly otherwise).
test-chaos: faketime
	$(CARGO) test -p floe-chaos -- --test-threads=1

# Every nemesis once with both workloads; summary table on stdout, report in $(CHAOS_OUT).
chaos: faketime
	$(CARGO) build --release --bin floe --bin floe-chaos
	$(RELEASE_BIN)/floe-chaos --target local --nemesis all --workload both --out $(CHAOS_OUT) $(CHAOS_SEED_FLAG)

# A long seeded random schedule of every nemesis (CHAOS_SOAK_SECONDS, CHAOS_SEED to replay).
chaos-soak: faketime
	$(CARGO) build --release --bin floe --bin floe-chaos
	$(RELEASE_BIN)/floe-chaos --target local --nemesis random --workload both \
	  --seconds $(CHAOS_SOAK_SECONDS) --out $(CHAOS_OUT)/soak $(CHAOS_SEED_FLAG)

# 50 follower restarts (SIGKILL and SIGTERM alternately, down 1–10 s) on a
# local cluster under light write load: leader changes, failed writes and
# time to ready per trial, in $(CHAOS_OUT)/rejoin.md. Takes several minutes.
chaos-rejoin:
	$(CARGO) build --release --bin floe --bin floe-chaos
	@mkdir -p $(CHAOS_OUT)
	$(RELEASE_BIN)/floe-chaos rejoin --trials 50 --down-min-ms 1000 --down-max-ms 10000 \
	  --out $(CHAOS_OUT)/rejoin.md $(CHAOS_SEED_FLAG)

# The three-node container appliance from deploy/ (image built from our binary, no pull).
chaos-containers:
	$(CARGO) build --release --bin floe --bin floe-chaos
	$(RELEASE_BIN)/floe-chaos --target containers --nemesis kill-leader,pause-leader,partition-follower,power-cut \
	  --workload both --binary $(RELEASE_BIN)/floe --deploy-dir deploy --rebuild-image --out $(CHAOS_OUT)/containers $(CHAOS_SEED_FLAG)

# Builds three deliberately defective nodes (test-only features) into
# target dirs of their own and asserts the suite catches each. Slow.
chaos-defects: faketime
	$(CARGO) test -p floe-chaos --test defects -- --ignored --test-threads=1 --nocapture

# --- fuzzing (docs/security.md) --------------------------------------------
# One target (fuzz/src/lib.rs) under AFL++ for FUZZ_SECONDS, from its corpus
# in fuzz/corpus/; findings under $(FUZZ_OUT)/<target>/default/crashes. The
# AFL build (fuzz/afl/, not a workspace member) has a target dir of its own.
# cargo-afl comes from crates.io and builds AFL++ from the source it ships
# (gcc, make); `config --build` refuses when that is done, hence the `|| true`.
FUZZ_TARGET ?= flow
FUZZ_SECONDS ?= 600
FUZZ_OUT ?= fuzz-out
FUZZ_BUILD_DIR := $(CURDIR)/target/afl

fuzz:
	@command -v cargo-afl >/dev/null || $(CARGO) install --locked cargo-afl
	@$(CARGO) afl config --build >/dev/null 2>&1 || true
	cd fuzz/afl && CARGO_TARGET_DIR=$(FUZZ_BUILD_DIR) $(CARGO) afl build --release
	@mkdir -p $(FUZZ_OUT)
	AFL_NO_UI=1 AFL_AUTORESUME=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
	  nice -n 19 $(CARGO) afl fuzz -V $(FUZZ_SECONDS) -t 5000 -i fuzz/corpus/$(FUZZ_TARGET) \
	  -o $(FUZZ_OUT)/$(FUZZ_TARGET) -- $(FUZZ_BUILD_DIR)/release/floe-afl $(FUZZ_TARGET)
	@grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs) ' \
	  $(FUZZ_OUT)/$(FUZZ_TARGET)/default/fuzzer_stats

# Rewrites the generated seeds (peer frames, snapshots, certificates, the
# default config) in fuzz/corpus/ with floe's own encoders.
fuzz-seeds:
	$(CARGO) run -p floe-fuzz --bin floe-fuzz-seeds

# The container image floe:local (FROM scratch: our binary and its libraries).
image:
	$(CARGO) build --release --bin floe
	deploy/build-image.sh $(RELEASE_BIN)/floe

clean:
	$(CARGO) clean
