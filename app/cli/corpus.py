"""Reads documents from disk: plain text, Markdown and BEIR corpus/queries/qrels files."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import msgspec

from app.api.schemas import DocumentInput


class _BeirDoc(msgspec.Struct):
    _id: str = msgspec.field(name="_id")
    text: str = ""
    title: str = ""
    metadata: dict[str, object] = msgspec.field(default_factory=dict)


class BeirQuery(msgspec.Struct):
    _id: str = msgspec.field(name="_id")
    text: str = ""


def read_documents(paths: list[Path]) -> Iterator[DocumentInput]:
    """Documents from files and directories: *.txt and *.md one each, *.jsonl in BEIR format."""
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            suffix = file.suffix.lower()
            if suffix == ".jsonl":
                yield from read_beir_corpus(file)
            elif suffix in (".txt", ".md", ".markdown"):
                yield _text_document(file)


def _text_document(file: Path) -> DocumentInput:
    text = file.read_text(encoding="utf-8", errors="replace")
    title = file.stem
    if file.suffix.lower() != ".txt":
        for line in text.splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                break
    return DocumentInput(id=str(file), text=text, title=title, metadata={"source": str(file)})


def read_beir_corpus(file: Path) -> Iterator[DocumentInput]:
    decoder = msgspec.json.Decoder(_BeirDoc)
    with file.open("rb") as handle:
        for line in handle:
            if line.strip():
                doc = decoder.decode(line)
                if doc.text.strip():
                    yield DocumentInput(
                        id=doc._id, text=doc.text, title=doc.title, metadata=doc.metadata
                    )


def read_beir_queries(file: Path) -> dict[str, str]:
    decoder = msgspec.json.Decoder(BeirQuery)
    with file.open("rb") as handle:
        return {q._id: q.text for q in (decoder.decode(line) for line in handle if line.strip())}


def read_qrels(file: Path) -> dict[str, dict[str, int]]:
    """query id -> {doc id: graded relevance}, keeping relevance > 0."""
    qrels: dict[str, dict[str, int]] = {}
    with file.open(newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for row in reader:
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # the header line
            if int(row[2]) > 0:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels
