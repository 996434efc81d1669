"""Schemathesis hooks (SCHEMATHESIS_HOOKS): make generated ingest bodies meet the two rules that
span fields, which JSON Schema cannot state. Everything else a fuzzer draws is sent as drawn."""

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
    documents = body.get("documents")
    if isinstance(documents, list):
        # Document ids are unique within a request (a duplicate is 422, naming it).
        seen: set[str] = set()
        for i, doc in enumerate(documents):
            if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                while doc["id"] in seen:
                    doc["id"] = f"{doc['id']}~{i}"
                seen.add(doc["id"])
    size, overlap = body.get("chunk_size"), body.get("chunk_overlap")
    # chunk_overlap < chunk_size (the default size is 256, the overlap's maximum is 128).
    in_range = _whole(size) and _whole(overlap) and 16 <= size <= 256 and 0 <= overlap <= 128
    if in_range and overlap >= size:
        body["chunk_overlap"] = int(size) // 2


def _whole(value: Any) -> bool:
    """An integer as JSON Schema sees one: 98 or 98.0, not True."""
    return type(value) in (int, float) and float(value).is_integer()
