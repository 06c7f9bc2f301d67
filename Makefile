# The README's two commands:
#   make demo   build everything and run the demo
#   make test   build everything and run every check and test
# Both set themselves up from a fresh clone: virtualenvs, pip installs, the maturin
# build. Nothing here needs a virtualenv to be active.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
# The oldest CPython we support (abi3 wheel, cp310): the oldest-Twisted environment
# runs on it. Falls back to $(PYTHON) where no 3.10 is installed.
PYTHON_OLDEST ?= $(shell for p in python3.10 $$(pyenv root 2>/dev/null)/versions/3.10*/bin/python3.10; do \
  if "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then echo "$$p"; break; fi; done)
# The newest CPython pyenv has (3.13 here), with the newest Twisted: a third
# environment for the Python tests. Falls back to $(PYTHON) without pyenv.
PYTHON_NEWEST ?= $(shell for d in $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.* 2>/dev/null | sort -V -r); do \
  if "$$d/bin/python3" -c 'import sys; assert sys.version_info >= (3, 10)' >/dev/null 2>&1; then echo "$$d/bin/python3"; break; fi; done)
TWISTED_OLDEST := 24.11.0
PYO3_MIN := 0.29.0

# The test PostgreSQL server (scripts/test-postgres.sh): loopback only, thrown away.
PG_DIR ?= /tmp/pyo3-twisted-pg
PG_PORT ?= 55432
PG_DSN_FILE := $(CURDIR)/target/pg-dsn
# Beside it, for the native pool's tests: a cluster with ssl=on (certificates made at
# start) and PgBouncer in transaction mode in front of the first.
PG_TLS_DIR ?= /tmp/pyo3-twisted-pg-tls
PG_TLS_PORT ?= 55433
PGBOUNCER_DIR ?= /tmp/pyo3-twisted-pgbouncer
PGBOUNCER_PORT ?= 56432
PG_ENV_FILE := $(CURDIR)/target/pg-servers.env
WITH_PG = env PYO3_TWISTED_TEST_PG_DSN="$$(cat $(PG_DSN_FILE))" $$(cat $(PG_ENV_FILE))

VENV := $(CURDIR)/.venv
VENV_OLDEST := $(CURDIR)/.venv-oldest
VENV_NEWEST := $(CURDIR)/.venv-newest
WHEEL_DIR := $(CURDIR)/target/wheels

# Every cargo invocation sees the same interpreter, so PyO3 is configured once.
export PYO3_PYTHON := $(VENV)/bin/python
export PYO3_TWISTED_VENV := $(VENV)
export CARGO_TERM_COLOR := never

.PHONY: demo example bench bench-http loom exit-soak synapse-port test venv wheel demo-wheel release-install lint postgres postgres-stop rust-test rust-test-pyo3-min test-ext py-test py-test-oldest py-test-newest py-test-asyncio clean

# The demo service on http://127.0.0.1:8008 (SQLite in target/, seeded on first run).
# DEMO_ARGS="--database postgresql://user@127.0.0.1/db" switches to PostgreSQL. It runs
# on the released wheel of pyo3_twisted and the demo's own module (examples/demo).
demo: release-install
	$(VENV)/bin/python -m pyo3_twisted_demo --database $(CURDIR)/target/demo.sqlite3 $(DEMO_ARGS)

# The smallest program: await Rust futures from a running reactor, print, exit.
example: release-install
	$(VENV)/bin/python examples/hello_twisted.py

test: wheel lint postgres test-ext rust-test rust-test-pyo3-min loom py-test py-test-oldest py-test-newest py-test-asyncio synapse-port
	$(MAKE) --no-print-directory postgres-stop
	@echo "== all tests passed =="

$(VENV)/.ready: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

$(VENV_OLDEST)/.ready: requirements-dev.txt
	$(or $(PYTHON_OLDEST),$(PYTHON)) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/pip install -q "Twisted==$(TWISTED_OLDEST)" "pytest>=8" pytest-timeout "matrix-synapse==1.163.2" psycopg2-binary
	touch $@

$(VENV_NEWEST)/.ready: requirements-dev.txt
	$(or $(PYTHON_NEWEST),$(PYTHON)) -m venv $(VENV_NEWEST)
	$(VENV_NEWEST)/bin/pip install -q --upgrade pip
	$(VENV_NEWEST)/bin/pip install -q Twisted "pytest>=8" pytest-timeout "matrix-synapse==1.163.2" psycopg2-binary
	touch $@

venv: $(VENV)/.ready $(VENV_OLDEST)/.ready $(VENV_NEWEST)/.ready

