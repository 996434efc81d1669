"""The projector's consumer group, its configuration and the counts it keeps."""

from __future__ import annotations

import msgspec

GROUP = "indexer"


class ProjectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    batch: int = 64  # entries read and applied at a time (RAG_PROJECTOR_BATCH)
    max_deliveries: int = 5  # RAG_PROJECTOR_MAX_DELIVERIES
    claim_idle_ms: int = 60_000  # RAG_PROJECTOR_CLAIM_IDLE_MS
    block_ms: int = 500  # longest blocking read, hence the longest wait for `stop`
    write_chunks: int = 256  # chunks embedded and written per step, bounding memory
    # No other process writes this index (the embedded Edge shard is held by this process
    # alone), so every entry pending on another consumer belongs to a dead process: take
    # them over at start instead of waiting claim_idle_ms for them.
    exclusive: bool = False
    # A consumer with nothing pending and idle this long belongs to a process that is gone
    # (a live one reads every block_ms); its name is removed from the group. None: ten
    # times claim_idle_ms, far past anything a live projector's pause could explain.
    forget_idle_ms: int | None = None
    # The index is a generation this projector alone has written since it was created (a
    # replay's): a document with no applied record has nothing in it to sweep, so the
    # per-document delete of other versions or of a deleted document (a filtered count
    # and delete each) is skipped.
    fresh_index: bool = False
    # Fault injection for tests (RAG_FAULT_KILL_DOC_ID): SIGKILL this process whenever this
    # document is about to be applied, as a poison event that crashes the process would.
    kill_on_doc: str | None = None

    @property
    def forget_after_ms(self) -> int:
        return 10 * self.claim_idle_ms if self.forget_idle_ms is None else self.forget_idle_ms


class ProjectorCounts(msgspec.Struct, kw_only=True):
    """What this projector did since it started."""

    applied: int = 0  # events applied to the index
    skipped: int = 0  # events already reflected by an equal or newer one
    failures: int = 0  # failed attempts (each retried or dead-lettered)
    dead_lettered: int = 0
    paused_waits: int = 0  # waits while the embedder's breaker was open
    chunks: int = 0  # chunks written (embedded or taken from the cache)
