"""checkov scans the rendered overlays (what Argo CD applies): 0 failed checks.

checkov cannot share the app's environment (it pins older packaging and friends), so it lives in a
tools venv of its own; point CHECKOV_BIN at its executable, or put `checkov` on PATH.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._support import Doc, require_tool

SCANNED = ("dev", "prod", "argocd")
_SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")
_SKIP_VALUE = re.compile(r"^(CKV2?_K8S_\d+)=(.+)$")


@pytest.fixture(scope="module")
def checkov_report(
    rendered: dict[str, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    checkov = require_tool(
        "checkov",
        "its own venv; set CHECKOV_BIN or put it on PATH, see docs/deploy.md",
        "CHECKOV_BIN",
    )
    directory: Path = tmp_path_factory.mktemp("rendered")
    for name in SCANNED:
        (directory / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered[name]))
    proc = subprocess.run(
        # --skip-download: no calls home; checks and suppressions are all local.
        [
            checkov,
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1 = failed checks; the tests say which
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report  # type: ignore[no-any-return]


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    failed = checkov_report["results"].get("failed_checks", [])
    lines = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed]
    assert not failed, "\n".join(lines)


def test_checkov_parsed_and_checked_every_object(
    checkov_report: dict[str, Any], rendered: dict[str, list[Doc]]
) -> None:
    summary = checkov_report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= sum(len(rendered[name]) for name in SCANNED) - 3
    assert summary["passed"] > 300  # the workload checks ran, not just a handful


def test_every_skip_carries_a_written_reason(checkov_report: dict[str, Any]) -> None:
    for check in checkov_report["results"].get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 6, f"{check['check_id']} {check['resource']}: {reason!r}"


def test_skip_annotations_are_well_formed(rendered: dict[str, list[Doc]]) -> None:
    """`checkov.io/skipN: CKV_K8S_NN=reason` -- a malformed one would silently skip nothing."""
    for name in SCANNED:
        for doc in rendered[name]:
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/"):
                    assert _SKIP_ANNOTATION.match(key), key
                    match = _SKIP_VALUE.match(value)
                    where = f"{doc['metadata']['name']}: {value}"
                    assert match and len(match[2].split()) >= 6, where
