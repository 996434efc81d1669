"""Request bodies and query strings into wire structs, responses and errors into JSON."""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from app.api.schemas import ErrorBody, ErrorDetail
from app.errors import (
    DependencyUnavailable,
    Forbidden,
    InvalidRequest,
    NotFound,
    NotReplicated,
    RagError,
    RateLimited,
    Unauthenticated,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_FIELD = re.compile(r"field `([^`]+)`")
# msgspec ends messages with " - at `$.a.b[0]`", or " - at `key` in `$.a`" for a bad dict key.
_PATH = re.compile(r" - at (?:`key` in )?`\$\.?([^`]*)`$")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"request body exceeds {limit} bytes", field="body", status=413, code="body_too_large"
    )


def decode(body: bytes, type_: type[T]) -> T:
    """Decode JSON into `type_`; a bad body becomes a 400/422 naming the field at fault."""
    if not body.strip():
        raise InvalidRequest(
            "request body is empty; send a JSON object",
            field="body",
            status=400,
            code="malformed_json",
        )
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        whole: T | None = (
            with_whole_numbers_as_int(body, type_) if "got `float`" in str(exc) else None
        )
        if whole is not None:
            return whole
        raise InvalidRequest(str(exc), field=field_of(str(exc)), code="validation_error") from exc
    except RecursionError as exc:
        raise InvalidRequest(
            "request body is nested too deeply", field="body", code="validation_error"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"request body is not valid UTF-8 JSON: {exc}",
            field="body",
            status=400,
            code="malformed_json",
        ) from exc


def parse_query(params: dict[str, str], type_: type[T]) -> T:
    """Query parameters into `type_` (strings converted), or a 422 naming the parameter."""
    try:
        return msgspec.convert(params, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), field=field_of(str(exc)), code="validation_error") from exc


def with_whole_numbers_as_int(body: bytes, type_: Any) -> Any:
    """`type_` from JSON whose integers were written as whole floats (`"top_k": 5.0`):
    JSON Schema's `integer` admits them, msgspec does not. None if that is not the problem.
    (Re-encoded rather than converted, so msgspec.Raw fields still get their raw JSON.)"""
    try:
        fixed = msgspec.json.encode(_ints(msgspec.json.decode(body)))
        return msgspec.json.decode(fixed, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def field_of(message: str) -> str:
    """The dotted path of the field a msgspec validation message is about."""
    path_match = _PATH.search(message)
    path = path_match.group(1) if path_match else ""
    field_match = _FIELD.search(message)
    if field_match:
        path = f"{path}.{field_match.group(1)}" if path else field_match.group(1)
    return path or "body"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(body), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return json_response(body, status, headers)


def response_for(exc: Exception) -> Response:
    """Translate an exception at the HTTP edge; anything unexpected is a logged 500."""
    if isinstance(exc, InvalidRequest):
        return error_response(exc.status, exc.code, exc.message, field=exc.field)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, Unauthenticated):
        challenge = 'Bearer realm="rag-pipeline"'
        if exc.token_given:
            challenge += ', error="invalid_token"'
        return error_response(
            401,
            "unauthenticated",
            str(exc),
            field="Authorization",
            headers={"WWW-Authenticate": challenge},
        )
    if isinstance(exc, Forbidden):
        return error_response(403, "forbidden", str(exc), field="Authorization")
    if isinstance(exc, RateLimited):
        return error_response(429, "rate_limited", str(exc), headers=exc.headers)
    if isinstance(exc, DependencyUnavailable):
        retry = max(1, round(exc.retry_after))
        code = "not_replicated" if isinstance(exc, NotReplicated) else "unavailable"
        return error_response(503, code, str(exc), headers={"Retry-After": str(retry)})
    if isinstance(exc, RagError):
        log.error("unhandled service error: %s", exc)
    else:
        log.exception("unexpected error")
    return error_response(500, "internal", "internal error; see the server log")
