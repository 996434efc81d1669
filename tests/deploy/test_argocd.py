"""Argo CD: the Applications point at real overlays, the project admits what they deploy."""

from __future__ import annotations

import pytest

from tests.deploy._support import (
    CLUSTER_SCOPED_KINDS,
    KUSTOMIZE,
    NAMESPACES,
    ROOT,
    TARGETS,
    Doc,
    find,
    load_yaml,
    one,
)


def _applications(rendered: dict[str, list[Doc]]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in find(rendered["argocd"], "Application")}


def _overlay_of(app: Doc) -> str:
    path = ROOT / app["spec"]["source"]["path"]
    for name, target in TARGETS.items():
        if target == path:
            return name
    raise AssertionError(f"{app['metadata']['name']} deploys {path}, which is not an overlay")


def test_one_application_per_overlay(rendered: dict[str, list[Doc]]) -> None:
    apps = _applications(rendered)
    assert {_overlay_of(app) for app in apps.values()} == {"dev", "prod"}
    assert set(apps) == {"rag-pipeline-dev", "rag-pipeline-prod"}


def test_every_path_an_application_names_exists_and_renders(
    rendered: dict[str, list[Doc]],
) -> None:
    for app in _applications(rendered).values():
        path = ROOT / app["spec"]["source"]["path"]
        assert path.is_dir(), f"{app['metadata']['name']}: {path} does not exist"
        assert (path / "kustomization.yaml").is_file()
        # The session rendered every target; this one is among them and rendered objects.
        assert rendered[_overlay_of(app)]


def test_repository_and_revision_are_set_in_one_place(rendered: dict[str, list[Doc]]) -> None:
    source = load_yaml(KUSTOMIZE / "argocd" / "source.yaml")["data"]
    project = one(rendered["argocd"], "AppProject", "rag-pipeline")
    assert project["spec"]["sourceRepos"] == [source["repoURL"]]
    for app in _applications(rendered).values():
        assert app["spec"]["source"]["repoURL"] == source["repoURL"]
        assert app["spec"]["source"]["targetRevision"] == source["targetRevision"]
    # ...and written nowhere else.
    for path in (KUSTOMIZE / "argocd").glob("*.yaml"):
        if path.name != "source.yaml":
            assert source["repoURL"] not in path.read_text(), path.name


def test_applications_deploy_to_their_overlays_namespace(rendered: dict[str, list[Doc]]) -> None:
    project = one(rendered["argocd"], "AppProject", "rag-pipeline")["spec"]
    allowed = {(d["server"], d["namespace"]) for d in project["destinations"]}
    for app in _applications(rendered).values():
        destination = app["spec"]["destination"]
        assert app["spec"]["project"] == "rag-pipeline"
        assert destination["namespace"] == NAMESPACES[_overlay_of(app)]
        assert (destination["server"], destination["namespace"]) in allowed


def test_the_project_admits_every_kind_the_overlays_render(
    rendered: dict[str, list[Doc]],
) -> None:
    """Otherwise Argo CD refuses the sync ("resource ... is not permitted in project")."""
    project = one(rendered["argocd"], "AppProject", "rag-pipeline")["spec"]
    cluster = {(w["group"], w["kind"]) for w in project["clusterResourceWhitelist"]}
    namespaced = {(w["group"], w["kind"]) for w in project["namespaceResourceWhitelist"]}
    for overlay in ("dev", "prod"):
        for doc in rendered[overlay]:
            group = doc["apiVersion"].rpartition("/")[0]
            allowed = cluster if doc["kind"] in CLUSTER_SCOPED_KINDS else namespaced
            assert (group, doc["kind"]) in allowed, f"{overlay}: {doc['kind']} not admitted"


def test_dev_syncs_itself_with_prune_and_self_heal(rendered: dict[str, list[Doc]]) -> None:
    dev = _applications(rendered)["rag-pipeline-dev"]["spec"]["syncPolicy"]
    assert dev["automated"] == {"prune": True, "selfHeal": True, "allowEmpty": False}


def test_prod_is_synced_by_a_person(rendered: dict[str, list[Doc]]) -> None:
    prod = _applications(rendered)["rag-pipeline-prod"]
    assert "automated" not in prod["spec"]["syncPolicy"]
    # Deleting the prod Application must not delete prod.
    assert "resources-finalizer.argocd.argoproj.io" not in prod["metadata"].get("finalizers", [])


@pytest.mark.parametrize("name", ["rag-pipeline-dev", "rag-pipeline-prod"])
def test_every_application_retries_and_respects_ignored_fields(
    rendered: dict[str, list[Doc]], name: str
) -> None:
    policy = _applications(rendered)[name]["spec"]["syncPolicy"]
    assert policy["retry"]["limit"] >= 3
    assert policy["retry"]["backoff"]["factor"] >= 2
    assert "RespectIgnoreDifferences=true" in policy["syncOptions"]
    assert not any(option.startswith("CreateNamespace") for option in policy["syncOptions"]), (
        "the overlays bring their own Namespace (with Pod Security labels)"
    )


def test_replicas_owned_by_an_hpa_are_ignored(rendered: dict[str, list[Doc]]) -> None:
    for app in _applications(rendered).values():
        docs = rendered[_overlay_of(app)]
        ignored = {
            (i.get("group", ""), i["kind"], i.get("name")): i.get("jsonPointers", [])
            for i in app["spec"].get("ignoreDifferences", [])
        }
        for hpa in find(docs, "HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            key = (ref["apiVersion"].rpartition("/")[0], ref["kind"], ref["name"])
            assert "/spec/replicas" in ignored.get(key, []), (app["metadata"]["name"], key)
