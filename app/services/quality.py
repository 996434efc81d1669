"""Search quality from recorded events: volume, zero results, latency, precision@k, MRR (pure)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

import msgspec

from app.domain.events import FeedbackGiven, RetrievalRecorded

_HOUR = 3600


class HourCount(msgspec.Struct, kw_only=True):
    """Retrievals answered in one UTC hour of the window (by the event's `at`), with that
    hour's total latency and feedback quality (the figures over time the console plots)."""

    hour: str  # the hour's start, ISO 8601 UTC: "2026-11-26T11:00:00Z"
    retrievals: int
    zero_results: int
    # The "total" stage's percentiles over the hour's retrievals; null when it had none.
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    # As FeedbackQuality, over the hour's judged retrievals; null when none was judged.
    judged_retrievals: int = 0
    precision_at_k: float | None = None
    mrr: float | None = None


class Percentiles(msgspec.Struct, kw_only=True):
    """Nearest-rank percentiles (the smallest value with at least p% of values at or
    below it) of one stage's milliseconds, over the `count` retrievals that timed it."""

    count: int
    p50: float
    p95: float
    p99: float


class FeedbackQuality(msgspec.Struct, kw_only=True):
    """Quality from feedback, over the retrievals of the window with at least one judgement.

    A result is relevant when its judgement has relevance > 0: its chunk's newest judgement
    if its chunk was judged, else its document's newest judgement; unjudged results count as
    not relevant. precision_at_k: relevant results among the first k, divided by k, averaged.
    mrr: 1 / rank of the first relevant result among all returned (0 if none), averaged.
    Both are null when no retrieval of the window was judged.
    """

    k: int
    judged_retrievals: int
    judgements: int  # feedback events joined to a retrieval of the window
    unmatched_feedback: int  # feedback read whose retrieval is not in the window
    precision_at_k: float | None
    mrr: float | None


class QualityReport(msgspec.Struct, kw_only=True):
    """Search quality over a window, computed from the retrieval and feedback streams."""

    since: float  # window start, epoch seconds
    until: float  # window end, epoch seconds
    retrievals: int
    zero_results: int
    zero_result_rate: float | None  # null when there was no retrieval
    per_hour: list[HourCount]  # every hour the window touches, oldest first, empty ones too
    latency_ms: dict[str, Percentiles]  # by stage ("total", "embed", "search", ...)
    feedback: FeedbackQuality
    # The read stops at a bound of events per stream; when it did, the figures cover the
    # window only up to `read_until` (epoch seconds) and `truncated` is true.
    truncated: bool
    read_until: float
    # What retention left (epoch seconds, null when the stream holds none): the oldest
    # retrieval and the oldest feedback still in their streams. Nothing older is there to
    # count, trimmed (RAG_RETRIEVAL_RETENTION, RAG_FEEDBACK_RETENTION and _MAX_ENTRIES) or
    # never recorded. `hours_exceed_window`: the requested window starts before
    # `window_start`, so the figures cover less than the hours asked for.
    window_start: float | None = None
    feedback_start: float | None = None
    hours_exceed_window: bool = False


def quality_report(
    retrievals: Iterable[RetrievalRecorded],
    feedback: Iterable[FeedbackGiven],
    *,
    tenant: str,
    since: float,
    until: float,
    k: int,
    truncated: bool = False,
    read_until: float | None = None,
    window_start: float | None = None,
    feedback_start: float | None = None,
) -> QualityReport:
    """The report over `tenant`'s retrievals with since <= at <= until.

    `feedback` is in stream order (the newest judgement of a chunk or document wins); only
    feedback on the window's retrievals counts. Definitions: see FeedbackQuality and
    Percentiles.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    window = [r for r in retrievals if r.tenant == tenant and since <= r.at <= until]
    by_id = {r.retrieval_id: r for r in window}
    feedback = [f for f in feedback if f.tenant == tenant]

    first_hour = int(since // _HOUR) * _HOUR
    hours: dict[int, list[int]] = {
        start: [0, 0] for start in range(first_hour, int(until) + 1, _HOUR)
    }
    timings: dict[str, list[float]] = defaultdict(list)
    in_hour: dict[int, list[RetrievalRecorded]] = defaultdict(list)
    zero = 0
    for r in window:
        in_hour[int(r.at // _HOUR) * _HOUR].append(r)
        bucket = hours[int(r.at // _HOUR) * _HOUR]
        bucket[0] += 1
        if not r.results:
            zero += 1
            bucket[1] += 1
        for stage, ms in r.timings_ms.items():
            timings[stage].append(ms)

    return QualityReport(
        since=since,
        until=until,
        retrievals=len(window),
        zero_results=zero,
        zero_result_rate=zero / len(window) if window else None,
        per_hour=[
            _hour(start, n, z, in_hour.get(start, []), feedback, tenant=tenant, k=k)
            for start, (n, z) in hours.items()
        ],
        latency_ms={stage: percentiles(values) for stage, values in sorted(timings.items())},
        feedback=_feedback_quality(by_id, feedback, tenant=tenant, k=k),
        truncated=truncated,
        read_until=until if read_until is None else read_until,
        window_start=window_start,
        feedback_start=feedback_start,
        hours_exceed_window=window_start is None or since < window_start,
    )


def _hour(
    start: int,
    retrievals: int,
    zero: int,
    window: list[RetrievalRecorded],
    feedback: list[FeedbackGiven],
    *,
    tenant: str,
    k: int,
) -> HourCount:
    totals = sorted(r.timings_ms["total"] for r in window if "total" in r.timings_ms)
    judged = _feedback_quality({r.retrieval_id: r for r in window}, feedback, tenant=tenant, k=k)
    return HourCount(
        hour=_iso_hour(start),
        retrievals=retrievals,
        zero_results=zero,
        latency_p50_ms=nearest_rank(totals, 50) if totals else None,
        latency_p95_ms=nearest_rank(totals, 95) if totals else None,
        judged_retrievals=judged.judged_retrievals,
        precision_at_k=judged.precision_at_k,
        mrr=judged.mrr,
    )


def percentiles(values: Sequence[float]) -> Percentiles:
    ordered = sorted(values)
    return Percentiles(
        count=len(ordered),
        p50=nearest_rank(ordered, 50),
        p95=nearest_rank(ordered, 95),
        p99=nearest_rank(ordered, 99),
    )


def nearest_rank(ordered: Sequence[float], p: int) -> float:
    """The smallest value with at least p% of `ordered` (ascending, non-empty) at or below
    it: exact, with no interpolation, so every figure is a latency that was measured."""
    rank = -(-p * len(ordered) // 100)  # ceil(p/100 * n) in integers
    return ordered[max(rank, 1) - 1]


def _feedback_quality(
    by_id: dict[str, RetrievalRecorded],
    feedback: Iterable[FeedbackGiven],
    *,
    tenant: str,
    k: int,
) -> FeedbackQuality:
    chunk_judged: dict[str, dict[str, int]] = defaultdict(dict)
    doc_judged: dict[str, dict[str, int]] = defaultdict(dict)
    joined = unmatched = 0
    for f in feedback:
        if f.tenant != tenant:
            continue
        if f.retrieval_id not in by_id:
            unmatched += 1
            continue
        joined += 1
        if f.chunk_id is not None:
            chunk_judged[f.retrieval_id][f.chunk_id] = f.relevance
        elif f.doc_id is not None:
            doc_judged[f.retrieval_id][f.doc_id] = f.relevance

    judged = sorted(set(chunk_judged) | set(doc_judged))
    precision_sum = rr_sum = 0.0
    for retrieval_id in judged:
        chunks, docs = chunk_judged.get(retrieval_id, {}), doc_judged.get(retrieval_id, {})
        relevant = [
            (chunks[r.chunk_id] if r.chunk_id in chunks else docs.get(r.doc_id, 0)) > 0
            for r in by_id[retrieval_id].results
        ]
        precision_sum += sum(relevant[:k]) / k
        first = next((rank for rank, hit in enumerate(relevant, start=1) if hit), None)
        rr_sum += 0.0 if first is None else 1.0 / first
    return FeedbackQuality(
        k=k,
        judged_retrievals=len(judged),
        judgements=joined,
        unmatched_feedback=unmatched,
        precision_at_k=precision_sum / len(judged) if judged else None,
        mrr=rr_sum / len(judged) if judged else None,
    )


def _iso_hour(start: int) -> str:
    return time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(start))
