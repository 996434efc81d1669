"""Unit tests of the quality projection against figures worked out by hand."""

from __future__ import annotations

import pytest

from app.domain.events import FeedbackGiven, RecordedResult, RetrievalRecorded
from app.services.quality import nearest_rank, percentiles, quality_report

T0 = 1_790_000_000.0 - (1_790_000_000 % 3600)  # the start of a UTC hour: 2026-09-21T...
TENANT = "default"


def retrieval(
    rid: str,
    at: float,
    results: list[tuple[str, str]],
    total: float = 10.0,
    tenant: str = TENANT,
    **stages: float,
) -> RetrievalRecorded:
    return RetrievalRecorded(
        retrieval_id=rid,
        tenant=tenant,
        query="q",
        query_sha256=None,
        params={},
        results=[
            RecordedResult(chunk_id=chunk, doc_id=doc, score=1.0, scores={})
            for chunk, doc in results
        ],
        timings_ms={"total": total, **stages},
        trace_id=None,
        at=at,
    )


def judge(
    rid: str,
    relevance: int,
    *,
    doc: str | None = None,
    chunk: str | None = None,
    tenant: str = TENANT,
) -> FeedbackGiven:
    return FeedbackGiven(
        retrieval_id=rid, tenant=tenant, doc_id=doc, chunk_id=chunk, relevance=relevance, at=T0
    )


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert nearest_rank(values, 50) == 50.0  # ceil(0.50 * 100) = 50th value
    assert nearest_rank(values, 95) == 95.0
    assert nearest_rank(values, 99) == 99.0
    # n = 7: ranks ceil(3.5) = 4, ceil(6.65) = 7, ceil(6.93) = 7
    seven = percentiles([7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0])
    assert (seven.count, seven.p50, seven.p95, seven.p99) == (7, 4.0, 7.0, 7.0)
    one = percentiles([3.5])
    assert (one.p50, one.p95, one.p99) == (3.5, 3.5, 3.5)


def test_counts_zero_results_and_hours() -> None:
    events = [
        retrieval("a", T0 + 10, [("a1", "A")], total=4.0, embed=1.0),
        retrieval("b", T0 + 20, [], total=2.0, embed=0.5),
        retrieval("c", T0 + 3600 + 5, [("c1", "C")], total=8.0),  # the next hour
        retrieval("d", T0 + 3 * 3600, [], total=6.0),  # after the window
        retrieval("e", T0 - 1, [("e1", "E")]),  # before the window
        retrieval("f", T0 + 30, [], tenant="other"),  # another tenant
    ]
    report = quality_report(events, [], tenant=TENANT, since=T0, until=T0 + 2 * 3600 + 100, k=5)
    assert report.retrievals == 3
    assert report.zero_results == 1
    assert report.zero_result_rate == pytest.approx(1 / 3)
    assert [(h.retrievals, h.zero_results) for h in report.per_hour] == [(2, 1), (1, 0), (0, 0)]
    assert report.per_hour[0].hour.endswith(":00:00Z")
    total = report.latency_ms["total"]
    assert (total.count, total.p50, total.p95, total.p99) == (3, 4.0, 8.0, 8.0)
    embed = report.latency_ms["embed"]  # only the retrievals that timed the stage
    assert (embed.count, embed.p50, embed.p99) == (2, 0.5, 1.0)
    assert report.feedback.judged_retrievals == 0
    assert report.feedback.precision_at_k is None and report.feedback.mrr is None
    assert not report.truncated and report.read_until == T0 + 2 * 3600 + 100


def test_an_empty_window() -> None:
    report = quality_report([], [], tenant=TENANT, since=T0 + 60, until=T0 + 120, k=10)
    assert report.retrievals == 0 and report.zero_result_rate is None
    assert [(h.retrievals, h.zero_results) for h in report.per_hour] == [(0, 0)]
    assert report.latency_ms == {}


