"""The keys file: parsing, constant-time lookup, reload on change, and keeping the old keys
when a new version is broken."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from app.api.keys import OPEN, SCOPES, KeyRing, digest, new_key, parse
from app.errors import SettingsError


def entry(key: str, tenant: str = "acme", scopes: list[str] | None = None, **extra: object) -> dict:
    return {"sha256": digest(key), "tenant": tenant, "scopes": scopes or ["search"], **extra}


def write(path: Path, *entries: dict) -> None:
    path.write_text(json.dumps({"keys": list(entries)}))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_finds_its_tenant_and_scopes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a, b = new_key(), new_key()
    write(path, entry(a, "acme", ["search", "ingest"]), entry(b, "globex", ["admin"], burst=7))
    ring = KeyRing(path)
    found = ring.authenticate(a)
    assert found is not None
    assert (found.tenant, found.scopes) == ("acme", frozenset({"search", "ingest"}))
    assert found.key_id == digest(a)[:16] and a not in found.key_id
    other = ring.authenticate(b)
    assert other is not None and (other.tenant, other.burst) == ("globex", 7)
    assert ring.authenticate(a + "x") is None
    assert ring.authenticate("") is None
    assert ring.authenticate(digest(a)) is None  # the digest is not a key


def test_the_operator_scope_is_a_scope_of_its_own(tmp_path: Path) -> None:
    """`operator` (deployment-wide work) neither implies nor is implied by `admin`; open mode,
    having no keys, has every scope."""
    path = tmp_path / "keys.json"
    ops, admin = new_key(), new_key()
    write(path, entry(ops, "ops", ["operator"]), entry(admin, "acme", ["admin"]))
    ring = KeyRing(path)
    found_ops, found_admin = ring.authenticate(ops), ring.authenticate(admin)
    assert found_ops is not None and found_ops.scopes == frozenset({"operator"})
    assert found_admin is not None and "operator" not in found_admin.scopes
    assert {"search", "ingest", "admin", "operator"} == OPEN.scopes == set(SCOPES)


@pytest.mark.parametrize(
    ("keys", "wrong"),
    [
        ([{"sha256": "ab", "tenant": "t", "scopes": ["search"]}], "keys[0].sha256"),
        ([{"sha256": "a" * 64, "tenant": "a b", "scopes": ["search"]}], "keys[0].tenant"),
        ([{"sha256": "a" * 64, "tenant": "t", "scopes": ["root"]}], "keys[0].scopes[0]"),
        ([{"sha256": "a" * 64, "tenant": "t", "scopes": []}], "keys[0].scopes"),
        ([{"sha256": "a" * 64, "tenant": "t", "scopes": ["search"], "key": "x"}], "keys[0]"),
        (
            [
                {"sha256": "a" * 64, "tenant": "t", "scopes": ["search"]},
                {"sha256": "a" * 64, "tenant": "u", "scopes": ["search"]},
            ],
            "keys[1]",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(keys: list[dict], wrong: str) -> None:
    with pytest.raises(SettingsError, match=r"RAG_API_KEYS_FILE") as raised:
        parse(json.dumps({"keys": keys}).encode(), "keys.json")
    assert wrong in str(raised.value)


def test_a_missing_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        KeyRing(tmp_path / "absent.json")


def test_rotation_is_picked_up_after_the_reload_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    old, new = new_key(), new_key()
    write(path, entry(old))
    clock = Clock()
    ring = KeyRing(path, reload_seconds=5, clock=clock)
    write(path, entry(new))
    clock.now = 4.9
    assert ring.authenticate(old) is not None  # not checked yet
    clock.now = 5.0
    assert ring.authenticate(old) is None
    assert ring.authenticate(new) is not None
    assert ring.reloads == 1


def test_a_broken_new_file_keeps_the_old_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    key = new_key()
    write(path, entry(key))
    clock = Clock()
    ring = KeyRing(path, reload_seconds=1, clock=clock)
    path.write_text('{"keys": [{"sha256": "nope"')
    clock.now = 2
    with caplog.at_level(logging.ERROR):
        assert ring.authenticate(key) is not None
    assert ring.reload_errors == 1
    path.unlink()
    clock.now = 4
    assert ring.authenticate(key) is not None
    assert ring.reload_errors == 2
    assert key not in caplog.text and digest(key) not in caplog.text
