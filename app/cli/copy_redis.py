"""`rag-pipeline copy-redis`: copy a deployment's event log into the Redis and prefix configured.

For moving to a Redis Cluster (whose RAG_STREAM_PREFIX needs a hash tag), to another server,
or to a new prefix: the streams with their ids and consumer groups, the document status and
the dead letters (app/adapters/redis/migration.py). The target is what REDIS_URL,
REDIS_SENTINELS or REDIS_CLUSTER and RAG_STREAM_PREFIX name, as for `serve`; it must hold
nothing under that prefix yet. Stop writers and workers first.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec

from app.errors import SettingsError
from app.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `copy-redis` to the command's subparsers."""
    parser = sub.add_parser(
        "copy-redis",
        help="copy the event log (streams, groups, status, dead letters) from another Redis "
        "or prefix into the configured Redis and RAG_STREAM_PREFIX",
    )
    parser.add_argument("--from-url", required=True, help="the Redis to copy from (redis://...)")
    parser.add_argument(
        "--from-cluster", action="store_true", help="--from-url is a node of a Redis Cluster"
    )
    parser.add_argument(
        "--from-prefix", help="the key prefix to copy (default RAG_STREAM_PREFIX, unchanged)"
    )
    parser.add_argument(
        "--with-cache",
        action="store_true",
        help="copy cached embeddings too (default: left behind; the projector refills them)",
    )
    parser.add_argument(
        "--data-dir", help="data directory whose embedded Valkey to copy into (REDIS_URL empty)"
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from app.bootstrap import check_redis_url, hosted_event_log

    check_redis_url(args.from_url)
    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    from_prefix = args.from_prefix or settings.stream_prefix
    if (
        args.from_url == settings.redis_url
        and from_prefix == settings.stream_prefix
        and not settings.redis_sentinels
    ):
        raise SettingsError(
            "--from-url and --from-prefix name the Redis and prefix configured: nothing to copy"
        )
    with hosted_event_log(settings) as host:
        return asyncio.run(_copy(host.settings, args, from_prefix))


async def _copy(settings: Settings, args: argparse.Namespace, from_prefix: str) -> int:
    from app.bootstrap import copy_event_log

    report = await copy_event_log(
        settings,
        from_url=args.from_url,
        from_cluster=args.from_cluster,
        from_prefix=from_prefix,
        with_cache=args.with_cache,
    )
    print(msgspec.json.encode(report).decode())
    return 0
