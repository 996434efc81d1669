"""`rag-pipeline dead-letters list|show|requeue|drop`: the dead-letter stream, for an operator.

It talks to Redis directly (REDIS_URL, or the data directory's embedded Valkey, as `worker`
and `replay` do; app/bootstrap/ builds what it needs) and sees every tenant's dead letters,
undecodable ones included; `--tenant` narrows it to one. The HTTP endpoints
(app/api/dead_letters.py) do the same for one tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from app.domain.doc_status import DocView
from app.errors import RagError
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.dead_letters import DeadLetter, DeadLetters

# Most dead letters one `requeue --all` or `drop --all` goes through: a bound on what one
# mistyped command can do; run it again for more.
_MAX_ALL = 10_000


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dead-letters` and its actions to the command's subparsers."""
    parser = sub.add_parser(
        "dead-letters",
        help="list, show, requeue or drop the document events the projector gave up on "
        "(reads Redis directly; every tenant unless --tenant)",
    )
    actions = parser.add_subparsers(required=True, metavar="ACTION")

    def common(action: argparse.ArgumentParser) -> None:
        action.add_argument(
            "--data-dir", help="data directory whose embedded Valkey to use when REDIS_URL is empty"
        )
        action.add_argument("--json", action="store_true", help="print JSON, one object a line")

    listing = actions.add_parser("list", help="dead letters, newest first")
    common(listing)
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--oldest", action="store_true", help="oldest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--after", help="start past this dead letter id (a previous `next`)")
    listing.set_defaults(run=_run, action=_list)

    show = actions.add_parser("show", help="one dead letter: error, event, document status")
    common(show)
    show.add_argument("id", help="the dead letter's id, as `list` prints it")
    show.set_defaults(run=_run, action=_show)

    for name, verb, action in (
        (
            "requeue",
            "append their events to the document stream again (documents pending once more); "
            "a document changed since keeps its newer change (superseded)",
            _requeue,
        ),
        ("drop", "delete them for good", _drop),
    ):
        command = actions.add_parser(name, help=f"{name} dead letters: {verb}")
        common(command)
        command.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids")
        command.add_argument(
            "--all", action="store_true", help=f"{name} every dead letter (or --tenant's)"
        )
        command.add_argument("--tenant", help="with --all: only this tenant's")
        command.set_defaults(run=_run, action=action)


Action = Callable[["DeadLetters", argparse.Namespace], Awaitable[int]]


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from app.bootstrap import hosted_event_log

    if args.data_dir is not None:
        settings = settings.replace(data_dir=args.data_dir)
    action: Action = args.action
    with hosted_event_log(settings) as host:
        return asyncio.run(_with_service(host.settings, args, action))


async def _with_service(settings: Settings, args: argparse.Namespace, action: Action) -> int:
    from app.bootstrap import open_dead_letters

    async with open_dead_letters(settings) as service:
        return await action(service, args)


