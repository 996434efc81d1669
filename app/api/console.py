"""The browser console and the API reference: pages and assets from the package, strict CSP."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from app.api.codec import json_response
from app.errors import NotFound

ASSETS = Path(__file__).resolve().parent.parent / "console"
_CONSOLE = {"console.js": "text/javascript", "console.css": "text/css"}
_DOCS = {"docs.js": "text/javascript"}
# From the swagger-ui-py package: Swagger UI 5, which renders OpenAPI 3.1.
_SWAGGER = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}

# Nothing but this origin: no inline script, no third-party request, no framing. Swagger UI
# sets inline style attributes as it renders, so the reference page alone allows those.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = CONSOLE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


class ConsoleConfig(msgspec.Struct, kw_only=True):
    """What the console's script reads at start: where traces open, whether keys are on."""

    trace_url_template: str | None  # RAG_TRACE_URL_TEMPLATE; null: no trace links
    keys_required: bool  # RAG_API_KEYS_FILE is set: the page offers to take a key


def _headers(csp: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # revalidated (ETag): a new release shows at once
    }


async def page(request: Request) -> Response:
    return FileResponse(
        ASSETS / "index.html", media_type="text/html", headers=_headers(CONSOLE_CSP)
    )


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _CONSOLE:
        raise NotFound(f"no console asset {name!r}")
    return FileResponse(ASSETS / name, media_type=_CONSOLE[name], headers=_headers(CONSOLE_CSP))


async def config(request: Request) -> Response:
    settings = request.app.state.services.settings
    return json_response(
        ConsoleConfig(
            trace_url_template=settings.trace_url_template or None,
            keys_required=bool(settings.api_keys_file),
        ),
        headers=_headers(CONSOLE_CSP),
    )


async def docs(request: Request) -> Response:
    return FileResponse(ASSETS / "docs.html", media_type="text/html", headers=_headers(DOCS_CSP))


async def docs_asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name in _DOCS:
        return FileResponse(ASSETS / name, media_type=_DOCS[name], headers=_headers(DOCS_CSP))
    if name in _SWAGGER:
        return FileResponse(
            _swagger_dir() / name, media_type=_SWAGGER[name], headers=_headers(DOCS_CSP)
        )
    raise NotFound(f"no reference asset {name!r}")


def _swagger_dir() -> Path:
    # Located, not imported: the package's own code (framework glue) is not needed.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the API reference's assets are not installed (swagger-ui-py)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"
