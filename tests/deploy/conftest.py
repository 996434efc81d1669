"""Fixtures for the deployment tests: every target is rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy._support import TARGETS, Doc, render, require_tool


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool("kubectl", "it renders the overlays with its built-in kustomize", "KUBECTL")


@pytest.fixture(scope="session")
def renders(kubectl: str) -> dict[str, tuple[list[Doc], str]]:
    """target name -> (objects, stderr) of `kubectl kustomize`, rendered once per session."""
    return {name: render(kubectl, path) for name, path in TARGETS.items()}


@pytest.fixture(scope="session")
def rendered(renders: dict[str, tuple[list[Doc], str]]) -> dict[str, list[Doc]]:
    """target name -> the objects `kubectl kustomize` renders for it (as Argo CD would)."""
    return {name: docs for name, (docs, _) in renders.items()}
