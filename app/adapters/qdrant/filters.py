"""The domain's filters read once into Qdrant conditions; each adapter builds its client's models.

Both adapters search with the same conditions: every rule on how a FieldFilter becomes a
match or a range lives here, so the Edge and the cluster adapter cannot drift apart again
(the int64 guard once existed in one only). The builders, `edge_filter` in edge_index.py
and `client_filter` in remote_index.py, only map the three kinds below onto their client's
models: qdrant-client takes most of a second to import, which the Edge path (and the Edge
builder's child process) need not pay.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from app.domain.records import FieldFilter


class Match(msgspec.Struct, frozen=True):
    """The field holds this value (or a list holding it)."""

    key: str
    value: str | int | bool


class MatchAny(msgspec.Struct, frozen=True):
    """The field holds one of these values."""

    key: str
    values: list[str] | list[int]


class Range(msgspec.Struct, frozen=True):
    """The field's number lies within these bounds (None: unbounded)."""

    key: str
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


Condition = Match | MatchAny | Range

# Qdrant matches integers as int64; a larger one is compared as the float it is stored as.
_INT64 = range(-(2**63), 2**63)


def tenant_scope(tenant: str | None) -> list[Condition]:
    """The points of one tenant (every point for None)."""
    return [] if tenant is None else [Match("tenant", tenant)]


def document_conditions(tenant: str, doc_id: str) -> list[Condition]:
    """The points of one document."""
    return [Match("tenant", tenant), Match("doc_id", doc_id)]


def search_conditions(tenant: str, filters: Sequence[FieldFilter]) -> list[Condition]:
    """The tenant condition always, then each metadata condition (all must hold)."""
    must = tenant_scope(tenant)
    for flt in filters:
        condition = _metadata_condition(flt)
        if condition is not None:
            must.append(condition)
    return must


def _metadata_condition(flt: FieldFilter) -> Condition | None:
    key = f"metadata.{flt.key}"
    if flt.any_of is not None:
        return MatchAny(key, flt.any_of)
    if flt.gte is not None or flt.gt is not None or flt.lte is not None or flt.lt is not None:
        return Range(key, gte=flt.gte, gt=flt.gt, lte=flt.lte, lt=flt.lt)
    value = flt.equals
    if value is None:
        return None
    if isinstance(value, bool | str):
        return Match(key, value)
    if isinstance(value, float) and value.is_integer() and int(value) in _INT64:
        # JSON does not tell 2020.0 from 2020: a whole float matches the integer.
        return Match(key, int(value))
    if isinstance(value, int) and value in _INT64:
        return Match(key, value)
    # A fraction, or a number too large for the engine's integer match.
    return Range(key, gte=float(value), lte=float(value))
