"""Shared test fixtures: paths and the SciFact dataset location."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Beside the repository; from a git worktree under a sibling directory, one level further up.
SCIFACT = next(
    (
        base / "shared" / "datasets" / "scifact-train"
        for base in (ROOT.parent, ROOT.parent.parent)
        if (base / "shared" / "datasets" / "scifact-train").is_dir()
    ),
    ROOT.parent / "shared" / "datasets" / "scifact-train",
)


@pytest.fixture(scope="session")
def scifact() -> Path:
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact dataset not found at {SCIFACT}")
    return SCIFACT
