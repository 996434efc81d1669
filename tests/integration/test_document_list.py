"""Listing a tenant's documents by HSCAN over the real Redis (and Valkey): every document
comes, by pages of exactly `limit`, applied-only ones too, filtered by status; and no
document present for the whole scan is skipped while others come and go, the hash shrinking
under the cursor included."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.adapters.qdrant.edge_index import EdgeIndex
from app.adapters.redis.client import RedisTarget
from app.adapters.redis.doc_status import RedisDocStatus
from app.adapters.redis.streams import RedisEventLog
from app.domain.doc_status import Applied, Status, Written
from app.domain.events import Streams
from app.errors import InvalidRequest
from app.services.documents import Documents, ListCursor
from app.services.ingest import LoggedIngest

pytest_plugins = ("tests.integration.redis_fixtures",)
pytestmark = pytest.mark.anyio

INDEX_ID = "test-model"
TENANT = "acme"


@pytest.fixture()
async def status(redis_target: RedisTarget, prefix: str) -> AsyncIterator[RedisDocStatus]:
    made = RedisDocStatus(redis_target, prefix=prefix, pool_size=2)
    yield made
    await made.close()


@pytest.fixture()
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    made = EdgeIndex(tmp_path, model_id=INDEX_ID, dim=8)
    yield made
    made.close()


@pytest.fixture()
def documents(
    event_log: RedisEventLog, status: RedisDocStatus, index: EdgeIndex, prefix: str
) -> Documents:
    streams = Streams(prefix)
    ingest = LoggedIngest(
        event_log,
        status,
        streams=streams,
        index_id=INDEX_ID,
        max_documents=10,
        wait_seconds=1,
    )
    return Documents(ingest, event_log, status, index, streams=streams, index_id=INDEX_ID)


def entry(n: int) -> str:
    return f"{1_700_000_000_000 + n}-0"


async def write(status: RedisDocStatus, ids: list[str], start: int = 0) -> None:
    await status.record_written(
        TENANT,
        {
            d: Written(event_id=entry(start + i), op="upsert", version=f"v{i}", at=time.time())
            for i, d in enumerate(ids)
        },
    )


async def apply(
    status: RedisDocStatus, ids: list[str], state: Status = "indexed", start: int = 0
) -> None:
    assert state != "pending"
    await status.record_applied(
        INDEX_ID,
        TENANT,
        {
            d: Applied(event_id=entry(start + i), status=state, version=f"v{i}", at=time.time())
            for i, d in enumerate(ids)
        },
    )


async def listed(
    documents: Documents, limit: int, status: Status | None = None, between: object = None
) -> list[str]:
    """Every doc id the pages give, in order, checking each page's size; `between` (an async
    callable) runs between pages."""
    out: list[str] = []
    cursor = None
    while True:
        page = await documents.page(TENANT, status=status, limit=limit, cursor=cursor)
        assert len(page.documents) <= limit
        if page.next is not None and status is None:
            assert len(page.documents) == limit  # short only at the end, when unfiltered
        out += [view.doc_id for view in page.documents]
        if page.next is None:
            return out
        cursor = page.next
        if between is not None:
            await between()  # type: ignore[operator]


async def test_every_document_comes_once_by_pages_of_exactly_limit(
    documents: Documents, status: RedisDocStatus
) -> None:
    ids = [f"doc/{i} é?#" for i in range(300)]
    await write(status, ids)
    await apply(status, ids[:200])  # the rest pending
    strays = [f"stray-{i}" for i in range(13)]  # applied, their written record missed
    await apply(status, strays, start=1000)

    for limit in (1, 7, 100):
        got = await listed(documents, limit)
        assert sorted(got) == sorted(ids + strays), limit  # nothing changed: no repeats

    page = await documents.page(TENANT, status=None, limit=100, cursor=None)
    views = {v.doc_id: v for v in page.documents}
    first = await documents.page(TENANT, status=None, limit=100, cursor=page.next)
    views |= {v.doc_id: v for v in first.documents}
    for doc_id, view in views.items():
        expected = "pending" if doc_id in ids[200:] else "indexed"
        assert view.status == expected, doc_id


async def test_a_status_filter_lists_only_that_status(
    documents: Documents, status: RedisDocStatus
) -> None:
    ids = [f"d{i}" for i in range(600)]
    await write(status, ids)
    await apply(status, ids)
    failed = ids[5::97]
    await apply(status, failed, state="failed", start=10_000)  # a later change failed
    assert sorted(await listed(documents, 4, status="failed")) == sorted(failed)
    assert await listed(documents, 10, status="deleted") == []
    assert len(set(await listed(documents, 50, status="indexed"))) == 600 - len(failed)


async def test_nothing_present_throughout_is_skipped_while_the_hash_changes(
    documents: Documents, status: RedisDocStatus
) -> None:
    """Documents are added and most are forgotten between pages, so the hash grows and then
    shrinks under the cursor: those there the whole time must all be listed."""
    stay = [f"stay-{i}" for i in range(60)]
    go = [f"go-{i}" for i in range(1200)]
    await write(status, stay + go)
    rounds = 0

    async def churn() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            await write(status, [f"new-{i}" for i in range(2000)], start=5000)
        if rounds == 4:  # forget nearly everything: the table shrinks
            doomed = go + [f"new-{i}" for i in range(2000)]
            records = {d: entry(len(stay) + i) for i, d in enumerate(go)}
            records |= {f"new-{i}": entry(5000 + i) for i in range(2000)}
            assert await status.forget([INDEX_ID], TENANT, records) == len(doomed)

    got = await listed(documents, 9, between=churn)
    assert rounds > 4
    assert set(stay) <= set(got)


@pytest.mark.parametrize("limit", range(2, 14))
async def test_a_step_resumed_after_the_hash_shrank_skips_nothing(
    documents: Documents, status: RedisDocStatus, limit: int
) -> None:
    """The case the digest is for: a page ends inside an HSCAN step, then the hash shrinks,
    so the same cursor's step now holds documents the scan never met, some of them sorting
    before where the page ended. Skipping by id alone would lose those."""
    stay = [f"stay-{i:03d}" for i in range(200)]
    go = [f"go-{i:04d}" for i in range(4000)]
    await write(status, stay + go)
    got: list[str] = []
    cursor = None
    while cursor is None or "." not in cursor:  # until a page ends inside a step
        page = await documents.page(TENANT, status=None, limit=limit, cursor=cursor)
        got += [v.doc_id for v in page.documents]
        assert page.next is not None
        cursor = page.next
    records = {d: entry(len(stay) + i) for i, d in enumerate(go)}
    assert await status.forget([INDEX_ID], TENANT, records) == len(go)
    while cursor is not None:
        page = await documents.page(TENANT, status=None, limit=limit, cursor=cursor)
        got += [v.doc_id for v in page.documents]
        cursor = page.next
    assert set(stay) <= set(got)


async def test_cursors(documents: Documents, status: RedisDocStatus) -> None:
    await write(status, ["a", "b", "c"])
    with pytest.raises(InvalidRequest) as bad:
        await documents.page(TENANT, status=None, limit=5, cursor="nonsense")
    assert bad.value.field == "cursor"
    # Any string of the published form is a cursor: one made up starts a step over.
    made_up = ListCursor(phase="w", scan=0, digest="0" * 16, after=b"b").text()
    assert ListCursor.parse(made_up) == ListCursor(phase="w", scan=0, digest="0" * 16, after=b"b")
    page = await documents.page(TENANT, status=None, limit=5, cursor=made_up)
    assert sorted(v.doc_id for v in page.documents) == ["a", "b", "c"]
    assert page.next is None
    # The applied phase of an empty hash ends the scan.
    empty = await documents.page(TENANT, status=None, limit=5, cursor="a0")
    assert (empty.documents, empty.next) == ([], None)
