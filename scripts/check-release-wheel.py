#!/usr/bin/env python3
"""Fail unless a built `pyo3_twisted` wheel is the released one: no test code in it.

    check-release-wheel.py WHEEL

The wheel's files must be exactly the package's modules, and the compiled
`pyo3_twisted._native` must expose exactly the released API: nothing from the
`probes` feature (`touch_python`, `panic`, `pending`, `RustStore`...), no demo handler,
and no `pyo3_twisted.probes` module. The module is imported from the unpacked wheel in
a child interpreter, ahead of whatever the venv has installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE_FILES = {
    "pyo3_twisted/__init__.py",
    "pyo3_twisted/_native.pyi",
    "pyo3_twisted/database.py",
    "pyo3_twisted/logcontext.py",
    "pyo3_twisted/metrics.py",
    "pyo3_twisted/py.typed",
    "pyo3_twisted/testing.py",
}

NATIVE_API = {
    "POLLS_READERS_ATTR",
    "RUNTIME_ATTR",
    "Runtime",
    "RuntimeShutdown",
    "RustPanicError",
    "convert_placeholders",
    "describe_stats",
    "histograms",
    "install",
    "reset_log_cache",
    "stats",
}

CHILD = """
import importlib, json, sys
import pyo3_twisted, pyo3_twisted._native as n
try:
    importlib.import_module("pyo3_twisted.probes")
    probes = True
except ModuleNotFoundError:
    probes = False
print(json.dumps({
    "file": pyo3_twisted.__file__,
    "names": sorted(k for k in vars(n) if not k.startswith("_")),
    "probes": probes,
}))
"""


def main(wheel: str) -> int:
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.split("/")[0].endswith(".dist-info")]
        natives = [n for n in names if n.startswith("pyo3_twisted/_native.") and n.endswith(".so")]
        if len(natives) != 1:
            problems.append(f"expected one compiled pyo3_twisted/_native.*.so, found {natives}")
        extra = sorted(set(names) - PACKAGE_FILES - set(natives))
        missing = sorted(PACKAGE_FILES - set(names))
        if extra:
            problems.append(f"files that are not part of the package: {extra}")
        if missing:
            problems.append(f"package files missing: {missing}")
        with tempfile.TemporaryDirectory() as tmp:
            zf.extractall(tmp)
            env = {**os.environ, "PYTHONPATH": tmp}
            out = subprocess.run(
                [sys.executable, "-s", "-c", CHILD], env=env, check=True, capture_output=True, text=True
            ).stdout
            seen = json.loads(out)
            if not seen["file"].startswith(tmp):
                problems.append(f"imported {seen['file']}, not the unpacked wheel")
    exposed = set(seen["names"])
    if exposed - NATIVE_API:
        problems.append(f"_native exposes names outside the released API: {sorted(exposed - NATIVE_API)}")
    if NATIVE_API - exposed:
        problems.append(f"_native lacks released API: {sorted(NATIVE_API - exposed)}")
    if seen["probes"]:
        problems.append("pyo3_twisted.probes is importable")
    if problems:
        print(f"{wheel} is not a release wheel:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"release wheel checked: {os.path.basename(wheel)} has the package's {len(PACKAGE_FILES)} files, "
          f"_native exposes exactly {len(NATIVE_API)} names, no probes")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
