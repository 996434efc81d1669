"""The embedded index's single-writer claim: an flock beside the shard that names its holder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import IO

import msgspec

from app.errors import DependencyUnavailable


class IndexHolder(msgspec.Struct, kw_only=True):
    """Who holds an embedded index: written into its lock file for the next one to read."""

    pid: int
    role: str  # "serve", "worker" or "replay"
    command: str


class IndexOwnership:
    """The embedded index's single-writer claim, held for the life of the process.

    Qdrant Edge opens a shard in one process only (a second open fails on the WAL lock with
    an opaque error), so the index has exactly one writer and therefore one projector: the
    process that holds it. An flock beside the shard makes that explicit, released by the
    kernel however the holder dies, and names the holder in the refusal.
    """

    def __init__(self, data_dir: Path, model_id: str, role: str) -> None:
        self.path = data_dir / "index" / f"{model_id}.lock"
        self.role = role
        self._file: IO[bytes] | None = None

    def acquire(self) -> IndexOwnership:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = msgspec.json.decode(handle.read(), type=IndexHolder)
                who = f"`rag-pipeline {holder.role}` (pid {holder.pid})"
            except msgspec.DecodeError:
                who = "another process"
            handle.close()
            raise DependencyUnavailable(
                f"the index at {self.path.with_suffix('')} is held by {who}. The embedded "
                "index has one writer, which also runs the projector: stop that process to "
                f"run `{self.role}` on this data directory",
                retry_after=5.0,
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            msgspec.json.encode(
                IndexHolder(pid=os.getpid(), role=self.role, command=" ".join(sys.argv))
            )
        )
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
