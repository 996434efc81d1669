"""Shared helpers for the deployment tests: paths, tools, and walking rendered manifests."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "kustomize"
PROMETHEUS = ROOT / "observability" / "prometheus"

# What Argo CD renders (the overlays and the Argo CD objects), plus the base on its own.
TARGETS: dict[str, Path] = {
    "base": KUSTOMIZE / "base",
    "dev": KUSTOMIZE / "overlays" / "dev",
    "prod": KUSTOMIZE / "overlays" / "prod",
    "argocd": KUSTOMIZE / "argocd",
}
OVERLAYS = ("dev", "prod")
# Kustomize Components: not buildable alone, so rendered on the base and in prod's place by
# tests/deploy/test_components.py.
COMPONENTS: dict[str, Path] = {
    "redis-sentinel": KUSTOMIZE / "components" / "redis-sentinel",
    "redis-cluster": KUSTOMIZE / "components" / "redis-cluster",
}
NAMESPACES = {"dev": "rag-dev", "prod": "rag-prod"}

API = "rag-pipeline"
WORKER = "rag-pipeline-worker"
SETTINGS_CONFIGMAP = "rag-pipeline-settings"
SECRET = "rag-pipeline-secrets"
# What the Secret would give the pods, to validate rendered settings as the pods will see them
# (Settings.from_env wants REDIS_URL with REDIS_CLUSTER=true). Never connected to.
FAKE_SECRET = {"REDIS_URL": "redis://:fixture-password@redis.example.internal:6379/0"}

Doc = dict[str, Any]

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
}


def missing(what: str, how: str) -> NoReturn:
    """Skip when a tool is absent on a developer's machine; fail in CI (CI=true), which installs
    every tool (.ci/run), so a broken install step can never pass as a skip."""
    message = f"{what} is not installed ({how})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must install it", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, how: str, env_var: str | None = None) -> str:
    path = find_tool(name, env_var)
    if path is None:
        missing(name, how)
    return path


def require_module(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(package, f"pip install {package}")


def find_tool(name: str, env_var: str | None = None) -> str | None:
    """An executable from $env_var, PATH, or next to this interpreter (a venv's bin/)."""
    if env_var and os.environ.get(env_var):
        candidate = os.environ[env_var]
        return candidate if os.access(candidate, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if os.access(beside, os.X_OK) else None


def render(kubectl: str, target: Path) -> tuple[list[Doc], str]:
    """`kubectl kustomize` (kustomize v5, as Argo CD runs it): the objects and any warnings."""
    proc = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {target} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc], proc.stderr


def render_overlay(kubectl: str, directory: Path, kustomization: Doc) -> tuple[list[Doc], str]:
    """Write `kustomization` (a Kustomization's fields) into `directory`, a temporary one
    outside the repository, and render it. Entries of `resources` and `components` given as
    absolute paths are written relative to `directory`: kustomize refuses absolute ones, but
    a directory it loads may lie anywhere (only files must be under the kustomization's root)."""
    fields = dict(kustomization)
    for key in ("resources", "components"):
        if key in fields:
            fields[key] = [
                os.path.relpath(entry, directory) if Path(entry).is_absolute() else str(entry)
                for entry in fields[key]
            ]
    header = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(header | fields))
    return render(kubectl, directory)


def settings_env_files(kustomization_dir: Path) -> list[Path]:
    """The env files the kustomization (or component) in `kustomization_dir` feeds into the
    settings ConfigMap's generator, in order."""
    kustomization = load_yaml(kustomization_dir / "kustomization.yaml")
    return [
        kustomization_dir / env
        for generator in kustomization.get("configMapGenerator", [])
        if generator["name"] == SETTINGS_CONFIGMAP
        for env in generator.get("envs", [])
    ]


def env_file(path: Path) -> dict[str, str]:
    """An env file as kustomize reads it: KEY=value lines, comments and blank lines skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def settings_of(kustomization_dir: Path) -> dict[str, str]:
    """Every setting the files of `kustomization_dir` give the settings ConfigMap."""
    merged: dict[str, str] = {}
    for path in settings_env_files(kustomization_dir):
        merged |= env_file(path)
    return merged


def components_of(kustomization_dir: Path) -> list[Path]:
    """The components a kustomization lists, as resolved directories, in order."""
    kustomization = load_yaml(kustomization_dir / "kustomization.yaml")
    return [(kustomization_dir / c).resolve() for c in kustomization.get("components", [])]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def configmap(docs: list[Doc], name: str) -> Doc:
    """A generated ConfigMap, whose rendered name carries a content hash suffix."""
    found = [
        d
        for d in docs
        if d["kind"] == "ConfigMap"
        and (d["metadata"]["name"] == name or d["metadata"]["name"].startswith(name + "-"))
    ]
    assert len(found) == 1, f"expected one ConfigMap {name}(-hash), found {len(found)}"
    return found[0]


def pod_spec(doc: Doc) -> Doc | None:
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]  # type: ignore[no-any-return]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def workloads(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield doc, spec


def containers(spec: Doc, *, init: bool = True) -> list[Doc]:
    found = list(spec.get("containers", []))
    if init:
        found += spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
    return found


def label_match(selector: Doc, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(doc: Doc) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"].get("labels", {})  # type: ignore[no-any-return]


def allows(
    rules: list[Doc], port: int, protocol: str = "TCP", named: dict[str, int] | None = None
) -> bool:
    """Whether NetworkPolicy rules (ingress or egress) admit `port`/`protocol`."""
    for rule in rules:
        for entry in rule.get("ports") or [{}]:  # no ports: every port
            if entry.get("protocol", "TCP") != protocol:
                continue
            value = entry.get("port")
            if isinstance(value, str):
                value = (named or {}).get(value)
            end = entry.get("endPort", value)
            if value is None or value <= port <= end:
                return True
    return False


def policies_for(docs: list[Doc], labels: dict[str, str]) -> list[Doc]:
    """The NetworkPolicies selecting pods with these labels."""
    return [
        p
        for p in find(docs, "NetworkPolicy")
        if label_match(p["spec"]["podSelector"] or {"matchLabels": {}}, labels)
    ]


def egress_of(docs: list[Doc], deployment: str) -> list[Doc]:
    """Every egress rule that applies to the pods of `deployment`."""
    labels = pod_labels(one(docs, "Deployment", deployment))
    return [
        rule
        for policy in policies_for(docs, labels)
        if "Egress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("egress", [])
    ]


def sync_wave(doc: Doc) -> int:
    annotations = doc["metadata"].get("annotations") or {}
    return int(annotations.get("argocd.argoproj.io/sync-wave", "0"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
