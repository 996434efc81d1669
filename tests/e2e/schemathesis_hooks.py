"""Schemathesis hooks (SCHEMATHESIS_HOOKS): make generated ingest bodies meet the rule that spans
fields, which JSON Schema cannot state. Everything else a fuzzer draws is sent as drawn (an id
twice in one request included: the last one wins)."""

from __future__ import annotations

from typing import Any

import schemathesis


# map_case, not map_body: only case hooks also run in the coverage phase.
@schemathesis.hook("map_case").apply_to(path="/api/v1/ingest")
def ingest_rules(context: Any, case: Any) -> Any:
    _ingest_rules(case.body)
    return case


def _ingest_rules(body: Any) -> None:
    if not isinstance(body, dict):
        return
    size, overlap = body.get("chunk_size"), body.get("chunk_overlap")
    # chunk_overlap < chunk_size (the default size is 256, the overlap's maximum is 128).
    in_range = _whole(size) and _whole(overlap) and 16 <= size <= 256 and 0 <= overlap <= 128
    if in_range and overlap >= size:
        body["chunk_overlap"] = int(size) // 2


def _whole(value: Any) -> bool:
    """An integer as JSON Schema sees one: 98 or 98.0, not True."""
    return type(value) in (int, float) and float(value).is_integer()
