"""The `rag-pipeline ingest` and `eval` commands against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("cli") / "data").start()
    yield server
    server.stop()


def rag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, timeout=300
    )


def test_ingest_text_markdown_and_beir_files(cli_server: Server, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("Penguins live in the southern hemisphere.")
    (tmp_path / "notes" / "b.md").write_text("# Kiwi birds\n\nKiwis are flightless birds.")
    (tmp_path / "notes" / "ignored.bin").write_bytes(b"\x00\x01")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"_id": "c1", "title": "Ostrich", "text": "The ostrich runs fast."}) + "\n"
    )
    result = rag("ingest", str(tmp_path / "notes"), str(corpus), "--url", cli_server.url)
    assert result.returncode == 0, result.stderr
    assert "3 indexed" in result.stdout

    with httpx.Client(base_url=cli_server.url) as http:
        md = http.get(f"/api/v1/documents/{tmp_path / 'notes' / 'b.md'}").json()
        assert md["status"] == "indexed"
        hits = http.post("/api/v1/search", json={"query": "flightless kiwi"}).json()["results"]
        assert hits[0]["title"] == "Kiwi birds"
        assert http.get("/api/v1/documents/c1").json()["status"] == "indexed"

    again = rag("ingest", str(corpus), "--url", cli_server.url)
    assert again.returncode == 0 and "1 unchanged" in again.stdout


def test_ingest_with_nothing_to_read_fails(tmp_path: Path) -> None:
    result = rag("ingest", str(tmp_path))
    assert result.returncode == 1
    assert "no .txt, .md or .jsonl" in result.stderr


def test_eval_loads_the_corpus_and_scores_every_mode(cli_server: Server, tmp_path: Path) -> None:
    dataset = tmp_path / "tiny"
    (dataset / "qrels").mkdir(parents=True)
    docs = [
        ("e1", "Volcano", "Lava erupts from the crater of the volcano."),
        ("e2", "Glacier", "Glaciers are slow rivers of ice that carve valleys."),
        ("e3", "Desert", "Deserts receive very little rain each year."),
    ]
    (dataset / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    (dataset / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "molten lava crater"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "ice carving valleys"})
        + "\n"
    )
    (dataset / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\te1\t1\nq2\te2\t1\n"
    )

    result = rag(
        "eval",
        str(dataset),
        "--split",
        "test",
        "--url",
        cli_server.url,
        "--json",
        "--diversity",
        "0.5",
    )
    assert result.returncode == 0, result.stderr
    scores = {s["label"]: s for s in json.loads(result.stdout)}
    assert set(scores) == {
        "dense",
        "bm25",
        "hybrid",
        "hybrid+rerank",
        "default, diversity=0.5",
    }
    for s in scores.values():
        # two easy queries, one relevant document each, found first: every metric is 1
        assert (s["ndcg_at_10"], s["recall_at_100"], s["mrr_at_10"]) == (1.0, 1.0, 1.0)
        assert s["queries"] == 2
    with httpx.Client(base_url=cli_server.url) as http:
        assert http.get("/api/v1/documents/e3").json()["status"] == "indexed"
