"""Every target renders, validates against Kubernetes 1.30, and custom resources are well formed."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from tests.deploy._support import (
    CLUSTER_SCOPED_KINDS,
    COMPONENTS,
    KUSTOMIZE,
    NAMESPACES,
    OVERLAYS,
    ROOT,
    TARGETS,
    Doc,
    find,
    one,
    require_module,
)

KUBERNETES_VERSION = "1.30.0"

# Kinds defined by CRDs (Prometheus Operator, Argo CD): no schema in kubernetes-validate; each is
# checked against the fields we rely on below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Application", "AppProject"}

DEPRECATED_KUSTOMIZE_FIELDS = {
    "bases",
    "commonLabels",
    "patchesStrategicMerge",
    "patchesJson6902",
    "vars",
    "imageTags",
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_renders(rendered: dict[str, list[Doc]], target: str) -> None:
    docs = rendered[target]
    assert docs, f"{target} rendered nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), f"{target}: duplicate objects"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_puts_everything_in_its_namespace(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    namespace = NAMESPACES[overlay]
    docs = rendered[overlay]
    ns = one(docs, "Namespace", namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]


def test_argocd_objects_live_in_the_argocd_namespace(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["argocd"]
    assert {d["kind"] for d in docs} == {"AppProject", "Application"}
    assert all(d["metadata"]["namespace"] == "argocd" for d in docs)


def test_kustomizations_use_no_deprecated_fields() -> None:
    files = sorted(KUSTOMIZE.rglob("kustomization.yaml")) + sorted(
        (ROOT / "observability").rglob("kustomization.yaml")
    )
    assert len(files) >= 5
    for path in files:
        used = DEPRECATED_KUSTOMIZE_FIELDS & set(yaml.safe_load(path.read_text()))
        assert not used, f"{path.relative_to(ROOT)} uses deprecated {sorted(used)}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kustomize_prints_no_warnings(
    renders: dict[str, tuple[list[Doc], str]], target: str
) -> None:
    """kustomize warns about deprecated fields and odd inputs on stderr; there must be none."""
    assert renders[target][1].strip() == ""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_hold_only_differences(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """An overlay's own files never redefine an object the base already has (patches do that)."""
    base = {(d["kind"], d["metadata"]["name"]) for d in rendered["base"]}
    overlay_dir = TARGETS[overlay]
    for path in overlay_dir.glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in base, f"{path.name} redefines base object {key}"


# --- Kubernetes schemas --------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return require_module("kubernetes_validate", "kubernetes-validate")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_builtin_objects_validate_against_kubernetes_1_30(
    rendered: dict[str, list[Doc]], kubernetes_validate: Any, target: str
) -> None:
    errors = []
    validated = 0
    for doc in rendered[target]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            validated += 1
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{doc['kind']} ({doc['apiVersion']}) has no 1.30 schema")
    assert not errors, "\n".join(errors)
    if target != "argocd":
        assert validated > 0


def test_the_schema_check_rejects_a_broken_object(
    rendered: dict[str, list[Doc]], kubernetes_validate: Any
) -> None:
    """Guards against a validator that accepts anything: a typo'd field must fail strictly."""
    deployment = copy.deepcopy(one(rendered["prod"], "Deployment", "rag-pipeline"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/ready", "port": "http"}
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- Custom resources: the fields each controller needs ------------------------------------

_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {"type": "object", "required": ["key", "operator"]},
        },
    },
    "minProperties": 1,
}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}

SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": _SELECTOR,
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                                "scheme": {"enum": ["http", "https"]},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": {"type": "string", "pattern": _DURATION},
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [
                                            {"required": ["record"]},
                                            {"required": ["alert"]},
                                        ],
                                        "properties": {
                                            "record": {"type": "string"},
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string", "pattern": _DURATION},
                                            "labels": _STRING_MAP,
                                            "annotations": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
    "Application": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "argoproj.io/v1alpha1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["project", "source", "destination"],
                "properties": {
                    "project": {"type": "string", "minLength": 1},
                    "source": {
                        "type": "object",
                        "required": ["repoURL", "path", "targetRevision"],
                        "properties": {
                            "repoURL": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "minLength": 1},
                            "targetRevision": {"type": "string", "minLength": 1},
                        },
                    },
                    "destination": {
                        "type": "object",
                        "required": ["namespace"],
                        "anyOf": [{"required": ["server"]}, {"required": ["name"]}],
                    },
                    "syncPolicy": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "automated": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "prune": {"type": "boolean"},
                                    "selfHeal": {"type": "boolean"},
                                    "allowEmpty": {"type": "boolean"},
                                },
                            },
                            "syncOptions": {
                                "type": "array",
                                "items": {"type": "string", "pattern": "^[A-Za-z]+="},
                            },
                            "retry": {
                                "type": "object",
                                "required": ["limit"],
                                "properties": {
                                    "limit": {"type": "integer"},
                                    "backoff": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "duration": {"type": "string"},
                                            "factor": {"type": "integer"},
                                            "maxDuration": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "ignoreDifferences": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["kind"],
                            "anyOf": [
                                {"required": ["jsonPointers"]},
                                {"required": ["jqPathExpressions"]},
                                {"required": ["managedFieldsManagers"]},
                            ],
                        },
                    },
                },
            },
        },
    },
    "AppProject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "argoproj.io/v1alpha1"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["sourceRepos", "destinations"],
                "properties": {
                    "sourceRepos": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "destinations": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["namespace"],
                            "anyOf": [{"required": ["server"]}, {"required": ["name"]}],
                        },
                    },
                    "clusterResourceWhitelist": {
                        "type": "array",
                        "items": {"type": "object", "required": ["group", "kind"]},
                    },
                    "namespaceResourceWhitelist": {
                        "type": "array",
                        "items": {"type": "object", "required": ["group", "kind"]},
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_custom_resources_have_their_required_fields(
    rendered: dict[str, list[Doc]], target: str
) -> None:
    jsonschema = require_module("jsonschema", "jsonschema")
    for doc in rendered[target]:
        if doc["kind"] in CUSTOM_KINDS:
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])


def test_the_custom_resource_check_rejects_a_broken_rule(rendered: dict[str, list[Doc]]) -> None:
    jsonschema = require_module("jsonschema", "jsonschema")
    rule = copy.deepcopy(one(rendered["prod"], "PrometheusRule", "rag-pipeline"))
    rule["spec"]["groups"][0]["rules"][0]["alert"] = "Both"  # record AND alert
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, SCHEMAS["PrometheusRule"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_ship_the_monitoring_objects(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    assert find(docs, "ServiceMonitor", "rag-pipeline")
    assert find(docs, "PrometheusRule", "rag-pipeline")


def test_rendered_yaml_has_no_unresolved_placeholders(rendered: dict[str, list[Doc]]) -> None:
    """The Argo CD replacements filled every REPO_URL / REVISION marker."""
    text = yaml.safe_dump(rendered["argocd"])
    assert not re.search(r"\b(REPO_URL|REVISION)\b", text)


def test_every_kustomization_under_kustomize_is_a_rendered_target() -> None:
    """So the session's renders cover everything kustomize could be pointed at; components,
    which cannot be built alone, are rendered by test_components.py."""
    found = {path.parent for path in KUSTOMIZE.rglob("kustomization.yaml")}
    assert found == set(TARGETS.values()) | set(COMPONENTS.values())
    for path in found:
        kind = yaml.safe_load((path / "kustomization.yaml").read_text())["kind"]
        assert (kind == "Component") is (path in COMPONENTS.values()), path
