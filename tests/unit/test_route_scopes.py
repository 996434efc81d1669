"""Every API endpoint declares the scope it needs, and the OpenAPI document says so."""

from __future__ import annotations

from app.api.keys import SCOPES
from app.api.openapi import openapi_spec
from app.api.routes import ENDPOINTS, worker_routes

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


# Operations on the whole deployment, every tenant's data at once: `operator`, never a
# tenant's `admin`. (Every other `admin` endpoint acts on the caller's tenant only.)
DEPLOYMENT_WIDE = {
    ("POST", "/api/v1/reindex"),
    ("GET", "/api/v1/reindex/{job_id}"),
    ("POST", "/api/v1/compact"),
    ("GET", "/api/v1/compact/{job_id}"),
}


def test_deployment_wide_endpoints_need_the_operator_scope() -> None:
    for endpoint in ENDPOINTS:
        if (endpoint.method, endpoint.path) in DEPLOYMENT_WIDE:
            assert endpoint.scope == "operator", endpoint.path
    declared = {(e.method, e.path) for e in ENDPOINTS if e.scope == "operator"}
    assert declared >= DEPLOYMENT_WIDE


def test_the_worker_serves_replay_behind_the_declared_scope() -> None:
    """The worker's routes are ENDPOINTS' own (the same guard), not a second declaration."""
    served = {(method, route.path) for route in worker_routes() for method in route.methods or ()}
    assert served >= DEPLOYMENT_WIDE
    spec = openapi_spec(ENDPOINTS)
    assert "`operator`" in spec["paths"]["/api/v1/reindex"]["post"]["description"]