class _Shown(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A dead letter as the CLI prints it with --json."""

    id: str
    tenant: str | None
    doc_id: str | None
    event_type: str | None
    version: str | None
    source_stream: str
    source_id: str
    group: str
    error: str
    deliveries: int
    dead_lettered_at: float
    requeueable: bool
    problem: str | None = None
    event: str | None = None  # show: the event as stored
    document: DocView | None = None  # show: the document's status now


def _shown(letter: DeadLetter, *, event: bool = False) -> _Shown:
    return _Shown(
        id=letter.id,
        tenant=letter.tenant,
        doc_id=letter.doc_id,
        event_type=letter.event_type,
        version=letter.version,
        source_stream=letter.source_stream,
        source_id=letter.source_id,
        group=letter.group,
        error=letter.error,
        deliveries=letter.deliveries,
        dead_lettered_at=letter.at,
        requeueable=letter.problem is None,
        problem=letter.problem,
        event=letter.raw.decode("utf-8", "backslashreplace") if event else None,
    )


def _json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


async def _list(service: DeadLetters, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise RagError("--limit must be at least 1")
    page = await service.page(
        tenant=args.tenant,
        order="oldest" if args.oldest else "newest",
        after=args.after,
        limit=args.limit,
    )
    if args.json:
        for letter in page.letters:
            _json(_shown(letter))
        if page.next is not None:
            _json({"next": page.next})
        return 0
    total = await service.count()
    for letter in page.letters:
        print(
            f"{letter.id}  {_when(letter.at)}Z  {letter.tenant or '?'}/{letter.doc_id or '?'}  "
            f"{letter.event_type or 'unreadable'}  x{letter.deliveries}  "
            f"{'' if letter.problem is None else '[cannot requeue] '}"
            f"{_one_line(letter.error, 100)}"
        )
    where = "" if args.tenant is None else f" of tenant {args.tenant!r}"
    print(f"{len(page.letters)} dead letters{where} shown; {total} in {service.stream} in all")
    if page.next is not None:
        print(f"more: --after {page.next}")
    return 0


async def _show(service: DeadLetters, args: argparse.Namespace) -> int:
    letter, document = await service.show(args.id, tenant=None)
    shown = msgspec.structs.replace(_shown(letter, event=True), document=document)
    if args.json:
        _json(shown)
        return 0
    for name in _Shown.__struct_fields__:
        value = getattr(shown, name)
        if name in ("event", "document") or value is None:
            continue
        if name == "dead_lettered_at":
            value = f"{_when(value)}Z"
        print(f"{name}: {value}")
    if document is not None:
        print(
            f"document now: {document.status}, version {document.version}, "
            f"event {document.event_id}" + (f", error {document.error}" if document.error else "")
        )
    print(f"event as stored:\n{shown.event}")
    return 0


async def _targets(service: DeadLetters, args: argparse.Namespace) -> list[str]:
    if args.all == bool(args.ids):
        raise RagError("name dead letter ids, or --all (not both)")
    if args.tenant is not None and not args.all:
        raise RagError("--tenant goes with --all")
    if not args.all:
        return list(args.ids)
    ids: list[str] = []
    after: str | None = None
    while len(ids) < _MAX_ALL:
        page = await service.page(
            tenant=args.tenant, order="oldest", after=after, limit=min(100, _MAX_ALL - len(ids))
        )
        ids += [letter.id for letter in page.letters]
        if page.next is None:
            break
        after = page.next
    return ids


async def _requeue(service: DeadLetters, args: argparse.Namespace) -> int:
    async def one(letter_id: str) -> tuple[str, str, str | None]:
        done = await service.requeue(letter_id, tenant=None)
        doc = f"{done.letter.tenant}/{done.letter.doc_id}"
        if done.outcome == "requeued":
            return done.outcome, f"requeued as {done.event_id}; {doc} is pending", done.event_id
        what = f"superseded by {done.event_id}, a newer change to {doc}; nothing appended"
        return done.outcome, what, done.event_id

    return await _each(service, args, one)


async def _drop(service: DeadLetters, args: argparse.Namespace) -> int:
    async def one(letter_id: str) -> tuple[str, str, str | None]:
        letter = await service.drop(letter_id, tenant=None)
        return "dropped", f"dropped ({letter.tenant}/{letter.doc_id})", None

    return await _each(service, args, one)


async def _each(
    service: DeadLetters,
    args: argparse.Namespace,
    act: Callable[[str], Awaitable[tuple[str, str, str | None]]],
) -> int:
    """`act` on each targeted dead letter, reporting (outcome, message, event id) for each;
    one that fails is reported and the rest still go. Exit status 1 if any failed."""
    failed = 0
    for letter_id in await _targets(service, args):
        try:
            outcome, message, event_id = await act(letter_id)
        except RagError as exc:
            failed += 1
            _report(args, letter_id, "failed", str(exc))
            continue
        _report(args, letter_id, outcome, message, event_id=event_id)
    return 1 if failed else 0


def _report(
    args: argparse.Namespace,
    letter_id: str,
    outcome: str,
    message: str,
    *,
    event_id: str | None = None,
) -> None:
    if args.json:
        _json({"id": letter_id, "outcome": outcome, "event_id": event_id, "message": message})
    else:
        print(f"{letter_id}: {message}", file=sys.stderr if outcome == "failed" else sys.stdout)
