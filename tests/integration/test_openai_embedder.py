"""The OpenAI embedder against an OpenAI-wire HTTP server: batching, order, normalisation,
retries, Retry-After, timeouts, refusals, wrong dimensions and the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest

from app.adapters.embedders.circuit_breaker import CircuitBreaker
from app.adapters.embedders.openai_api import OpenAIEmbedder
from app.errors import EmbedderRejected, EmbedderUnavailable, SettingsError
from tests.openai_wire import FakeEmbeddings, Reply, embed

DIM = 64
MADE: list[OpenAIEmbedder] = []  # this test's embedders, whose connections run() closes


@pytest.fixture()
def fake() -> Iterator[FakeEmbeddings]:
    with FakeEmbeddings(dim=DIM) as server:
        yield server
    MADE.clear()


class Sleeps:
    """Records the waits instead of sleeping them, so retry tests take no time."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run in a fresh loop, closing the embedders' connections before the loop ends."""

    async def go() -> T:
        try:
            return await coro
        finally:
            for embedder in MADE:
                await embedder.aclose()

    return asyncio.run(go())


def make(
    fake: FakeEmbeddings,
    *,
    sleeps: Sleeps | None = None,
    batch_size: int = 4,
    concurrent: int = 2,
    retries: int = 3,
    timeout: float = 5.0,
    threshold: int = 100,
    cooldown: float = 5.0,
    model: str = "test-model",
    dimensions: int = DIM,
    api_key: str = "test-key",
) -> OpenAIEmbedder:
    made = OpenAIEmbedder(
        api_key=api_key,
        base_url=fake.url,
        model=model,
        dimensions=dimensions,
        timeout_seconds=timeout,
        batch_size=batch_size,
        max_concurrent_batches=concurrent,
        max_retries=retries,
        breaker=CircuitBreaker(failure_threshold=threshold, cooldown_seconds=cooldown),
        sleep=sleeps or Sleeps(),
        jitter=lambda: 0.5,
    )
    MADE.append(made)
    return made


def unit(text: str) -> np.ndarray:
    v = np.asarray(embed(text, DIM), dtype=np.float32)
    return v / np.linalg.norm(v)


TEXTS = [f"text number {i} about {'volcano' if i % 2 else 'insulin'} {i * 7}" for i in range(11)]


def test_batches_keep_input_order_and_vectors_are_unit(fake: FakeEmbeddings) -> None:
    embedder = make(fake, batch_size=4)
    encoded = run(embedder.embed_documents(TEXTS))
    assert encoded.vectors.shape == (11, DIM) and encoded.token_signatures is None
    for text, vector in zip(TEXTS, encoded.vectors, strict=True):
        np.testing.assert_allclose(vector, unit(text), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(encoded.vectors, axis=1), 1.0, atol=1e-5)
    assert sorted(len(r["input"]) for r in fake.received) == [3, 4, 4]  # two in flight
    assert {r["model"] for r in fake.received} == {"test-model"}
    assert {r["encoding_format"] for r in fake.received} == {"float"}
    # A declared dimension of an unknown model is not sent: servers may refuse the parameter.
    assert all("dimensions" not in r for r in fake.received)
    assert embedder.model_id == "openai-test-model-64"
    assert not embedder.has_token_vectors


def test_query(fake: FakeEmbeddings) -> None:
    query = run(make(fake).embed_query("which volcano"))
    np.testing.assert_allclose(query.vector, unit("which volcano"), atol=1e-5)
    assert query.token_vectors is None


def test_queries_of_a_batch_search_go_in_one_request(fake: FakeEmbeddings) -> None:
    queries = run(make(fake, batch_size=2).embed_queries(TEXTS[:5]))
    assert [len(r["input"]) for r in fake.received] == [5]
    for text, query in zip(TEXTS, queries, strict=False):
        np.testing.assert_allclose(query.vector, unit(text), atol=1e-5)
        assert query.token_vectors is None


def test_at_most_max_concurrent_batches_in_flight(fake: FakeEmbeddings) -> None:
    fake.outage = Reply(delay=0.2)
    embedder = make(fake, batch_size=1, concurrent=2)
    started = time.perf_counter()
    run(embedder.embed_documents(TEXTS[:6]))
    elapsed = time.perf_counter() - started
    # Six batches of 0.2 s, two at a time: three rounds (one at a time would be six).
    assert 0.55 < elapsed < 1.1, elapsed


def test_429_is_retried_after_the_servers_retry_after(fake: FakeEmbeddings) -> None:
    fake.script = [Reply(status=429, retry_after=2), Reply(status=500)]
    sleeps = Sleeps()
    encoded = run(make(fake, sleeps=sleeps).embed_documents(TEXTS[:2]))
    assert encoded.vectors.shape == (2, DIM)
    assert fake.answered == [429, 500, 200]
    # The server's 2 s, then backoff step 2 (1 s ceiling, equal jitter at 0.5: 0.75 s).
    assert sleeps.waits == [2.0, 0.75]