# The wheel users install: one abi3 wheel for every environment, built without the
# `probes` feature, and checked to carry no test code (scripts/check-release-wheel.py).
wheel: venv
	rm -rf $(WHEEL_DIR)
	$(VENV)/bin/maturin build --quiet -m python_shim/Cargo.toml --release -o $(WHEEL_DIR) -i $(PYO3_PYTHON)
	$(VENV)/bin/python scripts/check-release-wheel.py $(WHEEL_DIR)/*.whl

# The demo's own extension module and Python package (examples/demo), a downstream
# module with its own copy of the crate.
DEMO_WHEEL_DIR := $(CURDIR)/target/demo-wheels
demo-wheel: venv
	rm -rf $(DEMO_WHEEL_DIR)
	$(VENV)/bin/maturin build --quiet -m examples/demo/Cargo.toml --release -o $(DEMO_WHEEL_DIR) -i $(PYO3_PYTHON)

release-install: wheel demo-wheel
	$(VENV)/bin/pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/*.whl $(DEMO_WHEEL_DIR)/*.whl

# What the tests run on, in every environment: the test build of pyo3_twisted (the
# released code plus `pyo3_twisted.probes`), the demo, and a second extension module
# linking the crate (tests/ext).
TEST_WHEEL_DIR := $(CURDIR)/target/test-wheels
test-ext: venv demo-wheel
	rm -rf $(TEST_WHEEL_DIR)
	$(VENV)/bin/maturin build --quiet -m python_shim/Cargo.toml --release --features probes -o $(TEST_WHEEL_DIR) -i $(PYO3_PYTHON)
	$(VENV)/bin/maturin build --quiet -m tests/ext/Cargo.toml --release -o $(TEST_WHEEL_DIR) -i $(PYO3_PYTHON)
	cp $(DEMO_WHEEL_DIR)/*.whl $(TEST_WHEEL_DIR)/
	for venv in $(VENV) $(VENV_OLDEST) $(VENV_NEWEST); do \
	  $$venv/bin/pip install -q --force-reinstall --no-deps $(TEST_WHEEL_DIR)/*.whl; \
	done

lint: venv
	$(VENV)/bin/python scripts/check-module-graph.py
	$(VENV)/bin/python -m mypy
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings
	# The released wheel's build: python_shim without the `probes` feature; and the
	# crate with its default features, as a dependency without `postgres` builds it.
	cargo clippy -p pyo3-twisted-python --all-targets -- -D warnings
	cargo clippy -p pyo3-twisted --all-targets -- -D warnings

# The mailbox's wake and close protocols, model-checked (src/wake_flag.rs and
# src/close_flag.rs under loom's atomics;
# its own cfg, and target dir, so tokio is not built in loom mode).
loom:
	RUSTFLAGS="--cfg pyo3_twisted_loom" CARGO_TARGET_DIR=$(CURDIR)/target/loom \
	  cargo test --release -p pyo3-twisted-loom

# pyo3-twisted against its peers, on this machine; figures in benches/results/ and
# benches/README.md. The peers (naive bridge, pyo3-async-runtimes) are a wheel of
# their own, never installed by the other targets.
bench: test-ext postgres
	$(VENV)/bin/pip install -q matplotlib
	$(VENV)/bin/maturin build --quiet -m benches/peers/Cargo.toml --release -o $(CURDIR)/target/bench-wheels -i $(PYO3_PYTHON)
	$(VENV)/bin/pip install -q --force-reinstall --no-deps $(CURDIR)/target/bench-wheels/*.whl
	cargo bench --bench rust_parts -- --warm-up-time 1 --measurement-time 3
	$(WITH_PG) $(VENV)/bin/python benches/bench.py $(BENCH_ARGS)

# The demo's Rust /versions handler against its Python twin over HTTP (wrk and
# valgrind, from Debian's packages), then in process under callgrind without HTTP
# (benches/handler_instructions.py) and by CPU time, at the demo's four flags and at
# Synapse's ~40 (benches/handler_cpu.py); figures in benches/README.md.
bench-http: release-install postgres
	command -v wrk >/dev/null && command -v valgrind >/dev/null || { sudo_=""; [ "$$(id -u)" = 0 ] || sudo_="sudo -n"; \
	  $$sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk valgrind; }
	$(WITH_PG) $(VENV)/bin/python benches/wrk_versions.py $(BENCH_HTTP_ARGS)
	$(VENV)/bin/python benches/handler_instructions.py
	$(VENV)/bin/python benches/handler_cpu.py --sides python_control,rust_interaction,rust_coroutine,rust
	$(WITH_PG) $(VENV)/bin/python benches/handler_cpu.py --database postgresql --sides python_control,rust_interaction,rust_coroutine
	$(VENV)/bin/python benches/handler_cpu.py --extra-features 36 --sides python_control,rust_interaction,rust_coroutine
	$(WITH_PG) $(VENV)/bin/python benches/handler_cpu.py --extra-features 36 --database postgresql --sides python_control,rust_interaction

postgres:
	mkdir -p $(dir $(PG_DSN_FILE))
	scripts/test-postgres.sh start $(PG_DIR) $(PG_PORT) > $(PG_DSN_FILE)
	scripts/test-postgres.sh start-tls $(PG_TLS_DIR) $(PG_TLS_PORT)
	scripts/test-postgres.sh start-pgbouncer $(PGBOUNCER_DIR) $(PGBOUNCER_PORT) $(PG_PORT)
	printf '%s\n' PYO3_TWISTED_TEST_PG_SOCKET_DIR=$(PG_DIR) PYO3_TWISTED_TEST_PG_PORT=$(PG_PORT) \
	  PYO3_TWISTED_TEST_PG_TLS_DIR=$(PG_TLS_DIR) PYO3_TWISTED_TEST_PG_TLS_PORT=$(PG_TLS_PORT) \
	  PYO3_TWISTED_TEST_PGBOUNCER_PORT=$(PGBOUNCER_PORT) > $(PG_ENV_FILE)
	@echo "PostgreSQL for the tests: $$(cat $(PG_DSN_FILE)); TLS on port $(PG_TLS_PORT); PgBouncer on $(PGBOUNCER_PORT)"

postgres-stop:
	scripts/test-postgres.sh stop-pgbouncer $(PGBOUNCER_DIR)
	scripts/test-postgres.sh stop $(PG_TLS_DIR)
	scripts/test-postgres.sh stop $(PG_DIR)

# The Rust tests import the package's Python modules from the venv.
rust-test: test-ext postgres
	$(WITH_PG) cargo test --features postgres

# The lowest PyO3 the crate declares, in a scratch copy of the workspace so the
# committed lockfile stays as it is; build artifacts shared with the main target/.
# `make exit-soak` runs the interpreter-exit cases 500 times each (CI: 10).
rust-test-pyo3-min: venv
	rm -rf target/pyo3-min && mkdir -p target/pyo3-min
	cp -r Cargo.toml Cargo.lock build.rs src tests benches examples python_shim README.md target/pyo3-min/
	# The benchmark peers and the test extension pin PyO3 0.30 (pyo3-async-runtimes):
	# not part of this check.
	sed -i 's#, "benches/peers"##; s#, "tests/ext"##' target/pyo3-min/Cargo.toml
	cd target/pyo3-min && cargo update -q -p pyo3 --precise $(PYO3_MIN) && \
	  for v in $$(grep -A1 '^name = "pyo3-build-config"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p'); do \
	    if [ "$$v" != "$(PYO3_MIN)" ]; then cargo update -q -p "pyo3-build-config@$$v" --precise $(PYO3_MIN); fi; \
	  done && \
	  grep -A1 '^name = "pyo3"$$' Cargo.lock | grep -q 'version = "$(PYO3_MIN)"'
	$(WITH_PG) CARGO_TARGET_DIR=$(CURDIR)/target cargo test --features postgres --manifest-path target/pyo3-min/Cargo.toml

exit-soak: test-ext
	EXIT_RUNS=500 $(VENV)/bin/python -m pytest -q tests/python/test_exit.py

py-test: test-ext postgres
	$(WITH_PG) $(VENV)/bin/python -m pytest -q

py-test-oldest: test-ext postgres
	@$(VENV_OLDEST)/bin/python -c 'import sys, twisted; print("oldest environment: Python", sys.version.split()[0], "Twisted", twisted.__version__)'
	$(WITH_PG) $(VENV_OLDEST)/bin/python -m pytest -q

# The whole Python suite again on Twisted's asyncio reactor, oldest and newest Twisted.
py-test-asyncio: test-ext postgres
	$(WITH_PG) PYO3_TWISTED_TEST_REACTOR=asyncio $(VENV)/bin/python -m pytest -q
	$(WITH_PG) PYO3_TWISTED_TEST_REACTOR=asyncio $(VENV_OLDEST)/bin/python -m pytest -q
	$(WITH_PG) PYO3_TWISTED_TEST_REACTOR=asyncio $(VENV_NEWEST)/bin/python -m pytest -q

# The newest CPython here, with the newest Twisted.
py-test-newest: test-ext postgres
	@$(VENV_NEWEST)/bin/python -c 'import sys, twisted; print("newest environment: Python", sys.version.split()[0], "Twisted", twisted.__version__)'
	$(WITH_PG) $(VENV_NEWEST)/bin/python -m pytest -q

# Synapse 1.163.2's own Rust crate, ported to pyo3_twisted::synapse by changing `use`
# lines only (scripts/synapse-port.py), then Synapse's own tests of its Rust bridge
# run against it. Downloads the sdist from PyPI (AGPL: built here, never committed).
synapse-port: venv
	$(VENV)/bin/python scripts/synapse-port.py $(CURDIR)/target/synapse-port

clean:
	rm -rf target $(VENV) $(VENV_OLDEST) $(VENV_NEWEST)
