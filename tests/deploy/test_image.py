"""The image is built from the Containerfile and runs as the dev Deployments run it:
scripts/image-test, on a local Debian base (docs/deploy.md). RAG_IMAGE_NO_CACHE=1 makes that
base anew instead of taking the cached one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy._support import ROOT, missing, require_tool

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "image-test"
# scripts/image-test's exit code when a tool it needs is missing.
MISSING_TOOL = 3
# A cold run (debootstrap, build, run) takes about 2 minutes here; this bounds a hung one.
SCRIPT_TIMEOUT_SECONDS = 1200
_FAILED = re.compile(r"^image-test: FAILED at step (\S+): (.*)$", re.MULTILINE)
_MISSING = re.compile(r"^(.*) is not installed \((.*)\)$")
_STEP = re.compile(r"^image-test: step (\S+)$", re.MULTILINE)


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.timeout(SCRIPT_TIMEOUT_SECONDS + 120)
def test_image_builds_runs_serve_and_worker_and_drains(tmp_path: Path) -> None:
    """The script's every step passes: tools, base, build, then the run's render, redis,
    start, ready, security, healthcheck, ingest, metrics, stop and search."""
    if os.geteuid() != 0:
        missing("root", "podman runs rootful here and debootstrap needs root")
    for tool in ("podman", "runc", "debootstrap"):
        require_tool(tool, f"apt-get install {tool}; scripts/test-tools does")
    kubectl = require_tool("kubectl", "it renders the dev overlay", "KUBECTL")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "KUBECTL": kubectl,
        "REDIS_URL": os.environ.get("REDIS_URL", "").strip() or "redis://127.0.0.1:6379/0",
        "TMPDIR": str(tmp_path),
    }
    log = tmp_path / "image-test.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=SCRIPT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            # TERM first: the script and its run step remove their containers and keys.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            output = log.read_text(errors="replace")
            steps = _STEP.findall(output)
            pytest.fail(
                f"scripts/image-test still running after {SCRIPT_TIMEOUT_SECONDS} s, in step "
                f"{steps[-1] if steps else 'tools, base or build'}:\n{_tail(output)}",
                pytrace=False,
            )
    output = log.read_text(errors="replace")
    summary = [line for line in output.splitlines() if line.startswith("image-test: ")]
    print("\n".join(line for line in summary if not _STEP.match(line)))
    if code == 0:
        assert summary[-1] == "image-test: passed", _tail(output)
        return
    failed = _FAILED.findall(output)
    absent = _MISSING.match(failed[-1][1]) if failed else None
    if code == MISSING_TOOL and absent:
        missing(absent[1], absent[2])
    if not failed:
        pytest.fail(
            f"scripts/image-test exited {code} without naming a step:\n{_tail(output)}",
            pytrace=False,
        )
    where, why = failed[-1]
    pytest.fail(
        f"scripts/image-test failed at step {where}: {why}\n--- its output ---\n{_tail(output)}",
        pytrace=False,
    )
