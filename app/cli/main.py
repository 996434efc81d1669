"""The `rag-pipeline` command: serve | worker | replay | ingest | eval | keys | dead-letters |
copy-redis | compact | erase | export | import."""

from __future__ import annotations

import argparse
import logging
import sys

from app.cli import (
    backup,
    compact,
    copy_redis,
    dead_letters,
    erase,
    evaluation,
    ingest,
    keys,
    replay,
    serve,
)
from app.errors import RagError, SettingsError
from app.settings import Settings

# The commands that are the service: a SettingsError means it cannot start (exit 2).
_SERVICE = (serve.serve_api, serve.run_worker, replay.run_replay)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"rag-pipeline: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: the CLI's polling would bury its own progress bar.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        result: int = args.run(args, settings)
        return result
    except SettingsError as exc:
        if args.run not in _SERVICE:
            # The other commands' SettingsErrors are about their arguments (a keys file,
            # --tenant, --api-key-file): a failed command, not a process that cannot start.
            print(f"rag-pipeline: {exc}", file=sys.stderr)
            return 1
        # One line, whatever the message holds: the last line of a crash-looping pod's log.
        print(f"rag-pipeline: bad setting: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except RagError as exc:
        print(f"rag-pipeline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag-pipeline", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    # In the order `--help` lists them.
    for command in (
        serve,
        replay,
        ingest,
        keys,
        evaluation,
        dead_letters,
        copy_redis,
        compact,
        erase,
        backup,
    ):
        command.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
