"""`rag-pipeline keys new|check`: make an API key, or check a keys file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from app.errors import SettingsError
from app.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys` and its actions to the command's subparsers."""
    keys = sub.add_parser(
        "keys", help="make an API key (`keys new`) or check a keys file (`keys check FILE`)"
    )
    actions = keys.add_subparsers(required=True, metavar="ACTION")
    new = actions.add_parser(
        "new", help="print a new random key and the entry to add to RAG_API_KEYS_FILE"
    )
    new.add_argument("--tenant", required=True, help="the tenant the key acts for")
    new.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["search", "ingest", "admin", "operator"],
        help="a scope the key has (repeatable); admin acts on the key's tenant, operator on "
        "the whole deployment (replay)",
    )
    new.add_argument("--name", default="", help="who holds the key (shown in logs)")
    new.set_defaults(run=_new)
    check = actions.add_parser("check", help="validate a keys file and count its keys")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_check)


def _new(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.keys import KeyEntry, digest, new_key, parse

    key = new_key()
    entry = KeyEntry(
        sha256=digest(key), tenant=args.tenant, scopes=sorted(set(args.scope)), name=args.name
    )
    line = msgspec.json.encode(entry).decode()
    parse(f'{{"keys": [{line}]}}'.encode(), "the new entry")  # a bad --tenant stops here
    # The key alone on stdout (KEY=$(rag-pipeline keys new ...)); it is stored nowhere.
    print(key)
    print(f"add to the keys file's `keys` list: {line}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from app.api.keys import parse

    try:
        entries = parse(args.file.read_bytes(), str(args.file))
    except OSError as exc:
        raise SettingsError(f"{args.file}: {exc}") from exc
    tenants = sorted({e.tenant for e in entries})
    print(f"{args.file}: {len(entries)} keys, tenants: {', '.join(tenants) or 'none'}")
    return 0
