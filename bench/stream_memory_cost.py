"""What sampling a stream's memory costs Redis: MEMORY USAGE key SAMPLES 0 on a 25,000-entry
stream, against XLEN and INFO memory, so /metrics and /api/v1/stats can choose how often to ask.

MEMORY USAGE with SAMPLES 0 walks every node of the stream's radix tree (O(nodes), not
O(entries): a listpack node holds up to 100 entries by default), and Redis does nothing else
meanwhile. Reported: the median over --runs of the median and max server-side time of
--calls calls each (from the round trip, minus that of PING on the same connection), the
figure it returns and the exact size (SAMPLES 5 default, for comparison).

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/stream_memory_cost.py [--entries 25000]

Uses a key of its own under `bench:memory:` and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid

import redis


def timed(client: redis.Redis, calls: int, *command: object) -> list[float]:
    """Round-trip times of `command`, in microseconds."""
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.execute_command(*command)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=25_000)
    parser.add_argument("--bytes", type=int, default=1300, help="size of one entry's value")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    key = f"bench:memory:{uuid.uuid4().hex}"
    try:
        value = os.urandom(args.bytes // 2).hex()
        with client.pipeline(transaction=False) as pipe:
            for i in range(args.entries):
                pipe.xadd(key, {"event": value})
                if i % 1000 == 999:
                    pipe.execute()
            pipe.execute()
        rows: dict[str, list[tuple[float, float]]] = {
            "PING": [],
            "XLEN": [],
            "MEMORY USAGE SAMPLES 0": [],
            "MEMORY USAGE (SAMPLES 5)": [],
            "INFO memory": [],
        }
        for _ in range(args.runs):
            for name, command in (
                ("PING", ("PING",)),
                ("XLEN", ("XLEN", key)),
                ("MEMORY USAGE SAMPLES 0", ("MEMORY", "USAGE", key, "SAMPLES", "0")),
                ("MEMORY USAGE (SAMPLES 5)", ("MEMORY", "USAGE", key)),
                ("INFO memory", ("INFO", "memory")),
            ):
                times = timed(client, args.calls, *command)
                rows[name].append((statistics.median(times), max(times)))
        ping = statistics.median(m for m, _ in rows["PING"])
        report = {
            "entries": args.entries,
            "entry_bytes": args.bytes,
            "memory_usage_samples_0": client.memory_usage(key, samples=0),
            "memory_usage_default_samples": client.memory_usage(key),
            "ping_round_trip_us": round(ping, 1),
            "server_us": {
                name: {
                    "median": round(statistics.median(m for m, _ in runs) - ping, 1),
                    "max": round(statistics.median(x for _, x in runs) - ping, 1),
                }
                for name, runs in rows.items()
                if name != "PING"
            },
        }
        print(json.dumps(report, indent=2))
    finally:
        client.delete(key)


if __name__ == "__main__":
    main()