def test_backoff_is_exponential_capped_and_jittered(fake: FakeEmbeddings) -> None:
    fake.outage = Reply(status=503)
    sleeps = Sleeps()
    embedder = make(fake, sleeps=sleeps, retries=6)
    with pytest.raises(EmbedderUnavailable) as err:
        run(embedder.embed_documents(["x"]))
    assert sleeps.waits == [0.375, 0.75, 1.5, 3.0, 6.0, 6.0]
    assert fake.answered == [503] * 7
    assert err.value.retry_after >= 1


def test_a_failed_batch_fails_the_whole_call(fake: FakeEmbeddings) -> None:
    # The second of three batches is refused every time: no partial result comes back.
    fake.script = [Reply(), Reply(status=500), Reply(status=500), Reply(status=500)]
    embedder = make(fake, batch_size=4, concurrent=1, retries=2)
    with pytest.raises(EmbedderUnavailable):
        run(embedder.embed_documents(TEXTS))
    assert fake.answered[:4] == [200, 500, 500, 500]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(status=400), EmbedderRejected),
        (Reply(status=401), EmbedderUnavailable),
        (Reply(status=429, code="insufficient_quota"), EmbedderUnavailable),
    ],
)
def test_no_retry_on_refusals(fake: FakeEmbeddings, reply: Reply, error: type[Exception]) -> None:
    fake.outage = reply
    sleeps = Sleeps()
    with pytest.raises(error):
        run(make(fake, sleeps=sleeps).embed_documents(["x"]))
    assert len(fake.received) == 1 and sleeps.waits == []


def test_a_wrong_api_key_is_a_401_not_retried(fake: FakeEmbeddings) -> None:
    with pytest.raises(EmbedderUnavailable, match="401"):
        run(make(fake, api_key="wrong").embed_query("x"))
    assert fake.answered == [401]


def test_wrong_dimension_is_an_error_never_written(fake: FakeEmbeddings) -> None:
    fake.outage = Reply(dim=DIM * 2)
    with pytest.raises(EmbedderUnavailable, match="128-dimensional"):
        run(make(fake).embed_documents(["x", "y"]))
    assert len(fake.received) == 1


def test_slow_answers_time_out_and_are_retried(fake: FakeEmbeddings) -> None:
    fake.script = [Reply(delay=1.0)]
    sleeps = Sleeps()
    started = time.perf_counter()
    encoded = run(make(fake, sleeps=sleeps, timeout=0.3).embed_documents(["x"]))
    assert time.perf_counter() - started < 0.9
    assert encoded.vectors.shape == (1, DIM)
    assert len(sleeps.waits) == 1 and len(fake.received) == 2


def test_a_search_retries_once_and_never_sleeps_long(fake: FakeEmbeddings) -> None:
    fake.outage = Reply(status=429, retry_after=3)
    sleeps = Sleeps()
    with pytest.raises(EmbedderUnavailable) as err:
        run(make(fake, sleeps=sleeps).embed_query("x"))
    assert sleeps.waits == [] and len(fake.received) == 1
    assert err.value.retry_after >= 3


def test_the_breaker_opens_and_then_nothing_is_sent(fake: FakeEmbeddings) -> None:
    fake.outage = Reply(status=500)
    embedder = make(fake, retries=0, threshold=3, cooldown=0.3)
    for _ in range(3):
        with pytest.raises(EmbedderUnavailable):
            run(embedder.embed_query("x"))
    assert embedder.breaker.state == "open"
    sent = len(fake.received)
    started = time.perf_counter()
    with pytest.raises(EmbedderUnavailable, match="circuit breaker open") as err:
        run(embedder.embed_query("x"))
    assert time.perf_counter() - started < 0.05
    assert len(fake.received) == sent
    assert err.value.retry_after >= 1
    # After the cool-down one probe goes out; the API is back, so the breaker closes.
    fake.outage = None
    time.sleep(0.35)
    run(embedder.embed_query("x"))
    assert embedder.breaker.state == "closed"


def test_a_long_retry_after_keeps_the_breaker_open_that_long(fake: FakeEmbeddings) -> None:
    fake.outage = Reply(status=429, retry_after=30)
    embedder = make(fake, threshold=1, cooldown=1)
    with pytest.raises(EmbedderUnavailable):
        run(embedder.embed_documents(["x"]))
    assert len(fake.received) == 1  # 30 s is longer than a call waits: it fails at once
    assert embedder.breaker.retry_after() > 29


def test_known_models_and_requested_dimensions(fake: FakeEmbeddings) -> None:
    small = make(fake, model="text-embedding-3-small", dimensions=0)
    assert (small.dim, small.model_id) == (1536, "openai-text-embedding-3-small-1536")
    short = make(fake, model="text-embedding-3-small", dimensions=DIM)
    run(short.embed_query("x"))
    assert fake.received[-1]["dimensions"] == DIM
    with pytest.raises(SettingsError, match="RAG_EMBEDDING_DIMENSIONS"):
        make(fake, model="bge-small", dimensions=0)


def test_token_counter_counts_wordpieces(fake: FakeEmbeddings) -> None:
    count = make(fake).token_counter()
    assert count("hello world") == 2
    assert count("") == 0