def test_precision_at_k_and_mrr_from_feedback() -> None:
    r1 = retrieval("r1", T0 + 1, [("c1", "d1"), ("c2", "d2"), ("c3", "d3"), ("c4", "d1")])
    r2 = retrieval("r2", T0 + 2, [("x1", "e1"), ("x2", "e2"), ("x3", "e3")])
    r3 = retrieval("r3", T0 + 3, [("y1", "f1")])  # never judged: not in the averages
    r4 = retrieval("r4", T0 + 4, [("z1", "g1"), ("z2", "g2")])
    feedback = [
        # r1: d1 relevant by document (ranks 1 and 4); c1 itself judged not relevant, and a
        # chunk's judgement beats its document's; c3 relevant, c3's first judgement replaced.
        judge("r1", 2, doc="d1"),
        judge("r1", 0, chunk="c1"),
        judge("r1", 0, chunk="c3"),
        judge("r1", 1, chunk="c3"),
        # r2: only x3 relevant, at rank 3.
        judge("r2", 1, chunk="x3"),
        judge("r2", 0, doc="e1"),
        # r4: judged, nothing relevant.
        judge("r4", 0, doc="g1"),
        # not joined: an unknown retrieval, and another tenant's feedback
        judge("gone", 2, doc="d1"),
        judge("r1", 2, doc="d2", tenant="other"),
    ]
    report = quality_report([r1, r2, r3, r4], feedback, tenant=TENANT, since=T0, until=T0 + 10, k=3)
    fq = report.feedback
    assert (fq.k, fq.judged_retrievals, fq.judgements, fq.unmatched_feedback) == (3, 3, 7, 1)
    # relevant flags: r1 [F, F, T, T], r2 [F, F, T], r4 [F, F]
    # P@3: r1 1/3, r2 1/3, r4 0  -> mean 2/9
    assert fq.precision_at_k == pytest.approx(2 / 9)
    # RR: r1 1/3 (c3 at rank 3), r2 1/3, r4 0 -> mean 2/9
    assert fq.mrr == pytest.approx(2 / 9)

    at_one = quality_report([r1, r2, r4], feedback, tenant=TENANT, since=T0, until=T0 + 10, k=1)
    assert at_one.feedback.precision_at_k == 0.0
    # k beyond the results: unreturned ranks count as not relevant, divided by k
    at_ten = quality_report([r1, r2, r4], feedback, tenant=TENANT, since=T0, until=T0 + 10, k=10)
    assert at_ten.feedback.precision_at_k == pytest.approx((2 / 10 + 1 / 10 + 0) / 3)
    assert at_ten.feedback.mrr == pytest.approx(2 / 9)  # MRR does not depend on k


def test_relevance_by_document_counts_every_chunk_of_it() -> None:
    r = retrieval("r", T0 + 1, [("a", "D"), ("b", "D"), ("c", "E")])
    report = quality_report(
        [r], [judge("r", 1, doc="D")], tenant=TENANT, since=T0, until=T0 + 5, k=2
    )
    assert report.feedback.precision_at_k == 1.0
    assert report.feedback.mrr == 1.0


def test_truncation_is_reported() -> None:
    report = quality_report(
        [], [], tenant=TENANT, since=T0, until=T0 + 50, k=1, truncated=True, read_until=T0 + 9
    )
    assert report.truncated and report.read_until == T0 + 9


def test_the_window_retention_left_is_reported() -> None:
    """Retrievals before `window_start` are no longer in the stream: asking for more hours
    than that says so; the oldest feedback is reported beside it."""
    within = quality_report(
        [], [], tenant=TENANT, since=T0, until=T0 + 50, k=1, window_start=T0 - 10
    )
    assert within.window_start == T0 - 10 and not within.hours_exceed_window
    beyond = quality_report(
        [],
        [],
        tenant=TENANT,
        since=T0,
        until=T0 + 50,
        k=1,
        window_start=T0 + 20,
        feedback_start=T0 + 30,
    )
    assert beyond.hours_exceed_window and beyond.feedback_start == T0 + 30
    # Nothing held at all: nothing of the window can be seen.
    assert quality_report([], [], tenant=TENANT, since=T0, until=T0 + 1, k=1).hours_exceed_window


def test_each_hour_has_its_latency_and_feedback_quality() -> None:
    first = [
        retrieval(f"a{i}", T0 + i, [("c1", "d1"), ("c2", "d2")], total=float(i))
        for i in (1, 2, 3, 4)
    ]
    second = [retrieval("b1", T0 + 3600 + 1, [("c3", "d3"), ("c1", "d1")], total=50.0)]
    feedback = [judge("a1", 1, doc="d1"), judge("a2", 1, doc="d2"), judge("b1", 1, doc="d1")]
    report = quality_report(
        first + second, feedback, tenant=TENANT, since=T0, until=T0 + 2 * 3600 + 1, k=1
    )
    h0, h1, h2 = report.per_hour
    # Nearest rank over 1, 2, 3, 4 ms: p50 the 2nd value, p95 the 4th.
    assert (h0.latency_p50_ms, h0.latency_p95_ms) == (2.0, 4.0)
    # a1: relevant at rank 1 (P@1 1, RR 1); a2: at rank 2 (P@1 0, RR 1/2).
    assert (h0.judged_retrievals, h0.precision_at_k, h0.mrr) == (2, 0.5, 0.75)
    assert (h1.latency_p50_ms, h1.judged_retrievals, h1.precision_at_k, h1.mrr) == (
        50.0,
        1,
        0.0,
        0.5,
    )
    assert (h2.latency_p50_ms, h2.judged_retrievals, h2.precision_at_k, h2.mrr) == (
        None,
        0,
        None,
        None,
    )
