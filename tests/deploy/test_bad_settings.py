"""A setting that cannot be used stops `serve`, `worker` and `replay` with one line naming it
(exit 2), never a traceback: the last line of a crash-looping pod's log is the diagnosis."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from starlette.applications import Starlette

from app.errors import SettingsError

pytestmark = pytest.mark.slow

RAG_PIPELINE = str(Path(sys.executable).parent / "rag-pipeline")


# Never connected to: every process here stops before it talks to Redis.
REDIS_URL = "redis://127.0.0.1:6379/0"


def _run(command: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "RAG_HOST": "127.0.0.1",
        "RAG_PORT": "0",
        "RAG_DATA_DIR": str(tmp_path / "data"),
        "QDRANT_URL": ":memory:",
        "OTEL_SDK_DISABLED": "true",
    }
    return subprocess.run(
        [RAG_PIPELINE, command],
        env=base | env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _stops_on(proc: subprocess.CompletedProcess[str], variable: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"rag-pipeline: bad setting: {variable}"), proc.stderr
    assert proc.returncode == 2, proc.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unreadable_keys_file(command: str, tmp_path: Path) -> None:
    """The prod worker's failure before it mounted the keys Secret (issue 11)."""
    missing = tmp_path / "keys" / "keys.json"
    proc = _run(command, {"REDIS_URL": REDIS_URL, "RAG_API_KEYS_FILE": str(missing)}, tmp_path)
    _stops_on(proc, "RAG_API_KEYS_FILE")
    assert str(missing) in proc.stderr


def test_an_invalid_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": [{"sha256": "not a digest", "tenant": "a", "scopes": ["admin"]}]}')
    proc = _run("worker", {"REDIS_URL": REDIS_URL, "RAG_API_KEYS_FILE": str(keys)}, tmp_path)
    _stops_on(proc, "RAG_API_KEYS_FILE")


def test_a_redis_url_redis_cannot_parse(tmp_path: Path) -> None:
    proc = _run("worker", {"REDIS_URL": "redis://127.0.0.1:sixthousand/0"}, tmp_path)
    _stops_on(proc, "REDIS_URL")
    assert "sixthousand" in proc.stderr


@pytest.mark.parametrize(
    ("command", "redis"),
    [("serve", False), ("worker", True), ("replay", True)],
    ids=["serve-embedded-valkey", "worker-embedded-index", "replay-embedded-index"],
)
def test_a_data_dir_that_cannot_be_created(command: str, redis: bool, tmp_path: Path) -> None:
    """Under a regular file: the embedded Valkey (REDIS_URL empty) or the embedded index
    (QDRANT_URL empty) would live there."""
    (tmp_path / "file").write_text("")
    env = {"RAG_DATA_DIR": str(tmp_path / "file" / "data"), "QDRANT_URL": ""}
    proc = _run(command, env | ({"REDIS_URL": REDIS_URL} if redis else {}), tmp_path)
    _stops_on(proc, "RAG_DATA_DIR")


def test_an_embedder_setting_the_settings_cannot_check(tmp_path: Path) -> None:
    """Only the embedder knows which models need RAG_EMBEDDING_DIMENSIONS."""
    env = {
        "REDIS_URL": REDIS_URL,
        "RAG_EMBEDDER": "openai",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "RAG_EMBEDDING_MODEL": "a-model-of-unknown-size",
    }
    _stops_on(_run("worker", env, tmp_path), "RAG_EMBEDDING_DIMENSIONS")


def test_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            "REDIS_URL": REDIS_URL,
            "RAG_PORT": str(taken.getsockname()[1]),
            # The start-up log (INFO) would precede the line; warnings and errors only.
            "LOG_LEVEL": "WARNING",
        }
        _stops_on(_run("worker", env, tmp_path), "RAG_HOST/RAG_PORT")


class _NothingToClose:
    async def aclose(self) -> None:
        return None


def test_a_setting_refused_during_the_lifespan_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SettingsError raised in an app's lifespan start-up reaches Hypercorn as the text of
    a LifespanFailureError; the CLI still reports the setting alone."""
    import app.api.asgi
    import app.bootstrap
    from app.cli.main import main

    @asynccontextmanager
    async def refuse(app: Starlette) -> AsyncIterator[None]:
        raise SettingsError("RAG_SOMETHING: refused while the app started")
        yield

    monkeypatch.setattr(app.bootstrap, "build_worker", lambda settings: _NothingToClose())
    monkeypatch.setattr(
        app.api.asgi, "create_worker_app", lambda settings, built: Starlette(lifespan=refuse)
    )
    for name, value in {
        "REDIS_URL": REDIS_URL,
        "RAG_HOST": "127.0.0.1",
        "RAG_PORT": "0",
        "OTEL_SDK_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["worker"]) == 2
    assert capsys.readouterr().err == (
        "rag-pipeline: bad setting: RAG_SOMETHING: refused while the app started\n"
    )
