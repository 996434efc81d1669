"""Every API endpoint declares the scope it needs, and the OpenAPI document says so."""

from __future__ import annotations

from app.api.keys import SCOPES
from app.api.openapi import openapi_spec
from app.api.routes import ENDPOINTS

OPEN = {"/health", "/ready", "/metrics", "/openapi.json"}


def test_every_api_endpoint_names_a_scope() -> None:
    """A new /api/ endpoint without a scope would be open to anyone and have no tenant."""
    for endpoint in ENDPOINTS:
        if endpoint.path in OPEN:
            assert endpoint.scope is None, endpoint.path
        else:
            assert endpoint.scope in SCOPES, f"{endpoint.method} {endpoint.path} has no scope"


def test_the_schema_publishes_the_auth_of_every_operation() -> None:
    spec = openapi_spec(ENDPOINTS)
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for endpoint in ENDPOINTS:
        path = endpoint.path.replace(":path}", "}")
        op = spec["paths"][path][endpoint.method.lower()]
        if endpoint.scope is None:
            assert "security" not in op and "401" not in op["responses"]
            continue
        assert op["security"] == [{"bearer": []}]
        assert endpoint.scope in op["description"]
        assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
        assert op["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        assert "403" in op["responses"]
        for status, answer in op["responses"].items():
            if status.startswith("2"):
                assert set(answer["headers"]) == {
                    "RateLimit-Limit",
                    "RateLimit-Remaining",
                    "RateLimit-Reset",
                }
