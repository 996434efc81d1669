"""API keys: the keys file, its reload without restart, and whom a bearer token belongs to.

The file holds only SHA-256 digests of the keys, each with a tenant and scopes, so reading it
(or a backup of it) does not hand out a working key. A token is hashed and compared with
every digest in constant time (hmac.compare_digest, no early exit), so timing tells nothing
about how much of a digest matched or which entry it was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from app.domain.records import DEFAULT_TENANT
from app.errors import SettingsError

log = logging.getLogger(__name__)

# `admin` acts on its own tenant's operations (dead letters, quality, stats); `operator` on
# the whole deployment (replay, and what else touches every tenant): app/api/routes.py.
Scope = Literal["search", "ingest", "admin", "operator"]
SCOPES: tuple[Scope, ...] = ("search", "ingest", "admin", "operator")
Tenant = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# Keys this module makes: 32 random bytes, URL-safe base64, after a recognisable prefix
# (so secret scanners can find a leaked one). Any other string also works as a key.
KEY_PREFIX = "rag_"


class KeyEntry(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    """One key: the hex SHA-256 of the key itself, never the key."""

    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    tenant: Tenant
    scopes: Annotated[list[Scope], Meta(min_length=1)]
    # Who holds the key, for operators and logs (which never carry the key or its digest).
    name: Annotated[str, Meta(max_length=128)] = ""
    # Per-key rate limit; absent: RAG_RATE_LIMIT_PER_SECOND / RAG_RATE_LIMIT_BURST.
    rate_per_second: Annotated[float, Meta(gt=0, le=1_000_000)] | None = None
    burst: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None


class KeysFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    keys: list[KeyEntry]


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the tenant every read and write is confined to, and what it may do."""

    tenant: str
    scopes: frozenset[str]
    # Stable, non-secret handle of the key, for rate-limit buckets and logs.
    key_id: str
    rate_per_second: float | None = None
    burst: int | None = None


# No keys file: one tenant, every scope, no key needed (development, or behind a gateway).
OPEN = Principal(tenant=DEFAULT_TENANT, scopes=frozenset(SCOPES), key_id="open")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse(raw: bytes, source: str) -> tuple[KeyEntry, ...]:
    """The entries of a keys file; SettingsError naming the file and the field at fault."""
    try:
        entries = msgspec.json.decode(raw, type=KeysFile).keys
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SettingsError(f"RAG_API_KEYS_FILE {source}: {exc}") from exc
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.sha256 in seen:
            raise SettingsError(f"RAG_API_KEYS_FILE {source}: keys[{i}] repeats a digest")
        seen.add(entry.sha256)
    return tuple(entries)


def key_id(entry: KeyEntry) -> str:
    # A prefix of the digest of a random 256-bit key reveals nothing usable about the key.
    return entry.sha256[:16]


class KeyRing:
    """The keys of one file, re-read when the file changes (checked at most every
    `reload_seconds`, on the request path: one stat). A file that became unreadable or
    invalid leaves the last good keys in force and is logged: rotation must never open the
    service, nor lock every client out by a typo."""

    def __init__(
        self,
        path: Path,
        *,
        reload_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reload_seconds = reload_seconds
        self._clock = clock
        self._checked = clock()
        try:
            self._stamp = self._stat()
            self._entries = parse(self.path.read_bytes(), str(self.path))
        except OSError as exc:
            raise SettingsError(f"RAG_API_KEYS_FILE {self.path}: cannot read it: {exc}") from exc
        self.reloads = 0
        self.reload_errors = 0

    @property
    def size(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, or None."""
        self.refresh()
        wanted = digest(token)
        found: KeyEntry | None = None
        for entry in self._entries:
            # Every entry is compared, match or not, so the time taken does not say where.
            if hmac.compare_digest(wanted, entry.sha256):
                found = entry
        if found is None:
            return None
        return Principal(
            tenant=found.tenant,
            scopes=frozenset(found.scopes),
            key_id=key_id(found),
            rate_per_second=found.rate_per_second,
            burst=found.burst,
        )

    def refresh(self) -> None:
        """Re-read the file if it changed and the last check is `reload_seconds` old."""
        now = self._clock()
        if now - self._checked < self.reload_seconds:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return
            entries = parse(self.path.read_bytes(), str(self.path))
        except (OSError, SettingsError) as exc:
            self.reload_errors += 1
            log.error("API keys not reloaded, the previous %d stay in force: %s", self.size, exc)
            return
        self._stamp = stamp
        self._entries = entries
        self.reloads += 1
        log.info("API keys reloaded from %s: %d keys", self.path, len(entries))

    def _stat(self) -> tuple[int, int, int]:
        # A Kubernetes Secret volume swaps a symlink; stat follows it, so the inode changes.
        info = os.stat(self.path)
        return info.st_mtime_ns, info.st_size, info.st_ino
