"""A real poison event: with RAG_FAULT_KILL_DOC_ID the projector SIGKILLs its own process
whenever it is about to apply one chosen document, as an event that crashes the process
would. Restarted after every death (as Kubernetes restarts a pod), `serve` must dead-letter
that event alone, after exactly RAG_PROJECTOR_MAX_DELIVERIES deaths while applying it on its
own (the first death, with the whole batch in hand, strikes nothing), index every other
document of its batch, and, once the cause is gone, index it when an operator requeues it.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, drop_keys, prefix_for

pytestmark = pytest.mark.slow

STRIKES = 3
POISON = "doc-07"


def status(client: httpx.Client, doc_id: str) -> str | None:
    try:
        reply = client.get(f"/api/v1/documents/{doc_id}")
    except httpx.HTTPError:
        return None  # the process just died
    return str(reply.json()["status"]) if reply.status_code == 200 else None


def test_a_poison_event_alone_is_dead_lettered_and_requeued_once_fixed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"RAG_PROJECTOR_MAX_DELIVERIES": str(STRIKES)}
    docs = [
        {"id": f"doc-{i:02d}", "title": f"Note {i}", "text": f"Field note {i} about rivers."}
        for i in range(20)
    ]
    server = Server(data_dir, env={**env, "RAG_FAULT_KILL_DOC_ID": POISON}).start()
    deaths = 0
    try:
        # The projector may take the batch and die before the answer goes out.
        with server.client() as client, contextlib.suppress(httpx.RemoteProtocolError):
            assert client.post("/api/v1/ingest", json={"documents": docs}).status_code == 202
        # A supervisor: restart the process whenever it dies, until the poison is settled.
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline, f"not settled after {deaths} deaths"
            assert server.proc is not None
            if server.proc.poll() is not None:
                assert server.proc.returncode == -9, server.log.read_text()[-2000:]
                deaths += 1
                server.proc = None
                # Not .start(): it may die again before it ever answers /ready.
                server = Server(data_dir, env=server.env, port=server.port).launch()
                continue
            with server.client() as client:
                if status(client, POISON) == "failed":
                    break
            time.sleep(0.1)

        server.wait_ready()
        with server.client() as client:
            views = {d["id"]: status(client, str(d["id"])) for d in docs}
            letters = client.get("/api/v1/dead-letters").json()
        assert deaths == 1 + STRIKES  # the batch's death, then one per isolated attempt
        assert views == {d["id"]: "failed" if d["id"] == POISON else "indexed" for d in docs}
        (letter,) = letters["dead_letters"]
        assert letter["doc_id"] == POISON
        assert f"died {STRIKES} times" in letter["error"]
        assert server.stop() == 0

        # The cause is gone (the hook is off): requeued, it is indexed.
        server = Server(data_dir, env=env, port=server.port).start()
        with server.client() as client:
            reply = client.post(f"/api/v1/dead-letters/{letter['id']}/requeue")
            assert reply.status_code == 200, reply.text
            deadline = time.monotonic() + 60
            while status(client, POISON) != "indexed":
                assert time.monotonic() < deadline, status(client, POISON)
                time.sleep(0.1)
            assert client.get("/api/v1/dead-letters").json()["dead_letters"] == []
    finally:
        if server.proc is not None:
            server.stop()
        drop_keys({prefix_for(data_dir)})
