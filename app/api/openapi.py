"""The OpenAPI 3.1 document, built from the route table and the wire structs' schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from app import __version__
from app.api.schemas import REF_TEMPLATE, Condition, ErrorBody

if TYPE_CHECKING:
    from app.api.routes import Endpoint


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


_REF = REF_TEMPLATE.removesuffix("{name}")
_PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def _ref(t: type) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(name=t.__name__)}


def openapi_spec(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    types = sorted(
        {t for e in endpoints for t in [e.request, *e.responses.values()] if t is not None}
        # Referenced only from a hand-written schema (SearchRequest's filter values).
        | {Condition},
        key=lambda t: t.__name__,
    )
    _, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    for t in types:
        # Rules across fields (`schema_rules`), beside those msgspec derives from each field.
        components[t.__name__].update(getattr(t, "schema_rules", {}))
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
                    "content": {"application/json": {"schema": _ref(t)}},
                }
                for status, t in e.responses.items()
            },
        }
        if e.scope is not None:
            _secure(op, e.scope)
        for status, answer in op["responses"].items():
            if status.startswith("2") and e.links:
                answer["links"] = e.links
        parameters: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
            for name in _PATH_PARAMETER.findall(path)
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
                "content": {"application/json": {"schema": _ref(e.request)}},
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
                    "not needed when the server runs without one. Its scopes: `search`, "
                    "`ingest`, `admin` (its tenant's operations) and `operator` (the "
                    "deployment's: replay)",
                }
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


# What a scope means beyond its name, where the name alone could mislead.
_SCOPE_NOTES = {
    "operator": " Deployment-wide: it acts on every tenant, so a tenant's `admin` key cannot.",
}


def _secure(op: dict[str, Any], scope: str) -> None:
    """An endpoint behind an API key: what it needs, and the 401/403/429 it may answer."""
    op["security"] = [{"bearer": []}]
    op["description"] = f"Needs an API key with the `{scope}` scope." + _SCOPE_NOTES.get(scope, "")
    error = {"application/json": {"schema": _ref(ErrorBody)}}
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
