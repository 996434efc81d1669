"""`rag-pipeline ingest`: send .txt/.md files or a BEIR corpus.jsonl to a server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.options import SERVER_URL_HELP, add_api_key_file, connect
from app.settings import Settings

if TYPE_CHECKING:
    from app.api.schemas import IngestResponse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `ingest` to the command's subparsers."""
    ingest = sub.add_parser("ingest", help="send .txt/.md files or a BEIR corpus.jsonl to a server")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--url", default=None, help=SERVER_URL_HELP)
    ingest.add_argument("--batch", type=int, default=64, help="documents per request")
    add_api_key_file(ingest)
    ingest.set_defaults(run=run_ingest)


def run_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from app.cli.corpus import read_documents
    from app.client import send_batches

    docs = list(read_documents(args.paths))
    if not docs:
        print("rag-pipeline: no .txt, .md or .jsonl documents found", file=sys.stderr)
        return 1

    async def run() -> dict[str, int]:
        counts: dict[str, int] = {}
        async with connect(args, settings) as server:
            with tqdm(total=len(docs), desc="ingest", unit="doc") as bar:

                def done(response: IngestResponse, sent: int) -> None:
                    for doc in response.documents:
                        counts[doc.status] = counts.get(doc.status, 0) + 1
                    bar.update(sent)

                await send_batches(server, docs, args.batch, on_done=done)
        return counts

    counts = asyncio.run(run())
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0
