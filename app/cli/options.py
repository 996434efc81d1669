"""The options several commands share, and what they resolve to."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import SettingsError
from app.settings import Settings

if TYPE_CHECKING:
    from app.client import AsyncClient

DATA_DIR_HELP = "data directory (default RAG_DATA_DIR, ./rag-data)"
SERVER_URL_HELP = "server URL (default http://RAG_HOST:RAG_PORT)"
# A file, not an argument or a variable: a key on the command line shows in `ps`.
_API_KEY_FILE_HELP = "file holding the API key to send (servers with RAG_API_KEYS_FILE)"


def add_listen_options(parser: argparse.ArgumentParser) -> None:
    """--host, --port and --data-dir: where a serving process listens and keeps its data."""
    parser.add_argument("--host", help="listen address (default RAG_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default RAG_PORT, 8000)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)


def with_listen_options(args: argparse.Namespace, settings: Settings) -> Settings:
    """`settings` with the --host, --port and --data-dir given in place of theirs."""
    changes = {
        name: value
        for name, value in (("host", args.host), ("port", args.port), ("data_dir", args.data_dir))
        if value is not None
    }
    return settings.replace(**changes)


def add_api_key_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key-file", type=Path, help=_API_KEY_FILE_HELP)


def api_key(args: argparse.Namespace) -> str | None:
    """The key --api-key-file holds (None without it); SettingsError if unreadable or empty."""
    if args.api_key_file is None:
        return None
    try:
        key: str = args.api_key_file.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"--api-key-file: {exc}") from exc
    if not key:
        raise SettingsError(f"--api-key-file: {args.api_key_file} is empty")
    return key


def server_url(args: argparse.Namespace, settings: Settings) -> str:
    """--url, else the address this machine's server listens on (RAG_HOST:RAG_PORT)."""
    if args.url:
        return str(args.url)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{settings.port}"


def connect(args: argparse.Namespace, settings: Settings) -> AsyncClient:
    """A client of the server --url names, sending --api-key-file's key."""
    from app.client import AsyncClient

    return AsyncClient(server_url(args, settings), api_key=api_key(args))
