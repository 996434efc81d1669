"""The memory budget (RAG_MAX_MEMORY_MB): a request is let in only if the process's
resident memory plus what the requests already in may still allocate leaves room for it."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.codec import error_response
from app.heap import resident_bytes

# What one request may allocate beyond its body, as a multiple of the body: the bytes, the
# decoded structs, the chunk texts and the events encoded from them (ingest), or the
# candidates and the encoded response (search, whose body is small).
EXPANSION = 4
# Floor for a request, whatever its body: a search with 100 candidates and their payloads.
MIN_REQUEST_BYTES = 256 * 1024
# Reading RSS costs a syscall and a parse; once per this many seconds is fresh enough.
_RSS_EVERY_SECONDS = 0.05
# Probes and metrics must answer even when the budget is spent.
_ALWAYS = frozenset({"/health", "/ready", "/metrics"})


class MemoryBudget:
    """Counts reserved bytes of admitted requests against `limit - resident memory`.

    Resident memory already holds what admitted requests allocated so far, so counting
    their full reservation on top is conservative: it errs on the side of refusing.
    """

    def __init__(
        self,
        limit_bytes: int,
        *,
        rss: Callable[[], int] = resident_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_bytes = limit_bytes
        self._rss = rss
        self._clock = clock
        self._rss_value = 0
        self._rss_at = float("-inf")
        self.reserved = 0
        self.admitted = 0
        self.refused = 0

    def resident(self) -> int:
        now = self._clock()
        if now - self._rss_at >= _RSS_EVERY_SECONDS:
            self._rss_value = self._rss()
            self._rss_at = now
        return self._rss_value

    def cost(self, body_bytes: int) -> int:
        return max(MIN_REQUEST_BYTES, body_bytes * EXPANSION)

    def try_reserve(self, cost: int) -> bool:
        if self.resident() + self.reserved + cost > self.limit_bytes:
            self.refused += 1
            return False
        self.reserved += cost
        self.admitted += 1
        return True

    def release(self, cost: int) -> None:
        self.reserved -= cost


class MemoryBudgetMiddleware:
    """Refuses requests with 503 and Retry-After past the memory budget; /health, /ready and
    /metrics always pass. The body size is the declared Content-Length, or the largest body
    accepted (RAG_MAX_BODY_BYTES) when none is declared."""

    def __init__(self, app: ASGIApp, *, budget: MemoryBudget, max_body_bytes: int) -> None:
        self.app = app
        self.budget = budget
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _ALWAYS:
            await self.app(scope, receive, send)
            return
        body = 0
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = self.max_body_bytes
            for key, value in scope["headers"]:
                if key == b"content-length" and value.isdigit():
                    body = min(int(value), self.max_body_bytes)
        cost = self.budget.cost(body)
        if not self.budget.try_reserve(cost):
            response = error_response(
                503,
                "over_memory_budget",
                f"the server is at its memory budget ({self.budget.limit_bytes >> 20} MiB, "
                "RAG_MAX_MEMORY_MB); retry shortly",
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(cost)
