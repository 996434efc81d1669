"""The OpenAI-compatible embedder: `/v1/embeddings` through `openai.AsyncOpenAI`, with our own
retries, timeouts and circuit breaker (the client's own retries are off, so the behaviour is
explicit and tested)."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import numpy as np
import openai

from app.adapters.embedders.batch_slots import BatchSlots
from app.adapters.embedders.circuit_breaker import CircuitBreaker
from app.adapters.embedders.local import minilm_token_counter
from app.domain.records import Encoded, EncodedQuery, Vector
from app.errors import EmbedderRejected, EmbedderUnavailable, SettingsError

log = logging.getLogger(__name__)

# Native dimensions of OpenAI's models; any other model must declare its dimension.
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# Models that shorten their vectors on request (the API's `dimensions` parameter).
_SHORTENS = ("text-embedding-3-",)
# OpenAI's embedding models read 8191 tokens; for a served model we do not know, 512 is the
# window of the common BERT-style ones. Chunks are at most RAG_CHUNK_SIZE (<= 256) anyway.
_OPENAI_MAX_TOKENS = 8191
_OTHER_MAX_TOKENS = 512

_FIRST_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 8.0
# A Retry-After longer than this is not slept through inside a call: the call fails and the
# breaker stays open for as long as the server asked.
_MAX_HONOURED_WAIT_SECONDS = 10.0
# A search must answer promptly: one retry, after at most this long.
_QUERY_RETRIES = 1
_QUERY_MAX_WAIT_SECONDS = 0.5


class _Item(msgspec.Struct):
    index: int
    embedding: list[float]


class _EmbeddingsResponse(msgspec.Struct):
    """The part of the `/v1/embeddings` response we read."""

    data: list[_Item]


_response_decoder = msgspec.json.Decoder(_EmbeddingsResponse)


class _Failed(Exception):
    """One attempt failed; `retryable` says whether another may succeed."""

    def __init__(self, error: Exception, *, retryable: bool, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class OpenAIEmbedder:
    """Embeds through an OpenAI-compatible API. No token vectors: its index is searched
    without the late-interaction rerank."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        model: str,
        dimensions: int,
        timeout_seconds: float,
        batch_size: int,
        max_concurrent_batches: int,
        max_retries: int,
        breaker: CircuitBreaker,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        native = KNOWN_DIMENSIONS.get(model)
        if dimensions == 0 and native is None:
            raise SettingsError(
                f"RAG_EMBEDDING_DIMENSIONS: required for model {model!r} (its dimension is "
                "not known here; it names the index)"
            )
        self.model = model
        self._dim = dimensions or native or 0
        # Ask the API to shorten only where it can and the size differs; for other models
        # the setting only declares what the server returns.
        self._request_dimensions = (
            self._dim if model.startswith(_SHORTENS) and self._dim != native else None
        )
        self._batch_size = batch_size
        self._max_retries = max_retries
        self.breaker = breaker
        self._sleep = sleep
        self._jitter = jitter
        self._slots = BatchSlots(max_concurrent_batches)
        # A server without authentication still needs a header for the client to send.
        self._api_key = api_key or "unused"
        self._base_url = base_url
        self._timeout = timeout_seconds
        self._client: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._max_text_tokens = _OPENAI_MAX_TOKENS if native is not None else _OTHER_MAX_TOKENS
        self._count_tokens = minilm_token_counter()
        slug = re.sub(r"[^a-z0-9._-]+", "-", model.lower()).strip("-")
        self._model_id = f"openai-{slug}-{self._dim}"

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def has_token_vectors(self) -> bool:
        return False

    @property
    def max_text_tokens(self) -> int:
        return self._max_text_tokens

    def token_counter(self) -> Callable[[str], int]:
        """MiniLM's WordPiece count: the API's own tokenizer is not at hand, and WordPiece
        splits English into as many or more pieces than OpenAI's byte-pair encodings, so a
        chunk measured by it fits the API model's window."""
        return self._count_tokens

    async def embed_documents(self, texts: Sequence[str]) -> Encoded:
        """Vectors in input order. Batches of RAG_BATCH_SIZE, at most MAX_CONCURRENT_BATCHES
        in flight; if one batch fails the others are cancelled and the call fails, so no
        caller ever sees a partial result that could pair a vector with the wrong text."""
        n = len(texts)
        vectors = np.empty((n, self._dim), dtype=np.float32)
        if n == 0:
            return Encoded(vectors=vectors, token_signatures=None)
        slots = self._slots.here()

        async def run(start: int) -> None:
            async with slots:
                batch = texts[start : start + self._batch_size]
                vectors[start : start + len(batch)] = await self._embed(
                    batch, retries=self._max_retries, max_wait=_MAX_HONOURED_WAIT_SECONDS
                )

        tasks = [asyncio.ensure_future(run(s)) for s in range(0, n, self._batch_size)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                await asyncio.gather(*tasks, return_exceptions=True)
                raise task.exception()  # type: ignore[misc]
        return Encoded(vectors=vectors, token_signatures=None)

    async def embed_query(self, text: str) -> EncodedQuery:
        vectors = await self._embed(
            [text], retries=min(_QUERY_RETRIES, self._max_retries), max_wait=_QUERY_MAX_WAIT_SECONDS
        )
        return EncodedQuery(vector=vectors[0], token_vectors=None)

    async def embed_queries(self, texts: Sequence[str]) -> list[EncodedQuery]:
        """One request for all of them, retried as a single query is."""
        if not texts:
            return []
        vectors = await self._embed(
            list(texts),
            retries=min(_QUERY_RETRIES, self._max_retries),
            max_wait=_QUERY_MAX_WAIT_SECONDS,
        )
        return [EncodedQuery(vector=vector, token_vectors=None) for vector in vectors]

    async def aclose(self) -> None:
        """Close the running loop's HTTP connections (before the loop ends)."""
        if self._client is not None and self._client[0] is asyncio.get_running_loop():
            client, self._client = self._client[1], None
            await client.close()

    def close(self) -> None:
        """Close the HTTP connections when a loop is there to do it (it always is in serve)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._client is not None and self._client[0] is loop:
            closing = loop.create_task(self._client[1].close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self._client = None

    # -- one batch ----------------------------------------------------------------------

    async def _embed(self, texts: Sequence[str], *, retries: int, max_wait: float) -> Vector:
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise EmbedderUnavailable(
                    "the embeddings API is failing; circuit breaker open, not calling it",
                    retry_after=max(1.0, self.breaker.retry_after()),
                )
            try:
                vectors = await self._request(texts)
            except _Failed as failed:
                if failed.retryable or isinstance(failed.error, EmbedderUnavailable):
                    self.breaker.failure(failed.retry_after)
                else:
                    self.breaker.success()  # it answered; these texts are the problem
                wait = self._backoff(attempt, failed.retry_after)
                if not failed.retryable or attempt >= retries or wait > max_wait:
                    raise self._give_up(failed, attempt) from failed.error
                log.info(
                    "embeddings request failed (%s); retry %d of %d in %.2f s",
                    failed,
                    attempt + 1,
                    retries,
                    wait,
                )
                await self._sleep(wait)
                attempt += 1
            except BaseException:
                self.breaker.abandon()
                raise
            else:
                self.breaker.success()
                return vectors

    async def _request(self, texts: Sequence[str]) -> Vector:
        started = time.perf_counter()
        try:
            raw = await self._client_here().embeddings.with_raw_response.create(
                model=self.model,
                input=list(texts),
                encoding_format="float",
                dimensions=openai.omit if self._request_dimensions is None else self._dim,
            )
        except openai.APIStatusError as exc:
            raise _classify(exc) from exc
        except openai.APIConnectionError as exc:  # timeouts included
            raise _Failed(exc, retryable=True, retry_after=None) from exc
        try:
            body = _response_decoder.decode(raw.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _Failed(
                EmbedderUnavailable(f"the embeddings API answered something else: {exc}"),
                retryable=True,
                retry_after=None,
            ) from exc
        log.debug(
            "embedded %d texts in %.1f ms", len(texts), 1000 * (time.perf_counter() - started)
        )
        return self._vectors(body, len(texts))

    def _vectors(self, body: _EmbeddingsResponse, n: int) -> Vector:
        if sorted(item.index for item in body.data) != list(range(n)):
            raise _Failed(
                EmbedderUnavailable(
                    f"the embeddings API returned {len(body.data)} vectors for {n} texts"
                ),
                retryable=True,
                retry_after=None,
            )
        wrong = {len(i.embedding) for i in body.data} - {self._dim}
        if wrong:
            # Another model (or size) than the index was built for: writing these would
            # corrupt it, and retrying returns the same. Loud, and nothing is dead-lettered.
            raise _Failed(
                EmbedderUnavailable(
                    f"the embeddings API returned {max(wrong)}-dimensional vectors; the "
                    f"index {self._model_id} holds {self._dim}: check RAG_EMBEDDING_MODEL and "
                    "RAG_EMBEDDING_DIMENSIONS",
                    retry_after=30.0,
                ),
                retryable=False,
                retry_after=None,
            )
        vectors = np.empty((n, self._dim), dtype=np.float32)
        for item in body.data:
            vectors[item.index] = item.embedding
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise _Failed(
                EmbedderRejected("the embeddings API returned a zero or non-finite vector"),
                retryable=False,
                retry_after=None,
            )
        normalised: Vector = (vectors / norms).astype(np.float32, copy=False)
        return normalised

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(_MAX_BACKOFF_SECONDS, _FIRST_BACKOFF_SECONDS * float(2**attempt))
        # "Equal jitter": at least half the step, so retries still back off, spread over
        # the other half, so clients that failed together do not retry together.
        return ceiling / 2 + ceiling / 2 * self._jitter()

    def _give_up(self, failed: _Failed, attempt: int) -> Exception:
        error = failed.error
        if isinstance(error, EmbedderUnavailable | EmbedderRejected):
            return error
        tries = f"after {attempt + 1} attempt{'s' if attempt else ''}"
        if failed.retryable:
            return EmbedderUnavailable(
                f"the embeddings API failed {tries}: {error}",
                retry_after=max(1.0, failed.retry_after or 0.0, self.breaker.retry_after()),
            )
        return EmbedderRejected(f"the embeddings API refused the request: {error}")

    def _client_here(self) -> openai.AsyncOpenAI:
        """The client of the running loop: its connections belong to one loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            self._client = (
                loop,
                openai.AsyncOpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    timeout=self._timeout,
                    # Retries are ours (see `_embed`): explicit, bounded and tested.
                    max_retries=0,
                ),
            )
        return self._client[1]


def _classify(exc: openai.APIStatusError) -> _Failed:
    status = exc.status_code
    retry_after = _retry_after(exc)
    if status == 429 and exc.code == "insufficient_quota":
        # Retrying cannot help until someone pays; not the texts' fault either.
        return _Failed(
            EmbedderUnavailable(
                f"embeddings API: insufficient quota: {exc.message}", retry_after=60.0
            ),
            retryable=False,
            retry_after=None,
        )
    if status in (401, 403, 404):
        # Credentials or model name: a misconfiguration every request hits alike.
        return _Failed(
            EmbedderUnavailable(
                f"embeddings API refused ({status}): {exc.message}", retry_after=60.0
            ),
            retryable=False,
            retry_after=None,
        )
    if status in (408, 409, 429) or status >= 500:
        return _Failed(exc, retryable=True, retry_after=retry_after)
    return _Failed(exc, retryable=False, retry_after=None)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """The server's Retry-After (seconds or an HTTP date), or OpenAI's retry-after-ms."""
    headers = exc.response.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
