#!/usr/bin/env python3
"""Port Synapse 1.163.2's Rust crate to pyo3-twisted by changing `use` lines, build
it, and run Synapse's own tests against the result.

    synapse-port.py WORKDIR [TRIAL_TEST ...]

1. Downloads the matrix-synapse sdist from PyPI into WORKDIR (once; its sha256 is
   checked against the index) and unpacks a fresh copy.
2. Applies the port, and nothing else: in `rust/src/lib.rs` and
   `rust/src/storage/mod.rs`, Synapse's own `deferred`, `runtime`,
   `twisted_dispatch` and `storage::db` modules give way to `pyo3_twisted::synapse`'s
   (their files are deleted), `pyo3_log` becomes ours, and `rust/Cargo.toml` gains
   one dependency line. An edit that no longer matches fails loudly.
3. Builds the crate (release, as Synapse ships it) and installs it as the unpacked
   tree's `synapse/synapse_rust.abi3.so`.
4. Runs Synapse's trial tests (by default the ones that reach its Rust bridge) from
   the unpacked tree, with this interpreter (a virtualenv that has matrix-synapse's
   dependencies).

Synapse is AGPL: it is downloaded and built here, never copied into this repository.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.163.2"
SDIST = f"matrix_synapse-{VERSION}.tar.gz"
INDEX = "https://pypi.org/simple/matrix-synapse/"
REPO = Path(__file__).resolve().parent.parent

# Synapse's tests that reach the Rust bridge: runtime, deferreds, logcontexts, the
# Python database pool through Rust (/versions), the HTTP client.
DEFAULT_TESTS = [
    "tests.synapse_rust.test_http_client.HttpClientTestCase.test_request_response",
    "tests.synapse_rust.test_http_client.HttpClientTestCase.test_logging_context",
    # Not test_request_response_limit_exceeded: its wait (100 polls of 1 ms) is
    # shorter than the request on this 2-core machine with Synapse's own bridge too
    # (0.08-0.11 s measured), so it fails there either way.
    "tests.synapse_rust.test_logcontext",
    "tests.synapse_rust.test_json_object",
    "tests.synapse_rust.test_unsigned",
    "tests.rest.client.test_versions",
    # Homeserver test cases by the dozen: one never-run reactor and one RustRuntime
    # each, shut down with the homeserver.
    "tests.rest.client.test_account",
    "tests.util.test_logcontext",
    "tests.logging",
]

# (file, old, new): the whole port.
EDITS = [
    ("rust/Cargo.toml", "\n[build-dependencies]",
     f'\npyo3-twisted = {{ path = "{REPO}" }}\n\n[build-dependencies]'),
    ("rust/src/lib.rs", "\npub mod deferred;\n", "\npub use pyo3_twisted::synapse::deferred;\n"),
    ("rust/src/lib.rs", "\npub mod runtime;\n", "\npub use pyo3_twisted::synapse::runtime;\n"),
    ("rust/src/lib.rs", "\npub mod twisted_dispatch;\n", "\n"),
    ("rust/src/lib.rs", "\nuse pyo3_log::ResetHandle;\n",
     "\nuse pyo3_twisted::synapse::pyo3_log::{self, ResetHandle};\n"),
    ("rust/src/storage/mod.rs", "\npub mod db;\n", "\npub use pyo3_twisted::synapse::storage::db;\n"),
]
DELETED = ["rust/src/deferred.rs", "rust/src/runtime.rs", "rust/src/twisted_dispatch.rs", "rust/src/storage/db"]


def fetch(workdir: Path) -> Path:
    target = workdir / SDIST
    page = urllib.request.urlopen(INDEX, timeout=60).read().decode()
    match = re.search(r'href="([^"]*/' + re.escape(SDIST) + r')#sha256=([0-9a-f]{64})"', page)
    if not match:
        sys.exit(f"{SDIST} is not on {INDEX}")
    url, sha256 = match.groups()
    if not target.exists() or hashlib.sha256(target.read_bytes()).hexdigest() != sha256:
        print(f"synapse-port: downloading {SDIST}", flush=True)
        data = urllib.request.urlopen(url, timeout=300).read()
        if hashlib.sha256(data).hexdigest() != sha256:
            sys.exit(f"{SDIST}: sha256 mismatch")
        target.write_bytes(data)
    return target


def unpack(sdist: Path, workdir: Path) -> Path:
    tree = workdir / f"matrix_synapse-{VERSION}"
    shutil.rmtree(tree, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data") if sys.version_info >= (3, 12) else tar.extractall(workdir)
    return tree


def port(tree: Path) -> None:
    for name, old, new in EDITS:
        path = tree / name
        text = path.read_text()
        if text.count(old) != 1:
            sys.exit(f"synapse-port: {name} no longer has exactly one {old.strip()!r}")
        path.write_text(text.replace(old, new))
    for name in DELETED:
        path = tree / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def build(tree: Path, workdir: Path) -> None:
    env = {**os.environ, "CARGO_TARGET_DIR": str(workdir / "target"), "PYO3_PYTHON": sys.executable}
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", str(tree / "Cargo.toml")],
        check=True,
        env=env,
    )
    shutil.copy(workdir / "target/release/libsynapse.so", tree / "synapse/synapse_rust.abi3.so")


def main() -> int:
    workdir = Path(sys.argv[1]).resolve()
    tests = sys.argv[2:] or DEFAULT_TESTS
    workdir.mkdir(parents=True, exist_ok=True)
    tree = unpack(fetch(workdir), workdir)
    port(tree)
    build(tree, workdir)
    print(f"synapse-port: Synapse {VERSION} built on pyo3-twisted; running its tests", flush=True)
    return subprocess.run([sys.executable, "-m", "twisted.trial", *tests], cwd=tree).returncode


if __name__ == "__main__":
    sys.exit(main())
