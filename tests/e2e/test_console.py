"""The browser console in a real Chromium (Debian's, driven by Playwright) against a real server
with API keys on: enter a key, search from the keyboard and read each stage's scores, follow
the trace link, give feedback and see it counted, open a document, read the system page and the
API reference; no console error and no CSP violation anywhere, and no request leaves the origin.

Screenshots for the docs: RAG_CONSOLE_SCREENSHOTS=docs python -m pytest tests/e2e/test_console.py
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from app.api.keys import digest, new_key
from tests.e2e.conftest import DOCS
from tests.e2e.server import Server

CHROMIUM = os.environ.get("RAG_CHROMIUM", "/usr/bin/chromium")
KEY = new_key()
SCREENSHOTS = os.environ.get("RAG_CONSOLE_SCREENSHOTS")

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
    if os.environ.get("CI") == "true":  # scripts/test-tools installs it: a broken install fails
        raise RuntimeError(f"no Chromium at {CHROMIUM}: scripts/test-tools installs Debian's")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


class _Jaeger(BaseHTTPRequestHandler):
    """Stands in for Jaeger's UI: a trace page that names the trace it was asked for."""

    def do_GET(self) -> None:
        body = f"<!doctype html><title>trace</title><h1>{self.path}</h1>".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def jaeger() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jaeger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, jaeger: str) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("console")
    keys = root / "keys.json"
    entry = {"sha256": digest(KEY), "tenant": "acme", "scopes": ["search", "ingest", "admin"]}
    keys.write_text(json.dumps({"keys": [entry]}))
    srv = Server(
        root / "data",
        env={
            "RAG_API_KEYS_FILE": str(keys),
            "RAG_TRACE_URL_TEMPLATE": f"{jaeger}/trace/{{trace_id}}",
        },
    ).start()
    try:
        response = httpx.post(
            f"{srv.url}/api/v1/ingest?wait=true",
            json={"documents": DOCS},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def browser_page(console: Server, jaeger: str) -> Iterator[tuple[object, list[str]]]:
    """A page whose console errors, page errors and requests to other origins are recorded."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        def watch(request: object) -> None:
            url = request.url  # type: ignore[attr-defined]
            if not url.startswith((console.url, "data:")):
                problems.append(f"request to another origin: {url}")

        page.on("request", watch)
        try:
            yield page, problems
        finally:
            context.close()
            browser.close()


def test_search_feedback_document_and_system_pages(
    browser_page: tuple[object, list[str]], console: Server, jaeger: str
) -> None:
    page, problems = browser_page
    p = page  # type: ignore[assignment]
    p.goto(f"{console.url}/")  # type: ignore[attr-defined]
    # Keys are on: the console asks for one before its first request.
    p.wait_for_selector("#key-dialog[open]")  # type: ignore[attr-defined]
    p.fill("#key-input", KEY)  # type: ignore[attr-defined]
    p.keyboard.press("Enter")  # type: ignore[attr-defined]
    assert p.evaluate("sessionStorage.getItem('rag-pipeline.api-key')") == KEY  # type: ignore[attr-defined]

    # From the keyboard: the query box has the focus.
    p.keyboard.type("how are the backups of the data kept")  # type: ignore[attr-defined]
    p.keyboard.press("Enter")  # type: ignore[attr-defined]
    p.wait_for_selector(".result")  # type: ignore[attr-defined]
    first = p.locator(".result").first  # type: ignore[attr-defined]
    assert "Operations guide" in first.locator("h2").inner_text()
    assert first.locator("mark").count() >= 1  # query terms highlighted
    stages = first.locator("dl.scores dt").all_inner_texts()
    assert {"dense", "bm25", "fusion"} <= set(stages)
    assert p.locator("svg.waterfall rect").count() >= 2  # type: ignore[attr-defined]
    retrieval_id = p.locator(".summary code.rid").inner_text()  # type: ignore[attr-defined]
    assert len(retrieval_id) >= 32
    if SCREENSHOTS:
        p.screenshot(path=f"{SCREENSHOTS}/console-search.png", full_page=True)  # type: ignore[attr-defined]

    # The trace link opens the trace in the configured UI.
    link = p.locator("a.trace")  # type: ignore[attr-defined]
    trace_id = p.locator(".summary code").nth(1).inner_text()  # type: ignore[attr-defined]
    assert link.get_attribute("href") == f"{jaeger}/trace/{trace_id}"
    with p.context.expect_page() as opened:  # type: ignore[attr-defined]
        link.click()
    trace_page = opened.value
    trace_page.wait_for_load_state()
    assert f"/trace/{trace_id}" in trace_page.locator("h1").inner_text()
    trace_page.close()

    # Feedback from the keyboard: focus the first Good button and press Enter.
    first.locator("button.judge", has_text="Good").focus()
    p.keyboard.press("Enter")  # type: ignore[attr-defined]
    first.locator(".sent", has_text="marked good").wait_for()

    # The document behind the first result.
    doc_id = first.locator(".meta a").inner_text()
    first.locator(".meta a").click()
    p.wait_for_selector("#document dl.facts")  # type: ignore[attr-defined]
    assert "indexed" in p.locator("#document dl.facts").inner_text()  # type: ignore[attr-defined]
    # Its text and the chunks the index holds.
    assert p.locator("#document .doc-text").inner_text().strip()  # type: ignore[attr-defined]
    assert p.locator("#document ol.chunks li").count() >= 1  # type: ignore[attr-defined]
    assert doc_id in p.url  # type: ignore[attr-defined]

    # The system page counts the feedback (once the recorder has flushed the retrieval).
    counted = "0"
    for _ in range(40):
        p.goto(f"{console.url}/#/system?hours=1")  # type: ignore[attr-defined]
        p.wait_for_selector(".quality")  # type: ignore[attr-defined]
        counted = p.locator('dd[data-figure="feedback judgements"]').inner_text()  # type: ignore[attr-defined]
        if counted != "0":
            break
        p.wait_for_timeout(500)  # type: ignore[attr-defined]
    assert counted == "1"
    assert p.locator(".quality svg.chart").count() == 3  # type: ignore[attr-defined]
    assert "documents stream" in p.locator(".cards").inner_text()  # type: ignore[attr-defined]
    if SCREENSHOTS:
        p.screenshot(path=f"{SCREENSHOTS}/console-system.png", full_page=True)  # type: ignore[attr-defined]

    # Readable on a phone: nothing wider than the screen.
    p.set_viewport_size({"width": 390, "height": 844})  # type: ignore[attr-defined]
    p.goto(f"{console.url}/#/search?q=volcano")  # type: ignore[attr-defined]
    p.wait_for_selector(".result")  # type: ignore[attr-defined]
    assert p.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")  # type: ignore[attr-defined]
    assert problems == []


def test_the_api_reference_renders_the_schema(
    browser_page: tuple[object, list[str]], console: Server
) -> None:
    page, problems = browser_page
    p = page  # type: ignore[assignment]
    p.goto(f"{console.url}/docs")  # type: ignore[attr-defined]
    p.wait_for_selector(".opblock")  # type: ignore[attr-defined]
    assert "/api/v1/search" in p.locator("#swagger-ui").inner_text()  # type: ignore[attr-defined]
    assert problems == []


def test_pages_and_assets_carry_a_strict_policy(console: Server) -> None:
    with httpx.Client(base_url=console.url) as http:
        for path in ("/", "/console/console.js", "/console/console.css", "/console/config.json"):
            response = http.get(path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert response.headers["x-content-type-options"] == "nosniff"
        assert http.get("/console/nope.js").status_code == 404
        assert http.get("/console/config.json").json()["keys_required"] is True
        docs = http.get("/docs")
        assert "script-src 'self'" in docs.headers["content-security-policy"]
        assert http.get("/docs/swagger-ui-bundle.js").status_code == 200
