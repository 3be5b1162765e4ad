"""Running a test's scenario in a fresh interpreter, for what must not touch
the test process: a signal, a hang (the timeout turns a regression into a
failure instead of a stuck suite), an address-space limit."""
from __future__ import annotations

import os
import subprocess
import sys

import tinymech

# the child imports the same tinymech as this process (installed, or the source tree), and the tests' helpers
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(tinymech.__file__)))
SUPPORT = os.path.dirname(os.path.abspath(__file__))


def run_python(code: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `code` with `python -c`; fails the test when it outlives `timeout` seconds."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, SUPPORT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    try:
        # (run from there: `python -c` puts the working directory first on sys.path)
        return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                              cwd=PACKAGE_PARENT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"still running after {timeout} s (a hang?); output so far:\n{e.stdout}\n{e.stderr}")
