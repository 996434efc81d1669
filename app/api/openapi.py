"""The OpenAPI 3.1 document, built from the route table and the wire structs' schemas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from app import __version__
from app.api.schemas import Condition, DocumentInput, ErrorBody

if TYPE_CHECKING:
    from app.api.routes import Endpoint


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge a struct's `openapi_schema` (rules beyond its field types) into its schema."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _inlined(schema: Any, components: dict[str, Any]) -> Any:
    """`schema` with every $ref to a component replaced by that component (no cycles here)."""
    if isinstance(schema, list):
        return [_inlined(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        return _inlined(components[ref.removeprefix(_REF)], components)
    return {key: _inlined(value, components) for key, value in schema.items()}


_REF = "#/components/schemas/"


def openapi_spec(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    types = sorted(
        {t for e in endpoints for t in [e.request, *e.responses.values()] if t is not None}
        # Condition: referenced from SearchRequest.filters' hand-written schema; both: they
        # carry an `openapi_schema` to merge.
        | {Condition, DocumentInput},
        key=lambda t: t.__name__,
    )
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    for t in types:
        _merge(components[t.__name__], getattr(t, "openapi_schema", {}))
    # Request bodies spelled out whole: schemathesis' coverage phase cannot draw a valid
    # body through a $ref inside an array or map (it then sends invalid ones as valid).
    for t in {e.request for e in endpoints if e.request is not None}:
        components[t.__name__] = _inlined(components[t.__name__], components)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        path = e.path.replace(":path}", "}")
        op: dict[str, Any] = {
            "summary": e.summary,
            "operationId": f"{e.method.lower()}_{e.handler.__name__}",
            "responses": {
                str(status): {
                    "description": "error"
                    if status >= 400 and t is ErrorBody
                    else "accepted"
                    if status == 202
                    else "ok",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{t.__name__}"}
                        }
                    },
                }
                for status, t in e.responses.items()
            },
        }
        if e.scope is not None:
            _secure(op, e.scope)
        for status, answer in op["responses"].items():
            if status.startswith("2") and (e.method, e.path) in _LINKS:
                answer["links"] = _LINKS[e.method, e.path]
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
            for name in ("doc_id", "retrieval_id", "job_id", "letter_id")
            if f"{{{name}}}" in path
        ]
        if 202 in e.responses and 200 in e.responses:  # accepted now, or applied with ?wait
            parameters.append(
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "wait (up to RAG_INGEST_WAIT_SECONDS) until applied",
                    "schema": {"type": "boolean", "default": False},
                }
            )
        if e.query is not None:
            schema = msgspec.json.schema(e.query)
            props = schema["$defs"][e.query.__name__]["properties"]
            parameters += [
                {"name": name, "in": "query", "required": False, "schema": prop}
                for name, prop in props.items()
            ]
        if parameters:
            op["parameters"] = parameters
        if e.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{e.request.__name__}"}
                    }
                },
            }
        paths.setdefault(path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "rag-pipeline", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from RAG_API_KEYS_FILE (docs/security.md); "
                    "not needed when the server runs without one",
                }
            },
        },
    }


# OpenAPI links: what a response's ids can be used for next (clients, and fuzzers' stateful
# phase, which otherwise only ever asks for retrieval ids that do not exist). None from ingest
# to the document: a deleted document's GET answers 200 `deleted` by design (a client polling
# its delete sees it applied), which a fuzzer's use-after-free check reads as a survivor.
_LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/search"): {
        "GetRetrieval": {
            "operationId": "get_get_retrieval",
            "parameters": {"retrieval_id": "$response.body#/retrieval_id"},
        },
        "JudgeRetrieval": {
            "operationId": "post_feedback",
            "requestBody": {
                "retrieval_id": "$response.body#/retrieval_id",
                "doc_id": "$response.body#/results/0/doc_id",
                "relevance": 1,
            },
        },
    },
}

_RATE_HEADERS = {
    name: {"description": description, "schema": {"type": "integer", "minimum": 0}}
    for name, description in (
        ("RateLimit-Limit", "requests the key may make at once (its bucket's size)"),
        ("RateLimit-Remaining", "requests left in the bucket"),
        ("RateLimit-Reset", "seconds until the bucket is full again"),
    )
}


def _secure(op: dict[str, Any], scope: str) -> None:
    """An endpoint behind an API key: what it needs, and the 401/403/429 it may answer."""
    op["security"] = [{"bearer": []}]
    op["description"] = f"Needs an API key with the `{scope}` scope."
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for answer in op["responses"].values():
        answer["headers"] = dict(_RATE_HEADERS)
    op["responses"]["401"] = {
        "description": "no API key, or not a valid one",
        "headers": {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string"}},
        },
        "content": error,
    }
    op["responses"]["403"] = {
        "description": f"the API key lacks the `{scope}` scope",
        "content": error,
    }
    op["responses"]["429"] = {
        "description": "the API key's rate limit is exhausted",
        "headers": {
            "Retry-After": {
                "required": True,
                "description": "seconds to wait",
                "schema": {"type": "integer", "minimum": 1},
            },
            **_RATE_HEADERS,
        },
        "content": error,
    }
