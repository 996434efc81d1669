"""An OpenAI-wire embeddings server for tests and benchmarks: real HTTP on a free port.

`POST /v1/embeddings` takes and answers the JSON of OpenAI's API. Vectors are deterministic
bags of hashed words (texts sharing words point the same way), so search over them means
something. Replies can be scripted: a queue of one-off replies, and a standing `outage`
reply served instead of embeddings until it is cleared (429 with Retry-After, 500, a slow
answer, 401, insufficient_quota, vectors of the wrong dimension, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Reply:
    """One scripted answer. status 200 answers with embeddings (of `dim` if set)."""

    status: int = 200
    retry_after: float | None = None
    delay: float = 0.0  # seconds before answering (a slow server, or a timeout)
    code: str | None = None  # the error's `code`, e.g. "insufficient_quota"
    dim: int | None = None  # answer with vectors of this dimension instead


def embed(text: str, dim: int) -> list[float]:
    vector = np.zeros(dim, dtype=np.float64)
    for word in _WORD.findall(text.lower()):
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        vector += np.random.default_rng(seed).standard_normal(dim)
    if not vector.any():
        vector[0] = 1.0
    # Deliberately not normalised: the client must normalise.
    return [round(float(x), 6) for x in vector * 3.0]


class FakeEmbeddings:
    def __init__(self, *, dim: int = 64, api_key: str | None = "test-key") -> None:
        self.dim = dim
        self.api_key = api_key
        self.script: list[Reply] = []
        self.outage: Reply | None = None
        self.received: list[dict[str, Any]] = []
        self.answered: list[int] = []  # status of every answer, in order
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeEmbeddings:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, headers, payload = fake.answer(
                    self.path, self.headers.get("authorization"), body
                )
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeEmbeddings:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_count(self) -> int:
        with self._lock:
            return len(self.received)

    def answer(
        self, path: str, authorization: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.received.append(body)
            reply = self.script.pop(0) if self.script else (self.outage or Reply())
        if reply.delay:
            time.sleep(reply.delay)
        status, headers, payload = self._reply(reply, path, authorization, body)
        with self._lock:
            self.answered.append(status)
        return status, headers, payload

    def _reply(
        self, reply: Reply, path: str, authorization: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if path.rstrip("/") != "/v1/embeddings":
            return 404, {}, _error(f"no route {path}", "invalid_request_error", None)
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return (
                401,
                {},
                _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
            )
        headers = {} if reply.retry_after is None else {"retry-after": f"{reply.retry_after:g}"}
        if reply.status == 429:
            kind = "insufficient_quota" if reply.code == "insufficient_quota" else "requests"
            return (
                429,
                headers,
                _error("Rate limit reached", kind, reply.code or "rate_limit_exceeded"),
            )
        if reply.status != 200:
            return (
                reply.status,
                headers,
                _error(f"scripted {reply.status}", "server_error", reply.code),
            )
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) and t for t in inputs)
        ):
            return (
                400,
                {},
                _error("'input' must be non-empty strings", "invalid_request_error", None),
            )
        dim = reply.dim or body.get("dimensions") or self.dim
        return (
            200,
            {},
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": embed(text, dim)}
                    for i, text in enumerate(inputs)
                ],
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            },
        )


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and closed its connection is part of the script


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
