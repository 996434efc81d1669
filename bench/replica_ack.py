"""What replica acknowledgement (RAG_REDIS_MIN_REPLICAS) costs an append, and how long a
Sentinel failover keeps writes away.

Real servers on 127.0.0.1 (tests/topology): a primary, one replica and three Sentinels
(down-after 1 s). Appends go through RedisEventLog as the write side sends them: one script
per request, then WAIT on the same connection when replicas must confirm. Rounds alternate
between RAG_REDIS_MIN_REPLICAS 0 and 1 (the machine is shared); medians are reported.
Failover: SIGKILL the primary, then time (a) until an append succeeds with 0 replicas
required (the Sentinels promoted the replica) and (b) with 1 required, the killed node being
restarted as a replica at once (it must sync before it can confirm).

    python bench/replica_ack.py [--rounds 5] [--requests 300] [--kills 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters.redis.client import RedisTarget  # noqa: E402
from app.adapters.redis.streams import RedisEventLog  # noqa: E402
from app.domain.events import DocumentUpserted  # noqa: E402
from app.errors import DependencyUnavailable  # noqa: E402
from tests.topology.redis_servers import SentinelSetup  # noqa: E402

TEXT = "A paragraph of a document, about as long as a chunk of a real one. " * 12


def event(i: int) -> DocumentUpserted:
    return DocumentUpserted(
        tenant="bench",
        doc_id=f"d{i}",
        version="v",
        title="",
        text=TEXT,
        metadata={},
        chunk_size=200,
        chunk_overlap=40,
        at=time.time(),
        traceparent=None,
    )


def target(setup: SentinelSetup, replicas: int) -> RedisTarget:
    return RedisTarget(
        sentinels=tuple(
            (h, int(p)) for h, p in (a.split(":") for a in setup.sentinel_addresses.split(","))
        ),
        sentinel_master=setup.master_name,
        min_replicas=replicas,
        replica_timeout_ms=1000,
    )


async def latencies(log: RedisEventLog, requests: int, batch: int, clients: int) -> list[float]:
    """Milliseconds per append of `batch` events, `clients` appending at once."""
    times: list[float] = []

    async def client(c: int) -> None:
        for i in range(requests // clients):
            events = [event(c * 1_000_000 + i * batch + j) for j in range(batch)]
            t0 = time.perf_counter()
            await log.append_many("bench:documents", events)
            times.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(client(c) for c in range(clients)))
    return times


async def until_appended(log: RedisEventLog, since: float) -> float:
    while True:
        try:
            await log.append("bench:documents", event(0))
            return time.monotonic() - since
        except DependencyUnavailable:
            await asyncio.sleep(0.05)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, list[float]] = {}
    with SentinelSetup() as setup:
        logs = {n: RedisEventLog(target(setup, n), pool_size=16) for n in (0, 1)}
        try:
            for _ in range(args.rounds):
                for replicas, log in logs.items():
                    for batch, clients in ((1, 1), (16, 1), (1, 8)):
                        times = await latencies(log, args.requests, batch, clients)
                        key = f"replicas={replicas} batch={batch} clients={clients}"
                        results.setdefault(f"{key} p50_ms", []).append(statistics.median(times))
                        p95 = statistics.quantiles(times, n=20)[18]
                        results.setdefault(f"{key} p95_ms", []).append(p95)
            for _ in range(args.kills):
                old = setup.kill_primary()
                killed = time.monotonic()
                promoted = await until_appended(logs[0], killed)
                setup.wait_failover(old)
                setup.restart_as_replica(old)
                replicated = await until_appended(logs[1], killed)
                setup.wait_in_sync(old)
                results.setdefault("failover: first append, 0 replicas required (s)", []).append(
                    promoted
                )
                results.setdefault("failover: first append, 1 replica required (s)", []).append(
                    replicated
                )
        finally:
            for log in logs.values():
                await log.close()
    return {key: round(statistics.median(values), 3) for key, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--kills", type=int, default=3)
    print(json.dumps(asyncio.run(measure(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
